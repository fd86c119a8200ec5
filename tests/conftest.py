"""Shared fixtures. Tests never touch ../shared or the user's cache: everything is built here."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

TINY = {"n_layer": 2, "n_head": 2, "n_embd": 64, "initializer_range": 0.1}
# initializer_range 0.1 (not GPT-2's 0.02) gives a random tiny model peaked enough logits that greedy
# tokens vary along a generation, so token parity tests can fail; 0.02 repeats a single token.


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Every `cuda`-marked test is skipped, with the reason, where torch sees no CUDA device:
    scripts/gpu_check.sh runs them where one exists."""
    if not any(item.get_closest_marker("cuda") for item in items):
        return
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (torch.cuda.is_available() is false); see scripts/gpu_check.sh")
    for item in items:
        if item.get_closest_marker("cuda"):
            item.add_marker(skip)


@pytest.fixture(scope="session", autouse=True)
def isolated_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cache = tmp_path_factory.mktemp("gpt2bench-cache")
    os.environ["GPT2BENCH_CACHE"] = str(cache)
    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    os.environ["TRANSFORMERS_VERBOSITY"] = "error"
    return cache


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from gpt2bench.models.resolve import build_random_model

    return build_random_model(tmp_path_factory.mktemp("models") / "tiny", seed=0, **TINY)


@pytest.fixture(scope="session")
def tiny_model(tiny_model_dir: Path):
    from gpt2bench.models.resolve import resolve_model

    return resolve_model(str(tiny_model_dir))


@pytest.fixture(scope="session")
def trained_model():
    """A narrow GPT-2 (2 layers, 128 positions) trained for ~1 min on the bundled text: confident,
    context-dependent predictions, unlike random (held-out perplexity ~1,000 against ~50,000)."""
    from gpt2bench.models.resolve import resolve_model
    from gpt2bench.models.tiny import TinyRecipe, tiny_model_dir

    # Seed 6: training numerics follow the CPU's kernels, and with seed 0 an Intel Xeon with AVX-512
    # and AMX (2026-12-02) trained a model whose greedy text for the first agreement prompt was one
    # token repeated (distinct tokens per prompt [1, 7, 3]; seeds 1-5 and 7 also left a prompt at 2-3).
    # Seed 6 gave [13, 6, 8] there, the widest margin of the eight seeds tried.
    recipe = TinyRecipe(n_layer=2, n_positions=128, seq_len=128, batch_size=4, steps=500, lr=0.005, seed=6)
    folder = tiny_model_dir(recipe)
    return resolve_model(str(folder))


@pytest.fixture(scope="session")
def tokenizer():
    from gpt2bench.models.ref import load_tokenizer

    return load_tokenizer()


@pytest.fixture(scope="session")
def prompts(tokenizer):
    """Two 16-token prompts: the batch the parity tests share."""
    from gpt2bench.measure.prompts import make_prompts

    return make_prompts(tokenizer, 16, 2).input_ids


@pytest.fixture(scope="session")
def reference(tiny_model, prompts):
    """hf-eager's greedy tokens (30 steps) and logits on `prompts`: what every backend must match."""
    eager = load_backend("hf-eager", tiny_model)
    return greedy(eager, prompts, 30), eager.logits(prompts)


def load_backend(name: str, model, **settings):
    from gpt2bench.backends import BackendSettings, get_backend

    backend = get_backend(name).create()
    backend.load(model, BackendSettings(threads=settings.pop("threads", 2), **settings))
    return backend


def compile_events() -> int:
    """Graphs dynamo compiled plus AOTInductor packages built or loaded, in this process so far: a
    step that compiles nothing leaves it unchanged, whichever compiler static-kv uses."""
    from torch._dynamo.utils import counters

    from gpt2bench.backends.aoti import COUNTS

    return counters["stats"]["unique_graphs"] + COUNTS["built"] + COUNTS["loaded"]


def greedy(backend, input_ids, n: int):
    import numpy as np

    from gpt2bench.backends.base import Sampling

    return np.stack(list(backend.generate(input_ids, n, Sampling())), axis=1)


def run_python(code: str, *args: str, env: dict[str, str] | None = None, timeout: float = 300) -> str:
    """Run `code` in a fresh interpreter (nothing this test session imported or configured) and
    return its stdout; a non-zero exit fails the test with the child's stderr."""
    proc = subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=timeout,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def run_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    """The installed CLI in a fresh process, as a user runs it."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "gpt2bench", *args], capture_output=True, text=True, env=full_env, timeout=timeout
    )
