"""The one attention block: GQA, RoPE, optional QK-norm, the gate at its configured point, and sink peers.

Two paths compute the same function from the same parameters: ``sdpa`` (torch's fused
scaled_dot_product_attention, the fast path) and ``eager`` (explicit scores and softmax, the reference,
which also exposes the attention probabilities at ``hook_attn_probs``).

Fused q_proj row layout (g1/g4 with ``gate.fused``): the output rows are ``[queries | gate logits]``,
queries head-major (H x head_dim), then the gate logits head-major (H x head_dim elementwise, H headwise,
head_dim or 1 when shared across heads). ``layout.py`` converts to the official code's per-KV-group layout
and to HF Qwen3-Next's per-head interleaved layout.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..config import ModelConfig
from .cache import KVCache
from .gate import Gate, is_fused
from .hooks import HookPoint
from .norm import RMSNorm, rms_norm
from .rope import apply_rotary


def causal_mask(q_len: int, k_len: int, device: torch.device) -> torch.Tensor:
    """Boolean (q_len, k_len) mask, True = may attend; queries are the last q_len of the k_len positions."""
    offset = k_len - q_len
    q_pos = torch.arange(q_len, device=device)[:, None] + offset
    return torch.arange(k_len, device=device)[None, :] <= q_pos


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig, layer_idx: int):
        super().__init__()
        a = cfg.attention
        self.layer_idx = layer_idx
        self.num_heads, self.num_kv_heads, self.head_dim = a.num_heads, a.num_kv_heads, a.head_dim
        self.scale = 1.0 / math.sqrt(a.head_dim)
        self.implementation = a.implementation
        self.gate = Gate(cfg) if a.gate.position != "none" else None
        self.gate_position = a.gate.position
        self.fused_gate = self.gate is not None and is_fused(cfg)
        q_out = a.num_heads * a.head_dim + (self.gate.out_features if self.fused_gate else 0)
        self.q_proj = nn.Linear(cfg.d_model, q_out, bias=a.qkv_bias)
        self.k_proj = nn.Linear(cfg.d_model, a.num_kv_heads * a.head_dim, bias=a.qkv_bias)
        self.v_proj = nn.Linear(cfg.d_model, a.num_kv_heads * a.head_dim, bias=a.qkv_bias)
        self.o_proj = nn.Linear(a.num_heads * a.head_dim, cfg.d_model, bias=False)
        self.q_norm = RMSNorm(a.head_dim, cfg.norm_eps) if a.qk_norm else None
        self.k_norm = RMSNorm(a.head_dim, cfg.norm_eps) if a.qk_norm else None
        self.sink_mode = a.sink
        if a.sink == "learned":
            self.sink_logit = nn.Parameter(torch.zeros(a.num_heads))  # gpt-oss style, one logit per head
        self.output_nonlinearity = a.output_nonlinearity
        if a.output_nonlinearity == "rmsnorm":
            self.output_norm = RMSNorm(a.head_dim, cfg.norm_eps)
        for name in ("hook_q", "hook_k", "hook_v", "hook_attn_probs", "hook_attn_out", "hook_gated_out",
                     "hook_out"):
            setattr(self, name, HookPoint())

    # -- sinks --------------------------------------------------------------------------------------
    def sink_logits(self) -> torch.Tensor | None:
        """Per-head logit of the virtual sink slot, or None when there is none."""
        if self.sink_mode == "learned":
            return self.sink_logit
        if self.sink_mode == "off_by_one":
            return self.o_proj.weight.new_zeros(self.num_heads)
        return None

    # -- the two attention paths ------------------------------------------------------------------------
    def _sdpa(self, q, k, v, past: int) -> torch.Tensor:
        """q: (B, H, T, D), k/v: (B, Hk, S, D) -> (B, H, T, D)."""
        T, S = q.shape[2], k.shape[2]
        sink = self.sink_logits()
        gqa = self.num_heads != self.num_kv_heads
        if sink is None:
            if T == 1 and gqa:
                # Decoding: a group's query heads become query rows of its KV head (nothing to mask when
                # T == 1); the CPU kernel runs this up to 2x faster than enable_gqa on long caches.
                B, H, _, D = q.shape
                y = F.scaled_dot_product_attention(q.reshape(B, k.shape[1], H // k.shape[1], D), k, v,
                                                   scale=self.scale)
                return y.reshape(B, H, 1, D)
            if past == 0 or T == 1:  # T == 1: the new token may see everything cached
                return F.scaled_dot_product_attention(q, k, v, is_causal=T > 1, scale=self.scale, enable_gqa=gqa)
            mask = causal_mask(T, S, q.device)
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=self.scale, enable_gqa=gqa)
        # A sink is one extra key with a zero value whose score is the sink logit: append a zero key
        # (score 0) and add the logit through the float mask, so the fused kernel computes it exactly.
        zeros = k.new_zeros(*k.shape[:2], 1, k.shape[3])
        k, v = torch.cat([k, zeros], 2), torch.cat([v, zeros], 2)
        allowed = torch.cat([causal_mask(T, S, q.device), q.new_ones(T, 1, dtype=torch.bool)], 1)
        mask = q.new_zeros(1, self.num_heads, T, S + 1).masked_fill(~allowed, float("-inf"))
        mask[..., -1] = sink.to(q.dtype)[:, None]
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=self.scale, enable_gqa=gqa)

    def _eager(self, q, k, v, past: int) -> torch.Tensor:
        groups = self.num_heads // self.num_kv_heads
        k, v = k.repeat_interleave(groups, 1), v.repeat_interleave(groups, 1)
        scores = (q @ k.transpose(-1, -2)) * self.scale
        T, S = scores.shape[-2:]
        scores = scores.masked_fill(~causal_mask(T, S, q.device), float("-inf"))
        sink = self.sink_logits()
        if sink is not None:
            sink_col = sink.to(scores.dtype)[None, :, None, None].expand(*scores.shape[:-1], 1)
            scores = torch.cat([scores, sink_col], -1)
        # Softmax in at least float32 (bf16 scores lose the tail); the sink column is dropped after it.
        probs = torch.softmax(scores.to(torch.promote_types(scores.dtype, torch.float32)), -1).to(q.dtype)
        if sink is not None:
            probs = probs[..., :-1]
        probs = self.hook_attn_probs(probs)
        return probs @ v

    # -- forward -----------------------------------------------------------------------------------------
    def _project(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Queries and keys side by side after QK-norm (B, T, H + Hk, D), values (B, T, Hk, D), and the gate
        logits when the gate reads X (the fused q_proj rows or the gate's own projection), else None.

        Under autograd all projections of X run as one matmul over their concatenated weights (rows
        reordered to q | k | v | gate so queries and keys come out side by side, normed in one pass): the
        concatenation is a small copy, and forward and backward each do one large matmul instead of three to
        five. Without autograd (decoding) that copy would be paid per token, so the projections run apart,
        as they do when a projection is not a plain nn.Linear (e.g. wrapped by an adapter library).
        """
        H, Hk, D = self.num_heads, self.num_kv_heads, self.head_dim
        own = self.gate.proj if self.gate is not None else None
        projections = (self.q_proj, self.k_proj, self.v_proj) + ((own,) if own is not None else ())
        # Plain nn.Linear only: a replaced module (e.g. a LoRA wrapper) must run its own forward.
        if torch.is_grad_enabled() and all(type(m) is nn.Linear for m in projections):
            wq, bq = self.q_proj.weight, self.q_proj.bias
            weight = torch.cat([wq[:H * D], self.k_proj.weight, self.v_proj.weight, wq[H * D:]]
                               + ([own.weight] if own is not None else []))
            bias = None
            if bq is not None:  # qkv_bias; the gate's own projection has none
                bias = torch.cat([bq[:H * D], self.k_proj.bias, self.v_proj.bias, bq[H * D:]]
                                 + ([bq.new_zeros(own.out_features)] if own is not None else []))
            y = F.linear(x, weight, bias)
            sizes = [(H + Hk) * D, Hk * D, y.shape[-1] - (H + 2 * Hk) * D]
            qk, v, logits = y.split(sizes, -1)  # split, not slices: its backward is one concatenation
            qk = qk.unflatten(-1, (H + Hk, D))
            if self.q_norm is not None:
                weight = torch.cat([self.q_norm.weight.expand(H, -1), self.k_norm.weight.expand(Hk, -1)])
                qk = rms_norm(qk, weight, self.q_norm.eps)
            return qk, v.unflatten(-1, (Hk, D)), logits if sizes[2] else None
        q = self.q_proj(x)
        logits = q[..., H * D:] if self.fused_gate else (own(x) if own is not None else None)
        q, k = q[..., :H * D].unflatten(-1, (H, D)), self.k_proj(x).unflatten(-1, (Hk, D))
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        return torch.cat([q, k], 2), self.v_proj(x).unflatten(-1, (Hk, D)), logits

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                cache: KVCache | None = None) -> torch.Tensor:
        """x: the block's pre-norm hidden state (B, T, d_model)."""
        B, T, _ = x.shape
        H, Hk, D = self.num_heads, self.num_kv_heads, self.head_dim
        qk, v, gate_logits = self._project(x)
        pos = self.gate_position
        if pos in ("g3", "g4"):  # after QK-norm, before RoPE
            q, k = qk.split([H, Hk], 2)
            if pos == "g4":
                q = self.gate(q, x, gate_logits)
            else:
                k = self.gate(k, x, gate_logits)
            qk = torch.cat([q, k], 2)
        elif pos == "g2":
            v = self.gate(v, x, gate_logits)
        q, k = apply_rotary(qk, cos, sin).split([H, Hk], 2)  # one rotation for queries and keys
        q, k, v = self.hook_q(q), self.hook_k(k), self.hook_v(v)
        if cache is not None:
            k, v = cache.update(self.layer_idx, k, v)
        past = k.shape[1] - T
        attend = self._sdpa if self.implementation == "sdpa" else self._eager
        y = attend(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), past).transpose(1, 2)  # B,T,H,D
        if self.output_nonlinearity == "rmsnorm":
            y = self.output_norm(y)
        elif self.output_nonlinearity == "silu":
            y = F.silu(y)
        y = self.hook_attn_out(y)
        if pos == "g1":
            y = self.gate(y, x, gate_logits)
        y = self.hook_gated_out(y)
        out = self.o_proj(y.reshape(B, T, H * D))
        if pos == "g5":
            out = self.gate(out, x, gate_logits)
        return self.hook_out(out)

    @torch.no_grad()
    def reset_gate_parameters(self) -> None:
        if self.gate is None:
            return
        rows = self.q_proj.weight[self.num_heads * self.head_dim:] if self.fused_gate else None
        self.gate.reset_parameters(rows)
