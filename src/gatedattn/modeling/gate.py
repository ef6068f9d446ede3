"""The gate of Qiu et al. (2025) and every variant they compared, as one module driven by GateConfig.

A gate turns the block's pre-norm hidden state X into scores ``act(X·W + b)`` of shape
(..., heads, per_head) and combines them with a target tensor of shape (..., heads, width):
``Y * score`` or ``Y + score``. ``per_head`` is ``width`` (elementwise) or 1 (headwise), so headwise
broadcasts one scalar over the head's channels. Which tensor is the target, and so which heads, depends
on the position:

  g1  SDPA output per query head (before o_proj)   heads = num_heads,    width = head_dim
  g2  values after v_proj (one score per KV token)  heads = num_kv_heads, width = head_dim
  g3  keys after k_proj (and QK-norm)               heads = num_kv_heads, width = head_dim
  g4  queries after q_proj (and QK-norm)            heads = num_heads,    width = head_dim
  g5  attention output after o_proj                 heads = 1,            width = d_model

``init=identity`` (the retrofit of a pretrained model, docs/retrofit.md): W = 0 and, for a multiplicative
gate, the scores divided by act(0), e.g. ``2·sigmoid(X·W)``; the gate is then exactly 1 (an additive one
exactly 0) at step 0 and stays a sigmoid that can learn to shrink each channel (or to grow it up to 2x).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..config import GATE_ACTIVATION_AT_ZERO, ModelConfig
from .hooks import HookPoint

ACTIVATIONS = {
    "sigmoid": torch.sigmoid,
    "silu": F.silu,
    "ns_sigmoid": lambda x: 0.5 + 0.5 * torch.sigmoid(x),  # non-sparse: range [0.5, 1]
    "identity": lambda x: x,
}


def gate_target_shape(cfg: ModelConfig) -> tuple[int, int]:
    """(heads, width) of the tensor the gate acts on."""
    a = cfg.attention
    pos = a.gate.position
    if pos in ("g1", "g4"):
        return a.num_heads, a.head_dim
    if pos in ("g2", "g3"):
        return a.num_kv_heads, a.head_dim
    if pos == "g5":
        return 1, cfg.d_model
    raise ValueError("no gate at position 'none'")


def is_fused(cfg: ModelConfig) -> bool:
    """Whether g1/g4 gate logits come out of a widened q_proj rather than a projection of their own."""
    g = cfg.attention.gate
    return g.position in ("g1", "g4") and g.input_dependent and g.fused


class Gate(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        g = cfg.attention.gate
        self.position, self.combine, self.shared = g.position, g.combine, g.shared_across_heads
        self.activation = ACTIVATIONS[g.activation]
        self.heads, self.width = gate_target_shape(cfg)
        self.per_head = self.width if g.granularity == "elementwise" else 1
        self.out_features = self.heads * self.per_head  # gate logits per token
        self.input_dependent, self.fused = g.input_dependent, is_fused(cfg)
        self.init, self.std = g.init, cfg.initializer_range
        # identity init: divide by act(0) so a zero logit scores exactly 1 (division keeps 0.75 / 0.75 exact)
        at_zero = GATE_ACTIVATION_AT_ZERO[g.activation]
        self.score_divisor = at_zero if g.init == "identity" and g.combine == "multiply" else None
        self.proj = None
        if g.input_dependent and not self.fused:
            self.proj = nn.Linear(cfg.d_model, self.out_features, bias=False)
        if not g.input_dependent:
            # Input-independent: a learnable per-head vector, zero-initialised (sigmoid starts at 0.5).
            self.vector = nn.Parameter(torch.zeros(self.heads, self.per_head))
        self.bias = nn.Parameter(torch.zeros(self.out_features)) if g.bias and g.input_dependent else None
        self.hook_score = HookPoint()

    @torch.no_grad()
    def reset_parameters(self, fused_rows: torch.Tensor | None = None) -> None:
        """Initialise the projection (own or the rows of q_proj given as ``fused_rows``) per ``init``."""
        weight = fused_rows if fused_rows is not None else (self.proj.weight if self.proj is not None else None)
        if weight is not None:
            if self.init in ("zeros", "identity"):
                weight.zero_()
            else:
                weight.normal_(0.0, self.std)
        if self.bias is not None:
            self.bias.zero_()
        if not self.input_dependent:
            self.vector.zero_()

    def scores(self, x: torch.Tensor | None, logits: torch.Tensor | None = None) -> torch.Tensor:
        """Gate scores, shape (B, T, heads, per_head); (heads, per_head) when input-independent.

        ``logits`` are passed in when they were produced by the fused q_proj.
        """
        if not self.input_dependent:
            s = self.activation(self.vector)
        else:
            if logits is None:
                logits = self.proj(x)
            if self.bias is not None:
                logits = logits + self.bias
            s = self.activation(logits.unflatten(-1, (self.heads, self.per_head)))
        if self.score_divisor is not None:
            s = s / self.score_divisor
        if self.shared:
            s = s.mean(dim=-2, keepdim=True)  # every head gets the head-average score
        return self.hook_score(s)

    def forward(self, y: torch.Tensor, x: torch.Tensor | None = None,
                logits: torch.Tensor | None = None) -> torch.Tensor:
        """Apply the gate to ``y`` of shape (B, T, heads, width), or (B, T, d_model) at g5."""
        s = self.scores(x, logits).to(y.dtype)
        flat = y.dim() == 3
        if flat:
            y = y.unsqueeze(-2)
        out = y * s if self.combine == "multiply" else y + s
        return out.squeeze(-2) if flat else out
