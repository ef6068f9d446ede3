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


@torch.no_grad()
def first_token_norm_ratio(x: torch.Tensor, first: torch.Tensor) -> dict[str, torch.Tensor]:
    """x (B, T, ..., D): per trailing index set (e.g. a head), the mean over the batch of the first token's
    norm ||x||, the (lower) median norm of the other tokens and their ratio. Guo et al.'s value drain is the
    ratio for value states (well below 1), the residual peak the ratio for the residual stream (well above 1).
    ``first`` (B, T) bool marks the first (sink) token of each sequence."""
    norms = x.float().norm(dim=-1)  # B, T, ...
    first = first.to(norms.device)
    first_norm = norms[first].mean(0)
    rest = norms[~first]
    median = rest.median(0).values if rest.shape[0] else torch.full_like(first_norm, float("nan"))
    return {"first_norm": first_norm, "median_norm": median, "ratio": first_norm / median.clamp_min(1e-30)}
