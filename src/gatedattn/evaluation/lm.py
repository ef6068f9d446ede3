"""The model under long-context evaluation: ours or an HF causal LM, with what evaluation needs from its
tokenizer and its KV cache."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from ..config import DataConfig
from ..errors import GatedAttnError
from ..modeling.cache import KVCache
from ..modeling.model import CONFIG_NAME, GatedLM


@dataclass
class LongContextLM:
    """A causal LM (ours or HF) with what long-context evaluation needs from its tokenizer."""

    name: str
    model: nn.Module
    encode: Callable[[str], list[int]]  # a text's tokens, no special tokens
    decode: Callable[[list[int]], str]
    prefix: list[int]  # special tokens the model sees before a document (ours: BOS, as in training)
    eos_token_id: int | None
    trained_context: int  # default original context for RoPE scaling
    # The data source whose held-out documents are the default text, and the held-out fraction.
    validation: tuple[str, float] = (DataConfig.source, DataConfig.val_fraction)

    @property
    def is_ours(self) -> bool:
        return isinstance(self.model, GatedLM)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def new_cache(self, total_tokens: int):
        """An empty KV cache for a sequence that will reach ``total_tokens`` tokens."""
        if self.is_ours:
            positions = total_tokens + self.model.num_register_tokens  # allocated once, at the final size
            return KVCache(len(self.model.layers), rope_seq_len=positions, capacity=positions)
        from transformers import DynamicCache

        return DynamicCache(config=self.model.config)

    def logits(self, ids: torch.Tensor, cache) -> torch.Tensor:
        """Logits (1, T, V) of the next chunk ``ids`` (1, T), appended to ``cache``."""
        if self.is_ours:
            return self.model(ids, past_key_values=cache).logits
        return self.model(input_ids=ids, past_key_values=cache, use_cache=True).logits

    def count_tokens(self, text: str) -> int:
        return len(self.prefix) + len(self.encode(text))


def load_lm(name_or_path: str) -> LongContextLM:
    """Our model or run directory (with its tokenizer.json), ``smollm2``, a HF model directory or .gguf."""
    from ..analysis.targets import ALIASES, config_model_type, load_analysis_target

    path = Path(name_or_path)
    ours = path.is_dir() and ((path / "checkpoints").is_dir() or config_model_type(path / CONFIG_NAME) == "gatedattn")
    if name_or_path not in ALIASES and ours:
        from ..training.pretrained import load_pretrained

        pre = load_pretrained(path)
        tok, cfg = pre.tokenizer, pre.model.config
        trained = pre.run_config.data.seq_len if pre.run_config else cfg.max_position_embeddings
        data = pre.run_config.data if pre.run_config else DataConfig()
        return LongContextLM(name_or_path, pre.model, tok.encode, tok.decode, [tok.bos_id], tok.eos_id, trained,
                             (data.source, data.val_fraction))
    target = load_analysis_target(name_or_path)  # resolves smollm2, HF directories and .gguf files
    from transformers import AutoTokenizer

    folder, gguf = ALIASES[name_or_path]() if name_or_path in ALIASES else (
        (str(path.parent), path.name) if path.suffix == ".gguf" else (str(path), None))
    try:
        tok = AutoTokenizer.from_pretrained(folder, **({"gguf_file": gguf} if gguf else {}))
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise GatedAttnError(f"{name_or_path} has no usable tokenizer: {str(e).splitlines()[0]}") from None
    cfg = target.model.config
    eos = tok.eos_token_id if tok.eos_token_id is not None else cfg.eos_token_id
    return LongContextLM(name_or_path, target.model,
                         lambda text: tok(text, add_special_tokens=False, verbose=False)["input_ids"],
                         lambda ids: tok.decode(ids, skip_special_tokens=True),
                         tok("", verbose=False)["input_ids"], eos[0] if isinstance(eos, list) else eos,
                         cfg.max_position_embeddings)


__all__ = ["LongContextLM", "load_lm"]
