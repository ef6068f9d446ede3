"""Native export and import: our models as directories that plain transformers loads with its own classes
(no custom code), and HF directories as our model directories.

Export targets: ``qwen3-next`` (a G1-elementwise gated model -> ``Qwen3NextForCausalLM``, every layer
``full_attention``), and for ungated dense models ``qwen3`` / ``qwen2`` / ``llama`` (which one follows from
QK-norm and the q/k/v bias). What a target cannot represent is refused with one line naming it.
"""

from __future__ import annotations

import logging
from pathlib import Path

from ..artifacts import LoadedModel, load_model
from ..artifacts.checkpoints import TOKENIZER_NAME
from ..artifacts.native import gatedlm_from_hf_model, read_hf_config
from ..data.tokenizer import TextTokenizer
from ..errors import GatedAttnError
from ..modeling.hf_convert import EXPORT_TARGETS, hf_family, to_hf
from ..modeling.hf_qwen3_next import from_qwen3_next_config, to_qwen3_next
from ..modeling.model import GatedLM

log = logging.getLogger("gatedattn.hf")

_FAMILY_NEEDS = {"qwen3": "attention.qk_norm=true, qkv_bias=false", "qwen2": "attention.qk_norm=false, qkv_bias=true",
                 "llama": "attention.qk_norm=false, qkv_bias=false"}


def to_native(model: GatedLM, target: str):
    """The transformers model of ``target`` computing the same function as ``model``; GatedAttnError naming
    what ``target`` cannot represent."""
    if target not in EXPORT_TARGETS:
        raise GatedAttnError(f"--to {target!r} is not a target; allowed: {', '.join(EXPORT_TARGETS)}")
    if target == "qwen3-next":
        return to_qwen3_next(model)
    try:
        family = hf_family(model.config)
    except GatedAttnError as e:
        hint = " (a G1 elementwise gate exports with --to qwen3-next)" if model.config.attention.gate.position == "g1" \
            else ""
        raise GatedAttnError(f"--to {target}: {e}{hint}") from None
    if family != target:
        raise GatedAttnError(f"--to {target} needs {_FAMILY_NEEDS[target]}; this model has "
                             f"{_FAMILY_NEEDS[family]}: export it with --to {family}")
    return to_hf(model)


def hf_tokenizer(tokenizer):
    """A transformers fast tokenizer for ours (a ``tokenizers`` tokenizer.json with its BOS/EOS), or the HF
    one a loaded HF model came with."""
    if not isinstance(tokenizer, TextTokenizer):
        return tokenizer.tok
    from transformers import PreTrainedTokenizerFast

    tok = tokenizer.tokenizer
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=tok.id_to_token(tokenizer.bos_id),
                                   eos_token=tok.id_to_token(tokenizer.eos_id))


def _fresh(out: str | Path) -> Path:
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise GatedAttnError(f"--out {out} exists and is not an empty folder; give a new folder")
    return out


def export_model(loaded: LoadedModel, target: str, out: str | Path) -> Path:
    """Write ``loaded`` (ours, or an HF model that converts to ours) as a transformers ``target`` directory,
    with its tokenizer when it has one."""
    out = _fresh(out)
    model = loaded.model if loaded.is_ours else gatedlm_from_hf_model(loaded.model)
    native = to_native(model, target)
    native.save_pretrained(out)
    if loaded.tokenizer is not None:
        hf_tokenizer(loaded.tokenizer).save_pretrained(out)
    else:
        log.warning("warning: %s has no tokenizer; the export holds the model only", loaded.name)
    return out


def import_model(source: str | Path, out: str | Path) -> Path:
    """Write an HF directory (Qwen3-Next, hybrid layers included, Qwen3, Llama, Qwen2, or the official
    gated_attention layout) as our model directory, with its tokenizer.json when it has one."""
    out = _fresh(out)
    data = read_hf_config(Path(source)) if Path(source).is_dir() else None
    if data is not None and data.get("model_type") == "qwen3_next":  # refuse what we lack before loading
        from transformers import AutoConfig

        from_qwen3_next_config(AutoConfig.from_pretrained(source))
    loaded = load_model(source)
    model = loaded.model if loaded.is_ours else gatedlm_from_hf_model(loaded.model)
    model.save_pretrained(out)
    tok = loaded.tokenizer
    if isinstance(tok, TextTokenizer):
        tok.save(out / TOKENIZER_NAME)
    elif tok is not None and getattr(tok.tok, "backend_tokenizer", None) is not None:
        tok.tok.backend_tokenizer.save(str(out / TOKENIZER_NAME))
    else:
        log.warning("warning: %s has no tokenizer.json-backed tokenizer; the import holds the model only", source)
    return out


__all__ = ["export_model", "hf_tokenizer", "import_model", "to_native"]
