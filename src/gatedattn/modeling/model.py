"""GatedLM: a pre-norm decoder LM (RMSNorm, GQA + RoPE, SwiGLU or MoE) with the paper's gated attention.

HF-style API: ``GatedLM(config)``, ``model(input_ids).logits``, ``save_pretrained`` / ``from_pretrained``
(config.json + model.safetensors) and ``generate`` with a KV cache.

Hook points for probes (module names): ``hook_embed``; per layer ``layers.{i}.hook_resid_mid`` (after the
attention residual add) and ``layers.{i}.hook_resid_post`` (after the block); and inside attention
``layers.{i}.attn.{hook_q, hook_k, hook_v, hook_attn_probs (eager only), hook_attn_out (SDPA output, before
the gate), hook_gated_out, hook_out}`` and ``layers.{i}.attn.gate.hook_score``.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..config import ModelConfig, model_config_from_dict
from ..errors import GatedAttnError
from ..fileio import read_json_object
from .attention import Attention
from .cache import KVCache
from .ffn import MoE, build_ffn
from .hooks import HookPoint
from .norm import RMSNorm
from .ops import linear_cross_entropy
from .rope import RotaryEmbedding

CONFIG_NAME, WEIGHTS_NAME = "config.json", "model.safetensors"


@dataclass
class GatedLMOutput:
    logits: torch.Tensor
    loss: torch.Tensor | None = None  # lm_loss + weighted MoE aux losses, when labels are given
    lm_loss: torch.Tensor | None = None
    aux_loss: torch.Tensor | None = None  # weighted sum of the MoE losses below (0 for dense models)
    load_balance_loss: torch.Tensor | None = None
    z_loss: torch.Tensor | None = None
    past_key_values: KVCache | None = None


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig, layer_idx: int):
        super().__init__()
        self.attn_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.attn = Attention(cfg, layer_idx)
        self.ffn_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.ffn = build_ffn(cfg)
        if cfg.sandwich_norm:  # norm the sub-layer output too, before the residual add
            self.attn_post_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
            self.ffn_post_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.sandwich = cfg.sandwich_norm
        self.hook_resid_mid, self.hook_resid_post = HookPoint(), HookPoint()

    def forward(self, h, cos, sin, cache=None):
        a = self.attn(self.attn_norm(h), cos, sin, cache)
        h = self.hook_resid_mid(h + (self.attn_post_norm(a) if self.sandwich else a))
        f = self.ffn(self.ffn_norm(h))
        return self.hook_resid_post(h + (self.ffn_post_norm(f) if self.sandwich else f))


class GatedLM(nn.Module):
    def __init__(self, config: ModelConfig | dict):
        super().__init__()
        if isinstance(config, dict):
            config = model_config_from_dict(config)
        config.validate()
        self.config = cfg = config
        self.embed = nn.Embedding(cfg.vocab_size, cfg.d_model)
        n_reg = cfg.attention.num_register_tokens
        self.register_tokens = nn.Parameter(torch.zeros(n_reg, cfg.d_model)) if n_reg else None
        self.layers = nn.ModuleList(Block(cfg, i) for i in range(cfg.num_layers))
        self.norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.embed.weight
        self.rotary = RotaryEmbedding(cfg)
        self.hook_embed = HookPoint()
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        std = self.config.initializer_range
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                m.weight.normal_(0.0, std)
                if getattr(m, "bias", None) is not None:
                    m.bias.zero_()
            elif isinstance(m, RMSNorm):
                m.weight.fill_(1.0)
            elif isinstance(m, MoE):
                for w in (m.w_gate, m.w_up, m.w_down):
                    w.normal_(0.0, std)
        if self.register_tokens is not None:
            self.register_tokens.normal_(0.0, std)
        for layer in self.layers:
            layer.attn.reset_gate_parameters()
            if layer.attn.sink_mode == "learned":
                layer.attn.sink_logit.zero_()

    @property
    def num_register_tokens(self) -> int:
        return 0 if self.register_tokens is None else self.register_tokens.shape[0]

    def forward(self, input_ids: torch.Tensor, labels: torch.Tensor | None = None,
                past_key_values: KVCache | None = None, use_cache: bool = False) -> GatedLMOutput:
        """input_ids (B, T). ``labels`` are the input ids (shifted inside, -100 = ignore), as in HF."""
        cache = past_key_values if past_key_values is not None else (
            KVCache(len(self.layers)) if use_cache else None)
        past = cache.length if cache is not None else 0
        h = self.embed(input_ids)
        n_reg = self.num_register_tokens if past == 0 else 0
        if n_reg:  # learnable register tokens lead every sequence; their outputs are dropped
            h = torch.cat([self.register_tokens.to(h.dtype).expand(h.shape[0], -1, -1), h], 1)
        h = self.hook_embed(h)
        positions = torch.arange(past, past + h.shape[1], device=h.device)
        if cache is not None and cache.rope_seq_len is None:  # dynamic NTK: one length per cached sequence
            cache.rope_seq_len = past + h.shape[1]
        cos, sin = self.rotary(positions, h.dtype, cache.rope_seq_len if cache is not None else None)
        for layer in self.layers:
            h = layer(h, cos, sin, cache)
        h = self.norm(h[:, n_reg:])
        if labels is None:
            out = GatedLMOutput(logits=self.lm_head(h), past_key_values=cache)
            self._moe_losses(out)
            return out
        # Position t predicts token t + 1; the last position has no target (HF shifts labels the same way,
        # which keeps the logits contiguous: no slice copy of the largest activation).
        targets = F.pad(labels[:, 1:], (0, 1), value=-100)
        logits, lm_loss = linear_cross_entropy(h, self.lm_head.weight, targets)
        out = GatedLMOutput(logits=logits, lm_loss=lm_loss, past_key_values=cache)
        self._moe_losses(out)
        out.loss = out.lm_loss + out.aux_loss
        return out

    def _moe_losses(self, out: GatedLMOutput) -> None:
        moes = [layer.ffn for layer in self.layers if isinstance(layer.ffn, MoE)]
        zero = out.logits.new_zeros((), dtype=torch.float32)
        if not moes:
            out.aux_loss = out.load_balance_loss = out.z_loss = zero
            return
        m = self.config.moe
        out.load_balance_loss = torch.stack([f.aux["load_balance_loss"] for f in moes]).mean()
        out.z_loss = torch.stack([f.aux["z_loss"] for f in moes]).mean()
        out.aux_loss = m.load_balance_coef * out.load_balance_loss + m.z_loss_coef * out.z_loss

    # -- decoding -----------------------------------------------------------------------------------------
    def generate(self, input_ids: torch.Tensor, max_new_tokens: int = 32, do_sample: bool = False,
                 temperature: float = 1.0, top_p: float = 1.0, top_k: int = 0,
                 eos_token_id: int | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
        """Greedy or sampled continuation with the KV cache; returns prompt + new tokens (B, T + n)."""
        check_sampling(max_new_tokens, temperature, top_p, top_k)
        total, limit = input_ids.shape[1] + max_new_tokens, self.config.max_position_embeddings
        if total > limit:
            raise GatedAttnError(f"generate: the prompt ({input_ids.shape[1]} tokens) + max_new_tokens "
                                 f"({max_new_tokens}) = {total} exceeds model.max_position_embeddings={limit}; "
                                 "ask for fewer new tokens")
        # Inference mode skips autograd's bookkeeping on every op (per-op overhead dominates batch-1
        # decoding); the result is cloned out of it so that callers may train on it.
        with torch.inference_mode():
            tokens = self._decode(input_ids, max_new_tokens, do_sample, temperature, top_p, top_k,
                                  eos_token_id, generator)
        return tokens.clone()

    def _decode(self, input_ids, max_new_tokens, do_sample, temperature, top_p, top_k, eos_token_id, generator):
        B, T = input_ids.shape
        # Cache and output are allocated once at their final length: no regrowth while decoding.
        cache = KVCache(len(self.layers), capacity=self.num_register_tokens + T + max_new_tokens)
        tokens = input_ids.new_empty(B, T + max_new_tokens)
        tokens[:, :T] = input_ids
        logits = self(input_ids, past_key_values=cache).logits[:, -1]
        done = torch.zeros(B, dtype=torch.bool, device=input_ids.device)
        n = T
        for _ in range(max_new_tokens):
            nxt = sample_next(logits, do_sample, temperature, top_p, top_k, generator)
            if eos_token_id is not None:
                nxt = torch.where(done, torch.full_like(nxt, eos_token_id), nxt)
                done |= nxt == eos_token_id
            tokens[:, n] = nxt
            n += 1
            if eos_token_id is not None and bool(done.all()):
                break
            logits = self(tokens[:, n - 1:n], past_key_values=cache).logits[:, -1]
        return tokens[:, :n]

    # -- persistence -------------------------------------------------------------------------------------
    def save_pretrained(self, directory: str | Path) -> None:
        from safetensors.torch import save_model

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / CONFIG_NAME).write_text(json.dumps(
            {"model_type": "gatedattn", **dataclasses.asdict(self.config)}, indent=2))
        save_model(self, str(directory / WEIGHTS_NAME))

    @classmethod
    def from_pretrained(cls, directory: str | Path, map_location: str | torch.device = "cpu") -> "GatedLM":
        """Load a model directory written by ``save_pretrained`` (a training run's newest checkpoint:
        ``gatedattn.load_model(run_dir)``)."""
        from safetensors import SafetensorError
        from safetensors.torch import load_model

        directory = Path(directory)
        if not (directory / CONFIG_NAME).is_file() or not (directory / WEIGHTS_NAME).is_file():
            raise GatedAttnError(f"{directory} is not a model directory (no {CONFIG_NAME} + {WEIGHTS_NAME}); "
                                 "for a training run use gatedattn.load_model")
        data = read_json_object(directory / CONFIG_NAME, "model config")
        data.pop("model_type", None)
        model = cls(model_config_from_dict(data))
        try:
            load_model(model, str(directory / WEIGHTS_NAME), device=str(map_location))
        except (OSError, SafetensorError, RuntimeError) as e:
            raise GatedAttnError(f"cannot load weights {directory / WEIGHTS_NAME}: "
                                 f"{str(e).splitlines()[0]}") from None
        return model.eval()  # as transformers does: call .train() to fine-tune


def check_sampling(max_new_tokens: int, temperature: float, top_p: float, top_k: int) -> None:
    """One-line errors for sampling settings outside their range (NaN included)."""
    if not max_new_tokens >= 0:
        raise GatedAttnError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    if not (math.isfinite(temperature) and temperature > 0):
        raise GatedAttnError(f"temperature must be a finite number > 0, got {temperature}")
    if not 0 < top_p <= 1:
        raise GatedAttnError(f"top_p must be in (0, 1], got {top_p}")
    if not top_k >= 0:
        raise GatedAttnError(f"top_k must be >= 0 (0 = no top-k cut), got {top_k}")


def sample_next(logits: torch.Tensor, do_sample: bool, temperature: float = 1.0, top_p: float = 1.0,
                top_k: int = 0, generator: torch.Generator | None = None) -> torch.Tensor:
    """Next token ids (B,) from last-position logits (B, V): argmax, or temperature/top-k/top-p sampling."""
    if not do_sample:
        return logits.argmax(-1)
    logits = logits.float() / temperature
    if top_k > 0:
        kth = logits.topk(min(top_k, logits.shape[-1]), -1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = logits.sort(-1, descending=True)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        drop = cum - sorted_logits.softmax(-1) >= top_p  # keep the smallest prefix reaching top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    return torch.multinomial(logits.softmax(-1), 1, generator=generator).squeeze(-1)
