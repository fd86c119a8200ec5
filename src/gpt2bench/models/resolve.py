"""Resolve `--model` to a local Hugging Face folder: a Hub id, a local path, `random` or `tiny`.

Every backend loads from the folder this returns, so all of them see the same weights, and every
result records where they came from and a hash of them.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from gpt2bench.core.errors import BenchError
from gpt2bench.core.fsutil import publish_folder
from gpt2bench.core.paths import TOKENIZER_DIR, cache_dir
from gpt2bench.core.progress import phase
from gpt2bench.models.ref import MARKER, ModelRef, copy_tokenizer, local_model

DEFAULT_MODEL = "gpt2"
RANDOM = "random"
TINY = "tiny"  # a narrow GPT-2 trained on the bundled text (tiny.py), for quality checks offline
log = logging.getLogger("gpt2bench")
HUB_PATTERNS = ["config.json", "generation_config.json", "*.safetensors", "*.json", "merges.txt"]


def resolve_model(reference: str | None) -> ModelRef:
    """`None` means the user gave no --model: try GPT-2, fall back to `random` if it can't load."""
    if reference is None:
        try:
            return _resolve(DEFAULT_MODEL)
        except BenchError as exc:
            ref = random_model()
            return ModelRef(ref.reference, ref.path, ref.weights, ref.weights_hash, fallback_reason=str(exc))
    return _resolve(reference)


def _resolve(reference: str) -> ModelRef:
    if reference == RANDOM:
        return random_model()
    if reference == TINY:
        return tiny_model()
    local = Path(reference).expanduser()
    if local.exists():
        return local_model(reference, local)
    looks_like_path = reference.startswith((".", "/", "~")) or reference.count("/") > 1
    if looks_like_path:
        raise BenchError(f"model folder '{reference}' does not exist")
    return local_model(reference, _download(reference))


def _download(repo_id: str) -> Path:
    """Fetch (or find cached) a Hub model; errors become one line, offline or not."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        HFValidationError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
    )

    try:
        return Path(snapshot_download(repo_id, allow_patterns=HUB_PATTERNS))
    except (RepositoryNotFoundError, GatedRepoError):
        raise BenchError(f"model '{repo_id}' was not found on the Hugging Face Hub") from None
    except HFValidationError:
        raise BenchError(f"model '{repo_id}' is neither a local folder nor a valid Hub id") from None
    except (LocalEntryNotFoundError, OSError) as exc:
        raise BenchError(
            f"model '{repo_id}' is not in the local Hugging Face cache and the Hub cannot be reached "
            f"({type(exc).__name__}); use --model random or a local folder"
        ) from None


def random_model() -> ModelRef:
    """The cached random 124M model, built the first time; a corrupt one is built again."""
    folder = cache_dir() / "models" / "random-gpt2-124m-seed0"
    if (folder / MARKER).is_file():
        try:
            return local_model(RANDOM, folder)
        except BenchError as exc:
            log.warning("the cached random model is corrupt (%s); building it again", exc)
    with phase("building the random GPT-2 124M model (once, cached)"):
        build_random_model(folder, seed=0, replace=True)
    return local_model(RANDOM, folder)


def tiny_model() -> ModelRef:
    """The cached trained tiny model, trained the first time; a corrupt one is trained again."""
    from gpt2bench.models.tiny import tiny_model_dir

    try:
        return local_model(TINY, tiny_model_dir())
    except BenchError as exc:
        log.warning("the cached tiny model is corrupt (%s); training it again", exc)
    return local_model(TINY, tiny_model_dir(rebuild=True))


def build_random_model(out: Path, seed: int = 0, replace: bool = False, **overrides: Any) -> Path:
    """GPT-2 124M's config (or that config with `overrides`, e.g. a tiny test model) with seeded
    random weights, saved as a complete Hugging Face folder with the real tokenizer."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    out = Path(out)
    config = GPT2Config.from_pretrained(TOKENIZER_DIR, **overrides)
    torch.manual_seed(seed)
    model = GPT2LMHeadModel(config).eval()

    def build(tmp: Path) -> None:
        model.save_pretrained(tmp, safe_serialization=True)
        copy_tokenizer(tmp)
        marker = {"weights": "random", "seed": seed, "base_config": "gpt2 (124M)", "overrides": overrides}
        (tmp / MARKER).write_text(json.dumps(marker, indent=1))

    publish_folder(out, build, finished=lambda folder: (folder / MARKER).is_file(), replace=replace)
    return out
