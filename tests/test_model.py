"""Core model: every gate variant and sink peer runs; the paths, cache and gate identities agree."""

import itertools

import pytest
import torch

from gatedattn import GatedLM
from conftest import tiny_model

POSITIONS = ["g1", "g2", "g3", "g4", "g5"]
SINKS = [{"attention.sink": "learned"}, {"attention.sink": "off_by_one"},
         {"attention.num_register_tokens": 3}]
CONFIGS = [
    {},
    {"attention.gate.position": "g1"},
    {"attention.gate.position": "g1", "attention.gate.granularity": "headwise"},
    {"attention.gate.position": "g2"},
    {"attention.gate.position": "g3", "attention.gate.fused": False},
    {"attention.gate.position": "g4", "attention.gate.shared_across_heads": True},
    {"attention.gate.position": "g5", "attention.gate.combine": "add"},
    {"attention.gate.position": "g1", "attention.sink": "learned"},
    {"attention.gate.position": "g1", "attention.sink": "off_by_one", "attention.qk_norm": False},
    {"attention.gate.position": "g2", "attention.num_register_tokens": 2},
    {"attention.output_nonlinearity": "rmsnorm"},
    {"attention.output_nonlinearity": "silu"},
    {"rope.partial_rotary_factor": 0.5, "sandwich_norm": True, "tie_embeddings": False},
    {"attention.gate.position": "g1", "moe.num_experts": 4, "moe.top_k": 2, "moe.shared_expert_ffn_dim": 32},
]


def _ids(cfg):
    return ",".join(f"{k.split('.')[-1]}={v}" for k, v in cfg.items()) or "baseline"


def _gate_combos(position):
    for gran, shared, combine, act, dep in itertools.product(
            ["elementwise", "headwise"], [False, True], ["multiply", "add"],
            ["sigmoid", "silu", "ns_sigmoid", "identity"], [True, False]):
        if position == "g5" and (gran == "headwise" or shared):
            continue
        yield {"attention.gate.position": position, "attention.gate.granularity": gran,
               "attention.gate.shared_across_heads": shared, "attention.gate.combine": combine,
               "attention.gate.activation": act, "attention.gate.input_dependent": dep}


@pytest.mark.parametrize("position", POSITIONS)
def test_every_gate_combination_runs_forward_and_backward(position):
    x = torch.randint(0, 256, (2, 12))
    for combo in _gate_combos(position):
        model = tiny_model(**combo)  # tiny has 4 query heads over 2 KV heads (GQA)
        out = model(x, labels=x)
        assert out.logits.shape == (2, 12, model.config.vocab_size)
        assert torch.isfinite(out.logits).all() and torch.isfinite(out.loss)
        out.loss.backward()
        gate_grads = [p.grad for n, p in model.named_parameters() if ".gate." in n]
        if combo["attention.gate.input_dependent"] and not model.layers[0].attn.fused_gate:
            assert gate_grads, combo
        grads = [p.grad for p in model.parameters()]
        assert all(g is not None and torch.isfinite(g).all() for g in grads), combo
        assert any(g.abs().sum() > 0 for g in gate_grads) or not gate_grads, combo
        seen = []
        model.layers[0].attn.gate.hook_score.register_forward_hook(lambda m, i, o: seen.append(o.shape))
        model(x)
        score_shape = seen[0]
        heads = {"g1": 4, "g4": 4, "g2": 2, "g3": 2, "g5": 1}[position]
        per = 64 if position == "g5" else 16
        expect = (1 if combo["attention.gate.shared_across_heads"] else heads,
                  per if combo["attention.gate.granularity"] == "elementwise" else 1)
        assert tuple(score_shape[-2:]) == expect, combo


@pytest.mark.parametrize("sink", SINKS, ids=_ids)
@pytest.mark.parametrize("position", ["none", "g1", "g2"])
def test_sink_peers_compose_with_the_gate(sink, position):
    model = tiny_model(**sink, **{"attention.gate.position": position})
    x = torch.randint(0, 256, (2, 9))
    out = model(x, labels=x)
    assert out.logits.shape == (2, 9, model.config.vocab_size) and torch.isfinite(out.loss)
    out.loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    if "attention.sink" in sink and sink["attention.sink"] == "learned":
        assert model.layers[0].attn.sink_logit.grad.abs().sum() > 0
    if "attention.num_register_tokens" in sink:
        assert model.register_tokens.grad.abs().sum() > 0


@pytest.mark.parametrize("cfg", CONFIGS, ids=_ids)
def test_causality(cfg):
    model = tiny_model(**cfg)
    x = torch.randint(0, 256, (1, 16))
    y = x.clone()
    y[0, 10:] = torch.randint(0, 256, (6,))
    a, b = model(x).logits, model(y).logits
    torch.testing.assert_close(a[:, :10], b[:, :10], rtol=0, atol=1e-12)
    assert not torch.allclose(a[:, 10:], b[:, 10:])


@pytest.mark.parametrize("cfg", CONFIGS, ids=_ids)
def test_fast_path_equals_reference_path(cfg):
    fast = tiny_model(**cfg)
    ref = tiny_model(**cfg, **{"attention.implementation": "eager"})
    ref.load_state_dict(fast.state_dict())
    x = torch.randint(0, 256, (2, 14))
    torch.testing.assert_close(fast(x).logits, ref(x).logits, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("cfg", CONFIGS, ids=_ids)
@pytest.mark.parametrize("implementation", ["sdpa", "eager"])
def test_greedy_decoding_with_cache_equals_full_forwards(cfg, implementation):
    model = tiny_model(**cfg, **{"attention.implementation": implementation})
    prompt = torch.randint(0, 256, (2, 5))
    with_cache = model.generate(prompt, max_new_tokens=8)
    tokens = prompt
    for _ in range(8):
        nxt = model(tokens).logits[:, -1].argmax(-1)
        tokens = torch.cat([tokens, nxt[:, None]], 1)
    assert torch.equal(with_cache, tokens)


@pytest.mark.parametrize("cfg", CONFIGS, ids=_ids)
@pytest.mark.parametrize("implementation", ["sdpa", "eager"])
def test_static_cache_steps_equal_growing_cache_steps(cfg, implementation):
    """The static path (whole storage under a mask, position in a tensor: what generate(compile=True)
    compiles) gives the logits of the ordinary cache, step by step."""
    from gatedattn.modeling.cache import KVCache

    model = tiny_model(**cfg, **{"attention.implementation": implementation})
    x = torch.randint(0, 256, (2, 12))
    growing, static = KVCache(len(model.layers)), KVCache(len(model.layers), capacity=20)
    torch.testing.assert_close(model(x[:, :5], past_key_values=static).logits,
                               model(x[:, :5], past_key_values=growing).logits, rtol=0, atol=0)
    static.start_static()
    for t in range(5, 12):
        expected = model(x[:, t:t + 1], past_key_values=growing).logits
        torch.testing.assert_close(model(x[:, t:t + 1], past_key_values=static).logits, expected,
                                   rtol=1e-12, atol=1e-12)
        static.advance_static()
    assert static.length == growing.length == 12 + model.num_register_tokens


@pytest.mark.parametrize("cfg, named", [
    ({"layer_types": "full_attention_every_2"}, "Gated DeltaNet layers"),
    ({"attention.sparse": {"type": "dsa", "top_k": 4, "indexer_heads": 2, "indexer_dim": 8}}, "DSA"),
    ({"moe.num_experts": 4, "moe.top_k": 2}, "MoE")], ids=["deltanet", "dsa", "moe"])
def test_compiled_decoding_refuses_what_it_cannot_compile_before_compiling(cfg, named):
    from gatedattn.errors import GatedAttnError
    from gatedattn.modeling.cache import KVCache

    model = tiny_model(**cfg)
    with pytest.raises(GatedAttnError, match=f"supports full-attention models with dense FFNs; this one has {named}"):
        model.generate(torch.randint(0, 256, (1, 6)), max_new_tokens=3, compile=True)
    if named != "MoE":  # the cache refuses to go static over such state too
        cache = KVCache(len(model.layers), capacity=16)
        model(torch.randint(0, 256, (1, 6)), past_key_values=cache)
        with pytest.raises(GatedAttnError, match="static decoding supports full-attention layers without DSA"):
            cache.start_static()


@pytest.mark.parametrize("cfg", CONFIGS[:10], ids=_ids)
def test_chunked_prefill_into_cache_equals_full_forward(cfg):
    model = tiny_model(**cfg)
    x = torch.randint(0, 256, (2, 20))
    full = model(x).logits
    out = model(x[:, :7], use_cache=True)
    chunks = [out.logits]
    for start, end in ((7, 13), (13, 14), (14, 20)):
        chunks.append(model(x[:, start:end], past_key_values=out.past_key_values).logits)
    torch.testing.assert_close(torch.cat(chunks, 1), full, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("position", POSITIONS)
@pytest.mark.parametrize("fused", [True, False])
def test_gate_forced_to_one_reproduces_the_ungated_model(position, fused):
    base = tiny_model()
    gated = tiny_model(**{"attention.gate.position": position, "attention.gate.activation": "identity",
                          "attention.gate.bias": True, "attention.gate.init": "zeros",
                          "attention.gate.fused": fused})
    state = gated.state_dict()
    for name, value in base.state_dict().items():
        state[name] = value if state[name].shape == value.shape else torch.cat(
            [value, state[name][value.shape[0]:]])  # fused q_proj: copy the query rows
    for layer in range(2):
        state[f"layers.{layer}.attn.gate.bias"].fill_(1.0)  # identity(0·x + 1) = 1 exactly
    gated.load_state_dict(state)
    x = torch.randint(0, 256, (2, 11))
    with torch.no_grad():  # under autograd the projections run as one matmul, whose width differs
        got, want = gated(x).logits, base(x).logits
    if fused and position in ("g1", "g4"):
        # The widened q_proj is a matmul of another shape: the BLAS may block its sums differently.
        torch.testing.assert_close(got, want, rtol=0, atol=1e-14)
    else:
        assert torch.equal(got, want)


@pytest.mark.parametrize("position", ["g1", "g2", "g4"])
def test_headwise_equals_elementwise_with_the_score_repeated(position):
    common = {"attention.gate.position": position, "attention.gate.fused": False}
    head = tiny_model(**common, **{"attention.gate.granularity": "headwise"})
    elem = tiny_model(**common)
    state = head.state_dict()
    for layer in range(2):
        key = f"layers.{layer}.attn.gate.proj.weight"
        state[key] = state[key].repeat_interleave(16, dim=0)  # each head's row over its 16 channels
    elem.load_state_dict(state)
    x = torch.randint(0, 256, (2, 10))
    torch.testing.assert_close(elem(x).logits, head(x).logits, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("granularity", ["elementwise", "headwise"])
def test_fused_gate_equals_a_separate_projection(granularity):
    common = {"attention.gate.position": "g1", "attention.gate.granularity": granularity}
    fused = tiny_model(**common)
    separate = tiny_model(**common, **{"attention.gate.fused": False})
    state = fused.state_dict()
    for layer in range(2):
        w = state.pop(f"layers.{layer}.attn.q_proj.weight")
        state[f"layers.{layer}.attn.q_proj.weight"] = w[:64]
        state[f"layers.{layer}.attn.gate.proj.weight"] = w[64:]
    separate.load_state_dict(state)
    x = torch.randint(0, 256, (2, 10))
    torch.testing.assert_close(fused(x).logits, separate(x).logits, rtol=1e-12, atol=1e-12)


def test_shared_gate_is_the_head_average_of_per_head_scores():
    model = tiny_model(**{"attention.gate.position": "g1", "attention.gate.shared_across_heads": True})
    gate = model.layers[0].attn.gate
    x = torch.randn(1, 3, 64, dtype=torch.float64)
    logits = x @ model.layers[0].attn.q_proj.weight[64:].T
    expected = torch.sigmoid(logits.view(1, 3, 4, 16)).mean(-2, keepdim=True)
    torch.testing.assert_close(gate.scores(x, logits), expected)


def test_off_by_one_sink_probabilities_match_the_formula():
    model = tiny_model(**{"attention.sink": "off_by_one", "attention.implementation": "eager"})
    seen = {}
    model.layers[0].attn.hook_attn_probs.register_forward_hook(lambda m, i, o: seen.setdefault("p", o))
    q_seen = {}
    model.layers[0].attn.hook_q.register_forward_hook(lambda m, i, o: q_seen.setdefault("q", o))
    model.layers[0].attn.hook_k.register_forward_hook(lambda m, i, o: q_seen.setdefault("k", o))
    model(torch.randint(0, 256, (1, 6)))
    q, k = q_seen["q"].transpose(1, 2), q_seen["k"].transpose(1, 2).repeat_interleave(2, 1)
    scores = (q @ k.transpose(-1, -2)) / 4.0
    scores = scores.masked_fill(torch.ones(6, 6, dtype=torch.bool).triu(1), float("-inf"))
    e = scores.exp()
    torch.testing.assert_close(seen["p"], e / (1 + e.sum(-1, keepdim=True)))


def test_save_and_load_are_exact(tmp_path):
    for cfg in ({"attention.gate.position": "g1"}, {"tie_embeddings": False, "moe.num_experts": 4}):
        model = tiny_model(**cfg).float()
        model.save_pretrained(tmp_path / "m")
        loaded = GatedLM.from_pretrained(tmp_path / "m")
        assert loaded.config == model.config
        for (n1, p1), (n2, p2) in zip(model.state_dict().items(), loaded.state_dict().items()):
            assert n1 == n2 and torch.equal(p1, p2)
        x = torch.randint(0, 256, (1, 8))
        assert torch.equal(model(x).logits, loaded(x).logits)
        assert (loaded.lm_head.weight is loaded.embed.weight) == model.config.tie_embeddings
        assert not loaded.training  # eval mode, as transformers' from_pretrained


def test_moe_matches_a_per_token_loop():
    model = tiny_model(**{"moe.num_experts": 4, "moe.top_k": 2, "moe.shared_expert_ffn_dim": 8})
    moe = model.layers[0].ffn
    x = torch.randn(3, 5, 64, dtype=torch.float64)
    out = moe(x)
    flat = x.reshape(-1, 64)
    probs = torch.softmax(flat @ moe.router.weight.T, -1)
    expected = torch.zeros_like(flat)
    counts = torch.zeros(4)
    for t in range(flat.shape[0]):
        w, e = probs[t].topk(2)
        w = w / w.sum()
        for weight, expert in zip(w, e):
            h = flat[t]
            y = (torch.nn.functional.silu(h @ moe.w_gate[expert]) * (h @ moe.w_up[expert])) @ moe.w_down[expert]
            expected[t] += weight * y
            counts[expert] += 1
    expected += moe.shared_expert(flat)
    torch.testing.assert_close(out.reshape(-1, 64), expected)
    lb = 4 * ((counts / counts.sum()).double() * probs.mean(0)).sum()
    torch.testing.assert_close(moe.aux["load_balance_loss"], lb)
    logits = flat @ moe.router.weight.T
    torch.testing.assert_close(moe.aux["z_loss"], torch.logsumexp(logits, -1).pow(2).mean())


def test_sampling_respects_top_k_and_is_seeded():
    model = tiny_model()
    prompt = torch.randint(0, 256, (1, 4))
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    a = model.generate(prompt, 6, do_sample=True, temperature=0.8, top_p=0.9, generator=g1)
    b = model.generate(prompt, 6, do_sample=True, temperature=0.8, top_p=0.9, generator=g2)
    assert torch.equal(a, b) and a.shape == (1, 10)
    g = torch.Generator().manual_seed(0)
    from gatedattn.modeling.model import sample_next
    logits = torch.randn(1, 50)
    picks = {int(sample_next(logits, True, top_k=1, generator=g)) for _ in range(20)}
    assert picks == {int(logits.argmax())}
