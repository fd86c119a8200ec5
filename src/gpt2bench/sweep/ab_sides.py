"""The two versions `gpt2bench ab` measures: git refs of a gpt2bench checkout, each checked out into
a temporary worktree (like `asv continuous`), or the checkout's working tree itself. A side's
workers import that tree's own source (`<root>/src` first on PYTHONPATH) in this same environment,
so only the project's code differs between the sides; its rows' git_commit proves which ran."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gpt2bench.core.errors import BenchError, UsageError

WORKING_TREE = "working tree"
# What a version needs for `ab` to measure it: the sweep worker and its one-JSON-line protocol.
WORKER = "src/gpt2bench/sweep/worker.py"


@dataclass(frozen=True)
class Side:
    """BASE or NEW: which code (`root`/src, at `commit`) and any environment of its own."""

    name: str
    ref: str
    commit: str
    dirty: bool
    root: Path
    env: dict[str, str] = field(default_factory=dict)

    def describe(self) -> str:
        """e.g. `BASE HEAD~1 (3f2a1c9b0d)`, `NEW working tree (a1c5f73e21, uncommitted changes)`."""
        state = ", uncommitted changes" if self.dirty else ""
        extra = "".join(f", {k}={v}" for k, v in self.env.items())
        return f"{self.name} {self.ref} ({self.commit[:10]}{state}{extra})"

    def worker_env(self) -> dict[str, str]:
        """The environment of this side's workers: its source first on the import path."""
        path = os.pathsep.join(p for p in (str(self.root / "src"), os.environ.get("PYTHONPATH", "")) if p)
        return {**os.environ, "PYTHONPATH": path, **self.env}

    def record(self) -> dict[str, Any]:
        return {"name": self.name, "ref": self.ref, "commit": self.commit, "dirty": self.dirty, "env": self.env}


def _git(repo: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["git", "--no-optional-locks", "-C", str(repo), *args], capture_output=True, text=True, timeout=120
    )


def find_repo(repo: Path | None) -> Path:
    """The gpt2bench checkout whose refs the sides name: `repo`, or the one this gpt2bench runs from."""
    import gpt2bench

    start = repo if repo is not None else Path(gpt2bench.__file__).resolve().parents[2]
    if shutil.which("git") is None:
        raise BenchError("gpt2bench ab needs git, which is not installed")
    top = _git(start, "rev-parse", "--show-toplevel") if start.is_dir() else None
    if top is None or top.returncode != 0:
        where = f"'{repo}'" if repo is not None else f"this gpt2bench ({start})"
        raise UsageError(f"{where} is not a git checkout: gpt2bench ab measures git refs of a gpt2bench checkout")
    return Path(top.stdout.strip())


def resolve_commit(repo: Path, ref: str) -> str:
    found = _git(repo, "rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}")
    if found.returncode != 0 or not found.stdout.strip():
        raise UsageError(f"unknown git ref '{ref}' in {repo}")
    commit = found.stdout.strip()
    if _git(repo, "cat-file", "-e", f"{commit}:{WORKER}").returncode != 0:
        raise UsageError(
            f"'{ref}' ({commit[:10]}) has no gpt2bench sweep worker ({WORKER}): it is not a version gpt2bench ab "
            "can measure"
        )
    return commit


def working_tree(repo: Path, allow_dirty: bool, env: dict[str, str]) -> Side:
    """NEW as the checkout's files now; uncommitted changes refused unless allowed (a result must
    name the code it measured)."""
    head = resolve_commit(repo, "HEAD")
    status = _git(repo, "status", "--porcelain", "--untracked-files=no")
    dirty = bool(status.stdout.strip())
    if dirty and not allow_dirty:
        changed = [line for line in status.stdout.splitlines() if line.strip()]  # " M path": keep the columns
        raise UsageError(
            f"the working tree of {repo} has uncommitted changes ({len(changed)} file(s), e.g. "
            f"{changed[0][3:]}): commit them and pass the commit, or --allow-dirty to measure them as NEW"
        )
    return Side("NEW", WORKING_TREE, head, dirty, repo, env)


@contextlib.contextmanager
def checked_out(repo: Path, name: str, ref: str, env: dict[str, str]) -> Iterator[Side]:
    """`ref` checked out into a temporary detached worktree for as long as the block runs."""
    commit = resolve_commit(repo, ref)
    folder = Path(tempfile.mkdtemp(prefix=f"gpt2bench-ab-{name.lower()}-"))
    tree = folder / "tree"
    added = _git(repo, "worktree", "add", "--detach", "--quiet", str(tree), commit)
    if added.returncode != 0:
        shutil.rmtree(folder, ignore_errors=True)
        raise BenchError(f"could not check out '{ref}' into a worktree: {added.stderr.strip().splitlines()[-1:]}")
    try:
        yield Side(name, ref, commit, False, tree, env)
    finally:
        _git(repo, "worktree", "remove", "--force", str(tree))
        shutil.rmtree(folder, ignore_errors=True)
        _git(repo, "worktree", "prune")


@contextlib.contextmanager
def sides(
    repo: Path, base: str, new: str | None, allow_dirty: bool, base_env: dict[str, str], new_env: dict[str, str]
) -> Iterator[tuple[Side, Side]]:
    """BASE and NEW, ready to run. NEW None: the working tree. The same commit on both sides (an
    A/A run) shares one checkout: two workers of the same code."""
    with contextlib.ExitStack() as stack:
        new_side = working_tree(repo, allow_dirty, new_env) if new is None else None
        base_commit = resolve_commit(repo, base)
        if new_side is not None and not new_side.dirty and new_side.commit == base_commit:
            base_side = Side("BASE", base, base_commit, False, repo, base_env)
        else:
            base_side = stack.enter_context(checked_out(repo, "BASE", base, base_env))
        if new_side is None:
            assert new is not None
            if resolve_commit(repo, new) == base_commit:
                new_side = Side("NEW", new, base_commit, False, base_side.root, new_env)
            else:
                new_side = stack.enter_context(checked_out(repo, "NEW", new, new_env))
        yield base_side, new_side
