"""The one attention block: GQA, RoPE, optional QK-norm, the gate at its configured point, and sink peers.

Two paths compute the same function from the same parameters: ``sdpa`` (torch's fused
scaled_dot_product_attention, the fast path) and ``eager`` (explicit scores and softmax, the reference,
which also exposes the attention probabilities at ``hook_attn_probs``). The input projections and QK-norm
run through ``ops.project_qkv_gate`` (one matmul under autograd).

DSA (``attention.sparse``, see sparse.py): a lightning indexer picks each query's top-k past tokens; the
selection becomes the mask of either path, or the gather path attends to the selected keys only.

Shape suffixes: B batch, T new positions, S key positions (cached + new), C d_model, H query heads,
K key/value heads, N = H + K, D head_dim.

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
from .norm import RMSNorm
from .ops import project_qkv_gate
from .rope import apply_rotary
from .sparse import (LightningIndexer, gather_attention, indexer_kl, main_attention_distribution,
                     selected_attention_distribution, selection_mask)


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
        self.o_proj = nn.Linear(a.num_heads * a.head_dim, cfg.d_model, bias=a.o_bias)
        self.q_norm = RMSNorm(a.head_dim, cfg.norm_eps, cfg.norm_zero_centered) if a.qk_norm else None
        self.k_norm = RMSNorm(a.head_dim, cfg.norm_eps, cfg.norm_zero_centered) if a.qk_norm else None
        self.sink_mode = a.sink
        if a.sink == "learned":
            self.sink_logit = nn.Parameter(torch.zeros(a.num_heads))  # gpt-oss style, one logit per head
        self.sparse = a.sparse
        self.indexer = LightningIndexer(cfg) if a.sparse is not None else None
        self.aux: dict[str, torch.Tensor] = {}  # training: the indexer's KL to the main attention
        self.output_nonlinearity = a.output_nonlinearity
        if a.output_nonlinearity == "rmsnorm":
            self.output_norm = RMSNorm(a.head_dim, cfg.norm_eps, cfg.norm_zero_centered)
        for name in ("hook_q", "hook_k", "hook_v", "hook_selection", "hook_attn_probs", "hook_attn_out",
                     "hook_gated_out", "hook_out"):
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
    def _sdpa(self, q, k, v, past: int, allowed: torch.Tensor | None = None) -> torch.Tensor:
        """q: (B, H, T, D), k/v: (B, K, S, D) -> (B, H, T, D); ``past`` = S - T cached positions.
        ``allowed``: a (B, T, S) mask replacing the causal one (a DSA selection)."""
        T, S = q.shape[2], k.shape[2]
        sink = self.sink_logits()
        gqa = self.num_heads != self.num_kv_heads
        if allowed is not None:
            allowed = allowed[:, None]
        if sink is None and allowed is not None:
            return F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, scale=self.scale, enable_gqa=gqa)
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
        if allowed is None:
            allowed = causal_mask(T, S, q.device)[None, None]
        allowed = torch.cat([allowed, allowed.new_ones(*allowed.shape[:-1], 1)], -1)
        mask = q.new_zeros(allowed.shape[0], self.num_heads, T, S + 1).masked_fill(~allowed, float("-inf"))
        mask[..., -1] = sink.to(q.dtype)[:, None]
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=self.scale, enable_gqa=gqa)

    def _eager(self, q, k, v, past: int, allowed: torch.Tensor | None = None) -> torch.Tensor:
        groups = self.num_heads // self.num_kv_heads
        k, v = k.repeat_interleave(groups, 1), v.repeat_interleave(groups, 1)
        scores = (q @ k.transpose(-1, -2)) * self.scale
        T, S = scores.shape[-2:]
        allowed = causal_mask(T, S, q.device) if allowed is None else allowed[:, None]
        scores = scores.masked_fill(~allowed, float("-inf"))
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

    def _sparse(self, x_BTC, q_BHTD, k_BSKD, v_BSKD, cos, sin, cache: KVCache | None) -> torch.Tensor:
        """DSA: the indexer selects each query's keys, then attention over them (mask or gather path). The
        indexer reads a detached X, so only its KL to the main attention trains it (as in DeepSeek-V3.2)."""
        T, S = x_BTC.shape[1], k_BSKD.shape[1]
        x_idx = x_BTC.detach()
        keys_BSE = self.indexer.keys(x_idx, cos, sin)
        if cache is not None:
            keys_BSE = cache.update_index_keys(self.layer_idx, keys_BSE)
        dense, gather = self.sparse.mode == "dense", self.sparse.implementation == "gather"
        # Only the warm-up's KL differentiates the scores of every key; sparse training's KL recomputes them
        # at the selected keys (selected_scores, below).
        with torch.set_grad_enabled(torch.is_grad_enabled() and dense):
            if gather and not dense:  # never hold T x S indexer scores (or a T x S mask)
                idx_BTJ, valid_BTJ = self.indexer.select_chunked(x_idx, keys_BSE, cos, sin, self.sparse.query_chunk)
            else:
                causal_TS = causal_mask(T, S, x_BTC.device)
                scores_BTS = self.indexer.scores(x_idx, keys_BSE, cos, sin, causal_TS)
                idx_BTJ, valid_BTJ = self.indexer.select(scores_BTS)
        self.hook_selection(idx_BTJ)
        allowed_BTS = None if dense or gather else selection_mask(idx_BTJ, valid_BTJ, S)
        if self.training and dense:  # the warm-up: KL over every causal key
            causal_BTS = causal_TS.expand(x_BTC.shape[0], T, S)
            target = main_attention_distribution(q_BHTD.detach(), k_BSKD.detach(), self.scale, causal_BTS)
            self.aux = {"indexer_kl": indexer_kl(target, scores_BTS, causal_BTS)}
        elif self.training:  # sparse: KL over the selected keys, computed at them only
            target = selected_attention_distribution(q_BHTD.detach(), k_BSKD.detach(), self.scale, idx_BTJ,
                                                     valid_BTJ)
            selected = self.indexer.selected_scores(x_idx, keys_BSE, idx_BTJ, cos, sin)
            self.aux = {"indexer_kl": indexer_kl(target, selected, valid_BTJ)}
        if gather and not dense:
            return gather_attention(q_BHTD, k_BSKD, v_BSKD, idx_BTJ, valid_BTJ, self.scale, self.sink_logits(),
                                    self.sparse.query_chunk)
        attend = self._sdpa if self.implementation == "sdpa" else self._eager
        return attend(q_BHTD, k_BSKD.transpose(1, 2), v_BSKD.transpose(1, 2), past=S - T, allowed=allowed_BTS)

    def _output_nonlinearity(self, y: torch.Tensor) -> torch.Tensor:
        """The paper's non-linearity-only controls at G1 (per-head RMSNorm or SiLU, no gate), else y."""
        if self.output_nonlinearity == "rmsnorm":
            return self.output_norm(y)
        if self.output_nonlinearity == "silu":
            return F.silu(y)
        return y

    # -- forward -----------------------------------------------------------------------------------------
    def forward(self, x_BTC: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                cache: KVCache | None = None) -> torch.Tensor:
        """x_BTC: the block's pre-norm hidden state X, which the gate reads too."""
        B, T, _ = x_BTC.shape
        H, K, D = self.num_heads, self.num_kv_heads, self.head_dim
        gate_position = self.gate_position
        # Queries and keys come out side by side (N = H + K heads) and QK-normed: one RoPE call rotates both.
        qk_BTND, v_BTKD, gate_logits = project_qkv_gate(
            x_BTC, self.q_proj, self.k_proj, self.v_proj, self.gate.proj if self.gate is not None else None,
            self.q_norm, self.k_norm, H, K, D)
        if gate_position in ("g3", "g4"):  # G4 gates the queries, G3 the keys: after QK-norm, before RoPE
            q_BTHD, k_BTKD = qk_BTND.split([H, K], 2)
            if gate_position == "g4":
                q_BTHD = self.gate(q_BTHD, x_BTC, gate_logits)
            else:
                k_BTKD = self.gate(k_BTKD, x_BTC, gate_logits)
            qk_BTND = torch.cat([q_BTHD, k_BTKD], 2)
        elif gate_position == "g2":  # G2 gates the values, before they are cached
            v_BTKD = self.gate(v_BTKD, x_BTC, gate_logits)
        q_BTHD, k_BTKD = apply_rotary(qk_BTND, cos, sin).split([H, K], 2)
        q_BTHD, k_BTKD, v_BTKD = self.hook_q(q_BTHD), self.hook_k(k_BTKD), self.hook_v(v_BTKD)
        k_BSKD, v_BSKD = k_BTKD, v_BTKD  # S = key positions: the cached ones, then these T
        if cache is not None:
            k_BSKD, v_BSKD = cache.update(self.layer_idx, k_BTKD, v_BTKD)
        q_BHTD = q_BTHD.transpose(1, 2)
        if self.indexer is not None:
            y_BHTD = self._sparse(x_BTC, q_BHTD, k_BSKD, v_BSKD, cos, sin, cache)
        else:
            attend = self._sdpa if self.implementation == "sdpa" else self._eager
            static = cache is not None and cache.position is not None  # the whole storage, masked
            y_BHTD = attend(q_BHTD, k_BSKD.transpose(1, 2), v_BSKD.transpose(1, 2), past=k_BSKD.shape[1] - T,
                            allowed=cache.static_mask() if static else None)
        y_BTHD = self.hook_attn_out(self._output_nonlinearity(y_BHTD.transpose(1, 2)))
        if gate_position == "g1":  # the paper's default: each head's SDPA output, gated before o_proj
            y_BTHD = self.gate(y_BTHD, x_BTC, gate_logits)
        y_BTHD = self.hook_gated_out(y_BTHD)
        out_BTC = self.o_proj(y_BTHD.reshape(B, T, H * D))
        if gate_position == "g5":  # after o_proj: one score per model channel
            out_BTC = self.gate(out_BTC, x_BTC, gate_logits)
        return self.hook_out(out_BTC)

    @torch.no_grad()
    def reset_gate_parameters(self) -> None:
        if self.gate is None:
            return
        rows = self.q_proj.weight[self.num_heads * self.head_dim:] if self.fused_gate else None
        self.gate.reset_parameters(rows)
