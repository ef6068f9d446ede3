"""Gate-score statistics: how sparse the gate is, per head, and on the sink token versus the rest.

The paper reports the mean score (0.116 for elementwise G1) and its histogram; scores near 0 mean the
gate closes the head's SDPA output for that token. Histogram bins cover [0, 1] (sigmoid's range); scores
of other activations outside it are counted in ``below`` / ``above``.
"""

from __future__ import annotations

import torch

HIST_BINS = 50
THRESHOLDS = (0.1, 0.5)


@torch.no_grad()
def gate_stats(scores: torch.Tensor, first: torch.Tensor) -> dict:
    """scores (B, T, heads, per_head) or, input-independent, (heads, per_head); ``first`` (B, T) bool
    marks the sink token. Per-head means and fractions, a layer histogram, first token vs the rest."""
    s = scores.float()
    if s.dim() == 2:  # the same scores at every token
        s = s.expand(*first.shape, *s.shape)
    out = {"mean_per_head": s.mean((0, 1, 3)), "mean": float(s.mean())}
    for t in THRESHOLDS:
        below = (s < t).float()
        out[f"frac_below_{t}_per_head"] = below.mean((0, 1, 3))
        out[f"frac_below_{t}"] = float(below.mean())
    out["histogram"] = {"counts": torch.histc(s, HIST_BINS, 0.0, 1.0).long().tolist(),
                        "below": int((s < 0).sum()), "above": int((s > 1).sum())}
    out["first_token_mean"] = float(s[first].mean())
    rest = s[~first]
    out["rest_mean"] = float(rest.mean()) if rest.numel() else float("nan")
    return out


def histogram_edges() -> list[float]:
    return torch.linspace(0.0, 1.0, HIST_BINS + 1).tolist()
