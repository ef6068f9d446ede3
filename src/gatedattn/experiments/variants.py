"""The named attention variants the experiments train, and the token budgets they train them on.

A variant is a set of config overrides on top of the ungated model; ``compare`` and ``sweep`` build every
run from this registry, so a new variant is one line here. The paper's parameter-matched baselines
(Table 1: more KV heads, more query heads, more experts) depend on the base model, so they are functions
of its config (``MATCHED``), resolved by ``variant_overrides``.
"""

from __future__ import annotations

from ..config import Config, load_config
from ..errors import GatedAttnError


def _gate(**keys) -> dict:
    return {f"model.attention.gate.{k}": v for k, v in keys.items()}


# DeepSeek Sparse Attention at these tasks' lengths (128-256 tokens): each query keeps its 16 best keys.
_DSA = {"model.attention.sparse.type": "dsa", "model.attention.sparse.top_k": 16,
        "model.attention.sparse.indexer_heads": 4, "model.attention.sparse.indexer_dim": 32}


VARIANTS: dict[str, dict] = {
    "none": _gate(position="none"),
    **{p: _gate(position=p) for p in ("g1", "g2", "g3", "g4", "g5")},
    "g1-headwise": _gate(position="g1", granularity="headwise"),
    "g1-shared": _gate(position="g1", shared_across_heads=True),
    "g2-headwise": _gate(position="g2", granularity="headwise"),
    "g2-shared": _gate(position="g2", shared_across_heads=True),
    "g1-add": _gate(position="g1", combine="add", activation="silu"),  # the paper's additive gate: Y + SiLU(XW)
    "g1-add-identity": _gate(position="g1", combine="add", activation="identity"),
    "g1-silu": _gate(position="g1", activation="silu"),
    "g1-ns_sigmoid": _gate(position="g1", activation="ns_sigmoid"),
    "g1-static": _gate(position="g1", input_dependent=False),
    "rmsnorm": {"model.attention.output_nonlinearity": "rmsnorm"},
    "silu": {"model.attention.output_nonlinearity": "silu"},
    "sink-learned": {"model.attention.sink": "learned"},
    "off-by-one": {"model.attention.sink": "off_by_one"},
    "registers": {"model.attention.num_register_tokens": 4},
    "dsa": _DSA,
    "g1-dsa": {**_gate(position="g1"), **_DSA},
}


def _more_kv_heads(cfg: Config) -> dict:
    """Twice the KV heads (the paper: 4 -> 8 of 32 query heads), up to one per query head."""
    att = cfg.model.attention
    kv = 2 * att.num_kv_heads
    if kv > att.num_heads or att.num_heads % kv:
        raise GatedAttnError(f"more-kv-heads: {att.num_kv_heads} KV heads cannot be doubled under "
                             f"{att.num_heads} query heads")
    return {"model.attention.num_kv_heads": kv}


def _more_q_heads(cfg: Config) -> dict:
    """Half as many query heads again (the paper: 32 -> 48), which adds q_proj and o_proj rows about equal to
    (at one head: twice) the parameters of the elementwise G1 gate; the KV heads must still divide them."""
    att = cfg.model.attention
    q = att.num_heads + max(1, att.num_heads // 2)
    while q % att.num_kv_heads:
        q += 1
    return {"model.attention.num_heads": q}


def _more_experts(cfg: Config) -> dict:
    """MoE: four more experts, four more of them active (the paper's "Add 4 Experts"). Dense: the SwiGLU FFN
    widened by as many parameters as the elementwise G1 gate adds (d_model x heads x head_dim per layer)."""
    m = cfg.model
    if m.moe.num_experts:
        return {"model.moe.num_experts": m.moe.num_experts + 4, "model.moe.top_k": m.moe.top_k + 4}
    return {"model.ffn_dim": m.ffn_dim + -(-m.attention.num_heads * m.attention.head_dim // 3)}


# The paper's parameter-matched baselines, derived from the base model's shape.
MATCHED = {"more-kv-heads": _more_kv_heads, "more-q-heads": _more_q_heads, "more-experts": _more_experts}


def variant_overrides(variant: str, base: Config) -> dict:
    """The overrides of ``variant`` (a VARIANTS or MATCHED name) on the config ``base``."""
    if variant in MATCHED:
        return MATCHED[variant](base)
    if variant in VARIANTS:
        return VARIANTS[variant]
    raise GatedAttnError(f"unknown variant {variant!r}; allowed: {', '.join([*VARIANTS, *MATCHED])}")

# Token budgets sized for a 2-core CPU: with the sink lab, the default keeps `make compare` near 15 minutes
# on idle cores (two variants); quick takes about 2 minutes.
BUDGETS: dict[str, dict] = {
    "default": {"train.max_steps": 600, "train.batch_size": 8, "train.warmup_steps": 60, "train.lr": 2e-3,
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


def task_config(task: str, overrides: dict, *, quick: bool = False, preset: str | None = None) -> Config:
    """The config of a run of ``task``: its preset, then its budget, then ``overrides``."""
    if task == "lab":
        return load_config(LAB_PRESET, {**LAB_BUDGETS[budget_name(quick)], **overrides})
    return load_config(resolve_preset(preset, quick), {**BUDGETS[budget_name(quick)], **overrides})


def variant_config(variant: str, *, quick: bool = False, preset: str | None = None,
                   overrides: dict | None = None, task: str = "text") -> Config:
    """The config of one variant: preset, then the budget, then the user's overrides, then the variant's."""
    return task_config(task, {**(overrides or {}), **VARIANTS[variant]}, quick=quick, preset=preset)
