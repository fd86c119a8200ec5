"""ONNX Runtime GenAI backends: `onnx-genai` and `onnx-genai-int8`, GenAI's C++ decode loop (its
KV-cache handling, search and sampling) on the same graphs as `onnx` and `onnx-int8`, so against
those rows they show what our Python loop around ONNX Runtime costs.

GenAI runs the project's own export with a `genai_config.json` the project writes, after two
edits of the graph, both in `prepare` and cached:
- `logits_positions` (our export's choice of the positions lm_head runs on) becomes a constant
  [-1], the last position, for the prompt as for every step: GenAI feeds only the inputs it knows.
- the logits get one more column, always -inf (an ONNX Pad), and the config names that column's
  id (50257) as the end-of-sequence token. GenAI stops a sequence at its EOS id and checks that
  id against the logits' width, so there is no other way to keep GPT-2's real <|endoftext|>
  (50256) an ordinary token that is generated and does not end anything; the padded id can never
  be chosen, greedy or sampled, and every sequence runs to its exact length.
The config uses GenAI's generic decoder ("llama" type): its "gpt2" type expects the old combined
past_N tensors, not our past_key_values.N.key/value pairs. The decoder's model type only tells
GenAI how to feed inputs (ours: input_ids, attention_mask, position_ids, past/present pairs);
the graph is GPT-2's.

Threads: the session's intra_op_num_threads, written into a per-load copy of the config (a folder
of links beside the cached artifact, so the verified artifact itself never changes). Logits for
quality come from a plain ONNX Runtime session on the source graph (before the two edits) with
every position kept, since GenAI returns the last position only: the same kernels GenAI runs.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from gpt2bench.backends.base import Backend, BackendSettings, get_backend, register

if TYPE_CHECKING:
    from gpt2bench.backends.artifacts import Built
    from gpt2bench.backends.base import Sampling
    from gpt2bench.models.ref import ModelRef

REQUIRES = (("onnxruntime_genai", "genai"), ("onnxruntime", "genai"), ("onnx", "genai"))
EDIT_VERSION = 1
NEVER = -3.0e38  # the padded column's logit: below any real one, zero probability when sampled


class _GenAiBackend(Backend):
    source: ClassVar[str]  # the ONNX backend whose artifact GenAI runs

    @classmethod
    def check_options(cls, options: dict[str, Any]) -> None:
        get_backend(cls.source).cls.check_options(options)

    def prepare(self, model: ModelRef, settings: BackendSettings) -> dict[str, float]:
        from gpt2bench.backends.artifacts import cached_build

        onnx = get_backend(self.source).create()
        phases = onnx.prepare(model, settings)
        src = onnx.artifact
        self.source_path = src.path
        fields = {
            "variant": self.name,
            "source_sha256": src.manifest.get("sha256"),
            "genai": metadata.version("onnxruntime-genai"),
            "edit_version": EDIT_VERSION,
        }
        rebuild = bool(settings.options.get("rebuild", False))
        self.artifact: Built = cached_build(
            "genai", fields, lambda tmp: _edit_for_genai(src.path, tmp, model), rebuild, "GenAI graph edits"
        )
        return {**phases, **self.artifact.phases}

    def load(self, model: ModelRef, settings: BackendSettings) -> dict[str, float]:
        import onnxruntime as ort
        import onnxruntime_genai as og

        self.check_options(settings.options)
        if not hasattr(self, "artifact"):
            self.prepare(model, settings)
        self._folder = tempfile.TemporaryDirectory(prefix="gpt2bench-genai-")
        folder = Path(self._folder.name)
        (folder / "model.onnx").symlink_to(self.artifact.folder / "model.onnx")
        (folder / "genai_config.json").write_text(json.dumps(genai_config(model.config(), settings.threads), indent=1))
        self.og = og
        self.model = og.Model(str(folder))
        options = ort.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = settings.threads, 1
        options.log_severity_level = 3
        self.session = ort.InferenceSession(str(self.source_path), options)
        config = model.config()
        self.n_layer, self.n_head = int(config["n_layer"]), int(config["n_head"])
        self.head_dim, self.vocab = int(config["n_embd"]) // self.n_head, int(config["vocab_size"])
        return {}

    def generate(self, input_ids: np.ndarray, max_new_tokens: int, sampling: Sampling) -> Iterator[np.ndarray]:
        batch, seq = input_ids.shape
        params = self.og.GeneratorParams(self.model)
        search: dict[str, Any] = {"max_length": seq + max_new_tokens, "batch_size": batch}
        if sampling.greedy:
            search["do_sample"] = False
        else:
            search.update(do_sample=True, temperature=sampling.temperature, top_p=sampling.top_p,
                          top_k=sampling.top_k or self.vocab, random_seed=sampling.seed)  # fmt: skip
        params.set_search_options(**search)
        generator = self.og.Generator(self.model, params)
        generator.append_tokens(np.ascontiguousarray(input_ids, dtype=np.int32))
        for _ in range(max_new_tokens):
            generator.generate_next_token()
            yield generator.get_next_tokens().astype(np.int64)

    def logits(self, input_ids: np.ndarray) -> np.ndarray:
        """Every position's logits from the same edited graph in a plain session (see above)."""
        from gpt2bench.backends.onnx_export import past_names

        ids = np.ascontiguousarray(input_ids, dtype=np.int64)
        batch, seq = ids.shape
        empty = np.zeros((batch, self.n_head, 0, self.head_dim), dtype=np.float32)
        feed = {
            "input_ids": ids,
            "attention_mask": np.ones((batch, seq), dtype=np.int64),
            "position_ids": np.broadcast_to(np.arange(seq, dtype=np.int64), (batch, seq)).copy(),
            **dict.fromkeys(past_names(self.n_layer), empty),
        }
        feed["logits_positions"] = np.arange(seq, dtype=np.int64)
        return self.session.run(["logits"], feed)[0].astype(np.float32, copy=False)

    def describe(self) -> dict[str, Any]:
        return {"genai": metadata.version("onnxruntime-genai"), "source": self.source, "eos_id": self.vocab}

    def close(self) -> None:
        self.model = self.session = None
        if getattr(self, "_folder", None):
            self._folder.cleanup()


def genai_config(config: dict[str, Any], threads: int) -> dict[str, Any]:
    """GenAI's config for our export of a GPT-2 with `config`: the generic decoder, our input and
    output names, one more vocabulary id for the never-chosen EOS column."""
    heads, width = int(config["n_head"]), int(config["n_embd"])
    vocab = int(config["vocab_size"])
    decoder = {
        "filename": "model.onnx",
        "session_options": {"intra_op_num_threads": threads, "inter_op_num_threads": 1, "log_id": "gpt2bench"},
        "head_size": width // heads,
        "hidden_size": width,
        "num_attention_heads": heads,
        "num_key_value_heads": heads,
        "num_hidden_layers": int(config["n_layer"]),
        "inputs": {
            "input_ids": "input_ids",
            "attention_mask": "attention_mask",
            "position_ids": "position_ids",
            "past_key_names": "past_key_values.%d.key",
            "past_value_names": "past_key_values.%d.value",
        },
        "outputs": {
            "logits": "logits",
            "present_key_names": "present.%d.key",
            "present_value_names": "present.%d.value",
        },
    }
    model = {"type": "llama", "vocab_size": vocab + 1, "context_length": int(config["n_positions"]),
             "bos_token_id": vocab - 1, "eos_token_id": vocab, "pad_token_id": vocab, "decoder": decoder}  # fmt: skip
    # past_present_share_buffer off: our graph concatenates past and new keys itself.
    search = {
        "max_length": int(config["n_positions"]),
        "do_sample": False,
        "num_beams": 1,
        "past_present_share_buffer": False,
    }
    return {"model": model, "search": search}


def _edit_for_genai(source: Path, out: Path, model: ModelRef) -> dict[str, Any]:
    """The source graph with logits_positions fixed to [-1] and a never-chosen logits column."""
    import onnx
    from onnx import helper, numpy_helper

    graph_model = onnx.load(str(source))
    graph = graph_model.graph
    # A constant, not an input with a default: then ONNX Runtime infers the logits' length (1), and
    # GenAI allocates them so (with the input left dynamic it allocated every prompt position and
    # the run failed on the shape).
    (positions,) = [i for i in graph.input if i.name == "logits_positions"]
    graph.input.remove(positions)
    graph.initializer.append(numpy_helper.from_array(np.array([-1], dtype=np.int64), "logits_positions"))
    (logits,) = [o for o in graph.output if o.name == "logits"]
    for node in graph.node:
        node.output[:] = ["logits_real" if name == "logits" else name for name in node.output]
    graph.initializer.append(numpy_helper.from_array(np.array([0, 0, 0, 0, 0, 1], dtype=np.int64), "eos_pad"))
    graph.initializer.append(numpy_helper.from_array(np.array(NEVER, dtype=np.float32), "eos_logit"))
    graph.node.append(helper.make_node("Pad", ["logits_real", "eos_pad", "eos_logit"], ["logits"], mode="constant"))
    logits.type.tensor_type.shape.dim[2].dim_value = int(model.config()["vocab_size"]) + 1
    onnx.save(graph_model, str(out / "model.onnx"))
    return {"eos_column": int(model.config()["vocab_size"])}


@register(
    "onnx-genai",
    imports=("onnxruntime_genai",),
    description="ONNX Runtime GenAI's C++ decode loop on the onnx graph",
    requires=REQUIRES,
    options=("rebuild", "ort_opt_level"),
    kv_reads="concat",
)
class OnnxGenAiBackend(_GenAiBackend):
    source = "onnx"


@register(
    "onnx-genai-int8",
    imports=("onnxruntime_genai",),
    description="ONNX Runtime GenAI's C++ decode loop on the onnx-int8 graph",
    requires=REQUIRES,
    options=("rebuild", "ort_opt_level", "weight_type", "per_channel"),
    weight_bytes=1,
    compute_dtype="int8",
    kv_reads="concat",
)
class OnnxGenAiInt8Backend(_GenAiBackend):
    source = "onnx-int8"
