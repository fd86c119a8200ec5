"""Resolve `--model` to a local Hugging Face folder: a Hub id, a local path, or `random`.

Every backend loads from the folder this returns, so all of them see the same weights, and every
result records where they came from and a hash of them.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gpt2bench.core.errors import BenchError
from gpt2bench.core.fsutil import atomic_write_text
from gpt2bench.core.paths import TOKENIZER_DIR, cache_dir

if TYPE_CHECKING:
    from tokenizers import Tokenizer

DEFAULT_MODEL = "gpt2"
RANDOM = "random"
TINY = "tiny"  # a narrow GPT-2 trained on the bundled text (tiny.py), for quality checks offline
# Written into folders gpt2bench builds, so a result can say its weights are not real GPT-2's.
MARKER = "gpt2bench-model.json"
WEIGHT_SUFFIXES = (".safetensors", ".bin")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json", "merges.txt")
HUB_PATTERNS = ["config.json", "generation_config.json", "*.safetensors", "*.json", "merges.txt"]


@dataclass(frozen=True)
class ModelRef:
    reference: str  # what was asked for: a Hub id, a path, or "random"
    path: Path  # a local folder that transformers.from_pretrained can load
    weights: str  # "pretrained", or "random"/"trained-tiny" for models gpt2bench built
    weights_hash: str
    fallback_reason: str | None = None  # why the default model was replaced by `random`

    @property
    def is_random(self) -> bool:
        return self.weights == "random"

    def fallback_warning(self) -> str | None:
        if self.fallback_reason is None:
            return None
        return f"{self.fallback_reason}. Falling back to --model random (GPT-2 124M shapes, random weights)."

    def n_positions(self) -> int:
        return int(self.config().get("n_positions", 1024))

    def config(self) -> dict[str, Any]:
        return json.loads((self.path / "config.json").read_text())

    def as_record(self) -> dict[str, Any]:
        record = asdict(self)
        record["path"] = str(self.path)
        return record


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
        import sys

        from gpt2bench.models.tiny import tiny_model_dir

        return _local_model(TINY, tiny_model_dir(log=lambda msg: print(f"make-tiny: {msg}", file=sys.stderr)))
    local = Path(reference).expanduser()
    if local.exists():
        return _local_model(reference, local)
    looks_like_path = reference.startswith((".", "/", "~")) or reference.count("/") > 1
    if looks_like_path:
        raise BenchError(f"model folder '{reference}' does not exist")
    return _local_model(reference, _download(reference))


def _local_model(reference: str, folder: Path) -> ModelRef:
    folder = folder.resolve()
    if not folder.is_dir() or not (folder / "config.json").is_file():
        raise BenchError(f"'{reference}' is not a Hugging Face model folder (no config.json in {folder})")
    if not _weight_files(folder):
        raise BenchError(f"'{reference}' has no weights (*.safetensors or *.bin) in {folder}")
    marker = folder / MARKER
    weights = json.loads(marker.read_text()).get("weights", "random") if marker.is_file() else "pretrained"
    return ModelRef(reference, folder, weights, weights_hash(folder))


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


def _weight_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix in WEIGHT_SUFFIXES and p.is_file())


def weights_hash(folder: Path) -> str:
    """sha256 over the weight files (name and bytes), memoised by size and mtime: hashing 500 MB
    takes about a second, too long to repeat on every run."""
    files = _weight_files(folder)
    stamp = [[p.name, p.stat().st_size, p.stat().st_mtime_ns] for p in files]
    memo_file = cache_dir() / "hashes.json"
    key = str(folder.resolve())
    try:
        memo = json.loads(memo_file.read_text())
    except (OSError, ValueError):
        memo = {}
    if memo.get(key, {}).get("stamp") == stamp:
        return str(memo[key]["sha256"])
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.name.encode())
        with path.open("rb") as fh:
            while chunk := fh.read(1 << 22):
                digest.update(chunk)
    value = digest.hexdigest()[:16]
    memo[key] = {"stamp": stamp, "sha256": value}
    with contextlib.suppress(OSError):  # a read-only cache only costs a re-hash next time
        atomic_write_text(memo_file, json.dumps(memo, indent=1))
    return value


def random_model() -> ModelRef:
    folder = cache_dir() / "models" / "random-gpt2-124m-seed0"
    if not (folder / MARKER).is_file():
        build_random_model(folder, seed=0)
    return _local_model(RANDOM, folder)


def build_random_model(out: Path, seed: int = 0, **overrides: Any) -> Path:
    """GPT-2 124M's config (or that config with `overrides`, e.g. a tiny test model) with seeded
    random weights, saved as a complete Hugging Face folder with the real tokenizer."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    config = GPT2Config.from_pretrained(TOKENIZER_DIR, **overrides)
    torch.manual_seed(seed)
    model = GPT2LMHeadModel(config).eval()
    # Build beside the target and rename, so a concurrent or interrupted build never leaves half a model.
    tmp = Path(tempfile.mkdtemp(prefix=".building-", dir=out.parent))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        copy_tokenizer(tmp)
        marker = {"weights": "random", "seed": seed, "base_config": "gpt2 (124M)", "overrides": overrides}
        (tmp / MARKER).write_text(json.dumps(marker, indent=1))
        try:
            tmp.rename(out)
        except OSError:
            if not (out / MARKER).is_file():
                shutil.rmtree(out, ignore_errors=True)
                tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def copy_tokenizer(folder: Path) -> None:
    for name in TOKENIZER_FILES:
        shutil.copyfile(TOKENIZER_DIR / name, folder / name)


def load_tokenizer(model: ModelRef | None = None) -> Tokenizer:
    """The model folder's own fast tokenizer if it has one, else the bundled GPT-2 tokenizer."""
    from tokenizers import Tokenizer

    own = model.path / "tokenizer.json" if model else None
    return Tokenizer.from_file(str(own if own and own.is_file() else TOKENIZER_DIR / "tokenizer.json"))
