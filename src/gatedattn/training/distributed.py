"""Data parallelism over the processes torchrun starts: ``train.parallel = none | ddp | fsdp``.

Every rank builds the same model from the same seed and walks the same sampler; each optimizer step's global
micro-batch of ``train.batch_size`` sequences is cut into ``world_size`` contiguous, disjoint slices, one per
rank. DDP and FSDP average the gradients over ranks, which (all sequences having the same number of targets)
is the gradient of the global batch's mean loss: the math of a single process with the same batch, up to
the order of fp32 sums. docs/distributed.md has the commands and the parity figures.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import os
import warnings
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..config import TrainConfig
from ..errors import GatedAttnError
from ..modeling.ffn import MoE
from ..modeling.model import GatedLM
from .optim import build_optimizer


def launched_rank() -> int:
    """This process's rank as torchrun set it (0 when not launched by torchrun)."""
    return int(os.environ.get("RANK", "0"))


@dataclass
class Parallel:
    """Where this process stands among the ranks; ``mode`` none means one process and no process group."""

    mode: str
    device: torch.device
    rank: int = 0
    world_size: int = 1
    owns_group: bool = False  # whether setup_parallel created the process group (and so destroys it)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.mode != "none"

    def shard(self, indices: np.ndarray) -> np.ndarray:
        """This rank's contiguous slice of a global batch's indices."""
        if not self.active:
            return indices
        per_rank = len(indices) // self.world_size
        return indices[self.rank * per_rank:(self.rank + 1) * per_rank]

    def mean(self, values: torch.Tensor) -> torch.Tensor:
        """The mean of ``values`` over ranks (the global batch's mean of per-rank means)."""
        if not self.active or self.world_size == 1:
            return values
        values = values.clone()
        dist.all_reduce(values)
        return values / self.world_size

    def barrier(self) -> None:
        if self.active:
            dist.barrier()

    @contextlib.contextmanager
    def main_first(self):
        """Rank 0 runs the block first (e.g. filling the data cache), the others after it."""
        if not self.is_main:
            self.barrier()
        yield
        if self.is_main:
            self.barrier()

    def broadcast(self, value):
        """Rank 0's ``value`` (any picklable object) on every rank."""
        if not self.active:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def close(self) -> None:
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()
            self.owns_group = False


def setup_parallel(tc: TrainConfig, device: torch.device) -> Parallel:
    """Join (or create) the process group for ``tc.parallel``: gloo on CPU, NCCL on CUDA (one GPU per local
    rank). Launched by torchrun, the group comes from its environment (``env://``); run as a plain process,
    a one-rank group is made in memory, so ``parallel=fsdp`` also works (and resumes) on one process."""
    if tc.parallel == "none":
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # each rank would train the whole run on its own
            raise GatedAttnError(f"torchrun started {os.environ['WORLD_SIZE']} processes but train.parallel=none; "
                                 "set train.parallel=ddp or fsdp (compare and sweep train in one process)")
        return Parallel("none", device)
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    owns = not dist.is_initialized()
    if owns:
        backend = "nccl" if device.type == "cuda" else "gloo"
        if "MASTER_ADDR" in os.environ:
            dist.init_process_group(backend, device_id=device if device.type == "cuda" else None)
        else:
            dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1)
    rank, world = dist.get_rank(), dist.get_world_size()
    if tc.batch_size % world:
        if owns:
            dist.destroy_process_group()
        raise GatedAttnError(f"train.batch_size={tc.batch_size} (the global micro-batch) must be a multiple of "
                             f"the {world} ranks; e.g. train.batch_size={world * max(1, tc.batch_size // world)}")
    if rank != 0:  # one voice: rank 0 logs; the others say only what went wrong
        logging.getLogger("gatedattn").setLevel(logging.ERROR)
    return Parallel(tc.parallel, device, rank, world, owns)


def apply_activation_checkpointing(model: GatedLM) -> None:
    """Recompute each block in the backward pass instead of keeping its activations. The block's ``forward``
    is wrapped in place (not the module), so parameter names, hooks and checkpoints keep their names."""
    for layer in model.layers:
        layer.forward = functools.partial(checkpoint, layer.forward, use_reentrant=False)


def parallelize(model: GatedLM, tc: TrainConfig, parallel: Parallel) -> nn.Module:
    """Wrap ``model`` (already on its device) for ``tc.parallel``; returns the module to call for training.

    fsdp shards every block, then the root (embeddings, final norm, head), in place: ``model`` itself becomes
    the sharded module. ddp returns a DistributedDataParallel around ``model``."""
    if tc.activation_checkpointing:
        apply_activation_checkpointing(model)
    if not parallel.active:
        return model
    moes = [m for m in model.modules() if isinstance(m, MoE)]
    if moes:  # its own group, so that the counts' all-reduce never interleaves with the gradients' ones
        group = dist.new_group(backend="nccl" if parallel.device.type == "cuda" else "gloo")
        for moe in moes:
            moe.count_group = group
    if tc.parallel == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        ids = [parallel.device] if parallel.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids)
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    # The model's output holds views; the warning is about writing into them in place, which nothing does.
    warnings.filterwarnings("ignore", message="FSDP2-wrapped module .* returned a view tensor")
    policy = MixedPrecisionPolicy(param_dtype=getattr(torch, tc.fsdp_param_dtype), reduce_dtype=torch.float32)
    for layer in model.layers:
        fully_shard(layer, mp_policy=policy)
    fully_shard(model, mp_policy=policy)
    return model


def named_optimizer_state(model: GatedLM, tc: TrainConfig, saved: dict) -> dict:
    """A single-process checkpoint's optimizer state (keyed by parameter order) keyed by parameter name, whole,
    so that ``load_named_optimizer_state`` can shard it; ``model`` is the plain (not yet sharded) model."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    optimizer, _ = build_optimizer(model, tc)
    optimizer.load_state_dict(saved)
    return get_optimizer_state_dict(model, optimizer, options=StateDictOptions(full_state_dict=True))


def load_named_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer, state: dict) -> None:
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    set_optimizer_state_dict(model, optimizer, state, options=StateDictOptions(full_state_dict=True))


def clip_grad_norm(params: list[torch.Tensor], max_norm: float, parallel: Parallel) -> float:
    """Clip the gradients to a global norm of ``max_norm`` (inf: none) and return the norm before clipping.
    Under FSDP each rank holds a shard of each gradient; the norm is taken over the whole of them. (It need
    not match one process's to the last digits: fp32 norms of large CPU tensors are off by up to ~1e-4
    relative, and the shards' are not the whole's; docs/distributed.md.)"""
    if not parallel.active:
        return float(torch.nn.utils.clip_grad_norm_(params, max_norm))
    grads = [p.grad for p in params if p.grad is not None]
    total = torch.nn.utils.get_total_norm(grads, 2.0)
    if hasattr(total, "full_tensor"):  # a DTensor: each rank holds its shards' part
        total = total.full_tensor()
    if math.isfinite(max_norm):
        torch.nn.utils.clip_grads_with_norm_(params, max_norm, total)
    return float(total)
