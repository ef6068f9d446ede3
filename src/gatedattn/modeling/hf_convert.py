"""Configs and weights between GatedLM and HF transformers' Llama / Qwen2 / Qwen3 causal LMs.

An ungated dense GatedLM (no sink peer, register tokens, output non-linearity or sandwich norm, full rotary)
is the same function as one of three HF families, chosen by its attention options:

  qk_norm on                  -> Qwen3ForCausalLM (attention_bias=False)
  qk_norm off, qkv_bias on    -> Qwen2ForCausalLM (biases on q/k/v, none on o_proj, as ours)
  qk_norm off, qkv_bias off   -> LlamaForCausalLM

Parameter names, per layer i (ours <-> HF ``model.layers.{i}.``): attn_norm <-> input_layernorm,
attn.{q,k,v,o}_proj <-> self_attn.{q,k,v,o}_proj, attn.{q,k}_norm <-> self_attn.{q,k}_norm,
ffn_norm <-> post_attention_layernorm, ffn.{gate,up,down}_proj <-> mlp.{gate,up,down}_proj; and
embed <-> model.embed_tokens, norm <-> model.norm, lm_head <-> lm_head. Both sides use the half-split
(rotate-half) RoPE layout, so no permutation is needed. Zero-centred norms (``model.norm_zero_centered``)
are written as ``1 + w``. Qwen3-Next (gated) is in hf_qwen3_next.py.

RoPE: ``model.rope`` maps to HF ``rope_parameters`` (``rope_theta``, ``rope_type`` and the scaling keys:
``RopeScalingConfig.to_hf_dict`` / ``from_hf_dict``, here only).
HF's dynamic NTK takes the original context from ``max_position_embeddings``, ours from
``original_max_position_embeddings`` when given, so the converter writes that value there.
"""

from __future__ import annotations

import torch

from ..config import ModelConfig, RopeConfig, RopeScalingConfig, model_config_from_dict
from ..errors import GatedAttnError
from .model import GatedLM

HF_FAMILIES = ("llama", "qwen2", "qwen3")
EXPORT_TARGETS = ("qwen3-next", "qwen3", "qwen2", "llama")  # `gatedattn export --to`

_LAYER_NAMES = {  # ours -> HF, inside one decoder layer
    "attn_norm.weight": "input_layernorm.weight",
    "attn.q_proj.weight": "self_attn.q_proj.weight",
    "attn.k_proj.weight": "self_attn.k_proj.weight",
    "attn.v_proj.weight": "self_attn.v_proj.weight",
    "attn.o_proj.weight": "self_attn.o_proj.weight",
    "attn.q_proj.bias": "self_attn.q_proj.bias",
    "attn.k_proj.bias": "self_attn.k_proj.bias",
    "attn.v_proj.bias": "self_attn.v_proj.bias",
    "attn.o_proj.bias": "self_attn.o_proj.bias",  # the official gated_attention layout's (qkv_bias)
    "attn.q_norm.weight": "self_attn.q_norm.weight",
    "attn.k_norm.weight": "self_attn.k_norm.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "ffn.gate_proj.weight": "mlp.gate_proj.weight",
    "ffn.up_proj.weight": "mlp.up_proj.weight",
    "ffn.down_proj.weight": "mlp.down_proj.weight",
}
_TOP_NAMES = {"embed.weight": "model.embed_tokens.weight", "norm.weight": "model.norm.weight",
              "lm_head.weight": "lm_head.weight"}


def hf_name(ours: str) -> str:
    """The HF parameter name of one of ours, e.g. ``layers.3.attn.q_proj.weight`` ->
    ``model.layers.3.self_attn.q_proj.weight``."""
    if ours in _TOP_NAMES:
        return _TOP_NAMES[ours]
    parts = ours.split(".", 2)
    if len(parts) == 3 and parts[0] == "layers" and parts[2] in _LAYER_NAMES:
        return f"model.layers.{parts[1]}.{_LAYER_NAMES[parts[2]]}"
    raise GatedAttnError(f"parameter {ours!r} has no HF counterpart")


def hf_family(cfg: ModelConfig) -> str:
    """The HF family computing the same function as ``cfg``; GatedAttnError naming what has no counterpart."""
    a = cfg.attention
    blockers = [f"{key}={value!r}" for key, value, plain in (
        ("attention.gate.position", a.gate.position, "none"), ("attention.sink", a.sink, "none"),
        ("attention.num_register_tokens", a.num_register_tokens, 0),
        ("attention.output_nonlinearity", a.output_nonlinearity, "none"),
        ("attention.o_bias", a.o_bias, False),
        ("sandwich_norm", cfg.sandwich_norm, False), ("moe.num_experts", cfg.moe.num_experts, 0),
        ("rope.partial_rotary_factor", cfg.rope.partial_rotary_factor, 1.0)) if value != plain]
    if a.qk_norm and a.qkv_bias:
        blockers.append("qk_norm together with qkv_bias")
    if a.sparse is not None:
        blockers.append("attention.sparse (DSA)")
    if blockers:
        raise GatedAttnError("no HF Llama/Qwen2/Qwen3 model computes this GatedLM: "
                             f"{', '.join(blockers)}; allowed: an ungated dense model with full rotary")
    return "qwen3" if a.qk_norm else "qwen2" if a.qkv_bias else "llama"


def hf_rope_parameters(cfg: ModelConfig) -> tuple[dict, int]:
    """HF ``rope_parameters`` and ``max_position_embeddings`` that give the same RoPE as ``cfg.rope``."""
    scaling = cfg.rope.scaling.to_hf_dict() if cfg.rope.scaling is not None else None
    return _hf_rope(cfg.rope.theta, cfg.rope.partial_rotary_factor, scaling, cfg.max_position_embeddings)


def _hf_rope(theta: float, partial: float, scaling: dict | None, max_pos: int) -> tuple[dict, int]:
    """``scaling``: HF's rope_scaling dict (or None)."""
    s = dict(scaling or {})
    rope_type = s.pop("rope_type", s.pop("type", "default"))
    params = {"rope_type": rope_type, "rope_theta": theta, **s}
    if partial != 1.0:
        params["partial_rotary_factor"] = partial
    if rope_type == "dynamic":
        max_pos = params.pop("original_max_position_embeddings", None) or max_pos
    return params, max_pos


def set_hf_rope(model, theta: float | None = None, scaling: RopeScalingConfig | None = None) -> None:
    """Give an HF causal LM another RoPE base and/or scaling (``scaling`` replaces any it had; None keeps
    it) by updating its config and rebuilding its rotary-embedding modules."""
    cfg = model.config
    old = dict(getattr(cfg, "rope_parameters", None) or {})
    if scaling is not None:
        hf_scaling = scaling.to_hf_dict()
    else:
        hf_scaling = {k: v for k, v in old.items() if k not in ("rope_theta", "partial_rotary_factor")}
        if hf_scaling.get("rope_type", "default") == "default":
            hf_scaling = None
    theta = float(theta if theta is not None else old.get("rope_theta", getattr(cfg, "rope_theta", 10000.0)))
    params, cfg.max_position_embeddings = _hf_rope(theta, old.get("partial_rotary_factor", 1.0), hf_scaling,
                                                   cfg.max_position_embeddings)
    cfg.rope_parameters = params
    parents = [(parent, name, child) for parent in model.modules() for name, child in parent.named_children()
               if type(child).__name__.endswith("RotaryEmbedding")]
    if not parents:
        raise GatedAttnError(f"{type(model).__name__} has no RotaryEmbedding module whose RoPE could be changed")
    for parent, name, child in parents:
        device = next((b.device for b in child.buffers()), None)
        fresh = type(child)(config=cfg)
        setattr(parent, name, fresh.to(device) if device is not None else fresh)


def rope_from_hf(hf_config) -> RopeConfig:
    """Our ``model.rope`` section (theta, partial_rotary_factor, scaling) from an HF config."""
    params = dict(getattr(hf_config, "rope_parameters", None) or {})
    theta = params.pop("rope_theta", getattr(hf_config, "rope_theta", 10000.0))
    partial = params.pop("partial_rotary_factor", 1.0)
    rope_type = params.pop("rope_type", params.pop("type", "default"))
    scaling = None
    if rope_type != "default":
        if rope_type == "dynamic":  # HF's original context is max_position_embeddings: make it explicit
            params["original_max_position_embeddings"] = hf_config.max_position_embeddings
        scaling = RopeScalingConfig.from_hf_dict({"rope_type": rope_type, **params})
    return RopeConfig(theta=float(theta), partial_rotary_factor=float(partial), scaling=scaling)


def to_hf_config(cfg: ModelConfig, **overrides):
    """An HF ``PretrainedConfig`` of the family computing the same function as ``cfg``."""
    from transformers import LlamaConfig, Qwen2Config, Qwen3Config

    family = hf_family(cfg)
    a = cfg.attention
    rope, max_pos = hf_rope_parameters(cfg)
    kwargs = dict(vocab_size=cfg.vocab_size, hidden_size=cfg.d_model, intermediate_size=cfg.ffn_dim,
                  num_hidden_layers=cfg.num_layers, num_attention_heads=a.num_heads,
                  num_key_value_heads=a.num_kv_heads, head_dim=a.head_dim, hidden_act="silu",
                  max_position_embeddings=max_pos, rms_norm_eps=cfg.norm_eps,
                  initializer_range=cfg.initializer_range, tie_word_embeddings=cfg.tie_embeddings,
                  bos_token_id=cfg.bos_token_id, eos_token_id=cfg.eos_token_id, rope_parameters=rope)
    if family == "llama":
        kwargs.update(attention_bias=False, mlp_bias=False)
    elif family == "qwen3":
        kwargs.update(attention_bias=False)
    kwargs.update(overrides)
    return {"llama": LlamaConfig, "qwen2": Qwen2Config, "qwen3": Qwen3Config}[family](**kwargs)


def to_hf_state_dict(model: GatedLM) -> dict[str, torch.Tensor]:
    """Our weights under HF names (tensors shared, not copied; zero-centred norm weights become ``1 + w``)."""
    hf_family(model.config)
    zero_centered = model.config.norm_zero_centered
    return {hf_name(name): value + 1 if zero_centered and name.endswith("norm.weight") else value
            for name, value in model.state_dict().items()}


@torch.no_grad()
def to_hf(model: GatedLM, **config_overrides):
    """An HF causal LM with our weights, in our dtype and on our device (e.g. ``attn_implementation=
    "eager"`` goes to the HF config)."""
    return hf_model_with(model, to_hf_config(model.config, **config_overrides), to_hf_state_dict(model))


def hf_model_with(model: GatedLM, hf_config, state_dict: dict[str, torch.Tensor]):
    """The HF causal LM of ``hf_config`` holding ``state_dict`` (``model``'s weights in HF names), in
    ``model``'s dtype and on its device; GatedAttnError unless every weight has its place."""
    from transformers import AutoModelForCausalLM

    param = next(model.parameters())
    hf = AutoModelForCausalLM.from_config(hf_config, dtype=param.dtype).to(param.device)
    missing, unexpected = hf.load_state_dict(state_dict, strict=False)
    missing = [m for m in missing if not (m == "lm_head.weight" and model.config.tie_embeddings)]
    if missing or unexpected:
        raise GatedAttnError(f"HF {type(hf).__name__} weights do not match: missing {missing}, "
                             f"unexpected {unexpected}")
    return hf.eval()


def from_hf_config(hf_config) -> ModelConfig:
    """Our config for an HF Llama / Qwen2 / Qwen3 config; GatedAttnError for what has no counterpart."""
    family = hf_config.model_type
    if family not in HF_FAMILIES:
        raise GatedAttnError(f"HF model_type {family!r} cannot become a GatedLM; allowed: {', '.join(HF_FAMILIES)}")
    if getattr(hf_config, "hidden_act", "silu") != "silu" or getattr(hf_config, "mlp_bias", False):
        raise GatedAttnError("only SwiGLU MLPs without bias (hidden_act=silu, mlp_bias=false) convert to a GatedLM")
    if family != "qwen2" and getattr(hf_config, "attention_bias", False):
        raise GatedAttnError(f"{family} with attention_bias=true (q/k/v biases and an o_proj bias) is not converted; "
                             "allowed: attention_bias=false, or qwen2 (q/k/v biases only)")
    if getattr(hf_config, "use_sliding_window", False):
        raise GatedAttnError("sliding-window attention (use_sliding_window=true) has no GatedLM counterpart")
    heads = hf_config.num_attention_heads
    head_dim = getattr(hf_config, "head_dim", None) or hf_config.hidden_size // heads

    def token_id(value) -> int:
        value = value[0] if isinstance(value, (list, tuple)) else value
        return 0 if value is None else int(value)

    return model_config_from_dict(dict(
        vocab_size=hf_config.vocab_size, d_model=hf_config.hidden_size, num_layers=hf_config.num_hidden_layers,
        ffn_dim=hf_config.intermediate_size, max_position_embeddings=hf_config.max_position_embeddings,
        norm_eps=float(hf_config.rms_norm_eps), tie_embeddings=bool(hf_config.tie_word_embeddings),
        initializer_range=float(getattr(hf_config, "initializer_range", 0.02)),
        bos_token_id=token_id(hf_config.bos_token_id), eos_token_id=token_id(hf_config.eos_token_id),
        attention=dict(num_heads=heads, num_kv_heads=hf_config.num_key_value_heads, head_dim=head_dim,
                       qk_norm=family == "qwen3", qkv_bias=family == "qwen2"),
        rope=rope_from_hf(hf_config)))


@torch.no_grad()
def from_hf(hf_model) -> GatedLM:
    """A GatedLM with the weights of an HF Llama / Qwen2 / Qwen3 causal LM, in its dtype and on its device."""
    cfg = from_hf_config(hf_model.config)
    hf_state = hf_model.state_dict()
    model = GatedLM(cfg)
    state = {}
    for name in model.state_dict():
        key = hf_name(name)
        if key not in hf_state and name == "lm_head.weight" and cfg.tie_embeddings:
            key = hf_name("embed.weight")
        if key not in hf_state:
            raise GatedAttnError(f"HF {type(hf_model).__name__} has no weight {key} (for our {name})")
        state[name] = hf_state[key]
    param = next(hf_model.parameters())
    model = model.to(device=param.device, dtype=param.dtype)
    model.load_state_dict(state)
    return model.eval()


__all__ = ["to_hf", "to_hf_config", "to_hf_state_dict", "from_hf", "from_hf_config", "hf_family", "hf_name",
           "hf_rope_parameters", "rope_from_hf", "set_hf_rope"]
