"""repeats: auto: the median's interval, the stopping rule's looks, budget and honesty, and its
wiring through the spec, the sweep config and the harness (on real backends)."""

import json
import math
import statistics

import numpy as np
import pytest

from conftest import load_backend
from gpt2bench.backends.base import Sampling
from gpt2bench.core.errors import UsageError
from gpt2bench.measure.harness import measure
from gpt2bench.measure.metrics import median_ci
from gpt2bench.measure.prompts import make_prompts
from gpt2bench.measure.spec import RunSpec
from gpt2bench.measure.stopping import BUDGET, MAX_REPEATS, TARGET, Adaptive, decide, precision


def test_median_interval_is_the_order_statistics_with_enough_binomial_coverage():
    values = list(range(1, 13))
    assert all(math.isnan(v) for v in median_ci(values[:5], 0.95))  # [min, max] covers 93.75% only
    assert median_ci(values[:6], 0.95) == (1.0, 6.0)  # [min, max] covers 1 - 2/64 = 96.9%
    assert median_ci(values, 0.95) == (3.0, 10.0)  # 12 samples: [x3, x10] covers 96.1%
    assert median_ci(values, 0.99) == (2.0, 11.0)
    assert median_ci(list(reversed(values)), 0.95) == (3.0, 10.0)  # order of arrival does not matter


def test_looks_grow_by_half_and_share_alpha():
    rule = Adaptive(target_ci=0.02, min_repeats=8, max_repeats=40, budget_s=60)
    assert rule.looks() == [8, 12, 18, 27, 40]
    assert rule.confidence() == pytest.approx(1 - 0.05 / 5)


def test_the_rule_stops_only_at_looks_and_says_why():
    rule = Adaptive(target_ci=0.02, min_repeats=8, max_repeats=18, budget_s=100)
    steady = {"tpot_ms": [10.0] * 9, "e2e_ms": [100.0] * 9}
    assert decide(rule, steady, 1.0) is None  # 9 runs: not a look
    steady = {k: v[:8] for k, v in steady.items()}
    assert decide(rule, steady, 1.0) == TARGET
    noisy = {"tpot_ms": [10.0, 13.0] * 4, "e2e_ms": [100.0] * 8}
    assert decide(rule, noisy, 1.0) is None  # TPOT +-13%: go on
    assert decide(rule, noisy, 80.0) == BUDGET  # 8 runs took 80 s: 12 would take 120 > 100
    wide = {"tpot_ms": [10.0, 13.0] * 9, "e2e_ms": [100.0] * 18}
    assert decide(rule, wide, 1.0) == MAX_REPEATS


def test_one_token_runs_are_judged_on_e2e_alone():
    rule = Adaptive(min_repeats=8, max_repeats=12)
    runs = {"tpot_ms": [math.nan] * 8, "e2e_ms": [5.0] * 8}
    assert decide(rule, runs, 0.1) == TARGET
    assert math.isnan(precision(runs["tpot_ms"], 0.95))


def test_stopping_at_the_first_precise_look_keeps_the_reported_interval_honest():
    """The interval reported where the rule stops must cover the true median at least 95% of the
    time, even though the rule stops when an interval happens to look narrow."""
    rng = np.random.default_rng(7)
    rule = Adaptive(target_ci=0.02, min_repeats=8, max_repeats=40, budget_s=1e9)
    true_median = 10.0  # lognormal(log 10, s) has median 10
    covered, stopped_early = 0, 0
    trials = 2000
    for _ in range(trials):
        draws = true_median * np.exp(rng.normal(0.0, 0.03, rule.max_repeats))
        for n in range(1, rule.max_repeats + 1):
            reason = decide(rule, {"e2e_ms": list(draws[:n])}, 0.0)
            if reason:
                break
        stopped_early += reason == TARGET and n < rule.max_repeats
        low, high = median_ci(draws[:n], rule.confidence())
        covered += low <= true_median <= high
    assert stopped_early > trials / 4  # the rule did stop early, so this is a test of stopping
    # Bonferroni is conservative: ~98.8% here. Plain 95% intervals at every look (no correction)
    # covered 94.75% of 4,000 such cells: the optimism this guards against, and what fails this.
    assert covered / trials >= 0.975


def test_precision_line_says_why_a_median_has_no_interval():
    from gpt2bench.report.summary import precision_line

    row = {"repeats": 7, "ci_level": 0.983, "stop_reason": "budget", "e2e_ci_rel": 0.05}
    one = precision_line({**row, "gen_len": 1, "tpot_ci_rel": float("nan")})
    assert "median TPOT n/a (1 token), e2e +-5.0%" in one  # a 1-token run has no inter-token gap
    assert "median TPOT unbounded" in precision_line({**row, "gen_len": 10, "tpot_ci_rel": float("nan")})


def test_adaptive_settings_are_checked_with_one_line_errors():
    with pytest.raises(UsageError, match="target_ci must be in"):
        Adaptive(target_ci=0).validate()
    with pytest.raises(UsageError, match=r"max_repeats .* at least min_repeats"):
        Adaptive(min_repeats=10, max_repeats=5).validate()
    with pytest.raises(UsageError, match="use at least 8"):
        Adaptive(min_repeats=6, max_repeats=40).validate()  # 6 runs cannot reach 99%


def test_spec_carries_the_rule_to_workers_and_omits_it_when_unused():
    spec = RunSpec(backend="hf-eager", adaptive=Adaptive(target_ci=0.03, min_repeats=8, max_repeats=12))
    assert RunSpec.from_json(spec.to_json()) == spec
    assert "adaptive" not in json.loads(RunSpec(backend="hf-eager").to_json())  # an older worker reads it


def _sweep_yaml(tmp_path, body: str):
    from gpt2bench.sweep.config import load_sweep

    path = tmp_path / "s.yaml"
    path.write_text("model: random\nprompt_lens: [4]\ngen_lens: [4]\nbackends: [{name: hf-eager}]\n" + body)
    return load_sweep(path)


def test_sweep_config_reads_repeats_auto(tmp_path):
    spec = _sweep_yaml(tmp_path, "repeats: auto\ntarget_ci: 0.03\nmin_repeats: 8\nmax_repeats: 12\ncell_budget_s: 5\n")
    assert spec.adaptive == Adaptive(0.03, 8, 12, 5.0)
    assert spec.record(2)["adaptive"]["target_ci"] == 0.03
    assert "adaptive" not in _sweep_yaml(tmp_path, "repeats: 3\n").record(2)  # older folders resume
    with pytest.raises(UsageError, match=r"s.yaml:\d+: .*applies to repeats: auto only"):
        _sweep_yaml(tmp_path, "repeats: 3\ntarget_ci: 0.02\n")
    with pytest.raises(UsageError, match=r"min_repeats 4 cannot bound a median .* use at least 9"):
        _sweep_yaml(tmp_path, "repeats: auto\nmin_repeats: 4\n")
    with pytest.raises(UsageError, match="interleave alternates fixed repetitions"):
        _sweep_yaml(tmp_path, "repeats: auto\ninterleave: true\n")


def test_sweep_flags_override_the_configs_repetitions(tmp_path):
    from gpt2bench.cli.sweep import _with_repeats

    fixed = _sweep_yaml(tmp_path, "repeats: 3\n")
    auto = _with_repeats(fixed, "auto", 0.03)
    assert auto.adaptive == Adaptive(target_ci=0.03) and auto.repeats == Adaptive().max_repeats
    own = _sweep_yaml(tmp_path, "repeats: auto\nmin_repeats: 8\nmax_repeats: 12\ncell_budget_s: 5\n")
    assert _with_repeats(own, "auto", None).adaptive == own.adaptive  # the config's own rule is kept
    assert _with_repeats(own, None, 0.05).adaptive == Adaptive(0.05, 8, 12, 5.0)
    back = _with_repeats(own, "4", None)
    assert back.repeats == 4 and back.adaptive is None
    for args, message in [
        ((fixed, None, 0.02), "--target-ci applies to repeats auto, add --repeats auto"),
        ((fixed, "4", 0.02), "--target-ci applies to repeats auto, not to a fixed count"),
        ((fixed, "0", None), "--repeats must be at least 1, got 0"),
        ((fixed, "many", None), "--repeats must be a whole number or auto, got 'many'"),
        ((fixed, "auto", 2.0), r"target_ci must be in \(0, 1\)"),
    ]:
        with pytest.raises(UsageError, match=message):
            _with_repeats(*args)


def test_harness_runs_until_the_rule_stops_and_records_why(tiny_model, tokenizer):
    backend = load_backend("hf-eager", tiny_model)
    prompts = make_prompts(tokenizer, 8, 1)
    # A target any interval meets (half-width under 10x the median: no timing noise can miss it).
    rule = Adaptive(target_ci=10.0, min_repeats=8, max_repeats=12, budget_s=60)
    m = measure(backend, prompts, 6, Sampling(), 1, 1, adaptive=rule)
    assert len(m.runs) == 8 and m.stop_reason == TARGET
    tight = Adaptive(target_ci=1e-9, min_repeats=8, max_repeats=12, budget_s=60)
    m = measure(backend, prompts, 6, Sampling(), 1, 1, adaptive=tight)
    assert len(m.runs) == 12 and m.stop_reason == MAX_REPEATS
    columns = m.precision()
    assert columns["e2e_median_ci_low"] <= statistics.median(r.e2e_ms for r in m.runs) <= columns["e2e_median_ci_high"]
    assert m.timed_s <= m.loop_s and m.warmup_s > 0


SESSION = """
import json, sys
from pathlib import Path
from torch._dynamo.utils import counters
from gpt2bench.backends import BackendSettings, get_backend
from gpt2bench.backends.aoti import COUNTS
from gpt2bench.backends.base import Sampling
from gpt2bench.measure.harness import measure
from gpt2bench.measure.prompts import make_prompts
from gpt2bench.measure.stopping import Adaptive
from gpt2bench.models.ref import load_tokenizer, local_model

def compiled():  # dynamo's graphs and the packages built or loaded
    return counters["stats"]["unique_graphs"] + COUNTS["built"] + COUNTS["loaded"]

model = local_model("tiny", Path(sys.argv[1]))
prompts = make_prompts(load_tokenizer(model), 8, 1)
backends = {}
for mode in sys.argv[3].split(","):  # the order they load in: the first ran ~3% slower here
    backends[mode] = get_backend("static-kv").create()
    backends[mode].load(model, BackendSettings(threads=2, options={"compile_mode": "default"}))
    measure(backends[mode], prompts, 24, Sampling(), 1, 1)  # this cell's steps
measure(backends["shared"], prompts, 100, Sampling(), 1, 1)  # another cache length
blocks = {"shared": [], "alone": []}
for r in range(int(sys.argv[2])):  # blocks of this cell's runs, in ABBA order
    for mode in ("shared", "alone") if r % 2 == 0 else ("alone", "shared"):
        before = compiled()
        if mode == "shared":
            m = measure(backends[mode], prompts, 24, Sampling(), 1, 1, adaptive=Adaptive(0.02, 8, 18, 30))
        else:
            m = measure(backends[mode], prompts, 24, Sampling(), 1, 18)
        assert compiled() == before, "returning to the first shape compiled again"
        blocks[mode].append({name: [getattr(run, name) for run in m.runs] for name in ("tpot_ms", "e2e_ms")})
print(json.dumps(blocks))
"""


ORDERS = ("shared,alone", "alone,shared")


def test_adaptive_runs_on_shared_compiles_match_a_fixed_count_measured_alone(tiny_model_dir):
    """A cell measured adaptively on steps compiled for it earlier in its instance (after another
    cell's shape) has the median of the same cell measured alone with a fixed count, by another
    instance: the paired ratio of their medians, round by round, has an interval that holds 1. And
    going back to its shape compiled nothing. Both in one fresh process, their blocks interleaved.

    Why paired rounds in one process: on this VM the speed of one block swung 0.5-1.7x against its
    neighbour's within seconds, and pooled intervals of two sides missed each other in 2 of 10 trials
    of identical code. Two processes differ as well: identical workers, each loading the same
    packages, ran 0.96-1.13x each other by median over 12 paired rounds (tiny model, 0.5 ms TPOT).
    Two instances of static-kv in one process, each with its own packaged steps and cache, do
    not, except by the order they loaded in: the instance loaded first ran ~3% slower by median
    (ratio 1.03-1.04 shared-first against 0.99-1.01 alone-first, 2026-12-04, Zen 4; CI saw the 99.8%
    interval's low end at 1.07 with shared always first). So the test runs both orders, 16 rounds
    each, and pools the 32 ratios, as the A/B gate starts its worker pairs in both orders. With the
    shared instance's attention window forced to 1,024 slots (16x this cell's, ~+10% TPOT) the
    99.8% interval of 30 shared-first ratios missed 1 in 2 of 3 trials (1.01-1.24, 1.03-1.21)."""
    from conftest import run_python

    runs = [run_python(SESSION, str(tiny_model_dir), "16", order, timeout=600) for order in ORDERS]
    sessions = [json.loads(out.splitlines()[-1]) for out in runs]
    for name in ("tpot_ms", "e2e_ms"):
        ratios = [
            statistics.median(shared[name]) / statistics.median(alone[name])
            for blocks in sessions
            for shared, alone in zip(blocks["shared"], blocks["alone"], strict=True)
        ]
        low, high = median_ci(ratios, 0.998)  # 32 ratios: the 7th and 26th
        assert low <= 1.0 <= high, (name, sorted(ratios))


def test_run_repeats_auto_reports_its_precision_and_bad_counts_are_one_line(tmp_path, tiny_model_dir):
    from conftest import run_cli

    args = ("run", "--backend", "hf-eager", "--model", str(tiny_model_dir), "--prompt-len", "8", "--gen-len", "4")
    proc = run_cli(*args, "--repeats", "auto", "--target-ci", "0.5", "--output", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    (folder,) = tmp_path.iterdir()
    (row,) = json.loads((folder / "results.json").read_text())["rows"]
    out = " ".join(proc.stdout.split())  # rich wraps lines at the terminal's width
    assert f"precision: {row['repeats']} runs, median TPOT +-" in out and f"stopped: {row['stop_reason']}" in out
    assert row["repeats"] in Adaptive().looks()  # the rule's defaults, stopped at one of its looks
    if row["stop_reason"] == TARGET:
        assert max(row["tpot_ci_rel"], row["e2e_ci_rel"]) <= 0.5
    else:
        assert row["stop_reason"] == MAX_REPEATS and row["repeats"] == Adaptive().max_repeats
    bad = run_cli(*args, "--repeats", "many", "--output", str(tmp_path))
    assert bad.returncode != 0 and "--repeats must be a whole number or auto, got 'many'" in bad.stderr
    assert "Traceback" not in bad.stderr


def test_a_sweep_ends_with_where_its_time_went(tmp_path, tiny_model_dir):
    from conftest import run_cli

    config = tmp_path / "s.yaml"
    config.write_text(
        f"model: {tiny_model_dir}\noutput: {tmp_path / 'out'}\nrepeats: auto\nmin_repeats: 8\nmax_repeats: 12\n"
        "target_ci: 0.5\nwarmup: 1\nprompt_lens: [4, 8]\ngen_lens: [4]\nbackends: [{name: hf-eager}]\n"
    )
    proc = run_cli("sweep", str(config))
    assert proc.returncode == 0, proc.stderr
    out = " ".join(proc.stdout.split())  # rich wraps lines at the terminal's width
    assert "where the time went" in out and "untimed overhead" in out
    doc = json.loads((tmp_path / "out" / "results.json").read_text())
    assert "cells by why they stopped:" in out and all(r["stop_reason"] in out for r in doc["rows"])
    breakdown = doc["time_breakdown"]
    book = breakdown["by_backend_s"]["hf-eager"]
    rows = doc["rows"]
    assert book["timed"] == pytest.approx(sum(r["timed_s"] for r in rows))
    assert book["warmup"] == pytest.approx(sum(r["warmup_s"] for r in rows))
    assert book["load"] > 0 and breakdown["total_s"]["idle"] >= 0
    parts = sum(breakdown["total_s"].values())
    assert parts == pytest.approx(breakdown["wall_s"], rel=0.05)  # every second is in some part
    assert breakdown["overhead_s"] == pytest.approx(breakdown["wall_s"] - book["timed"] - book["quality"])
