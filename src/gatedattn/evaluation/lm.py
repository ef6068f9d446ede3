"""The model under long-context evaluation: ours or an HF causal LM, with what evaluation needs from its
tokenizer and its KV cache."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from ..artifacts import load_model
from ..config import DataConfig
from ..modeling.cache import KVCache
from ..modeling.model import GatedLM


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
    trained_seq_len: int | None = None  # the training run's data.seq_len, when it is recorded

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

    @property
    def pads(self) -> bool:
        """Whether rows of different lengths can share a batch (left padding, per-row positions): HF models,
        except under dynamic NTK, whose frequencies follow the longest row. Ours take no padding mask."""
        if self.is_ours:
            return False
        params = getattr(self.model.config, "rope_parameters", None) or {}
        return params.get("rope_type") != "dynamic"

    def logits(self, ids: torch.Tensor, cache, mask: torch.Tensor | None = None, start: int = 0,
               last_only: bool = False) -> torch.Tensor:
        """Logits (B, T, V) of the next chunk ``ids`` (B, T) at positions ``start``.., appended to ``cache``;
        ``mask`` (B, >= start + T): left padding, zeros before each row's tokens (``pads`` models only);
        ``last_only``: the last position's logits only (B, 1, V)."""
        keep = 1 if last_only else 0
        if self.is_ours:
            if mask is not None:
                raise ValueError("our models take no padding mask: batch rows of one length")
            return self.model(ids, past_key_values=cache, logits_to_keep=keep).logits
        kw = {}
        if mask is not None:
            seen = mask[:, :start + ids.shape[1]]
            kw = dict(attention_mask=seen, position_ids=(seen.cumsum(-1) - 1).clamp_min(0)[:, start:])
        return self.model(input_ids=ids, past_key_values=cache, use_cache=True, logits_to_keep=keep, **kw).logits

    def count_tokens(self, text: str) -> int:
        return len(self.prefix) + len(self.encode(text))


def load_lm(name_or_path: str) -> LongContextLM:
    """Our model or run directory (with its tokenizer.json), ``smollm2``, a HF model directory or .gguf."""
    loaded = load_model(name_or_path)
    tok = loaded.require_tokenizer()
    if loaded.is_ours:
        cfg, run = loaded.model.config, loaded.run_config
        data = run.data if run is not None else DataConfig()
        seq_len = run.data.seq_len if run is not None else None
        return LongContextLM(name_or_path, loaded.model, tok.encode, tok.decode, [tok.bos_id], tok.eos_id,
                             seq_len or cfg.max_position_embeddings, (data.source, data.val_fraction), seq_len)
    cfg = loaded.model.config
    eos = tok.eos_id if tok.eos_id is not None else cfg.eos_token_id
    # What the HF tokenizer puts before any text (e.g. a BOS), as the model saw in training.
    return LongContextLM(name_or_path, loaded.model, tok.encode, tok.decode, tok.encode("", add_special_tokens=True),
                         eos[0] if isinstance(eos, list) else eos, cfg.max_position_embeddings)
