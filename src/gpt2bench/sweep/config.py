"""The sweep YAML schema, validated on load with errors that name the field and its line.

model: random                 # optional; default: gpt2, falling back to random offline
output: results/cpu           # optional; default: results/<the config file's name>
device: cpu
threads: 2                    # optional; default: the cores available
repeats: 5                    # or auto: until the medians are precise enough (measure/stopping.py)
target_ci: 0.02               # repeats: auto only; with min_repeats, max_repeats, cell_budget_s
warmup: 2
prompt_lens: [1, 50, 500]
gen_lens: [1, 10, 100]
batch_sizes: [1]
extra_cells:                  # optional cells outside the grid
  - {prompt_len: 50, gen_len: 100, batch_size: 1}
interleave: false             # alternate backends repetition by repetition
probe_bandwidth: false        # CPU: probe read bandwidth around every timed run (as run --probe-bandwidth)
cell_timeout_s: 1800
quality: {enabled: false, window: null, stride: null, max_windows: 4, eval_text: null}
executor: local               # local (this machine) | ray (a Ray cluster, one cell's worker per node)
ray: {address: auto, placement: spread, model_files: ship}   # see ClusterConfig
ab: {rounds: 40, threshold: 0.05}   # gpt2bench ab only: see sweep/ab_config.py
backends:
  - name: hf-eager
  - {name: static-kv, dtype: bf16, options: {compile_mode: default}, label: static-kv-bf16}
"""

from __future__ import annotations

from dataclasses import astuple, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from gpt2bench import MAX_CONTEXT
from gpt2bench.core.errors import UsageError
from gpt2bench.core.paths import DEFAULT_TEXT
from gpt2bench.measure.row import label
from gpt2bench.measure.spec import DEVICES, QualitySettings, RunSpec
from gpt2bench.measure.stopping import Adaptive
from gpt2bench.sweep.ab_config import AbSettings, parse_ab
from gpt2bench.sweep.adaptive_config import ADAPTIVE_KEYS, _adaptive
from gpt2bench.sweep.yaml_nodes import (
    _fail,
    _int_list,
    _mapping,
    _Node,
    _positive_int,
    _positive_seconds,
    _repeats,
    _scalar,
)

TOP_KEYS = {
    "model",
    "output",
    "device",
    "threads",
    "repeats",
    *ADAPTIVE_KEYS,
    "warmup",
    "prompt_lens",
    "gen_lens",
    "batch_sizes",
    "extra_cells",
    "interleave",
    "probe_bandwidth",
    "cell_timeout_s",
    "quality",
    "executor",
    "ray",
    "ab",
    "backends",
}
BACKEND_KEYS = {"name", "dtype", "options", "label"}
QUALITY_KEYS = {"enabled", "window", "stride", "max_windows", "eval_text"}
CELL_KEYS = {"prompt_len", "gen_len", "batch_size"}
RAY_KEYS = {"address", "placement", "model_files"}
EXECUTORS = ("local", "ray")
PLACEMENTS = ("spread", "each-node")
MODEL_FILES = ("ship", "shared", "resolve")


@dataclass(frozen=True)
class Cell:
    prompt_len: int
    gen_len: int
    batch_size: int


@dataclass(frozen=True)
class BackendConfig:
    name: str
    dtype: str = "fp32"
    options: dict[str, Any] = field(default_factory=dict)
    label: str = ""

    def display(self) -> str:
        return label(self.name, self.dtype, self.label)


@dataclass(frozen=True)
class QualityConfig:
    enabled: bool = False
    window: int | None = None
    stride: int | None = None
    max_windows: int | None = 4
    eval_text: str | None = None

    def settings(self) -> QualitySettings:
        return QualitySettings(
            self.window, self.stride, self.max_windows, Path(self.eval_text) if self.eval_text else DEFAULT_TEXT
        )


@dataclass(frozen=True)
class ClusterConfig:
    """Where a sweep's workers run. `local`: processes on this machine. `ray`: Ray actors, one per
    node that offers the whole-node resource (sweep/cluster.py), so two cells never share a machine.

    placement: `spread` hands the cells to whichever node is free (nodes alike, to finish sooner);
    `each-node` measures every cell once on each kind of machine in the cluster (to compare them).
    model_files: `ship` sends the driver's resolved model folder to each node once (Ray's object
    store); `shared` loads the driver's folder path on every node (a filesystem they all mount);
    `resolve` has each node resolve the model itself (a Hub download per node)."""

    executor: str = "local"
    address: str = "auto"
    placement: str = "spread"
    model_files: str = "ship"


@dataclass(frozen=True)
class SweepSpec:
    backends: list[BackendConfig]
    cells: list[Cell]
    output: Path
    model: str | None = None
    device: str = "cpu"
    threads: int | None = None
    repeats: int = 5
    warmup: int = 2
    interleave: bool = False
    probe_bandwidth: bool = False
    adaptive: Adaptive | None = None  # repeats: auto
    cell_timeout_s: float = 1800.0
    quality: QualityConfig = field(default_factory=QualityConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    ab: AbSettings = field(default_factory=AbSettings)  # read by gpt2bench ab only
    source: str = ""
    notes: tuple[str, ...] = ()  # what the config said that was read differently (a cell listed twice)

    def by_machine(self) -> bool:
        """Whether the machine is part of a row's identity: each-node measures a cell per machine."""
        return self.cluster.executor == "ray" and self.cluster.placement == "each-node"

    def interleave_problem(self) -> str | None:
        """Why this sweep cannot interleave, or None. Interleaved, every backend's worker stays
        loaded at once; on one GPU vLLM takes 90% of its memory by default and the others would not
        fit, so a vLLM backend must say how much it may take."""
        if self.interleave and self.adaptive is not None:
            return "interleave alternates fixed repetitions between backends; repeats: auto stops each cell on its own"
        if self.interleave and self.cluster.executor == "ray":
            return "interleave alternates backends on one machine; with executor ray each node measures its own cells"
        if not self.interleave or self.device != "cuda":
            return None
        for backend in self.backends:
            if backend.name == "vllm" and not {"gpu_memory_utilization", "kv_cache_gb"} & set(backend.options):
                return (
                    f"interleave on cuda keeps every backend loaded on one GPU: give {backend.display()} "
                    "options: {gpu_memory_utilization: 0.3} (or kv_cache_gb) so the others fit beside it"
                )
        return None

    def record(self, threads: int) -> dict[str, Any]:
        """What a results folder of this sweep was measured with, to check a --resume against."""
        return {
            "model": self.model,
            "device": self.device,
            "threads": threads,
            "repeats": self.repeats,
            "warmup": self.warmup,
            # Only when used, so folders measured before repeats: auto existed resume as before.
            **({"adaptive": self.adaptive.record()} if self.adaptive else {}),
            "interleave": self.interleave,
            "probe_bandwidth": self.probe_bandwidth,
            "cells": [[c.prompt_len, c.gen_len, c.batch_size] for c in self.cells],
            "backends": [[b.display(), b.name, b.dtype, b.options] for b in self.backends],
            "quality": list(astuple(self.quality)),
            # Only where it changes what a row is (a cell per machine), so older folders resume as before.
            **({"placement": "each-node"} if self.by_machine() else {}),
        }

    def quality_settings(self) -> QualitySettings:
        return self.quality.settings()

    def run_spec(
        self,
        backend: BackendConfig,
        cell: Cell,
        threads: int,
        warmup: int | None = None,
        repeats: int | None = None,
        quality: bool = False,
    ) -> RunSpec:
        """What a worker measures for `backend` on `cell`: the sweep's settings, greedy sampling,
        the sweep's warm-up and repeats unless given, quality only where asked for."""
        return RunSpec(
            backend=backend.name,
            prompt_len=cell.prompt_len,
            gen_len=cell.gen_len,
            batch_size=cell.batch_size,
            repeats=self.repeats if repeats is None else repeats,
            warmup=self.warmup if warmup is None else warmup,
            model=self.model,
            threads=threads,
            device=self.device,
            dtype=backend.dtype,
            options=backend.options,
            quality=self.quality_settings() if quality and self.quality.enabled else None,
            probe_bandwidth=self.probe_bandwidth,
            adaptive=self.adaptive if repeats is None else None,
        )


def load_sweep(path: Path) -> SweepSpec:
    src = str(path)
    root = _compose(path)
    top = _mapping(src, _Node(root, ""), TOP_KEYS)
    for required in ("backends", "prompt_lens", "gen_lens"):
        if required not in top:
            raise UsageError(f"{src}:{root.start_mark.line + 1}: missing required key '{required}'")
    get = top.get
    device = _scalar(src, get("device"), str) if "device" in top else "cpu"
    if device not in DEVICES:
        raise _fail(src, get("device"), f"unknown device '{device}' (choose from: {', '.join(DEVICES)})")
    probe_bandwidth = _scalar(src, get("probe_bandwidth"), bool) if "probe_bandwidth" in top else False
    if probe_bandwidth and device != "cpu":
        raise _fail(src, get("probe_bandwidth"), "probes the CPU's memory; it is for device: cpu")
    cells, notes = _cells(src, top)
    adaptive = _adaptive(src, top)
    spec = SweepSpec(
        backends=_backends(src, top["backends"], device, cells[0]),
        cells=cells,
        output=Path(_scalar(src, top["output"], str)) if "output" in top else Path("results") / path.stem,
        model=_scalar(src, get("model"), str, nullable=True) if "model" in top else None,
        device=device,
        threads=_positive_int(src, get("threads")) if "threads" in top else None,
        repeats=adaptive.max_repeats if adaptive else _positive_int(src, get("repeats")) if "repeats" in top else 5,
        adaptive=adaptive,
        warmup=_positive_int(src, get("warmup"), minimum=0) if "warmup" in top else 2,
        interleave=_scalar(src, get("interleave"), bool) if "interleave" in top else False,
        probe_bandwidth=probe_bandwidth,
        cell_timeout_s=_positive_seconds(src, get("cell_timeout_s")) if "cell_timeout_s" in top else 1800.0,
        quality=_quality(src, top["quality"]) if "quality" in top else QualityConfig(),
        cluster=_cluster(src, top),
        ab=parse_ab(src, top["ab"]) if "ab" in top else AbSettings(),
        source=src,
        notes=tuple(notes),
    )
    if problem := spec.interleave_problem():
        raise _fail(src, top["backends"], problem)
    return spec


def _compose(path: Path) -> yaml.Node:
    """The config's YAML node tree (with line numbers), or a one-line error."""
    src = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"cannot read sweep config '{path}': {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise UsageError(f"{src}: not a text file (a sweep config is YAML)") from None
    try:
        root = yaml.compose(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{src}:{mark.line + 1}" if mark else src
        raise UsageError(f"{where}: malformed YAML: {getattr(exc, 'problem', exc)}") from None
    if root is None:
        raise UsageError(f"{src}: the config is empty")
    return root


def _cells(src: str, top: dict[str, _Node]) -> tuple[list[Cell], list[str]]:
    """The grid of prompt x gen x batch, then the extra cells not already in it; and notes for
    the cells given twice."""
    notes = _repeats(src, top)
    prompt_lens, gen_lens = _int_list(src, top["prompt_lens"]), _int_list(src, top["gen_lens"])
    batch_sizes = _int_list(src, top["batch_sizes"]) if "batch_sizes" in top else [1]
    cells = list(dict.fromkeys(Cell(p, g, b) for p in prompt_lens for g in gen_lens for b in batch_sizes))
    for p, g in ((p, g) for p in prompt_lens for g in gen_lens):
        if p + g > MAX_CONTEXT:
            raise _fail(
                src, top["prompt_lens"], f"prompt {p} + gen {g} = {p + g} exceeds the {MAX_CONTEXT}-token context"
            )
    if "extra_cells" in top:
        extra = top["extra_cells"]
        if not isinstance(extra.node, yaml.SequenceNode):
            raise _fail(src, extra, "expected a list of {prompt_len, gen_len, batch_size}")
        for i, item in enumerate(extra.node.value):
            fields = _mapping(src, _Node(item, f"extra_cells[{i}]"), CELL_KEYS)
            cell = Cell(
                *(_positive_int(src, fields[k]) if k in fields else 1 for k in ("prompt_len", "gen_len", "batch_size"))
            )
            if cell.prompt_len + cell.gen_len > MAX_CONTEXT:
                raise _fail(src, _Node(item, f"extra_cells[{i}]"), f"exceeds the {MAX_CONTEXT}-token context")
            if cell not in cells:
                cells.append(cell)
            else:
                notes.append(
                    f"{src}:{item.start_mark.line + 1}: extra_cells[{i}] is already in the grid; measured once"
                )
    return cells, notes


def _backends(src: str, backends_node: _Node, device: str, first: Cell) -> list[BackendConfig]:
    if not isinstance(backends_node.node, yaml.SequenceNode) or not backends_node.node.value:
        raise _fail(src, backends_node, "expected a non-empty list of backends")
    backends: list[BackendConfig] = []
    for i, item in enumerate(backends_node.node.value):
        node = _Node(item, f"backends[{i}]")
        config = _backend(src, node, device, first)
        if config.display() in {b.display() for b in backends}:
            raise _fail(src, node, f"duplicate backend '{config.display()}': give one a distinct 'label'")
        backends.append(config)
    return backends


def _backend(src: str, node: _Node, device: str, first: Cell) -> BackendConfig:
    """One backend entry, checked as `run` checks its arguments (with the sweep's first cell)."""
    from gpt2bench.backends import get_backend

    fields = _mapping(src, node, BACKEND_KEYS)
    if "name" not in fields:
        raise _fail(src, node, "missing 'name'")
    name = _scalar(src, fields["name"], str)
    try:
        get_backend(name)
    except UsageError as exc:  # names the valid ones, and any plugin that failed to import
        raise _fail(src, fields["name"], str(exc)) from None
    options = {}
    if "options" in fields:
        _mapping(src, fields["options"], set(get_backend(name).options) or {"<none>"})
        options = yaml.safe_load(yaml.serialize(fields["options"].node)) or {}
    config = BackendConfig(
        name,
        _scalar(src, fields["dtype"], str) if "dtype" in fields else "fp32",
        options,
        _scalar(src, fields["label"], str) if "label" in fields else "",
    )
    try:
        RunSpec(
            backend=name,
            device=device,
            dtype=config.dtype,
            options=options,
            prompt_len=first.prompt_len,
            gen_len=first.gen_len,
        ).validate()
    except UsageError as exc:
        raise _fail(src, node, str(exc)) from None
    return config


def _quality(src: str, node: _Node) -> QualityConfig:
    q = _mapping(src, node, QUALITY_KEYS)
    quality = QualityConfig(
        enabled=_scalar(src, q["enabled"], bool) if "enabled" in q else True,
        window=_scalar(src, q["window"], int, nullable=True) if "window" in q else None,
        stride=_scalar(src, q["stride"], int, nullable=True) if "stride" in q else None,
        max_windows=_scalar(src, q["max_windows"], int, nullable=True) if "max_windows" in q else 4,
        eval_text=_scalar(src, q["eval_text"], str, nullable=True) if "eval_text" in q else None,
    )
    try:
        quality.settings().validate()
    except UsageError as exc:
        raise _fail(src, node, str(exc)) from None
    return quality


def _choice(src: str, n: _Node, choices: tuple[str, ...], what: str) -> str:
    value = _scalar(src, n, str)
    if value not in choices:
        raise _fail(src, n, f"unknown {what} '{value}' (choose from: {', '.join(choices)})")
    return value


def _cluster(src: str, top: dict[str, _Node]) -> ClusterConfig:
    executor = _choice(src, top["executor"], EXECUTORS, "executor") if "executor" in top else "local"
    if "ray" not in top:
        return ClusterConfig(executor)
    ray = _mapping(src, top["ray"], RAY_KEYS)
    return ClusterConfig(
        executor,
        _scalar(src, ray["address"], str) if "address" in ray else "auto",
        _choice(src, ray["placement"], PLACEMENTS, "placement") if "placement" in ray else "spread",
        _choice(src, ray["model_files"], MODEL_FILES, "model_files") if "model_files" in ray else "ship",
    )
