"""Configs and weights between GatedLM and HF transformers' Qwen3-Next: gated full-attention layers and Gated
DeltaNet (``linear_attention``) layers, in any pattern (``model.layer_types``).

A Qwen3-Next full-attention layer is our G1 gate (elementwise, head-specific, multiplicative sigmoid, no
bias, from the query token's X) with QK-norm; its norms are zero-centred (``(1 + w) * x / rms(x)``, ours
with ``model.norm_zero_centered``, else converted as ``w - 1``); its MoE has a shared expert behind a
sigmoid gate (``moe.shared_expert_gate``); RoPE may be partial (``rope.partial_rotary_factor``, 0.25 in the
released models).

Weights, per layer i (ours <-> HF ``model.layers.{i}.``): attn_norm <-> input_layernorm, ffn_norm <->
post_attention_layernorm, attn.q_proj (queries, then the gate's rows, ours) <-> self_attn.q_proj (per head
``[q_h | gate_h]``, the ``qwen3_next`` row layout of layout.py), attn.{k,v,o}_proj, attn.{q,k}_norm <->
self_attn.*; dense ffn.* <-> mlp.*; MoE: router <-> mlp.gate, w_gate/w_up (E, d, I) <-> mlp.experts.
gate_up_proj (E, 2I, d), w_down (E, I, d) <-> mlp.experts.down_proj (E, d, I), shared_expert(_gate) <->
mlp.shared_expert(_gate). HF's ``attention_bias`` puts biases on q, k, v and o alike: ours are
``attention.qkv_bias`` and ``attention.o_bias``, and the one we lack is written as zeros.

Gated DeltaNet layers: linear_attn.{conv1d, dt_bias, A_log, norm, out_proj} are the same tensors (the gated
RMSNorm's weight is plain in both); HF's in_proj_qkvz holds, per key head h, ``[q_h | k_h | v_group(h) |
z_group(h)]`` and in_proj_ba ``[b_group(h) | a_group(h)]``, where group(h) are the value heads key head h
serves; ours are ``[q | k | v | z]`` and ``[b | a]`` (deltanet.py). The chunk size is ours only (the
function does not depend on it).
"""

from __future__ import annotations

import torch

from ..config import ModelConfig, model_config_from_dict
from ..errors import GatedAttnError
from .hf_convert import hf_model_with, hf_rope_parameters, rope_from_hf
from .layout import from_layout, to_layout
from .model import GatedLM

FULL_ATTENTION, LINEAR_ATTENTION = "full_attention", "linear_attention"
_NORMS = ("attn_norm", "ffn_norm")
_HF_NORMS = {"attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm"}


def qwen3_next_blockers(cfg: ModelConfig) -> list[str]:
    """What in ``cfg`` a Qwen3-Next full-attention model cannot represent (empty: it exports exactly)."""
    a, g, m = cfg.attention, cfg.attention.gate, cfg.moe
    wanted = (("attention.gate.position", g.position, "g1"), ("attention.gate.granularity", g.granularity,
              "elementwise"), ("attention.gate.shared_across_heads", g.shared_across_heads, False),
              ("attention.gate.combine", g.combine, "multiply"), ("attention.gate.activation", g.activation,
              "sigmoid"), ("attention.gate.input_dependent", g.input_dependent, True),
              ("attention.gate.bias", g.bias, False), ("attention.qk_norm", a.qk_norm, True),
              ("attention.sink", a.sink, "none"), ("attention.num_register_tokens", a.num_register_tokens, 0),
              ("attention.output_nonlinearity", a.output_nonlinearity, "none"),
              ("sandwich_norm", cfg.sandwich_norm, False))
    blockers = [f"{key}={value!r}" for key, value, plain in wanted if value != plain]
    if a.sparse is not None:
        blockers.append("attention.sparse (DSA)")
    if m.num_experts and not m.shared_expert_gate:
        blockers.append("an MoE without moe.shared_expert_gate (Qwen3-Next's shared expert sits behind a sigmoid "
                        "gate)")
    return blockers


def to_qwen3_next_config(cfg: ModelConfig, **overrides):
    """The HF ``Qwen3NextConfig`` computing the same function as ``cfg``."""
    from transformers import Qwen3NextConfig

    blockers = qwen3_next_blockers(cfg)
    if blockers:
        raise GatedAttnError(f"Qwen3-Next cannot represent {', '.join(blockers)}; it has a G1 elementwise "
                             "sigmoid gate with QK-norm and no sink peers")
    a, m, la = cfg.attention, cfg.moe, cfg.linear_attention
    rope, max_pos = hf_rope_parameters(cfg)
    rope["partial_rotary_factor"] = cfg.rope.partial_rotary_factor  # Qwen3-Next's default is 0.25: always say
    kwargs = dict(
        vocab_size=cfg.vocab_size, hidden_size=cfg.d_model, intermediate_size=cfg.ffn_dim,
        num_hidden_layers=cfg.num_layers, num_attention_heads=a.num_heads, num_key_value_heads=a.num_kv_heads,
        head_dim=a.head_dim, hidden_act="silu", max_position_embeddings=max_pos, rms_norm_eps=cfg.norm_eps,
        initializer_range=cfg.initializer_range, tie_word_embeddings=cfg.tie_embeddings,
        bos_token_id=cfg.bos_token_id, eos_token_id=cfg.eos_token_id, rope_parameters=rope,
        attention_bias=a.qkv_bias or a.o_bias, layer_types=cfg.resolved_layer_types,
        linear_num_key_heads=la.num_key_heads, linear_num_value_heads=la.num_value_heads,
        linear_key_head_dim=la.key_head_dim, linear_value_head_dim=la.value_head_dim,
        linear_conv_kernel_dim=la.conv_kernel_size,
        num_experts=m.num_experts, num_experts_per_tok=m.top_k, moe_intermediate_size=m.expert_ffn_dim,
        shared_expert_intermediate_size=m.shared_expert_ffn_dim, norm_topk_prob=m.norm_topk_prob,
        decoder_sparse_step=1, mlp_only_layers=[], router_aux_loss_coef=m.load_balance_coef)
    kwargs.update(overrides)
    return Qwen3NextConfig(**kwargs)


@torch.no_grad()
def to_qwen3_next_state_dict(model: GatedLM) -> dict[str, torch.Tensor]:
    """Our weights under Qwen3-Next's names and layouts (new tensors where a layout or norm changes)."""
    cfg = model.config
    a = cfg.attention
    H, K, D = a.num_heads, a.num_kv_heads, a.head_dim
    bias = a.qkv_bias or a.o_bias

    def norm(w):  # HF applies (1 + w)
        return w.clone() if cfg.norm_zero_centered else w - 1

    out = {"model.embed_tokens.weight": model.embed.weight, "model.norm.weight": norm(model.norm.weight)}
    if not cfg.tie_embeddings:
        out["lm_head.weight"] = model.lm_head.weight
    for i, layer in enumerate(model.layers):
        p = f"model.layers.{i}."
        for ours in _NORMS:
            out[f"{p}{_HF_NORMS[ours]}.weight"] = norm(getattr(layer, ours).weight)
        _ffn_to_hf(cfg, layer.ffn, p, out)
        if layer.layer_type == LINEAR_ATTENTION:
            _deltanet_to_hf(layer.linear_attn, f"{p}linear_attn.", out)
            continue
        attn = layer.attn
        gate_rows = attn.q_proj.weight[H * D:] if attn.fused_gate else attn.gate.proj.weight
        q = torch.cat([attn.q_proj.weight[:H * D], gate_rows])
        out[f"{p}self_attn.q_proj.weight"] = to_layout(q, "qwen3_next", H, K, D, D)
        out[f"{p}self_attn.k_proj.weight"] = attn.k_proj.weight
        out[f"{p}self_attn.v_proj.weight"] = attn.v_proj.weight
        out[f"{p}self_attn.o_proj.weight"] = attn.o_proj.weight
        if bias:
            zeros = attn.o_proj.weight.new_zeros
            qb = attn.q_proj.bias if a.qkv_bias else zeros(H * D)
            qb = torch.cat([qb, zeros(2 * H * D - qb.shape[0])])  # an unfused gate has no bias rows
            out[f"{p}self_attn.q_proj.bias"] = to_layout(qb, "qwen3_next", H, K, D, D)
            for name, rows in (("k_proj", K * D), ("v_proj", K * D)):
                out[f"{p}self_attn.{name}.bias"] = getattr(attn, name).bias if a.qkv_bias else zeros(rows)
            out[f"{p}self_attn.o_proj.bias"] = attn.o_proj.bias if a.o_bias else zeros(cfg.d_model)
        out[f"{p}self_attn.q_norm.weight"] = norm(attn.q_norm.weight)
        out[f"{p}self_attn.k_norm.weight"] = norm(attn.k_norm.weight)
    return out


def _ffn_to_hf(cfg: ModelConfig, ffn, p: str, out: dict) -> None:
    if cfg.moe.num_experts:
        out[f"{p}mlp.gate.weight"] = ffn.router.weight
        out[f"{p}mlp.experts.gate_up_proj"] = torch.cat([ffn.w_gate, ffn.w_up], 2).transpose(1, 2).contiguous()
        out[f"{p}mlp.experts.down_proj"] = ffn.w_down.transpose(1, 2).contiguous()
        for name in ("gate_proj", "up_proj", "down_proj"):
            out[f"{p}mlp.shared_expert.{name}.weight"] = getattr(ffn.shared_expert, name).weight
        out[f"{p}mlp.shared_expert_gate.weight"] = ffn.shared_expert_gate.weight
    else:
        for name in ("gate_proj", "up_proj", "down_proj"):
            out[f"{p}mlp.{name}.weight"] = getattr(ffn, name).weight


_DELTANET_SAME = ("conv1d.weight", "dt_bias", "A_log", "norm.weight", "out_proj.weight")


def _deltanet_split(net) -> tuple[list[int], list[int]]:
    """Rows per key head of in_proj_qkvz ([q, k, v group, z group]) and of in_proj_ba ([b group, a group])."""
    group = net.num_v_heads // net.num_k_heads
    return [net.k_head_dim, net.k_head_dim, group * net.v_head_dim, group * net.v_head_dim], [group, group]


def _deltanet_to_hf(net, p: str, out: dict) -> None:
    Hk, d = net.num_k_heads, net.out_proj.out_features
    qkvz_rows, ba_rows = _deltanet_split(net)
    parts = net.in_proj_qkvz.weight.split([r * Hk for r in qkvz_rows])  # ours: [q | k | v | z]
    out[f"{p}in_proj_qkvz.weight"] = torch.cat([x.reshape(Hk, -1, d) for x in parts], 1).reshape(-1, d)
    parts = net.in_proj_ba.weight.split([r * Hk for r in ba_rows])  # ours: [b | a]
    out[f"{p}in_proj_ba.weight"] = torch.cat([x.reshape(Hk, -1, d) for x in parts], 1).reshape(-1, d)
    for name in _DELTANET_SAME:
        out[p + name] = net.get_parameter(name)


def _deltanet_from_hf(net, p: str, hf_state: dict, q: str, state: dict) -> None:
    Hk = net.num_k_heads
    qkvz_rows, ba_rows = _deltanet_split(net)
    for name, rows in (("in_proj_qkvz.weight", qkvz_rows), ("in_proj_ba.weight", ba_rows)):
        w = hf_state[p + name]
        parts = w.reshape(Hk, -1, w.shape[-1]).split(rows, 1)
        state[q + name] = torch.cat([x.reshape(-1, w.shape[-1]) for x in parts])
    for name in _DELTANET_SAME:
        state[q + name] = hf_state[p + name]


@torch.no_grad()
def to_qwen3_next(model: GatedLM, **config_overrides):
    """An HF ``Qwen3NextForCausalLM`` with our weights, in our dtype and on our device."""
    return hf_model_with(model, to_qwen3_next_config(model.config, **config_overrides),
                         to_qwen3_next_state_dict(model))


def from_qwen3_next_config(hf_config) -> ModelConfig:
    """Our config for an HF Qwen3-Next config."""
    layer_types = list(hf_config.layer_types)
    unknown = sorted({t for t in layer_types} - {FULL_ATTENTION, LINEAR_ATTENTION})
    if unknown:
        raise GatedAttnError(f"Qwen3-Next layer type {unknown[0]!r} has no GatedLM counterpart; allowed: "
                             f"{FULL_ATTENTION}, {LINEAR_ATTENTION}")
    if getattr(hf_config, "hidden_act", "silu") != "silu":
        raise GatedAttnError("only SwiGLU MLPs (hidden_act=silu) convert to a GatedLM")
    experts = int(hf_config.num_experts or 0)
    dense = [i for i in range(hf_config.num_hidden_layers)
             if i in (hf_config.mlp_only_layers or []) or (i + 1) % hf_config.decoder_sparse_step]
    if experts and dense:
        raise GatedAttnError(f"Qwen3-Next layers {dense} are dense among MoE layers; a GatedLM is all MoE or all "
                             "dense")
    bias = bool(hf_config.attention_bias)

    def token_id(value) -> int:
        value = value[0] if isinstance(value, (list, tuple)) else value
        return 0 if value is None else int(value)

    moe = dict(num_experts=experts, top_k=hf_config.num_experts_per_tok, expert_ffn_dim=hf_config.moe_intermediate_size,
               shared_expert_ffn_dim=hf_config.shared_expert_intermediate_size, shared_expert_gate=True,
               norm_topk_prob=bool(hf_config.norm_topk_prob), load_balance_coef=float(hf_config.router_aux_loss_coef)
               ) if experts else {}
    rope = rope_from_hf(hf_config)
    return model_config_from_dict(dict(
        vocab_size=hf_config.vocab_size, d_model=hf_config.hidden_size, num_layers=hf_config.num_hidden_layers,
        ffn_dim=hf_config.intermediate_size, max_position_embeddings=hf_config.max_position_embeddings,
        norm_eps=float(hf_config.rms_norm_eps), tie_embeddings=bool(hf_config.tie_word_embeddings),
        norm_zero_centered=True, initializer_range=float(getattr(hf_config, "initializer_range", 0.02)),
        bos_token_id=token_id(hf_config.bos_token_id), eos_token_id=token_id(hf_config.eos_token_id),
        attention=dict(num_heads=hf_config.num_attention_heads, num_kv_heads=hf_config.num_key_value_heads,
                       head_dim=hf_config.head_dim, qk_norm=True, qkv_bias=bias, o_bias=bias,
                       gate=dict(position="g1", granularity="elementwise")),
        rope=dict(theta=rope.theta, partial_rotary_factor=rope.partial_rotary_factor,
                  scaling=rope.scaling.to_hf_dict() if rope.scaling is not None else None),
        moe=moe, layer_types=layer_types,
        linear_attention=dict(num_key_heads=hf_config.linear_num_key_heads,
                              num_value_heads=hf_config.linear_num_value_heads,
                              key_head_dim=hf_config.linear_key_head_dim,
                              value_head_dim=hf_config.linear_value_head_dim,
                              conv_kernel_size=hf_config.linear_conv_kernel_dim)))


@torch.no_grad()
def from_qwen3_next(hf_model) -> GatedLM:
    """A GatedLM with the weights of an HF ``Qwen3NextForCausalLM``."""
    cfg = from_qwen3_next_config(hf_model.config)
    model = GatedLM(cfg)
    param = next(hf_model.parameters())
    model = model.to(device=param.device, dtype=param.dtype)
    theirs = to_qwen3_next_state_dict(model)  # the names and shapes to fill
    hf_state = hf_model.state_dict()
    if cfg.tie_embeddings:
        hf_state.pop("lm_head.weight", None)
    missing = sorted(set(theirs) - set(hf_state))
    if missing:
        raise GatedAttnError(f"HF Qwen3-Next has no weight {missing[0]}")
    a = cfg.attention
    H, K, D = a.num_heads, a.num_kv_heads, a.head_dim
    state = {}
    for i in range(cfg.num_layers):
        p, q = f"model.layers.{i}.", f"layers.{i}."
        for ours in _NORMS:
            state[f"{q}{ours}.weight"] = hf_state[f"{p}{_HF_NORMS[ours]}.weight"]
        _ffn_from_hf(cfg, p, hf_state, q, state)
        if model.layers[i].layer_type == LINEAR_ATTENTION:
            _deltanet_from_hf(model.layers[i].linear_attn, f"{p}linear_attn.", hf_state, f"{q}linear_attn.", state)
            continue
        state[f"{q}attn.q_proj.weight"] = from_layout(hf_state[f"{p}self_attn.q_proj.weight"], "qwen3_next", H, K,
                                                      D, D)
        for name in ("k_proj", "v_proj", "o_proj"):
            state[f"{q}attn.{name}.weight"] = hf_state[f"{p}self_attn.{name}.weight"]
        if a.qkv_bias:
            state[f"{q}attn.q_proj.bias"] = from_layout(hf_state[f"{p}self_attn.q_proj.bias"], "qwen3_next", H, K,
                                                        D, D)
            for name in ("k_proj", "v_proj", "o_proj"):
                state[f"{q}attn.{name}.bias"] = hf_state[f"{p}self_attn.{name}.bias"]
        for name in ("q_norm", "k_norm"):
            state[f"{q}attn.{name}.weight"] = hf_state[f"{p}self_attn.{name}.weight"]
    state["embed.weight"] = hf_state["model.embed_tokens.weight"]
    state["norm.weight"] = hf_state["model.norm.weight"]
    state["lm_head.weight"] = state["embed.weight"] if cfg.tie_embeddings else hf_state["lm_head.weight"]
    model.load_state_dict({k: v.contiguous() for k, v in state.items()})
    return model.eval()


def _ffn_from_hf(cfg: ModelConfig, p: str, hf_state: dict, q: str, state: dict) -> None:
    if cfg.moe.num_experts:
        state[f"{q}ffn.router.weight"] = hf_state[f"{p}mlp.gate.weight"]
        gate_up = hf_state[f"{p}mlp.experts.gate_up_proj"].transpose(1, 2)  # (E, d, 2I)
        state[f"{q}ffn.w_gate"], state[f"{q}ffn.w_up"] = gate_up.chunk(2, dim=2)
        state[f"{q}ffn.w_down"] = hf_state[f"{p}mlp.experts.down_proj"].transpose(1, 2)
        for name in ("gate_proj", "up_proj", "down_proj"):
            state[f"{q}ffn.shared_expert.{name}.weight"] = hf_state[f"{p}mlp.shared_expert.{name}.weight"]
        state[f"{q}ffn.shared_expert_gate.weight"] = hf_state[f"{p}mlp.shared_expert_gate.weight"]
    else:
        for name in ("gate_proj", "up_proj", "down_proj"):
            state[f"{q}ffn.{name}.weight"] = hf_state[f"{p}mlp.{name}.weight"]


__all__ = ["from_qwen3_next", "from_qwen3_next_config", "qwen3_next_blockers", "to_qwen3_next",
           "to_qwen3_next_config", "to_qwen3_next_state_dict"]
