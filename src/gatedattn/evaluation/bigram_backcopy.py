"""A model's loss on the Bigram-Backcopy task, split into bigram and copy positions, beside the Bayes-optimal
loss of the same tokens (-log p_true from the known bigram matrix and copy rule)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from ..data.bigram_backcopy import BigramBackcopy
from ..data.packing import PackedTokens
from .perplexity import autocast


@dataclass
class LabLoss:
    loss: float  # nats per predicted token, all positions
    bigram_loss: float  # positions whose previous token is ordinary (or BOS)
    copy_loss: float  # positions whose previous token is a trigger (nan if there is none)
    bayes_loss: float  # -log p_true over the same tokens: the best any model can do on them
    bayes_bigram_loss: float  # the same over bigram positions (over copy positions it is 0)
    excess_loss: float  # loss - bayes_loss
    tokens: int  # predicted tokens
    bigram_positions: int
    copy_positions: int
    sequences: int

    def to_dict(self) -> dict:
        return asdict(self)


@torch.no_grad()
def lab_loss(model, lab: BigramBackcopy, tokens: PackedTokens | torch.Tensor, batch_size: int = 64,
             max_batches: int | None = None, dtype: str = "float32") -> LabLoss:
    """The loss of ``model`` on the task's sequences (a PackedTokens split, e.g. ``bundle.val``, or a (B, T)
    tensor of ids), split by position type, with the Bayes-optimal loss of the same tokens."""
    device = next(model.parameters()).device
    batches = tokens.eval_batches(batch_size, max_batches) if isinstance(tokens, PackedTokens) else \
        torch.as_tensor(tokens).split(batch_size)
    sums = {"all": 0.0, "bigram": 0.0, "copy": 0.0, "bayes": 0.0, "bayes_bigram": 0.0}
    n_copy = n_all = sequences = 0
    was_training = model.training
    model.eval()
    try:
        for x in batches:
            with autocast(device, dtype):
                logits = model(x.to(device)).logits
            nll = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), x[:, 1:].flatten().to(device),
                                  reduction="none").view(x.shape[0], -1).double().cpu()
            copy = torch.from_numpy(lab.copy_targets(x.numpy()))
            true_nll = -torch.from_numpy(lab.true_log_probs(x.numpy()))
            sums["all"] += float(nll.sum())
            sums["copy"] += float(nll[copy].sum())
            sums["bigram"] += float(nll[~copy].sum())
            sums["bayes"] += float(true_nll.sum())
            sums["bayes_bigram"] += float(true_nll[~copy].sum())
            n_copy += int(copy.sum())
            n_all += copy.numel()
            sequences += x.shape[0]
    finally:
        model.train(was_training)
    n_bigram = n_all - n_copy
    div = lambda a, b: a / b if b else float("nan")  # noqa: E731
    loss, bayes = div(sums["all"], n_all), div(sums["bayes"], n_all)
    return LabLoss(loss=loss, bigram_loss=div(sums["bigram"], n_bigram), copy_loss=div(sums["copy"], n_copy),
                   bayes_loss=bayes, bayes_bigram_loss=div(sums["bayes_bigram"], n_bigram),
                   excess_loss=loss - bayes, tokens=n_all, bigram_positions=n_bigram, copy_positions=n_copy,
                   sequences=sequences)
