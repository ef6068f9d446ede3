"""Sweep specs: what a sweep trains. A spec names the tasks (the sink lab, natural text), each task's base
config (compare's budgets plus overrides), a grid (variants and any dotted config keys, each with a list of
values) and the seeds; ``quick`` replaces some of those keys under ``--quick``.

A spec is a YAML file or one of the built-in ``SPECS`` (``gatedattn sweep NAME --print-spec`` shows one as
YAML, a starting point for your own). Every cell of the grid is run once per seed.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import GatedAttnError
from .variants import MATCHED, TASKS, VARIANTS

VARIANT_AXIS = "variant"


@dataclass
class SweepSpec:
    name: str
    description: str = ""
    tasks: list[str] = field(default_factory=lambda: list(TASKS))
    preset: str | None = None  # of the text task (default: compare's, "small", or "compare-quick" with quick)
    set: dict = field(default_factory=dict)  # dotted overrides of the text task
    lab_set: dict = field(default_factory=dict)  # dotted overrides of the sink lab
    grid: dict = field(default_factory=lambda: {VARIANT_AXIS: ["none", "g1"]})  # axis -> values
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    baseline: str = "none"  # the value of baseline_axis every other cell is paired against (equal on all other axes)
    baseline_axis: str = VARIANT_AXIS  # the grid axis whose values are compared, e.g. model.layer_types
    eval_batches: int | None = 16  # held-out batches per run (None = the whole validation split)
    divergence_loss: float | None = None  # final loss above this = diverged (default: ln(vocab), uniform)
    paper: str | None = None  # the paper's table shown beside the results: table1 .. table4
    quick: dict = field(default_factory=dict)  # keys of this spec replaced under --quick
    budget: str = "quick"  # compare's budget each task starts from: quick | default

    def validate(self) -> "SweepSpec":
        where = f"sweep spec {self.name!r}"
        unknown = [t for t in self.tasks if t not in TASKS]
        if not self.tasks or unknown or len(set(self.tasks)) != len(self.tasks):
            raise GatedAttnError(f"{where}: tasks must list each of {', '.join(TASKS)} at most once, got "
                                 f"{self.tasks}")
        if not isinstance(self.grid, dict) or not self.grid:
            raise GatedAttnError(f"{where}: the grid is empty; give at least one axis, e.g. "
                                 f"grid: {{variant: [none, g1]}}")
        for axis, values in self.grid.items():
            if not isinstance(values, list) or not values:
                raise GatedAttnError(f"{where}: grid axis {axis!r} needs a non-empty list of values, got {values!r}")
            if len({repr(v) for v in values}) != len(values):
                raise GatedAttnError(f"{where}: grid axis {axis!r} repeats a value: {values}")
            if axis != VARIANT_AXIS and ("." not in axis or axis.split(".")[0] not in ("model", "data", "train")):
                raise GatedAttnError(f"{where}: grid axis {axis!r} is neither 'variant' nor a dotted config key "
                                     "(model.*, data.*, train.*)")
            if axis == "train.seed":
                raise GatedAttnError(f"{where}: seeds are the 'seeds' list, not a grid axis")
        allowed = [*VARIANTS, *MATCHED]
        bad = [v for v in self.grid.get(VARIANT_AXIS, []) if v not in allowed]
        if bad:
            raise GatedAttnError(f"{where}: unknown variant(s) {bad}; allowed: {', '.join(allowed)}")
        if self.baseline_axis != VARIANT_AXIS and self.baseline_axis not in self.grid:
            raise GatedAttnError(f"{where}: baseline_axis {self.baseline_axis!r} is not an axis of the grid "
                                 f"({', '.join(self.grid)})")
        if self.baseline_axis in self.grid and self.baseline_value() is None:
            raise GatedAttnError(f"{where}: baseline {self.baseline!r} is not among the grid's values of "
                                 f"{self.baseline_axis!r}: {self.grid[self.baseline_axis]}")
        if not self.seeds or not all(isinstance(s, int) and s >= 0 for s in self.seeds) \
                or len(set(self.seeds)) != len(self.seeds):
            raise GatedAttnError(f"{where}: seeds must be distinct non-negative integers, got {self.seeds}")
        if self.budget not in ("quick", "default"):
            raise GatedAttnError(f"{where}: budget must be quick or default, got {self.budget!r}")
        if self.eval_batches is not None and (not isinstance(self.eval_batches, int) or self.eval_batches < 1):
            raise GatedAttnError(f"{where}: eval_batches must be a positive integer or null, got {self.eval_batches}")
        if self.paper is not None and self.paper not in ("table1", "table2", "table3", "table4"):
            raise GatedAttnError(f"{where}: paper must be one of table1, table2, table3, table4, got {self.paper!r}")
        return self

    def baseline_value(self):
        """The grid's value of the baseline axis that ``baseline`` names (YAML may give 1e-3 where the grid
        has 0.001), or None."""
        return next((v for v in self.grid.get(self.baseline_axis, []) if _same_value(v, self.baseline)), None)

    def cells(self) -> list[dict]:
        """Every combination of the grid's values, as {axis: value}, in grid order."""
        axes = list(self.grid)
        return [dict(zip(axes, values)) for values in itertools.product(*(self.grid[a] for a in axes))]

    def with_quick(self) -> "SweepSpec":
        """The spec as ``--quick`` runs it."""
        return from_dict({**self.to_dict(), **self.quick, "quick": {}, "name": self.name})

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _same_value(a, b) -> bool:
    if a == b or str(a) == str(b):
        return True
    try:
        return float(a) == float(b)
    except (TypeError, ValueError):
        return False


_FIELDS = [f.name for f in dataclasses.fields(SweepSpec)]


def from_dict(d: dict, where: str = "sweep spec") -> SweepSpec:
    if not isinstance(d, dict):
        raise GatedAttnError(f"{where}: expected a mapping of {', '.join(_FIELDS)}")
    unknown = [k for k in d if k not in _FIELDS]
    if unknown:
        raise GatedAttnError(f"{where}: unknown key(s) {unknown}; allowed: {', '.join(_FIELDS)}")
    bad_quick = [k for k in d.get("quick") or {} if k not in _FIELDS or k in ("name", "quick")]
    if bad_quick:
        raise GatedAttnError(f"{where}: quick may not set {bad_quick}; allowed: "
                             f"{', '.join(f for f in _FIELDS if f not in ('name', 'quick'))}")
    d = copy.deepcopy(d)
    if isinstance(d.get("seeds"), int):  # "seeds: 3" = seeds 0, 1, 2
        d["seeds"] = list(range(d["seeds"]))
    if "name" not in d:
        raise GatedAttnError(f"{where}: a spec needs a name")
    return SweepSpec(**d).validate()


def load_spec(name_or_path: str) -> SweepSpec:
    """A built-in spec by name, or a YAML file."""
    if name_or_path in SPECS:
        return from_dict(SPECS[name_or_path])
    path = Path(name_or_path)
    if not path.is_file():
        raise GatedAttnError(f"no sweep spec {name_or_path!r}: neither a file nor a built-in spec "
                             f"({', '.join(SPECS)})")
    import yaml

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as e:
        raise GatedAttnError(f"cannot read sweep spec {path}: {type(e).__name__}: {e}") from None
    if isinstance(data, dict):
        data.setdefault("name", path.stem)
    return from_dict(data, where=f"sweep spec {path}")


def spec_yaml(spec: SweepSpec) -> str:
    import yaml

    return yaml.safe_dump(spec.to_dict(), sort_keys=False)


# The paper's tables at the scale of this machine. Each runs on the sink lab and on natural text from
# compare's quick budgets; --quick keeps a few variants, two seeds and half the steps (a demonstration of
# the machinery: at 60 lab steps no sink has formed yet).
_QUICK_STEPS = {"set": {"train.max_steps": 120, "train.eval_every": 40, "train.checkpoint_every": 60},
                "lab_set": {"train.max_steps": 60, "train.probe_every": 20, "train.checkpoint_every": 30}}

SPECS: dict[str, dict] = {
    "paper-table1": {
        "name": "paper-table1", "paper": "table1",
        "description": "Table 1: gate positions, granularity, head sharing, combine, activation, and the "
                       "parameter-matched baselines (more KV heads, more query heads, more experts / FFN)",
        "grid": {VARIANT_AXIS: ["none", "more-kv-heads", "more-q-heads", "more-experts", "g1", "g2", "g3", "g4",
                                "g5", "g1-headwise", "g2-headwise", "g1-shared", "g2-shared", "g1-add",
                                "g1-silu"]},
        "quick": {"grid": {VARIANT_AXIS: ["none", "more-q-heads", "g1", "g2", "g5"]}, "seeds": [0, 1],
                  **_QUICK_STEPS},
    },
    "paper-table3": {
        "name": "paper-table3", "paper": "table3",
        "description": "Table 3: non-linearity controls (RMSNorm or SiLU on the SDPA output, additive gates)",
        "grid": {VARIANT_AXIS: ["none", "g1", "g2", "g1-add", "rmsnorm", "silu", "g1-add-identity"]},
        "quick": {"grid": {VARIANT_AXIS: ["none", "g1", "rmsnorm", "silu"]}, "seeds": [0, 1], **_QUICK_STEPS},
    },
    "paper-table4": {
        "name": "paper-table4", "paper": "table4",
        "description": "Table 4: gate sparsity and the sink: gate score, M-Act and F-Attn of the gate variants",
        "grid": {VARIANT_AXIS: ["none", "g1", "g1-headwise", "g1-shared", "g2", "g1-static", "g1-ns_sigmoid"]},
        "quick": {"grid": {VARIANT_AXIS: ["none", "g1", "g1-ns_sigmoid"]}, "seeds": [0, 1],
                  **_QUICK_STEPS},
    },
    "dsa-corners": {
        "name": "dsa-corners",
        "description": "Dense, DSA (top-16 keys per query), G1 and G1 + DSA: is the gate complementary to sparse "
                       "attention, and does the indexer spend its budget on the sink? The lab at its default "
                       "budget (250 steps of 64 x 128), where the baseline grows a sink",
        "grid": {VARIANT_AXIS: ["none", "dsa", "g1", "g1-dsa"]},
        "lab_set": {"train.batch_size": 64, "train.max_steps": 250, "train.probe_every": 25,
                    "train.checkpoint_every": 50},
        "quick": {"seeds": [0, 1], **_QUICK_STEPS},
    },
    "lr-stability": {
        "name": "lr-stability", "paper": "table2",
        "description": "Table 2's stability claim: baseline vs G1 over a ladder of learning rates up to "
                       "divergence, with and without sandwich norm",
        "grid": {VARIANT_AXIS: ["none", "g1"], "train.lr": [0.003, 0.01, 0.03, 0.1],
                 "model.sandwich_norm": [False, True]},
        "quick": {"grid": {VARIANT_AXIS: ["none", "g1"], "train.lr": [0.003, 0.03]}, "seeds": [0, 1],
                  **_QUICK_STEPS},
    },
}
