"""Configuration: nested dataclasses, named presets, YAML files and dotted ``key=value`` overrides.

Every field is validated when a config is built, so a typo or a bad value fails early with one line that
names the key and the allowed values. Variants of the gate are data here, never separate model code.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import yaml

from .errors import ConfigError

Device = Literal["auto", "cpu", "cuda"]
DEVICES = typing.get_args(Device)  # for the --device flags
WEIGHT_DTYPES = ("float32", "bfloat16", "float16")  # for loading a model for inference (--dtype)

# Closed vocabularies: a field typed with one of these accepts only its values (the error lists them).
GatePosition = Literal["none", "g1", "g2", "g3", "g4", "g5"]
GateActivation = Literal["sigmoid", "silu", "ns_sigmoid", "identity"]
RopeType = Literal["default", "linear", "dynamic", "yarn", "llama3"]
GATE_POSITIONS: tuple[str, ...] = typing.get_args(GatePosition)
GATE_ACTIVATIONS: tuple[str, ...] = typing.get_args(GateActivation)
ROPE_TYPES: tuple[str, ...] = typing.get_args(RopeType)


@dataclass
class GateConfig:
    """The gate ``Y' = Y ⊙ act(X·W)`` (or ``Y + act(X·W)``) at one of the paper's positions.

    g1: SDPA output per query head, before o_proj (the paper's best); g2: values after v_proj;
    g3: keys after k_proj; g4: queries after q_proj; g5: the attention output after o_proj.
    """

    position: GatePosition = "none"
    granularity: Literal["elementwise", "headwise"] = "elementwise"
    shared_across_heads: bool = False
    combine: Literal["multiply", "add"] = "multiply"
    activation: GateActivation = "sigmoid"
    input_dependent: bool = True
    bias: bool = False
    # normal = N(0, initializer_range) like q_proj; zeros = W = 0; identity = W = 0 and the scores divided by
    # act(0) (2·sigmoid for sigmoid), so the gate starts as exactly 1 (add: 0): `gatedattn retrofit` uses it.
    init: Literal["normal", "zeros", "identity"] = "normal"
    # g1/g4 only: produce the gate logits by widening q_proj (one matmul) instead of a separate projection.
    fused: bool = True


# act(0) of each gate activation: what a zero-initialised gate starts at.
GATE_ACTIVATION_AT_ZERO = {"sigmoid": 0.5, "silu": 0.0, "ns_sigmoid": 0.75, "identity": 0.0}


def check_identity_at_init(g: GateConfig) -> None:
    """ConfigError unless ``g`` can start as the identity: a multiplicative gate needs act(0) != 0 (divided
    out), an additive one act(0) = 0."""
    at_zero = GATE_ACTIVATION_AT_ZERO[g.activation]
    if (g.combine == "multiply") == (at_zero != 0):
        return
    fitting = [a for a, v in GATE_ACTIVATION_AT_ZERO.items() if (v != 0) == (g.combine == "multiply")]
    raise ConfigError(f"model.attention.gate.init=identity: a gate with combine={g.combine} and "
                      f"activation={g.activation} cannot start as the identity (act(0) = {at_zero:g}); allowed "
                      f"activations with combine={g.combine}: {', '.join(fitting)}")


@dataclass
class RopeScalingConfig:
    """RoPE scaling with the keys and meaning of HF's ``rope_scaling`` (``rope_parameters``) dict.

    None means the HF default of that key: ``original_max_position_embeddings`` = the model's
    ``max_position_embeddings``; YaRN ``beta_fast`` 32, ``beta_slow`` 1, ``truncate`` true and
    ``attention_factor`` from ``mscale`` / ``mscale_all_dim`` (else 0.1 ln(factor) + 1).
    """

    rope_type: RopeType
    factor: float | None = None  # required for every type but default
    original_max_position_embeddings: int | None = None
    attention_factor: float | None = None  # yarn
    beta_fast: float | None = None  # yarn
    beta_slow: float | None = None  # yarn
    mscale: float | None = None  # yarn
    mscale_all_dim: float | None = None  # yarn
    truncate: bool | None = None  # yarn
    low_freq_factor: float | None = None  # llama3 (required)
    high_freq_factor: float | None = None  # llama3 (required)

    KEY_ALIASES: ClassVar[dict[str, str]] = {"type": "rope_type"}  # HF's legacy name, accepted on input

    def validate(self) -> None:
        if self.rope_type != "default" and (self.factor is None or self.factor < 1):
            raise ConfigError(f"model.rope.scaling.factor must be a number >= 1 for rope_type={self.rope_type}, "
                              f"got {self.factor}")
        if self.original_max_position_embeddings is not None and self.original_max_position_embeddings < 1:
            raise ConfigError("model.rope.scaling.original_max_position_embeddings must be a positive integer, "
                              f"got {self.original_max_position_embeddings}")
        if self.rope_type == "llama3":
            for key in ("low_freq_factor", "high_freq_factor", "original_max_position_embeddings"):
                if getattr(self, key) is None:
                    raise ConfigError(f"model.rope.scaling.{key} is required for rope_type=llama3")

    def to_hf_dict(self) -> dict:
        """HF's ``rope_scaling`` dict: ``rope_type`` and the keys that are set."""
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}

    @classmethod
    def from_hf_dict(cls, data: dict) -> RopeScalingConfig:
        """From HF's ``rope_scaling`` dict (``type`` accepted for ``rope_type``); ConfigError naming a bad key."""
        return build(cls, data, "model.rope.scaling")


@dataclass
class RopeConfig:
    theta: float = 10000.0
    partial_rotary_factor: float = 1.0
    scaling: RopeScalingConfig | None = None  # None = plain RoPE


@dataclass
class SparseAttentionConfig:
    """``model.attention.sparse``: DeepSeek Sparse Attention (DeepSeek-V3.2). A lightning indexer scores every
    past token for each query, I(t, s) = sum_j w(t, j) * ReLU(q_j(t) . k(s)), and the query attends only to its
    ``top_k`` highest-scoring past tokens (all of them while fewer exist), one selection shared by its heads.

    ``implementation``: ``mask`` runs dense attention with the selection as a mask (the reference);
    ``gather`` gathers the selected keys and values, so attention costs O(T * top_k) instead of O(T^2).
    ``mode``: ``sparse`` attends to the selection; ``dense`` attends to everything (the indexer still runs,
    for its warm-up against the dense attention).
    """

    type: Literal["dsa"]
    top_k: int = 64
    indexer_heads: int = 4
    indexer_dim: int = 64  # even: the indexer's queries and keys are rotated
    implementation: Literal["mask", "gather"] = "mask"
    mode: Literal["sparse", "dense"] = "sparse"
    query_chunk: int = 256  # gather path: queries per chunk, bounding the (chunk, top_k) working set
    # The indexer's query-key products and its cached keys (DeepSeek-V3.2 runs them in FP8): bfloat16 halves
    # what a decoded token reads and uses the CPU's bf16 dot products; its ReLU and head sum stay float32.
    indexer_dtype: Literal["float32", "bfloat16"] = "float32"

    def validate(self) -> None:
        for key in ("top_k", "indexer_heads", "indexer_dim", "query_chunk"):
            if getattr(self, key) < 1:
                raise ConfigError(f"model.attention.sparse.{key} must be a positive integer, got {getattr(self, key)}")
        if self.indexer_dim % 2:
            raise ConfigError(f"model.attention.sparse.indexer_dim must be even (it is rotated), got {self.indexer_dim}")


@dataclass
class AttentionConfig:
    num_heads: int = 4
    num_kv_heads: int = 2
    head_dim: int = 16
    qk_norm: bool = True
    qkv_bias: bool = False
    gate: GateConfig = field(default_factory=GateConfig)
    # Peers that attack attention sinks; composable with the gate.
    # learned = a per-head sink logit (gpt-oss); off_by_one = a fixed zero logit.
    o_bias: bool = False  # a bias on o_proj (the official code has one whenever its qkv_bias is on)
    sink: Literal["none", "learned", "off_by_one"] = "none"
    num_register_tokens: int = 0  # learnable tokens prepended to every sequence (StreamingLLM style)
    # The paper's non-linearity-only controls, applied to the SDPA output per head (position G1).
    output_nonlinearity: Literal["none", "rmsnorm", "silu"] = "none"
    implementation: Literal["sdpa", "eager"] = "sdpa"  # sdpa = fused fast path; eager = explicit softmax
    sparse: SparseAttentionConfig | None = None  # None = dense attention


@dataclass
class MoEConfig:
    num_experts: int = 0  # 0 = dense SwiGLU FFN
    top_k: int = 2
    expert_ffn_dim: int = 64
    shared_expert_ffn_dim: int = 0
    shared_expert_gate: bool = False  # scale the shared expert by sigmoid(x . w), one score per token (Qwen3-Next)
    norm_topk_prob: bool = True
    load_balance_coef: float = 0.001
    z_loss_coef: float = 0.001


LAYER_TYPES = ("full_attention", "linear_attention")
EVERY_RULE = re.compile(r"full_attention_every_(\d+)")


@dataclass
class LinearAttentionConfig:
    """Gated DeltaNet, the ``linear_attention`` layers (HF Qwen3-Next's names: linear_num_key_heads, ...)."""

    num_key_heads: int = 2  # q and k heads; each serves num_value_heads / num_key_heads value heads
    num_value_heads: int = 4
    key_head_dim: int = 16
    value_head_dim: int = 16
    conv_kernel_size: int = 4  # the short causal depthwise convolution over [q | k | v]
    chunk_size: int = 64  # positions per chunk of the parallel form (the result does not depend on it)

    def validate(self) -> None:
        for key in ("num_key_heads", "num_value_heads", "key_head_dim", "value_head_dim", "conv_kernel_size",
                    "chunk_size"):
            if getattr(self, key) <= 0:
                raise ConfigError(f"model.linear_attention.{key} must be a positive integer, got {getattr(self, key)}")
        if self.num_value_heads % self.num_key_heads:
            raise ConfigError(f"model.linear_attention.num_value_heads ({self.num_value_heads}) must be a multiple "
                              f"of num_key_heads ({self.num_key_heads})")


def resolve_layer_types(layer_types: Any, num_layers: int) -> list[str]:
    """``model.layer_types`` as one name per layer: a list of full_attention / linear_attention, one of those
    names for every layer, or ``full_attention_every_N`` (layers N-1, 2N-1, ... full, the rest linear:
    Qwen3-Next is every_4). ConfigError (one line) otherwise."""
    allowed = (f"allowed: a list of {num_layers} of {', '.join(LAYER_TYPES)}, one of those names, or "
               "full_attention_every_N")
    if isinstance(layer_types, str):
        if layer_types in LAYER_TYPES:
            return [layer_types] * num_layers
        rule = EVERY_RULE.fullmatch(layer_types)
        if not rule or int(rule.group(1)) < 1:
            raise ConfigError(f"model.layer_types={layer_types!r} is not a layer pattern; {allowed}")
        n = int(rule.group(1))
        return ["linear_attention" if (i + 1) % n else "full_attention" for i in range(num_layers)]
    if not isinstance(layer_types, (list, tuple)):
        raise ConfigError(f"model.layer_types={layer_types!r} is not a layer pattern; {allowed}")
    bad = [t for t in layer_types if t not in LAYER_TYPES]
    if bad:
        raise ConfigError(f"model.layer_types has {bad[0]!r}; {allowed}")
    if len(layer_types) != num_layers:
        raise ConfigError(f"model.layer_types lists {len(layer_types)} layers but model.num_layers={num_layers}; "
                          f"{allowed}")
    return list(layer_types)


def compact_layer_types(layer_types: list[str] | str) -> list[str] | str:
    """One name when every layer has it (the default spelling), else the list: how a list written out for
    transformers (which needs one entry per layer) reads back."""
    if isinstance(layer_types, list) and len(set(layer_types)) == 1:
        return layer_types[0]
    return layer_types


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
    # RMSNorm weights stored zero-centred and applied as (1 + w), initialised to 0 (Qwen3-Next's norms).
    norm_zero_centered: bool = False
    initializer_range: float = 0.02
    bos_token_id: int = 0
    eos_token_id: int = 0
    attention: AttentionConfig = field(default_factory=AttentionConfig)
    rope: RopeConfig = field(default_factory=RopeConfig)
    moe: MoEConfig = field(default_factory=MoEConfig)
    # The token mixer of each layer (resolve_layer_types): our gated attention or Gated DeltaNet.
    layer_types: list[str] | str = "full_attention"
    linear_attention: LinearAttentionConfig = field(default_factory=LinearAttentionConfig)

    @property
    def resolved_layer_types(self) -> list[str]:
        return resolve_layer_types(self.layer_types, self.num_layers)

    @property
    def beyond_dense_attention(self) -> list[str]:
        """What makes this more than a full-attention model with dense FFNs (what compiled decoding and
        train.compile=auto are measured on): Gated DeltaNet layers, DSA, MoE."""
        kinds = {"Gated DeltaNet layers": "linear_attention" in self.resolved_layer_types,
                 "DSA": self.attention.sparse is not None, "MoE": bool(self.moe.num_experts)}
        return [k for k, v in kinds.items() if v]

    def validate(self) -> None:
        a, g = self.attention, self.attention.gate
        for key in ("vocab_size", "d_model", "num_layers", "ffn_dim", "max_position_embeddings"):
            if getattr(self, key) <= 0:
                raise ConfigError(f"model.{key} must be a positive integer, got {getattr(self, key)}")
        resolve_layer_types(self.layer_types, self.num_layers)  # one-line ConfigError on a bad pattern
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
        if g.init == "identity" and g.position != "none":
            check_identity_at_init(g)
        if self.rope.partial_rotary_factor <= 0 or self.rope.partial_rotary_factor > 1:
            raise ConfigError("model.rope.partial_rotary_factor must be in (0, 1]")
        rotary = int(a.head_dim * self.rope.partial_rotary_factor)
        if rotary < 2 or rotary % 2:
            raise ConfigError(f"model.rope: head_dim x partial_rotary_factor = {rotary} must be even and >= 2")
        if self.rope.theta <= 0:
            raise ConfigError("model.rope.theta must be positive")
        m = self.moe
        if m.num_experts < 0:
            raise ConfigError("model.moe.num_experts must be >= 0 (0 = dense FFN)")
        if m.shared_expert_gate and not (m.num_experts and m.shared_expert_ffn_dim > 0):
            raise ConfigError("model.moe.shared_expert_gate gates the shared expert: it needs num_experts > 0 and "
                              f"shared_expert_ffn_dim > 0, got {m.num_experts} and {m.shared_expert_ffn_dim}")
        if m.num_experts and not 1 <= m.top_k <= m.num_experts:
            raise ConfigError(f"model.moe.top_k must be in [1, num_experts={m.num_experts}], got {m.top_k}")
        if not 0 <= self.bos_token_id < self.vocab_size or not 0 <= self.eos_token_id < self.vocab_size:
            raise ConfigError(f"model.bos_token_id and eos_token_id must be in [0, vocab_size={self.vocab_size})")


@dataclass
class BigramBackcopyConfig:
    """``data.source=bigram-backcopy``: the synthetic Bigram-Backcopy task (Guo et al. 2024).

    ``vocab`` ordinary tokens plus BOS; a bigram matrix from the Shakespeare text's character bigrams
    (the ``vocab`` most frequent characters) or seeded Dirichlet(``dirichlet_alpha``) rows; the
    ``triggers`` most frequent tokens are triggers, after which the next token copies the one before.
    """

    vocab: int = 64
    triggers: int = 3
    matrix: Literal["shakespeare", "dirichlet"] = "shakespeare"
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
    dtype: Literal["float32", "bfloat16"] = "float32"  # bfloat16 = autocast
    # torch.compile of the training forward: off; model (the whole forward); blocks (each decoder block, one
    # graph shared by all: the elementwise work fused at a fraction of the compile time); auto = blocks for
    # long CPU runs of dense full-attention models, where it pays for its compilation (docs/performance.md),
    # else off. true/false mean model/off.
    compile: Literal["auto", "off", "model", "blocks"] = "auto"
    log_every: int = 1
    eval_every: int = 50  # validation every N steps (0 = at the end only)
    eval_batches: int = 8  # validation batches (of batch_size sequences); 0 = no validation
    checkpoint_every: int = 100  # 0 = at the end only
    keep_checkpoints: int = 2
    spike_factor: float = 1.5  # a loss above spike_factor x the median of the last spike_window is a spike
    spike_window: int = 50
    max_nonfinite: int = 5  # stop after this many non-finite losses/gradients in a row (each is skipped)
    probe_every: int = 0  # sink probes on the first validation sequences every N steps, to metrics.jsonl; 0 = off
    device: Device = "auto"  # auto = CUDA when available, else CPU
    # Data parallelism over the processes torchrun starts (docs/distributed.md); batch_size stays the global
    # micro-batch, split over the ranks.
    parallel: Literal["none", "ddp", "fsdp"] = "none"
    fsdp_param_dtype: Literal["float32", "bfloat16"] = "float32"  # fsdp mixed precision: gathered weights' dtype
    activation_checkpointing: bool = False  # recompute each block's activations in the backward pass
    # Continued training of a retrofitted gate (see docs/retrofit.md): gates = only the gate parameters
    # learn (the rest frozen); base_lr_mult scales the learning rate of every non-gate parameter.
    trainable: Literal["all", "gates", "indexer"] = "all"  # indexer: only DSA's indexers (its dense warm-up)
    base_lr_mult: float = 1.0

    VALUE_ALIASES: ClassVar[dict[str, dict]] = {"compile": {True: "model", False: "off"}}  # its old booleans

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
        if self.fsdp_param_dtype != "float32" and self.parallel != "fsdp":
            raise ConfigError(f"train.fsdp_param_dtype={self.fsdp_param_dtype} needs train.parallel=fsdp "
                              f"(got {self.parallel}); use train.dtype=bfloat16 for autocast otherwise")
        if not self.base_lr_mult > 0:
            raise ConfigError(f"train.base_lr_mult must be positive (to freeze the non-gate parameters set "
                              f"train.trainable=gates), got {self.base_lr_mult}")
        if self.trainable != "all" and self.base_lr_mult != 1:
            raise ConfigError(f"train.base_lr_mult scales the non-gate parameters, which train.trainable={self.trainable} "
                              "freezes; set one of the two")


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def validate(self) -> None:
        seq_len, max_pos = self.data.seq_len, self.model.max_position_embeddings
        if seq_len > max_pos:
            raise ConfigError(f"data.seq_len={seq_len} exceeds model.max_position_embeddings={max_pos}; "
                              f"lower data.seq_len or set model.max_position_embeddings >= {seq_len}")

    def to_dict(self) -> dict:
        """Plain dict (as YAML shows it); RoPE scaling lists only the keys that are set."""
        tree = dataclasses.asdict(self)
        if self.model.rope.scaling is not None:
            tree["model"]["rope"]["scaling"] = self.model.rope.scaling.to_hf_dict()
        return tree


# ---------------------------------------------------------------------------------------------------------
# Building dataclasses from plain dicts, with validation that names the key.

# Decimal numbers as people write them. YAML 1.1 (PyYAML) reads 3e-4 or 1E5, without a dot, as strings.
_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")


def _number(value: Any, key: str, kind: str) -> float | int:
    """``value`` as a finite int or float (numeric strings too); ConfigError otherwise."""
    shown = value
    if isinstance(value, str) and _NUMBER.fullmatch(value.strip()):
        text = value.strip()
        value = int(text) if text.lstrip("+-").isdigit() else float(text)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{key} must be {kind}, got {shown!r}")
    if not math.isfinite(value):
        raise ConfigError(f"{key} must be a finite number, got {shown!r}")
    return value


def _coerce(value: Any, tp: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None:
            return None
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return _coerce(value, args[0], key)
    if origin is Literal:
        allowed = typing.get_args(tp)
        if not any(value == a and type(value) is type(a) for a in allowed):
            raise ConfigError(f"{key}={value!r} is not allowed; allowed: {', '.join(map(str, allowed))}")
        return value
    if dataclasses.is_dataclass(tp):
        return build(tp, value, key)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        raise ConfigError(f"{key} must be true or false, got {value!r}")
    if tp is int:
        number = _number(value, key, "an integer")
        if int(number) != number:
            raise ConfigError(f"{key} must be an integer, got {value!r}")
        return int(number)
    if tp is float:
        return float(_number(value, key, "a number"))
    if tp is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ConfigError(f"{key} must be a string, got {value!r}")
        return str(value)
    return value


def build(cls, data: Any, prefix: str = ""):
    """Build dataclass ``cls`` from a (possibly partial) dict, or check an instance of it; unknown keys,
    missing required keys and bad values raise ConfigError naming the key."""
    if isinstance(data, cls):
        data = dataclasses.asdict(data)  # rebuilt, so an instance made in Python is checked like a file
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix or 'config'} must be a mapping, got {data!r}")
    data = _resolve_aliases(cls, data, prefix)
    names = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    unknown = [k for k in data if k not in names]
    if unknown:
        key = str(unknown[0])
        hint = difflib.get_close_matches(key, names, n=1)
        where = f"{prefix}.{key}" if prefix else key
        msg = f"unknown config key '{where}'"
        msg += f" (did you mean '{hint[0]}'?)" if hint else ""
        raise ConfigError(msg + f"; allowed keys here: {', '.join(names)}")
    for name, f in names.items():
        if name not in data and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            key = f"{prefix}.{name}" if prefix else name
            allowed = typing.get_args(hints[name]) if typing.get_origin(hints[name]) is Literal else ()
            raise ConfigError(f"{key} is required" + (f"; allowed: {', '.join(allowed)}" if allowed else ""))
    kwargs = {name: _coerce(value, hints[name], f"{prefix}.{name}" if prefix else name)
              for name, value in data.items()}
    obj = cls(**kwargs)
    if hasattr(obj, "validate"):
        obj.validate()
    return obj


def _resolve_aliases(cls, data: dict, prefix: str) -> dict:
    for key, values in getattr(cls, "VALUE_ALIASES", {}).items():
        if isinstance(data.get(key), bool):  # bools only: 1 == True must not match
            data = {**data, key: values[data[key]]}
    aliases = getattr(cls, "KEY_ALIASES", {})
    if not any(a in data for a in aliases):
        return data
    data = dict(data)
    for alias, name in aliases.items():
        if alias in data:
            value = data.pop(alias)
            if name in data and data[name] != value:
                raise ConfigError(f"{prefix}: '{alias}' (an old name of '{name}') is {value!r} but '{name}' is "
                                  f"{data[name]!r}; give one of them")
            data[name] = value
    return data


# ---------------------------------------------------------------------------------------------------------
# Presets. Vocabulary of the paper presets: 151,936 (the Qwen tokenizer the paper's models use).

QWEN_VOCAB = 151936

PRESETS: dict[str, dict] = {
    # Unit tests: a forward pass takes milliseconds. Vocabulary 257: the smallest byte-level BPE (256 bytes +
    # <|endoftext|>), so the preset trains as written.
    "tiny": {
        "model": {"vocab_size": 257, "d_model": 64, "num_layers": 2, "ffn_dim": 128,
                  "attention": {"num_heads": 4, "num_kv_heads": 2, "head_dim": 16}},
        "data": {"seq_len": 64, "vocab_size": 257},
        "train": {"batch_size": 4, "max_steps": 20, "warmup_steps": 2, "eval_every": 10,
                  "checkpoint_every": 10},
    },
    # CPU demos and benchmarks (`gatedattn info small` gives its size).
    "small": {
        "model": {"vocab_size": 8192, "d_model": 256, "num_layers": 6, "ffn_dim": 768,
                  "attention": {"num_heads": 4, "num_kv_heads": 2, "head_dim": 64}},
        "data": {"seq_len": 256, "vocab_size": 8192},
    },
    # `gatedattn compare --quick`: small enough to train in about a minute per variant on 2 idle cores
    # (`gatedattn info compare-quick` gives its size).
    "compare-quick": {
        "model": {"vocab_size": 2048, "d_model": 128, "num_layers": 4, "ffn_dim": 384,
                  "attention": {"num_heads": 4, "num_kv_heads": 2, "head_dim": 32}},
        "data": {"seq_len": 128, "vocab_size": 2048},
    },
    # The sink lab (Bigram-Backcopy, Guo et al. 2024): one layer, one head, where a baseline grows an
    # attention sink within a few CPU minutes (the budget search is in docs/results.md).
    "sink-lab": {
        "model": {"d_model": 256, "num_layers": 1, "ffn_dim": 1024, "tie_embeddings": False,
                  "attention": {"num_heads": 1, "num_kv_heads": 1, "head_dim": 256, "qk_norm": True}},
        "data": {"source": "bigram-backcopy", "seq_len": 128, "bigram_backcopy": {"train_sequences": 50000,
                                                                                  "val_sequences": 256}},
        "train": {"lr": 1e-3, "weight_decay": 1e-4, "batch_size": 64, "max_steps": 250, "warmup_steps": 20,
                  "eval_every": 0, "eval_batches": 2, "checkpoint_every": 50, "probe_every": 25},
    },
    # Qwen3-Next in miniature: three Gated DeltaNet layers per gated full-attention layer (G1 elementwise),
    # an MoE with a sigmoid-gated shared expert, zero-centred norms, RoPE on a quarter of each head.
    "qwen3-next-tiny": {
        "model": {"vocab_size": 257, "d_model": 64, "num_layers": 4, "ffn_dim": 128, "tie_embeddings": False,
                  "norm_zero_centered": True, "layer_types": "full_attention_every_4",
                  "attention": {"num_heads": 4, "num_kv_heads": 2, "head_dim": 16, "qk_norm": True,
                                "gate": {"position": "g1", "granularity": "elementwise"}},
                  "rope": {"partial_rotary_factor": 0.25},
                  "linear_attention": {"num_key_heads": 2, "num_value_heads": 4, "key_head_dim": 16,
                                       "value_head_dim": 16, "conv_kernel_size": 4, "chunk_size": 64},
                  "moe": {"num_experts": 8, "top_k": 2, "expert_ffn_dim": 32, "shared_expert_ffn_dim": 64,
                          "shared_expert_gate": True}},
        "data": {"seq_len": 64, "vocab_size": 257},
        "train": {"batch_size": 4, "max_steps": 20, "warmup_steps": 2, "eval_every": 10,
                  "checkpoint_every": 10},
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
    """A command-line value (of ``--set key=value``, or ``long-eval --rope-scaling``) read as YAML: numbers,
    booleans, null, lists, mappings; text that is not valid YAML stays a string."""
    try:
        return yaml.safe_load(text) if text != "" else ""
    except yaml.YAMLError:
        return text


def dotted(tree: dict, prefix: str = "") -> dict:
    """A config dict as ``{"model.d_model": 256, ...}``; RoPE scaling stays one value (its own dict)."""
    out = {}
    for k, v in tree.items():
        key = f"{prefix}{k}"
        out.update(dotted(v, key + ".") if isinstance(v, dict) and k != "scaling" else {key: v})
    return out


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
        data = yaml.safe_load(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise ConfigError(f"config file {path} is not valid YAML: {str(e).splitlines()[0]}") from None
    if data is None:  # an empty file: the defaults
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping (a JSON object) at the top level, got "
                          f"{type(data).__name__} {_short(data)}; allowed keys: base, model, data, train")
    return data


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


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
        if not isinstance(base, str) or base not in PRESETS:
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
