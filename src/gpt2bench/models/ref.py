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
    check_model_folder(reference, folder)
    marker = folder / MARKER
    weights = json.loads(marker.read_text()).get("weights", "random") if marker.is_file() else "pretrained"
    return ModelRef(reference, folder, weights, weights_hash(folder))


# The config fields every layer above reads (shapes, the roofline, the KV-cache sizes).
CONFIG_FIELDS = ("n_embd", "n_layer", "n_head", "vocab_size")


def check_model_folder(reference: str, folder: Path) -> None:
    """What would otherwise fail inside a backend's load as a library's exception: config.json is
    JSON, a GPT-2 config with its shape fields, and each safetensors file's header is complete,
    fits in the file, and gives the token embedding the config's shape."""
    path = folder / "config.json"
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise BenchError(f"'{reference}': {path} is not readable JSON ({type(exc).__name__})") from None
    if not isinstance(config, dict):
        raise BenchError(f"'{reference}': {path} holds a JSON {type(config).__name__}, not a model config")
    if config.get("model_type") != "gpt2":
        raise BenchError(
            f"'{reference}': {path} describes model_type {config.get('model_type')!r}; gpt2bench runs GPT-2 "
            "(model_type 'gpt2')"
        )
    missing = [name for name in CONFIG_FIELDS if not isinstance(config.get(name), int)]
    if missing:
        raise BenchError(f"'{reference}': {path} has no {', '.join(missing)}")
    for weights in (p for p in weight_files(folder) if p.suffix == ".safetensors"):
        _check_safetensors(reference, weights, [config["vocab_size"], config["n_embd"]])


def _check_safetensors(reference: str, path: Path, embedding: list[int]) -> None:
    """A safetensors file is an 8-byte header length, a JSON header naming every tensor's byte
    range, then the data: a truncated or empty file shows in the header alone (read, not the data)."""
    size = path.stat().st_size
    bad = f"'{reference}': {path.name} is truncated or not a safetensors file"
    with path.open("rb") as fh:
        prefix = fh.read(8)
        length = int.from_bytes(prefix, "little") if len(prefix) == 8 else -1
        if not 0 < length <= size - 8:
            raise BenchError(f"{bad} ({size} bytes)")
        try:
            header = json.loads(fh.read(length))
        except (UnicodeDecodeError, ValueError):
            raise BenchError(f"{bad} (its header is not JSON)") from None
    tensors = {name: t for name, t in header.items() if name != "__metadata__" and isinstance(t, dict)}
    end = max((t.get("data_offsets", [0, 0])[1] for t in tensors.values()), default=0)
    if 8 + length + end > size:
        raise BenchError(f"{bad}: its tensors need {8 + length + end} bytes, the file has {size}")
    wte = [t for name, t in tensors.items() if name.endswith("wte.weight")]
    if wte and wte[0].get("shape") != embedding:
        raise BenchError(
            f"'{reference}': {path.name} holds a token embedding of shape {wte[0].get('shape')}, "
            f"config.json says {embedding} (vocab_size, n_embd)"
        )


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
