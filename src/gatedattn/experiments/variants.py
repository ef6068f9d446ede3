"""The named attention variants the experiments train, and the token budgets they train them on.

A variant is a set of config overrides on top of the ungated model; ``compare`` (and the coming ``sweep``)
build every run from this registry, so a new variant is one line here.
"""

from __future__ import annotations

from ..config import Config, load_config
from ..errors import GatedAttnError


def _gate(**keys) -> dict:
    return {f"model.attention.gate.{k}": v for k, v in keys.items()}


VARIANTS: dict[str, dict] = {
    "none": _gate(position="none"),
    **{p: _gate(position=p) for p in ("g1", "g2", "g3", "g4", "g5")},
    "g1-headwise": _gate(position="g1", granularity="headwise"),
    "g1-shared": _gate(position="g1", shared_across_heads=True),
    "g1-add": _gate(position="g1", combine="add"),
    "g1-silu": _gate(position="g1", activation="silu"),
    "g1-ns_sigmoid": _gate(position="g1", activation="ns_sigmoid"),
    "g1-static": _gate(position="g1", input_dependent=False),
    "rmsnorm": {"model.attention.output_nonlinearity": "rmsnorm"},
    "silu": {"model.attention.output_nonlinearity": "silu"},
    "sink-learned": {"model.attention.sink": "learned"},
    "off-by-one": {"model.attention.sink": "off_by_one"},
    "registers": {"model.attention.num_register_tokens": 4},
}

# Token budgets sized for a 2-core CPU: default ~15 minutes for two variants, quick ~2 minutes.
BUDGETS: dict[str, dict] = {
    "default": {"train.max_steps": 800, "train.batch_size": 8, "train.warmup_steps": 80, "train.lr": 2e-3,
                "train.dtype": "bfloat16", "train.eval_every": 100, "train.eval_batches": 8,
                "train.checkpoint_every": 200, "data.seq_len": 256},
    "quick": {"train.max_steps": 240, "train.batch_size": 16, "train.warmup_steps": 24, "train.lr": 3e-3,
              "train.eval_every": 50, "train.eval_batches": 4, "train.checkpoint_every": 100,
              "data.seq_len": 128, "data.vocab_size": 2048},
}
DEFAULT_PRESET = {"default": "small", "quick": "compare-quick"}

# The sink lab task: the "sink-lab" preset is the default budget; quick halves the batch and trains 120 steps.
LAB_PRESET = "sink-lab"
LAB_BUDGETS: dict[str, dict] = {
    "default": {},
    "quick": {"train.batch_size": 32, "train.max_steps": 120, "train.probe_every": 20, "train.checkpoint_every": 60},
}
TASKS = ("lab", "text")  # compare runs the sink lab, then natural text


def parse_tasks(spec: str) -> list[str]:
    names = [t.strip() for t in spec.split(",") if t.strip()]
    unknown = [t for t in names if t not in TASKS]
    if unknown or not names or len(set(names)) != len(names):
        raise GatedAttnError(f"--tasks {spec!r}: give each of {', '.join(TASKS)} at most once, comma-separated")
    return [t for t in TASKS if t in names]  # the lab leads the report


def parse_variants(spec: str) -> list[str]:
    """``"none, g1"`` -> ``["none", "g1"]``; unknown or repeated names are a one-line error."""
    names = [v.strip() for v in spec.split(",") if v.strip()]
    unknown = [v for v in names if v not in VARIANTS]
    if unknown or not names:
        raise GatedAttnError(f"unknown variant(s) {unknown or spec!r}; allowed: {', '.join(VARIANTS)}")
    if len(set(names)) != len(names):
        raise GatedAttnError(f"--variants lists a variant twice: {spec}")
    return names


def budget_name(quick: bool) -> str:
    return "quick" if quick else "default"


def resolve_preset(preset: str | None, quick: bool) -> str:
    return preset or DEFAULT_PRESET[budget_name(quick)]


def variant_config(variant: str, *, quick: bool = False, preset: str | None = None,
                   overrides: dict | None = None, task: str = "text") -> Config:
    """The config of one variant: preset, then the budget, then the user's overrides, then the variant's."""
    if task == "lab":
        return load_config(LAB_PRESET, {**LAB_BUDGETS[budget_name(quick)], **(overrides or {}), **VARIANTS[variant]})
    return load_config(resolve_preset(preset, quick),
                       {**BUDGETS[budget_name(quick)], **(overrides or {}), **VARIANTS[variant]})
