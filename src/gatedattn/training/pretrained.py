"""A saved model with its tokenizer and, when it came from a training run, the run's config; text generation.

MODEL may be a model directory (config.json + model.safetensors + tokenizer.json), a checkpoint folder or a
training run directory (its latest readable checkpoint).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ..config import Config, load_config
from ..data.tokenizer import TextTokenizer
from ..errors import GatedAttnError
from ..modeling.model import GatedLM, resolve_model_dir
from .checkpoint import RUN_CONFIG_NAME, TOKENIZER_NAME


@dataclass
class Pretrained:
    model: GatedLM
    tokenizer: TextTokenizer
    model_dir: Path
    run_config: Config | None  # the training run's resolved config, when recorded


def run_file(model_dir: Path, name: str) -> Path | None:
    """``name`` in the model folder, or in the run directory a checkpoint folder belongs to."""
    for folder in (model_dir, model_dir.parent.parent):
        if (folder / name).is_file():
            return folder / name
    return None


def load_pretrained(path: str | Path, device: str | torch.device = "cpu") -> Pretrained:
    model_dir = resolve_model_dir(Path(path))
    model = GatedLM.from_pretrained(model_dir, map_location=device)
    tok_path = run_file(model_dir, TOKENIZER_NAME)
    if tok_path is None:
        raise GatedAttnError(f"{model_dir} has no {TOKENIZER_NAME}; save the tokenizer beside the model")
    tokenizer = TextTokenizer.from_file(tok_path, model.config.bos_token_id, model.config.eos_token_id)
    if tokenizer.vocab_size > model.config.vocab_size:
        raise GatedAttnError(f"{tok_path} has {tokenizer.vocab_size} tokens but the model only "
                             f"{model.config.vocab_size}: they do not belong together")
    cfg_path = run_file(model_dir, RUN_CONFIG_NAME)
    return Pretrained(model.eval(), tokenizer, model_dir, load_config(str(cfg_path)) if cfg_path else None)


def generate_text(model: GatedLM, tokenizer: TextTokenizer, prompt: str, max_new_tokens: int = 64,
                  temperature: float = 0.8, top_p: float = 0.95, top_k: int = 0, seed: int = 0) -> str:
    """The continuation of ``prompt`` (BOS + prompt tokens, as in training); ``temperature=0`` is greedy.
    Generation stops at EOS."""
    if temperature < 0:
        raise GatedAttnError(f"temperature must be >= 0 (0 = greedy), got {temperature}")
    device = next(model.parameters()).device
    ids = [tokenizer.bos_id] + tokenizer.encode(prompt)
    generator = torch.Generator(device).manual_seed(seed)
    out = model.generate(torch.tensor([ids], device=device), max_new_tokens=max_new_tokens,
                         do_sample=temperature > 0, temperature=temperature or 1.0, top_p=top_p, top_k=top_k,
                         eos_token_id=tokenizer.eos_id, generator=generator)
    new = out[0, len(ids):].tolist()
    if tokenizer.eos_id in new:
        new = new[:new.index(tokenizer.eos_id)]
    return tokenizer.decode(new)
