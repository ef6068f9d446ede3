"""Perplexity on packed held-out text: exp of the mean negative log-likelihood per predicted token.

Works for any causal LM whose forward returns ``.logits`` (GatedLM, HF models). Each sequence starts with
BOS, so the first prediction is the first text token; the mean is over all predicted tokens (a shorter
last sequence counts by its tokens, not as a whole batch).
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from ..data.packing import PackedTokens

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


@dataclass
class EvalResult:
    loss: float  # mean negative log-likelihood per predicted token, in nats
    perplexity: float
    tokens: int  # predicted tokens
    sequences: int

    def to_dict(self) -> dict:
        return asdict(self)


def autocast(device: torch.device, dtype: str):
    """bf16 autocast (CPU and CUDA) for ``dtype='bfloat16'``; nothing for float32."""
    if dtype == "float32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=DTYPES[dtype])


@torch.no_grad()
def evaluate_perplexity(model, data: PackedTokens, batch_size: int = 8, max_batches: int | None = None,
                        dtype: str = "float32", progress: bool = False) -> EvalResult:
    from tqdm.auto import tqdm

    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    nll, tokens, sequences = 0.0, 0, 0
    total = data.num_eval_batches(batch_size, max_batches)
    try:
        for x in tqdm(data.eval_batches(batch_size, max_batches), total=total, desc="eval", unit="batch",
                      disable=not progress, leave=False):
            x = x.to(device)
            with autocast(device, dtype):
                logits = model(x).logits
            nll += float(F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), x[:, 1:].flatten(), reduction="sum"))
            tokens += x[:, 1:].numel()
            sequences += x.shape[0]
    finally:
        model.train(was_training)
    loss = nll / tokens if tokens else float("nan")
    return EvalResult(loss=loss, perplexity=math.exp(loss) if tokens else float("nan"), tokens=tokens,
                      sequences=sequences)
