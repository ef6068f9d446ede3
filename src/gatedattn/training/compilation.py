"""``train.compile``: which part of the training forward runs under ``torch.compile``.

``auto`` compiles the blocks only where that was measured to pay for its compilation (docs/performance.md):
on the CPU, single-process, a dense full-attention model (gated or not) and a run of at least
``AUTO_COMPILE_FLOPS`` model FLOPs. Compiling the blocks costs about 20 s on 2 cores (cold cache, ``small``)
and saves 10-25% of each step, so it pays after a few minutes of eager training; the threshold, 15-20
minutes of eager fp32 training of ``small`` on 2 cores, leaves room for slower compilers and smaller gains.
Elsewhere (GPU: not measured here; DDP/FSDP, activation checkpointing, MoE, DeltaNet, DSA; no C++ compiler
for inductor) it stays eager unless asked.
"""

from __future__ import annotations

import torch
from torch import nn

from ..config import Config
from ..modeling.model import GatedLM
from ..modeling.stats import model_stats

AUTO_COMPILE_FLOPS = 1e14


def has_cpp_compiler() -> bool:
    """Whether inductor finds the C++ compiler its CPU kernels need (without one, compiling fails)."""
    try:
        from torch._inductor.cpp_builder import get_cpp_compiler

        get_cpp_compiler()
    except Exception:  # its search raises when no compiler is installed; a moved private API counts as none
        return False
    return True


def planned_flops(cfg: Config) -> float:
    """Model FLOPs of the whole run: forward + backward of every planned token."""
    tc, seq = cfg.train, cfg.data.seq_len
    return model_stats(cfg.model, seq)["train_flops_per_token"] * tc.max_steps * tc.grad_accum * tc.batch_size * seq


def compile_mode(cfg: Config, device: torch.device) -> tuple[str, str]:
    """(off | model | blocks, why) for ``cfg.train.compile`` on ``device``."""
    tc = cfg.train
    if tc.compile != "auto":
        return tc.compile, "train.compile"
    unmeasured = [reason for reason, applies in (
        (f"device {device.type}", device.type != "cpu"), (f"train.parallel={tc.parallel}", tc.parallel != "none"),
        ("activation checkpointing", tc.activation_checkpointing),
        *((kind, True) for kind in cfg.model.beyond_dense_attention)) if applies]
    if unmeasured:
        return "off", f"train.compile=auto is eager with {', '.join(unmeasured)}"
    flops = planned_flops(cfg)
    if flops < AUTO_COMPILE_FLOPS:
        return "off", f"train.compile=auto: {flops:.2g} planned FLOPs < {AUTO_COMPILE_FLOPS:.0e}, too short to pay"
    if not has_cpp_compiler():  # checked last: it imports inductor
        return "off", "train.compile=auto is eager with no C++ compiler for inductor"
    return "blocks", f"train.compile=auto: {flops:.2g} planned FLOPs >= {AUTO_COMPILE_FLOPS:.0e}"


def compiled_forward(mode: str, model: GatedLM, wrapped: nn.Module):
    """The callable that runs training forwards under ``mode``; ``wrapped`` is the (maybe DDP) module."""
    if mode == "model":
        return torch.compile(wrapped)
    if mode == "blocks":
        model.compile_blocks()
    return wrapped
