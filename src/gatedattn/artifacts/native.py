"""HF checkpoints as GatedLMs: transformers' Qwen3-Next (Gated DeltaNet + gated attention layers), Qwen3, Llama and Qwen2, and
the official gated_attention code's layout (qiuzh20/gated_attention, whose modeling_qwen3.py widens q_proj).

The official layout is a ``model_type: qwen3`` directory whose config.json sets
``elementwise_attn_output_gate`` or ``headwise_attn_output_gate`` (plus ``use_qk_norm``, and ``qkv_bias``,
which puts biases on q, k, v *and* o_proj). Its parameter names are Qwen3's, but q_proj holds, per KV group,
that group's queries and then their gate logits (layout.py's ``official``), so transformers' own Qwen3
cannot load it; it is read here from its safetensors without transformers.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..config import ModelConfig, RopeScalingConfig, model_config_from_dict
from ..errors import GatedAttnError
from ..fileio import read_json_object
from ..modeling.hf_convert import HF_FAMILIES, from_hf, hf_name
from ..modeling.layout import from_layout
from ..modeling.model import CONFIG_NAME, GatedLM

OFFICIAL_GATE_KEYS = ("elementwise_attn_output_gate", "headwise_attn_output_gate")
NATIVE_TYPES = ("qwen3_next", *HF_FAMILIES)


def read_hf_config(folder: Path) -> dict | None:
    """An HF directory's config.json as a dict, or None when there is none."""
    path = Path(folder) / CONFIG_NAME
    return read_json_object(path, "HF config") if path.is_file() else None


def is_official_layout(data: dict | None) -> bool:
    return bool(data) and data.get("model_type") == "qwen3" and any(data.get(k) for k in OFFICIAL_GATE_KEYS)


def gatedlm_from_hf_model(hf_model) -> GatedLM:
    """A GatedLM computing what a transformers Qwen3-Next / Qwen3 / Llama / Qwen2 causal LM computes."""
    model_type = hf_model.config.model_type
    if model_type == "qwen3_next":
        from ..modeling.hf_qwen3_next import from_qwen3_next

        return from_qwen3_next(hf_model)
    if model_type in HF_FAMILIES:
        return from_hf(hf_model)
    raise GatedAttnError(f"HF model_type {model_type!r} cannot become a GatedLM; allowed: {', '.join(NATIVE_TYPES)} "
                         "and the official gated_attention layout")


# -- the official gated_attention layout -------------------------------------------------------------------
def official_config(data: dict) -> ModelConfig:
    """Our config for the official code's config.json (a Qwen3Config with its gate keys)."""
    if data.get("hidden_act", "silu") != "silu":
        raise GatedAttnError("only SwiGLU MLPs (hidden_act=silu) convert to a GatedLM")
    if data.get("use_sliding_window"):
        raise GatedAttnError("sliding-window attention (use_sliding_window=true) has no GatedLM counterpart")
    if all(data.get(k) for k in OFFICIAL_GATE_KEYS):
        raise GatedAttnError("config.json sets both elementwise_attn_output_gate and headwise_attn_output_gate; "
                             "the official code then uses headwise only: set one of them")
    heads = data["num_attention_heads"]
    scaling = data.get("rope_scaling") or None
    if scaling and scaling.get("rope_type", scaling.get("type")) == "default":
        scaling = None
    bias = bool(data.get("qkv_bias", False))

    def token_id(value) -> int:
        value = value[0] if isinstance(value, (list, tuple)) else value
        return 0 if value is None else int(value)

    try:
        return model_config_from_dict(dict(
            vocab_size=data["vocab_size"], d_model=data["hidden_size"], num_layers=data["num_hidden_layers"],
            ffn_dim=data["intermediate_size"], max_position_embeddings=data.get("max_position_embeddings", 32768),
            norm_eps=float(data.get("rms_norm_eps", 1e-6)), tie_embeddings=bool(data.get("tie_word_embeddings")),
            initializer_range=float(data.get("initializer_range", 0.02)),
            bos_token_id=token_id(data.get("bos_token_id")), eos_token_id=token_id(data.get("eos_token_id")),
            attention=dict(num_heads=heads, num_kv_heads=data.get("num_key_value_heads") or heads,
                           head_dim=data.get("head_dim") or data["hidden_size"] // heads,
                           qk_norm=bool(data.get("use_qk_norm", True)), qkv_bias=bias, o_bias=bias,
                           gate=dict(position="g1", granularity="headwise" if data.get("headwise_attn_output_gate")
                                     else "elementwise")),
            rope=dict(theta=float(data.get("rope_theta", 10000.0)),
                      scaling=RopeScalingConfig.from_hf_dict(scaling).to_hf_dict() if scaling else None)))
    except KeyError as e:
        raise GatedAttnError(f"the official-layout config.json has no {e.args[0]!r}") from None


def _read_safetensors(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    index = folder / "model.safetensors.index.json"
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    elif (folder / "model.safetensors").is_file():
        shards = ["model.safetensors"]
    else:
        raise GatedAttnError(f"{folder} has no model.safetensors (or index); only safetensors weights are read")
    state = {}
    for shard in shards:
        state.update(load_file(str(folder / shard)))
    return state


@torch.no_grad()
def load_official(folder: str | Path, data: dict | None = None) -> GatedLM:
    """A GatedLM from a directory in the official gated_attention layout."""
    folder = Path(folder)
    data = data if data is not None else read_hf_config(folder)
    cfg = official_config(data)
    a = cfg.attention
    per_head = a.head_dim if a.gate.granularity == "elementwise" else 1
    hf_state = _read_safetensors(folder)
    model = GatedLM(cfg)
    state = {}
    for name in model.state_dict():
        if name == "lm_head.weight" and cfg.tie_embeddings:
            continue
        key = hf_name(name)
        if key not in hf_state:
            raise GatedAttnError(f"{folder} has no weight {key} (for our {name})")
        value = hf_state[key]
        if name.endswith("attn.q_proj.weight") or name.endswith("attn.q_proj.bias"):
            value = from_layout(value, "official", a.num_heads, a.num_kv_heads, a.head_dim, per_head)
        state[name] = value
    if cfg.tie_embeddings:
        state["lm_head.weight"] = state["embed.weight"]
    dtype = state["embed.weight"].dtype
    model = model.to(dtype)
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise GatedAttnError(f"{folder}: weights do not fit its config.json: {str(e).splitlines()[-1].strip()}") \
            from None
    return model.eval()


__all__ = ["NATIVE_TYPES", "OFFICIAL_GATE_KEYS", "gatedlm_from_hf_model", "is_official_layout", "load_official",
           "official_config", "read_hf_config"]
