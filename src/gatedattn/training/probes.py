"""Sink probes during training (``train.probe_every=N``): a callback the Trainer adds by itself.

Every N steps (and at step 0 and the last step) it runs ``analysis.sink_probe`` on a fixed probe batch, the
first ``train.batch_size`` validation sequences (training ones when there is no validation split), with the
active/dormant query split of the Bigram-Backcopy task when that is the data, and writes one record
``{"step": s, "probe/...": ...}`` through the trainer's metrics log. The probe runs in eval mode without
gradients, draws no random numbers and restores train mode, so training losses are untouched. Records carry
their step, so a resume truncates them with the rest; a probe that a kill kept from being written (it follows
the checkpoint of its step) is written when the run resumes, and one already written is not repeated.
"""

from __future__ import annotations

import torch

from ..analysis.probes import PREFIX, sink_probe
from .callbacks import Callback

_MARK = PREFIX + "sink_rate"


class SinkProbeCallback(Callback):
    def __init__(self, every: int):
        self.every = every
        self.ids: torch.Tensor | None = None
        self.active: torch.Tensor | None = None

    def _batch(self, trainer) -> None:
        data = trainer.data
        split = data.val if data.val is not None and len(data.val) else data.train
        n = min(len(split), trainer.config.train.batch_size)
        self.ids = split.batch(range(n))
        self.active = torch.from_numpy(data.lab.active_queries(self.ids.numpy())) if data.lab is not None else None

    def _due(self, trainer) -> bool:
        step = trainer.state.step
        return step % self.every == 0 or step == trainer.config.train.max_steps

    def _done(self, trainer) -> bool:
        step = trainer.state.step
        return any(r.get("step") == step and _MARK in r for r in trainer.history)

    def probe(self, trainer) -> dict:
        if self.ids is None:
            self._batch(trainer)
        result = sink_probe(trainer.model, self.ids, self.active)
        record = {"step": trainer.state.step, **result.to_record()}
        trainer.log_metrics(record)
        return record

    def on_train_start(self, trainer) -> None:
        if self._due(trainer) and not self._done(trainer):  # step 0, or a resume whose probe was never written
            self.probe(trainer)

    def on_step_end(self, trainer, record: dict) -> None:
        if self._due(trainer):
            self.probe(trainer)

    def on_train_end(self, trainer, result) -> None:
        if self._due(trainer) and not self._done(trainer):  # killed after the final checkpoint
            self.probe(trainer)
