"""``analyze_model``: one forward pass with probes on every layer; returns a JSON-serialisable dict.

Works on our GatedLM (named hook points) and on HF transformers causal LMs (hooks from ``hf.py``). The
forward stops after the last block, so no T x vocab logits are ever made. Statistics are computed inside
the hooks, layer by layer, and only small per-layer results are kept.

Positions: "first token" is position 0 of the input (``sink="first"``; the BOS when one leads) or the
first BOS token of each sequence (``sink="bos"``). Register tokens of our models are prepended positions:
they are never counted as queries nor as "the first token"; their total share is ``register_share``.
``active_queries`` (B, T) splits the queries in two groups (the Bigram-Backcopy task's trigger queries, where
Guo et al.'s heads are active, and the dormant rest) for the first-token share and the sink rate.
"""

from __future__ import annotations

import torch
from torch import nn
from tqdm.auto import tqdm

from ..errors import GatedAttnError
from ..modeling.model import GatedLM
from .activations import activation_stats, first_token_norm_ratio
from .attention import SINGLE_BLOCK, attention_head_stats, attention_map
from .gates import THRESHOLDS, gate_stats, histogram_edges
from .selection import selection_stats

SINK_EPS = 0.3  # a head "has a sink" when its first-token share exceeds this (attention-sink literature)
SINK_CHOICES = ("first", "bos")


class _StopForward(Exception):
    """Raised after the last block: analysis needs no final norm nor logits."""


def _stop(module, args, output):
    raise _StopForward


class _Recorder:
    def __init__(self, num_registers: int, sink_pos: torch.Tensor, num_tokens: int, map_layers: set[int],
                 map_size: int, top_k: int, query_chunk: int, key_chunk: int, single_block: int, bar,
                 active_queries: torch.Tensor | None = None):
        self.R, self.sink_pos = num_registers, sink_pos
        self.active = None
        if active_queries is not None:  # registers are never counted queries: pad them as dormant
            pad = torch.zeros(active_queries.shape[0], num_registers, dtype=torch.bool)
            self.active = torch.cat([pad, active_queries.cpu().bool()], 1)
        self.first = torch.arange(num_tokens)[None, :] == sink_pos[:, None]  # (B, T): the sink token
        self.map_layers, self.map_size, self.top_k = map_layers, map_size, top_k
        self.chunks = dict(query_chunk=query_chunk, key_chunk=key_chunk, single_block=single_block)
        self.bar = bar
        self.attn, self.maps, self.acts, self.reg_acts = {}, {}, {}, {}
        self.gates, self.attn_out, self.gated_out = {}, {}, {}
        self.values, self.resid_norms = {}, {}
        self.selection = {}

    def on_attention(self, i, q, k, scale, sink_logit, window, selection=None):
        """q (B, H, T, D), k (B, Hk, T, D), post-RoPE, over the full sequence (registers included);
        ``selection`` (B, T, J): a DSA layer's selected key positions."""
        active = None if self.active is None else self.active.to(q.device)
        self.attn[i] = attention_head_stats(q, k, scale, self.sink_pos + self.R, num_registers=self.R,
                                            sink_logit=sink_logit, window=window, active_queries=active,
                                            selection=selection, **self.chunks)
        if selection is not None:
            self.selection[i] = selection_stats(selection, self.sink_pos.to(selection.device) + self.R, self.R)
        if i in self.map_layers:
            self.maps[i] = attention_map(q, k, scale, self.map_size, sink_logit, window, selection).mean(0)
        self.bar.update(1)

    def on_value(self, i, v):
        """v (B, Hk, T, D): the value states attention reads (registers included)."""
        self.values[i] = first_token_norm_ratio(v[:, :, self.R:].transpose(1, 2), self.first)

    def on_residual(self, i, h):
        self.acts[i] = activation_stats(h[:, self.R:], self.top_k)
        self.resid_norms[i] = first_token_norm_ratio(h[:, self.R:], self.first)
        if self.R:
            self.reg_acts[i] = float(h[:, :self.R].abs().max())

    def on_gate(self, i, scores):
        """scores (B, T, heads, per_head), or (heads, per_head) when input-independent."""
        self.gates[i] = gate_stats(scores[:, self.R:] if scores.dim() == 4 else scores,
                                   self.first.to(scores.device))

    def on_attn_out(self, i, y, gated: bool):
        (self.gated_out if gated else self.attn_out)[i] = float(y[:, self.R:].float().abs().mean())


def _register_gatedlm_probes(model: GatedLM, rec: _Recorder, handles: list) -> None:
    for i, layer in enumerate(model.layers):
        handles.append(layer.hook_resid_post.register_forward_hook(lambda m, a, o, i=i: rec.on_residual(i, o)))
        if layer.layer_type != "full_attention":  # Gated DeltaNet has no attention weights to probe
            continue
        attn, seen = layer.attn, {}

        def keep_q(m, args, out, seen=seen):
            seen["q"] = out

        def on_k(m, args, out, i=i, attn=attn, seen=seen):
            if attn.indexer is not None:  # a DSA layer: wait for its selection
                seen["k"] = out
                return
            rec.on_attention(i, seen.pop("q").transpose(1, 2), out.transpose(1, 2), attn.scale,
                             attn.sink_logits(), None)

        def on_selection(m, args, out, i=i, attn=attn, seen=seen):
            selection = None if attn.sparse.mode == "dense" else out
            rec.on_attention(i, seen.pop("q").transpose(1, 2), seen.pop("k").transpose(1, 2), attn.scale,
                             attn.sink_logits(), None, selection)

        handles += [attn.hook_q.register_forward_hook(keep_q), attn.hook_k.register_forward_hook(on_k),
                    attn.hook_selection.register_forward_hook(on_selection),
                    attn.hook_v.register_forward_hook(lambda m, a, o, i=i: rec.on_value(i, o.transpose(1, 2))),
                    attn.hook_attn_out.register_forward_hook(lambda m, a, o, i=i: rec.on_attn_out(i, o, False)),
                    attn.hook_gated_out.register_forward_hook(lambda m, a, o, i=i: rec.on_attn_out(i, o, True))]
        if attn.gate is not None:
            handles.append(attn.gate.hook_score.register_forward_hook(lambda m, a, o, i=i: rec.on_gate(i, o)))


def _sink_positions(ids: torch.Tensor, sink: str, bos_token_id: int | None) -> torch.Tensor:
    if sink not in SINK_CHOICES:
        raise GatedAttnError(f"sink={sink!r} is not allowed; allowed: {', '.join(SINK_CHOICES)}")
    if sink == "first":
        return torch.zeros(ids.shape[0], dtype=torch.long)
    if bos_token_id is None:
        raise GatedAttnError("sink=bos needs a BOS token id, and this model defines none; use sink=first")
    is_bos = ids.cpu() == bos_token_id
    if not bool(is_bos.any(1).all()):
        raise GatedAttnError(f"sink=bos: the BOS token (id {bos_token_id}) is not in every input sequence; "
                             "prepend it (CLI: --add-bos) or use sink=first")
    return is_bos.long().argmax(1)


def _model_info(model: nn.Module) -> dict:
    if isinstance(model, GatedLM):
        a = model.config.attention
        attention_layers = [i for i, t in enumerate(model.config.resolved_layer_types) if t == "full_attention"]
        return {"kind": "gatedattn", "architecture": "GatedLM", "num_layers": len(model.layers),
                "attention_layers": attention_layers,
                "num_heads": a.num_heads, "num_kv_heads": a.num_kv_heads, "num_register_tokens":
                model.num_register_tokens, "gate_position": a.gate.position, "attention_sink": a.sink,
                "bos_token_id": model.config.bos_token_id}
    c = model.config
    return {"kind": "hf", "architecture": type(model).__name__, "num_layers": c.num_hidden_layers,
            "num_heads": c.num_attention_heads, "num_kv_heads": getattr(c, "num_key_value_heads", None)
            or c.num_attention_heads, "num_register_tokens": 0, "gate_position": "none",
            "attention_sink": "none", "bos_token_id": getattr(c, "bos_token_id", None),
            "attention_layers": list(range(c.num_hidden_layers))}


@torch.no_grad()
def analyze_model(model: nn.Module, input_ids, *, sink: str = "first", bos_token_id: int | None = None,
                  eps: float = SINK_EPS, map_layers: list[int] | None = None, map_size: int = 16,
                  top_k: int = 4, query_chunk: int = 256, key_chunk: int = 1024,
                  single_block: int = SINGLE_BLOCK, active_queries=None, progress: bool = True,
                  desc: str = "analyze") -> dict:
    """Attention-sink, massive-activation and gate statistics of ``model`` on ``input_ids`` ((T,) or (B, T)).

    ``map_layers`` (default: first, middle, last) get a head-averaged ``map_size`` x ``map_size``
    attention map of the first positions (registers included). Attention statistics are computed in one
    block up to ``single_block`` positions (registers included), else in query_chunk x key_chunk blocks
    (the same numbers). ``active_queries``: a bool mask shaped like the input marking the "active" queries
    (the rest are "dormant"). Keys are documented in docs/analysis.md.
    """
    info = _model_info(model)
    ids = torch.as_tensor(input_ids, dtype=torch.long)
    ids = ids[None] if ids.dim() == 1 else ids
    if ids.dim() != 2 or ids.shape[1] < 2:
        raise GatedAttnError(f"analysis needs at least 2 tokens per sequence, got input of shape {tuple(ids.shape)}")
    L, R = info["num_layers"], info["num_register_tokens"]
    attention_layers = info["attention_layers"]
    if not attention_layers:
        raise GatedAttnError("the model has no full_attention layer (model.layer_types); the sink probes read "
                             "attention weights")
    if active_queries is not None:
        active_queries = torch.as_tensor(active_queries, dtype=torch.bool)
        active_queries = active_queries[None] if active_queries.dim() == 1 else active_queries
        if active_queries.shape != ids.shape:
            raise GatedAttnError(f"active_queries has shape {tuple(active_queries.shape)}; it must match the "
                                 f"input's {tuple(ids.shape)}")
    sink_pos = _sink_positions(ids, sink, bos_token_id if bos_token_id is not None else info["bos_token_id"])
    if map_layers is None:
        n = len(attention_layers)
        map_layers = [attention_layers[0], attention_layers[n // 2], attention_layers[-1]]
    bad = [i for i in map_layers if not -L <= i < L]
    if bad:
        raise GatedAttnError(f"attention-map layers {bad} do not exist; the model has layers 0..{L - 1} "
                             "(negative counts from the end)")
    map_layers = sorted({i % L for i in map_layers})
    linear = [i for i in map_layers if i not in attention_layers]
    if linear:
        raise GatedAttnError(f"attention-map layers {linear} are linear_attention (Gated DeltaNet) and have no "
                             f"attention map; attention layers: {attention_layers}")
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    handles: list = []
    with tqdm(total=len(attention_layers), desc=desc, unit="layer", disable=not progress) as bar:
        rec = _Recorder(R, sink_pos, ids.shape[1], set(map_layers), map_size, top_k, query_chunk, key_chunk,
                        single_block, bar, active_queries)
        try:
            if isinstance(model, GatedLM):
                _register_gatedlm_probes(model, rec, handles)
                last = model.layers[-1]
            else:
                from .hf import decoder_layers, register_hf_probes

                register_hf_probes(model, rec.on_attention, rec.on_residual, handles, on_value=rec.on_value)
                last = decoder_layers(model)[-1]
            handles.append(last.register_forward_hook(_stop))
            try:
                if isinstance(model, GatedLM):
                    model(ids.to(device))
                else:
                    model(input_ids=ids.to(device), use_cache=False)
            except _StopForward:
                pass
        finally:
            for h in handles:
                h.remove()
            model.train(was_training)
    return _assemble(info, rec, ids, sink, sink_pos, eps)


def _per_layer(values: dict, layers: int | list[int], what: str) -> list:
    layers = range(layers) if isinstance(layers, int) else layers
    missing = [i for i in layers if i not in values]
    if missing:
        raise RuntimeError(f"no {what} recorded for layers {missing}")
    return [values[i] for i in layers]


def _assemble(info: dict, rec: _Recorder, ids: torch.Tensor, sink: str, sink_pos: torch.Tensor,
              eps: float) -> dict:
    # Attention statistics (shares, values, gates) are per full_attention layer (info["attention_layers"]);
    # residual-stream statistics per layer.
    L, A = info["num_layers"], info["attention_layers"]
    attn = _per_layer(rec.attn, A, "attention")
    share = torch.stack([a["first_token_share"] for a in attn]).cpu()  # L, H
    entropy = torch.stack([a["entropy"] for a in attn]).cpu()
    acts = _per_layer(rec.acts, L, "residual stream")
    out = {**info, "batch_size": ids.shape[0], "num_tokens": ids.shape[1], "sink": sink,
           "sink_position": sink_pos.tolist(), "queries_per_head": int(attn[0]["queries"]), "sink_eps": eps,
           "first_token_share": share.mean(1).tolist(), "first_token_share_per_head": share.tolist(),
           "f_attn": float(share.mean()), "heads_above_eps": (share > eps).float().mean(1).tolist(),
           "frac_heads_above_eps": float((share > eps).float().mean()),
           "entropy": entropy.mean(1).tolist(), "entropy_per_head": entropy.tolist(),
           "max_abs_activation": [a["max_abs"] for a in acts],
           "median_abs_activation": [a["median_abs"] for a in acts],
           "massive_activation_ratio": [a["ratio"] for a in acts],
           "top_activations": [a["top"] for a in acts],
           "m_act": sum(a["max_abs"] for a in acts) / L}
    out["sink_rate"] = out["frac_heads_above_eps"]  # Gu et al.'s name for it
    if "first_token_share_active" in attn[0]:
        for group in ("active", "dormant"):
            per_head = torch.stack([a[f"first_token_share_{group}"] for a in attn]).cpu()
            empty = int(attn[0][f"queries_{group}"]) == 0
            out[f"queries_{group}"] = int(attn[0][f"queries_{group}"])
            out[f"first_token_share_{group}"] = None if empty else per_head.mean(1).tolist()
            out[f"first_token_share_{group}_per_head"] = None if empty else per_head.tolist()
            out[f"f_attn_{group}"] = None if empty else float(per_head.mean())
            out[f"sink_rate_{group}"] = None if empty else float((per_head > eps).float().mean())
    values = _per_layer(rec.values, A, "value states")
    drain = torch.stack([v["ratio"] for v in values]).cpu()  # L, Hk
    out.update({"value_drain": drain.mean(1).tolist(), "value_drain_per_head": drain.tolist(),
                "value_first_norm_per_head": [v["first_norm"].tolist() for v in values],
                "value_median_norm_per_head": [v["median_norm"].tolist() for v in values]})
    resid = _per_layer(rec.resid_norms, L, "residual norms")
    out.update({"residual_peak": [float(r["ratio"]) for r in resid],
                "residual_first_norm": [float(r["first_norm"]) for r in resid],
                "residual_median_norm": [float(r["median_norm"]) for r in resid]})
    for key in ("register_share", "sink_peer_share"):
        if key in attn[0]:
            per_head = torch.stack([a[key] for a in attn]).cpu()
            out[key], out[f"{key}_per_head"] = per_head.mean(1).tolist(), per_head.tolist()
    if rec.reg_acts:
        out["register_max_abs_activation"] = _per_layer(rec.reg_acts, L, "register activation")
    if rec.attn_out:
        out["attn_out_mean_abs"] = _per_layer(rec.attn_out, A, "attention output")
        out["gated_out_mean_abs"] = _per_layer(rec.gated_out, A, "gated output")
    out["has_gate"] = bool(rec.gates)
    if rec.gates:
        g = _per_layer(rec.gates, A, "gate scores")
        out.update({"gate_mean": sum(x["mean"] for x in g) / len(A),
                    "gate_score_mean": [x["mean"] for x in g],
                    "gate_score_mean_per_head": [x["mean_per_head"].tolist() for x in g],
                    "gate_first_token_mean": [x["first_token_mean"] for x in g],
                    "gate_rest_mean": [x["rest_mean"] for x in g]})
        for t in THRESHOLDS:
            key = f"gate_frac_below_{str(t).replace('.', '_')}"
            out[key] = sum(x[f"frac_below_{t}"] for x in g) / len(A)
            out[f"{key}_per_layer"] = [x[f"frac_below_{t}"] for x in g]
            out[f"{key}_per_head"] = [x[f"frac_below_{t}_per_head"].tolist() for x in g]
        out["gate_histogram"] = {"edges": histogram_edges(),
                                 "counts": [sum(c) for c in zip(*(x["histogram"]["counts"] for x in g))],
                                 "below": sum(x["histogram"]["below"] for x in g),
                                 "above": sum(x["histogram"]["above"] for x in g)}
        out["gate_histogram_per_layer"] = [x["histogram"]["counts"] for x in g]
    if rec.selection:  # DSA layers (None for dense ones)
        for key in ("sink_slot_share", "sink_selection_rate", "selection_entropy", "selection_entropy_uniform",
                    "selection_frequency"):
            out[key] = [rec.selection[i][key] if i in rec.selection else None for i in range(L)]
    out["attention_maps"] = {str(i): rec.maps[i].cpu().tolist() for i in sorted(rec.maps)}
    return out
