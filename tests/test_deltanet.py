"""Gated DeltaNet layers and hybrid layer patterns: the chunked form = the recurrent form = a naive loop of
the textbook update, chunk-size invariance, causality, cached decoding, bad patterns."""

import pytest
import torch
import torch.nn.functional as F

from gatedattn import GatedLM, KVCache, load_config
from gatedattn.cli.main import main
from gatedattn.config import resolve_layer_types
from gatedattn.errors import ConfigError
from gatedattn.modeling.deltanet import chunk_gated_delta_rule, recurrent_gated_delta_rule


def naive_gated_delta_rule(q, k, v, g, beta):
    """The textbook form, one (batch, head) at a time: S_t = a_t (I - beta_t k_t k_t^T) S_{t-1} +
    beta_t k_t v_t^T, o_t = S_t^T q_t."""
    B, T, H, Dk = k.shape
    out = torch.zeros(B, T, H, v.shape[-1], dtype=q.dtype)
    states = torch.zeros(B, H, Dk, v.shape[-1], dtype=q.dtype)
    eye = torch.eye(Dk, dtype=q.dtype)
    for b in range(B):
        for h in range(H):
            S = torch.zeros(Dk, v.shape[-1], dtype=q.dtype)
            for t in range(T):
                kt, bt = k[b, t, h], beta[b, t, h]
                S = torch.exp(g[b, t, h]) * (eye - bt * torch.outer(kt, kt)) @ S + bt * torch.outer(kt, v[b, t, h])
                out[b, t, h] = S.T @ q[b, t, h]
            states[b, h] = S
    return out, states


def random_inputs(B=2, T=23, H=3, Dk=8, Dv=5):
    q = torch.randn(B, T, H, Dk, dtype=torch.float64)
    k = F.normalize(torch.randn(B, T, H, Dk, dtype=torch.float64), dim=-1)
    v = torch.randn(B, T, H, Dv, dtype=torch.float64)
    g = -torch.rand(B, T, H, dtype=torch.float64) * 2
    beta = torch.rand(B, T, H, dtype=torch.float64)
    return q, k, v, g, beta


@pytest.mark.parametrize("chunk_size", [1, 4, 7, 23, 64])  # divides T = 23 or not, shorter and longer
def test_chunked_equals_recurrent_equals_naive_fp64(chunk_size):
    q, k, v, g, beta = random_inputs()
    o_ref, s_ref = naive_gated_delta_rule(q, k, v, g, beta)
    o_rec, s_rec = recurrent_gated_delta_rule(q, k, v, g, beta)
    o_chk, s_chk = chunk_gated_delta_rule(q, k, v, g, beta, chunk_size)
    for o, s in ((o_rec, s_rec), (o_chk, s_chk)):
        torch.testing.assert_close(o, o_ref, rtol=0, atol=1e-12)
        torch.testing.assert_close(s, s_ref, rtol=0, atol=1e-12)


def test_chunked_gradients_equal_recurrent_gradients_fp64():
    inputs = [x.requires_grad_() for x in random_inputs(T=13)]
    weight = torch.randn(2, 13, 3, 5, dtype=torch.float64)
    grads = []
    for fn in (recurrent_gated_delta_rule, lambda *xs: chunk_gated_delta_rule(*xs, chunk_size=4)):
        o, s = fn(*inputs)
        grads.append(torch.autograd.grad((o * weight).sum() + s.sum(), inputs))
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-11)


def test_chunked_continues_from_a_state():
    q, k, v, g, beta = random_inputs(T=30)
    o_ref, s_ref = naive_gated_delta_rule(q, k, v, g, beta)
    o1, s1 = chunk_gated_delta_rule(*(x[:, :11] for x in (q, k, v, g, beta)), 4)
    o2, s2 = chunk_gated_delta_rule(*(x[:, 11:] for x in (q, k, v, g, beta)), 8, state=s1)
    torch.testing.assert_close(torch.cat([o1, o2], 1), o_ref, rtol=0, atol=1e-12)
    torch.testing.assert_close(s2, s_ref, rtol=0, atol=1e-12)


def hybrid(**overrides) -> GatedLM:
    cfg = load_config("qwen3-next-tiny", {"model.num_layers": 4, "model.layer_types": "full_attention_every_2",
                                          **overrides})
    return GatedLM(cfg.model).double().eval()


def test_model_is_chunk_size_invariant():
    ids = torch.randint(0, 257, (2, 19))
    ref = hybrid(**{"model.linear_attention.chunk_size": 64})
    want = ref(ids).logits
    for size in (1, 5, 19):  # 5 does not divide 19
        model = hybrid(**{"model.linear_attention.chunk_size": size})
        model.load_state_dict(ref.state_dict())
        torch.testing.assert_close(model(ids).logits, want, rtol=0, atol=1e-10)


def test_hybrid_is_causal():
    model = hybrid()
    ids = torch.randint(0, 257, (1, 24))
    changed = ids.clone()
    changed[0, 15:] = (changed[0, 15:] + 1) % 257
    torch.testing.assert_close(model(changed).logits[:, :15], model(ids).logits[:, :15], rtol=0, atol=1e-12)
    assert not torch.allclose(model(changed).logits[:, 15:], model(ids).logits[:, 15:])


@pytest.mark.parametrize("prefill", [2, 9])  # shorter than the convolution's memory, and longer
def test_cached_decoding_equals_full_forward(prefill):
    model = hybrid(**{"model.linear_attention.chunk_size": 4, "model.linear_attention.num_key_heads": 1})
    ids = torch.randint(0, 257, (2, 17))
    want = model(ids).logits
    cache = KVCache(len(model.layers))
    got = [model(ids[:, :prefill], past_key_values=cache).logits]
    got.append(model(ids[:, prefill:prefill + 3], past_key_values=cache).logits)  # a chunked step mid-way
    for t in range(prefill + 3, 17):
        got.append(model(ids[:, t:t + 1], past_key_values=cache).logits)
    torch.testing.assert_close(torch.cat(got, 1), want, rtol=0, atol=1e-10)
    assert cache.length == 17


def test_generate_on_the_preset_matches_greedy_full_forward():
    model = GatedLM(load_config("qwen3-next-tiny").model).double().eval()
    ids = torch.randint(0, 257, (1, 6))
    out = model.generate(ids, max_new_tokens=5)
    with torch.no_grad():
        for t in range(6, 11):
            assert out[0, t] == model(out[:, :t]).logits[0, -1].argmax()


def test_layer_type_rules():
    assert resolve_layer_types("full_attention_every_4", 8) == ["linear_attention"] * 3 + ["full_attention"] + \
        ["linear_attention"] * 3 + ["full_attention"]
    assert resolve_layer_types("linear_attention", 2) == ["linear_attention"] * 2
    assert resolve_layer_types(["full_attention", "linear_attention"], 2) == ["full_attention", "linear_attention"]


@pytest.mark.parametrize("pattern, message", [
    ("every_4", "is not a layer pattern"), ("full_attention_every_0", "is not a layer pattern"),
    ("[full_attention]", "lists 1 layers but model.num_layers=2"), ("[full_attention,mamba]", "has 'mamba'"),
    ("3", "is not a layer pattern")])
def test_bad_layer_patterns_are_one_line_exit_2(pattern, message, capsys):
    with pytest.raises(ConfigError, match=message):
        load_config("tiny", {"model.layer_types": __import__("yaml").safe_load(pattern)})
    assert main(["info", "tiny", "--set", f"model.layer_types={pattern}"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err and "full_attention_every_N" in err


def test_bad_linear_heads_are_one_line():
    with pytest.raises(ConfigError, match="num_value_heads .3. must be a multiple of num_key_heads .2."):
        load_config("qwen3-next-tiny", {"model.linear_attention.num_value_heads": 3})


def test_hybrid_trains_every_parameter():
    model = GatedLM(load_config("qwen3-next-tiny").model).train()
    ids = torch.randint(0, 257, (2, 70))  # longer than one chunk of 64
    model(ids, labels=ids).loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing and float(model.layers[0].linear_attn.A_log.grad.abs().sum()) > 0
