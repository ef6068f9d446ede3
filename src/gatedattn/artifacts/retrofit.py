"""``retrofit(model, gate_spec, out_dir)``: a pretrained model plus an identity-at-init gate, as a model dir.

The source is anything ``load_model`` reads (our model and run directories, ``smollm2``, HF Llama / Qwen2 /
Qwen3 directories); HF models are converted to a GatedLM first. The directory holds config.json,
model.safetensors and tokenizer.json (an ordinary model directory of ours) and ``train.yaml``, a full
config whose model section is the gated model's, for ``gatedattn train DIR/train.yaml --init-from DIR``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import yaml

from ..config import Config
from ..data.tokenizer import TextTokenizer
from ..errors import GatedAttnError
from ..fileio import atomic_write_text
from ..modeling.model import CONFIG_NAME, GatedLM
from ..modeling.retrofit import parse_gate_spec, retrofit_gate
from .checkpoints import TOKENIZER_NAME
from .loading import HFTokenizer, load_model

TRAIN_CONFIG_NAME = "train.yaml"
CHECK_TOKENS = 64  # tokens of the step-0 equality check


@dataclass
class RetrofitResult:
    out_dir: Path
    model: GatedLM
    max_abs_logit_diff: float  # gated vs source model on CHECK_TOKENS token ids, float32


def text_tokenizer(tokenizer) -> TextTokenizer:
    """Our tokenizer for one of ours or a transformers fast tokenizer (its backend is a tokenizers.Tokenizer)."""
    if isinstance(tokenizer, TextTokenizer):
        return tokenizer
    if isinstance(tokenizer, HFTokenizer) and hasattr(tokenizer.tok, "backend_tokenizer"):
        return TextTokenizer(tokenizer.tok.backend_tokenizer, tokenizer.bos_id, tokenizer.eos_id)
    raise GatedAttnError("the model's tokenizer is not a fast (tokenizers) one; retrofit cannot save it")


def retrofit(name_or_path: str | Path, gate_spec: str, out_dir: str | Path) -> RetrofitResult:
    gate = parse_gate_spec(gate_spec)  # bad words fail before anything is loaded
    out_dir = Path(out_dir)
    if (out_dir / CONFIG_NAME).exists():
        raise GatedAttnError(f"{out_dir} already holds a model ({CONFIG_NAME}); choose another --out")
    loaded = load_model(name_or_path)
    source = loaded.model
    if not loaded.is_ours:
        from ..modeling.hf_convert import from_hf

        source = from_hf(source)
    source = source.float()
    tokenizer = text_tokenizer(loaded.require_tokenizer())
    model = retrofit_gate(source, gate)
    ids = torch.randint(0, model.config.vocab_size, (1, CHECK_TOKENS), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        diff = (model(ids).logits - source(ids).logits).abs().max().item()
    model.save_pretrained(out_dir)
    tokenizer.save(out_dir / TOKENIZER_NAME)
    config = Config(model=model.config)
    atomic_write_text(out_dir / TRAIN_CONFIG_NAME,
                      f"# Continued training of {name_or_path} with a retrofitted gate ({gate_spec}):\n"
                      f"#   gatedattn train {out_dir / TRAIN_CONFIG_NAME} --init-from {out_dir} --data ...\n"
                      + yaml.safe_dump(config.to_dict(), sort_keys=False))
    return RetrofitResult(out_dir, model, diff)
