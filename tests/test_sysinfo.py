"""The machine record: enough to tell two CPUs that share a marketing name apart."""

from gpt2bench.core import cpu as core_cpu
from gpt2bench.machine import sysinfo


def test_cpu_id_reads_family_model_and_the_kernel_deciding_isa(monkeypatch):
    cpuinfo = (
        "processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 25\nmodel\t\t: 17\n"
        "model name\t: AMD EPYC\nstepping\t: 1\nflags\t\t: fpu sse avx2 fma avx512f avx512_bf16 avx512_vnni\n\n"
        "processor\t: 1\nvendor_id\t: AuthenticAMD\ncpu family\t: 25\nmodel\t\t: 17\nflags\t\t: fpu\n"
    )
    monkeypatch.setattr(core_cpu, "_cpuinfo_first", lambda: core_cpu._parse_cpuinfo(cpuinfo))
    cpu = sysinfo.cpu_id()
    assert cpu == {
        "vendor": "AuthenticAMD",
        "family": "25",
        "model": "17",
        "stepping": "1",
        "isa": ["avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16"],
    }
    env = {"cpu_model": sysinfo.cpu_model(), "cpu": cpu}
    assert sysinfo.cpu_label(env) == "AMD EPYC (family 25 model 17; avx2 fma avx512f avx512_vnni avx512_bf16)"


def test_cpu_label_of_older_results_without_the_cpu_record():
    assert sysinfo.cpu_label({"cpu_model": "AMD EPYC"}) == "AMD EPYC"
    assert sysinfo.cpu_label({}) == "?"


def test_environment_records_this_cpu():
    env = sysinfo.environment()
    assert env["cpu"]["isa"] == sysinfo.cpu_id()["isa"]
    assert sysinfo.cpu_label(env).startswith(env["cpu_model"])


def test_git_commit_never_writes_the_repository_it_reads(tmp_path):
    import os
    import subprocess

    def git(*args):
        env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
               "GIT_COMMITTER_EMAIL": "t@t"}  # fmt: skip
        return subprocess.run(["git", "-C", str(tmp_path), *args], check=True, capture_output=True, env=env)

    git("init", "-q")
    tracked = tmp_path / "tracked.txt"
    tracked.write_text("a\n")
    git("add", "tracked.txt")
    git("commit", "-q", "-m", "one")
    # Same content, newer timestamp: a plain `git status` would refresh the index and rewrite it
    # (taking .git/index.lock), which a benchmark killed at that moment left behind.
    stamp = tracked.stat().st_mtime + 10
    os.utime(tracked, (stamp, stamp))
    index = tmp_path / ".git" / "index"
    before = index.stat().st_mtime_ns
    head = git("rev-parse", "HEAD").stdout.decode().strip()
    assert sysinfo.git_commit(tmp_path) == {"commit": head, "dirty": False}
    assert index.stat().st_mtime_ns == before
    tracked.write_text("b\n")
    assert sysinfo.git_commit(tmp_path)["dirty"] is True


def test_contention_share_is_withheld_when_clock_ticks_cannot_resolve_it(monkeypatch):
    import math

    monkeypatch.setattr(sysinfo.os, "sysconf", lambda name: 100)  # the usual USER_HZ: 10 ms ticks
    monkeypatch.setattr(sysinfo.os, "cpu_count", lambda: 2)
    # One stray tick in a 3 ms generation is not "167% of the machine".
    assert math.isnan(sysinfo.contention_fraction(0.01, 0.003, 1))
    # 0.5 CPU-s over 2 s of 2 cores is 12.5%; one window may be off by 1 / (100 * 2) = 0.5%.
    assert sysinfo.contention_fraction(0.5, 2.0, 1) == 0.125
    # Five 0.1 s windows: each can be off by a tick, 5 / (100 * 0.5) = 10%, too coarse.
    assert math.isnan(sysinfo.contention_fraction(0.05, 0.5, 5))
    total = sysinfo.CpuContention.total([sysinfo.CpuContention(1.0, 0.2, 0.1), sysinfo.CpuContention(1.0, 0.2, 0.1)])
    assert (total.wall_s, total.other_cpu_s, total.windows, total.other_cpu_frac) == (2.0, 0.4, 2, 0.1)


def test_the_summary_says_when_the_share_could_not_be_resolved():
    from gpt2bench.report.summary import contention_fact

    assert "(10.0% of the machine)" in contention_fact({"other_cpu_s": 0.4, "other_cpu_frac": 0.1})
    assert "too short" in contention_fact({"other_cpu_s": 0.01, "other_cpu_frac": None})
    assert "not measured" in contention_fact({"other_cpu_s": None, "other_cpu_frac": None})
