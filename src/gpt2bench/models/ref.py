"""A resolved model: the local Hugging Face folder every backend loads, and the helpers that read
such a folder. A leaf of the models layer (it imports nothing above core), so backends, the tiny
model's trainer and the resolver can all use it without import circles."""

from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gpt2bench.core.errors import BenchError
from gpt2bench.core.fsutil import atomic_write_text
from gpt2bench.core.paths import TOKENIZER_DIR, cache_dir

if TYPE_CHECKING:
    from tokenizers import Tokenizer

# Written into folders gpt2bench builds, so a result can say its weights are not real GPT-2's.
MARKER = "gpt2bench-model.json"
WEIGHT_SUFFIXES = (".safetensors", ".bin")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json", "merges.txt")


@dataclass(frozen=True)
class ModelRef:
    reference: str  # what was asked for: a Hub id, a path, or "random"
    path: Path  # a local folder that transformers.from_pretrained can load
    weights: str  # "pretrained", or "random"/"trained-tiny" for models gpt2bench built
    weights_hash: str
    fallback_reason: str | None = None  # why the default model was replaced by `random`

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


def local_model(reference: str, folder: Path) -> ModelRef:
    """`folder` as a ModelRef, checked to be a model folder at all."""
    folder = folder.resolve()
    if not folder.is_dir() or not (folder / "config.json").is_file():
        raise BenchError(f"'{reference}' is not a Hugging Face model folder (no config.json in {folder})")
    if not weight_files(folder):
        raise BenchError(f"'{reference}' has no weights (*.safetensors or *.bin) in {folder}")
    marker = folder / MARKER
    weights = json.loads(marker.read_text()).get("weights", "random") if marker.is_file() else "pretrained"
    return ModelRef(reference, folder, weights, weights_hash(folder))


def weight_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix in WEIGHT_SUFFIXES and p.is_file())


def weights_hash(folder: Path) -> str:
    """sha256 over the weight files (name and bytes), memoised by size and mtime: hashing 500 MB
    takes about a second, too long to repeat on every run."""
    files = weight_files(folder)
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


def copy_tokenizer(folder: Path) -> None:
    for name in TOKENIZER_FILES:
        shutil.copyfile(TOKENIZER_DIR / name, folder / name)


def load_tokenizer(model: ModelRef | None = None) -> Tokenizer:
    """The model folder's own fast tokenizer if it has one, else the bundled GPT-2 tokenizer."""
    from tokenizers import Tokenizer

    own = model.path / "tokenizer.json" if model else None
    return Tokenizer.from_file(str(own if own and own.is_file() else TOKENIZER_DIR / "tokenizer.json"))
