"""Another RoPE base and/or scaling for a trained model at load time (weights unchanged, no training):
ours get a rebuilt config, HF models new rotary-embedding modules."""

from __future__ import annotations

import dataclasses

from ..config import ROPE_TYPES, RopeScalingConfig, model_config_from_dict, parse_value
from ..errors import GatedAttnError
from ..modeling.model import GatedLM
from .lm import LongContextLM

SCALED_TYPES = tuple(t for t in ROPE_TYPES if t != "default")
ORIGINAL_KEY = "original_max_position_embeddings"


def rope_change(lm: LongContextLM, theta: float | None = None,
                scaling: str | dict | RopeScalingConfig | None = None, factor: float | None = None,
                original: int | None = None) -> RopeScalingConfig | None:
    """The RoPE scaling to apply, completed and checked; None = keep the model's.

    ``scaling`` is a type name (linear, dynamic, yarn, llama3), a mapping of HF ``rope_scaling`` keys (or
    its YAML text) or a RopeScalingConfig; ``factor`` and ``original`` fill ``factor`` and
    ``original_max_position_embeddings`` (default: the context the model was trained at: our run's
    data.seq_len, or max_position_embeddings).
    """
    if theta is not None and not theta > 0:
        raise GatedAttnError(f"--rope-theta must be positive, got {theta}")
    if scaling is None:
        if factor is not None or original is not None:
            raise GatedAttnError("--factor and --original-max-position-embeddings need --rope-scaling TYPE")
        return None
    if isinstance(scaling, RopeScalingConfig):
        scaling = scaling.to_hf_dict()
    elif isinstance(scaling, str):
        parsed = parse_value(scaling)
        scaling = parsed if isinstance(parsed, dict) else {"rope_type": scaling}
    s = dict(scaling)
    rope_type = s.get("rope_type", s.get("type"))
    if rope_type not in SCALED_TYPES:
        raise GatedAttnError(f"--rope-scaling {rope_type!r} is not allowed; allowed: {', '.join(SCALED_TYPES)} "
                             "(or a mapping such as '{rope_type: yarn, factor: 4}')")
    if factor is not None:
        s["factor"] = factor
    if "factor" not in s:
        raise GatedAttnError(f"--rope-scaling {rope_type} needs --factor F (a number >= 1)")
    if original is not None:
        s[ORIGINAL_KEY] = original
    if rope_type != "linear":
        s.setdefault(ORIGINAL_KEY, lm.trained_context)
    return RopeScalingConfig.from_hf_dict(s)


def apply_rope(lm: LongContextLM, theta: float | None, scaling: RopeScalingConfig | None) -> LongContextLM:
    """``lm`` with another RoPE base and/or scaling (weights unchanged); the identity when both are None."""
    if theta is None and scaling is None:
        return lm
    if lm.is_ours:
        cfg = dataclasses.asdict(lm.model.config)
        if theta is not None:
            cfg["rope"]["theta"] = theta
        if scaling is not None:
            cfg["rope"]["scaling"] = dataclasses.asdict(scaling)
        param = next(lm.model.parameters())
        model = GatedLM(model_config_from_dict(cfg)).to(device=param.device, dtype=param.dtype)
        model.load_state_dict(lm.model.state_dict())
        lm.model = model.eval()
    else:
        from ..modeling.hf_convert import set_hf_rope

        set_hf_rope(lm.model, theta, scaling)
    return lm


def rope_description(lm: LongContextLM) -> dict:
    """The model's RoPE as plain data (scaling in HF's ``rope_scaling`` vocabulary, None = plain RoPE)."""
    if lm.is_ours:
        r = lm.model.config.rope
        return {"rope_theta": r.theta, "partial_rotary_factor": r.partial_rotary_factor,
                "scaling": r.scaling.to_hf_dict() if r.scaling is not None else None}
    params = dict(getattr(lm.model.config, "rope_parameters", None) or {})
    return {"rope_theta": params.pop("rope_theta", None),
            "partial_rotary_factor": params.pop("partial_rotary_factor", 1.0),
            "scaling": params if params.get("rope_type", "default") != "default" else None}


__all__ = ["rope_change", "apply_rope", "rope_description"]
