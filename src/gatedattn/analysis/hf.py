"""Reading post-RoPE queries and keys out of HF transformers causal LMs, without touching their code.

Forward hooks keep the outputs of each attention module's projections (its QK-norms where it has them,
GPT-2's ``c_attn``) as its forward computes them, and a pre-hook keeps ``position_embeddings=(cos, sin)``;
q and k are then rotated with the family's own ``apply_rotary_pos_emb`` (Llama, Mistral, Qwen2/Qwen3, ...),
so nothing but RoPE is computed twice. This works whatever ``attn_implementation`` the model was loaded
with. A guard makes it safe for families we have not seen: a pre-hook on the output projection compares
the model's real attention output at a few query rows with softmax(q k^T) v from these tensors, and stops
with a clear error if they disagree (e.g. logit soft-capping, a different scale).
"""

from __future__ import annotations

import functools
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
    """(B, T, H * D) or (B, T, H, D) -> (B, H, T, D)."""
    return x.reshape(*x.shape[:2], -1, head_dim).transpose(1, 2)


def capture_points(attn: nn.Module) -> list[str]:
    """The submodules of an attention module whose outputs are its q, k and v on their way in (the QK-norms
    where there are some), or GPT-2's fused ``c_attn``."""
    if all(hasattr(attn, n) for n in ("q_proj", "k_proj", "v_proj", "o_proj")):
        normed = isinstance(getattr(attn, "q_norm", None), nn.Module)  # Qwen3-style QK-norm over each head
        return ["q_norm", "k_norm", "v_proj"] if normed else ["q_proj", "k_proj", "v_proj"]
    if hasattr(attn, "c_attn") and hasattr(attn, "c_proj"):  # GPT-2: fused qkv, learned absolute positions
        return ["c_attn"]
    raise GatedAttnError(f"cannot read queries and keys of {type(attn).__name__}: supported are attention "
                         "modules with q_proj/k_proj/v_proj/o_proj (+ q_norm/k_norm, RoPE) or GPT-2's c_attn")


def qkv(attn: nn.Module, seen: dict, position_embeddings) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """q (B, H, T, D), k and v (B, Hk, T, D) of one attention call, q and k post-RoPE, from the outputs its
    forward computed (``seen``: capture point -> output) and the (cos, sin) it was given."""
    D = attn.head_dim
    if "c_attn" in seen:
        return tuple(_heads(x, D) for x in seen["c_attn"].split(attn.split_size, dim=2))
    q, k, v = (_heads(seen[name], D) for name in capture_points(attn))
    if position_embeddings is not None:
        rotary = getattr(sys.modules[type(attn).__module__], "apply_rotary_pos_emb", None)
        if rotary is None:
            raise GatedAttnError(f"{type(attn).__name__}: its module has no apply_rotary_pos_emb")
        q, k = rotary(q, k, *position_embeddings)
    return q, k, v


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
        seen: dict = {}

        def before_attn(module, args, kwargs, seen=seen):
            seen.clear()
            seen["position_embeddings"] = kwargs.get("position_embeddings", args[1] if len(args) > 1 else None)

        def keep(module, args, output, name, seen=seen):
            seen[name] = output

        def before_out_proj(module, args, i=i, attn=attn, seen=seen):
            if "position_embeddings" not in seen:  # not the call that follows this layer's attention
                return
            q, k, v = qkv(attn, seen, seen.pop("position_embeddings"))
            seen.clear()
            scale, sink, window = attn.scaling, sink_logit(attn), getattr(attn, "sliding_window", None)
            on_attention(i, q, k, scale, sink, window)
            if on_value is not None:
                on_value(i, v)
            check_rows(q, k, v, scale, sink, window, actual=args[0], name=type(attn).__name__)

        handles += [attn.register_forward_pre_hook(before_attn, with_kwargs=True),
                    output_projection(attn).register_forward_pre_hook(before_out_proj),
                    layer.register_forward_hook(lambda m, a, o, i=i: on_residual(i, o[0] if isinstance(o, tuple)
                                                                                   else o))]
        handles += [getattr(attn, name).register_forward_hook(functools.partial(keep, name=name))
                    for name in capture_points(attn)]


def output_projection(attn: nn.Module) -> nn.Module:
    for name in ("o_proj", "c_proj"):
        if isinstance(getattr(attn, name, None), nn.Module):
            return getattr(attn, name)
    raise GatedAttnError(f"cannot find the output projection of {type(attn).__name__} (o_proj or c_proj)")
