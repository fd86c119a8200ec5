"""A cluster sweep's side on a node: a Ray actor that holds the whole node (its one
`gpt2bench_node` resource) while it measures, and runs the same worker process a local sweep
starts (sweep/process.py's Worker, sweep/worker.py's code). The actor adds nothing to what is
timed: it passes requests to its worker and stamps each row with the node that measured it.

Ray is imported by the caller (sweep/cluster.py); this module needs it only to fetch a shipped
model, so it stays importable without Ray.
"""

from __future__ import annotations

import contextlib
import io
import os
import platform
import shutil
import tarfile
import tempfile
from pathlib import Path
from typing import Any

from gpt2bench.core.paths import cache_dir
from gpt2bench.sweep.process import Worker, WorkerGone

# The custom resource a node offers once (`ray start --resources '{"gpt2bench_node": 1}'`) and a
# cell's actor takes whole: two cells never share a machine, whatever their CPU requests.
NODE_RESOURCE = "gpt2bench_node"
SHIPPED = "cluster-models"  # under the node's gpt2bench cache: shipped model folders, by weights hash


def node_facts() -> dict[str, Any]:
    """What this node is: Ray's id for it, its host and its CPU's fingerprint (machine/sysinfo)."""
    import ray

    from gpt2bench.machine.sysinfo import cpu_fingerprint, cpu_id, cpu_model

    node_id = ray.get_runtime_context().get_node_id()
    return {
        "node_id": node_id,
        "node": f"{platform.node()}/{node_id[:8]}",
        "machine": cpu_fingerprint(),
        "cpu_model": cpu_model(),
        "isa": cpu_id()["isa"],
        "cores": os.cpu_count(),
    }


def pack_folder(folder: Path) -> bytes:
    """A model folder as an uncompressed tar (safetensors do not compress), for Ray's object store."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for path in sorted(p for p in folder.iterdir() if p.is_file()):
            tar.add(path.resolve(), arcname=path.name)  # a Hub snapshot's files are symlinks
    return buf.getvalue()


def unpack_model(weights_hash: str, packed: list[Any]) -> Path:
    """The shipped model's folder on this node: unpacked from `packed` ([an object ref]) the first
    time, then found by its weights hash. Written beside and renamed, so a node that died while
    unpacking leaves no half folder."""
    folder = cache_dir() / SHIPPED / weights_hash
    if folder.is_dir():
        return folder
    import ray

    data = ray.get(packed[0])
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=".unpack-"))
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r") as tar:
            tar.extractall(tmp, filter="data")
        with contextlib.suppress(OSError):  # another actor of this node unpacked it first: keep theirs
            tmp.rename(folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


class NodeRunner:
    """One backend's worker on one node, for as many cells as the driver sends it."""

    def __init__(self) -> None:
        self.worker: Worker | None = None
        self.facts = node_facts()

    def start(self, session: dict[str, Any], run_id: str, model: dict[str, Any] | None, timeout: float) -> dict:
        """Start the worker for `session` (a RunSpec's JSON); its hello, with this node's facts.
        `model`: {reference, hash, packed: [ref]} to unpack here, {reference, folder} to load
        from a shared path, or None to resolve the model on this node."""
        from gpt2bench.measure.spec import RunSpec

        model_at = None
        if model is not None:
            folder = model.get("folder") or str(unpack_model(model["hash"], model["packed"]))
            model_at = (model["reference"], folder)
        self.worker = Worker(RunSpec.from_json(session), run_id, model_at)
        return {**self._answer(lambda: self.worker.receive(timeout)), "facts": self.facts}  # type: ignore[union-attr]

    def request(self, spec: dict[str, Any], label: str, timeout: float) -> dict[str, Any]:
        from gpt2bench.measure.spec import RunSpec

        assert self.worker is not None, "start() first"
        reply = self._answer(lambda: self.worker.request(RunSpec.from_json(spec), label, timeout))  # type: ignore[union-attr]
        if reply["event"] == "row":
            reply["row"]["node"] = self.facts["node"]
        return reply

    @staticmethod
    def _answer(call: Any) -> dict[str, Any]:
        try:
            return call()
        except WorkerGone as gone:  # the worker process died or hung; this node is fine
            return {"event": "gone", "error": str(gone)}

    def close(self) -> None:
        if self.worker is not None:
            self.worker.close()
            self.worker = None
