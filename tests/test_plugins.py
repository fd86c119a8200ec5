"""Backends from other packages, through the `gpt2bench.backends` entry-point group: an installed
distribution (a dist-info folder on the path) registers one working backend and one that fails to
import."""

import json
import os

import pytest

from conftest import run_cli

PLUGIN = """
from gpt2bench.backends.base import register
from gpt2bench.backends.hf import HFEager


@register("plugin-eager", description="hf-eager, registered by another package")
class PluginEager(HFEager):
    pass
"""


@pytest.fixture
def plugin_env(tmp_path):
    site = tmp_path / "site"
    dist = site / "gpt2bench_test_plugin-0.1.dist-info"
    dist.mkdir(parents=True)
    (site / "gpt2bench_test_plugin.py").write_text(PLUGIN)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: gpt2bench-test-plugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(
        "[gpt2bench.backends]\nplugin-eager = gpt2bench_test_plugin\nbroken = no_such_module_for_gpt2bench\n"
    )
    path = os.pathsep.join(p for p in (str(site), os.environ.get("PYTHONPATH", "")) if p)
    return {"PYTHONPATH": path, "COLUMNS": "200"}


def test_plugins_are_listed_and_a_broken_one_is_reported(plugin_env):
    proc = run_cli("backends", env=plugin_env)
    assert proc.returncode == 0, proc.stderr
    assert "plugin-eager" in proc.stdout and "hf-eager, registered by another package" in proc.stdout
    assert (
        "warning: backend plugin 'broken' (no_such_module_for_gpt2bench) failed to import: ModuleNotFoundError"
        in proc.stderr
    )
    unknown = run_cli("run", "--backend", "nope", env=plugin_env)
    assert unknown.returncode == 2 and unknown.stderr.strip().count("\n") == 0
    assert "unknown backend 'nope'" in unknown.stderr and "plugin-eager" in unknown.stderr
    assert "backend plugin 'broken'" in unknown.stderr


def test_a_plugin_backend_runs_through_the_sweep_workers(tmp_path, tiny_model_dir, plugin_env):
    out = tmp_path / "out"
    config = tmp_path / "sweep.yaml"
    config.write_text(
        f"output: {out}\nmodel: {tiny_model_dir}\nrepeats: 2\nwarmup: 0\nprompt_lens: [4]\ngen_lens: [3]\n"
        "backends: [{name: hf-eager}, {name: plugin-eager}]\n"
    )
    proc = run_cli("sweep", str(config), env=plugin_env)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads((out / "results.json").read_text())
    rows = {r["backend"]: r for r in doc["rows"]}
    assert set(rows) == {"hf-eager", "plugin-eager"} and rows["plugin-eager"]["tokens_per_run"] == 3
    ids = {r["backend"]: s["generated_ids"] for r, s in zip(doc["rows"], doc["samples"], strict=True)}
    assert ids["plugin-eager"] == ids["hf-eager"]  # the same model through the same code: the same tokens
