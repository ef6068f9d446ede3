"""Long inputs streamed through the KV cache in chunks: token NLL (chunked prefill) and greedy generation.

Memory holds the cache and one chunk's activations and logits, never a T x T score matrix or T x vocab
logits. For our models the cache declares the total length it will reach, which fixes dynamic-NTK
frequencies for the whole sequence (see modeling/rope.py): chunked prefill and cached decoding equal a full
forward exactly. HF models run as HF runs them (its dynamic NTK rescales at every decoding step).
"""

from __future__ import annotations

from typing import Callable

import torch

from .lm import LongContextLM


@torch.no_grad()
def token_nll(lm: LongContextLM, ids: list[int], chunk_size: int = 1024) -> torch.Tensor:
    """Negative log-likelihood (float64) of ids[1:] given their prefixes: chunked prefill into a cache."""
    x = torch.tensor([ids], device=lm.device)
    cache = lm.new_cache(len(ids))
    out = []
    for start in range(0, len(ids) - 1, chunk_size):
        end = min(start + chunk_size, len(ids) - 1)  # the last token is only a target
        logits = lm.logits(x[:, start:end], cache)[0]
        logp = torch.log_softmax(logits.to(torch.promote_types(logits.dtype, torch.float32)), -1)
        out.append(-logp.gather(-1, x[0, start + 1:end + 1, None])[:, 0].double())
    return torch.cat(out)


@torch.no_grad()
def greedy_generate(lm: LongContextLM, ids: list[int], max_new_tokens: int, chunk_size: int = 1024,
                    stop_at_eos: bool = True, stop: Callable[[list[int]], bool] | None = None) -> list[int]:
    """Greedy continuation of ``ids`` with the KV cache: the prompt in chunks, then one token per step."""
    return greedy_generate_batch(lm, [ids], max_new_tokens, chunk_size, stop_at_eos, stop)[0]


@torch.no_grad()
def greedy_generate_batch(lm: LongContextLM, prompts: list[list[int]], max_new_tokens: int, chunk_size: int = 1024,
                          stop_at_eos: bool = True, stop: Callable[[list[int]], bool] | None = None) -> list[list[int]]:
    """Greedy continuations of several prompts, decoded together; each equals its one-at-a-time decoding.

    A row ends at EOS (not kept), once ``stop(new_tokens)`` is true (its tokens kept) or at the budget.
    Prompts of different lengths share a batch by left padding where the model takes a padding mask (HF
    models whose RoPE does not depend on the batch's longest row); otherwise each length is its own batch.
    """
    out: list[list[int] | None] = [None] * len(prompts)
    if lm.pads:
        groups = [list(range(len(prompts)))]
    else:
        by_length: dict[int, list[int]] = {}
        for i, p in enumerate(prompts):
            by_length.setdefault(len(p), []).append(i)
        groups = list(by_length.values())
    for rows in groups:
        for i, new in zip(rows, _decode_batch(lm, [prompts[i] for i in rows], max_new_tokens, chunk_size,
                                              lm.eos_token_id if stop_at_eos else None, stop)):
            out[i] = new
    return out


def _decode_batch(lm: LongContextLM, prompts: list[list[int]], max_new_tokens: int, chunk_size: int,
                  eos: int | None, stop) -> list[list[int]]:
    B, P = len(prompts), max(map(len, prompts))
    x = torch.zeros(B, P + max_new_tokens, dtype=torch.long, device=lm.device)
    mask = torch.ones_like(x)  # left padding: zeros before each row's prompt
    for r, p in enumerate(prompts):
        x[r, P - len(p):P] = torch.tensor(p)
        mask[r, :P - len(p)] = 0
    if min(map(len, prompts)) == P:
        mask = None  # no padding: the model runs exactly as on one row
    cache = lm.new_cache(P + max_new_tokens)
    for start in range(0, P, chunk_size):
        end = min(start + chunk_size, P)
        last = lm.logits(x[:, start:end], cache, mask, start, last_only=True)[:, -1]
    new: list[list[int]] = [[] for _ in prompts]
    running = set(range(B))
    for n in range(P, P + max_new_tokens):
        tokens = last.argmax(-1)
        for r, token in enumerate(tokens.tolist()):
            if r not in running:
                continue
            if token == eos:
                running.discard(r)
                continue
            new[r].append(token)
            if len(new[r]) == max_new_tokens or (stop is not None and stop(new[r])):
                running.discard(r)
        if not running:
            break
        x[:, n] = tokens  # finished rows decode on: their outputs are dropped, the batch keeps its shape
        last = lm.logits(x[:, n:n + 1], cache, mask, n, last_only=True)[:, -1]
    return new


__all__ = ["token_nll", "greedy_generate", "greedy_generate_batch"]
