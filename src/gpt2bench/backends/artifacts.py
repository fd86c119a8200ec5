"""Engine artifacts built in `prepare` (a CTranslate2 model, GGUF files, an OpenVINO IR) and cached:
one folder per artifact under <cache>/<engine>/, named by a hash of everything its bytes depend
on (weights hash, engine version, variant, options), written beside and renamed into place, with a
manifest of every file's size and SHA-256 that is checked on load. A missing or corrupt artifact is
built again, with a warning for the corrupt one; `--option rebuild=true` forces it."""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gpt2bench.core import progress
from gpt2bench.core.fsutil import atomic_write_text, publish_folder
from gpt2bench.core.paths import cache_dir

log = logging.getLogger("gpt2bench")
MANIFEST = "manifest.json"


@dataclass
class Built:
    folder: Path
    manifest: dict[str, Any]
    phases: dict[str, float] = field(default_factory=dict)  # work done in *this* call, seconds


def fields_key(fields: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


def verify(folder: Path) -> tuple[dict[str, Any] | None, str]:
    """(manifest, "") when every file the manifest lists is there with its size and checksum."""
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
    except FileNotFoundError:
        return None, "missing"
    except (OSError, ValueError) as exc:
        return None, f"unreadable manifest ({exc})"
    files = manifest.get("files")
    if not isinstance(files, dict) or not files:
        return None, "the manifest lists no files"
    for name, expected in files.items():
        path = folder / name
        if not path.is_file():
            return None, f"{name} missing"
        if path.stat().st_size != expected.get("size"):
            return None, f"{name} is {path.stat().st_size} bytes, expected {expected.get('size')}"
        if sha256_file(path) != expected.get("sha256"):
            return None, f"{name} checksum mismatch"
    return manifest, ""


def _inventory(folder: Path) -> dict[str, dict[str, Any]]:
    return {
        str(p.relative_to(folder)): {"size": p.stat().st_size, "sha256": sha256_file(p)}
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != MANIFEST
    }


def cached_build(
    engine: str,
    fields: dict[str, Any],
    build: Callable[[Path], dict[str, Any]],
    rebuild: bool = False,
    what: str = "",
) -> Built:
    """The artifact of `fields` under <cache>/<engine>/, built by `build(tmp_folder)` (which writes
    its files and returns facts for the manifest) when missing, corrupt or `rebuild`. Phases:
    <variant>_verify_s, <variant>_cache_hit and, when built, <variant>_build_s."""
    variant = str(fields["variant"])
    folder = cache_dir() / engine / f"{variant}-{fields_key(fields)}"
    t0 = time.perf_counter()
    manifest, problem = verify(folder) if not rebuild else (None, "rebuild requested")
    phases = {f"{variant}_verify_s": time.perf_counter() - t0}
    if manifest is not None:
        return Built(folder, manifest, {**phases, f"{variant}_cache_hit": 1.0})
    if problem not in ("missing", "rebuild requested"):
        log.warning("cached %s artifact in %s is corrupt (%s); building it again", variant, folder, problem)
    made: dict[str, Any] = {}

    def write(tmp: Path) -> None:
        t1 = time.perf_counter()
        with progress.phase(f"building the {variant} artifact ({what or engine}; once, cached)"):
            info = build(tmp)
        seconds = time.perf_counter() - t1
        made["manifest"] = {"fields": fields, "build_s": seconds, "info": info, "files": _inventory(tmp)}
        atomic_write_text(tmp / MANIFEST, json.dumps(made["manifest"], indent=1))

    ours = publish_folder(folder, write, finished=lambda f: verify(f)[0] is not None, replace=rebuild)
    # Another process finished the same artifact first: theirs is intact, use it.
    manifest = made["manifest"] if ours else verify(folder)[0] or {}
    phases[f"{variant}_cache_hit"] = 0.0
    phases[f"{variant}_build_s"] = float(manifest.get("build_s", 0.0)) if ours else 0.0
    return Built(folder, manifest, phases)
