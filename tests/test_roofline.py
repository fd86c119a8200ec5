import json
import time

import pytest

from conftest import run_python
from gpt2bench.backends import get_backend
from gpt2bench.machine import roofs as roofline
from gpt2bench.machine.roofs import machine_roofs
from gpt2bench.measure import roofline as arithmetic
from gpt2bench.measure.roofline import decode_weight_bytes, param_count, prefill_flops, roofline_columns


def roof_of(roofs, backend, dtype):
    """The roof a row of `backend` in `dtype` is held to, from the backend's declared arithmetic."""
    return arithmetic.peak_for(roofs, get_backend(backend).arithmetic(dtype))


def test_decode_bytes_are_every_parameter_but_the_position_table(tiny_model):
    from transformers import GPT2LMHeadModel

    model = GPT2LMHeadModel.from_pretrained(tiny_model.path)
    config = tiny_model.config()
    params = sum(p.numel() for p in model.parameters())  # the tied lm_head counts once
    wpe = model.transformer.wpe.weight.numel()
    assert decode_weight_bytes(config, 4) == 4 * (params - wpe)
    assert decode_weight_bytes(config, 1) == params - wpe


def test_gpt2_124m_reads_about_half_a_gigabyte_per_token():
    config = {"n_embd": 768, "n_layer": 12, "vocab_size": 50257}
    assert decode_weight_bytes(config, 4) == pytest.approx(4 * (124_439_808 - 1024 * 768))


def test_roofline_columns_on_a_hand_made_row():
    config = {"n_embd": 2, "n_layer": 1, "vocab_size": 3}
    # params: attention 2*6+6+2*2+2 = 24, mlp 2*8+8+8*2+2 = 42, two LayerNorms 8, ln_f 4, wte 6 -> 84
    assert decode_weight_bytes(config, 4) == 336
    matmul_params, embedding = param_count(config)
    assert (matmul_params, embedding) == (2 * 6 + 4 + 2 * 16 + 6, 6)
    row = {
        "backend": "hf-eager",
        "dtype": "fp32",
        "tpot_ms_median": 10.0,
        "ttft_ms_median": 2.0,
        "batch_size": 2,
        "prompt_len": 3,
        "gen_len": 1,  # no decode step: no KV traffic; the KV term has tests of its own
    }
    cols = roofline_columns(row, config, 4, bandwidth_gbs=1e-4, peak_gflops=1e-4)
    assert cols["weight_bytes_per_token"] == 336 == cols["decode_bytes_per_token"]
    assert cols["decode_gbs"] == pytest.approx(336 / 0.010 / 1e9)
    assert cols["decode_bw_frac"] == pytest.approx(336 / 0.010 / 1e9 / 1e-4)
    # batch 2: block matmuls (48 params) per prompt token, lm_head (6) on the last position only,
    # causal attention
    flops = 2 * (2 * 48 * 3 + 2 * 6 + 2 * 2 * 1 * 2 * 3 * 4 / 2)
    assert prefill_flops(config, 2, 3) == pytest.approx(flops)
    assert cols["prefill_gflops"] == pytest.approx(flops / 0.002 / 1e9)
    assert cols["prefill_peak_frac"] == pytest.approx(flops / 0.002 / 1e9 / 1e-4)
    assert cols["bandwidth_source"] == "cached" and cols["peak_gflops"] == 1e-4
    # Probed runs replace the cached fraction: 336 B / 10 ms = 33.6 kB/s against probes of 16.8 kB/s.
    probed = roofline_columns(row, config, 4, 1.0, None, [(10.0, 1.68e-5, 1.68e-5)])
    assert probed["decode_bw_frac"] == pytest.approx(2.0) and probed["bandwidth_source"] == "probe"
    int8 = roofline_columns(row, config, get_backend("onnx-int8").bytes_per_weight("fp32"), None, None)
    assert int8["weight_bytes_per_token"] == 84 and int8["decode_bw_frac"] is None


def test_microbenchmarks_are_positive_and_cached(monkeypatch, tmp_path):
    monkeypatch.setenv("GPT2BENCH_CACHE", str(tmp_path))
    monkeypatch.setattr(roofline, "measure_read_bandwidth", lambda threads: 12.5)
    peaks = {"fp32": 80.0, "bf16": 200.0, "int8": None}
    monkeypatch.setattr(roofline, "measure_peak_gflops", lambda threads, dtype, size=0: peaks[dtype])
    expected = {"read_bandwidth_gbs": 12.5, "peak_gflops": peaks, "matmul_gflops": peaks}
    assert machine_roofs(1, measure=roofline.measure_roofs) == expected

    def fail(threads, dtype=None, size=0):
        raise AssertionError("measured again instead of using the cache")

    monkeypatch.setattr(roofline, "measure_read_bandwidth", fail)
    monkeypatch.setattr(roofline, "measure_peak_gflops", fail)
    assert machine_roofs(1, measure=roofline.measure_roofs)["read_bandwidth_gbs"] == 12.5


def test_real_microbenchmarks_return_positive_numbers():
    assert roofline.measure_read_bandwidth(1, size_mb=32, repeats=2) > 0
    assert roofline.measure_peak_gflops(1, "fp32", size=256, repeats=2) > 0
    assert roofline.measure_peak_gflops(1, "bf16", size=256, repeats=2) > 0
    int8 = roofline.measure_peak_gflops(1, "int8", size=256, repeats=2)
    assert int8 is None or int8 > 0


def test_int8_has_a_roof_wherever_torch_has_a_quantized_engine():
    # torch._int_mm alone is a fallback loop on an AVX2-only CPU; fbgemm's int8 GEMM is not.
    import torch

    if not set(torch.backends.quantized.supported_engines) & {"fbgemm", "x86"}:
        pytest.skip("this torch build has no x86 quantized engine")
    fp32 = roofline.measure_peak_gflops(2, "fp32", size=512, repeats=3)
    int8 = roofline.measure_peak_gflops(2, "int8", size=512, repeats=3)
    assert int8 is not None and roofline.native_roofs({"fp32": fp32, "int8": int8})["int8"] == int8


def test_a_kernel_far_slower_than_its_sibling_is_screened_out_before_the_long_timing(monkeypatch):
    calls = []

    def kernels(dtype, size):
        def kernel(name, seconds):
            return lambda: calls.append((name, size)) or time.sleep(seconds)

        # "loop" is 100x slower than "gemm" at the screening size: never timed at full size.
        return [kernel("loop", 0.01 if size == 256 else 10.0), kernel("gemm", 0.0001)]

    monkeypatch.setattr(roofline, "_matmul_kernels", kernels)
    assert roofline.measure_peak_gflops(1, "int8", size=2048, repeats=2) > 0
    assert ("loop", 2048) not in calls and ("gemm", 2048) in calls and ("loop", 256) in calls


def test_a_matmul_slower_than_fp32_is_a_fallback_loop_not_a_roof():
    # Measured on an AVX2-only EPYC: torch has no native bf16 or int8 matmul there.
    avx2 = {"fp32": 147.0, "bf16": 0.3, "int8": 1.4}
    assert roofline.native_roofs(avx2) == {"fp32": 147.0, "bf16": None, "int8": None}
    native = {"fp32": 165.0, "bf16": 399.0, "int8": 850.0}  # AVX512-BF16 and VNNI
    assert roofline.native_roofs(native) == native
    assert roofline.native_roofs({"fp32": None, "bf16": 5.0, "int8": None}) == {"fp32": None, "bf16": 5.0, "int8": None}
    row = {"backend": "static-kv", "dtype": "bf16", "batch_size": 1, "prompt_len": 50, "gen_len": 100}
    timed = {**row, "tpot_ms_median": 19.0, "ttft_ms_median": 463.0}
    roof = roof_of({"peak_gflops": roofline.native_roofs(avx2)}, "static-kv", "bf16")
    cols = roofline_columns(timed, {"n_embd": 768, "n_layer": 12, "vocab_size": 50257}, 2, 20.0, roof)
    assert cols["peak_gflops"] is None and cols["prefill_peak_frac"] is None  # not 9,000% of a loop


def test_fallback_matmuls_are_screened_small_instead_of_timed_for_minutes(monkeypatch):
    # bf16 runs a fallback loop (slower than fp32 at the screening size): never timed at 2048.
    rates = {"fp32": 90.0, "bf16": 1.4, "int8": 180.0}
    timed = []

    def measure(threads, dtype, size):
        timed.append((dtype, size))
        return rates[dtype] * (2 if size == 2048 else 1)

    monkeypatch.setattr(roofline, "measure_peak_gflops", measure)
    assert roofline.measure_matmuls(2) == {"fp32": 180.0, "bf16": 1.4, "int8": 360.0}
    assert ("bf16", 2048) not in timed and ("int8", 2048) in timed and ("fp32", 2048) in timed


def test_each_row_is_held_to_the_matmul_roof_of_its_arithmetic():
    roofs = {"read_bandwidth_gbs": 30.0, "peak_gflops": {"fp32": 170.0, "bf16": 400.0, "int8": 860.0}}
    assert roof_of(roofs, "static-kv", "bf16") == 400.0
    assert roof_of(roofs, "hf-eager", "fp32") == 170.0
    assert roof_of(roofs, "onnx-int8", "fp32") == 860.0  # int8 activations x int8 weights
    assert roof_of(roofs, "hf-int8-dynq", "fp32") == 860.0
    assert roof_of(roofs, "hf-fp16-dynq", "fp32") == 170.0  # fp16 weights, fp32 arithmetic
    assert roof_of(roofs, "vllm", "fp16") is None
    assert roof_of({}, "hf-eager", "fp32") is None  # GPU rows: no CPU roofs
    assert get_backend("onnx-int8").arithmetic("fp32") == "int8"
    assert get_backend("static-kv").arithmetic("bf16") == "bf16"


def test_summary_names_the_roof_and_says_when_there_is_none():
    from gpt2bench.report.summary import roofline_line

    row = {
        "dtype": "bf16",
        "compute_dtype": "bf16",
        "weight_bytes_per_token": 247e6,
        "decode_gbs": 24.0,
        "decode_bw_frac": 0.8,
        "read_bandwidth_gbs": 30.0,
        "bandwidth_source": "cached",
        "prefill_gflops": 312.0,
        "peak_gflops": 400.0,
        "prefill_peak_frac": 0.78,
    }
    assert "78% of the 400 GFLOP/s bf16 matmul roof" in roofline_line(row)
    missing = roofline_line({**row, "peak_gflops": None, "prefill_peak_frac": None})
    assert "no bf16 matmul roof measured" in missing and "0%" not in missing.split("prefill")[1]
    gpu = roofline_line({**row, "read_bandwidth_gbs": None, "decode_bw_frac": None, "bandwidth_source": None})
    assert "no read bandwidth measured" in gpu and "0%" not in gpu.split("prefill")[0]
    assert roofline_line({"decode_gbs": None}) is None
    int8 = roofline_line({**row, "dtype": "fp32", "compute_dtype": "int8", "peak_gflops": 325.0})
    assert "prefill 312.0 GOP/s (78% of the 325 GOP/s int8 matmul roof)" in int8


def test_probed_fraction_pairs_each_run_with_the_probes_around_it():
    # 1 MB per token; run 1 decodes at 0.1 ms/token = 10 GB/s between probes of 18 and 22 GB/s (0.5),
    # run 2 at 0.05 ms = 20 GB/s between 22 and 42 (20/32), run 3 at 0.1 ms = 10 GB/s between 42 and 38.
    runs = arithmetic.probe_runs([0.1, 0.05, 0.1], [18.0, 22.0, 42.0, 38.0])
    assert runs == [(0.1, 18.0, 22.0), (0.05, 22.0, 42.0), (0.1, 42.0, 38.0)]
    assert arithmetic.probed_bw_frac(1e6, runs) == pytest.approx(0.5)  # median of 0.5, 0.625, 0.25
    with pytest.raises(ValueError, match="one probe more than runs"):
        arithmetic.probe_runs([0.1, 0.1], [20.0, 20.0])


def test_roofs_measured_on_a_busy_machine_are_cached_flagged_and_said(monkeypatch, tmp_path, caplog):
    # Not caching them made every run on a loaded machine measure again, for minutes each.
    from gpt2bench.machine.sysinfo import CpuContention

    def monitor(other_cpu_frac: float) -> type:
        class Monitor:
            def stop(self) -> CpuContention:
                return CpuContention(wall_s=1.0, other_cpu_s=other_cpu_frac, other_cpu_frac=other_cpu_frac)

        return Monitor

    monkeypatch.setenv("GPT2BENCH_CACHE", str(tmp_path))
    calls = []
    monkeypatch.setattr(roofline, "measure_read_bandwidth", lambda threads: calls.append(threads) or 12.5)
    monkeypatch.setattr(roofline, "measure_peak_gflops", lambda threads, dtype, size=0: 80.0)
    monkeypatch.setattr(roofline, "ContentionMonitor", monitor(0.5))
    here = roofline.measure_roofs
    first = machine_roofs(1, measure=here)
    assert first["read_bandwidth_gbs"] == 12.5 and first["contended"] == 0.5
    assert "measured while other processes used 50% of the CPU" in caplog.text and "env --refresh" in caplog.text
    caplog.clear()
    assert machine_roofs(1, measure=here)["contended"] == 0.5 and len(calls) == 1  # cached: not measured again
    assert "measured while other processes used 50%" in caplog.text  # and every run says so
    monkeypatch.setattr(roofline, "ContentionMonitor", monitor(0.0))
    assert "contended" not in machine_roofs(1, refresh=True, measure=here) and len(calls) == 2  # env --refresh


def test_the_roofs_measurement_keeps_to_its_budget(monkeypatch):
    import time as clock

    calls = []
    monkeypatch.setattr(roofline, "_deadline", [clock.monotonic() - 1])  # the budget is spent
    assert roofline._best_of(lambda: calls.append(1), repeats=7) >= 0 and calls == [1]  # one timed call, no more
    monkeypatch.setattr(roofline, "_deadline", [])
    roofline._best_of(lambda: calls.append(1), repeats=7)
    assert len(calls) == 8


def test_roofs_are_measured_in_a_helper_process_that_leaves_torch_out_of_the_caller(tmp_path):
    code = (
        "import json, sys; from gpt2bench.machine.roofs import machine_roofs; roofs = machine_roofs(1); "
        "print(json.dumps([roofs, 'torch' in sys.modules]))"
    )
    out = run_python(code, env={"GPT2BENCH_CACHE": str(tmp_path)})
    roofs, caller_imported_torch = json.loads(out.strip().splitlines()[-1])
    assert not caller_imported_torch
    assert roofs["read_bandwidth_gbs"] > 0 and roofs["peak_gflops"]["fp32"] > 0


def test_a_failing_roofs_helper_is_a_clear_error(monkeypatch, tmp_path):
    from gpt2bench.core.errors import BenchError

    monkeypatch.setenv("GPT2BENCH_CACHE", str(tmp_path))
    with pytest.raises(BenchError, match=r"measuring the machine's roofs failed: .*invalid literal"):
        roofline.measure_in_helper("not-a-number")  # type: ignore[arg-type]


def test_the_machines_roofs_are_measured_before_the_timed_runs(monkeypatch, tiny_model_dir):
    # Measuring them takes seconds on a machine's first run: a Ctrl-C there must cost no timed run.
    import gpt2bench.measure.harness
    from gpt2bench.measure.runner import run_cell
    from gpt2bench.measure.spec import RunSpec

    order: list[str] = []
    measure = gpt2bench.measure.harness.measure

    def timed(*args, **kwargs):
        order.append("timed runs")
        return measure(*args, **kwargs)

    def roofs(threads, *args, **kwargs):
        order.append("roofs")
        return {}

    monkeypatch.setattr(gpt2bench.measure.harness, "measure", timed)
    monkeypatch.setattr(roofline, "machine_roofs", roofs)
    spec = RunSpec(backend="hf-eager", model=str(tiny_model_dir), prompt_len=4, gen_len=2, warmup=0, repeats=1)
    cell = run_cell(spec, "r", lambda _msg: None)
    assert order == ["roofs", "timed runs"] and cell.row["tokens_per_run"] == 2


def test_a_backend_declares_its_weight_width_and_arithmetic_so_a_plugin_gets_roofline_columns():
    from gpt2bench.backends.base import REGISTRY, Backend, register

    @register("test-int4-weights", description="declared facts only", weight_bytes=0.5625, compute_dtype="int8")
    class Int4(Backend):  # q4_0-like: 4.5 bits per weight with its block scales
        def load(self, model, settings): ...
        def generate(self, input_ids, max_new_tokens, sampling): ...
        def logits(self, input_ids): ...

    try:
        info = get_backend("test-int4-weights")
        assert info.bytes_per_weight("fp32") == 0.5625 and info.arithmetic("fp32") == "int8"
        config = {"n_embd": 2, "n_layer": 1, "vocab_size": 3}
        row = {"tpot_ms_median": 1.0, "ttft_ms_median": 1.0, "batch_size": 1, "prompt_len": 3, "gen_len": 1}
        assert (
            roofline_columns(row, config, info.bytes_per_weight("fp32"), 30.0, None)["weight_bytes_per_token"]
            == 84 * 0.5625
        )
        # Undeclared, a backend's weights are as wide as the row's dtype, its arithmetic that dtype.
        assert (
            get_backend("static-kv").bytes_per_weight("bf16") == 2
            and get_backend("hf-eager").arithmetic("fp32") == "fp32"
        )
    finally:
        del REGISTRY["test-int4-weights"]


def test_cached_roofs_belong_to_the_cpu_that_measured_them(monkeypatch, tmp_path):
    # A cache shared between hosts (a Docker volume) must not hand one machine's roofs to another.
    from gpt2bench.core import cpu as core_cpu

    monkeypatch.setenv("GPT2BENCH_CACHE", str(tmp_path))
    measured = []

    def measure(threads):
        measured.append(threads)
        return {"read_bandwidth_gbs": 10.0 * len(measured), "peak_gflops": {}}, 0.0

    zen3 = {"vendor": "AuthenticAMD", "family": "25", "model": "1", "stepping": "1", "isa": ["avx2", "fma"]}
    monkeypatch.setattr(core_cpu, "cpu_id", lambda: zen3)
    assert machine_roofs(2, measure=measure)["read_bandwidth_gbs"] == 10.0
    assert machine_roofs(2, measure=measure)["read_bandwidth_gbs"] == 10.0 and len(measured) == 1  # cached
    monkeypatch.setattr(core_cpu, "cpu_id", lambda: {**zen3, "model": "17", "isa": ["avx2", "avx512_bf16"]})
    assert machine_roofs(2, measure=measure)["read_bandwidth_gbs"] == 20.0  # another CPU: measured anew


def test_prefill_flops_count_lm_head_on_the_last_position_only():
    # GPT-2 124M at prompt 50: lm_head (768 x 50257) once, not 50 times. Counting it per prompt
    # token put prefill_gflop (and prefill_gflops, prefill_peak_frac) 1.44x too high.
    config = {"n_embd": 768, "n_layer": 12, "vocab_size": 50257}
    blocks = 12 * (768 * 3 * 768 + 768 * 768 + 2 * 768 * 3072)
    attention = 2 * 2 * 12 * 768 * 50 * 51 / 2
    assert prefill_flops(config, 1, 50) == pytest.approx(2 * blocks * 50 + 2 * 768 * 50257 + attention)
    overcounted = 2 * (blocks + 768 * 50257) * 50 + attention
    assert overcounted / prefill_flops(config, 1, 50) == pytest.approx(1.44, abs=0.01)


def test_decode_bytes_count_the_kv_cache_as_each_backend_reads_it():
    from gpt2bench.measure.roofline import kv_bytes_per_step

    gpt2 = {"n_embd": 768, "n_layer": 12, "vocab_size": 50257, "n_positions": 1024}
    per_token = 2 * 12 * 768 * 4  # K and V, every layer, fp32: 73.7 kB
    # Prompt 900, 124 generated: decode steps attend to 901..1023 tokens, 962 on average.
    assert kv_bytes_per_step(gpt2, 1, 900, 124, 4) == pytest.approx(per_token * 962)
    weights = decode_weight_bytes(gpt2, 4)
    assert kv_bytes_per_step(gpt2, 1, 900, 124, 4) / weights == pytest.approx(0.143, abs=0.005)  # +14% fp32
    assert kv_bytes_per_step(gpt2, 1, 900, 124, 4) / decode_weight_bytes(gpt2, 1) == pytest.approx(0.57, abs=0.01)
    # A batch reads every sequence's cache; a concatenating cache moves it three times; a static one
    # reads all its slots (prompt + gen rounded up to 64, at most the context) from the first step.
    assert kv_bytes_per_step(gpt2, 4, 900, 124, 4) == pytest.approx(4 * per_token * 962)
    assert kv_bytes_per_step(gpt2, 1, 900, 124, 4, "concat") == pytest.approx(3 * per_token * 962)
    assert kv_bytes_per_step(gpt2, 1, 50, 100, 2, "allocated", 64) == pytest.approx(per_token / 2 * 192)
    assert kv_bytes_per_step(gpt2, 1, 1000, 20, 4, "allocated", 64) == pytest.approx(per_token * 1024)
    assert kv_bytes_per_step(gpt2, 8, 50, 1, 4) == 0  # one token: no decode step
    assert get_backend("hf-eager").kv_traffic("fp32") == (4, "concat", 1)
    assert get_backend("static-kv").kv_traffic("bf16") == (2, "allocated", 64)
    assert get_backend("onnx-int8").kv_traffic("fp32") == (4, "concat", 1)  # int8 weights, fp32 cache
    assert get_backend("vllm").kv_traffic("bf16") == (2, "context", 1)


def test_the_bandwidth_fraction_is_of_weights_and_kv_together():
    config = {"n_embd": 2, "n_layer": 1, "vocab_size": 3, "n_positions": 64}
    row = {"tpot_ms_median": 1.0, "ttft_ms_median": 1.0, "batch_size": 1, "prompt_len": 6, "gen_len": 4}
    cols = roofline_columns(row, config, 4, 1e-6, None, kv=(4, "context", 1))
    assert cols["kv_bytes_per_token"] == 2 * 2 * 4 * (6 + 4 / 2) == 128
    assert cols["decode_bytes_per_token"] == 336 + 128
    assert cols["decode_gbs"] == pytest.approx(464 / 1e-3 / 1e9)
    assert cols["decode_bw_frac"] == pytest.approx(464 / 1e-3 / 1e9 / 1e-6)
