"""Atomic writes: a reader sees the old file (or folder) or the new one, never half of one."""

import errno
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def check_writable(folder: Path) -> None:
    """Prove `folder` could be created and written, before any expensive work, without creating
    it: a command that fails later must leave no empty folder behind. The probe file goes into the
    nearest folder that exists (then is removed); a file where a folder should be is an error."""
    probe = folder
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        raise NotADirectoryError(errno.ENOTDIR, f"'{probe}' is a file, not a folder")
    fd, tmp = tempfile.mkstemp(prefix=".probe-", dir=probe)
    os.close(fd)
    os.unlink(tmp)


def publish_folder(
    target: Path, build: Callable[[Path], None], finished: Callable[[Path], bool], replace: bool = False
) -> bool:
    """Build a folder beside `target` and rename it into place, so no reader ever sees half of one.

    `build(tmp)` fills a fresh temporary folder next to `target`; `finished(folder)` says whether a
    folder is complete. A `target` that exists but is not finished (an interrupted or corrupt build)
    is replaced, and so is a finished one with `replace` (a rebuild asked for). If another process
    published a finished `target` while we built, theirs is kept and ours discarded. Returns True
    when ours was published, False when a rival's was kept."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        build(tmp)
        tmp.chmod(0o755)  # mkdtemp makes it private; the cache may be shared
        if target.exists() and (replace or not finished(target)):
            shutil.rmtree(target, ignore_errors=True)
        try:
            tmp.rename(target)
        except OSError:
            if not finished(target):
                raise
            return False
        return True
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
