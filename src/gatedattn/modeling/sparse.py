"""DeepSeek Sparse Attention (DSA, DeepSeek-V3.2): the lightning indexer, top-k selection and the gather path.

For query token t and past token s the indexer scores

    I(t, s) = sum_j w(t, j) * ReLU(q_j(t) . k(s))

with ``indexer_heads`` small heads whose queries q_j and weights w come from t's hidden state and one
shared key k(s) per token (LayerNorm-ed and rotated, as in DeepSeek-V3.2). The indexer's rotation takes
its frequencies from the model's rotary table (RoPE scaling included), evenly subsampled when
``indexer_dim`` is below the rotary dimension, so both fast and slow frequencies are kept. Each query
then attends to its ``top_k`` best-scoring past tokens only, one selection for all its heads.

Two attention paths compute the same function: a boolean mask over dense scores (``Attention`` passes it
to SDPA or the eager softmax) and ``gather_attention``, which gathers the selected keys and values per query
chunk so the work is O(T * top_k). The indexer learns by KL divergence towards the main attention
(``indexer_kl``): DeepSeek's dense warm-up over all keys, then over the selected set only.

Shape suffixes as in attention.py, plus I indexer heads, E indexer_dim, S key positions, J = top_k slots.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..config import ModelConfig
from .rope import apply_rotary, rotary_dim


class LightningIndexer(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        s = cfg.attention.sparse
        self.num_heads, self.dim, self.top_k = s.indexer_heads, s.indexer_dim, s.top_k
        self.dtype = getattr(torch, s.indexer_dtype)
        self.q_proj = nn.Linear(cfg.d_model, s.indexer_heads * s.indexer_dim, bias=False)
        self.k_proj = nn.Linear(cfg.d_model, s.indexer_dim, bias=False)
        self.k_norm = nn.LayerNorm(s.indexer_dim)
        self.weights_proj = nn.Linear(cfg.d_model, s.indexer_heads, bias=False)
        # DeepSeek-V3.2 scales the head weights by I^-1/2 and the dot products by E^-1/2.
        self.scale = (s.indexer_heads * s.indexer_dim) ** -0.5
        half, rotated = rotary_dim(cfg) // 2, min(s.indexer_dim, rotary_dim(cfg)) // 2
        cols = torch.linspace(0, half - 1, rotated).round().long()
        self.register_buffer("rope_cols", torch.cat([cols, cols + half]), persistent=False)

    def _rotate(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        return apply_rotary(x, cos[:, self.rope_cols], sin[:, self.rope_cols])

    def keys(self, x_BTC: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """The shared indexer key of every token, (B, T, E), in the indexer's dtype (as the cache holds it)."""
        k = self.k_norm(self.k_proj(x_BTC))
        return self._rotate(k[:, :, None], cos, sin)[:, :, 0].to(self.dtype)

    def _queries(self, x_BTC: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
        """The rotated indexer queries (B, T, I, E) in the indexer's dtype and the head weights (B, T, I)."""
        B, T, _ = x_BTC.shape
        q_BTIE = self._rotate(self.q_proj(x_BTC).view(B, T, self.num_heads, self.dim), cos, sin)
        return q_BTIE.to(self.dtype), self.weights_proj(x_BTC).float() * self.scale

    def scores(self, x_BTC: torch.Tensor, keys_BSE: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
               causal_TS: torch.Tensor) -> torch.Tensor:
        """I(t, s) for the T new queries against all S keys, (B, T, S) in float32; -inf where ``causal_TS``
        forbids s (t's future)."""
        B, T, _ = x_BTC.shape
        S = keys_BSE.shape[1]
        q_BTIE, w_BTI = self._queries(x_BTC, cos, sin)
        # Two batched matmuls, ReLU in place between them: no (B, T, I, S) temporaries beyond the one.
        q = q_BTIE.reshape(B, T * self.num_heads, self.dim)
        dots = torch.bmm(q, keys_BSE.to(self.dtype).transpose(1, 2)).float().view(B * T, self.num_heads, S)
        dots = dots.relu_() if not torch.is_grad_enabled() else F.relu(dots)
        scores_BTS = torch.bmm(w_BTI.reshape(B * T, 1, self.num_heads), dots).view(B, T, S)
        return scores_BTS.masked_fill(~causal_TS, float("-inf"))

    def selected_scores(self, x_BTC: torch.Tensor, keys_BSE: torch.Tensor, idx_BTJ: torch.Tensor,
                        cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """I(t, s) at each query's selected positions only, (B, T, J) in float32: what the KL over the
        selected set needs, with autograd through O(T * J) scores instead of O(T * S)."""
        q_BTIE, w_BTI = self._queries(x_BTC, cos, sin)
        rows = torch.arange(x_BTC.shape[0], device=x_BTC.device)[:, None, None]
        k_BTJE = keys_BSE.to(self.dtype)[rows, idx_BTJ]
        dots_BTIJ = torch.matmul(q_BTIE, k_BTJE.transpose(-1, -2)).float()
        return torch.matmul(w_BTI[:, :, None], F.relu(dots_BTIJ))[:, :, 0]

    def select(self, scores_BTS: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The top-k key positions of every query, (B, T, J) with J = min(top_k, S), best first, and which of
        them are real past tokens (False only while a query has fewer than top_k past tokens). Exactly what a
        stable descending sort keeps: ties (ReLU makes scores of exactly 0 common, and every future key is
        -inf) go to the earlier position, so a cached step selects what a full forward selects."""
        return top_k_stable(scores_BTS, min(self.top_k, scores_BTS.shape[-1]))

    def select_chunked(self, x_BTC, keys_BSE, cos, sin, chunk: int):
        """``select(scores(...))`` a chunk of queries at a time, the T queries being the last of the S key
        positions: the (chunk, S) scores and their causal mask are the largest intermediates, so a long
        prefill never holds T x S of anything. A chunk scores only the keys up to its last query (at least
        top_k of them, so every chunk has the same J): the later ones are its future."""
        T, S = x_BTC.shape[1], keys_BSE.shape[1]
        positions = torch.arange(S, device=x_BTC.device)
        parts = []
        for t0 in range(0, T, chunk):
            t1 = min(T, t0 + chunk)
            s1 = max(S - T + t1, min(self.top_k, S))
            causal = positions[None, :s1] <= positions[S - T + t0:S - T + t1, None]
            parts.append(self.select(self.scores(x_BTC[:, t0:t1], keys_BSE[:, :s1], cos[t0:t1], sin[t0:t1], causal)))
        return torch.cat([p[0] for p in parts], 1), torch.cat([p[1] for p in parts], 1)


def top_k_stable(scores_BTS: torch.Tensor, J: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``scores.sort(descending=True, stable=True)`` cut to its first J: (B, T, J) positions and whether each
    score is finite, for O(S) per row instead of a sort's O(S log S). ``topk`` keeps an arbitrary subset
    of the values tied at the J-th, so rows with such a tie take the earliest tied positions instead; then
    the J kept positions are put in position order and stably sorted by score, as the full sort orders them."""
    vals, idx = scores_BTS.topk(J, dim=-1, sorted=False)
    kth = vals.amin(-1, keepdim=True)
    tied = (scores_BTS >= kth).sum(-1) > J  # more candidates than slots: topk's pick among the ties is arbitrary
    if tied.any():
        rows, row_kth = scores_BTS[tied], kth[tied]
        above = rows > row_kth
        at = rows == row_kth
        keep = above | (at & (at.cumsum(-1) <= J - above.sum(-1, keepdim=True)))
        idx[tied] = keep.nonzero()[:, 1].view(-1, J)
    idx = idx.sort(-1).values
    order = scores_BTS.gather(-1, idx).sort(dim=-1, descending=True, stable=True)
    return idx.gather(-1, order.indices), order.values > float("-inf")


def selection_mask(idx_BTJ: torch.Tensor, valid_BTJ: torch.Tensor, num_keys: int) -> torch.Tensor:
    """The selection as a boolean (B, T, S) mask: True at every selected real past position."""
    B, T, _ = idx_BTJ.shape
    mask = torch.zeros(B, T, num_keys, dtype=torch.bool, device=idx_BTJ.device)
    return mask.scatter_(-1, idx_BTJ, valid_BTJ)


def gather_attention(q_BHTD: torch.Tensor, k_BSKD: torch.Tensor, v_BSKD: torch.Tensor, idx_BTJ: torch.Tensor,
                     valid_BTJ: torch.Tensor, scale: float, sink_logits: torch.Tensor | None,
                     query_chunk: int) -> torch.Tensor:
    """Attention of each query over its selected keys only: (B, H, T, D). Work and memory per chunk of C
    queries are O(C * J * D) per head, never O(T * S)."""
    B, H, T, D = q_BHTD.shape
    K = k_BSKD.shape[2]
    G = H // K
    # Gather whole (K, D) rows of the token axis, the selection being shared by every head; each KV head's
    # keys are then a strided view that bmm reads in place.
    rows = torch.arange(B, device=q_BHTD.device)[:, None, None]
    out = []
    for t0 in range(0, T, query_chunk):
        t1 = min(T, t0 + query_chunk)
        C, J, idx = t1 - t0, idx_BTJ.shape[-1], idx_BTJ[:, t0:t1]
        k_sel, v_sel = k_BSKD[rows, idx].view(B * C, J, K, D), v_BSKD[rows, idx].view(B * C, J, K, D)
        invalid = ~valid_BTJ[:, t0:t1].reshape(B * C, 1, J)
        heads = []
        for h in range(K):
            q = q_BHTD[:, h * G:(h + 1) * G, t0:t1].transpose(1, 2).reshape(B * C, G, D)
            scores = torch.bmm(q, k_sel[:, :, h].transpose(1, 2)) * scale  # (B * C, G, J)
            scores = scores.masked_fill(invalid, float("-inf"))
            if sink_logits is not None:  # the virtual sink slot: a zero value whose score is the sink logit
                sink = sink_logits[h * G:(h + 1) * G].to(scores.dtype).view(1, G, 1).expand(B * C, G, 1)
                scores = torch.cat([scores, sink], -1)
            probs = torch.softmax(scores.to(torch.promote_types(scores.dtype, torch.float32)), -1).to(q.dtype)
            if sink_logits is not None:
                probs = probs[..., :-1]
            heads.append(torch.bmm(probs, v_sel[:, :, h]).view(B, C, G, D))  # (B, C, G, D)
        out.append(torch.stack(heads, 2).view(B, C, H, D).transpose(1, 2))
    return torch.cat(out, 2)


def main_attention_distribution(q_BHTD: torch.Tensor, k_BSKD: torch.Tensor, scale: float,
                                allowed_BTS: torch.Tensor) -> torch.Tensor:
    """The main attention's distribution over keys summed over heads and renormalised, (B, T, S), float32,
    restricted to ``allowed_BTS`` (causal for the dense warm-up, the selection for sparse training)."""
    B, H, T, D = q_BHTD.shape
    K = k_BSKD.shape[2]
    q = q_BHTD.float().view(B, K, H // K, T, D)
    return _head_summed(torch.einsum("bkgtd,bskd->bkgts", q, k_BSKD.float()) * scale, allowed_BTS)


def selected_attention_distribution(q_BHTD: torch.Tensor, k_BSKD: torch.Tensor, scale: float,
                                    idx_BTJ: torch.Tensor, valid_BTJ: torch.Tensor) -> torch.Tensor:
    """``main_attention_distribution`` over each query's selected keys, (B, T, J): the sparse stage's target
    at O(T * J) per head instead of O(T * S)."""
    B, H, T, D = q_BHTD.shape
    K = k_BSKD.shape[2]
    rows = torch.arange(B, device=q_BHTD.device)[:, None, None]
    k_BTJKD = k_BSKD.float()[rows, idx_BTJ]
    q = q_BHTD.float().view(B, K, H // K, T, D)
    return _head_summed(torch.einsum("bkgtd,btjkd->bkgtj", q, k_BTJKD) * scale, valid_BTJ)


def _head_summed(scores_BKGTS: torch.Tensor, allowed_BTS: torch.Tensor) -> torch.Tensor:
    """Each head's softmax over the allowed keys, summed over the heads and renormalised: (B, T, S)."""
    probs = torch.softmax(scores_BKGTS.masked_fill(~allowed_BTS[:, None, None], float("-inf")), -1)
    p = probs.sum((1, 2))
    return p / p.sum(-1, keepdim=True)


def indexer_kl(target_BTS: torch.Tensor, scores_BTS: torch.Tensor, allowed_BTS: torch.Tensor) -> torch.Tensor:
    """Mean over queries of KL(target || softmax(indexer scores)) over the allowed keys; the target is fixed.
    The last axis is all S keys (dense warm-up) or the J selected ones (sparse stage)."""
    log_q = torch.log_softmax(scores_BTS.masked_fill(~allowed_BTS, float("-inf")), -1)
    p = target_BTS.detach()
    terms = torch.where(p > 0, p * (torch.log(p.clamp_min(1e-30)) - log_q), torch.zeros_like(p))
    return terms.sum(-1).mean()
