"""RoPE scaling equals HF transformers' (frequencies, cos/sin, whole-model logits); cached decoding equals a
full forward under every scaling type; the HF converter maps weights both ways."""

import pytest
import torch

pytest.importorskip("transformers")
from transformers import LlamaConfig, PhiConfig, Qwen3Config, Qwen3ForCausalLM  # noqa: E402
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS  # noqa: E402
from transformers.models.phi.modeling_phi import PhiRotaryEmbedding  # noqa: E402
from transformers.models.qwen3.modeling_qwen3 import Qwen3RotaryEmbedding, apply_rotary_pos_emb  # noqa: E402

from gatedattn import GatedAttnError, GatedLM, KVCache, load_config  # noqa: E402
from gatedattn.modeling.hf_convert import from_hf, from_hf_config, hf_family, hf_name, to_hf  # noqa: E402
from gatedattn.modeling.rope import RotaryEmbedding, apply_rotary, inv_freq_and_scaling  # noqa: E402

ORIGINAL = 32  # the "trained" context of the tiny test models; sequences below go past it
SCALINGS = {
    "default": None,
    "linear": {"rope_type": "linear", "factor": 4.0},
    "dynamic": {"rope_type": "dynamic", "factor": 4.0},
    "yarn": {"rope_type": "yarn", "factor": 4.0},
    "yarn-mscale": {"rope_type": "yarn", "factor": 8.0, "beta_fast": 16, "beta_slow": 2, "mscale": 0.707,
                    "mscale_all_dim": 1.0},
    "yarn-attention-factor": {"rope_type": "yarn", "factor": 16.0, "attention_factor": 1.25, "truncate": False},
    "llama3": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0},
}
# Ours against HF in float64: HF's RMSNorm computes in float32 whatever the input's dtype, ours in the
# input's, so whole models agree to ~1e-7 rather than bitwise (a RoPE error is orders of magnitude larger).
HF_TOL = {"rtol": 1e-6, "atol": 1e-6}
# (head_dim, original context): the tiny test models', and a real model's where YaRN's ramp and Llama-3's
# bands fall inside the spectrum.
SHAPES = {"tiny": (16, ORIGINAL), "real": (128, 4096)}


def _scaling(name, original=ORIGINAL):
    s = SCALINGS[name]
    if s is None or s["rope_type"] in ("linear", "dynamic"):
        return s
    return {**s, "original_max_position_embeddings": original}


def _ours(scaling, partial=1.0, theta=10000.0, head_dim=16, original=ORIGINAL, **model):
    overrides = {"model.rope.scaling": scaling, "model.rope.partial_rotary_factor": partial,
                 "model.rope.theta": theta, "model.max_position_embeddings": original,
                 "model.attention.head_dim": head_dim, "data.seq_len": original}
    return load_config("tiny", {**overrides, **{f"model.{k}": v for k, v in model.items()}}).model


def _hf_rope(scaling, partial, theta):
    """HF rope_parameters written out by hand (not through our converter); partial_rotary_factor always
    given, since PhiConfig defaults it to 0.5."""
    return {"rope_type": "default", "rope_theta": theta, "partial_rotary_factor": partial, **(scaling or {})}


@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize("theta", [10000.0, 1e6])
@pytest.mark.parametrize("partial", [1.0, 0.5])
@pytest.mark.parametrize("name", list(SCALINGS))
def test_frequencies_and_attention_scaling_equal_hf_init_functions(name, partial, theta, shape):
    head_dim, original = SHAPES[shape]
    scaling = _scaling(name, original)
    cfg = _ours(scaling, partial, theta, head_dim, original)
    hf_cfg = PhiConfig(hidden_size=4 * head_dim, num_attention_heads=4, max_position_embeddings=original,
                       rope_parameters=_hf_rope(scaling, partial, theta))
    lengths = [None, original // 2, 3 * original] if name == "dynamic" else [None]
    for length in lengths:
        ours, ours_scale = inv_freq_and_scaling(cfg, length)
        if scaling is None:
            ref, ref_scale = PhiRotaryEmbedding.compute_default_rope_parameters(hf_cfg)
        else:  # HF's forward passes the current length as a tensor
            ref, ref_scale = ROPE_INIT_FUNCTIONS[scaling["rope_type"]](
                hf_cfg, None, seq_len=None if length is None else torch.tensor(length))
        assert ours.shape == (int(head_dim * partial) // 2,)
        torch.testing.assert_close(ours, ref.float(), rtol=1e-6, atol=0)
        assert ours_scale == pytest.approx(float(ref_scale), rel=1e-12)
    if name == "dynamic":  # the stretch starts past the original context only
        plain = inv_freq_and_scaling(_ours(None, partial, theta, head_dim, original))[0]
        assert torch.equal(inv_freq_and_scaling(cfg, original // 2)[0], plain)
        assert not torch.equal(inv_freq_and_scaling(cfg, 3 * original)[0], plain)


@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize("partial", [1.0, 0.5])
@pytest.mark.parametrize("name", list(SCALINGS))
def test_cos_sin_equal_hf_rotary_embedding(name, partial, shape):
    head_dim, original = SHAPES[shape]
    scaling = _scaling(name, original)
    rope = RotaryEmbedding(_ours(scaling, partial, 10000.0, head_dim, original))
    positions = torch.arange(0, 3 * original, max(1, original // 64))
    x = torch.zeros(1, dtype=torch.float64)
    families = [(PhiConfig, PhiRotaryEmbedding, dict(hidden_size=4 * head_dim, num_attention_heads=4))]
    if partial == 1.0:  # Qwen3's rotary ignores partial_rotary_factor
        families.append((Qwen3Config, Qwen3RotaryEmbedding, dict(hidden_size=64, num_attention_heads=4,
                                                                  num_key_value_heads=2, head_dim=head_dim)))
    for config_cls, rotary_cls, dims in families:
        hf = rotary_cls(config_cls(max_position_embeddings=original,
                                   rope_parameters=_hf_rope(scaling, partial, 10000.0), **dims))
        cos_ref, sin_ref = hf(x, positions[None])
        cos, sin = rope(positions, torch.float64)
        assert cos.shape == (len(positions), int(head_dim * partial))
        torch.testing.assert_close(cos, cos_ref[0], rtol=0, atol=1e-6)
        torch.testing.assert_close(sin, sin_ref[0], rtol=0, atol=1e-6)


def test_partial_rotary_application_equals_hf():
    cfg = _ours(None, 0.5)
    cos, sin = RotaryEmbedding(cfg)(torch.arange(9), torch.float64)
    q = torch.randn(2, 9, 4, 16, dtype=torch.float64)  # B, T, heads, head_dim
    ours = apply_rotary(q, cos, sin)
    q_hf = q.transpose(1, 2)  # HF: (B, heads, T, head_dim); only the first rotary_dim channels rotate
    rot, _ = apply_rotary_pos_emb(q_hf[..., :8], q_hf[..., :8], cos[None], sin[None])
    ref = torch.cat([rot, q_hf[..., 8:]], -1).transpose(1, 2)
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-12)
    assert torch.equal(ours[..., 8:], q[..., 8:])


def test_frequencies_keep_float32_when_the_model_is_cast():
    model = GatedLM(_ours(_scaling("yarn"))).to(torch.bfloat16)
    assert model.rotary.inv_freq.dtype == torch.float32
    cos, _ = model.rotary(torch.arange(500, 510), torch.bfloat16)
    ref, _ = RotaryEmbedding(_ours(_scaling("yarn")))(torch.arange(500, 510), torch.float32)
    assert torch.equal(cos, ref.to(torch.bfloat16))


# -- KV cache: decoding equals a full forward under every scaling ------------------------------------------

@pytest.mark.parametrize("extra", [{}, {"attention.gate.position": "g1", "rope.partial_rotary_factor": 0.5}],
                         ids=["baseline", "g1-partial"])
@pytest.mark.parametrize("name", list(SCALINGS))
def test_cached_decoding_equals_full_forward(name, extra):
    cfg = load_config("tiny", {"model.rope.scaling": _scaling(name), "model.max_position_embeddings": ORIGINAL,
                               "data.seq_len": ORIGINAL, **{f"model.{k}": v for k, v in extra.items()}}).model
    model = GatedLM(cfg).double().eval()
    x = torch.randint(0, 256, (2, 3 * ORIGINAL))  # well past the original context
    full = model(x).logits
    cache = KVCache(cfg.num_layers, rope_seq_len=x.shape[1])  # the total length, declared up front
    parts = [model(x[:, :40], past_key_values=cache).logits]
    for t in range(40, x.shape[1]):  # then one token at a time
        parts.append(model(x[:, t:t + 1], past_key_values=cache).logits)
    torch.testing.assert_close(torch.cat(parts, 1), full, rtol=1e-9, atol=1e-9)


def test_dynamic_cache_pins_its_length_at_the_first_call():
    cfg = _ours(_scaling("dynamic"))
    model = GatedLM(cfg).double().eval()
    x = torch.randint(0, 256, (1, 80))
    cache = KVCache(cfg.num_layers)
    model(x[:, :50], past_key_values=cache)
    assert cache.rope_seq_len == 50
    last = model(x[:, 50:], past_key_values=cache).logits
    # Every position rotated with the frequencies for length 50: the same as a cache declared at 50.
    declared = KVCache(cfg.num_layers, rope_seq_len=50)
    ref = model(x, past_key_values=declared).logits[:, 50:]
    torch.testing.assert_close(last, ref, rtol=1e-9, atol=1e-9)
    assert not torch.allclose(last, model(x).logits[:, 50:])  # a full forward at 80 stretches further


# -- whole model: GatedLM == HF Qwen3 with copied weights --------------------------------------------------

@pytest.mark.parametrize("tied", [True, False])
@pytest.mark.parametrize("name", list(SCALINGS))
def test_logits_equal_hf_qwen3_with_copied_weights(name, tied):
    scaling = _scaling(name)
    hf = Qwen3ForCausalLM(Qwen3Config(
        vocab_size=_ours(scaling).vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2, head_dim=16, max_position_embeddings=ORIGINAL, rms_norm_eps=1e-6,
        tie_word_embeddings=tied, rope_parameters=_hf_rope(scaling, 1.0, 10000.0))).double().eval()
    with torch.no_grad():
        for p in hf.parameters():  # norms away from 1, so every weight matters
            p.add_(0.05 * torch.randn_like(p))
    ours = GatedLM(_ours(scaling, tie_embeddings=tied)).double().eval()
    hf_state = hf.state_dict()
    ours.load_state_dict({n: hf_state[hf_name(n)] for n in ours.state_dict()})
    x = torch.randint(0, 256, (2, 3 * ORIGINAL))
    with torch.no_grad():
        ref = hf(x).logits
    full = ours(x).logits
    torch.testing.assert_close(full, ref, **HF_TOL)
    cache = KVCache(2, rope_seq_len=x.shape[1])
    cached = [ours(x[:, :50], past_key_values=cache).logits]
    cached += [ours(x[:, t:t + 1], past_key_values=cache).logits for t in range(50, x.shape[1])]
    torch.testing.assert_close(torch.cat(cached, 1), full, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("attention", [{"qk_norm": True}, {"qk_norm": False},
                                       {"qk_norm": False, "qkv_bias": True}], ids=["qwen3", "llama", "qwen2"])
def test_converter_round_trip_keeps_logits(attention):
    cfg = _ours(_scaling("yarn"), tie_embeddings=False, **{f"attention.{k}": v for k, v in attention.items()})
    model = GatedLM(cfg).double().eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    hf = to_hf(model)
    assert type(hf).__name__.lower().startswith(hf_family(cfg))
    x = torch.randint(0, 256, (2, 50))
    with torch.no_grad():
        torch.testing.assert_close(hf(x).logits, model(x).logits, **HF_TOL)
    back = from_hf(hf)
    assert back.config == cfg
    assert all(torch.equal(a, b) for a, b in zip(back.state_dict().values(), model.state_dict().values()))


def test_converter_refuses_what_hf_cannot_compute():
    with pytest.raises(GatedAttnError, match="attention.gate.position='g1'.*allowed"):
        hf_family(_ours(None, **{"attention.gate.position": "g1"}))
    with pytest.raises(GatedAttnError, match="o_proj bias"):
        from_hf_config(LlamaConfig(attention_bias=True))
