import math

import numpy as np
import pytest

from gpt2bench.measure.metrics import run_metrics, summarize

MS = 1_000_000


def test_metric_definitions_on_synthetic_timestamps():
    # Start at t=1000 ms; tokens reach the host at +100, +130, +160, +200 ms; batch 2, prompt 10.
    t0 = 1000 * MS
    m = run_metrics(t0, [t0 + 100 * MS, t0 + 130 * MS, t0 + 160 * MS, t0 + 200 * MS], batch_size=2, prompt_len=10)
    assert m.ttft_ms == pytest.approx(100)
    assert m.e2e_ms == pytest.approx(200)
    assert m.tpot_ms == pytest.approx(100 / 3)  # (e2e - TTFT) / (n - 1)
    assert m.itl_ms == pytest.approx((30, 30, 40))
    assert m.decode_tps == pytest.approx(2 * 3 / 0.100)  # B (n-1) / (e2e - TTFT)
    assert m.overall_tps == pytest.approx(2 * 4 / 0.200)  # B n / e2e
    assert m.prefill_tps == pytest.approx(2 * 10 / 0.100)  # B P / TTFT
    # TPOT is the mean of the inter-token latencies, by construction.
    assert m.tpot_ms == pytest.approx(np.mean(m.itl_ms))


def test_single_token_has_no_decode_phase():
    m = run_metrics(0, [50 * MS], batch_size=1, prompt_len=5)
    assert m.ttft_ms == m.e2e_ms == pytest.approx(50)
    assert math.isnan(m.tpot_ms) and math.isnan(m.decode_tps)
    assert m.itl_ms == ()
    assert m.overall_tps == pytest.approx(1 / 0.05)


@pytest.mark.parametrize("stamps", [[], [5 * MS, 4 * MS], [-1]])
def test_bad_timestamps_are_rejected(stamps):
    with pytest.raises(ValueError):
        run_metrics(0, stamps, batch_size=1, prompt_len=1)


def test_summary_statistics():
    s = summarize([5.0, 1.0, 4.0, 2.0, 3.0])
    assert s["median"] == 3 and s["mean"] == 3 and s["min"] == 1 and s["max"] == 5
    assert s["std"] == pytest.approx(math.sqrt(2.5))  # sample std, ddof=1
    # Five samples cannot tell p90 or p99 from the maximum: not reported.
    assert math.isnan(s["p90"]) and math.isnan(s["p99"])
    ten = summarize([float(v) for v in range(1, 11)])
    assert ten["p90"] == pytest.approx(9.1) and math.isnan(ten["p99"])  # linear interpolation
    hundred = summarize([float(v) for v in range(1, 101)])
    assert hundred["p99"] == pytest.approx(99.01)
    half = 2.7764451051977987 * math.sqrt(2.5) / math.sqrt(5)  # t(0.975, 4) * s / sqrt(n)
    assert s["ci95_low"] == pytest.approx(3 - half)
    assert s["ci95_high"] == pytest.approx(3 + half)


def test_summary_ignores_nan_and_handles_one_sample():
    s = summarize([2.0, float("nan")])
    assert s["median"] == 2 and math.isnan(s["std"])  # one sample: no spread, not zero spread
    assert math.isnan(s["ci95_low"]) and math.isnan(s["ci95_high"])
    assert all(math.isnan(v) for v in summarize([float("nan")]).values())


def test_burst_fraction_on_synthetic_gaps():
    from gpt2bench.measure.metrics import burst_fraction, burst_warning

    assert burst_fraction([0.001, 0.002, 20.0, 21.0]) == 0.5  # two gaps under 10 us
    assert burst_fraction([]) == 0.0
    assert burst_warning(0.10) == "" and "50% of inter-token gaps" in burst_warning(0.5)
