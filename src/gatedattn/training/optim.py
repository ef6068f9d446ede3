"""AdamW with decoupled weight decay on weight matrices only, and the warmup + cosine learning-rate schedule.

No weight decay on: norms and biases (1-D), the gate's input-independent vectors, sink logits, register
tokens and embeddings (a tied lm_head shares the embedding matrix, so it is not decayed either). Decaying
these pulls gains, offsets or per-head gate/sink logits towards 0, which is not a regulariser for them but a
bias (e.g. a zero gate logit means a gate stuck at 0.5).

``train.base_lr_mult`` scales the learning rate of every parameter outside the gates (continued training of
a retrofitted gate); ``train.trainable=gates`` freezes those parameters instead, and
``train.trainable=indexer`` everything but the DSA indexers (DeepSeek's dense warm-up) (``freeze_except``).
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

from ..config import TrainConfig
from ..errors import GatedAttnError
from ..modeling.gate import Gate
from ..modeling.sparse import LightningIndexer

NO_DECAY_NAMES = ("gate.vector", "sink_logit", "register_tokens")


def gate_parameter_ids(model: nn.Module) -> set[int]:
    """The parameters of the gates' own modules (a fused gate's rows live in q_proj and are not among them)."""
    return {id(p) for m in model.modules() if isinstance(m, Gate) for p in m.parameters()}


def freeze_except(model: nn.Module, trainable: str) -> None:
    """Only the gates (train.trainable=gates) or the DSA indexers (indexer) learn; GatedAttnError when the
    model has none of them."""
    if trainable == "gates":
        keep = gate_parameter_ids(model)
        if not keep:
            raise GatedAttnError("train.trainable=gates needs a gate with parameters of its own: a gate position "
                                 "g1..g5 and, at g1/g4, model.attention.gate.fused=false (a fused gate lives in "
                                 "q_proj)")
    else:
        keep = {id(p) for m in model.modules() if isinstance(m, LightningIndexer) for p in m.parameters()}
        if not keep:
            raise GatedAttnError("train.trainable=indexer needs DSA layers (model.attention.sparse.type=dsa)")
    for p in model.parameters():
        p.requires_grad_(id(p) in keep)


def param_groups(model: nn.Module, weight_decay: float, base_lr_mult: float = 1.0) -> list[dict]:
    """AdamW groups [decay, no decay], each with the ``lr_mult`` of train.lr it runs at; with ``base_lr_mult``
    != 1 the gates' two groups come first (at 1, so group 0 shows train.lr) and the base groups follow."""
    embeddings = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    gates = gate_parameter_ids(model) if base_lr_mult != 1 else set()
    if base_lr_mult != 1 and not gates:
        raise GatedAttnError("train.base_lr_mult scales the parameters outside the gates, but this model has no "
                             "gate of its own (a gate position g1..g5 and, at g1/g4, gate.fused=false)")
    kinds = ([(True, True), (True, False)] if gates else []) + [(False, True), (False, False)]  # (gate, decay)
    groups = {kind: [] for kind in kinds}
    for name, p in model.named_parameters():  # shared (tied) parameters are listed once
        if not p.requires_grad:
            continue
        decay = not (p.ndim < 2 or id(p) in embeddings or name.endswith(NO_DECAY_NAMES))
        groups[(id(p) in gates, decay)].append(p)
    return [{"params": params, "weight_decay": weight_decay if decay else 0.0,
             "lr_mult": 1.0 if gate or not gates else base_lr_mult} for (gate, decay), params in groups.items()]


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
    groups = param_groups(model, cfg.weight_decay, cfg.base_lr_mult)
    for group in groups:
        group["lr"] = cfg.lr * group["lr_mult"]
    opt = torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2))
    sched = LambdaLR(opt, lambda step: lr_factor(step, cfg, schedule_steps))
    return opt, sched
