"""Parameter and FLOP counts of a config, computed on the meta device (no memory even for 15B models).

FLOPs per token (forward) = 2 x (active matmul parameters, LM head included, embedding lookup excluded)
+ attention scores and weighted sum, 2 x 2 x heads x head_dim per attended key, with a causal query
attending to (seq_len + 1) / 2 keys on average, + a Gated DeltaNet layer's state update (independent of the
context). A training step costs about 3x the forward.
"""

from __future__ import annotations

import copy

import torch

from ..config import ModelConfig
from .model import GatedLM


def _build_meta(cfg: ModelConfig) -> GatedLM:
    with torch.device("meta"):
        return GatedLM(cfg)


def _count(model: GatedLM) -> int:
    return sum(p.numel() for p in model.parameters())  # parameters() yields tied weights once


def model_stats(cfg: ModelConfig, seq_len: int = 2048) -> dict:
    model = _build_meta(cfg)
    total = _count(model)
    ungated_cfg = copy.deepcopy(cfg)
    ungated_cfg.attention.gate.position = "none"
    gate_added = total - _count(_build_meta(ungated_cfg))
    m, a = cfg.moe, cfg.attention
    inactive = 0
    if m.num_experts:
        inactive = cfg.num_layers * (m.num_experts - m.top_k) * 3 * cfg.d_model * m.expert_ffn_dim
    active = total - inactive
    embed = model.embed.weight.numel()
    matmul_active = active - embed + (embed if cfg.tie_embeddings else 0)  # the head is a matmul either way
    matmul_active -= sum(p.numel() for n, p in model.named_parameters() if "norm" in n or "register" in n
                         or "sink_logit" in n or n.endswith("gate.vector") or n.endswith("gate.bias"))
    types = cfg.resolved_layer_types
    n_attn, n_linear = types.count("full_attention"), types.count("linear_attention")
    la = cfg.linear_attention
    # A Gated DeltaNet layer's recurrence per token, whatever the context: decay, read, correct and write the
    # (key_head_dim x value_head_dim) state of each value head, about 4 multiply-adds per state entry.
    linear_flops = n_linear * 2 * 4 * la.num_value_heads * la.key_head_dim * la.value_head_dim
    attn_flops = n_attn * 4 * a.num_heads * a.head_dim * (seq_len + 1) / 2 + linear_flops
    forward = 2 * matmul_active + attn_flops
    layer0 = {n.removeprefix("layers.0."): list(p.shape) for n, p in model.named_parameters()
              if n.startswith("layers.0.")}
    return {
        "total_params": total,
        "active_params": active,
        "embedding_params": embed if cfg.tie_embeddings else 2 * embed,
        "gate_added_params": gate_added,
        "gate_added_params_per_layer": gate_added // max(n_attn, 1),  # per gated (full-attention) layer
        "seq_len": seq_len,
        "forward_flops_per_token": forward,
        "train_flops_per_token": 3 * forward,
        "gate_flop_share": 2 * gate_added / forward if forward else 0.0,
        "layer_shapes": layer0,
    }


TRAIN_STATE_BYTES_PER_PARAM = 16  # fp32 weights, gradients and AdamW's two moments


def training_memory(cfg: ModelConfig, ranks: int) -> dict:
    """Bytes of training state (weights, gradients, AdamW moments, all fp32) per rank, whole (one process or
    DDP: every rank holds all of it) and sharded by FSDP over ``ranks``; and the largest FSDP unit (a block,
    or the root: embeddings, final norm, head), whose whole fp32 weights and gradients a rank holds at once
    while it computes that unit. Activations are extra: they grow with batch x sequence length."""
    model = _build_meta(cfg)
    total = _count(model)
    blocks = [sum(p.numel() for p in layer.parameters()) for layer in model.layers]
    root = total - sum(blocks)
    return {"ranks": ranks, "whole_state_bytes": TRAIN_STATE_BYTES_PER_PARAM * total,
            "fsdp_state_bytes_per_rank": TRAIN_STATE_BYTES_PER_PARAM * total / ranks,
            "largest_unit_params": max([root, *blocks]), "largest_unit_bytes": 8 * max([root, *blocks])}
