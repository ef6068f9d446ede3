"""Deterministic, resumable sampling: a seeded permutation per epoch and a position that checkpoints save.

The order of epoch e is ``numpy.random.default_rng([seed, e]).permutation(n)``, a pure function of
(seed, epoch), so the state is just (epoch, index): restoring it continues the exact same sequence.
"""

from __future__ import annotations

import numpy as np

from ..errors import GatedAttnError


class EpochSampler:
    def __init__(self, num_items: int, seed: int):
        if num_items <= 0:
            raise GatedAttnError("nothing to sample from: the training split has no full sequence")
        self.num_items, self.seed = num_items, seed
        self.epoch, self.index = 0, 0
        self._order = self.order(0)

    def order(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, epoch]).permutation(self.num_items)

    def next_indices(self, count: int) -> np.ndarray:
        """The next ``count`` item indices, continuing into the next epoch's permutation when one ends."""
        out = []
        while count:
            take = min(count, self.num_items - self.index)
            out.append(self._order[self.index:self.index + take])
            self.index += take
            count -= take
            if self.index == self.num_items:
                self.epoch, self.index = self.epoch + 1, 0
                self._order = self.order(self.epoch)
        return np.concatenate(out)

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "index": self.index, "num_items": self.num_items, "seed": self.seed}

    def load_state_dict(self, state: dict) -> None:
        if (state["num_items"], state["seed"]) != (self.num_items, self.seed):
            raise GatedAttnError(f"the checkpoint's data position is for {state['num_items']} sequences with "
                                 f"seed {state['seed']}, but the data now has {self.num_items} with seed "
                                 f"{self.seed}: the data or its settings changed since the run started")
        self.epoch, self.index = state["epoch"], state["index"]
        self._order = self.order(self.epoch)
