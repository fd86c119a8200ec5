"""Sweeps on a real Ray cluster: two logical nodes on this machine (ray.cluster_utils.Cluster, on
127.0.0.1), each offering the one whole-node resource, a tiny-model sweep run by the real CLI
against it. A node removed mid-sweep and a driver killed mid-sweep."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import run_cli
from gpt2bench.core.errors import UsageError
from gpt2bench.sweep.cluster import chunks, connect
from gpt2bench.sweep.cluster_node import NODE_RESOURCE
from gpt2bench.sweep.config import Cell, load_sweep

ray = pytest.importorskip("ray")
from ray.cluster_utils import Cluster  # noqa: E402

# threads: 1, as each of the two logical nodes shares this machine's 2 cores with the other.
CONFIG = """output: {out}
model: {model}
repeats: {repeats}
warmup: 1
threads: 1
prompt_lens: {prompts}
gen_lens: [{gen}]
executor: ray
backends:
  - name: hf-eager
"""


def _add_node(cluster: Cluster):
    return cluster.add_node(num_cpus=1, resources={NODE_RESOURCE: 1})


@pytest.fixture(scope="module")
def cluster(isolated_cache):
    """A head that measures nothing (it offers no node resource) and two measuring nodes. Node
    death is noticed within ~2 s (the default health check takes ~30 s)."""
    system = {"health_check_period_ms": 500, "health_check_failure_threshold": 3, "health_check_initial_delay_ms": 0}
    cluster = Cluster(
        initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False, "_system_config": system}
    )
    nodes = [_add_node(cluster) for _ in range(2)]
    cluster.wait_for_nodes()
    yield cluster, nodes
    cluster.shutdown()


def _rows(out: Path) -> list[dict]:
    return json.loads((out / "results.json").read_text())["rows"]


def _wait_for_rows(out: Path, count: int, timeout: float = 120, proc: subprocess.Popen | None = None) -> list[dict]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            rows = _rows(out)
            if len(rows) >= count:
                return rows
        except (OSError, ValueError, KeyError):
            pass
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the sweep ended early: {proc.stderr.read() if proc.stderr else ''}")
        time.sleep(0.1)
    raise AssertionError(f"fewer than {count} rows after {timeout} s")


def _sweep(config: Path, address: str, *more: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "gpt2bench", "sweep", str(config), "--address", address, *more],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def test_a_node_lost_mid_sweep_fails_its_cell_which_another_node_retries(cluster, tmp_path, tiny_model_dir):
    head, nodes = cluster
    out = tmp_path / "out"
    config = tmp_path / "sweep.yaml"
    # Three cells a node of ~1.5 s each (100 repetitions): the node is removed while it measures one.
    config.write_text(CONFIG.format(out=out, model=tiny_model_dir, repeats=100, gen=8, prompts=[4, 8, 12, 16, 20, 24]))
    proc = _sweep(config, head.address)
    first = _wait_for_rows(out, 1, proc=proc)[0]
    victim = next(n for n in nodes if first["node"].endswith(n.node_id[:8]))
    head.remove_node(victim, allow_graceful=False)  # its raylet, its actor and the worker under it
    try:
        stdout, stderr = proc.communicate(timeout=180)
    finally:
        nodes[nodes.index(victim)] = _add_node(head)  # for the next test
    assert proc.returncode == 0, stderr
    rows = _rows(out)
    assert len(rows) == 6 and all(r["status"] == "ok" for r in rows), rows
    assert len({r["cell_key"] for r in rows}) == 6
    retried = [r for r in rows if r.get("retried")]
    assert len(retried) == 1 and "lost" in retried[0]["retried"], [r.get("retried") for r in rows]
    assert not retried[0]["node"].endswith(victim.node_id[:8])  # retried elsewhere
    served = {r["node"] for r in rows}
    assert len(served) == 2, served  # both nodes measured rows
    assert all(r["machine"] for r in rows)
    doc = json.loads((out / "results.json").read_text())
    assert len(doc["cluster"]["nodes"]) == 2 and doc["cluster"]["placement"] == "spread"
    assert "Measured on a Ray cluster: 2 node(s), 1 machine type(s)" in " ".join(stdout.split())


def test_a_killed_driver_resumes_with_every_cell_exactly_once(cluster, tmp_path, tiny_model_dir):
    head, _ = cluster
    out = tmp_path / "out"
    config = tmp_path / "sweep.yaml"
    config.write_text(CONFIG.format(out=out, model=tiny_model_dir, repeats=60, gen=8, prompts=[4, 8, 12, 16]))
    proc = _sweep(config, head.address)
    _wait_for_rows(out, 1, proc=proc)
    os.killpg(proc.pid, signal.SIGKILL)  # the driver; Ray ends its actors, their workers die with them
    proc.wait()
    before = _rows(out)
    assert 1 <= len(before) < 4
    resumed = run_cli("sweep", str(config), "--address", head.address, "--resume", timeout=180)
    assert resumed.returncode == 0, resumed.stderr
    rows = _rows(out)
    assert len(rows) == 4 and len({r["cell_key"] for r in rows}) == 4 and all(r["status"] == "ok" for r in rows)
    assert [r for r in rows if r["cell_key"] in {b["cell_key"] for b in before}] == before  # kept, not re-run
    assert "Measured on a Ray cluster" in resumed.stdout


def test_each_node_placement_measures_every_cell_per_machine_type(cluster, tmp_path, tiny_model_dir):
    """The two logical nodes are one machine type: each cell once, keyed by that type."""
    head, _ = cluster
    out = tmp_path / "out"
    config = tmp_path / "sweep.yaml"
    text = CONFIG.format(out=out, model=tiny_model_dir, repeats=2, gen=3, prompts=[4, 8])
    config.write_text(text + "ray: {placement: each-node, model_files: shared}\n")
    done = run_cli("sweep", str(config), "--address", head.address, timeout=180)
    assert done.returncode == 0, done.stderr
    rows = _rows(out)
    assert len(rows) == 2 and {r["node_type"] for r in rows} == {rows[0]["machine"]}
    local = load_sweep(config)
    assert local.by_machine() and local.cluster.model_files == "shared"


def test_no_cluster_at_the_address_is_one_line(tmp_path, tiny_model_dir):
    config = tmp_path / "sweep.yaml"
    config.write_text(CONFIG.format(out=tmp_path / "out", model=tiny_model_dir, repeats=1, gen=1, prompts=[4]))
    done = run_cli("sweep", str(config), "--address", "127.0.0.1:1", timeout=120)
    assert done.returncode == 2 and "cannot reach a Ray cluster at '127.0.0.1:1'" in done.stderr
    assert "Traceback" not in done.stderr and not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--executor", "slurm"], "unknown executor 'slurm' (choose from: local, ray)"),
        (["--executor", "local", "--address", "auto"], "--address names a Ray cluster"),
    ],
)
def test_bad_executor_arguments_are_one_line(tmp_path, tiny_model_dir, args, message):
    config = tmp_path / "sweep.yaml"
    config.write_text(CONFIG.format(out=tmp_path / "out", model=tiny_model_dir, repeats=1, gen=1, prompts=[4]))
    done = run_cli("sweep", str(config), *args)
    assert done.returncode == 2 and message in done.stderr and "Traceback" not in done.stderr


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("executor: slurm\n", "unknown executor 'slurm'"),
        ("ray: {placement: everywhere}\n", "unknown placement 'everywhere'"),
        ("ray: {model_files: nfs}\n", "unknown model_files 'nfs'"),
        ("ray: {adress: auto}\n", "adress"),
        ("executor: ray\ninterleave: true\n", "interleave alternates backends on one machine"),
    ],
)
def test_cluster_config_errors_name_the_field(tmp_path, text, message):
    config = tmp_path / "sweep.yaml"
    config.write_text(f"prompt_lens: [4]\ngen_lens: [2]\n{text}backends:\n  - name: hf-eager\n")
    with pytest.raises(UsageError, match=message.replace("(", r"\(")):
        load_sweep(config)


def test_without_ray_the_executor_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    with pytest.raises(UsageError, match=r"needs Ray: pip install 'gpt2bench\[ray\]'"):
        connect("auto")


def test_cells_split_into_consecutive_runs_one_per_node():
    cells = [Cell(p, 1, 1) for p in range(5)]
    assert chunks(cells, 2) == [cells[:3], cells[3:]]
    assert chunks(cells, 1) == [cells]
    assert chunks(cells[:1], 4) == [cells[:1]]
