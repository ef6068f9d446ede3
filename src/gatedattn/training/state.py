"""What a run's progress is, beside the weights and the optimizer: ``TrainState`` and the RNG states.

Both save into ``trainer_state.pt`` through ``Trainer.state_dict()`` and come back through
``Trainer.load_state_dict()``, so what is saved and what is restored are read in one place.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class TrainState:
    step: int = 0  # optimizer steps done
    tokens: int = 0  # training tokens seen
    spikes: int = 0  # loss spikes logged
    nonfinite_skips: int = 0  # updates skipped for a non-finite loss or gradient
    nonfinite_run: int = 0  # of them, in a row up to now
    last_loss: float | None = None  # the last step's loss
    last_val_loss: float | None = None  # the last validation

    def state_dict(self) -> dict:
        return {"step": self.step, "tokens": self.tokens, "last_loss": self.last_loss,
                "last_val_loss": self.last_val_loss,
                "counters": {"spikes": self.spikes, "nonfinite_skips": self.nonfinite_skips,
                             "nonfinite_run": self.nonfinite_run}}

    def load_state_dict(self, state: dict) -> None:
        c = state["counters"]
        self.step, self.tokens = state["step"], state["tokens"]
        self.spikes, self.nonfinite_skips, self.nonfinite_run = c["spikes"], c["nonfinite_skips"], c["nonfinite_run"]
        self.last_loss, self.last_val_loss = state.get("last_loss"), state.get("last_val_loss")


def rng_state() -> dict:
    """torch, NumPy, Python (and CUDA) generator states, as tensors and plain types (``weights_only`` loads)."""
    np_state = np.random.get_state()
    py_version, py_state, py_gauss = random.getstate()
    state = {"torch": torch.get_rng_state(),
             "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                       "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
             "python": {"version": py_version, "state": list(py_state), "gauss": py_gauss}}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
