"""Text in, text out: sample a continuation of a prompt from one of our models with its tokenizer."""

from __future__ import annotations

import math

import torch

from ..artifacts import Tokenizer
from ..errors import GatedAttnError
from ..modeling.model import GatedLM


def generate_text(model: GatedLM, tokenizer: Tokenizer, prompt: str, max_new_tokens: int = 64,
                  temperature: float = 0.8, top_p: float = 0.95, top_k: int = 0, seed: int = 0,
                  compile: bool = False) -> str:
    """The continuation of ``prompt`` (BOS + prompt tokens, as in training); ``temperature=0`` is greedy.
    Generation stops at EOS. Settings out of range (NaN included) raise one-line GatedAttnErrors."""
    if not (math.isfinite(temperature) and temperature >= 0):
        raise GatedAttnError(f"temperature must be a finite number >= 0 (0 = greedy), got {temperature}")
    device = next(model.parameters()).device
    ids = [tokenizer.bos_id] + tokenizer.encode(prompt)
    generator = torch.Generator(device).manual_seed(seed)
    out = model.generate(torch.tensor([ids], device=device), max_new_tokens=max_new_tokens,
                         do_sample=temperature > 0, temperature=temperature or 1.0, top_p=top_p, top_k=top_k,
                         eos_token_id=tokenizer.eos_id, generator=generator, compile=compile)
    new = out[0, len(ids):].tolist()
    if tokenizer.eos_id in new:
        new = new[:new.index(tokenizer.eos_id)]
    return tokenizer.decode(new)
