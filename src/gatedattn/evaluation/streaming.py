"""Long inputs streamed through the KV cache in chunks: token NLL (chunked prefill) and greedy generation.

Memory holds the cache and one chunk's activations and logits, never a T x T score matrix or T x vocab
logits. For our models the cache declares the total length it will reach, which fixes dynamic-NTK
frequencies for the whole sequence (see modeling/rope.py): chunked prefill and cached decoding equal a full
forward exactly. HF models run as HF runs them (its dynamic NTK rescales at every decoding step).
"""

from __future__ import annotations

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
                    stop_at_eos: bool = True) -> list[int]:
    """Greedy continuation of ``ids`` with the KV cache: the prompt in chunks, then one token per step."""
    x = torch.tensor([ids], device=lm.device)
    cache = lm.new_cache(len(ids) + max_new_tokens)
    for start in range(0, len(ids), chunk_size):
        last = lm.logits(x[:, start:start + chunk_size], cache)[:, -1]
    new: list[int] = []
    while len(new) < max_new_tokens:
        token = int(last.argmax(-1))
        if stop_at_eos and token == lm.eos_token_id:
            break
        new.append(token)
        if len(new) < max_new_tokens:
            last = lm.logits(torch.tensor([[token]], device=lm.device), cache)[:, -1]
    return new


__all__ = ["token_nll", "greedy_generate"]
