"""Add a gate to a pretrained ungated GatedLM so that the new model computes the same function at step 0.

The gate is built with ``init=identity`` (W = 0, a multiplicative gate's scores divided by act(0), e.g.
``2·sigmoid(X·W)``), so it is exactly 1 (an additive gate exactly 0) before any training; every other weight
is copied. A fused g1/g4 gate widens q_proj: the query rows are copied, the gate rows stay zero.
docs/retrofit.md gives the scheme and the measurements.
"""

from __future__ import annotations

import copy
import dataclasses

import torch

from ..config import GATE_ACTIVATIONS, AttentionConfig, GateConfig, ModelConfig
from ..errors import GatedAttnError
from .model import GatedLM

GATE_SPEC_WORDS = {  # --gate words besides the position, and the GateConfig field each one sets
    "elementwise": ("granularity", "elementwise"), "headwise": ("granularity", "headwise"),
    "multiply": ("combine", "multiply"), "add": ("combine", "add"),
    **{name: ("activation", name) for name in GATE_ACTIVATIONS},
    "shared": ("shared_across_heads", True), "input_independent": ("input_dependent", False),
    "bias": ("bias", True), "fused": ("fused", True),
}


def parse_gate_spec(spec: str) -> GateConfig:
    """``g1[,headwise,...]`` -> the identity-initialised GateConfig; GatedAttnError naming a bad word.

    The first word is the position (g1..g5), then any of GATE_SPEC_WORDS; ``none`` alone means no gate (the
    control: the same model as one of ours). Unlike a fresh model, the gate has its own projection unless
    ``fused`` is given, so that it can be trained alone (train.trainable=gates).
    """
    words = [w.strip() for w in spec.split(",")]
    if words == ["none"]:
        return GateConfig()
    positions = ("g1", "g2", "g3", "g4", "g5")
    if words[0] not in positions:
        raise GatedAttnError(f"--gate {spec!r}: the first word must be a gate position, one of "
                             f"{', '.join(positions)} (or none alone: no gate)")
    fields = {"position": words[0], "init": "identity", "fused": False}
    for word in words[1:]:
        if word not in GATE_SPEC_WORDS:
            raise GatedAttnError(f"--gate {spec!r}: unknown word {word!r}; allowed after the position: "
                                 f"{', '.join(GATE_SPEC_WORDS)}")
        key, value = GATE_SPEC_WORDS[word]
        fields[key] = value
    gate = GateConfig(**fields)
    # The gate's own rules (identity possible, g5 without heads) hold for any model size: check them now.
    ModelConfig(attention=AttentionConfig(gate=gate)).validate()
    return gate


@torch.no_grad()
def retrofit_gate(model: GatedLM, gate: GateConfig) -> GatedLM:
    """A copy of the ungated ``model`` with ``gate`` added (``gate.init`` must be ``identity``; position none
    gives a plain copy), in its dtype and on its device; GatedAttnError (or ConfigError) naming why when that
    is impossible."""
    if model.config.attention.gate.position != "none":
        raise GatedAttnError(f"the model already has a gate at {model.config.attention.gate.position}; "
                             "retrofit needs an ungated model")
    if gate.position != "none" and gate.init != "identity":
        raise GatedAttnError(f"retrofit needs gate.init=identity, got {gate.init}")
    cfg = copy.deepcopy(model.config)
    cfg.attention.gate = dataclasses.replace(gate)
    cfg.validate()  # ConfigError for combinations that cannot start as the identity
    param = next(model.parameters())
    new = GatedLM(cfg).to(device=param.device, dtype=param.dtype)
    old_state, state = model.state_dict(), new.state_dict()
    for name, target in state.items():
        source = old_state.get(name)
        if source is None:  # the gate's own parameters keep their identity init
            continue
        if source.shape == target.shape:
            target.copy_(source)
        elif name.endswith(("attn.q_proj.weight", "attn.q_proj.bias")) and source.shape[1:] == target.shape[1:]:
            target[: source.shape[0]].copy_(source)  # fused gate: [queries | zero gate rows]
        else:
            raise GatedAttnError(f"parameter {name} is {tuple(source.shape)} in the model but "
                                 f"{tuple(target.shape)} with the gate")
    missing = set(old_state) - set(state)
    if missing:
        raise GatedAttnError(f"the gated model has no parameter {sorted(missing)[0]}")
    return new.eval()
