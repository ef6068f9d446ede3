"""Reading post-RoPE queries and keys out of HF transformers causal LMs, without touching their code.

A forward pre-hook (with kwargs) on each attention module gets its input hidden states and
``position_embeddings=(cos, sin)`` and recomputes q, k, v from the module's own projections, QK-norms and
its family's ``apply_rotary_pos_emb`` (Llama, Mistral, Qwen2/Qwen3, ...), or from ``c_attn`` (GPT-2, no
RoPE). This works whatever ``attn_implementation`` the model was loaded with. A guard makes it safe for
families we have not seen: a pre-hook on the output projection compares the model's real attention
output at a few query rows with softmax(q k^T) v from the recomputed tensors, and stops with a clear
error if they disagree (e.g. logit soft-capping, a different scale).
"""

from __future__ import annotations

import sys

import torch
from torch import nn

from ..errors import GatedAttnError
from .attention import allowed_keys

CHECK_ROWS = 3  # query rows compared against the model's own attention output, per layer
CHECK_RTOL = {torch.float64: 2e-3, torch.float32: 2e-3, torch.bfloat16: 5e-2, torch.float16: 2e-2}


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The ModuleList of decoder blocks (model.model.layers, transformer.h, ...)."""
    n = model.config.num_hidden_layers
    for _, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) == n:
            return module
    raise GatedAttnError(f"cannot find the {n} decoder layers of {type(model).__name__}")


def attention_module(layer: nn.Module) -> nn.Module:
    for name in ("self_attn", "attn", "attention"):
        if isinstance(getattr(layer, name, None), nn.Module):
            return getattr(layer, name)
    raise GatedAttnError(f"cannot find the attention module of {type(layer).__name__} "
                         "(looked for self_attn, attn, attention)")


def _heads(x: torch.Tensor, head_dim: int) -> torch.Tensor:
    return x.view(*x.shape[:-1], -1, head_dim).transpose(1, 2)


def qkv(attn: nn.Module, args: tuple, kwargs: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """q (B, H, T, D), k and v (B, Hk, T, D) of one attention call, q and k post-RoPE."""
    h = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
    D = attn.head_dim
    if all(hasattr(attn, n) for n in ("q_proj", "k_proj", "v_proj", "o_proj")):
        q, k = attn.q_proj(h).view(*h.shape[:-1], -1, D), attn.k_proj(h).view(*h.shape[:-1], -1, D)
        if getattr(attn, "q_norm", None) is not None:  # Qwen3-style QK-norm over each head
            q, k = attn.q_norm(q), attn.k_norm(k)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), _heads(attn.v_proj(h), D)
        pe = kwargs.get("position_embeddings", args[1] if len(args) > 1 else None)
        if pe is not None:
            rotary = getattr(sys.modules[type(attn).__module__], "apply_rotary_pos_emb", None)
            if rotary is None:
                raise GatedAttnError(f"{type(attn).__name__}: its module has no apply_rotary_pos_emb")
            q, k = rotary(q, k, *pe)
        return q, k, v
    if hasattr(attn, "c_attn") and hasattr(attn, "c_proj"):  # GPT-2: fused qkv, learned absolute positions
        q, k, v = attn.c_attn(h).split(attn.split_size, dim=2)
        return _heads(q, D), _heads(k, D), _heads(v, D)
    raise GatedAttnError(f"cannot read queries and keys of {type(attn).__name__}: supported are attention "
                         "modules with q_proj/k_proj/v_proj/o_proj (+ q_norm/k_norm, RoPE) or GPT-2's c_attn")


def sink_logit(attn: nn.Module) -> torch.Tensor | None:
    s = getattr(attn, "sinks", None)  # gpt-oss: one learned sink logit per head
    return s if isinstance(s, torch.Tensor) else None


def check_rows(q, k, v, scale, sink, window, actual: torch.Tensor, name: str) -> None:
    """Compare the model's attention output (B, T, H*D) at a few rows with one from q, k, v."""
    T = q.shape[2]
    rows = torch.unique(torch.linspace(0, T - 1, CHECK_ROWS, device=q.device).round().long())
    groups = q.shape[1] // k.shape[1]
    kk, vv = k.repeat_interleave(groups, 1).float(), v.repeat_interleave(groups, 1).float()
    s = q[:, :, rows].float() @ kk.transpose(-1, -2) * scale  # B, H, r, T
    s = s.masked_fill(~allowed_keys(rows, torch.arange(T, device=q.device), window), float("-inf"))
    if sink is not None:
        s = torch.cat([s, sink.float().view(1, -1, 1, 1).expand(*s.shape[:-1], 1)], -1)
    ref = (torch.softmax(s, -1)[..., :T] @ vv).transpose(1, 2).flatten(2)  # B, r, H*D
    got = actual[:, rows].float()
    err = float((ref - got).abs().max() / got.abs().max().clamp_min(1e-6))
    if not err <= CHECK_RTOL.get(actual.dtype, 5e-2):  # the model's own output is rounded to its dtype
        raise GatedAttnError(f"{name}: attention recomputed from its q_proj/k_proj does not match the model's "
                             f"own (relative error {err:.1e}); this architecture is not supported")


def register_hf_probes(model: nn.Module, on_attention, on_residual, handles: list, on_value=None) -> None:
    """Add to ``handles`` hooks calling ``on_attention(i, q, k, scale, sink_logit, window)``,
    ``on_residual(i, h)`` (h: the residual stream after block i) and, if given, ``on_value(i, v)`` (v: the
    value states, (B, Hk, T, D))."""
    for i, layer in enumerate(decoder_layers(model)):
        attn = attention_module(layer)
        pending = {}

        def before_attn(module, args, kwargs, i=i, pending=pending):
            q, k, v = qkv(module, args, kwargs)
            pending.update(q=q, k=k, v=v, scale=module.scaling, sink=sink_logit(module),
                           window=getattr(module, "sliding_window", None))
            on_attention(i, q, k, pending["scale"], pending["sink"], pending["window"])
            if on_value is not None:
                on_value(i, v)

        def before_out_proj(module, args, name=type(attn).__name__, pending=pending):
            if pending:  # the call that follows this layer's attention pre-hook
                check_rows(**pending, actual=args[0], name=name)
                pending.clear()

        def after_layer(module, args, output, i=i):
            on_residual(i, output[0] if isinstance(output, tuple) else output)

        handles += [attn.register_forward_pre_hook(before_attn, with_kwargs=True),
                    output_projection(attn).register_forward_pre_hook(before_out_proj),
                    layer.register_forward_hook(after_layer)]


def output_projection(attn: nn.Module) -> nn.Module:
    for name in ("o_proj", "c_proj"):
        if isinstance(getattr(attn, name, None), nn.Module):
            return getattr(attn, name)
    raise GatedAttnError(f"cannot find the output projection of {type(attn).__name__} (o_proj or c_proj)")
