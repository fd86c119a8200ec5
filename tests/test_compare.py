"""compare on synthetic results: what is flagged, what is not, and exit codes."""

import json

import numpy as np
import pytest

from conftest import run_cli
from gpt2bench.report.compare import compare, key_fields, machine_note

TIGHT = [10.0, 10.1, 9.9, 10.05, 9.95, 10.02, 9.98]


def doc(cells):
    """cells: {(backend, prompt): tpot samples}; other metrics follow TPOT."""
    rows, samples = [], []
    for (backend, prompt), tpot in cells.items():
        rows.append(
            {
                "backend": backend,
                "dtype": "fp32",
                "options": "{}",
                "prompt_len": prompt,
                "gen_len": 16,
                "batch_size": 1,
                "model": "random",
                "model_hash": "0123456789abcdef",
                "threads": 2,
                "sampling": "greedy",
                "device": "cpu",
                "status": "ok",
                "label": backend,
                "tpot_ms_median": float(np.median(tpot)),
                "ppl": 30.0,
                "agree_greedy": 1.0,
            }
        )
        samples.append(
            {"per_run": {"tpot_ms": list(tpot), "e2e_ms": [16 * v for v in tpot], "ttft_ms": [v * 2 for v in tpot]}}
        )
    return {"schema_version": 1, "rows": rows, "samples": samples}


def verdicts(base, new, **kw):
    out = {}
    for v in compare(doc(base), doc(new), **kw):
        fields = key_fields(v.key)
        out[(fields["backend"], int(fields["prompt_len"]), v.metric)] = v.verdict
    return out


def test_a_tight_20_percent_slowdown_is_flagged():
    out = verdicts({("onnx", 8): TIGHT}, {("onnx", 8): [v * 1.2 for v in TIGHT]})
    assert out[("onnx", 8, "tpot_ms")] == "slower"


def test_three_percent_noise_is_not():
    rng = np.random.default_rng(0)
    noisy = [v * 1.03 * (1 + rng.normal(0, 0.01)) for v in TIGHT]
    assert verdicts({("onnx", 8): TIGHT}, {("onnx", 8): noisy})[("onnx", 8, "tpot_ms")] == "same"


def test_a_large_change_in_noisy_samples_needs_significance():
    base = [10, 30, 12, 28, 11]
    assert verdicts({("onnx", 8): base}, {("onnx", 8): [13, 27, 15, 33, 12]})[("onnx", 8, "tpot_ms")] == "same"


def test_faster_is_reported():
    assert verdicts({("onnx", 8): TIGHT}, {("onnx", 8): [v * 0.7 for v in TIGHT]})[("onnx", 8, "tpot_ms")] == "faster"


def test_missing_and_new_rows_are_reported_not_crashed_on():
    out = verdicts({("onnx", 8): TIGHT, ("onnx", 32): TIGHT}, {("onnx", 8): TIGHT, ("hf-eager", 8): TIGHT})
    assert out[("onnx", 32, "-")] == "missing" and out[("hf-eager", 8, "-")] == "new"


def test_normalization_cancels_a_uniform_machine_slowdown():
    base = {("hf-eager", 8): [4 * v for v in TIGHT], ("onnx", 8): TIGHT}
    slow_machine = {k: [1.5 * v for v in vals] for k, vals in base.items()}
    assert verdicts(base, slow_machine)[("onnx", 8, "tpot_ms")] == "slower"
    normalized = verdicts(base, slow_machine, normalize="hf-eager")
    assert normalized[("onnx", 8, "tpot_ms")] == "same" and normalized[("hf-eager", 8, "-")] == "reference"
    # A real regression of onnx alone still shows through the normalization.
    regressed = {**slow_machine, ("onnx", 8): [1.5 * 1.3 * v for v in TIGHT]}
    assert verdicts(base, regressed, normalize="hf-eager")[("onnx", 8, "tpot_ms")] == "slower"


def test_quality_regressions_count():
    base, new = doc({("onnx-int8", 8): TIGHT}), doc({("onnx-int8", 8): TIGHT})
    new["rows"][0]["ppl"] = 31.0  # +3.3% perplexity
    new["rows"][0]["agree_greedy"] = 0.9
    out = {v.metric: v.verdict for v in compare(base, new)}
    assert out["ppl"] == "worse" and out["agree_greedy"] == "worse" and out["tpot_ms"] == "same"


def test_exit_codes(tmp_path):
    for name, data in {
        "base": doc({("onnx", 8): TIGHT}),
        "same": doc({("onnx", 8): TIGHT}),
        "slow": doc({("onnx", 8): [v * 1.2 for v in TIGHT]}),
    }.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "results.json").write_text(json.dumps(data))
    same = run_cli("compare", str(tmp_path / "base"), str(tmp_path / "same"))
    assert same.returncode == 0, same.stderr
    assert "| onnx | fp32 |" in same.stdout and "0 regression(s)" in same.stdout
    slow = run_cli("compare", str(tmp_path / "base"), str(tmp_path / "slow"))
    assert slow.returncode == 1 and "**slower**" in slow.stdout
    bad = run_cli("compare", str(tmp_path / "base"), str(tmp_path / "nowhere"))
    assert bad.returncode == 1 and "does not exist" in bad.stderr and "Traceback" not in bad.stderr
    unknown = run_cli("compare", str(tmp_path / "base"), str(tmp_path / "same"), "--metric", "speed")
    assert unknown.returncode == 2 and "unknown metric 'speed'" in unknown.stderr
    # A gate must not pass what it did not check: a baseline row the new run lacks fails it.
    (tmp_path / "less").mkdir()
    (tmp_path / "less" / "results.json").write_text(json.dumps(doc({("onnx-int8", 8): TIGHT})))
    less = run_cli("compare", str(tmp_path / "base"), str(tmp_path / "less"))
    assert less.returncode == 1 and "1 baseline comparison(s) missing from the new run" in less.stderr
    assert run_cli("compare", str(tmp_path / "base"), str(tmp_path / "less"), "--allow-missing").returncode == 0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"threshold": -1}, "thresholds must be >= 0"),
        ({"quality_threshold": -0.1}, "thresholds must be >= 0"),
        ({"alpha": 2}, "alpha must be between 0 and 1"),
        ({"normalize": "hf-eager"}, "--normalize hf-eager: the baseline has no hf-eager rows"),
    ],
)
def test_bad_settings_are_refused(kwargs, message):
    from gpt2bench.core.errors import UsageError

    with pytest.raises(UsageError, match=message):
        compare(doc({("onnx", 8): TIGHT}), doc({("onnx", 8): TIGHT}), **kwargs)


def test_runs_on_different_cpus_are_flagged():
    zen3 = {"cpu_model": "AMD EPYC", "cpu": {"family": "25", "model": "1", "isa": ["avx2", "fma"]}}
    zen4 = {"cpu_model": "AMD EPYC", "cpu": {"family": "25", "model": "17", "isa": ["avx2", "avx512_bf16"]}}
    assert machine_note({"environment": zen3}, {"environment": zen3}) is None
    note = machine_note({"environment": zen4}, {"environment": zen3})
    assert "model 17; avx2 avx512_bf16" in note and "model 1; avx2 fma" in note
    # A baseline that predates the CPU record names only the model: flagged, since nothing says it matches.
    assert machine_note({"environment": {"cpu_model": "AMD EPYC"}}, {"environment": zen3}) is not None
    # A cluster sweep's rows carry their machines: rows of two machines are flagged, whatever the driver ran on.
    spread = {"environment": zen3, "rows": [{"status": "ok", "machine": m} for m in ("aaaa", "bbbb")]}
    note = machine_note({"environment": zen3}, spread)
    assert note is not None and "the new run ran on 2 machines (a cluster sweep)" in note


def test_smallest_p_is_the_exact_test_on_fully_separated_samples():
    from scipy.stats import mannwhitneyu

    from gpt2bench.report.compare import smallest_p

    for n1, n2 in [(2, 2), (3, 3), (3, 5), (5, 5), (7, 4)]:
        low, high = list(range(n1)), list(range(100, 100 + n2))
        assert smallest_p(n1, n2) == pytest.approx(mannwhitneyu(low, high, alternative="two-sided").pvalue)


def test_too_few_repetitions_to_ever_be_significant_are_called_out(tmp_path):
    from gpt2bench.report.compare import power_note

    three = [10.0, 10.1, 9.9]
    doubled = [v * 2 for v in three]
    result = compare(doc({("onnx", 8): three}), doc({("onnx", 8): doubled}))
    assert {v.verdict for v in result} == {"same"}  # 2x slower, yet p can be no lower than 0.1
    assert "3 comparison(s) had too few repetitions to reach alpha 0.05: 3 vs 3 (smallest p 0.1)" in power_note(
        result, 0.05
    )
    assert power_note(compare(doc({("onnx", 8): TIGHT[:5]}), doc({("onnx", 8): TIGHT[:5]})), 0.05) is None
    for name, data in {"base": doc({("onnx", 8): three}), "new": doc({("onnx", 8): doubled})}.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "results.json").write_text(json.dumps(data))
    proc = run_cli("compare", str(tmp_path / "base"), str(tmp_path / "new"))
    assert proc.returncode == 0 and "they can only read 'same'" in proc.stdout


def test_one_repetition_per_side_is_no_verdict():
    # Before: p was None for one sample, None counted as significant, and a 20% gap read "slower".
    out = verdicts({("onnx", 8): [10.0]}, {("onnx", 8): [12.0]})
    assert out[("onnx", 8, "tpot_ms")] == "too-few"


def test_holm_adjustment_on_hand_computed_p_values():
    from gpt2bench.report.compare import holm

    # sorted 0.01, 0.02, 0.04 -> 3 x 0.01, max(0.03, 2 x 0.02), max(0.04, 1 x 0.04); order kept
    assert holm([0.04, 0.01, 0.02]) == pytest.approx([0.04, 0.03, 0.04])
    assert holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])  # capped at 1, monotone
    assert holm([]) == []


def test_a_change_significant_alone_is_not_once_many_are_tested():
    # 5 vs 5 fully separated samples give p = 0.0079: significant alone, not among 40 comparisons
    # (Holm's smallest threshold is then 0.05 / 40 = 0.00125).
    base = [10.0, 10.1, 9.9, 10.05, 9.95]
    slow = [v * 1.2 for v in base]
    alone = verdicts({("onnx", 8): base}, {("onnx", 8): slow}, metrics=("tpot_ms",))
    assert alone[("onnx", 8, "tpot_ms")] == "slower"
    many_base = {("onnx", p): base for p in range(1, 41)}
    many_new = {**many_base, ("onnx", 8): slow}
    out = verdicts(many_base, many_new, metrics=("tpot_ms",))
    assert out[("onnx", 8, "tpot_ms")] == "same"
    table = compare(doc(many_base), doc(many_new), metrics=("tpot_ms",))
    (eight,) = [v for v in table if key_fields(v.key)["prompt_len"] == "8" and v.metric == "tpot_ms"]
    assert eight.p_value == pytest.approx(0.0079, abs=1e-4) and eight.p_holm == pytest.approx(40 * eight.p_value)
