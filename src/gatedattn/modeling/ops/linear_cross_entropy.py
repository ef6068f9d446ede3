"""The LM head and its mean cross-entropy in one autograd node (``linear_cross_entropy``)."""

from __future__ import annotations

import torch


class _LinearCrossEntropy(torch.autograd.Function):
    """``logits = h @ weight.T`` and the mean cross-entropy of ``targets`` (-100 = ignored) in one node.

    The (tokens x vocab) logits are the largest activation of a small LM. Autograd through
    ``F.cross_entropy(logits.float())`` makes three more tensors of that size (log-probabilities, their
    gradient, the logits' gradient), each a pass over memory. Here both directions work on blocks of rows:
    the forward keeps only each token's log-probability of its target, and the backward recomputes the
    block's softmax, writes ``p - 1`` at the targets and feeds it straight into the head's two matmuls, with
    the 1/N loss scale applied to the small (rows x d) operands instead of the block. Log-probabilities in
    >= float32 as in HF; under autocast the backward's softmax is rounded to bf16 (computed in float32 by
    the kernel), which is what autograd hands to the bf16 matmuls too.
    """

    @staticmethod
    def forward(ctx, h, weight, targets, dtype):
        ctx.dtypes = h.dtype, weight.dtype
        h, weight = h.to(dtype), weight.to(dtype)  # autocast's cast; the gradients go back in the originals'
        logits = h @ weight.T
        acc = torch.promote_types(logits.dtype, torch.float32)
        # Blocks of ~512K elements here (they stay in cache between the conversion to float32 and the
        # softmax), ~4M in the backward (each block adds into the weight's gradient once). One buffer reused:
        # a fresh multi-MB allocation per block costs page faults, not just a pass.
        rows, ctx.rows = max(16, (1 << 19) // logits.shape[1]), max(16, (1 << 22) // logits.shape[1])
        index = targets.clamp(min=0)[:, None]
        block = logits.new_empty(min(rows, len(logits)), logits.shape[1], dtype=acc)
        logp = logits.new_empty(len(logits), 1, dtype=acc)  # log p(target)
        for i in range(0, len(logits), rows):
            j = min(i + rows, len(logits))
            logp[i:j] = torch.log_softmax(logits[i:j], -1, dtype=acc, out=block[:j - i]).gather(1, index[i:j])
        valid = targets != -100
        loss = -torch.where(valid, logp.squeeze(1), 0).sum() / valid.sum()
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(h, weight, logits, targets, logp)
        return logits, loss

    @staticmethod
    def backward(ctx, grad_logits, grad_loss):
        h, weight, logits, targets, logp = ctx.saved_tensors
        valid = targets != -100
        scale = torch.where(valid, grad_loss / valid.sum(), 0).to(logp.dtype) if grad_loss is not None \
            else torch.zeros(len(targets), dtype=logp.dtype, device=h.device)
        cols, rows = targets.clamp(min=0), torch.arange(ctx.rows, device=h.device)
        target_grad = (logp.squeeze(1).exp() - 1).to(logits.dtype)  # d loss / d logit at the target, before 1/N
        grad_h = torch.empty_like(h) if ctx.needs_input_grad[0] else None
        # The weight's gradient sums over blocks: accumulate in >= float32, round once at the end.
        grad_w = torch.zeros(weight.shape, dtype=torch.promote_types(ctx.dtypes[1], logp.dtype), device=h.device) \
            if ctx.needs_input_grad[1] else None
        block = torch.empty_like(logits[:ctx.rows])
        for i in range(0, len(logits), ctx.rows):
            j = min(i + ctx.rows, len(logits))
            g = torch.softmax(logits[i:j], -1, out=block[:j - i])
            g[rows[:j - i], cols[i:j]] = target_grad[i:j]  # indexing, not scatter_ (slow for bf16 on CPU)
            s = scale[i:j, None]
            if grad_logits is not None:  # the logits feed something else too: add its gradient
                g = (g.to(logp.dtype) * s).add_(grad_logits[i:j]).to(logits.dtype)
                s = None
            if grad_h is not None:
                torch.mm(g, weight, out=grad_h[i:j])
                if s is not None:
                    grad_h[i:j] *= s
            if grad_w is not None:
                hs = h[i:j] if s is None else (h[i:j] * s).to(h.dtype)
                if grad_w.dtype == g.dtype:
                    grad_w.addmm_(g.T, hs)
                else:
                    grad_w += g.T @ hs
        return (None if grad_h is None else grad_h.to(ctx.dtypes[0]),
                None if grad_w is None else grad_w.to(ctx.dtypes[1]), None, None)


def linear_cross_entropy(h: torch.Tensor, weight: torch.Tensor,
                         targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits of shape h.shape[:-1] + (vocab,), mean cross-entropy over targets != -100).

    Equal to ``F.linear(h, weight)`` then ``F.cross_entropy(logits.float(), targets)``, autocast included.
    """
    device = h.device.type
    dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else h.dtype
    with torch.autocast(device, enabled=False):
        logits, loss = _LinearCrossEntropy.apply(h.reshape(-1, h.shape[-1]), weight, targets.reshape(-1), dtype)
    return logits.view(*h.shape[:-1], -1), loss
