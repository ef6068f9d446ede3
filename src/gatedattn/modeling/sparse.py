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
        """The shared indexer key of every token, (B, T, E)."""
        k = self.k_norm(self.k_proj(x_BTC))
        return self._rotate(k[:, :, None], cos, sin)[:, :, 0]

    def scores(self, x_BTC: torch.Tensor, keys_BSE: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
               causal_TS: torch.Tensor) -> torch.Tensor:
        """I(t, s) for the T new queries against all S keys, (B, T, S) in float32; -inf where ``causal_TS``
        forbids s (t's future)."""
        B, T, _ = x_BTC.shape
        q_BTIE = self._rotate(self.q_proj(x_BTC).view(B, T, self.num_heads, self.dim), cos, sin)
        w_BTI = self.weights_proj(x_BTC).float() * self.scale
        dots_BTIS = torch.einsum("btie,bse->btis", q_BTIE.float(), keys_BSE.float())
        scores_BTS = torch.einsum("btis,bti->bts", F.relu(dots_BTIS), w_BTI)
        return scores_BTS.masked_fill(~causal_TS, float("-inf"))

    def select(self, scores_BTS: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The top-k key positions of every query, (B, T, J) with J = min(top_k, S), and which of them are
        real past tokens (False only while a query has fewer than top_k past tokens). Ties (ReLU makes
        scores of exactly 0 common) go to the earlier position, so a cached step selects what a full
        forward selects."""
        J = min(self.top_k, scores_BTS.shape[-1])
        top, idx = scores_BTS.sort(dim=-1, descending=True, stable=True)
        return idx[..., :J], top[..., :J] > float("-inf")

    def select_chunked(self, x_BTC, keys_BSE, cos, sin, causal_TS, chunk: int):
        """``select(scores(...))`` a chunk of queries at a time: the (chunk, S) scores are the largest
        intermediate, so a long prefill never holds T x S of them."""
        parts = [self.select(self.scores(x_BTC[:, t0:t0 + chunk], keys_BSE, cos[t0:t0 + chunk], sin[t0:t0 + chunk],
                                         causal_TS[t0:t0 + chunk]))
                 for t0 in range(0, x_BTC.shape[1], chunk)]
        return torch.cat([p[0] for p in parts], 1), torch.cat([p[1] for p in parts], 1)


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
    k_BKSD, v_BKSD = k_BSKD.transpose(1, 2), v_BSKD.transpose(1, 2)
    rows, heads = torch.arange(B, device=q_BHTD.device)[:, None, None, None], torch.arange(K, device=q_BHTD.device)
    out = []
    for t0 in range(0, T, query_chunk):
        t1 = min(T, t0 + query_chunk)
        C, idx, valid = t1 - t0, idx_BTJ[:, None, t0:t1], valid_BTJ[:, None, t0:t1, None]
        at = (rows, heads[None, :, None, None], idx)
        k_sel, v_sel = k_BKSD[at], v_BKSD[at]  # (B, K, C, J, D): each query's own keys, per KV head
        q = q_BHTD[:, :, t0:t1].reshape(B, K, G, C, D).transpose(2, 3)  # (B, K, C, G, D)
        scores = (q @ k_sel.transpose(-1, -2)) * scale  # (B, K, C, G, J)
        scores = scores.masked_fill(~valid, float("-inf"))
        if sink_logits is not None:  # the virtual sink slot: a zero value whose score is the sink logit
            sink = sink_logits.to(scores.dtype).view(1, K, 1, G, 1).expand(*scores.shape[:-1], 1)
            scores = torch.cat([scores, sink], -1)
        probs = torch.softmax(scores.to(torch.promote_types(scores.dtype, torch.float32)), -1).to(q.dtype)
        if sink_logits is not None:
            probs = probs[..., :-1]
        out.append((probs @ v_sel).transpose(2, 3).reshape(B, H, C, D))
    return torch.cat(out, 2)


def main_attention_distribution(q_BHTD: torch.Tensor, k_BSKD: torch.Tensor, scale: float,
                                allowed_BTS: torch.Tensor) -> torch.Tensor:
    """The main attention's distribution over keys summed over heads and renormalised, (B, T, S), float32,
    restricted to ``allowed_BTS`` (causal for the dense warm-up, the selection for sparse training)."""
    B, H, T, D = q_BHTD.shape
    K = k_BSKD.shape[2]
    q = q_BHTD.float().view(B, K, H // K, T, D)
    scores = torch.einsum("bkgtd,bskd->bkgts", q, k_BSKD.float()) * scale
    probs = torch.softmax(scores.masked_fill(~allowed_BTS[:, None, None], float("-inf")), -1)
    p = probs.sum((1, 2))
    return p / p.sum(-1, keepdim=True)


def indexer_kl(target_BTS: torch.Tensor, scores_BTS: torch.Tensor, allowed_BTS: torch.Tensor) -> torch.Tensor:
    """Mean over queries of KL(target || softmax(indexer scores)) over the allowed keys; the target is fixed."""
    log_q = torch.log_softmax(scores_BTS.masked_fill(~allowed_BTS, float("-inf")), -1)
    p = target_BTS.detach()
    terms = torch.where(p > 0, p * (torch.log(p.clamp_min(1e-30)) - log_q), torch.zeros_like(p))
    return terms.sum(-1).mean()
