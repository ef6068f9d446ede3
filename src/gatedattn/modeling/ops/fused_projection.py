"""The attention block's input projections (q, k, v and the gate logits) and QK-norm, as one matmul.

Under autograd all projections of X run as one matmul over their concatenated weights, rows reordered to
q | k | v | gate so that queries and keys come out side by side and are normed in one pass: the
concatenation is a small copy, and forward and backward each do one large matmul instead of three to five.
Without autograd (decoding) that copy would be paid per token, so the projections run apart, as they do
when a projection is not a plain nn.Linear (e.g. wrapped by an adapter library, which must run its own
forward). Both paths compute the same function from the same parameters.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..norm import RMSNorm, rms_norm


def project_qkv_gate(x: torch.Tensor, q_proj: nn.Module, k_proj: nn.Module, v_proj: nn.Module,
                     gate_proj: nn.Module | None, q_norm: RMSNorm | None, k_norm: RMSNorm | None,
                     num_heads: int, num_kv_heads: int,
                     head_dim: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """x (B, T, d_model) -> (queries and keys side by side after QK-norm (B, T, H + Hk, D), values
    (B, T, Hk, D), gate logits (B, T, gate features) or None).

    ``q_proj`` may be widened by the gate's rows (``[queries | gate logits]``, the fused gate); otherwise the
    logits come from ``gate_proj``, the gate's own projection, when there is one. ``q_norm``/``k_norm``:
    per-head RMSNorms, or None without QK-norm.
    """
    H, Hk, D = num_heads, num_kv_heads, head_dim
    projections = (q_proj, k_proj, v_proj) + ((gate_proj,) if gate_proj is not None else ())
    if not (torch.is_grad_enabled() and all(type(m) is nn.Linear for m in projections)):
        return _separate(x, q_proj, k_proj, v_proj, gate_proj, q_norm, k_norm, H, Hk, D)
    wq, bq = q_proj.weight, q_proj.bias
    weight = torch.cat([wq[:H * D], k_proj.weight, v_proj.weight, wq[H * D:]]
                       + ([gate_proj.weight] if gate_proj is not None else []))
    bias = None
    if bq is not None:  # qkv_bias; the gate's own projection has none
        bias = torch.cat([bq[:H * D], k_proj.bias, v_proj.bias, bq[H * D:]]
                         + ([bq.new_zeros(gate_proj.out_features)] if gate_proj is not None else []))
    y = F.linear(x, weight, bias)
    sizes = [(H + Hk) * D, Hk * D, y.shape[-1] - (H + 2 * Hk) * D]
    qk, v, logits = y.split(sizes, -1)  # split, not slices: its backward is one concatenation
    qk = qk.unflatten(-1, (H + Hk, D))
    if q_norm is not None:
        norm_weight = torch.cat([q_norm.scale.expand(H, -1), k_norm.scale.expand(Hk, -1)])
        qk = rms_norm(qk, norm_weight, q_norm.eps)
    return qk, v.unflatten(-1, (Hk, D)), logits if sizes[2] else None


def _separate(x, q_proj, k_proj, v_proj, gate_proj, q_norm, k_norm, H, Hk, D):
    """The same function, one call per projection (each module runs its own forward)."""
    q = q_proj(x)
    logits = q[..., H * D:] if q.shape[-1] > H * D else (gate_proj(x) if gate_proj is not None else None)
    q, k = q[..., :H * D].unflatten(-1, (H, D)), k_proj(x).unflatten(-1, (Hk, D))
    if q_norm is not None:
        q, k = q_norm(q), k_norm(k)
    return torch.cat([q, k], 2), v_proj(x).unflatten(-1, (Hk, D)), logits
