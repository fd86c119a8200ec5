"""gpt2bench ab: the statistics on synthetic rounds, the config, bad input, and real A/B runs of two
workers on the tiny model (the delay of tests/ab_plugin injected into one side only)."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import run_cli
from gpt2bench.report.ab import Pairing, block_estimate, detectable_slowdown, judge, markdown

REPO = Path(__file__).resolve().parents[1]
PLUGIN = Path(__file__).resolve().parent / "ab_plugin"


def pairing(ratios: np.ndarray, blocks: int = 2, metric: str = "tpot_ms") -> Pairing:
    base = np.full(len(ratios), 10.0)
    ids = tuple(i * blocks // len(ratios) for i in range(len(ratios)))
    return Pairing("onnx", "p8/g8/b1", metric, tuple(base), tuple(base * ratios), ids)


def noisy(center: float, spread: float, n: int = 40, seed: int = 1) -> np.ndarray:
    return center * np.exp(np.random.default_rng(seed).normal(0, spread, n))


# --- statistics -------------------------------------------------------------------------------


def test_a_clear_slowdown_is_a_regression_and_its_interval_holds_the_truth():
    (j,) = judge([pairing(noisy(1.10, 0.01))], threshold=0.05, alpha=0.05)
    assert j.verdict == "regression" and j.p_holm < 0.05
    assert j.low < 1.10 < j.high and j.low > 1.05
    assert j.rounds == 40 and j.blocks == 2


def test_a_change_inside_the_margin_is_no_change_however_precise():
    (j,) = judge([pairing(noisy(1.03, 0.002))], threshold=0.05, alpha=0.05)
    assert j.low > 1.0  # a real 3% difference, measured precisely...
    assert j.verdict == "no change detected"  # ...but within the +-5% that counts


def test_a_speed_up_is_an_improvement():
    (j,) = judge([pairing(noisy(0.85, 0.01))], threshold=0.05, alpha=0.05)
    assert j.verdict == "improvement" and j.high < 0.95


def test_noise_wider_than_the_effect_gives_no_verdict():
    (j,) = judge([pairing(noisy(1.10, 0.25))], threshold=0.05, alpha=0.05)
    assert j.verdict == "no change detected" and j.low < 1.05


def test_a_start_order_offset_cancels_across_blocks():
    """Block 0's workers read 5% fast, block 1's 5% slow (the start-order effect): the estimate is
    their geometric mean, not whichever block has more rounds or the pooled median."""
    rng = np.random.default_rng(3)
    first, second = 0.95 * np.exp(rng.normal(0, 0.003, 20)), 1.05 * np.exp(rng.normal(0, 0.003, 20))
    p = pairing(np.concatenate([first, second]))
    assert block_estimate(p.by_block()) == pytest.approx(math.sqrt(0.95 * 1.05), rel=0.003)
    (j,) = judge([p], threshold=0.05, alpha=0.05)
    assert j.verdict == "no change detected"


def test_holm_scales_the_smallest_p_by_the_number_of_comparisons():
    marginal = pairing(noisy(1.08, 0.03, n=12, seed=5))
    (alone,) = judge([marginal], threshold=0.05, alpha=0.05)
    nulls = [pairing(noisy(1.0, 0.01, seed=10 + i), metric=f"m{i}") for i in range(9)]
    among = judge([marginal, *nulls], threshold=0.05, alpha=0.05)[0]
    assert 0 < alone.p_regression < 0.1
    assert among.p_regression == alone.p_regression
    assert among.p_holm == pytest.approx(min(1.0, 10 * alone.p_regression))


def test_too_few_rounds_get_no_verdict_and_take_no_part_in_holm():
    short, full = pairing(noisy(1.5, 0.01, n=4)), pairing(noisy(1.10, 0.01))
    j_short, j_full = judge([short, full], threshold=0.05, alpha=0.05)
    assert j_short.verdict == "too few rounds" and math.isnan(j_short.p_holm)
    assert j_full.p_holm == j_full.p_regression  # one test in the family


def test_detectable_slowdown_is_the_margin_plus_the_noise_it_must_clear():
    assert detectable_slowdown(0.0, 0.05, 0.05, 3) == 0.05
    one, many = detectable_slowdown(0.01, 0.05, 0.05, 1), detectable_slowdown(0.01, 0.05, 0.05, 9)
    assert one == pytest.approx(0.05 + (1.95996 + 1.28155) * 0.01, rel=1e-4)
    assert many > one  # Holm over more comparisons asks for a larger effect


def test_the_markdown_table_has_a_row_per_comparison_with_interval_and_verdict():
    judged = judge([pairing(noisy(1.10, 0.01)), pairing(noisy(1.0, 0.01), metric="e2e_ms")], 0.05, 0.05)
    text = markdown(judged, ["## header"], 0.05, 0.05)
    rows = [line for line in text.splitlines() if line.startswith("| onnx")]
    assert len(rows) == 2
    assert "| TPOT |" in rows[0] and "**regression**" in rows[0] and "+10." in rows[0]
    assert "| e2e |" in rows[1] and "no change detected" in rows[1]
    assert "1 regression(s), 0 improvement(s)" in text


# --- the config and bad input ------------------------------------------------------------------


def write_config(tmp_path: Path, model: Path | str, ab: str, backends: str = "[{name: delayed-hf-eager}]") -> Path:
    config = tmp_path / "ab.yaml"
    config.write_text(
        f"model: {model}\nthreads: 1\nrepeats: 1\nwarmup: 1\nprompt_lens: [8]\ngen_lens: [8]\n"
        f"backends: {backends}\nab: {ab}\n"
    )
    return config


@pytest.fixture
def plugin_env() -> dict[str, str]:
    return {"PYTHONPATH": os.pathsep.join(filter(None, [str(PLUGIN), os.environ.get("PYTHONPATH")]))}


@pytest.mark.parametrize(
    ("ab", "message"),
    [
        ("{rounds: 4, pairs: 2}", "rounds must be at least 3 a worker pair (6 for 2), got 4"),
        ("{threshold: 1.5}", "threshold must be in [0, 1)"),
        ("{metrics: [tpot_ms, decode_tps]}", "unknown metric 'decode_tps'"),
        ("{round: 3}", "ab.round: unknown key"),
    ],
)
def test_bad_ab_settings_are_one_line_naming_the_field(tmp_path, ab, message):
    proc = run_cli(
        "ab", "HEAD", "--allow-dirty", "--config", str(write_config(tmp_path, "tiny", ab, "[{name: hf-eager}]"))
    )
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert message in proc.stderr and "ab.yaml:" in proc.stderr


@pytest.fixture
def clone(tmp_path: Path) -> Path:
    """A clone of this repository at its HEAD, to make bad states in."""
    target = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", "--no-checkout", str(REPO), str(target)], check=True)
    subprocess.run(["git", "-C", str(target), "checkout", "-q", "HEAD"], check=True)
    return target


def test_bad_refs_and_trees_are_one_line_errors(tmp_path, clone):
    git = ["git", "-C", str(clone), "-c", "user.name=t", "-c", "user.email=t@t"]
    empty_tree = subprocess.run([*git, "mktree"], input="", capture_output=True, text=True, check=True).stdout.strip()
    no_gpt2bench = subprocess.run(
        [*git, "commit-tree", empty_tree, "-m", "no gpt2bench"], capture_output=True, text=True, check=True
    ).stdout.strip()
    (clone / "README.md").write_text("changed\n")
    cases = [
        (["no-such-ref", "--allow-dirty"], "unknown git ref 'no-such-ref'"),
        ([no_gpt2bench, "--allow-dirty"], "has no gpt2bench sweep worker (src/gpt2bench/sweep/worker.py)"),
        (["HEAD"], "has uncommitted changes (1 file(s), e.g. README.md): commit them"),
        (["HEAD", "HEAD~1", "--aa"], "--aa measures BASE against itself"),
        (["HEAD", "--allow-dirty", "--new-env", "NOEQUALS"], "--new-env expects KEY=VALUE, got 'NOEQUALS'"),
    ]
    for args, message in cases:
        proc = run_cli("ab", *args, "--repo", str(clone))
        assert proc.returncode == 2 and proc.stderr.count("\n") == 1, (args, proc.stderr)
        assert message in proc.stderr, (args, proc.stderr)
    outside = run_cli("ab", "HEAD", "--repo", str(tmp_path))
    assert outside.returncode == 2 and "is not a git checkout" in outside.stderr
    assert subprocess.run([*git, "worktree", "list"], capture_output=True, text=True).stdout.count("\n") == 1


def test_a_version_without_the_backend_is_one_line(tmp_path, tiny_model_dir):
    """c362cdf is the commit before CTranslate2 came in: its worker cannot load 'ct2'."""
    old = "c362cdf"
    if subprocess.run(["git", "-C", str(REPO), "cat-file", "-e", f"{old}^{{commit}}"]).returncode != 0:
        pytest.skip(f"{old} is not in this clone's history")
    config = write_config(tmp_path, tiny_model_dir, "{rounds: 6}", "[{name: ct2}]")
    proc = run_cli("ab", old, "--allow-dirty", "--config", str(config), "--output", str(tmp_path / "out"))
    assert proc.returncode == 1, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: BASE {old}") and "cannot load backend 'ct2'" in last
    assert "unknown backend 'ct2'" in last


# --- real runs ------------------------------------------------------------------------------------


def run_ab(tmp_path: Path, name: str, config: Path, env: dict[str, str], *args: str) -> tuple[int, dict, str]:
    out = tmp_path / name
    proc = run_cli("ab", "HEAD", "--allow-dirty", "--config", str(config), "--output", str(out), *args, env=env)
    assert (out / "ab.json").is_file(), proc.stderr
    return proc.returncode, json.loads((out / "ab.json").read_text()), proc.stdout


def test_an_injected_slowdown_fails_the_gate_and_equal_code_passes_it(tmp_path, tiny_model_dir, plugin_env):
    """Both sides run real workers of this checkout; only NEW's are told to be 100% slower. The
    effect is far beyond the 25% margin, so the test asserts the machinery and the verdicts, not
    this machine's ratios (a fresh-clone CI run read a ratio below 1.6 and still a regression):
    every round recorded, each side's rows from its commit, the start
    order alternating by pair, and the verdicts."""
    config = write_config(tmp_path, tiny_model_dir, "{rounds: 8, pairs: 2, threshold: 0.25}")
    code, doc, report = run_ab(tmp_path, "slow", config, plugin_env, "--new-env", "GPT2BENCH_TEST_DELAY=1.0")
    assert code == 1
    assert [c["verdict"] for c in doc["comparisons"]] == ["regression"] * 3
    assert "**regression**" in report and "GPT2BENCH_TEST_DELAY=1.0" in report and not doc["aa"]
    rounds = doc["rounds"]
    assert [r["round"] for r in rounds] == list(range(8)) and [r["block"] for r in rounds] == [0] * 4 + [1] * 4
    assert [r["order"][0] for r in rounds[:4]] == ["BASE", "NEW", "BASE", "NEW"]
    for side in ("base", "new"):
        store = json.loads((tmp_path / "slow" / side / "results.json").read_text())
        (row,) = store["rows"]
        assert row["repeats"] == 8 and row["tokens_per_run"] == 8
        assert row["git_commit"] == doc["sides"][0]["commit"]

    code, doc, report = run_ab(tmp_path, "same", config, plugin_env)
    status = ["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"]
    clean = not subprocess.run(status, capture_output=True, text=True, check=True).stdout.strip()
    assert code == 0 and doc["aa"] is clean  # HEAD against a clean working tree is an A/A run
    assert ("**A/A run**" in report) is clean
    assert [c["verdict"] for c in doc["comparisons"]] == ["no change detected"] * 3


def test_sigterm_keeps_every_finished_round(tmp_path, tiny_model_dir, plugin_env):
    config = write_config(tmp_path, tiny_model_dir, "{rounds: 200, pairs: 1}")
    out = tmp_path / "stopped"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gpt2bench",
            "ab",
            "HEAD",
            "--allow-dirty",
            "--config",
            str(config),
            "--output",
            str(out),
        ],
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **plugin_env, "GPT2BENCH_TEST_DELAY": "0.5"},  # slows both sides: 200 rounds do not end
    )
    for line in proc.stderr:  # type: ignore[union-attr]
        if "round 3/200" in line:
            break
    proc.send_signal(signal.SIGTERM)
    rest = proc.stderr.read()  # type: ignore[union-attr]
    assert proc.wait(timeout=60) == 130, rest
    assert "finished round(s) is in" in rest
    doc = json.loads((out / "ab.json").read_text())
    assert doc["interrupted"] is True and len(doc["rounds"]) >= 3
    assert "| delayed-hf-eager | p8/g8/b1 | TPOT |" in (out / "ab.md").read_text()
