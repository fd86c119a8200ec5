"""The sweep YAML schema, validated on load with errors that name the field and its line.

model: random                 # optional; default: gpt2, falling back to random offline
output: results/cpu           # optional; default: results/<the config file's name>
device: cpu
threads: 2                    # optional; default: the cores available
repeats: 5
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
backends:
  - name: hf-eager
  - {name: static-kv, dtype: bf16, options: {compile_mode: default}, label: static-kv-bf16}
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from gpt2bench import MAX_CONTEXT
from gpt2bench.core.errors import UsageError
from gpt2bench.core.paths import DEFAULT_TEXT
from gpt2bench.measure.row import label
from gpt2bench.measure.spec import DEVICES, QualitySettings, RunSpec

TOP_KEYS = {
    "model",
    "output",
    "device",
    "threads",
    "repeats",
    "warmup",
    "prompt_lens",
    "gen_lens",
    "batch_sizes",
    "extra_cells",
    "interleave",
    "probe_bandwidth",
    "cell_timeout_s",
    "quality",
    "backends",
}
BACKEND_KEYS = {"name", "dtype", "options", "label"}
QUALITY_KEYS = {"enabled", "window", "stride", "max_windows", "eval_text"}
CELL_KEYS = {"prompt_len", "gen_len", "batch_size"}


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
    cell_timeout_s: float = 1800.0
    quality: QualityConfig = field(default_factory=QualityConfig)
    source: str = ""

    def interleave_problem(self) -> str | None:
        """Why this sweep cannot interleave, or None. Interleaved, every backend's worker stays
        loaded at once; on one GPU vLLM takes 90% of its memory by default and the others would not
        fit, so a vLLM backend must say how much it may take."""
        if not self.interleave or self.device != "cuda":
            return None
        for backend in self.backends:
            if backend.name == "vllm" and not {"gpu_memory_utilization", "kv_cache_gb"} & set(backend.options):
                return (
                    f"interleave on cuda keeps every backend loaded on one GPU: give {backend.display()} "
                    "options: {gpu_memory_utilization: 0.3} (or kv_cache_gb) so the others fit beside it"
                )
        return None

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
        )


class _Node:
    """A YAML value with the line it came from (1-based), so errors can point at it."""

    def __init__(self, node: yaml.Node, path: str) -> None:
        self.node, self.path = node, path

    @property
    def line(self) -> int:
        return self.node.start_mark.line + 1


def _fail(src: str, node: _Node, message: str) -> UsageError:
    return UsageError(f"{src}:{node.line}: {node.path}: {message}")


def _mapping(src: str, n: _Node, allowed: set[str]) -> dict[str, _Node]:
    if not isinstance(n.node, yaml.MappingNode):
        if not n.path:  # the whole file
            raise UsageError(f"{src}:{n.line}: the config must be a mapping of keys (model:, backends:, ...)")
        raise _fail(src, n, "expected a mapping")
    out: dict[str, _Node] = {}
    for key_node, value_node in n.node.value:
        key = key_node.value
        child = _Node(value_node, f"{n.path}.{key}" if n.path else key)
        if key not in allowed:
            raise _fail(src, _Node(key_node, child.path), f"unknown key (valid: {', '.join(sorted(allowed))})")
        if key in out:  # YAML itself keeps the last one silently
            first = out[key].node.start_mark.line + 1
            raise _fail(src, _Node(key_node, child.path), f"given twice (first on line {first})")
        out[key] = child
    return out


KIND_NAMES = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}


def _scalar(src: str, n: _Node, kind: type, nullable: bool = False) -> Any:
    expected = KIND_NAMES.get(kind, f"a {kind.__name__}")
    if not isinstance(n.node, yaml.ScalarNode):
        raise _fail(src, n, f"expected {expected}")
    value = yaml.safe_load(yaml.serialize(n.node))
    if value is None and nullable:
        return None
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise _fail(src, n, f"expected {expected}, got {value!r}")
    return value


def _positive_int(src: str, n: _Node, minimum: int = 1) -> int:
    value = _scalar(src, n, int)
    if value < minimum:
        raise _fail(src, n, f"must be at least {minimum}, got {value}")
    return value


def _positive_seconds(src: str, n: _Node) -> float:
    value = _scalar(src, n, float)
    if not value > 0:
        raise _fail(src, n, f"must be more than 0 seconds, got {value:g}")
    return value


def _int_list(src: str, n: _Node) -> list[int]:
    if not isinstance(n.node, yaml.SequenceNode):
        raise _fail(src, n, "expected a list of integers")
    if not n.node.value:
        raise _fail(src, n, "must not be empty")
    return [_positive_int(src, _Node(item, f"{n.path}[{i}]")) for i, item in enumerate(n.node.value)]


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
    cells = _cells(src, top)
    spec = SweepSpec(
        backends=_backends(src, top["backends"], device, cells[0]),
        cells=cells,
        output=Path(_scalar(src, top["output"], str)) if "output" in top else Path("results") / path.stem,
        model=_scalar(src, get("model"), str, nullable=True) if "model" in top else None,
        device=device,
        threads=_positive_int(src, get("threads")) if "threads" in top else None,
        repeats=_positive_int(src, get("repeats")) if "repeats" in top else 5,
        warmup=_positive_int(src, get("warmup"), minimum=0) if "warmup" in top else 2,
        interleave=_scalar(src, get("interleave"), bool) if "interleave" in top else False,
        probe_bandwidth=probe_bandwidth,
        cell_timeout_s=_positive_seconds(src, get("cell_timeout_s")) if "cell_timeout_s" in top else 1800.0,
        quality=_quality(src, top["quality"]) if "quality" in top else QualityConfig(),
        source=src,
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


def _cells(src: str, top: dict[str, _Node]) -> list[Cell]:
    """The grid of prompt x gen x batch, then the extra cells not already in it."""
    prompt_lens, gen_lens = _int_list(src, top["prompt_lens"]), _int_list(src, top["gen_lens"])
    batch_sizes = _int_list(src, top["batch_sizes"]) if "batch_sizes" in top else [1]
    cells = [Cell(p, g, b) for p in prompt_lens for g in gen_lens for b in batch_sizes]
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
    return cells


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
