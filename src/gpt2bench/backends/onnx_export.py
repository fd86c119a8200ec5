"""Export GPT-2 to ONNX with explicit past key/values, optimize it, quantize it, and cache each
artifact. Imported only when an ONNX backend prepares, so it may import torch and onnx at the top.

Cache layout: <cache>/onnx/<variant>-<key>/{model.onnx, manifest.json}. The key hashes everything
the bytes depend on (weights hash, exporter, opset, options, library versions, this file's
EXPORT_VERSION). A build is written to a temporary folder and renamed into place, so no process
ever sees half an artifact; on load the file's size and sha256 are checked against the manifest,
and a truncated or corrupt artifact is rebuilt.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from gpt2bench.backends.artifacts import fields_key, sha256_file
from gpt2bench.core import progress
from gpt2bench.core.errors import BenchError
from gpt2bench.core.fsutil import atomic_write_text, publish_folder
from gpt2bench.core.paths import cache_dir
from gpt2bench.models.ref import ModelRef

log = logging.getLogger("gpt2bench")

EXPORT_VERSION = 2  # bump when this file changes what it writes (2: logits_positions input)
OPSET = 17
EXPORTER = "torchscript"  # torch.onnx.export(dynamo=False); see export_onnx for why not dynamo
VARIANTS = ("onnx", "onnx-opt", "onnx-int8")
PARENT = {"onnx-opt": "onnx", "onnx-int8": "onnx-opt"}
BUILD_STEP = {"onnx": "ONNX export", "onnx-opt": "GPT-2 fusions", "onnx-int8": "int8 quantization"}


def past_names(n_layer: int) -> list[str]:
    return [f"past_key_values.{i}.{kv}" for i in range(n_layer) for kv in ("key", "value")]


def present_names(n_layer: int) -> list[str]:
    return [f"present.{i}.{kv}" for i in range(n_layer) for kv in ("key", "value")]


@dataclass
class Artifact:
    path: Path
    manifest: dict[str, Any]
    phases: dict[str, float] = field(default_factory=dict)  # work done in *this* call, seconds


def export_onnx(model_dir: Path, out: Path) -> dict[str, Any]:
    """The legacy TorchScript exporter around a wrapper that rebuilds a DynamicCache from flat
    past tensors. The dynamo exporter's GPT-2 graph crashes onnxruntime's GPT-2 optimizer and
    quantizes badly (lm_head left fp32), so we do not use it.

    `logits_positions` picks the positions lm_head runs on: the last one for generation (as
    hf-eager's `logits_to_keep=1`; all of a prompt's would cost a 50257-wide matmul per prompt
    token, ~0.4 s of a 500-token prefill here), every one for the quality path."""
    import torch
    from transformers import GPT2LMHeadModel

    # Eager attention: the optimizer's attention patterns are written against it.
    model = GPT2LMHeadModel.from_pretrained(model_dir, attn_implementation="eager")
    cfg = model.config
    n_layer, n_head, head_dim = cfg.n_layer, cfg.n_head, cfg.n_embd // cfg.n_head
    # The legacy exporter does not switch the wrapper to eval mode: without this, dropout is
    # traced into the graph and logits are off by ~2.
    wrapper = _with_past(model, n_layer).eval()
    batch, seq, past = 2, 3, 4  # any sizes > 1: every axis below is dynamic
    args = (
        torch.randint(0, cfg.vocab_size, (batch, seq)),
        torch.ones(batch, past + seq, dtype=torch.long),
        torch.arange(past, past + seq).repeat(batch, 1),
        torch.tensor([seq - 1]),
        *[torch.zeros(batch, n_head, past, head_dim) for _ in range(2 * n_layer)],
    )
    inputs = ["input_ids", "attention_mask", "position_ids", "logits_positions", *past_names(n_layer)]
    outputs = ["logits", *present_names(n_layer)]
    dynamic = {
        "input_ids": {0: "batch", 1: "seq"},
        "attention_mask": {0: "batch", 1: "total"},
        "position_ids": {0: "batch", 1: "seq"},
        "logits_positions": {0: "kept"},
        "logits": {0: "batch", 1: "kept"},
        **{n: {0: "batch", 2: "past"} for n in past_names(n_layer)},
        **{n: {0: "batch", 2: "total"} for n in present_names(n_layer)},
    }
    with torch.no_grad():
        torch.onnx.export(
            wrapper,
            args,
            str(out),
            dynamo=False,
            opset_version=OPSET,
            input_names=inputs,
            output_names=outputs,
            dynamic_axes=dynamic,
            do_constant_folding=True,
        )
    graph = onnx.load(str(out))
    deduped = dedupe_tied_embedding(graph)
    onnx.save(graph, str(out))
    return {"tied_embedding_deduplicated": deduped}


def _with_past(model: Any, n_layer: int) -> Any:
    """`model` as a module of flat tensors, the traceable form: past key/values in, presents out."""
    import torch
    from transformers import DynamicCache

    class WithPast(torch.nn.Module):
        def __init__(self, inner: torch.nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, input_ids, attention_mask, position_ids, logits_positions, *past):  # type: ignore[no-untyped-def]
            cache = DynamicCache(ddp_cache_data=[(past[2 * i], past[2 * i + 1]) for i in range(n_layer)])
            out = self.inner(
                input_ids=input_ids,
                attention_mask=attention_mask,
                position_ids=position_ids,
                past_key_values=cache,
                use_cache=True,
                logits_to_keep=logits_positions,  # a tensor of indices: traced as a Gather
            )
            presents = [t for layer in out.past_key_values.layers for t in (layer.keys, layer.values)]
            return (out.logits, *presents)

    return WithPast(model)


def dedupe_tied_embedding(model: onnx.ModelProto) -> bool:
    """GPT-2 ties lm_head to the token embedding, but the exporter stores both the [V, E]
    embedding and a transposed [E, V] copy for the lm_head MatMul (+150 MB for 124M). Keep the
    copy (the quantizer needs the MatMul weight as an initializer) and make the embedding read
    it: Gather along axis 1 gives [E, batch, seq], one small Transpose restores [batch, seq, E]."""
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    gathers = [
        n for n in graph.node if n.op_type == "Gather" and n.input[0] in inits and len(inits[n.input[0]].dims) == 2
    ]
    matmuls = [n for n in graph.node if n.op_type == "MatMul" and n.input[1] in inits]
    for gather in gathers:
        table = inits[gather.input[0]]
        for matmul in matmuls:
            weight = inits[matmul.input[1]]
            if list(weight.dims) != list(reversed(table.dims)):
                continue
            if not np.array_equal(numpy_helper.to_array(table).T, numpy_helper.to_array(weight)):
                continue
            users = [n for n in graph.node if table.name in n.input]
            if users != [gather]:
                return False
            out = gather.output[0]
            gather.input[0] = weight.name
            gather.output[0] = out + "_by_column"
            del gather.attribute[:]
            gather.attribute.append(helper.make_attribute("axis", 1))
            transpose = helper.make_node(
                "Transpose", [gather.output[0]], [out], name=gather.name + "_to_rows", perm=[1, 2, 0]
            )
            nodes = list(graph.node)
            nodes.insert(nodes.index(gather) + 1, transpose)
            del graph.node[:]
            graph.node.extend(nodes)
            graph.initializer.remove(table)
            return True
    return False


def optimize_onnx(src: Path, out: Path, n_head: int, hidden: int, use_gpu: bool = False) -> dict[str, Any]:
    """onnxruntime's transformer optimizer with its GPT-2 fusions (LayerNorm, Gelu, Attention
    where its patterns match); returns the fused-operator counts."""
    from onnxruntime.transformers import optimizer

    optimized = optimizer.optimize_model(
        str(src), model_type="gpt2", num_heads=n_head, hidden_size=hidden, use_gpu=use_gpu
    )
    fusions = {k: int(v) for k, v in optimized.get_fused_operator_statistics().items() if v}
    optimized.save_model_to_file(str(out), use_external_data_format=False)
    return {"fusions": fusions}


def quantize_onnx(src: Path, out: Path, weight_type: str, per_channel: bool) -> dict[str, Any]:
    """Dynamic int8: weights quantized ahead of time, activations per call."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(
        str(src),
        str(out),
        weight_type=QuantType[weight_type],
        per_channel=per_channel,
        # Without it, the fused graph fails with "Unable to find data type for weight_name=...".
        extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
    )
    graph = onnx.load(str(out), load_external_data=False).graph
    ops = [n.op_type for n in graph.node]
    inits = {i.name for i in graph.initializer}
    float_matmuls = sum(1 for n in graph.node if n.op_type in ("MatMul", "Gemm") and n.input[1] in inits)
    return {
        "quantized_matmuls": sum(
            ops.count(op) for op in ("MatMulInteger", "DynamicQuantizeMatMul", "MatMulIntegerToFloat")
        ),
        "float_matmuls_with_weights": float_matmuls,
        "weight_type": weight_type,
        "per_channel": per_channel,
    }


def _versions() -> dict[str, str | None]:
    out = {}
    for name in ("torch", "transformers", "onnx", "onnxruntime"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def verify(folder: Path) -> tuple[dict[str, Any] | None, str]:
    """(manifest, "") when the artifact is complete and intact, else (None, why not)."""
    try:
        manifest = json.loads((folder / "manifest.json").read_text())
    except FileNotFoundError:
        return None, "missing"
    except (OSError, ValueError) as exc:
        return None, f"unreadable manifest ({exc})"
    model = folder / "model.onnx"
    if not model.is_file():
        return None, "model.onnx missing"
    if model.stat().st_size != manifest.get("size"):
        return None, f"model.onnx is {model.stat().st_size} bytes, expected {manifest.get('size')}"
    if sha256_file(model) != manifest.get("sha256"):
        return None, "model.onnx checksum mismatch"
    return manifest, ""


def _fields(model: ModelRef, variant: str, options: dict[str, Any]) -> dict[str, Any]:
    """Everything an artifact's bytes depend on; its parent enters through the parent's key."""
    fields: dict[str, Any] = {
        "variant": variant,
        "model_hash": model.weights_hash,
        "exporter": EXPORTER,
        "opset": OPSET,
        "export_version": EXPORT_VERSION,
        "versions": _versions(),
        "parent": fields_key(_fields(model, PARENT[variant], options)) if variant in PARENT else None,
    }
    if variant == "onnx-opt" and options.get("use_gpu"):
        fields["use_gpu"] = True  # absent for the CPU graph: its cached key stays what it was
    if variant == "onnx-int8":
        fields["quantization"] = {"weight_type": options["weight_type"], "per_channel": options["per_channel"]}
    return fields


@contextlib.contextmanager
def _quiet_builders() -> Iterator[None]:
    """The optimizer and quantizer log hundreds of lines to the root logger; keep errors only."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        root.setLevel(level)


def build(model: ModelRef, variant: str, options: dict[str, Any], rebuild: bool = False) -> Artifact:
    """Return the cached artifact for `variant`, building it (and, only then, its parents) when
    missing, corrupt, or when `rebuild` is set. `phases` holds the seconds spent in this call."""
    if variant not in VARIANTS:
        raise BenchError(f"unknown ONNX variant '{variant}'")
    fields = _fields(model, variant, options)
    key = fields_key(fields)
    folder = cache_dir() / "onnx" / f"{variant}-{key}"
    phases: dict[str, float] = {}
    t0 = time.perf_counter()
    manifest, problem = verify(folder) if not rebuild else (None, "rebuild requested")
    phases[f"{variant}_verify_s"] = time.perf_counter() - t0
    if manifest is not None:
        phases[f"{variant}_cache_hit"] = 1.0
        return Artifact(folder / "model.onnx", manifest, phases)
    if problem not in ("missing", "rebuild requested"):
        log.warning("cached %s artifact in %s is corrupt (%s); rebuilding it", variant, folder, problem)
    parent = build(model, PARENT[variant], options, rebuild) if variant in PARENT else None
    if parent:
        phases = {**parent.phases, **phases}
    built: dict[str, Any] = {}

    def write(tmp: Path) -> None:
        target = tmp / "model.onnx"
        t0 = time.perf_counter()
        what = f"building the {variant} artifact ({BUILD_STEP[variant]}; once, cached)"
        with _quiet_builders(), progress.phase(what):
            info, step = _build_variant(model, variant, options, parent, target)
        phases[step] = time.perf_counter() - t0
        phases[f"{variant}_cache_hit"] = 0.0
        built["manifest"] = _manifest(key, fields, target, phases[step], info)
        atomic_write_text(tmp / "manifest.json", json.dumps(built["manifest"], indent=1))

    ours = publish_folder(folder, write, finished=lambda f: verify(f)[0] is not None, replace=rebuild)
    # Another process finished the same artifact first: theirs is intact, use it.
    manifest = built["manifest"] if ours else verify(folder)[0]
    return Artifact(folder / "model.onnx", manifest or {}, phases)


def _build_variant(
    model: ModelRef, variant: str, options: dict[str, Any], parent: Artifact | None, target: Path
) -> tuple[dict[str, Any], str]:
    """Write `variant` to `target` (from its parent's artifact); its info and its phase's name."""
    if parent is None:
        return export_onnx(model.path, target), "export_s"
    if variant == "onnx-opt":
        config = model.config()
        use_gpu = bool(options.get("use_gpu", False))
        return optimize_onnx(parent.path, target, config["n_head"], config["n_embd"], use_gpu), "optimize_s"
    return quantize_onnx(parent.path, target, options["weight_type"], options["per_channel"]), "quantize_s"


def _manifest(key: str, fields: dict[str, Any], target: Path, build_s: float, info: dict[str, Any]) -> dict[str, Any]:
    return {
        "key": key,
        "fields": fields,
        "size": target.stat().st_size,
        "sha256": sha256_file(target),
        "build_s": build_s,
        "info": info,
        "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
