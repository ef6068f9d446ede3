"""Perplexity by token position and by context length: windows over one token stream, NLL summed per
position bucket, and their aggregate."""

from __future__ import annotations

import math
from typing import Iterable

import torch

from .lm import LongContextLM
from .streaming import token_nll


def bucket_edges(max_length: int) -> list[int]:
    """Position buckets [1, 16), [16, 32), [32, 64), ... up to max_length (doubling, so a log axis)."""
    edges = [1, 16]
    while edges[-1] < max_length:
        edges.append(edges[-1] * 2)
    edges[-1] = max_length
    return edges


def window_starts(stream_tokens: int, longest: int, windows: int) -> list[int]:
    """Where the windows start in the token stream: spread evenly, the same for every length (so a shorter
    context is a prefix of a longer one and lengths differ only in how much context they see)."""
    room = stream_tokens - longest
    return [0 if windows == 1 else round(w * room / (windows - 1)) for w in range(windows)]


def perplexity_window(lm: LongContextLM, stream: list[int], length: int, window: int, start: int,
                      edges: list[int], chunk_size: int) -> dict:
    """NLL sums per position bucket of one ``length``-token window: the model's prefix (BOS for ours), then
    the text tokens from ``start``."""
    body = length - len(lm.prefix)
    nll = token_nll(lm, lm.prefix + stream[start:start + body], chunk_size)  # position p predicts token p
    positions = torch.arange(1, length)
    buckets = []
    for lo, hi in zip(edges[:-1], edges[1:]):
        mask = (positions >= lo) & (positions < hi)
        if mask.any():
            buckets.append({"start": lo, "end": hi, "nll_sum": float(nll[mask].sum()), "tokens": int(mask.sum())})
    return {"length": length, "window": window, "start_token": start, "nll_sum": float(nll.sum()),
            "tokens": len(nll), "buckets": buckets}


def summarize_perplexity(records: Iterable[dict]) -> dict:
    """{length: {ppl, tokens, windows, buckets: [{start, end, ppl, tokens}]}} from window records."""
    out: dict[int, dict] = {}
    for r in records:
        agg = out.setdefault(r["length"], {"nll_sum": 0.0, "tokens": 0, "windows": 0, "buckets": {}})
        agg["nll_sum"] += r["nll_sum"]
        agg["tokens"] += r["tokens"]
        agg["windows"] += 1
        for b in r["buckets"]:
            acc = agg["buckets"].setdefault((b["start"], b["end"]), [0.0, 0])
            acc[0] += b["nll_sum"]
            acc[1] += b["tokens"]
    return {length: {"ppl": math.exp(a["nll_sum"] / a["tokens"]), "tokens": a["tokens"], "windows": a["windows"],
                     "buckets": [{"start": lo, "end": hi, "ppl": math.exp(s / n), "tokens": n}
                                 for (lo, hi), (s, n) in sorted(a["buckets"].items())]}
            for length, a in sorted(out.items())}


__all__ = ["bucket_edges", "window_starts", "perplexity_window", "summarize_perplexity"]
