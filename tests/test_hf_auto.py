"""gatedattn.hf: GatedLM behind transformers' Auto classes. Round trips in both directions keep the logits,
HF generate equals GatedLM.generate (greedy, seeded sampling) and HF's own beam search on the equivalent
native Qwen3 / Qwen3-Next, and the cache is a transformers Cache."""

import pytest
import torch
from conftest import tiny_model

pytest.importorskip("transformers")

import gatedattn.hf  # noqa: E402  (registers the Auto classes)
from gatedattn import GatedAttnError, GatedLM, load_model  # noqa: E402
from gatedattn.hf import GatedAttnConfig, GatedAttnForCausalLM  # noqa: E402
from gatedattn.modeling.hf_convert import to_hf  # noqa: E402
from gatedattn.modeling.hf_qwen3_next import to_qwen3_next  # noqa: E402

CONFIGS = {
    "g1-tied": {"attention.gate.position": "g1"},
    "g2-headwise-untied-moe-registers": {
        "attention.gate.position": "g2", "attention.gate.granularity": "headwise", "tie_embeddings": False,
        "moe.num_experts": 4, "moe.top_k": 2, "moe.shared_expert_ffn_dim": 32,
        "attention.num_register_tokens": 2},
}


@pytest.mark.parametrize("overrides", CONFIGS.values(), ids=CONFIGS.keys())
@torch.no_grad()  # one projection path everywhere (with grad, q/k/v run as one fused matmul)
def test_round_trips_through_transformers_keep_the_logits(tmp_path, overrides):
    from transformers import AutoConfig, AutoModelForCausalLM

    ours = tiny_model(**overrides).float()
    x = torch.randint(0, 257, (2, 11))
    expected = ours(x).logits
    ours.save_pretrained(tmp_path / "ours")
    assert isinstance(AutoConfig.from_pretrained(tmp_path / "ours"), GatedAttnConfig)
    hf = AutoModelForCausalLM.from_pretrained(tmp_path / "ours")
    assert isinstance(hf, GatedAttnForCausalLM)
    assert torch.equal(hf(x).logits, expected)
    hf.save_pretrained(tmp_path / "hf")  # HF's format: its keys beside ours, weights under `model.`
    back = GatedLM.from_pretrained(tmp_path / "hf")
    assert back.config == ours.config
    assert torch.equal(back(x).logits, expected)
    loaded = load_model(tmp_path / "hf")
    assert loaded.is_ours and torch.equal(loaded.model(x).logits, expected)
    again = AutoModelForCausalLM.from_pretrained(tmp_path / "hf")
    assert torch.equal(again(x).logits, expected)


def test_the_cache_is_a_transformers_cache_and_cached_steps_equal_the_full_forward():
    from transformers.cache_utils import Cache

    model = tiny_model(**{"attention.gate.position": "g1"})
    hf = GatedAttnForCausalLM.from_gatedlm(model)
    x = torch.randint(0, 257, (2, 9))
    with torch.no_grad():
        out = hf(x[:, :6], use_cache=True)
        assert isinstance(out.cache, Cache) and out.cache.get_seq_length() == 6
        step = hf(x[:, 6:], cache=out.cache, use_cache=True)
        assert out.cache.get_seq_length() == 9
        torch.testing.assert_close(step.logits, model(x).logits[:, 6:], rtol=0, atol=1e-12)


DYNAMIC_NTK = {"rope.scaling": {"rope_type": "dynamic", "factor": 4.0, "original_max_position_embeddings": 4}}


DSA = {"attention.gate.position": "g1", "attention.sparse": {"type": "dsa", "top_k": 3, "indexer_dim": 16}}


@pytest.mark.parametrize("overrides", [{}, {"attention.gate.position": "g1"}, DYNAMIC_NTK, DSA],
                         ids=["ungated", "g1", "dynamic-ntk", "dsa"])  # dynamic NTK: one RoPE length per sequence
def test_hf_greedy_and_seeded_sampling_equal_gatedlm_generate(overrides):
    model = tiny_model(**overrides, initializer_range=0.2)
    hf = GatedAttnForCausalLM.from_gatedlm(model)
    x = torch.randint(0, 257, (2, 5))
    ours = model.generate(x, max_new_tokens=12)
    theirs = hf.generate(x, max_new_tokens=12, do_sample=False, attention_mask=torch.ones_like(x))
    assert torch.equal(theirs, ours)
    torch.manual_seed(7)
    ours = model.generate(x, max_new_tokens=12, do_sample=True, temperature=0.8)
    torch.manual_seed(7)
    theirs = hf.generate(x, max_new_tokens=12, do_sample=True, temperature=0.8, top_k=0, top_p=1.0,
                         attention_mask=torch.ones_like(x))
    assert torch.equal(theirs, ours)
    assert not torch.equal(ours, model.generate(x, max_new_tokens=12))  # sampling changed something


@pytest.mark.parametrize("position", ["none", "g1"])
def test_hf_beam_search_equals_beam_search_on_the_native_model(position):
    """Ungated: transformers' Qwen3 computes the same function; G1 elementwise: its Qwen3-Next."""
    model = tiny_model(**{"attention.gate.position": position, "initializer_range": 0.2})
    native = to_hf(model) if position == "none" else to_qwen3_next(model)
    x = torch.randint(0, 257, (2, 5))
    kwargs = dict(max_new_tokens=10, num_beams=4, num_return_sequences=2, do_sample=False,
                  attention_mask=torch.ones_like(x), pad_token_id=0)
    theirs = native.generate(x, **kwargs)
    ours = GatedAttnForCausalLM.from_gatedlm(model).generate(x, **kwargs)
    assert torch.equal(ours, theirs)
    assert not torch.equal(ours[::2], model.generate(x, max_new_tokens=10))  # beams differ from greedy here


def test_hf_beam_search_of_a_dsa_model_with_its_cache_equals_it_without():
    """The indexer keys sit in the HF cache, so beam search reorders them with the keys and values."""
    hf = GatedAttnForCausalLM.from_gatedlm(tiny_model(**DSA, initializer_range=0.2))
    x = torch.randint(0, 257, (2, 5))
    kwargs = dict(max_new_tokens=10, num_beams=4, num_return_sequences=2, do_sample=False,
                  attention_mask=torch.ones_like(x), pad_token_id=0)
    assert torch.equal(hf.generate(x, **kwargs), hf.generate(x, use_cache=False, **kwargs))


def test_padding_is_refused_with_one_line():
    hf = GatedAttnForCausalLM.from_gatedlm(tiny_model())
    mask = torch.tensor([[0, 1, 1], [1, 1, 1]])
    with pytest.raises(GatedAttnError, match="padding"):
        hf(torch.ones(2, 3, dtype=torch.long), attention_mask=mask)


def test_a_bad_config_value_names_the_key():
    with pytest.raises(GatedAttnError, match="model.attention.gate.position"):
        GatedAttnConfig(attention={"gate": {"position": "g9"}})
