"""DeepSeek Sparse Attention: the lightning indexer, top-k selection, the mask and gather paths, the KL."""

import math
import pytest
import torch

from gatedattn import GatedLM, load_config
from gatedattn.cli.main import main
from gatedattn.errors import ConfigError
from gatedattn.modeling.cache import KVCache
from gatedattn.modeling.sparse import indexer_kl, main_attention_distribution, selection_mask, top_k_stable

VOCAB = 257


def dsa_model(top_k=6, implementation="mask", seed=0, **extra):
    overrides = {"model.attention.sparse.type": "dsa", "model.attention.sparse.top_k": top_k,
                 "model.attention.sparse.indexer_dim": 16, "model.attention.sparse.indexer_heads": 3,
                 "model.attention.sparse.implementation": implementation,
                 "model.attention.sparse.query_chunk": 5, **extra}
    torch.manual_seed(seed)
    return GatedLM(load_config("tiny", overrides).model).double().eval()


def ids(T=23, B=2, seed=1):
    return torch.randint(0, VOCAB, (B, T), generator=torch.Generator().manual_seed(seed))


def same_weights(dst: GatedLM, src: GatedLM) -> GatedLM:
    dst.load_state_dict(src.state_dict(), strict=False)
    return dst


VARIANTS = [{}, {"model.attention.gate.position": "g1"}, {"model.attention.sink": "learned"},
            {"model.attention.num_kv_heads": 1}, {"model.attention.implementation": "eager"},
            {"model.attention.num_register_tokens": 2}]


@pytest.mark.parametrize("extra", VARIANTS)
def test_top_k_covering_the_sequence_equals_dense(extra):
    x = ids()
    sparse = dsa_model(top_k=64, **extra)
    dense = same_weights(GatedLM(load_config("tiny", extra).model).double().eval(), sparse)
    torch.testing.assert_close(sparse(x).logits, dense(x).logits, rtol=0, atol=1e-12)


@pytest.mark.parametrize("extra", VARIANTS)
def test_gather_path_equals_mask_path(extra):
    x = ids()
    mask = dsa_model(**extra)
    gather = same_weights(dsa_model(implementation="gather", **extra), mask)
    torch.testing.assert_close(gather(x).logits, mask(x).logits, rtol=0, atol=1e-12)


def test_sparse_attention_differs_from_dense_when_top_k_is_small():
    x = ids()
    sparse = dsa_model(top_k=3)
    dense = same_weights(GatedLM(load_config("tiny").model).double().eval(), sparse)
    assert (sparse(x).logits - dense(x).logits).abs().max() > 1e-3


@pytest.mark.parametrize("S, J", [(40, 7), (40, 40), (9, 1)])
def test_top_k_stable_equals_a_stable_sort(S, J):
    """Scores from a few values (ties everywhere, as ReLU's zeros make them) with a causal -inf tail."""
    g = torch.Generator().manual_seed(S + J)
    scores = torch.randint(0, 3, (3, 30, S), generator=g).double()
    scores[torch.rand(3, 30, S, generator=g) < 0.2] = 0.0
    scores = scores.masked_fill(torch.arange(S)[None, None] > torch.arange(30)[None, :, None] + S - 30, float("-inf"))
    ref = scores.sort(dim=-1, descending=True, stable=True)
    idx, valid = top_k_stable(scores, J)
    assert torch.equal(idx, ref.indices[..., :J])
    assert torch.equal(valid, ref.values[..., :J] > float("-inf"))


def test_chunked_selection_after_a_cache_equals_selection_over_all_keys():
    """A chunk scores only the keys up to its last query; after 9 cached tokens, 13 new queries in chunks of 5
    (fewer past keys than top_k for the first ones) select what unchunked scoring selects."""
    model = dsa_model(top_k=12)
    idx = model.layers[0].attn.indexer
    x = torch.randn(2, 22, model.config.d_model, dtype=torch.float64)
    cos, sin = model.rotary(torch.arange(22), torch.float64)
    keys = idx.keys(x, cos, sin)
    causal = torch.arange(22)[None] <= torch.arange(9, 22)[:, None]
    want = idx.select(idx.scores(x[:, 9:], keys, cos[9:], sin[9:], causal))
    got = idx.select_chunked(x[:, 9:], keys, cos[9:], sin[9:], chunk=5)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


def test_gather_path_at_inference_builds_no_T_by_S_mask(monkeypatch):
    """A long prefill must not hold T x S of anything: the gather path's chunks build their own masks."""
    import gatedattn.modeling.attention as attention

    def refuse(q_len, k_len, device):
        raise AssertionError(f"a {q_len} x {k_len} causal mask was built")

    gather, mask = dsa_model(implementation="gather"), dsa_model()
    monkeypatch.setattr(attention, "causal_mask", refuse)
    gather(ids())
    with pytest.raises(AssertionError, match="causal mask was built"):
        mask(ids())


def naive_dsa_layer(attn, x, cos, sin):
    """One DSA attention layer (no gate, no sink, K = H / groups) by explicit loops over queries: indexer
    scores by the formula, top-k by sorting, softmax over the selected keys."""
    idx = attn.indexer
    B, T, _ = x.shape
    H, K, D = attn.num_heads, attn.num_kv_heads, attn.head_dim
    q = attn.q_proj(x).view(B, T, H, D)
    k = attn.k_proj(x).view(B, T, K, D)
    v = attn.v_proj(x).view(B, T, K, D)
    q, k = attn.q_norm(q), attn.k_norm(k)

    def rope(t):  # half-split rotation of the first rotary channels
        rd = cos.shape[-1]
        r, p = t[..., :rd], t[..., rd:]
        c, s = cos[:, None], sin[:, None]
        rot = torch.cat([-r[..., rd // 2:], r[..., :rd // 2]], -1)
        return torch.cat([r * c + rot * s, p], -1)

    q, k = rope(q), rope(k)
    # the indexer rotates all its channels, with evenly spaced frequencies of the model's table
    half = cos.shape[-1] // 2
    picks = [round(i * (half - 1) / (idx.dim // 2 - 1)) for i in range(idx.dim // 2)] if idx.dim < 2 * half \
        else list(range(half))
    cols = picks + [half + c for c in picks]
    cos, sin = cos[:, cols], sin[:, cols]
    iq = rope(idx.q_proj(x).view(B, T, idx.num_heads, idx.dim))
    ik = rope(idx.k_norm(idx.k_proj(x))[:, :, None])[:, :, 0]
    w = idx.weights_proj(x)
    out = torch.zeros(B, T, H, D, dtype=x.dtype)
    for b in range(B):
        for t in range(T):
            score = [sum(float(w[b, t, j]) * max(float(iq[b, t, j] @ ik[b, s]), 0.0) for j in range(idx.num_heads))
                     for s in range(t + 1)]
            chosen = sorted(range(t + 1), key=lambda s: -score[s])[:idx.top_k]
            for h in range(H):
                kv = h // (H // K)
                logits = torch.stack([q[b, t, h] @ k[b, s, kv] for s in chosen]) / math.sqrt(D)
                p = torch.softmax(logits, 0)
                out[b, t, h] = sum(p[i] * v[b, s, kv] for i, s in enumerate(chosen))
    return attn.o_proj(out.reshape(B, T, H * D))


@pytest.mark.parametrize("implementation, indexer_dim", [("mask", 16), ("gather", 16), ("gather", 8)])
def test_attention_layer_equals_a_naive_loop(implementation, indexer_dim):
    model = dsa_model(top_k=4, implementation=implementation, **{"model.attention.sparse.indexer_dim": indexer_dim})
    attn = model.layers[0].attn
    x = torch.randn(2, 11, model.config.d_model, dtype=torch.float64)
    cos, sin = model.rotary(torch.arange(11), torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(attn(x, cos, sin), naive_dsa_layer(attn, x, cos, sin), rtol=0, atol=1e-10)


def test_causal():
    model = dsa_model(top_k=4, implementation="gather")
    x = ids(T=20)
    y = x.clone()
    y[:, 12:] = (y[:, 12:] + 1) % VOCAB
    torch.testing.assert_close(model(x).logits[:, :12], model(y).logits[:, :12], rtol=0, atol=1e-12)


@pytest.mark.parametrize("implementation", ["mask", "gather"])
@pytest.mark.parametrize("indexer_dtype", ["float32", "bfloat16"])
def test_cached_decoding_equals_full_forward(implementation, indexer_dtype):
    model = dsa_model(top_k=5, implementation=implementation, **{"model.attention.sparse.indexer_dtype": indexer_dtype})
    x = ids(T=19)
    full = model(x).logits
    cache = KVCache(len(model.layers))
    steps = [model(x[:, :7], past_key_values=cache).logits]
    steps += [model(x[:, t:t + 1], past_key_values=cache).logits for t in range(7, 19)]
    torch.testing.assert_close(torch.cat(steps, 1), full, rtol=0, atol=1e-12)


def test_generate_with_cache_equals_argmax_of_full_forwards():
    model = dsa_model(top_k=4, implementation="gather")
    x = ids(T=9, B=1)
    out = model.generate(x, max_new_tokens=6)
    seq = x
    for _ in range(6):
        seq = torch.cat([seq, model(seq).logits[:, -1].argmax(-1, keepdim=True)], 1)
    assert torch.equal(out, seq)


def test_main_attention_distribution_is_the_head_summed_softmax():
    """Against the eager path's own probabilities (hook_attn_probs), summed over heads and renormalised."""
    torch.manual_seed(0)
    model = GatedLM(load_config("tiny", {"model.attention.implementation": "eager"}).model).double().eval()
    attn, seen = model.layers[0].attn, {}
    attn.hook_attn_probs.register_forward_hook(lambda m, i, o: seen.setdefault("p", o))
    attn.hook_q.register_forward_hook(lambda m, i, o: seen.setdefault("q", o))
    attn.hook_k.register_forward_hook(lambda m, i, o: seen.setdefault("k", o))
    model(ids(T=13))
    T = 13
    causal = torch.ones(T, T, dtype=torch.bool).tril().expand(2, T, T)
    ours = main_attention_distribution(seen["q"].transpose(1, 2), seen["k"], attn.scale, causal)
    reference = seen["p"].sum(1) / attn.num_heads
    torch.testing.assert_close(ours.double(), reference, rtol=0, atol=1e-6)


@pytest.mark.parametrize("mode", ["dense", "sparse"])
def test_indexer_kl_trains_only_the_indexer(mode):
    model = dsa_model(top_k=4, **{"model.attention.sparse.mode": mode}).train()
    x = ids(T=16)
    out = model(x, labels=x)
    assert out.indexer_kl is not None and out.indexer_kl > 0
    out.indexer_kl.backward()
    grads = {n: 0.0 if p.grad is None else p.grad.abs().sum().item() for n, p in model.named_parameters()}
    assert all(g == 0.0 for n, g in grads.items() if ".indexer." not in n)
    assert all(grads[f"layers.{i}.attn.indexer.q_proj.weight"] > 0 for i in range(len(model.layers)))
    model.zero_grad()
    model(x, labels=x).lm_loss.backward()  # and the LM loss does not reach the indexer
    assert all(p.grad is None or p.grad.abs().sum() == 0 for n, p in model.named_parameters() if ".indexer." in n)


def test_indexer_kl_is_the_kl_over_the_allowed_keys():
    model = dsa_model(top_k=4, **{"model.attention.sparse.mode": "dense"}).train()
    attn = model.layers[0].attn
    x = torch.randn(1, 9, model.config.d_model, dtype=torch.float64)
    cos, sin = model.rotary(torch.arange(9), torch.float64)
    seen = {}
    attn.hook_q.register_forward_hook(lambda m, i, o: seen.setdefault("q", o))
    attn.hook_k.register_forward_hook(lambda m, i, o: seen.setdefault("k", o))
    attn(x, cos, sin)
    causal = torch.ones(9, 9, dtype=torch.bool).tril()[None]
    p = main_attention_distribution(seen["q"].transpose(1, 2), seen["k"], attn.scale, causal)[0].detach()
    keys = attn.indexer.keys(x, cos, sin)
    scores = attn.indexer.scores(x, keys, cos, sin, causal[0])[0].detach()
    expected = 0.0
    for t in range(9):
        q = torch.softmax(scores[t, :t + 1], 0)
        expected += float((p[t, :t + 1] * (p[t, :t + 1].log() - q.log())).sum()) / 9
    assert attn.aux["indexer_kl"].item() == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("implementation", ["mask", "gather"])
@pytest.mark.parametrize("extra", [{}, {"model.attention.num_kv_heads": 1}])
def test_sparse_kl_at_the_selected_keys_equals_the_kl_over_the_selection_mask(implementation, extra):
    """Sparse training scores only the selected keys; against the KL of the full (T x S) indexer scores and
    main attention restricted to the selection mask: the same value and the same indexer gradients."""
    model = dsa_model(top_k=4, implementation=implementation, **extra).train()
    attn = model.layers[0].attn
    T = 11
    x = torch.randn(2, T, model.config.d_model, dtype=torch.float64)
    cos, sin = model.rotary(torch.arange(T), torch.float64)
    seen = {}
    for name in ("q", "k"):
        getattr(attn, f"hook_{name}").register_forward_hook(lambda m, i, o, name=name: seen.setdefault(name, o))
    attn(x, cos, sin)
    ours = attn.aux["indexer_kl"]
    causal = torch.ones(T, T, dtype=torch.bool).tril()
    scores = attn.indexer.scores(x, attn.indexer.keys(x, cos, sin), cos, sin, causal)
    allowed = selection_mask(*attn.indexer.select(scores), T)
    assert not allowed.all()  # top-4 of up to 11 keys: a real selection
    target = main_attention_distribution(seen["q"].transpose(1, 2).detach(), seen["k"].detach(), attn.scale, allowed)
    reference = indexer_kl(target, scores, allowed)
    params = list(attn.indexer.parameters())
    # Both compute in float32 (the indexer's dtype, the target's softmax), summing in different orders.
    torch.testing.assert_close(ours, reference, rtol=1e-5, atol=0)
    for g, r in zip(torch.autograd.grad(ours, params), torch.autograd.grad(reference, params)):
        torch.testing.assert_close(g, r, rtol=1e-4, atol=1e-7)


def test_selected_scores_are_the_scores_at_the_selected_keys():
    indexer = dsa_model(top_k=5).layers[0].attn.indexer
    T = 13
    x = torch.randn(2, T, indexer.q_proj.in_features, dtype=torch.float64)
    cos, sin = dsa_model().rotary(torch.arange(T), torch.float64)
    keys = indexer.keys(x, cos, sin)
    scores = indexer.scores(x, keys, cos, sin, torch.ones(T, T, dtype=torch.bool).tril())
    idx, valid = indexer.select(scores)
    torch.testing.assert_close(indexer.selected_scores(x, keys, idx, cos, sin)[valid], scores.gather(-1, idx)[valid],
                               rtol=1e-5, atol=1e-6)  # float32 indexer (its dtype), other summation order


@pytest.mark.parametrize("key, value", [("top_k", 0), ("indexer_heads", 0), ("indexer_dim", 7)])
def test_bad_configs_get_one_line(key, value):
    with pytest.raises(ConfigError, match=f"model.attention.sparse.{key}"):
        load_config("tiny", {"model.attention.sparse.type": "dsa", f"model.attention.sparse.{key}": value})


def test_cli_refuses_a_bad_sparse_config_with_exit_2(tmp_path, capsys):
    rc = main(["train", "tiny", "--out", str(tmp_path / "r"), "--set", "model.attention.sparse.type=dsa",
               "--set", "model.attention.sparse.top_k=0"])
    assert rc == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "model.attention.sparse.top_k" in lines[0]
    assert not (tmp_path / "r").exists()


def test_sparse_training_step_lowers_the_indexer_kl():
    model = dsa_model(top_k=4, **{"model.attention.sparse.mode": "dense"}).float().train()
    opt = torch.optim.Adam([p for n, p in model.named_parameters() if ".indexer." in n], lr=1e-2)
    x = ids(T=24, B=4)
    first = None
    for _ in range(30):
        kl = model(x, labels=x).indexer_kl
        first = first if first is not None else kl.item()
        opt.zero_grad()
        kl.backward()
        opt.step()
    assert kl.item() < 0.7 * first


def test_analysis_of_a_dsa_model_matches_its_eager_probabilities():
    """First-token share and entropy over the selected keys, against the probabilities the eager mask path
    actually used (hook_attn_probs); the selection statistics against plain loops."""
    from gatedattn.analysis import analyze_model

    model = dsa_model(top_k=5, **{"model.attention.implementation": "eager"})
    x = ids(T=17)
    probs, sel = {}, {}
    for i, layer in enumerate(model.layers):
        layer.attn.hook_attn_probs.register_forward_hook(lambda m, a, o, i=i: probs.setdefault(i, o))
        layer.attn.hook_selection.register_forward_hook(lambda m, a, o, i=i: sel.setdefault(i, o))
    model(x)
    result = analyze_model(model, x, progress=False)
    for i in range(len(model.layers)):
        p = probs[i][:, :, 1:]  # queries after the sink (position 0)
        torch.testing.assert_close(torch.tensor(result["first_token_share_per_head"][i]),
                                   p[..., 0].mean((0, 2)).float(), rtol=0, atol=1e-6)
        entropy = -(p * p.clamp_min(1e-300).log()).sum(-1).mean((0, 2))
        torch.testing.assert_close(torch.tensor(result["entropy_per_head"][i]), entropy.float(), rtol=0, atol=1e-5)
        s, T = sel[i], x.shape[1]
        picked = [[{int(j) for j in s[b, t] if j <= t} for t in range(T)] for b in range(2)]
        with_sink = sum(0 in picked[b][t] for b in range(2) for t in range(1, T))
        slots = sum(len(picked[b][t]) for b in range(2) for t in range(1, T))
        assert result["sink_slot_share"][i] == pytest.approx(with_sink / slots)
        assert result["sink_selection_rate"][i] == pytest.approx(with_sink / (2 * (T - 1)))
        freq = result["selection_frequency"][i]
        for pos in (0, 3, T - 1):
            could = [(b, t) for b in range(2) for t in range(max(pos, 1), T)]
            assert freq[pos] == pytest.approx(sum(pos in picked[b][t] for b, t in could) / len(could))


@pytest.mark.parametrize("target", ["qwen3-next", "qwen3"])
def test_export_refuses_a_dsa_model(tmp_path, capsys, target):
    gate = {"model.attention.gate.position": "g1"} if target == "qwen3-next" else {}
    model = dsa_model(**gate).float()
    model.save_pretrained(tmp_path / "m")
    assert main(["export", str(tmp_path / "m"), "--to", target, "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "attention.sparse" in err[0]


def test_bfloat16_indexer_scores_are_the_float32_scores_to_bf16_precision():
    model = dsa_model()
    bf16 = same_weights(dsa_model(**{"model.attention.sparse.indexer_dtype": "bfloat16"}), model)
    a, b = model.layers[0].attn.indexer, bf16.layers[0].attn.indexer
    x = torch.randn(2, 15, model.config.d_model, dtype=torch.float64)
    cos, sin = model.rotary(torch.arange(15), torch.float64)
    causal = torch.ones(15, 15, dtype=torch.bool).tril()
    keys = b.keys(x, cos, sin)
    assert keys.dtype == torch.bfloat16
    want = a.scores(x, a.keys(x, cos, sin), cos, sin, causal)
    got = b.scores(x, keys, cos, sin, causal)
    assert got.dtype == torch.float32 and not torch.equal(got, want)
    finite = causal.expand_as(got)
    torch.testing.assert_close(got[finite], want[finite], rtol=0, atol=2e-2 * want[finite].abs().max().item())
