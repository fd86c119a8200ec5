import json

import pytest

from conftest import TINY
from gpt2bench.core.errors import BenchError
from gpt2bench.models.ref import MARKER, weights_hash
from gpt2bench.models.resolve import build_random_model, resolve_model


def test_local_random_model_is_recorded_as_random(tiny_model, tiny_model_dir):
    assert tiny_model.weights == "random"
    assert tiny_model.path == tiny_model_dir.resolve()
    assert len(tiny_model.weights_hash) == 16
    assert (tiny_model_dir / "tokenizer.json").is_file()  # a complete, self-contained HF folder


def test_weights_hash_is_stable_and_seed_sensitive(tiny_model, tiny_model_dir, tmp_path):
    assert weights_hash(tiny_model_dir) == tiny_model.weights_hash
    other = build_random_model(tmp_path / "seed1", seed=1, **TINY)
    assert weights_hash(other) != tiny_model.weights_hash
    again = build_random_model(tmp_path / "seed0", seed=0, **TINY)
    assert weights_hash(again) == tiny_model.weights_hash  # seeded: the same weights every build


def test_folder_without_marker_is_pretrained(tiny_model_dir, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(tiny_model_dir, copy)
    (copy / MARKER).unlink()
    assert resolve_model(str(copy)).weights == "pretrained"


def test_default_model_falls_back_to_random_when_offline(monkeypatch, isolated_cache):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    ref = resolve_model(None)
    assert ref.reference == "random" and ref.weights == "random"
    assert "gpt2" in ref.fallback_reason and "cannot be reached" in ref.fallback_reason
    config = ref.config()
    assert (config["n_layer"], config["n_head"], config["n_embd"], config["vocab_size"]) == (12, 12, 768, 50257)
    marker = json.loads((ref.path / MARKER).read_text())
    assert marker["weights"] == "random" and marker["seed"] == 0
    # Built once, then reused: the cached folder is returned unchanged.
    mtime = (ref.path / "model.safetensors").stat().st_mtime_ns
    assert resolve_model("random").path == ref.path
    assert (ref.path / "model.safetensors").stat().st_mtime_ns == mtime


def test_named_model_that_cannot_load_fails_clearly(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(BenchError, match="does not exist"):
        resolve_model(str(tmp_path / "no" / "such" / "dir"))
    with pytest.raises(BenchError, match="no-such-org/no-such-model"):
        resolve_model("no-such-org/no-such-model")
    (tmp_path / "empty").mkdir()
    with pytest.raises(BenchError, match=r"no config\.json"):
        resolve_model(str(tmp_path / "empty"))
    (tmp_path / "empty" / "config.json").write_text("{}")
    with pytest.raises(BenchError, match="has no weights"):
        resolve_model(str(tmp_path / "empty"))


def test_every_recipe_field_names_its_own_cached_model():
    from dataclasses import fields, replace

    from gpt2bench.models.tiny import TinyRecipe

    base = TinyRecipe()
    for field in fields(TinyRecipe):
        value = getattr(base, field.name)
        changed = replace(base, **{field.name: value + 1 if isinstance(value, int) else value / 3})
        assert changed.name() != base.name(), f"{field.name} is not in the cache name"
