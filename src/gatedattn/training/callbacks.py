"""Callbacks: how probes, distributed bookkeeping or profiling plug into the Trainer without editing its loop.

Subclass ``Callback`` and override what you need; pass instances as ``Trainer(..., callbacks=[...])`` (or
``train(..., callbacks=[...])``). Each hook gets the trainer, whose ``model``, ``state``, ``optimizer``,
``data`` and ``config`` are public.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..evaluation.perplexity import EvalResult
    from .trainer import RunResult, Trainer


class Callback:
    def on_train_start(self, trainer: Trainer) -> None:
        """After set-up (and resume), before the first step of this session."""

    def on_step_end(self, trainer: Trainer, record: dict) -> None:
        """After every optimizer step; ``record`` holds the step's numbers (as logged, when logged)."""

    def on_eval(self, trainer: Trainer, result: EvalResult) -> None:
        """After each validation."""

    def on_checkpoint(self, trainer: Trainer, path: Path) -> None:
        """After a checkpoint is written and in place."""

    def on_train_end(self, trainer: Trainer, result: RunResult) -> None:
        """When the run is finished (also when a finished run is called again)."""
