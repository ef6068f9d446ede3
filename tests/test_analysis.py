"""Analysis probes against independent references: explicit softmax, eager attention probabilities, HF
``output_attentions``, planted outliers and gate scores computed directly."""

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from gatedattn import GatedAttnError
from gatedattn.analysis import analyze_model, attention_head_stats, attention_map
from gatedattn.analysis import hf as hf_probes
from conftest import tiny_model

TOL = 1e-5


def explicit_stats(q, k, scale, sink_pos, registers=0, sink_logit=None, window=None):
    """Brute force: the full (T, T) softmax per head, float64; queries after the sink position."""
    B, H, T, _ = q.shape
    kk = k.repeat_interleave(H // k.shape[1], 1)
    s = q.double() @ kk.double().transpose(-1, -2) * scale
    i, j = torch.arange(T)[:, None], torch.arange(T)[None, :]
    ok = (j <= i) & ((j > i - window) if window else True)
    s = s.masked_fill(~ok, float("-inf"))
    if sink_logit is not None:
        s = torch.cat([s, sink_logit.double().view(1, H, 1, 1).expand(B, H, T, 1)], -1)
    p = torch.softmax(s, -1)
    ent = -(p * torch.log(p.clamp_min(1e-300))).sum(-1)
    out = {"first_token_share": [], "entropy": [], "register_share": [], "sink_peer_share": []}
    for b in range(B):
        rows = slice(int(sink_pos[b]) + 1, T)
        out["first_token_share"].append(p[b, :, rows, int(sink_pos[b])])
        out["entropy"].append(ent[b, :, rows])
        out["register_share"].append(p[b, :, rows, :registers].sum(-1))
        out["sink_peer_share"].append(p[b, :, rows, -1])
    return {key: torch.cat(v, -1).mean(-1) for key, v in out.items()}


@pytest.mark.parametrize("heads,kv_heads", [(4, 4), (6, 2)])
@pytest.mark.parametrize("registers,sink,window", [(0, False, None), (3, False, None), (0, True, None),
                                                   (2, True, 5), (0, False, 7)])
@pytest.mark.parametrize("single_block", [0, 64], ids=["chunked", "one block"])
def test_chunked_stats_match_explicit_softmax(heads, kv_heads, registers, sink, window, single_block):
    B, T, D = 2, 45, 8
    q, k = torch.randn(B, heads, T, D, dtype=torch.float64) * 2, torch.randn(B, kv_heads, T, D, dtype=torch.float64) * 2
    sink_logit = torch.randn(heads, dtype=torch.float64) if sink else None
    sink_pos = torch.tensor([registers, registers + 4])  # a different sink position per sequence
    got = attention_head_stats(q, k, 0.3, sink_pos, num_registers=registers, sink_logit=sink_logit,
                               window=window, query_chunk=7, key_chunk=6, single_block=single_block)
    ref = explicit_stats(q, k, 0.3, sink_pos, registers, sink_logit, window)
    keys = ["first_token_share", "entropy"] + (["register_share"] if registers else []) + (
        ["sink_peer_share"] if sink else [])
    assert sorted(got) == sorted(keys + ["queries"])
    for key in keys:
        torch.testing.assert_close(got[key], ref[key], atol=1e-10, rtol=0)
    assert int(got["queries"]) == (T - 1 - registers) + (T - 5 - registers)


def test_one_block_equals_the_chunks_with_selection_groups_and_a_sink():
    B, H, Hk, T, D = 2, 6, 2, 40, 8
    q, k = torch.randn(B, H, T, D, dtype=torch.float64) * 2, torch.randn(B, Hk, T, D, dtype=torch.float64) * 2
    selection = torch.randint(0, T, (B, T, 6))
    selection[..., 0] = 0  # every query may read the sink
    kw = dict(num_registers=2, sink_logit=torch.randn(H, dtype=torch.float64), window=30, selection=selection,
              active_queries=torch.rand(B, T) < 0.3)
    sink_pos = torch.tensor([2, 5])
    block = attention_head_stats(q, k, 0.3, sink_pos, **kw)
    chunked = attention_head_stats(q, k, 0.3, sink_pos, query_chunk=5, key_chunk=7, single_block=0, **kw)
    assert sorted(block) == sorted(chunked)
    for key, value in chunked.items():
        torch.testing.assert_close(block[key], value, atol=1e-12, rtol=0)


def test_attention_map_is_the_top_left_block_of_the_full_softmax():
    q, k = torch.randn(1, 4, 30, 8, dtype=torch.float64), torch.randn(1, 2, 30, 8, dtype=torch.float64)
    sink_logit = torch.randn(4, dtype=torch.float64)
    full = torch.cat([q @ k.repeat_interleave(2, 1).transpose(-1, -2) * 0.5,
                      sink_logit.view(1, 4, 1, 1).expand(1, 4, 30, 1)], -1)
    full[..., :30] = full[..., :30].masked_fill(~torch.ones(30, 30, dtype=torch.bool).tril(), float("-inf"))
    p = torch.softmax(full, -1)[0, :, :10, :10]
    torch.testing.assert_close(attention_map(q, k, 0.5, 10, sink_logit), p, atol=1e-12, rtol=0)


class _MaxNumel(TorchDispatchMode):
    """Records the largest tensor any op allocates (outputs that are views of an input do not count)."""

    def __init__(self):
        super().__init__()
        self.max_numel = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {t.untyped_storage().data_ptr() for t in tree_flatten((args, kwargs))[0]
                  if isinstance(t, torch.Tensor)}
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor) and t.untyped_storage().data_ptr() not in inputs:
                self.max_numel = max(self.max_numel, t.untyped_storage().nbytes() // t.element_size())
        return out


def test_long_input_never_allocates_a_t_by_t_tensor():
    T, H, D = 4096, 2, 16
    q, k = torch.randn(1, H, T, D), torch.randn(1, 1, T, D)
    with _MaxNumel() as mode:
        out = attention_head_stats(q, k, D ** -0.5, torch.zeros(1, dtype=torch.long))  # default chunks
    assert mode.max_numel <= H * 256 * 1024 < T * T // 10  # bounded by the chunk sizes, not by T
    assert torch.isfinite(out["entropy"]).all() and int(out["queries"]) == T - 1
    with _MaxNumel() as mode:  # the detector sees a T x T block when one is made
        attention_head_stats(q[:, :, :300], k[:, :, :300], D ** -0.5, torch.zeros(1, dtype=torch.long),
                             query_chunk=300, key_chunk=300)
    assert mode.max_numel >= 300 * 300


# -- our model, against its eager path's attention probabilities ------------------------------------------

OURS = [{}, {"attention.gate.position": "g1"},
        {"attention.gate.position": "g2", "attention.gate.granularity": "headwise"},
        {"attention.sink": "learned"}, {"attention.sink": "off_by_one", "attention.gate.position": "g1"},
        {"attention.num_register_tokens": 3}, {"attention.num_register_tokens": 2, "attention.sink": "learned"}]


def _eager_probs(model, ids):
    for layer in model.layers:
        layer.attn.implementation = "eager"
    probs = {}
    hooks = [layer.attn.hook_attn_probs.register_forward_hook(lambda m, a, o, i=i: probs.__setitem__(i, o))
             for i, layer in enumerate(model.layers)]
    with torch.no_grad():
        model(ids)
    for h in hooks:
        h.remove()
    return probs


@pytest.mark.parametrize("overrides", OURS, ids=lambda o: ",".join(f"{k.split('.')[-1]}={v}" for k, v in o.items())
                         or "baseline")
def test_gatedlm_stats_match_eager_attention_probs(overrides):
    model = tiny_model(**overrides)
    attn0 = model.layers[0].attn
    if attn0.sink_mode == "learned":
        for layer in model.layers:
            layer.attn.sink_logit.data.normal_(0, 2)
    ids = torch.randint(0, 256, (2, 40))
    r = analyze_model(model, ids, progress=False, query_chunk=6, key_chunk=11, single_block=0, map_layers=[0, -1],
                      map_size=12)
    R = model.num_register_tokens
    for i, p in _eager_probs(model, ids).items():  # p: (B, H, R + T, R + T) without the sink slot
        q = p[:, :, R + 1:]
        assert r["first_token_share_per_head"][i] == pytest.approx(q[..., R].mean((0, 2)).tolist(), abs=TOL)
        peer = 1 - q.sum(-1)  # the virtual sink slot's mass (0 without one)
        ent = -(q * torch.log(q.clamp_min(1e-300))).sum(-1) - peer * torch.log(peer.clamp_min(1e-300))
        assert r["entropy_per_head"][i] == pytest.approx(ent.mean((0, 2)).tolist(), abs=TOL)
        if R:
            assert r["register_share_per_head"][i] == pytest.approx(q[..., :R].sum(-1).mean((0, 2)).tolist(), abs=TOL)
        if attn0.sink_mode != "none":
            assert r["sink_peer_share_per_head"][i] == pytest.approx(peer.mean((0, 2)).tolist(), abs=TOL)
        else:
            assert "sink_peer_share" not in r
        if str(i) in r["attention_maps"]:
            expect = p[:, :, :12, :12].mean((0, 1))
            torch.testing.assert_close(torch.tensor(r["attention_maps"][str(i)], dtype=p.dtype), expect,
                                       atol=TOL, rtol=0)
    assert sorted(r["attention_maps"]) == ["0", "1"]
    assert r["f_attn"] == pytest.approx(sum(r["first_token_share"]) / 2)


def test_sink_at_bos_position():
    model = tiny_model()
    ids = torch.randint(1, 256, (1, 30))
    ids[0, 4] = model.config.bos_token_id
    r = analyze_model(model, ids, sink="bos", progress=False)
    assert r["sink_position"] == [4] and r["queries_per_head"] == 25
    for i, p in _eager_probs(model, ids).items():
        assert r["first_token_share_per_head"][i] == pytest.approx(p[0, :, 5:, 4].mean(-1).tolist(), abs=TOL)
    with pytest.raises(GatedAttnError, match="BOS"):
        analyze_model(model, torch.randint(1, 256, (1, 30)), sink="bos", progress=False)
    with pytest.raises(GatedAttnError, match="allowed: first, bos"):
        analyze_model(model, ids, sink="last", progress=False)


# -- HF transformers models, against output_attentions with eager attention ---------------------------------

def _hf_models():
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM, Qwen3Config, Qwen3ForCausalLM

    common = dict(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=3,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
    return {
        "llama": lambda: LlamaForCausalLM(LlamaConfig(**common)),
        "qwen3-sliding": lambda: Qwen3ForCausalLM(Qwen3Config(**common, head_dim=16, use_sliding_window=True,
                                                               sliding_window=8, max_window_layers=1)),
        "gpt2": lambda: GPT2LMHeadModel(GPT2Config(vocab_size=128, n_embd=64, n_layer=3, n_head=4,
                                                   n_positions=256, bos_token_id=0, eos_token_id=0)),
    }


@pytest.mark.parametrize("family", ["llama", "qwen3-sliding", "gpt2"])
def test_hf_stats_match_output_attentions(family):
    pytest.importorskip("transformers")
    model = _hf_models()[family]().double().eval()
    ids = torch.randint(0, 128, (2, 40))
    model.set_attn_implementation("sdpa")
    r = analyze_model(model, ids, progress=False, query_chunk=7, key_chunk=9, single_block=0, map_layers=[1])
    model.set_attn_implementation("eager")
    r_eager = analyze_model(model, ids, progress=False, map_layers=[1])
    with torch.no_grad():
        out = model(ids, output_attentions=True, use_cache=False)
    for i, p in enumerate(out.attentions):
        q = p[:, :, 1:]
        ent = -(q * torch.log(q.clamp_min(1e-300))).sum(-1)
        for res in (r, r_eager):
            assert res["first_token_share_per_head"][i] == pytest.approx(q[..., 0].mean((0, 2)).tolist(), abs=TOL)
            assert res["entropy_per_head"][i] == pytest.approx(ent.mean((0, 2)).tolist(), abs=TOL)
    expect = out.attentions[1][:, :, :16, :16].mean((0, 1))
    torch.testing.assert_close(torch.tensor(r["attention_maps"]["1"], dtype=expect.dtype), expect, atol=TOL, rtol=0)
    if family == "qwen3-sliding":  # the window is honoured: late queries cannot see the first token
        assert [getattr(layer.self_attn, "sliding_window") for layer in model.model.layers] == [None, 8, 8]
        assert r["first_token_share"][1] < 0.1


def test_hf_model_in_bfloat16_passes_the_guard():
    pytest.importorskip("transformers")
    model = _hf_models()["llama"]().eval()
    ids = torch.randint(0, 128, (1, 40))
    ref = analyze_model(model, ids, progress=False)
    low = analyze_model(model.to(torch.bfloat16), ids, progress=False)
    assert low["first_token_share"] == pytest.approx(ref["first_token_share"], abs=2e-2)


def test_hf_guard_stops_when_the_recomputed_attention_disagrees(monkeypatch):
    pytest.importorskip("transformers")
    model = _hf_models()["llama"]().eval()
    real = hf_probes.qkv

    def wrong(attn, seen, position_embeddings):
        q, k, v = real(attn, seen, position_embeddings)
        return q * 2, k, v  # as if the architecture scaled its logits in a way we do not know

    monkeypatch.setattr(hf_probes, "qkv", wrong)
    with pytest.raises(GatedAttnError, match="not supported"):
        analyze_model(model, torch.randint(0, 128, (1, 20)), progress=False)


# -- massive activations -----------------------------------------------------------------------------------

def test_planted_outlier_is_found_at_its_layer_token_and_channel():
    model = tiny_model(num_layers=3)
    layer, pos, ch = 1, 7, 19
    model.layers[layer].hook_resid_post.register_forward_hook(
        lambda m, a, o: o.index_put((torch.tensor([0]), torch.tensor([pos]), torch.tensor([ch])),
                                    torch.tensor([-500.0], dtype=o.dtype), accumulate=True))
    r = analyze_model(model, torch.randint(0, 256, (1, 25)), progress=False, top_k=3)
    top = r["top_activations"][layer][0]
    assert (top["position"], top["channel"], top["batch"]) == (pos, ch, 0) and top["value"] < -400
    assert r["max_abs_activation"][0] < 10 and r["max_abs_activation"][layer] == top["abs"]
    assert r["m_act"] == pytest.approx(sum(r["max_abs_activation"]) / 3)
    assert r["massive_activation_ratio"][layer] == pytest.approx(top["abs"] / r["median_abs_activation"][layer])


def test_planted_outlier_in_a_hf_model_and_the_median_is_right():
    pytest.importorskip("transformers")
    model = _hf_models()["llama"]().eval()
    seen = {}

    def plant(m, a, out):
        out = out.clone()
        out[0, 3, 11] += 1e4
        seen["h"] = out
        return out

    model.model.layers[2].register_forward_hook(plant)
    r = analyze_model(model, torch.randint(0, 128, (1, 16)), progress=False)
    top = r["top_activations"][2][0]
    assert (top["position"], top["channel"]) == (3, 11)
    assert r["median_abs_activation"][2] == pytest.approx(float(seen["h"].abs().flatten().median()), rel=1e-6)


# -- gate scores and the SDPA output around the gate ---------------------------------------------------------

GATES = [{"attention.gate.position": "g1"},
         {"attention.gate.position": "g2", "attention.gate.granularity": "headwise"},
         {"attention.gate.position": "g1", "attention.gate.input_dependent": False},
         {"attention.gate.position": "g1", "attention.gate.activation": "silu", "attention.num_register_tokens": 2}]


@pytest.mark.parametrize("overrides", GATES, ids=["g1", "g2-headwise", "g1-input-independent", "g1-silu-registers"])
def test_gate_stats_match_a_direct_computation(overrides):
    model = tiny_model(**overrides)
    with torch.no_grad():  # spread the scores over (0, 1)
        for layer in model.layers:
            gate = layer.attn.gate
            if gate.input_dependent:
                w = layer.attn.q_proj.weight[4 * 16:] if layer.attn.fused_gate else gate.proj.weight
                w.normal_(0, 0.5)
            else:
                gate.vector.normal_(0, 2)
    ids = torch.randint(0, 256, (2, 30))
    scores, outs = {}, {}
    for i, layer in enumerate(model.layers):
        layer.attn.gate.hook_score.register_forward_hook(lambda m, a, o, i=i: scores.__setitem__(i, o.float()))
        layer.attn.hook_attn_out.register_forward_hook(lambda m, a, o, i=i: outs.__setitem__((i, 0), o))
        layer.attn.hook_gated_out.register_forward_hook(lambda m, a, o, i=i: outs.__setitem__((i, 1), o))
    r = analyze_model(model, ids, progress=False)
    R = model.num_register_tokens
    all_scores = []
    for i, s in scores.items():
        s = s[:, R:] if s.dim() == 4 else s.expand(2, 30, *s.shape)
        all_scores.append(s.flatten())
        heads = s.shape[2]
        assert r["gate_score_mean_per_head"][i] == pytest.approx(
            [float(s[:, :, h].mean()) for h in range(heads)], abs=TOL)
        assert r["gate_frac_below_0_1_per_head"][i] == pytest.approx(
            [float((s[:, :, h] < 0.1).double().mean()) for h in range(heads)], abs=TOL)
        assert r["gate_frac_below_0_5_per_layer"][i] == pytest.approx(float((s < 0.5).double().mean()), abs=TOL)
        assert r["gate_first_token_mean"][i] == pytest.approx(float(s[:, 0].mean()), abs=TOL)
        assert r["gate_rest_mean"][i] == pytest.approx(float(s[:, 1:].mean()), abs=TOL)
        assert r["attn_out_mean_abs"][i] == pytest.approx(float(outs[i, 0][:, R:].abs().mean()), rel=1e-6)
        assert r["gated_out_mean_abs"][i] == pytest.approx(float(outs[i, 1][:, R:].abs().mean()), rel=1e-6)
    flat = torch.cat(all_scores)
    assert r["gate_mean"] == pytest.approx(float(flat.mean()), abs=TOL)
    assert r["gate_frac_below_0_1"] == pytest.approx(float((flat < 0.1).double().mean()), abs=TOL)
    h = r["gate_histogram"]
    inside = flat[(flat >= 0) & (flat <= 1)]
    expect = [int(((inside >= lo) & ((inside < hi) if hi < 1 else (inside <= hi))).sum())
              for lo, hi in zip(h["edges"][:-1], h["edges"][1:])]
    assert h["counts"] == expect and h["below"] == int((flat < 0).sum()) and h["above"] == int((flat > 1).sum())
    assert sum(h["counts"]) + h["below"] + h["above"] == flat.numel()


def test_ungated_model_has_no_gate_keys():
    r = analyze_model(tiny_model(), torch.randint(0, 256, (1, 20)), progress=False)
    assert r["has_gate"] is False and "gate_mean" not in r
    assert r["attn_out_mean_abs"] == r["gated_out_mean_abs"]


# -- the sink lab's probes: active/dormant split, sink rate, value drain, residual peak ---------------------

def test_chunked_active_dormant_split_matches_explicit_softmax():
    B, H, Hk, T, D = 2, 4, 2, 37, 8
    q, k = torch.randn(B, H, T, D, dtype=torch.float64) * 2, torch.randn(B, Hk, T, D, dtype=torch.float64) * 2
    sink_pos = torch.tensor([0, 3])
    active = torch.rand(B, T) < 0.3
    got = attention_head_stats(q, k, 0.4, sink_pos, active_queries=active, query_chunk=5, key_chunk=7,
                               single_block=0)
    s = q @ k.repeat_interleave(H // Hk, 1).transpose(-1, -2) * 0.4
    p = torch.softmax(s.masked_fill(~torch.ones(T, T, dtype=torch.bool).tril(), float("-inf")), -1)
    for group, mask in (("active", active), ("dormant", ~active)):
        shares = [p[b, :, t, int(sink_pos[b])] for b in range(B) for t in range(int(sink_pos[b]) + 1, T) if mask[b, t]]
        torch.testing.assert_close(got[f"first_token_share_{group}"], torch.stack(shares, -1).mean(-1), atol=1e-10, rtol=0)
        assert int(got[f"queries_{group}"]) == len(shares)
    none = attention_head_stats(q, k, 0.4, sink_pos, active_queries=torch.zeros(B, T, dtype=torch.bool))
    assert torch.isnan(none["first_token_share_active"]).all() and int(none["queries_active"]) == 0


def _norm_ratio(x, first):
    """Brute force: x (B, T, ..., D) -> mean first-token norm / lower median of the other tokens' norms."""
    n = x.double().norm(dim=-1)
    firsts = torch.stack([n[b, t] for b in range(n.shape[0]) for t in range(n.shape[1]) if first[b, t]])
    rest = torch.stack([n[b, t] for b in range(n.shape[0]) for t in range(n.shape[1]) if not first[b, t]])
    return firsts.mean(0) / rest.sort(0).values[(rest.shape[0] - 1) // 2]


@pytest.mark.parametrize("overrides", [{}, {"attention.num_register_tokens": 2},
                                       {"attention.gate.position": "g2", "attention.sink": "learned"}],
                         ids=["baseline", "registers", "g2-sink"])
def test_lab_probes_match_eager_probs_and_explicit_norms(overrides):
    model = tiny_model(**overrides)
    ids = torch.randint(0, 256, (3, 33))
    ids[:, 0] = 0
    active = torch.rand(3, 33) < 0.25
    values, resid = {}, {}
    for i, layer in enumerate(model.layers):
        layer.attn.hook_v.register_forward_hook(lambda m, a, o, i=i: values.__setitem__(i, o))
        layer.hook_resid_post.register_forward_hook(lambda m, a, o, i=i: resid.__setitem__(i, o))
    r = analyze_model(model, ids, active_queries=active, eps=0.02, progress=False, query_chunk=4, key_chunk=5,
                      single_block=0)
    R = model.num_register_tokens
    first = torch.zeros(3, 33, dtype=torch.bool)
    first[:, 0] = True
    shares = []
    for i, p in _eager_probs(model, ids).items():
        q = p[:, :, R + 1:, R]  # B, H, counted queries: share of the first text token
        shares.append(q.mean((0, 2)))
        for group, mask in (("active", active[:, 1:]), ("dormant", ~active[:, 1:])):
            expect = q.permute(1, 0, 2)[:, mask].mean(-1)
            assert r[f"first_token_share_{group}_per_head"][i] == pytest.approx(expect.tolist(), abs=TOL)
        assert r["value_drain_per_head"][i] == pytest.approx(_norm_ratio(values[i][:, R:], first).tolist(), rel=1e-6)
        assert r["residual_peak"][i] == pytest.approx(float(_norm_ratio(resid[i][:, R:], first)), rel=1e-6)
    shares = torch.stack(shares)
    assert r["sink_rate"] == pytest.approx(float((shares > 0.02).double().mean())) == r["frac_heads_above_eps"]
    dormant = torch.tensor(r["first_token_share_dormant_per_head"])
    assert r["sink_rate_dormant"] == pytest.approx(float((dormant > 0.02).double().mean()))
    assert r["queries_active"] + r["queries_dormant"] == r["queries_per_head"] == 3 * 32
    assert len(r["value_drain_per_head"][0]) == model.config.attention.num_kv_heads
    assert "f_attn_active" not in analyze_model(model, ids, progress=False)
    with pytest.raises(GatedAttnError, match="active_queries has shape"):
        analyze_model(model, ids, active_queries=active[:, 1:], progress=False)


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_lab_probes_on_hf_models_match_output_attentions_and_explicit_norms(family):
    pytest.importorskip("transformers")
    model = _hf_models()[family]().double().eval()
    ids = torch.randint(0, 128, (2, 30))
    active = torch.rand(2, 30) < 0.3
    seen = {}
    layers = hf_probes.decoder_layers(model)
    for i, layer in enumerate(layers):
        attn = hf_probes.attention_module(layer)
        proj = attn.v_proj if hasattr(attn, "v_proj") else attn.c_attn
        proj.register_forward_hook(lambda m, a, o, i=i: seen.__setitem__(("v", i), o))
        layer.register_forward_hook(lambda m, a, o, i=i: seen.__setitem__(("h", i), o[0] if isinstance(o, tuple) else o))
    r = analyze_model(model, ids, active_queries=active, progress=False)
    with torch.no_grad():
        out = model(ids, output_attentions=True, use_cache=False)
    first = torch.zeros(2, 30, dtype=torch.bool)
    first[:, 0] = True
    for i, p in enumerate(out.attentions):
        q = p[:, :, 1:, 0]
        expect = q.permute(1, 0, 2)[:, active[:, 1:]].mean(-1)
        assert r["first_token_share_active_per_head"][i] == pytest.approx(expect.tolist(), abs=TOL)
        v = seen["v", i]
        if family == "gpt2":  # c_attn: [q | k | v]
            v = v[..., 2 * 64:]
        heads = len(r["value_drain_per_head"][i])
        v = v.view(2, 30, heads, -1)
        assert r["value_drain_per_head"][i] == pytest.approx(_norm_ratio(v, first).tolist(), rel=1e-6)
        assert r["residual_peak"][i] == pytest.approx(float(_norm_ratio(seen["h", i], first)), rel=1e-6)
