"""RMSNorm with float32 statistics like HF Llama/Qwen, so bf16 autocast does not change them."""

import torch
import torch.nn.functional as F
from torch import nn


class _RMSNorm(torch.autograd.Function):
    """``weight * x / rms(x)`` with a hand-written backward: about half the passes over memory (and half
    the time on CPU) of autograd through the composite ops, which is what ``F.rms_norm`` runs on CPU.

    Statistics in >= float32. Under mixed precision (bf16 activations, float32 weight) the normalised x is
    rounded to x's dtype before the scaling, exactly as HF's Qwen3RMSNorm does.
    """

    @staticmethod
    def forward(ctx, x, weight, eps):
        xf = x.to(torch.promote_types(x.dtype, torch.float32))
        r = torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
        xn = (xf * r).to(x.dtype)
        ctx.save_for_backward(xn, r, weight)
        return weight * xn

    @staticmethod
    def backward(ctx, grad):
        xn, r, weight = ctx.saved_tensors
        grad_x = grad_w = None
        if ctx.needs_input_grad[1]:  # weight broadcasts over x's leading dims: sum them out
            grad_w = (grad * xn).reshape(-1, *weight.shape).sum(0).to(weight.dtype)
        if ctx.needs_input_grad[0]:
            # d/dx of x * r(x): r * (a - xn * mean(a * xn)), a = grad * weight the gradient w.r.t. xn
            a, xnf = (grad * weight).to(r.dtype), xn.to(r.dtype)
            grad_x = ((a - xnf * (a * xnf).mean(-1, keepdim=True)) * r).to(xn.dtype)
        return grad_x, grad_w, None


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """``weight * x / rms(x)`` over the last dim; ``weight`` (..., dim) broadcasts against x's trailing dims
    (a weight per head for the joint query/key norm)."""
    if torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad):
        return _RMSNorm.apply(x, weight, eps)
    # No backward (decoding): torch's one call has far less per-call overhead than the ops above.
    if x.dtype == weight.dtype and weight.dim() == 1:
        return F.rms_norm(x, weight.shape, weight, eps)
    return weight * F.rms_norm(x.to(torch.promote_types(x.dtype, torch.float32)), x.shape[-1:], None,
                               eps).to(x.dtype)


class RMSNorm(nn.Module):
    """``scale * x / rms(x)`` with ``scale`` = weight, or ``1 + weight`` when ``zero_centered`` (Qwen3-Next's
    parametrisation: the stored weight starts at 0)."""

    def __init__(self, dim: int, eps: float = 1e-6, zero_centered: bool = False):
        super().__init__()
        self.zero_centered = zero_centered
        self.weight = nn.Parameter(torch.zeros(dim) if zero_centered else torch.ones(dim))
        self.eps = eps

    @property
    def scale(self) -> torch.Tensor:
        return 1 + self.weight if self.zero_centered else self.weight

    @torch.no_grad()
    def reset_parameters(self) -> None:
        self.weight.fill_(0.0 if self.zero_centered else 1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rms_norm(x, self.scale, self.eps)
