"""Row layouts of a q_proj widened with gate logits, and conversion between them.

For H query heads, Hk KV heads (n = H / Hk per group), head_dim D and P gate logits per head (D
elementwise, 1 headwise), the fused q_proj has H*D + H*P output rows. Three layouts exist:

- ``gatedattn`` (ours): all queries head-major, then all gate logits head-major:
  ``[q_0 .. q_{H-1} | g_0 .. g_{H-1}]``.
- ``official`` (the paper's released Qwen3 code): per KV group, that group's queries then its gate logits:
  ``[q_0 .. q_{n-1}, g_0 .. g_{n-1} | q_n .. q_{2n-1}, g_n .. g_{2n-1} | ...]``.
- ``qwen3_next`` (HF transformers Qwen3-Next): per head, interleaved ``[q_0, g_0 | q_1, g_1 | ...]``
  (elementwise only).

The functions work on weights (rows, d_model) and on biases (rows,).
"""

from __future__ import annotations

import torch

LAYOUTS = ("gatedattn", "official", "qwen3_next")


def _check(layout: str, per_head: int, head_dim: int) -> None:
    if layout not in LAYOUTS:
        raise ValueError(f"layout {layout!r} is not one of {LAYOUTS}")
    if layout == "qwen3_next" and per_head != head_dim:
        raise ValueError("the qwen3_next layout holds elementwise gates only (per_head == head_dim)")


def to_layout(w: torch.Tensor, layout: str, num_heads: int, num_kv_heads: int, head_dim: int,
              per_head: int) -> torch.Tensor:
    """Reorder the rows of our fused q_proj weight/bias into ``layout``."""
    _check(layout, per_head, head_dim)
    rest = w.shape[1:]
    q = w[: num_heads * head_dim].reshape(num_heads, head_dim, *rest)
    g = w[num_heads * head_dim:].reshape(num_heads, per_head, *rest)
    if layout == "gatedattn":
        return w.clone()
    if layout == "qwen3_next":
        return torch.cat([q, g], 1).reshape(-1, *rest)
    n = num_heads // num_kv_heads
    q = q.reshape(num_kv_heads, n * head_dim, *rest)
    g = g.reshape(num_kv_heads, n * per_head, *rest)
    return torch.cat([q, g], 1).reshape(-1, *rest)


def from_layout(w: torch.Tensor, layout: str, num_heads: int, num_kv_heads: int, head_dim: int,
                per_head: int) -> torch.Tensor:
    """Reorder rows given in ``layout`` into ours (inverse of ``to_layout``)."""
    _check(layout, per_head, head_dim)
    rest = w.shape[1:]
    if layout == "gatedattn":
        return w.clone()
    if layout == "qwen3_next":
        blocks = w.reshape(num_heads, head_dim + per_head, *rest)
        q, g = blocks[:, :head_dim], blocks[:, head_dim:]
    else:
        n = num_heads // num_kv_heads
        blocks = w.reshape(num_kv_heads, n * (head_dim + per_head), *rest)
        q, g = blocks[:, : n * head_dim], blocks[:, n * head_dim:]
    return torch.cat([q.reshape(-1, *rest), g.reshape(-1, *rest)], 0)
