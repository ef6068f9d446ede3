"""Per-head attention statistics from post-RoPE queries and keys, without a T x T attention matrix.

Queries are processed in chunks; for each chunk the keys are visited in chunks with an online
log-sum-exp (as in flash attention), so memory is O(query_chunk x key_chunk) per head whatever the length.
Up to ``single_block`` positions the whole sequence is one block instead (one pass, no loop: faster, and
its T x T scores per head are small at such lengths).
For every query we keep the running max ``m``, ``l = sum exp(s - m)`` and ``e = sum exp(s - m) (s - m)``;
then ``log Z = m + log l`` and the entropy is ``log l - e / l``. The logits of the few keys whose share
we report (the sink token, register tokens) are computed directly and divided by ``Z`` at the end.

Conventions (documented in docs/analysis.md):
- A query counts only if it comes after the sink position: query ``sink`` itself trivially puts all its
  weight on itself (share 1), and earlier queries cannot see the sink. Register positions never count.
- A virtual sink slot (learned or off-by-one sink logit) is part of the softmax: its mass is reported as
  ``sink_peer_share`` and its probability enters the entropy.
- GQA: query head ``h`` reads KV head ``h // (H / Hk)`` (HF ``repeat_kv`` and our ``repeat_interleave``).
- ``selection`` (B, T, J): a DSA layer's key positions per query (those after the query are unused slots);
  every statistic is then over the selected keys only, as the layer attends.
- ``active_queries`` (B, T) splits the counted queries in two groups (e.g. the Bigram-Backcopy task's queries
  at trigger tokens, where Guo et al.'s heads are active, and the dormant rest); the first-token share is then
  also reported per group.
"""

from __future__ import annotations

import torch

SINGLE_BLOCK = 2048  # up to this many positions, each head's statistics in one block (T x T scores)


def allowed_keys(q_pos: torch.Tensor, k_pos: torch.Tensor, window: int | None) -> torch.Tensor:
    """(q, k) boolean: causal, and within the sliding window when there is one (HF: i - j < window)."""
    ok = k_pos[None, :] <= q_pos[:, None]
    if window is not None:
        ok &= k_pos[None, :] > q_pos[:, None] - window
    return ok


def _grouped(q: torch.Tensor, k: torch.Tensor):
    """q (B, H, T, D), k (B, Hk, S, D) -> (B, Hk, G, T, D), (B, Hk, 1, S, D) in at least float32."""
    B, H, T, D = q.shape
    Hk = k.shape[1]
    if H % Hk:
        raise ValueError(f"{H} query heads are not a multiple of {Hk} key heads")
    dtype = torch.promote_types(q.dtype, torch.float32)
    return q.to(dtype).view(B, Hk, H // Hk, T, D), k.to(dtype)[:, :, None]


def selected_keys(selection: torch.Tensor, q_pos: torch.Tensor, num_keys: int) -> torch.Tensor:
    """(B, c, J) selected key positions of the queries at ``q_pos`` -> (B, c, num_keys) bool, dropping the
    unused slots (positions after their query), which go to one spare column that is cut off."""
    used = selection <= q_pos[None, :, None]
    mask = torch.zeros(*selection.shape[:2], num_keys + 1, dtype=torch.bool, device=selection.device)
    return mask.scatter_(-1, torch.where(used, selection, num_keys), True)[..., :num_keys]


@torch.no_grad()
def attention_head_stats(q: torch.Tensor, k: torch.Tensor, scale: float, sink_pos: torch.Tensor, *,
                         num_registers: int = 0, sink_logit: torch.Tensor | None = None,
                         window: int | None = None, active_queries: torch.Tensor | None = None,
                         selection: torch.Tensor | None = None, query_chunk: int = 256,
                         key_chunk: int = 1024, single_block: int = SINGLE_BLOCK) -> dict[str, torch.Tensor]:
    """Mean over counted queries (and the batch) of per-head attention statistics.

    q: (B, H, T, D) and k: (B, Hk, T, D), post-RoPE; ``scale`` multiplies q·k; ``sink_pos`` (B,) the
    position of the token whose share is measured (>= num_registers). Returns (H,) tensors:
    ``first_token_share``, ``entropy`` (nats), ``queries`` (how many were counted), and
    ``register_share`` / ``sink_peer_share`` when there are registers / a sink logit. With ``active_queries``
    ((B, T) bool over the positions of q), also ``first_token_share_active`` / ``_dormant`` (nan for a group
    with no counted query) and their query counts ``queries_active`` / ``queries_dormant``.
    """
    B, H, T, _ = q.shape
    if T <= single_block:
        query_chunk = key_chunk = T
    qg, kg = _grouped(q, k)
    Hk, G = qg.shape[1], qg.shape[2]
    dev = q.device
    sink_pos = sink_pos.to(dev).long()
    peer = None if sink_logit is None else sink_logit.to(qg.dtype).view(1, Hk, G, 1)
    k_sink = kg[torch.arange(B, device=dev), :, :, sink_pos][:, :, :, None]  # B, Hk, 1, 1, D
    sums = {name: qg.new_zeros(Hk, G) for name in ("first_token_share", "entropy", "register_share",
                                                  "sink_peer_share")}
    count = qg.new_zeros(())
    groups = {}
    if active_queries is not None:
        if active_queries.shape != (B, T):
            raise ValueError(f"active_queries must have shape {(B, T)}, got {tuple(active_queries.shape)}")
        active_queries = active_queries.to(dev, torch.bool)
        groups = {g: [qg.new_zeros(Hk, G), qg.new_zeros(())] for g in ("active", "dormant")}
    for a in range(0, T, query_chunk):
        b = min(a + query_chunk, T)
        qc = qg[..., a:b, :]
        q_pos = torch.arange(a, b, device=dev)
        counted = (q_pos[None, :] > sink_pos[:, None]).to(qg.dtype)  # B, c
        if not counted.any():
            continue
        chosen = None if selection is None else selected_keys(selection[:, a:b], q_pos, T)  # B, c, T
        shape = (*qc.shape[:-1],)  # B, Hk, G, c
        if peer is None:
            m, l = qc.new_full(shape, float("-inf")), qc.new_zeros(shape)
        else:
            m, l = peer.expand(shape).clone(), qc.new_ones(shape)
        e = qc.new_zeros(shape)
        qs = qc * scale
        start = 0 if window is None else max(0, a - window + 1)
        for ks in range(start, b, key_chunk):
            ke = min(ks + key_chunk, b)
            s = qs @ kg[..., ks:ke, :].transpose(-1, -2)
            # Only blocks crossing the diagonal (or the window's edge) hide keys from some queries.
            hidden = None
            if ke - 1 > a or (window is not None and ks <= b - 1 - window):
                hidden = ~allowed_keys(q_pos, torch.arange(ks, ke, device=dev), window)
            if chosen is not None:
                unchosen = ~chosen[:, None, None, :, ks:ke]
                hidden = unchosen if hidden is None else hidden | unchosen
            if hidden is not None:
                s.masked_fill_(hidden, float("-inf"))
            m_new = torch.maximum(m, s.amax(-1))
            m_ref = torch.where(torch.isfinite(m_new), m_new, torch.zeros_like(m_new))  # rows not started
            s.sub_(m_ref[..., None])  # s - m, in place: these blocks are the big tensors
            p = torch.exp(s)
            if hidden is not None:
                s.masked_fill_(hidden, 0.0)  # p * (s - m) must be 0, not nan, where hidden
            alpha = torch.exp(m - m_ref)
            seen = torch.where(l > 0, l * (m - m_ref), torch.zeros_like(l))
            e = alpha * (e + seen) + (p[..., None, :] @ s[..., :, None])[..., 0, 0]
            l = alpha * l + p.sum(-1)
            m = m_new
        log_z = m + torch.log(l)
        stats = {"entropy": torch.log(l) - e / l}
        s_sink = (qs * k_sink).sum(-1)
        sink_ok = allowed_keys(q_pos, sink_pos, window).T[:, None, None, :]  # B, 1, 1, c
        if chosen is not None:
            sink_ok = sink_ok & chosen[torch.arange(B, device=dev), :, sink_pos][:, None, None, :]
        stats["first_token_share"] = torch.where(sink_ok, torch.exp(s_sink - log_z), torch.zeros_like(log_z))
        if num_registers:
            s_reg = qs @ kg[..., :num_registers, :].transpose(-1, -2)
            reg_hidden = ~allowed_keys(q_pos, torch.arange(num_registers, device=dev), window)
            if chosen is not None:
                reg_hidden = reg_hidden | ~chosen[:, None, None, :, :num_registers]
            s_reg = s_reg.masked_fill(reg_hidden, float("-inf"))
            stats["register_share"] = torch.exp(s_reg - log_z[..., None]).sum(-1)
        if peer is not None:
            stats["sink_peer_share"] = torch.exp(peer - log_z)
        w = counted[:, None, None, :]
        for name, value in stats.items():
            sums[name] += (value * w).sum((0, -1))
        count += counted.sum()
        for group, acc in groups.items():
            in_group = active_queries[:, a:b] if group == "active" else ~active_queries[:, a:b]
            wg = counted * in_group.to(qg.dtype)
            acc[0] += (stats["first_token_share"] * wg[:, None, None, :]).sum((0, -1))
            acc[1] += wg.sum()
    if count == 0:
        raise ValueError("no query comes after the sink position: the input is too short")
    out = {name: (v / count).reshape(H) for name, v in sums.items()}
    if not num_registers:
        del out["register_share"]
    if peer is None:
        del out["sink_peer_share"]
    out["queries"] = count
    for group, (total, n) in groups.items():
        out[f"first_token_share_{group}"] = (total / n).reshape(H)  # nan when the group is empty
        out[f"queries_{group}"] = n
    return out


@torch.no_grad()
def attention_map(q: torch.Tensor, k: torch.Tensor, scale: float, n: int,
                  sink_logit: torch.Tensor | None = None, window: int | None = None,
                  selection: torch.Tensor | None = None) -> torch.Tensor:
    """Attention probabilities among the first ``n`` positions, (H, n, n), averaged over the batch.

    Causal attention makes this block exact: query i < n sees only keys <= i. A sink slot takes its
    share but is not shown.
    """
    n = min(n, q.shape[2])
    qg, kg = _grouped(q[..., :n, :], k[..., :n, :])
    s = qg @ kg.transpose(-1, -2) * scale  # B, Hk, G, n, n
    pos = torch.arange(n, device=q.device)
    s = s.masked_fill(~allowed_keys(pos, pos, window), float("-inf"))
    if selection is not None:  # a DSA layer: only the selected keys
        s = s.masked_fill(~selected_keys(selection[:, :n], pos, n)[:, None, None], float("-inf"))
    if sink_logit is not None:
        col = sink_logit.to(s.dtype).view(1, *s.shape[1:3], 1, 1).expand(*s.shape[:-1], 1)
        s = torch.cat([s, col], -1)
    p = torch.softmax(s, -1)[..., :n]
    return p.mean(0).flatten(0, 1)
