"""AdamW with decoupled weight decay on weight matrices only, and the warmup + cosine learning-rate schedule.

No weight decay on: norms and biases (1-D), the gate's input-independent vectors, sink logits, register
tokens and embeddings (a tied lm_head shares the embedding matrix, so it is not decayed either). Decaying
these pulls gains, offsets or per-head gate/sink logits towards 0, which is not a regulariser for them but a
bias (e.g. a zero gate logit means a gate stuck at 0.5).
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

from ..config import TrainConfig

NO_DECAY_NAMES = ("gate.vector", "sink_logit", "register_tokens")


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    embeddings = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    decay, no_decay = [], []
    for name, p in model.named_parameters():  # shared (tied) parameters are listed once
        if not p.requires_grad:
            continue
        skip = p.ndim < 2 or id(p) in embeddings or name.endswith(NO_DECAY_NAMES)
        (no_decay if skip else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def lr_factor(step: int, cfg: TrainConfig, schedule_steps: int | None = None) -> float:
    """Multiplier of ``cfg.lr`` for update ``step`` (0-based): linear warmup to 1 over ``warmup_steps``
    updates, then cosine decay reaching ``min_lr_ratio`` at update ``schedule_steps - 1`` (default: the
    last, ``max_steps - 1``), and that floor after it."""
    total = cfg.max_steps if schedule_steps is None else schedule_steps
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, total - 1 - cfg.warmup_steps))
    return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def build_optimizer(model: nn.Module, cfg: TrainConfig,
                    schedule_steps: int | None = None) -> tuple[torch.optim.Optimizer, LambdaLR]:
    opt = torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2))
    sched = LambdaLR(opt, lambda step: lr_factor(step, cfg, schedule_steps))
    return opt, sched
