"""Configuration: nested dataclasses, named presets, YAML files and dotted ``key=value`` overrides.

Every field is validated when a config is built, so a typo or a bad value fails early with one line that
names the key and the allowed values. Variants of the gate are data here, never separate model code.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import json
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError


def _choice(default: str, choices: tuple[str, ...], doc: str = "") -> Any:
    return field(default=default, metadata={"choices": choices, "doc": doc})


GATE_POSITIONS = ("none", "g1", "g2", "g3", "g4", "g5")
GATE_ACTIVATIONS = ("sigmoid", "silu", "ns_sigmoid", "identity")
ROPE_TYPES = ("default", "linear", "dynamic", "yarn", "llama3")


@dataclass
class GateConfig:
    """The gate ``Y' = Y ⊙ act(X·W)`` (or ``Y + act(X·W)``) at one of the paper's positions.

    g1: SDPA output per query head, before o_proj (the paper's best); g2: values after v_proj;
    g3: keys after k_proj; g4: queries after q_proj; g5: the attention output after o_proj.
    """

    position: str = _choice("none", GATE_POSITIONS)
    granularity: str = _choice("elementwise", ("elementwise", "headwise"))
    shared_across_heads: bool = False
    combine: str = _choice("multiply", ("multiply", "add"))
    activation: str = _choice("sigmoid", GATE_ACTIVATIONS)
    input_dependent: bool = True
    bias: bool = False
    init: str = _choice("normal", ("normal", "zeros"), "normal = N(0, initializer_range) like q_proj")
    # g1/g4 only: produce the gate logits by widening q_proj (one matmul) instead of a separate projection.
    fused: bool = True


@dataclass
class RopeConfig:
    theta: float = 10000.0
    partial_rotary_factor: float = 1.0
    # HF ``rope_scaling`` vocabulary, e.g. {"rope_type": "yarn", "factor": 4.0,
    # "original_max_position_embeddings": 2048}. None = plain RoPE.
    scaling: dict | None = None


@dataclass
class AttentionConfig:
    num_heads: int = 4
    num_kv_heads: int = 2
    head_dim: int = 16
    qk_norm: bool = True
    qkv_bias: bool = False
    gate: GateConfig = field(default_factory=GateConfig)
    # Peers that attack attention sinks; composable with the gate.
    sink: str = _choice("none", ("none", "learned", "off_by_one"),
                        "learned = a per-head sink logit (gpt-oss); off_by_one = a fixed zero logit")
    num_register_tokens: int = 0  # learnable tokens prepended to every sequence (StreamingLLM style)
    # The paper's non-linearity-only controls, applied to the SDPA output per head (position G1).
    output_nonlinearity: str = _choice("none", ("none", "rmsnorm", "silu"))
    implementation: str = _choice("sdpa", ("sdpa", "eager"),
                                  "sdpa = fused fast path; eager = explicit softmax reference")


@dataclass
class MoEConfig:
    num_experts: int = 0  # 0 = dense SwiGLU FFN
    top_k: int = 2
    expert_ffn_dim: int = 64
    shared_expert_ffn_dim: int = 0
    norm_topk_prob: bool = True
    load_balance_coef: float = 0.001
    z_loss_coef: float = 0.001


@dataclass
class ModelConfig:
    vocab_size: int = 256
    d_model: int = 64
    num_layers: int = 2
    ffn_dim: int = 128
    max_position_embeddings: int = 2048
    norm_eps: float = 1e-6
    tie_embeddings: bool = True
    sandwich_norm: bool = False
    initializer_range: float = 0.02
    bos_token_id: int = 0
    eos_token_id: int = 0
    attention: AttentionConfig = field(default_factory=AttentionConfig)
    rope: RopeConfig = field(default_factory=RopeConfig)
    moe: MoEConfig = field(default_factory=MoEConfig)

    def validate(self) -> None:
        a, g = self.attention, self.attention.gate
        for key in ("vocab_size", "d_model", "num_layers", "ffn_dim", "max_position_embeddings"):
            if getattr(self, key) <= 0:
                raise ConfigError(f"model.{key} must be a positive integer, got {getattr(self, key)}")
        for key in ("num_heads", "num_kv_heads", "head_dim"):
            if getattr(a, key) <= 0:
                raise ConfigError(f"model.attention.{key} must be a positive integer, got {getattr(a, key)}")
        if a.num_heads % a.num_kv_heads:
            raise ConfigError(
                f"model.attention.num_heads ({a.num_heads}) must be a multiple of num_kv_heads ({a.num_kv_heads})")
        if a.num_register_tokens < 0:
            raise ConfigError("model.attention.num_register_tokens must be >= 0")
        if g.position == "g5" and (g.granularity == "headwise" or g.shared_across_heads):
            raise ConfigError("model.attention.gate: position g5 acts on the o_proj output, which has no heads; "
                              "allowed there: granularity=elementwise, shared_across_heads=false")
        if self.rope.partial_rotary_factor <= 0 or self.rope.partial_rotary_factor > 1:
            raise ConfigError("model.rope.partial_rotary_factor must be in (0, 1]")
        rotary = int(a.head_dim * self.rope.partial_rotary_factor)
        if rotary < 2 or rotary % 2:
            raise ConfigError(f"model.rope: head_dim x partial_rotary_factor = {rotary} must be even and >= 2")
        if self.rope.theta <= 0:
            raise ConfigError("model.rope.theta must be positive")
        _validate_rope_scaling(self.rope.scaling)
        m = self.moe
        if m.num_experts < 0:
            raise ConfigError("model.moe.num_experts must be >= 0 (0 = dense FFN)")
        if m.num_experts and not 1 <= m.top_k <= m.num_experts:
            raise ConfigError(f"model.moe.top_k must be in [1, num_experts={m.num_experts}], got {m.top_k}")
        if not 0 <= self.bos_token_id < self.vocab_size or not 0 <= self.eos_token_id < self.vocab_size:
            raise ConfigError(f"model.bos_token_id and eos_token_id must be in [0, vocab_size={self.vocab_size})")


def _validate_rope_scaling(s: dict | None) -> None:
    if s is None:
        return
    if not isinstance(s, dict):
        raise ConfigError("model.rope.scaling must be a mapping like {rope_type: yarn, factor: 4.0} or null")
    rope_type = s.get("rope_type", s.get("type"))
    if rope_type not in ROPE_TYPES:
        raise ConfigError(f"model.rope.scaling.rope_type={rope_type!r} is not allowed; allowed: {', '.join(ROPE_TYPES)}")
    allowed = {"rope_type", "type", "factor", "original_max_position_embeddings", "attention_factor",
               "beta_fast", "beta_slow", "mscale", "mscale_all_dim", "truncate",
               "low_freq_factor", "high_freq_factor"}
    unknown = set(s) - allowed
    if unknown:
        raise ConfigError(f"model.rope.scaling has unknown key(s) {sorted(unknown)}; allowed: {sorted(allowed)}")
    if rope_type != "default":
        factor = s.get("factor")
        if not isinstance(factor, (int, float)) or factor < 1:
            raise ConfigError(f"model.rope.scaling.factor must be a number >= 1 for rope_type={rope_type}")
    if rope_type == "llama3":
        for key in ("low_freq_factor", "high_freq_factor", "original_max_position_embeddings"):
            if key not in s:
                raise ConfigError(f"model.rope.scaling.{key} is required for rope_type=llama3")


@dataclass
class BigramBackcopyConfig:
    """``data.source=bigram-backcopy``: the synthetic Bigram-Backcopy task (Guo et al. 2024).

    ``vocab`` ordinary tokens plus BOS; a bigram matrix from the Shakespeare text's character bigrams
    (the ``vocab`` most frequent characters) or seeded Dirichlet(``dirichlet_alpha``) rows; the
    ``triggers`` most frequent tokens are triggers, after which the next token copies the one before.
    """

    vocab: int = 64
    triggers: int = 3
    matrix: str = _choice("shakespeare", ("shakespeare", "dirichlet"))
    dirichlet_alpha: float = 0.3
    seed: int = 0
    train_sequences: int = 20000
    val_sequences: int = 512

    def validate(self) -> None:
        if not 2 <= self.vocab <= 65535:
            raise ConfigError(f"data.bigram_backcopy.vocab must be in [2, 65535], got {self.vocab}")
        if not 0 <= self.triggers < self.vocab:
            raise ConfigError(f"data.bigram_backcopy.triggers must be in [0, vocab={self.vocab}), got {self.triggers}")
        if self.dirichlet_alpha <= 0:
            raise ConfigError(f"data.bigram_backcopy.dirichlet_alpha must be positive, got {self.dirichlet_alpha}")
        if self.train_sequences < 1 or self.val_sequences < 0:
            raise ConfigError("data.bigram_backcopy.train_sequences must be >= 1 and val_sequences >= 0, got "
                              f"{self.train_sequences} and {self.val_sequences}")


@dataclass
class DataConfig:
    # Built-in corpora ("shakespeare", "python-stdlib", the synthetic "bigram-backcopy") or paths, comma-separated.
    source: str = "shakespeare"
    text_field: str = "text"  # the JSONL field / parquet column holding the text
    tokenizer: str = "bpe"  # bpe (trained on the training split) | gpt2 | path to a tokenizer.json
    vocab_size: int = 4096  # of the trained BPE (at least 257: 256 bytes + <|endoftext|>)
    seq_len: int = 256  # tokens per training sequence, BOS included
    val_fraction: float = 0.1  # share of the text held out (whole documents) for validation
    # The synthetic task's settings (data.source=bigram-backcopy; tokenizer, vocab_size, val_fraction unused).
    bigram_backcopy: BigramBackcopyConfig = field(default_factory=BigramBackcopyConfig)

    def validate(self) -> None:
        if self.vocab_size <= 0:
            raise ConfigError(f"data.vocab_size must be a positive integer, got {self.vocab_size}")
        if self.seq_len < 2:
            raise ConfigError(f"data.seq_len must be >= 2 (BOS + one token), got {self.seq_len}")
        if not 0 <= self.val_fraction < 1:
            raise ConfigError(f"data.val_fraction must be in [0, 1), got {self.val_fraction}")
        if not self.source.strip() or not self.tokenizer.strip():
            raise ConfigError("data.source and data.tokenizer must not be empty")


@dataclass
class TrainConfig:
    seed: int = 0
    max_steps: int = 200
    batch_size: int = 8
    grad_accum: int = 1  # micro-batches of batch_size per optimizer step
    lr: float = 1e-3
    min_lr_ratio: float = 0.1  # cosine decay ends at min_lr_ratio * lr
    warmup_steps: int = 20
    weight_decay: float = 0.1  # weight matrices only (not norms, biases, gate vectors, sinks, embeddings)
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0  # max global gradient norm; 0 = no clipping
    dtype: str = _choice("float32", ("float32", "bfloat16"), "bfloat16 = autocast")
    compile: bool = False
    log_every: int = 1
    eval_every: int = 50  # validation every N steps (0 = at the end only)
    eval_batches: int = 8  # validation batches (of batch_size sequences); 0 = no validation
    checkpoint_every: int = 100  # 0 = at the end only
    keep_checkpoints: int = 2
    spike_factor: float = 1.5  # a loss above spike_factor x the median of the last spike_window is a spike
    spike_window: int = 50
    max_nonfinite: int = 5  # stop after this many non-finite losses/gradients in a row (each is skipped)
    probe_every: int = 0  # sink probes on the first validation sequences every N steps, to metrics.jsonl; 0 = off
    device: str = _choice("auto", ("auto", "cpu", "cuda"), "auto = CUDA when available, else CPU")

    def validate(self) -> None:
        positive = ("max_steps", "batch_size", "grad_accum", "log_every", "keep_checkpoints", "spike_window",
                    "max_nonfinite")
        for key in positive:
            if getattr(self, key) < 1:
                raise ConfigError(f"train.{key} must be >= 1, got {getattr(self, key)}")
        for key in ("warmup_steps", "eval_every", "eval_batches", "checkpoint_every", "weight_decay", "grad_clip",
                    "probe_every"):
            if getattr(self, key) < 0:
                raise ConfigError(f"train.{key} must be >= 0 (0 = off), got {getattr(self, key)}")
        if self.lr <= 0:
            raise ConfigError(f"train.lr must be positive, got {self.lr}")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ConfigError(f"train.min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        if not (0 <= self.beta1 < 1 and 0 <= self.beta2 < 1):
            raise ConfigError("train.beta1 and train.beta2 must be in [0, 1)")
        if self.spike_factor <= 1:
            raise ConfigError(f"train.spike_factor must be > 1, got {self.spike_factor}")


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# ---------------------------------------------------------------------------------------------------------
# Building dataclasses from plain dicts, with validation that names the key.

def _field_types(cls) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _coerce(value: Any, tp: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        return _coerce(value, args[0], key)
    if dataclasses.is_dataclass(tp):
        return build(tp, value, key)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        raise ConfigError(f"{key} must be true or false, got {value!r}")
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value:
            raise ConfigError(f"{key} must be an integer, got {value!r}")
        return int(value)
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key} must be a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ConfigError(f"{key} must be a string, got {value!r}")
        return str(value)
    if tp is dict or origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key} must be a mapping, got {value!r}")
        return dict(value)
    return value


def build(cls, data: Any, prefix: str = ""):
    """Build dataclass ``cls`` from a (possibly partial) dict; unknown keys and bad values raise ConfigError."""
    if isinstance(data, cls):
        return data
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix or 'config'} must be a mapping, got {data!r}")
    names = {f.name: f for f in dataclasses.fields(cls)}
    types = _field_types(cls)
    unknown = [k for k in data if k not in names]
    if unknown:
        key = unknown[0]
        hint = difflib.get_close_matches(key, names, n=1)
        where = f"{prefix}.{key}" if prefix else key
        msg = f"unknown config key '{where}'"
        msg += f" (did you mean '{hint[0]}'?)" if hint else ""
        raise ConfigError(msg + f"; allowed keys here: {', '.join(names)}")
    kwargs = {}
    for name, value in data.items():
        key = f"{prefix}.{name}" if prefix else name
        value = _coerce(value, types[name], key)
        choices = names[name].metadata.get("choices")
        if choices and value not in choices:
            raise ConfigError(f"{key}={value!r} is not allowed; allowed: {', '.join(choices)}")
        kwargs[name] = value
    obj = cls(**kwargs)
    if hasattr(obj, "validate"):
        obj.validate()
    return obj


# ---------------------------------------------------------------------------------------------------------
# Presets. Vocabulary of the paper presets: 151,936 (the Qwen tokenizer the paper's models use).

QWEN_VOCAB = 151936

PRESETS: dict[str, dict] = {
    # Unit tests: a forward pass takes milliseconds.
    "tiny": {
        "model": {"vocab_size": 256, "d_model": 64, "num_layers": 2, "ffn_dim": 128,
                  "attention": {"num_heads": 4, "num_kv_heads": 2, "head_dim": 16}},
        "data": {"seq_len": 64, "vocab_size": 256},
        "train": {"batch_size": 4, "max_steps": 20, "warmup_steps": 2, "eval_every": 10,
                  "checkpoint_every": 10},
    },
    # CPU demos and benchmarks: about 6.8M parameters.
    "small": {
        "model": {"vocab_size": 8192, "d_model": 256, "num_layers": 6, "ffn_dim": 768,
                  "attention": {"num_heads": 4, "num_kv_heads": 2, "head_dim": 64}},
        "data": {"seq_len": 256, "vocab_size": 8192},
    },
    # `gatedattn compare --quick`: a 1.3M-parameter model that trains in about a minute per variant on 2 cores.
    "compare-quick": {
        "model": {"vocab_size": 2048, "d_model": 128, "num_layers": 4, "ffn_dim": 384,
                  "attention": {"num_heads": 4, "num_kv_heads": 2, "head_dim": 32}},
        "data": {"seq_len": 128, "vocab_size": 2048},
    },
    # The paper's dense 1.7B, 28 layers.
    "paper-dense-1.7b-28l": {
        "model": {"vocab_size": QWEN_VOCAB, "d_model": 2048, "num_layers": 28, "ffn_dim": 6144,
                  "max_position_embeddings": 4096, "tie_embeddings": True,
                  "attention": {"num_heads": 16, "num_kv_heads": 8, "head_dim": 128, "qk_norm": True}},
        "data": {"seq_len": 4096},
    },
    # The paper's deeper dense variant: 48 layers, d 1536, FFN 4608 (heads as in the 28-layer model).
    "paper-dense-1.7b-48l": {
        "model": {"vocab_size": QWEN_VOCAB, "d_model": 1536, "num_layers": 48, "ffn_dim": 4608,
                  "max_position_embeddings": 4096, "tie_embeddings": True,
                  "attention": {"num_heads": 16, "num_kv_heads": 8, "head_dim": 128, "qk_norm": True}},
        "data": {"seq_len": 4096},
    },
    # The paper's MoE 15A2B: 128 fine-grained experts, top-8, expert FFN 768.
    "paper-moe-15a2b": {
        "model": {"vocab_size": QWEN_VOCAB, "d_model": 2048, "num_layers": 24, "ffn_dim": 6144,
                  "max_position_embeddings": 4096, "tie_embeddings": False,
                  "attention": {"num_heads": 32, "num_kv_heads": 4, "head_dim": 128, "qk_norm": True},
                  "moe": {"num_experts": 128, "top_k": 8, "expert_ffn_dim": 768, "norm_topk_prob": True,
                          "load_balance_coef": 0.001, "z_loss_coef": 0.001}},
        "data": {"seq_len": 4096},
    },
}


def _deep_merge(base: dict, update: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in update.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict) and k != "scaling":
            out[k] = _deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def parse_value(text: str) -> Any:
    """Parse the value of a ``key=value`` override as YAML (numbers, booleans, null, lists, mappings)."""
    try:
        return yaml.safe_load(text) if text != "" else ""
    except yaml.YAMLError:
        return text


def parse_overrides(items: list[str] | None) -> dict[str, Any]:
    """``["a.b=1", "c=x"]`` -> ``{"a.b": 1, "c": "x"}``."""
    out: dict[str, Any] = {}
    for item in items or []:
        if "=" not in item:
            raise ConfigError(f"--set expects key=value (e.g. model.attention.gate.position=g1), got {item!r}")
        key, value = item.split("=", 1)
        out[key.strip()] = parse_value(value.strip())
    return out


def _set_dotted(tree: dict, key: str, value: Any) -> None:
    parts = key.split(".")
    node = tree
    for i, part in enumerate(parts[:-1]):
        nxt = node.get(part)
        if nxt is None and i > 0:  # descending into a mapping-valued field that is null (e.g. rope.scaling)
            nxt = node[part] = {}
        if not isinstance(nxt, dict):
            raise ConfigError(f"unknown config key '{key}': '{'.'.join(parts[:i + 1])}' has no sub-keys")
        node = nxt
    node[parts[-1]] = value


def _read_yaml(path: Path) -> dict:
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise ConfigError(f"config file {path} is not valid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping at the top level")
    return data


def resolve_tree(name_or_path: str | dict | None) -> dict:
    """The plain-dict form of a preset name, a YAML/JSON file (with optional ``base: PRESET``) or a dict."""
    if name_or_path is None:
        return {}
    if isinstance(name_or_path, dict):
        data = copy.deepcopy(name_or_path)
    elif name_or_path in PRESETS:
        return copy.deepcopy(PRESETS[name_or_path])
    else:
        path = Path(name_or_path)
        if path.is_dir() and (path / "config.json").exists():
            path = path / "config.json"
        if not path.is_file():
            raise ConfigError(f"config {name_or_path!r} is neither a preset nor a file; "
                              f"presets: {', '.join(PRESETS)}")
        data = _read_yaml(path)  # YAML is a superset of JSON
    base = data.pop("base", None)
    if base is not None:
        if base not in PRESETS:
            raise ConfigError(f"base={base!r} is not a preset; presets: {', '.join(PRESETS)}")
        data = _deep_merge(PRESETS[base], data)
    return data


def load_config(name_or_path: str | dict | None = None, overrides: dict[str, Any] | None = None) -> Config:
    """The full config from a preset name, a YAML file or a dict, with dotted overrides applied.

    >>> cfg = load_config("tiny", {"model.attention.gate.position": "g1"})
    >>> cfg.model.attention.gate.position
    'g1'
    """
    tree = _deep_merge(dataclasses.asdict(Config()), resolve_tree(name_or_path))
    for key, value in (overrides or {}).items():
        if key.split(".")[0] not in tree:
            raise ConfigError(f"unknown config key '{key}'; top-level sections: {', '.join(tree)}")
        _set_dotted(tree, key, value)
    return build(Config, tree)


def model_config_from_dict(data: dict) -> ModelConfig:
    return build(ModelConfig, data, "model")


def model_config_to_json(cfg: ModelConfig) -> str:
    return json.dumps(dataclasses.asdict(cfg), indent=2)
