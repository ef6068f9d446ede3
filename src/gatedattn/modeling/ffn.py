"""Feed-forward layers: SwiGLU, and a fine-grained top-k MoE with an optional shared expert.

The shared expert (``moe.shared_expert_ffn_dim``) sees every token; with ``moe.shared_expert_gate`` its
output is scaled by ``sigmoid(x . w)``, one learned score per token, as in Qwen3-Next.

MoE auxiliary losses, as in the paper's MoE runs:
- load balance: ``E * sum_i f_i * P_i`` where f_i is the share of routing slots that chose expert i and
  P_i the mean router probability, both taken over every token of the forward pass (the global batch,
  not per sequence). Under data parallelism ``count_group`` is the ranks' process group: the expert counts
  are summed over it, so f_i is the global batch's; each rank's P_i is its own tokens' mean, and averaging
  the ranks' losses and gradients (as DDP/FSDP do) makes P_i global too;
- router z-loss: mean of ``logsumexp(router_logits)^2``.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from ..config import ModelConfig


class SwiGLU(nn.Module):
    def __init__(self, d_model: int, ffn_dim: int):
        super().__init__()
        self.gate_proj = nn.Linear(d_model, ffn_dim, bias=False)
        self.up_proj = nn.Linear(d_model, ffn_dim, bias=False)
        self.down_proj = nn.Linear(ffn_dim, d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class MoE(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        m = cfg.moe
        self.num_experts, self.top_k, self.norm_topk_prob = m.num_experts, m.top_k, m.norm_topk_prob
        self.router = nn.Linear(cfg.d_model, m.num_experts, bias=False)
        # Expert weights stacked: (E, in, out), so one expert is a plain matmul on its routed tokens.
        self.w_gate = nn.Parameter(torch.empty(m.num_experts, cfg.d_model, m.expert_ffn_dim))
        self.w_up = nn.Parameter(torch.empty(m.num_experts, cfg.d_model, m.expert_ffn_dim))
        self.w_down = nn.Parameter(torch.empty(m.num_experts, m.expert_ffn_dim, cfg.d_model))
        self.shared_expert = SwiGLU(cfg.d_model, m.shared_expert_ffn_dim) if m.shared_expert_ffn_dim else None
        self.shared_expert_gate = nn.Linear(cfg.d_model, 1, bias=False) if m.shared_expert_gate else None
        self.aux: dict[str, torch.Tensor] = {}
        self.count_group = None  # a torch.distributed process group, set for data-parallel training

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x = x.reshape(-1, shape[-1])
        logits = self.router(x)
        logits = logits.to(torch.promote_types(logits.dtype, torch.float32))  # route in >= fp32
        probs = logits.softmax(-1)
        weights, experts = probs.topk(self.top_k, dim=-1)
        if self.norm_topk_prob:
            weights = weights / weights.sum(-1, keepdim=True)
        out = torch.zeros_like(x)
        flat_experts = experts.reshape(-1)
        order = flat_experts.argsort()
        counts = torch.bincount(flat_experts, minlength=self.num_experts)
        token_of_slot = order // self.top_k
        slot_weight = weights.reshape(-1)[order]
        start = 0
        for e, n in enumerate(counts.tolist()):
            if n == 0:
                continue
            idx = token_of_slot[start:start + n]
            h = x[idx]
            y = (F.silu(h @ self.w_gate[e]) * (h @ self.w_up[e])) @ self.w_down[e]
            # under bf16 autocast y is bf16 while out keeps x's dtype
            out.index_add_(0, idx, (y * slot_weight[start:start + n, None].to(y.dtype)).to(out.dtype))
            start += n
        if self.shared_expert is not None:
            shared = self.shared_expert(x)
            if self.shared_expert_gate is not None:
                shared = torch.sigmoid(self.shared_expert_gate(x)) * shared
            out = out + shared
        if self.training and self.count_group is not None:
            counts_all = counts.clone()
            dist.all_reduce(counts_all, group=self.count_group)
            share = counts_all.float() / (flat_experts.numel() * dist.get_world_size(self.count_group))
        else:
            share = counts.float() / flat_experts.numel()
        self.aux = {
            "load_balance_loss": self.num_experts * (share * probs.mean(0)).sum(),
            "z_loss": torch.logsumexp(logits, -1).pow(2).mean(),
            "expert_counts": counts.detach(),
        }
        return out.reshape(shape)


def build_ffn(cfg: ModelConfig) -> nn.Module:
    return MoE(cfg) if cfg.moe.num_experts else SwiGLU(cfg.d_model, cfg.ffn_dim)
