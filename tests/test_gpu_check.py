"""scripts/gpu_check.sh, the one command that verifies the CUDA paths, run here where there is no
GPU: it must fail loudly at the first broken step, keep going through the rest, and write its report."""

import os
import subprocess
import sys
from pathlib import Path

import yaml

from gpt2bench.sweep.config import load_sweep

ROOT = Path(__file__).parents[1]


def test_its_sweep_covers_every_cuda_path_the_issue_lists():
    spec = load_sweep(ROOT / "configs" / "gpu_check.yaml")
    assert spec.device == "cuda" and {(c.prompt_len, c.gen_len) for c in spec.cells} == {(128, 128)}
    assert sorted(c.batch_size for c in spec.cells) == [1, 8]
    names = {(b.name, b.dtype, tuple(sorted(b.options))) for b in spec.backends}
    assert names == {
        ("hf-eager", "fp32", ()),
        ("hf-eager", "fp32", ("compile",)),
        ("static-kv", "fp16", ()),
        ("static-kv", "bf16", ()),
        ("onnx", "fp32", ()),
        ("vllm", "fp16", ()),
    }
    assert yaml.safe_load((ROOT / "configs" / "gpu_check.yaml").read_text())["model"] == "random"


def test_without_a_gpu_it_fails_loudly_and_still_runs_every_step(tmp_path, tiny_model_dir):
    env = {
        **os.environ,
        "GPU_CHECK_SKIP_INSTALL": "1",
        "VIRTUAL_ENV": str(Path(sys.executable).parents[1]),
        "GPU_CHECK_MODEL": str(tiny_model_dir),
    }
    report = tmp_path / "report"
    proc = subprocess.run(
        ["bash", str(ROOT / "scripts" / "gpu_check.sh"), str(report)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert proc.stderr.startswith("FAILED: gpu") and "torch sees no CUDA device" in proc.stderr
    table = (report / "report.md").read_text()
    for step in ("gpu", "ort-cuda-provider", "cuda-tests-ran-all", "sweep"):
        assert f"| {step} | FAILED" in table, table  # each broken path reported, none skipped
    assert "| cuda-tests | ok" in table  # they ran; here every one of them was skipped, and said so
    assert "Failed: gpu ort-cuda-provider cuda-tests-ran-all sweep" in table
    assert "--device cuda was asked for, but torch sees no CUDA device" in (report / "sweep.log").read_text()
