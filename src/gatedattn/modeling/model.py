"""GatedLM: a pre-norm decoder LM (RMSNorm, GQA + RoPE, SwiGLU or MoE) with the paper's gated attention.

HF-style API: ``GatedLM(config)``, ``model(input_ids).logits``, ``save_pretrained`` / ``from_pretrained``
(config.json + model.safetensors) and ``generate`` with a KV cache.

Hook points for probes (module names): ``hook_embed``; per layer ``layers.{i}.hook_resid_mid`` (after the
attention residual add) and ``layers.{i}.hook_resid_post`` (after the block); and inside attention
``layers.{i}.attn.{hook_q, hook_k, hook_v, hook_attn_probs (eager only), hook_attn_out (SDPA output, before
the gate), hook_gated_out, hook_out}`` and ``layers.{i}.attn.gate.hook_score``. Gated DeltaNet layers
(``model.layer_types``) hold ``layers.{i}.linear_attn`` instead, with ``hook_state_out``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..config import ModelConfig, compact_layer_types, model_config_from_dict
from ..errors import GatedAttnError
from ..fileio import read_json_object
from .attention import Attention
from .cache import KVCache
from .deltanet import GatedDeltaNet
from .ffn import MoE, build_ffn
from .hooks import HookPoint
from .norm import RMSNorm
from .ops import linear_cross_entropy
from .rope import RotaryEmbedding

CONFIG_NAME, WEIGHTS_NAME = "config.json", "model.safetensors"
MODEL_CONFIG_KEYS = tuple(f.name for f in dataclasses.fields(ModelConfig))
HF_PREFIX = "model."  # our names inside gatedattn.hf.GatedAttnForCausalLM


@dataclass
class GatedLMOutput:
    logits: torch.Tensor
    loss: torch.Tensor | None = None  # lm_loss + weighted MoE aux losses, when labels are given
    lm_loss: torch.Tensor | None = None
    aux_loss: torch.Tensor | None = None  # weighted sum of the MoE losses below (0 for dense models)
    load_balance_loss: torch.Tensor | None = None
    z_loss: torch.Tensor | None = None
    indexer_kl: torch.Tensor | None = None  # training a DSA model: mean KL of its indexers to the main attention
    past_key_values: KVCache | None = None


class Block(nn.Module):
    """Pre-norm block; its token mixer is ``attn`` (full_attention) or ``linear_attn`` (Gated DeltaNet)."""

    def __init__(self, cfg: ModelConfig, layer_idx: int):
        super().__init__()
        self.layer_type = cfg.resolved_layer_types[layer_idx]
        self.attn_norm = RMSNorm(cfg.d_model, cfg.norm_eps, cfg.norm_zero_centered)
        if self.layer_type == "linear_attention":
            self.linear_attn = GatedDeltaNet(cfg, layer_idx)
        else:
            self.attn = Attention(cfg, layer_idx)
        self.ffn_norm = RMSNorm(cfg.d_model, cfg.norm_eps, cfg.norm_zero_centered)
        self.ffn = build_ffn(cfg)
        if cfg.sandwich_norm:  # norm the sub-layer output too, before the residual add
            self.attn_post_norm = RMSNorm(cfg.d_model, cfg.norm_eps, cfg.norm_zero_centered)
            self.ffn_post_norm = RMSNorm(cfg.d_model, cfg.norm_eps, cfg.norm_zero_centered)
        self.sandwich = cfg.sandwich_norm
        self.hook_resid_mid, self.hook_resid_post = HookPoint(), HookPoint()

    def forward(self, h, cos, sin, cache=None):
        x = self.attn_norm(h)
        a = self.linear_attn(x, cache) if self.layer_type == "linear_attention" else self.attn(x, cos, sin, cache)
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
        self.norm = RMSNorm(cfg.d_model, cfg.norm_eps, cfg.norm_zero_centered)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.embed.weight
        self.rotary = RotaryEmbedding(cfg)
        self.hook_embed = HookPoint()
        self.compiled_blocks: list | None = None  # compile_blocks(): the blocks' compiled callers
        self.reset_parameters()

    def compile_blocks(self, **options) -> None:
        """``torch.compile`` each block for the forwards that record gradients (training); inference (eval,
        probes, decoding) stays eager, so hooks added there cost no recompilation. The blocks share one
        graph: parameters are graph inputs, so all layers of a type compile once. ``options`` go to
        ``torch.compile``."""
        self.compiled_blocks = [torch.compile(layer, **options) for layer in self.layers]

    @torch.no_grad()
    def reset_parameters(self) -> None:
        std = self.config.initializer_range
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                m.weight.normal_(0.0, std)
                if getattr(m, "bias", None) is not None:
                    m.bias.zero_()
            elif isinstance(m, RMSNorm):
                m.reset_parameters()
            elif isinstance(m, MoE):
                for w in (m.w_gate, m.w_up, m.w_down):
                    w.normal_(0.0, std)
        if self.register_tokens is not None:
            self.register_tokens.normal_(0.0, std)
        for layer in self.layers:
            if layer.layer_type == "linear_attention":
                layer.linear_attn.reset_parameters()
                continue
            layer.attn.reset_gate_parameters()
            if layer.attn.sink_mode == "learned":
                layer.attn.sink_logit.zero_()

    @property
    def num_register_tokens(self) -> int:
        return 0 if self.register_tokens is None else self.register_tokens.shape[0]

    def forward(self, input_ids: torch.Tensor, labels: torch.Tensor | None = None,
                past_key_values: KVCache | None = None, use_cache: bool = False,
                logits_to_keep: int = 0) -> GatedLMOutput:
        """input_ids (B, T). ``labels`` are the input ids (shifted inside, -100 = ignore), as in HF.
        ``logits_to_keep``: without labels, logits of the last N positions only (0 = all), as in HF."""
        cache = past_key_values if past_key_values is not None else (
            KVCache(len(self.layers)) if use_cache else None)
        static = cache is not None and cache.position is not None  # a compiled step reads no Python length
        past = cache.length if cache is not None and not static else 0
        h = self.embed(input_ids)
        n_reg = self.num_register_tokens if past == 0 and not static else 0
        if n_reg:  # learnable register tokens lead every sequence; their outputs are dropped
            h = torch.cat([self.register_tokens.to(h.dtype).expand(h.shape[0], -1, -1), h], 1)
        h = self.hook_embed(h)
        positions = cache.position if static else torch.arange(past, past + h.shape[1], device=h.device)
        if cache is not None and cache.rope_seq_len is None:  # dynamic NTK: one length per cached sequence
            cache.rope_seq_len = past + h.shape[1]
        cos, sin = self.rotary(positions, h.dtype, cache.rope_seq_len if cache is not None else None)
        layers = self.compiled_blocks if self.compiled_blocks and torch.is_grad_enabled() else self.layers
        for layer in layers:
            h = layer(h, cos, sin, cache)
        h = self.norm(h[:, n_reg:])
        if labels is None:
            out = GatedLMOutput(logits=self.lm_head(h[:, -logits_to_keep:]), past_key_values=cache)
            self._moe_losses(out)
            return out
        # Position t predicts token t + 1; the last position has no target (HF shifts labels the same way,
        # which keeps the logits contiguous: no slice copy of the largest activation).
        targets = F.pad(labels[:, 1:], (0, 1), value=-100)
        logits, lm_loss = linear_cross_entropy(h, self.lm_head.weight, targets)
        out = GatedLMOutput(logits=logits, lm_loss=lm_loss, past_key_values=cache)
        self._moe_losses(out)
        out.loss = out.lm_loss + out.aux_loss
        kls = [layer.attn.aux.pop("indexer_kl") for layer in self.layers
               if layer.layer_type == "full_attention" and "indexer_kl" in layer.attn.aux] if self.training else []
        if kls:  # its gradient reaches the indexers only (detached inputs and targets): no weight needed
            out.indexer_kl = torch.stack(kls).mean()
            out.loss = out.loss + out.indexer_kl
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
                 eos_token_id: int | list[int] | None = None, generator: torch.Generator | None = None, *,
                 attention_mask: torch.Tensor | None = None, num_return_sequences: int = 1,
                 repetition_penalty: float = 1.0, stop_strings: str | list[str] | None = None, tokenizer=None,
                 pad_token_id: int | None = None, compile: bool = False, **unsupported) -> torch.Tensor:
        """Greedy or sampled continuation with the KV cache; returns prompt + new tokens (B', T + n) with
        B' = B x ``num_return_sequences`` (each prompt's samples side by side), as HF's ``generate``.

        ``attention_mask``: left padding (zeros before each row's tokens); padded rows are decoded one at a
        time on their own tokens (exact, without batching's speed) and keep their pad ids in the output.
        ``repetition_penalty``: HF's (CTRL) rule on every token of the row so far. A row stops at any of
        ``eos_token_id`` (an id or a list) or once its new text contains one of ``stop_strings`` (decoded by
        ``tokenizer``, anything with ``decode(ids)``); later positions hold ``pad_token_id`` (default: the
        first EOS id). Other HF arguments (beam search, ...) raise a one-line error naming them; transformers'
        own ``generate`` runs on ``gatedattn.hf.GatedAttnForCausalLM.from_gatedlm(model)``.

        ``compile``: decode on a static cache with a ``torch.compile``d step (same tokens; 1.5-2.0x the eager
        tokens/s at batch 1 on CPU, docs/performance.md) after a one-off compilation of 10-50 s per model and
        storage size; full-attention models with dense FFNs (no DeltaNet, DSA or MoE).
        """
        if unsupported:
            raise GatedAttnError(f"generate: unsupported argument(s) {', '.join(sorted(unsupported))}; supported: "
                                 f"{', '.join(GENERATE_ARGS)} (transformers' generate, beam search included: "
                                 "gatedattn.hf.GatedAttnForCausalLM.from_gatedlm(model).generate)")
        check_sampling(max_new_tokens, temperature, top_p, top_k)
        if not (math.isfinite(repetition_penalty) and repetition_penalty > 0):
            raise GatedAttnError(f"repetition_penalty must be a finite number > 0 (1 = none), got {repetition_penalty}")
        if num_return_sequences < 1 or (num_return_sequences > 1 and not do_sample):
            raise GatedAttnError(f"num_return_sequences={num_return_sequences}: must be 1, or > 1 with "
                                 "do_sample=True (greedy decoding would return copies)")
        stop_strings = [stop_strings] if isinstance(stop_strings, str) else list(stop_strings or [])
        if stop_strings and tokenizer is None:
            raise GatedAttnError("generate: stop_strings needs tokenizer= (anything with decode(ids)) to read the text")
        eos = [] if eos_token_id is None else [eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id)
        fill = pad_token_id if pad_token_id is not None else (eos[0] if eos else None)
        if num_return_sequences > 1:
            input_ids = input_ids.repeat_interleave(num_return_sequences, 0)
            if attention_mask is not None:
                attention_mask = torch.as_tensor(attention_mask).repeat_interleave(num_return_sequences, 0)
        lengths = prompt_lengths(input_ids, attention_mask)
        if stop_strings and fill is None and input_ids.shape[0] > 1:
            raise GatedAttnError("generate: stop_strings on a batch needs pad_token_id or eos_token_id, the id "
                                 "that fills the rows which stopped early")
        total, limit = max(lengths) + max_new_tokens, self.config.max_position_embeddings
        if total > limit:
            raise GatedAttnError(f"generate: the prompt ({max(lengths)} tokens) + max_new_tokens "
                                 f"({max_new_tokens}) = {total} exceeds model.max_position_embeddings={limit}; "
                                 "ask for fewer new tokens")
        if compile:
            self._check_compilable_decoding()
        decode = dict(max_new_tokens=max_new_tokens, do_sample=do_sample, temperature=temperature, top_p=top_p,
                      top_k=top_k, repetition_penalty=repetition_penalty, eos=eos, fill=fill,
                      stop_strings=stop_strings, tokenizer=tokenizer, generator=generator, compile=compile)
        B, T = input_ids.shape
        # Inference mode skips autograd's bookkeeping on every op (per-op overhead dominates batch-1
        # decoding); the result is cloned out of it so that callers may train on it.
        with input_major_weights(self) if compile else contextlib.nullcontext(), torch.inference_mode():
            if min(lengths) == T:
                return self._decode(input_ids, **decode).clone()
            rows = [self._decode(input_ids[i:i + 1, T - n:], **decode) for i, n in enumerate(lengths)]
            new = max(r.shape[1] - n for r, n in zip(rows, lengths))
            out = input_ids.new_empty(B, T + new)
            for i, (r, n) in enumerate(zip(rows, lengths)):
                out[i, :T - n] = input_ids[i, :T - n]  # the pad ids, as given
                out[i, T - n:T - n + r.shape[1]] = r[0]
                if r.shape[1] - n < new:  # it stopped early (so a fill id exists): the rest is padding
                    out[i, T - n + r.shape[1]:] = fill
            return out.clone()

    def _decode(self, input_ids, max_new_tokens, do_sample, temperature, top_p, top_k, repetition_penalty, eos,
                fill, stop_strings, tokenizer, generator, compile):
        B, T = input_ids.shape
        # Cache and output are allocated once at their final length: no regrowth while decoding. A compiled
        # step is specialised to the storage's size: rounding it up lets nearby lengths share one compilation.
        capacity = self.num_register_tokens + T + max_new_tokens
        if compile:
            capacity = -(-capacity // STATIC_CACHE_QUANTUM) * STATIC_CACHE_QUANTUM
        cache = KVCache(len(self.layers), capacity=capacity)
        tokens = input_ids.new_empty(B, T + max_new_tokens)
        tokens[:, :T] = input_ids
        logits = self(input_ids, past_key_values=cache, logits_to_keep=1).logits[:, -1]
        step = self._step
        if compile:
            cache.start_static()
            step = torch.compile(self._step, fullgraph=True, dynamic=False, options=DECODE_COMPILE_OPTIONS)
            step_ids = tokens.new_empty(B, 1)  # one input buffer: the compiled step sees the same tensor each time
        done = torch.zeros(B, dtype=torch.bool, device=input_ids.device)
        eos_ids = torch.tensor(eos, device=input_ids.device) if eos else None
        n = T
        for _ in range(max_new_tokens):
            if repetition_penalty != 1.0:
                logits = penalize_repetition(logits, tokens[:, :n], repetition_penalty)
            nxt = sample_next(logits, do_sample, temperature, top_p, top_k, generator)
            if fill is not None:
                nxt = torch.where(done, torch.full_like(nxt, fill), nxt)
            tokens[:, n] = nxt
            n += 1
            if eos_ids is not None:
                done |= torch.isin(nxt, eos_ids)
            for i in (~done).nonzero().flatten().tolist() if stop_strings else ():
                text = tokenizer.decode(tokens[i, T:n].tolist())
                done[i] = any(s in text for s in stop_strings)
            if n == T + max_new_tokens or ((eos or stop_strings) and bool(done.all())):
                break  # no forward for a token that will not be sampled
            if compile:
                # After the first call has checked Dynamo's guards (and compiled or picked its graph), the
                # later steps see the same buffers, shapes and dtypes: skipping the checks is safe and saves
                # ~0.3 ms a token (docs/performance.md).
                with torch.compiler.set_stance("default", skip_guard_eval_unsafe=n > T + 1):
                    logits = step(step_ids.copy_(nxt[:, None]), cache)
                cache.advance_static()
            else:
                logits = step(tokens[:, n - 1:n], cache)
        return tokens[:, :n]

    def _check_compilable_decoding(self) -> None:
        """generate(compile=True) compiles one graph: no data-dependent routing (MoE), no state beside K/V."""
        found = self.config.beyond_dense_attention
        if found:
            raise GatedAttnError(f"generate(compile=True) supports full-attention models with dense FFNs; this one "
                                 f"has {' and '.join(found)} (decode it without compile=True)")

    def _step(self, ids: torch.Tensor, cache: KVCache) -> torch.Tensor:
        """One decoding step: the next-token logits (B, vocab); ``generate(compile=True)`` compiles it."""
        return self(ids, past_key_values=cache).logits[:, -1]

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
        """Load a model directory written by ``save_pretrained`` or by transformers' ``save_pretrained`` of
        ``gatedattn.hf.GatedAttnForCausalLM`` (a training run's newest checkpoint:
        ``gatedattn.load_model(run_dir)``)."""
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        directory = Path(directory)
        if not (directory / CONFIG_NAME).is_file() or not (directory / WEIGHTS_NAME).is_file():
            raise GatedAttnError(f"{directory} is not a model directory (no {CONFIG_NAME} + {WEIGHTS_NAME}); "
                                 "for a training run use gatedattn.load_model")
        data = read_json_object(directory / CONFIG_NAME, "model config")
        data.pop("model_type", None)
        if "transformers_version" in data:  # written by transformers: its bookkeeping keys sit beside ours
            data = {k: v for k, v in data.items() if k in MODEL_CONFIG_KEYS}
            if "layer_types" in data:  # written there as one entry per layer
                data["layer_types"] = compact_layer_types(data["layer_types"])
        model = cls(model_config_from_dict(data))
        try:
            state = load_file(str(directory / WEIGHTS_NAME), device=str(map_location))
        except (OSError, SafetensorError, RuntimeError) as e:
            raise GatedAttnError(f"cannot load weights {directory / WEIGHTS_NAME}: "
                                 f"{str(e).splitlines()[0]}") from None
        if state and all(k.startswith(HF_PREFIX) for k in state):  # transformers' wrapper holds us as `model`
            state = {k[len(HF_PREFIX):]: v for k, v in state.items()}
        missing, unexpected = model.load_state_dict(state, strict=False)
        tied = {"embed.weight", "lm_head.weight"} if model.config.tie_embeddings else set()
        missing = [m for m in missing if not (m in tied and tied & state.keys())]  # one name of a tied pair
        if missing or unexpected:
            raise GatedAttnError(f"cannot load weights {directory / WEIGHTS_NAME}: missing {missing[:3]}, "
                                 f"unexpected {unexpected[:3]}")
        return model.eval()  # as transformers does: call .train() to fine-tune


GENERATE_ARGS = ("input_ids", "max_new_tokens", "do_sample", "temperature", "top_p", "top_k", "eos_token_id",
                 "generator", "attention_mask", "num_return_sequences", "repetition_penalty", "stop_strings",
                 "tokenizer", "pad_token_id", "compile")
# generate(compile=True): inductor options chosen by measurement (docs/performance.md): frozen weights and
# the C++ wrapper beat the default; the static cache is allocated in multiples of the quantum.
DECODE_COMPILE_OPTIONS = {"freezing": True, "cpp_wrapper": True}
STATIC_CACHE_QUANTUM = 256


@contextlib.contextmanager
def input_major_weights(model: nn.Module):
    """Hold every nn.Linear weight, for the block, as the transposed view of a contiguous (in, out) copy: the
    same values and shape, but ``x @ W.T`` runs as a row-major ``x @ W_t``, which this project's CPU
    measurements found 1.3x faster for compiled batch-1 decoding in float32 (docs/performance.md). The
    original tensors come back afterwards; meanwhile the weights take twice their memory."""
    params = list({id(m.weight): m.weight for m in model.modules() if isinstance(m, nn.Linear)}.values())
    saved = [p.data for p in params]
    with torch.no_grad():
        for p in params:
            p.data = p.data.t().contiguous().t()
    try:
        yield
    finally:
        for p, data in zip(params, saved):
            p.data = data


def prompt_lengths(input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> list[int]:
    """Each row's number of real tokens under a left-padding mask (all of them without one)."""
    B, T = input_ids.shape
    if attention_mask is None:
        return [T] * B
    mask = torch.as_tensor(attention_mask, device=input_ids.device).bool()
    if mask.shape != input_ids.shape:
        raise GatedAttnError(f"attention_mask has shape {tuple(mask.shape)}, input_ids {tuple(input_ids.shape)}; "
                             "they must match")
    if bool((mask[:, 1:] < mask[:, :-1]).any()) or not bool(mask[:, -1].all()):
        raise GatedAttnError("attention_mask must be left padding: zeros, then ones to the end of each row "
                             "(pad on the left, as for HF decoder-only generation)")
    return mask.sum(1).tolist()


def penalize_repetition(logits: torch.Tensor, seen: torch.Tensor, penalty: float) -> torch.Tensor:
    """HF's RepetitionPenaltyLogitsProcessor: the logit of every token in ``seen`` (B, n) is divided by
    ``penalty`` where positive and multiplied where negative."""
    logits = logits.float()
    score = logits.gather(1, seen)
    return logits.scatter(1, seen, torch.where(score < 0, score * penalty, score / penalty))


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
