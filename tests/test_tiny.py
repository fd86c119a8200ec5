import numpy as np
import torch

from gpt2bench.models.ref import weights_hash
from gpt2bench.models.tiny import RARE_IDS, TinyRecipe, train, training_ids

RECIPE = TinyRecipe(n_layer=1, n_head=2, n_embd=32, n_positions=32, seq_len=32, batch_size=1, steps=3)


def test_unseen_ids_score_like_the_rarest_seen_ones_and_training_is_deterministic(tmp_path):
    from safetensors.torch import load_file

    train(RECIPE, tmp_path / "a")
    train(RECIPE, tmp_path / "b")
    assert weights_hash(tmp_path / "a") == weights_hash(tmp_path / "b")

    wte = load_file(tmp_path / "a" / "model.safetensors")["transformer.wte.weight"]
    counts = np.bincount(training_ids(), minlength=wte.shape[0])
    seen = np.flatnonzero(counts)
    unseen = torch.from_numpy(counts == 0)
    assert 10_000 < len(seen) < 20_000 and unseen.sum() > 30_000
    rarest = seen[np.argsort(counts[seen], kind="stable")[:RARE_IDS]]
    assert torch.equal(wte[unseen], wte[rarest].mean(0).expand(int(unseen.sum()), -1))
    # Seen ids were trained apart: their rows are not that shared vector.
    assert not torch.allclose(wte[seen[:50]], wte[unseen][0].expand(50, -1))
