"""Gated DeltaNet (Yang et al. 2024, as in Qwen3-Next): the ``linear_attention`` layer type.

Per value head, a state S (key_head_dim x value_head_dim) is decayed and corrected by the delta rule:
``S_t = a_t S_{t-1} + k_t (beta_t (v_t - a_t S_{t-1}^T k_t))^T``, ``o_t = S_t^T q_t``, with the decay
``a_t = exp(g_t)``, ``g_t = -exp(A_log) * softplus(a_proj_t + dt_bias)`` and ``beta_t = sigmoid(b_proj_t)``.
q and k are L2-normalised (q also scaled by key_head_dim^-1/2) after a short causal depthwise convolution
with SiLU over [q | k | v]; the output is RMS-normalised per head and gated by SiLU(z) before out_proj.
Key heads serve ``num_value_heads / num_key_heads`` consecutive value heads (GQA-style).

Two forms of the same recurrence: ``chunk_gated_delta_rule`` (training and prefill: within a chunk the
corrections solve one unit lower-triangular system, chunks are scanned) and ``recurrent_gated_delta_rule``
(one step per token: decoding). Both run in >= float32. The cache holds, per linear layer, the last
conv_kernel_size - 1 inputs of the convolution and the state S.

Weight rows: in_proj_qkvz is ``[q | k | v | z]`` (each head-major), in_proj_ba is ``[b | a]``;
hf_qwen3_next.py converts to HF's per-key-head interleaved layout.

Shape suffixes: B batch, T positions, C d_model, Hk key heads, Hv value heads, Dk / Dv head dims, L chunk.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..config import ModelConfig
from ..errors import GatedAttnError
from .hooks import HookPoint
from .norm import RMSNorm

L2_EPS = 1e-6  # inside the rsqrt, as Qwen3-Next's (and FLA's) l2norm


def l2_normalize(x: torch.Tensor) -> torch.Tensor:
    return x * torch.rsqrt((x * x).sum(-1, keepdim=True) + L2_EPS)


def recurrent_gated_delta_rule(q, k, v, g, beta, state=None):
    """One step per position. q, k (B, T, H, Dk) (q already scaled), v (B, T, H, Dv), g, beta (B, T, H);
    state (B, H, Dk, Dv) or None (zeros). Returns o (B, T, H, Dv) and the final state."""
    B, T, H, Dk = k.shape
    S = q.new_zeros(B, H, Dk, v.shape[-1]) if state is None else state.to(q.dtype)
    outs = []
    for t in range(T):
        S = S * g[:, t].exp()[..., None, None]
        u = beta[:, t, :, None] * (v[:, t] - torch.einsum("bhkv,bhk->bhv", S, k[:, t]))  # the correction
        S = S + k[:, t, :, :, None] * u[:, :, None, :]
        outs.append(torch.einsum("bhkv,bhk->bhv", S, q[:, t]))
    return torch.stack(outs, 1), S


def chunk_gated_delta_rule(q, k, v, g, beta, chunk_size: int = 64, state=None):
    """The same function as ``recurrent_gated_delta_rule``, chunk by chunk.

    Inside a chunk, with Γ_i = exp(sum of g up to i) and initial state S0, the corrections u_i satisfy
    ``u_i + beta_i sum_{j<i} (Γ_i/Γ_j)(k_i.k_j) u_j = beta_i (v_i - Γ_i S0^T k_i)``: one unit lower-triangular
    solve for all positions. Then ``o_i = Γ_i S0^T q_i + sum_{j<=i} (Γ_i/Γ_j)(q_i.k_j) u_j`` and
    ``S_end = Γ_L S0 + sum_j (Γ_L/Γ_j) k_j u_j^T``. The tail is padded with g = 0, beta = 0, k = 0 (no-ops).
    """
    B, T, H, Dk = k.shape
    Dv = v.shape[-1]
    L = chunk_size
    pad = -T % L
    # (B, H, N chunks, L, ...)
    q, k, v = (F.pad(x, (0, 0, 0, 0, 0, pad)).transpose(1, 2).reshape(B, H, -1, L, x.shape[-1]) for x in (q, k, v))
    g, beta = (F.pad(x, (0, 0, 0, pad)).transpose(1, 2).reshape(B, H, -1, L) for x in (g, beta))
    log_decay = g.cumsum(-1)  # log Γ_i within each chunk
    causal = torch.ones(L, L, dtype=torch.bool, device=q.device).tril()
    # exp(log Γ_i - log Γ_j) for j <= i; masked before exp (the upper triangle would overflow)
    pair_decay = (log_decay[..., :, None] - log_decay[..., None, :]).masked_fill(~causal, float("-inf")).exp()
    k_beta = k * beta[..., None]
    eye = torch.eye(L, dtype=q.dtype, device=q.device)
    system = (k_beta @ k.transpose(-1, -2) * pair_decay).tril(-1) + eye  # unit lower-triangular
    # u = w - r S0 with w = T^-1 (beta v), r = T^-1 (beta Γ k)
    w = torch.linalg.solve_triangular(system, v * beta[..., None], upper=False, unitriangular=True)
    r = torch.linalg.solve_triangular(system, k_beta * log_decay.exp()[..., None], upper=False, unitriangular=True)
    scores = q @ k.transpose(-1, -2) * pair_decay  # (B, H, N, L, L), causal by pair_decay's zeros
    q_decayed = q * log_decay.exp()[..., None]
    k_to_end = k * (log_decay[..., -1:] - log_decay).exp()[..., None]
    chunk_decay = log_decay[..., -1].exp()
    S = q.new_zeros(B, H, Dk, Dv) if state is None else state.to(q.dtype)
    outs = []
    for n in range(q.shape[2]):
        u = w[:, :, n] - r[:, :, n] @ S
        outs.append(q_decayed[:, :, n] @ S + scores[:, :, n] @ u)
        S = S * chunk_decay[:, :, n, None, None] + k_to_end[:, :, n].transpose(-1, -2) @ u
    o = torch.stack(outs, 2).reshape(B, H, -1, Dv)[:, :, :T].transpose(1, 2)
    return o, S


class GatedDeltaNet(nn.Module):
    def __init__(self, cfg: ModelConfig, layer_idx: int):
        super().__init__()
        la = cfg.linear_attention
        self.layer_idx = layer_idx
        self.num_k_heads, self.num_v_heads = la.num_key_heads, la.num_value_heads
        self.k_head_dim, self.v_head_dim = la.key_head_dim, la.value_head_dim
        self.key_dim, self.value_dim = la.num_key_heads * la.key_head_dim, la.num_value_heads * la.value_head_dim
        self.chunk_size = la.chunk_size
        self.conv_dim = 2 * self.key_dim + self.value_dim
        self.in_proj_qkvz = nn.Linear(cfg.d_model, self.conv_dim + self.value_dim, bias=False)
        self.in_proj_ba = nn.Linear(cfg.d_model, 2 * la.num_value_heads, bias=False)
        self.conv1d = nn.Conv1d(self.conv_dim, self.conv_dim, la.conv_kernel_size, groups=self.conv_dim, bias=False)
        self.dt_bias = nn.Parameter(torch.ones(la.num_value_heads))
        self.A_log = nn.Parameter(torch.empty(la.num_value_heads))
        self.norm = RMSNorm(la.value_head_dim, cfg.norm_eps)  # plain weight, also under norm_zero_centered (as HF)
        self.out_proj = nn.Linear(self.value_dim, cfg.d_model, bias=False)
        self.hook_state_out = HookPoint()  # (B, T, Hv, Dv): the delta rule's read-out, before norm and gate
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """HF Qwen3-Next's initialisation of the layer's own parameters (the linears follow the model's)."""
        self.dt_bias.fill_(1.0)
        self.A_log.copy_(torch.empty_like(self.A_log).uniform_(0.01, 16).log())
        self.conv1d.reset_parameters()

    def _conv(self, x_BCT: torch.Tensor, past: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Causal depthwise convolution + SiLU continuing from ``past`` (the last kernel - 1 inputs, zeros
        at the start); returns the output and the new last inputs."""
        width = self.conv1d.kernel_size[0] - 1
        if past is None:
            past = x_BCT.new_zeros(x_BCT.shape[0], self.conv_dim, width)
        x_full = torch.cat([past.to(x_BCT.dtype), x_BCT], -1)
        out = F.silu(F.conv1d(x_full, self.conv1d.weight, groups=self.conv_dim))
        return out, x_full[:, :, x_full.shape[-1] - width:]

    def forward(self, x: torch.Tensor, cache=None) -> torch.Tensor:
        B, T, _ = x.shape
        Hk, Hv, Dk, Dv = self.num_k_heads, self.num_v_heads, self.k_head_dim, self.v_head_dim
        if cache is not None and not hasattr(cache, "linear_state"):
            raise GatedAttnError("this cache holds attention keys and values only; Gated DeltaNet layers decode "
                                 "with gatedattn's KVCache (GatedLM.generate)")
        qkvz = self.in_proj_qkvz(x)
        qkv_BCT = qkvz[..., :self.conv_dim].transpose(1, 2)
        z_BTHD = qkvz[..., self.conv_dim:].reshape(B, T, Hv, Dv)
        b, a = self.in_proj_ba(x).chunk(2, -1)  # (B, T, Hv) each
        conv_state, state = cache.linear_state(self.layer_idx) if cache is not None else (None, None)
        qkv_BCT, conv_state = self._conv(qkv_BCT, conv_state)
        qkv = qkv_BCT.transpose(1, 2)  # (B, T, 2 Hk Dk + Hv Dv)
        work = torch.promote_types(x.dtype, torch.float32)  # the recurrence runs in >= float32
        q, k, v = qkv.to(work).split([self.key_dim, self.key_dim, self.value_dim], -1)
        q = l2_normalize(q.reshape(B, T, Hk, Dk)) * Dk ** -0.5
        k = l2_normalize(k.reshape(B, T, Hk, Dk))
        v = v.reshape(B, T, Hv, Dv)
        if Hv != Hk:  # each key head serves Hv / Hk consecutive value heads
            q, k = q.repeat_interleave(Hv // Hk, 2), k.repeat_interleave(Hv // Hk, 2)
        beta = b.to(work).sigmoid()
        g = -self.A_log.to(work).exp() * F.softplus(a.to(work) + self.dt_bias.to(work))
        if T == 1 and state is not None:
            o, state = recurrent_gated_delta_rule(q, k, v, g, beta, state)
        else:
            o, state = chunk_gated_delta_rule(q, k, v, g, beta, self.chunk_size, state)
        if cache is not None:
            cache.update_linear_state(self.layer_idx, conv_state, state, T)
        o = self.hook_state_out(o.to(x.dtype))
        # HF's RMSNormGated: norm (float32 statistics), weight, then the SiLU gate computed in float32
        y = (self.norm(o).to(work) * F.silu(z_BTHD.to(work))).to(x.dtype)
        return self.out_proj(y.reshape(B, T, Hv * Dv))
