"""Qwen3-Next hybrids against transformers' own Qwen3NextForCausalLM (its pure-torch delta rule and conv):
import a random hybrid (3 Gated DeltaNet layers : 1 gated attention layer, MoE, GQA-style value heads), get
its logits and its cached decoding; export back to the same tensors. transformers runs the delta rule in
float32 whatever the model dtype, so the comparison is in float32 (tolerance 1e-5)."""

import dataclasses

import pytest
import torch

from gatedattn import GatedLM, KVCache, load_model
from gatedattn.cli.main import main

transformers = pytest.importorskip("transformers")
qwen3_next = pytest.importorskip("transformers.models.qwen3_next", reason="transformers lacks qwen3_next")

ATOL = 1e-5


def hf_hybrid():
    cfg = transformers.Qwen3NextConfig(
        vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=4,
        num_key_value_heads=2, head_dim=16, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=16,
        shared_expert_intermediate_size=24, linear_num_key_heads=2, linear_num_value_heads=4,
        linear_key_head_dim=8, linear_value_head_dim=12, linear_conv_kernel_dim=4, tie_word_embeddings=False,
        layer_types=["linear_attention"] * 3 + ["full_attention"])
    torch.manual_seed(0)
    hf = transformers.Qwen3NextForCausalLM(cfg).eval()
    with torch.no_grad():  # every weight off its initial value (norms, dt_bias, A_log included)
        for p in hf.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return hf


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    hf = hf_hybrid()
    folder = tmp_path_factory.mktemp("hybrid")
    hf.save_pretrained(folder / "hf")
    assert main(["-q", "import", str(folder / "hf"), "--out", str(folder / "ours")]) == 0
    return hf, load_model(folder / "ours").model.float(), folder


def with_chunk_size(model: GatedLM, size: int) -> GatedLM:
    cfg = model.config
    other = GatedLM(dataclasses.replace(cfg, linear_attention=dataclasses.replace(cfg.linear_attention,
                                                                                  chunk_size=size)))
    other.load_state_dict(model.state_dict())
    return other.eval()


def test_import_keeps_the_pattern(imported):
    _, ours, _ = imported
    assert ours.config.resolved_layer_types == ["linear_attention"] * 3 + ["full_attention"]
    assert ours.config.linear_attention.num_value_heads == 4 and ours.config.moe.shared_expert_gate


@pytest.mark.parametrize("chunk_size", [64, 16, 7])  # T = 37: chunks longer, shorter and not dividing
def test_imported_hybrid_gives_hf_logits(imported, chunk_size):
    hf, ours, _ = imported
    ids = torch.randint(0, 97, (2, 37))
    with torch.no_grad():
        torch.testing.assert_close(with_chunk_size(ours, chunk_size)(ids).logits, hf(ids).logits, rtol=0,
                                   atol=ATOL)


def test_cached_decoding_equals_hf_cached_decoding(imported):
    hf, ours, _ = imported
    ids = torch.randint(0, 97, (2, 9))
    cache = KVCache(len(ours.layers))
    with torch.no_grad():
        theirs = hf(ids, use_cache=True)
        mine = ours(ids, past_key_values=cache).logits
        torch.testing.assert_close(mine, theirs.logits, rtol=0, atol=ATOL)
        hf_cache = theirs.cache
        for _ in range(6):
            nxt = theirs.logits[:, -1:].argmax(-1)
            theirs = hf(nxt, cache=hf_cache, use_cache=True)
            hf_cache = theirs.cache
            mine = ours(nxt, past_key_values=cache).logits
            torch.testing.assert_close(mine, theirs.logits, rtol=0, atol=ATOL)
    assert torch.equal(ours.generate(ids, max_new_tokens=8), hf.generate(ids, max_new_tokens=8, do_sample=False))


def test_export_gives_back_the_same_tensors(imported, tmp_path):
    hf, _, folder = imported
    assert main(["-q", "export", str(folder / "ours"), "--to", "qwen3-next", "--out", str(tmp_path / "back")]) == 0
    back = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "back", dtype=torch.float32)
    assert back.config.layer_types == hf.config.layer_types
    theirs = hf.state_dict()
    for key, value in back.state_dict().items():
        assert torch.equal(value, theirs[key]), key
