"""A small GPT-2 that has learned something, so quality numbers mean something without the Hub.

Random weights give near-uniform logits, where any rounding error flips greedy ties; a trained
model has confident predictions, so agreement and perplexity measure real degradation. This
trains a narrow GPT-2 (the real tokenizer and vocabulary, 512 positions) on the second half of the
bundled WikiText-2 test text, deterministically (seeded data order and init), and caches it. The
default perplexity windows come from the start of the same file, so they are text the model did
not train on.

Training computes the softmax over the ~14k token ids the training text contains, not all 50,257:
the output layer is most of the cost of a model this narrow, so that is 4-6x more tokens per
second. Afterwards every id the text never showed gets the mean embedding of the rarest ids it did
show, so unseen tokens score like rare ones instead of keeping random logits. Measured here on
held-out text: the full-vocabulary recipe reached perplexity ~2,200 in 35 s (greedy: "the the
the ..."), this one ~900-1,000 in 60-130 s, with greedy text that varies.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from gpt2bench.core.fsutil import publish_folder
from gpt2bench.core.paths import DEFAULT_TEXT, TOKENIZER_DIR, cache_dir
from gpt2bench.core.progress import Phase, phase
from gpt2bench.models.ref import MARKER, copy_tokenizer, load_tokenizer

TRAIN_FROM = 0.5  # fraction of the text's characters where the training part begins
TRAINING_VERSION = 2  # in the cache name: a change of method retrains cached models
RARE_IDS = 1000  # unseen ids take the mean embedding of this many rarest seen ids


@dataclass(frozen=True)
class TinyRecipe:
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    n_positions: int = 512  # == seq_len: every position the model offers gets trained
    steps: int = 300
    batch_size: int = 2
    seq_len: int = 512
    lr: float = 5e-3
    seed: int = 0

    def name(self) -> str:
        """The cache folder's name: every field is in it, so no recipe is served another's model."""
        shape = f"{self.n_layer}l{self.n_head}h{self.n_embd}w{self.n_positions}p"
        run = f"{self.steps}x{self.batch_size}x{self.seq_len}-lr{self.lr:g}-seed{self.seed}"
        return f"tiny-v{TRAINING_VERSION}-{shape}-{run}"


def training_ids() -> np.ndarray:
    text = DEFAULT_TEXT.read_text(encoding="utf-8")
    return np.asarray(load_tokenizer().encode(text[int(len(text) * TRAIN_FROM) :]).ids, dtype=np.int64)


def train(recipe: TinyRecipe, out: Path) -> dict[str, Any]:
    """Train and save a complete Hugging Face folder at `out` (written beside it, then renamed)."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(recipe.seed)
    config = GPT2Config.from_pretrained(
        TOKENIZER_DIR,
        n_layer=recipe.n_layer,
        n_head=recipe.n_head,
        n_embd=recipe.n_embd,
        n_positions=recipe.n_positions,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
    )
    model = GPT2LMHeadModel(config).train()
    ids = torch.from_numpy(training_ids())
    seen = torch.unique(ids)  # sorted: the restricted softmax's classes
    t0 = time.perf_counter()
    with phase(f"training the tiny model {recipe.name()} (once, cached)", total=recipe.steps) as progress:
        losses = _train_steps(model, ids, seen, recipe, progress)
    _fill_unseen(model, ids, seen, config.vocab_size)
    stats = {
        "train_s": time.perf_counter() - t0,
        "final_loss": float(np.mean(losses[-10:])),  # over the seen ids' softmax
        "train_tokens": recipe.steps * recipe.batch_size * recipe.seq_len,
    }
    _save(model, recipe, stats, out)
    return stats


def _train_steps(model: Any, ids: Any, seen: Any, recipe: TinyRecipe, progress: Phase) -> list[float]:
    """AdamW with linear warm-up and cosine decay to 10%, the softmax over the `seen` ids only."""
    import torch

    rng = np.random.default_rng(recipe.seed)
    opt = torch.optim.AdamW(model.parameters(), lr=recipe.lr, betas=(0.9, 0.95), weight_decay=0.1)
    warmup = max(1, recipe.steps // 10)
    losses = []
    for step in range(recipe.steps):
        # Linear warm-up, then cosine decay to 10%.
        frac = (
            (step + 1) / warmup
            if step < warmup
            else 0.1 + 0.45 * (1 + math.cos(math.pi * (step - warmup) / (recipe.steps - warmup)))
        )
        for group in opt.param_groups:
            group["lr"] = recipe.lr * frac
        starts = rng.integers(0, len(ids) - recipe.seq_len - 1, recipe.batch_size)
        batch = torch.stack([ids[s : s + recipe.seq_len + 1] for s in starts])
        hidden = model.transformer(input_ids=batch[:, :-1]).last_hidden_state
        logits = hidden @ model.lm_head.weight[seen].T  # lm_head is tied to wte
        targets = torch.searchsorted(seen, batch[:, 1:].contiguous())
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, len(seen)), targets.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(loss.item())
        progress.step(step + 1, detail=f"loss {losses[-1]:.2f}")
    return losses


def _fill_unseen(model: Any, ids: Any, seen: Any, vocab_size: int) -> None:
    """Every id the text never showed gets the mean embedding of the rarest ids it did show."""
    import torch

    with torch.no_grad():
        counts = torch.bincount(ids, minlength=vocab_size)
        rarest = seen[torch.argsort(counts[seen], stable=True)[:RARE_IDS]]  # stable: ties in a fixed order
        unseen = counts == 0
        model.transformer.wte.weight[unseen] = model.transformer.wte.weight[rarest].mean(0)


def _save(model: Any, recipe: TinyRecipe, stats: dict[str, Any], out: Path) -> None:
    def build(tmp: Path) -> None:
        model.eval().save_pretrained(tmp, safe_serialization=True)
        copy_tokenizer(tmp)
        marker = {
            "weights": "trained-tiny",
            "recipe": asdict(recipe),
            **stats,
            "data": f"{DEFAULT_TEXT.name} from {TRAIN_FROM:.0%} of its characters",
        }
        (tmp / MARKER).write_text(json.dumps(marker, indent=1))

    # Training is deterministic, so a rival's finished folder holds the same weights as ours.
    publish_folder(out, build, finished=lambda folder: (folder / MARKER).is_file(), replace=True)


def tiny_model_dir(recipe: TinyRecipe = TinyRecipe(), rebuild: bool = False) -> Path:
    """The cached trained model for `recipe`, trained first when missing."""
    out = cache_dir() / "models" / recipe.name()
    if rebuild or not (out / MARKER).is_file():
        train(recipe, out)
    return out
