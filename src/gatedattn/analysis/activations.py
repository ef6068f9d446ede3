"""Massive activations: the largest |hidden| entries of the residual stream after a block.

Sun et al. (2024) and the gated-attention paper measure them per layer; the paper's M-Act is the mean over
layers of the per-layer max |hidden|.
"""

from __future__ import annotations

import torch


@torch.no_grad()
def activation_stats(h: torch.Tensor, top_k: int = 4) -> dict:
    """h (B, T, d): max |h|, the ``top_k`` largest entries with (batch, position, channel), the median
    |h| over all entries (lower median) and max / median."""
    a = h.float().abs()
    B, T, d = a.shape
    values, flat = a.flatten().topk(min(top_k, a.numel()))
    signed = h.flatten()[flat].float()
    top = [{"value": float(s), "abs": float(v), "batch": int(j) // (T * d), "position": (int(j) // d) % T,
            "channel": int(j) % d} for s, v, j in zip(signed, values, flat)]
    median = float(a.flatten().median())
    max_abs = float(values[0])
    return {"max_abs": max_abs, "top": top, "median_abs": median, "ratio": max_abs / max(median, 1e-30)}
