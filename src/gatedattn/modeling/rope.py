"""Rotary position embeddings with the HF ``rope_scaling`` vocabulary.

The inverse frequencies and the attention scaling follow the formulas of HF transformers'
``modeling_rope_utils`` (default, linear, dynamic NTK, YaRN, Llama-3), so checkpoints extended with either
library agree; cos and sin are computed in float32 whatever the model's dtype, as HF does. Partial rotary:
only the first ``rotary_dim`` channels of each head rotate.

Dynamic NTK stretches the base by a sequence length. HF recomputes it from the largest position of each call,
so with a KV cache the cached keys and the new queries are rotated with different frequencies. Here the
length is one number per sequence: a full forward uses its own length, a cached run the cache's
``rope_seq_len`` (declared by the caller, else the length of its first call), so a cached run equals a full
forward over the same tokens whenever ``rope_seq_len`` is that forward's length.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..config import ModelConfig, RopeScalingConfig


def rotary_dim(cfg: ModelConfig) -> int:
    return int(cfg.attention.head_dim * cfg.rope.partial_rotary_factor)


def _base_inv_freq(base: float, dim: int) -> torch.Tensor:
    return 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim))


def inv_freq_and_scaling(cfg: ModelConfig, seq_len: int | None = None) -> tuple[torch.Tensor, float]:
    """Inverse frequencies (rotary_dim / 2,) and the factor that multiplies cos and sin (YaRN's mscale).

    ``seq_len`` matters only for dynamic NTK, which stretches the base once the input outgrows the
    original context.
    """
    dim, base = rotary_dim(cfg), cfg.rope.theta
    s = cfg.rope.scaling
    rope_type = s.rope_type if s is not None else "default"
    if rope_type == "default":
        return _base_inv_freq(base, dim), 1.0
    factor = float(s.factor)
    original = s.original_max_position_embeddings or cfg.max_position_embeddings
    if rope_type == "linear":
        return _base_inv_freq(base, dim) / factor, 1.0
    if rope_type == "dynamic":  # HF always takes `original` from max_position_embeddings (hf_convert maps it)
        if seq_len is not None and seq_len > original:
            # In float32 from an integer tensor, as HF's forward computes it, so the frequencies agree bitwise.
            length = torch.tensor(seq_len)
            base = base * ((factor * length / original) - (factor - 1)) ** (dim / (dim - 2))
        return _base_inv_freq(base, dim), 1.0
    if rope_type == "yarn":
        return _yarn(base, dim, factor, original, s)
    if rope_type == "llama3":
        return _llama3(base, dim, factor, s), 1.0
    raise ValueError(f"unknown rope_type {rope_type!r}")


def _yarn(base: float, dim: int, factor: float, original: int,
          s: RopeScalingConfig) -> tuple[torch.Tensor, float]:
    def mscale(scale: float, m: float = 1.0) -> float:
        return 1.0 if scale <= 1 else 0.1 * m * math.log(scale) + 1.0

    attention_factor = s.attention_factor
    if attention_factor is None:
        if s.mscale and s.mscale_all_dim:
            attention_factor = mscale(factor, s.mscale) / mscale(factor, s.mscale_all_dim)
        else:
            attention_factor = mscale(factor)
    beta_fast, beta_slow = s.beta_fast or 32, s.beta_slow or 1

    def correction_dim(rotations: float) -> float:
        return dim * math.log(original / (rotations * 2 * math.pi)) / (2 * math.log(base))

    low, high = correction_dim(beta_fast), correction_dim(beta_slow)
    if s.truncate is None or s.truncate:
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001
    ramp = torch.clamp((torch.arange(dim // 2, dtype=torch.float32) - low) / (high - low), 0, 1)
    pos_freqs = base ** (torch.arange(0, dim, 2).float() / dim)
    extrapolation = 1 - ramp  # 1 = keep the original frequency (high-frequency channels)
    inv_freq = (1.0 / (factor * pos_freqs)) * (1 - extrapolation) + (1.0 / pos_freqs) * extrapolation
    return inv_freq, float(attention_factor)


def _llama3(base: float, dim: int, factor: float, s: RopeScalingConfig) -> torch.Tensor:
    inv_freq = _base_inv_freq(base, dim)
    low, high = s.low_freq_factor, s.high_freq_factor
    old = s.original_max_position_embeddings
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > old / low, inv_freq / factor, inv_freq)
    smooth = (old / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = ~(wavelen < old / high) & ~(wavelen > old / low)
    return torch.where(medium, smoothed, scaled)


class RotaryEmbedding(nn.Module):
    """Produces (cos, sin) for given positions; frequencies depend on a length only under dynamic NTK."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        inv_freq, self.attention_scaling = inv_freq_and_scaling(cfg)
        # A plain float32 attribute, not a buffer: model.double() / .half() must not change the frequencies.
        self.inv_freq = inv_freq
        self.dynamic = cfg.rope.scaling is not None and cfg.rope.scaling.rope_type == "dynamic"
        self._dynamic_cache: tuple[int, torch.Tensor] | None = None

    def _frequencies(self, positions: torch.Tensor, seq_len: int | None) -> torch.Tensor:
        device = positions.device
        if self.inv_freq.is_meta:  # built under a meta-device context (transformers' fast init)
            with torch.device("cpu"):
                self.inv_freq = inv_freq_and_scaling(self.cfg)[0]
        if not self.dynamic:
            if self.inv_freq.device != device:
                self.inv_freq = self.inv_freq.to(device)
            return self.inv_freq
        if seq_len is None:
            seq_len = int(positions.max()) + 1
        if self._dynamic_cache is None or self._dynamic_cache[0] != seq_len \
                or self._dynamic_cache[1].device != device:
            self._dynamic_cache = (seq_len, inv_freq_and_scaling(self.cfg, seq_len)[0].to(device))
        return self._dynamic_cache[1]

    @torch.no_grad()
    def forward(self, positions: torch.Tensor, dtype: torch.dtype,
                seq_len: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """positions: (T,) integer tensor -> cos, sin of shape (T, rotary_dim).

        ``seq_len``: the length dynamic NTK scales for (default: the largest position + 1, as HF).
        """
        freqs = positions.float()[:, None] * self._frequencies(positions, seq_len)[None, :]
        emb = torch.cat((freqs, freqs), dim=-1)
        return (emb.cos() * self.attention_scaling).to(dtype), (emb.sin() * self.attention_scaling).to(dtype)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate the first cos.shape[-1] channels of x (B, T, heads, head_dim), half-split layout as in HF."""
    rd = cos.shape[-1]
    x_rot, x_pass = x[..., :rd], x[..., rd:]
    cos, sin = cos[:, None, :], sin[:, None, :]  # broadcast over heads
    x1, x2 = x_rot[..., : rd // 2], x_rot[..., rd // 2:]
    rotated = torch.cat((-x2, x1), dim=-1)
    out = x_rot * cos + rotated * sin
    return torch.cat((out, x_pass), dim=-1) if x_pass.shape[-1] else out
