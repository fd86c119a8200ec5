"""Run a sweep's cells on a Ray cluster (`executor: ray`): the driver plans cells as a local sweep
does, and a thread per node hands that node jobs (a backend and some of its cells), each measured
by a Ray actor pinned to the node and holding its whole-node resource (sweep/cluster_node.py),
which runs the same worker process a local sweep runs. Rows come back one by one and go into the
one results store at once, so --resume after a driver crash re-runs only what is missing. A node
lost mid-cell makes that cell a failed row with the reason, and the cell is retried once on
another node (of the same machine type, with each-node placement).

Ray is the `ray` extra, imported only here and on the nodes.
"""

from __future__ import annotations

import contextlib
import functools
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from gpt2bench.core.errors import UsageError, one_line
from gpt2bench.sweep.cluster_node import NODE_RESOURCE, NodeRunner, node_facts, pack_folder
from gpt2bench.sweep.config import BackendConfig, Cell
from gpt2bench.sweep.driver import SweepRun, measure_cells, plan
from gpt2bench.sweep.process import WorkerGone

RAY_EXTRA = "--executor ray needs Ray: pip install 'gpt2bench[ray]' (or EXTRAS=...,ray bash scripts/setup.sh)"
# How long a node's facts may take to come back before the node counts as unusable.
FACTS_TIMEOUT_S = 60.0


class NodeLost(WorkerGone):
    """The node (or its actor) is gone: the cell in flight is retried once on another node."""


def check_reachable(address: str, timeout: float = 5.0) -> None:
    """A one-line error at once when `address` (host:port or ray://host:port) takes no connection:
    ray.init would retry it for minutes. `auto` is Ray's to find (it says so at once)."""
    import socket

    if address == "auto":
        return
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise UsageError(f"Ray address '{address}' is not auto, host:port or ray://host:port")
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as exc:
        raise UsageError(
            f"cannot reach a Ray cluster at '{address}' ({exc.strerror or exc}); start one with "
            f"`ray start --head --resources '{{\"{NODE_RESOURCE}\": 1}}'`"
        ) from None


def preflight(address: str) -> Any:
    """ray, if installed, and `address` answering: the checks to make before a sweep starts."""
    try:
        import ray
    except ImportError:
        raise UsageError(RAY_EXTRA) from None
    check_reachable(address)
    return ray


def connect(address: str) -> Any:
    """ray, connected to the cluster at `address`; a one-line error when there is none."""
    ray = preflight(address)
    try:
        ray.init(address=address, log_to_driver=False, configure_logging=False)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise UsageError(
            f"cannot reach a Ray cluster at '{address}' ({one_line(exc)}); start one with "
            f"`ray start --head --resources '{{\"{NODE_RESOURCE}\": 1}}'`"
        ) from None
    return ray


def inventory(ray: Any) -> list[dict[str, Any]]:
    """Every live node that offers the whole-node resource, with its facts (host, CPU fingerprint)."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    ids = [n["NodeID"] for n in ray.nodes() if n.get("Alive") and n.get("Resources", {}).get(NODE_RESOURCE, 0) >= 1]
    if not ids:
        raise UsageError(
            f"no node of the Ray cluster offers the '{NODE_RESOURCE}' resource; start each node with "
            f"`ray start ... --resources '{{\"{NODE_RESOURCE}\": 1}}'` (one cell per node at a time)"
        )
    probe = ray.remote(num_cpus=0)(node_facts)
    refs = [probe.options(scheduling_strategy=NodeAffinitySchedulingStrategy(i, soft=False)).remote() for i in ids]
    ready, _ = ray.wait(refs, num_returns=len(refs), timeout=FACTS_TIMEOUT_S)
    return [ray.get(ref) for ref in refs if ref in ready]


def model_files(ray: Any, run: SweepRun) -> dict[str, Any] | None:
    """How the nodes get the driver's resolved model (the config's `ray.model_files`)."""
    mode = run.spec.cluster.model_files
    if mode == "resolve":
        return None
    if mode == "shared":
        return {"reference": run.model.reference, "folder": str(run.model.path)}
    packed = ray.put(pack_folder(run.model.path))  # once; each node fetches it once (cluster_node.unpack_model)
    return {"reference": run.model.reference, "hash": run.model.weights_hash, "packed": [packed]}


@functools.cache
def _actor_class(ray: Any) -> Any:
    """NodeRunner as a Ray actor class, made once: each ray.remote() exports the class again."""
    return ray.remote(NodeRunner)


class NodeWorker:
    """sweep/process.Worker's interface over a NodeRunner actor on one node: measure_cells drives
    it as it drives a local worker. `retried` maps a cell to why its first attempt failed."""

    def __init__(self, ray: Any, run: SweepRun, backend: BackendConfig, node: dict, model: dict | None) -> None:
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        self.ray, self.node, self.retried = ray, node, {}
        self.started = time.perf_counter()  # the sweep's time breakdown counts the load from here
        self.actor = (
            _actor_class(ray)
            .options(
                resources={NODE_RESOURCE: 1},
                num_cpus=0,  # the node resource is the reservation; the CPUs are the worker's to use
                max_restarts=0,
                scheduling_strategy=NodeAffinitySchedulingStrategy(node["node_id"], soft=False),
            )
            .remote()
        )
        session = run.cell_spec(backend, run.spec.cells[0]).to_json()
        self.pending = self.actor.start.remote(session, run.run_id, model, run.spec.cell_timeout_s)

    def receive(self, timeout: float) -> dict[str, Any]:
        from ray.exceptions import GetTimeoutError, RayError, RayTaskError

        try:
            reply = self.ray.get(self.pending, timeout=timeout + 30)  # the actor times its worker out first
        except GetTimeoutError:
            self.kill()
            raise WorkerGone(f"timed out after {timeout:g} s on node {self.node['node']}") from None
        except RayTaskError as exc:  # the actor's own code failed (say, unpacking the model): not the node
            raise WorkerGone(f"on node {self.node['node']}: {one_line(exc.cause or exc)}") from None
        except RayError as exc:  # the actor died with its node, or the node is unreachable
            raise NodeLost(f"node {self.node['node']} lost ({one_line(exc)[:160]})") from None
        if reply["event"] == "gone":
            raise WorkerGone(f"{reply['error']} (on node {self.node['node']})")
        return reply

    def request(self, spec: Any, label: str, timeout: float) -> dict[str, Any]:
        self.pending = self.actor.request.remote(spec.to_json(), label, timeout)
        reply = self.receive(timeout)
        cell = Cell(spec.prompt_len, spec.gen_len, spec.batch_size)
        if reply["event"] == "row" and cell in self.retried:
            reply["row"]["retried"] = self.retried[cell]
        return reply

    def kill(self) -> None:
        self.ray.kill(self.actor, no_restart=True)

    def close(self) -> None:
        from ray.exceptions import RayError

        with contextlib.suppress(RayError):  # a lost node's actor cannot close
            self.ray.get(self.actor.close.remote(), timeout=60)
        self.kill()


@dataclass
class Job:
    """A backend's cells for one node; `retried` are cells whose first node was lost (and why)."""

    backend: BackendConfig
    cells: list[Cell]
    node_type: str | None  # each-node: the machine type the cells are measured on; spread: None
    retried: dict[Cell, str] = field(default_factory=dict)


def chunks(cells: list[Cell], parts: int) -> list[list[Cell]]:
    """`cells` in up to `parts` runs of consecutive cells (each run costs the backend one load)."""
    parts = max(1, min(parts, len(cells)))
    size = -(-len(cells) // parts)
    return [cells[i : i + size] for i in range(0, len(cells), size)]


def plan_jobs(run: SweepRun, nodes: list[dict[str, Any]]) -> list[Job]:
    """spread: every backend's missing cells, split so the nodes have work each; each-node: the
    same for each machine type, its cells keyed by that type."""
    types: list[str | None] = list(dict.fromkeys(n["machine"] for n in nodes)) if run.spec.by_machine() else [None]
    jobs = []
    for node_type in types:
        todo = [(b, cells) for b, cells in plan(run, node_type) if cells]
        width = sum(1 for n in nodes if node_type in (None, n["machine"]))
        per_backend = -(-width // max(1, len(todo)))
        jobs += [Job(b, part, node_type) for b, cells in todo for part in chunks(cells, per_backend)]
    return jobs


class Dispatch:
    """The jobs not yet taken, shared by the node threads: a thread takes the next job its node
    can do, and returns what a lost node left. It waits while another thread may still return work."""

    def __init__(self, jobs: list[Job]) -> None:
        self.pending, self.in_flight = jobs, 0
        self.cond = threading.Condition()
        self.errors: list[BaseException] = []

    def take(self, node: dict[str, Any]) -> Job | None:
        with self.cond:
            while True:
                for job in self.pending:
                    if job.node_type in (None, node["machine"]):
                        self.pending.remove(job)
                        self.in_flight += 1
                        return job
                if self.in_flight == 0 or self.errors:
                    return None
                self.cond.wait(timeout=1.0)

    def done(self, returned: Job | None = None) -> None:
        with self.cond:
            self.in_flight -= 1
            if returned is not None and returned.cells:
                self.pending.append(returned)
            self.cond.notify_all()


def run_job(ray: Any, run: SweepRun, job: Job, node: dict, model: dict | None) -> Job | None:
    """Measure `job` on `node`; what it leaves for another node when the node is lost, else None."""
    remaining = list(job.cells)
    while remaining:
        worker = NodeWorker(ray, run, job.backend, node, model)
        worker.retried = job.retried
        left = measure_cells(run, job.backend, remaining, worker, job.node_type)
        if isinstance(left.gone, NodeLost):
            retried, cells = dict(job.retried), list(left.rest)
            if left.lost is not None and left.lost not in job.retried:  # once: a second loss stays failed
                retried[left.lost] = str(left.gone)
                cells.insert(0, left.lost)
            return Job(job.backend, cells, job.node_type, retried)
        remaining = left.rest
    return None


def _serve(ray: Any, run: SweepRun, dispatch: Dispatch, node: dict, model: dict | None) -> None:
    """A node's thread: jobs until none is left for it, or until its node is lost."""
    while (job := dispatch.take(node)) is not None:
        returned = None
        try:
            returned = run_job(ray, run, job, node, model)
        except BaseException as exc:  # a bug, not a measurement: the driver re-raises it
            dispatch.errors.append(exc)
        finally:
            dispatch.done(returned)
        if returned is not None:
            return  # this node is gone: the others take what it left


def run_on_cluster(run: SweepRun) -> None:
    """The sweep on the cluster of `run.spec.cluster`, its nodes recorded beside the rows."""
    ray = connect(run.spec.cluster.address)
    try:
        nodes = inventory(ray)
        _record_nodes(run, nodes)
        model = model_files(ray, run)
        dispatch = Dispatch(plan_jobs(run, nodes))
        threads = [
            threading.Thread(target=_serve, args=(ray, run, dispatch, node, model), daemon=True, name=node["node"])
            for node in nodes
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            while thread.is_alive():  # short joins: Ctrl-C and SIGTERM reach this thread
                thread.join(timeout=0.5)
        if dispatch.errors:
            raise dispatch.errors[0]
        _fail_stranded(run, dispatch.pending)
    finally:
        ray.shutdown()  # ends the driver's job: Ray kills its actors, and their workers die with them


def _record_nodes(run: SweepRun, nodes: list[dict[str, Any]]) -> None:
    """The cluster and its nodes in the results' metadata; a resumed sweep adds the nodes it used."""
    from dataclasses import asdict

    before = run.store.meta.get("cluster", {}).get("nodes", [])
    merged = {n["node_id"]: n for n in [*before, *nodes]}
    with run.lock:
        run.store.set_meta("cluster", {**asdict(run.spec.cluster), "nodes": list(merged.values())})


def _fail_stranded(run: SweepRun, jobs: list[Job]) -> None:
    """Cells left when no node could take them (every node of their type lost)."""
    for job in jobs:
        for cell in job.cells:
            why = job.retried.get(cell, "its node was lost")
            run.fail(job.backend, cell, f"{why}; no other node left to retry on", job.node_type)
