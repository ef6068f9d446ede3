"""The fast paths of modeling/ops equal their plain references: the LM head + loss in one node, and the
q | k | v | gate projections as one matmul with the joint QK-norm; forward and gradients, float64 and bf16
autocast, op by op and through the model."""

import itertools

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from gatedattn.modeling.norm import RMSNorm
from gatedattn.modeling.ops import linear_cross_entropy, project_qkv_gate
from conftest import tiny_model


# -- linear_cross_entropy ------------------------------------------------------------------------------------
def _reference_loss(h, weight, targets):
    """As HF: the logits upcast to (at least) float32, then cross-entropy."""
    logits = F.linear(h, weight).flatten(0, -2)
    return F.cross_entropy(logits.to(torch.promote_types(logits.dtype, torch.float32)), targets.flatten(),
                           ignore_index=-100)


@pytest.mark.parametrize("extra_logit_grad", [False, True])
def test_linear_cross_entropy_equals_cross_entropy_of_the_logits(extra_logit_grad):
    h = torch.randn(3, 37, 8, dtype=torch.float64, requires_grad=True)
    w = torch.randn(50000, 8, dtype=torch.float64, requires_grad=True)  # several blocks of rows both ways
    targets = torch.randint(0, w.shape[0], (3, 37))
    targets[0, :5] = targets[2, -1] = -100
    probe = torch.randn(3, 37, w.shape[0], dtype=torch.float64)
    grads = []
    for fused in (True, False):
        if fused:
            logits, loss = linear_cross_entropy(h, w, targets)
        else:
            logits, loss = F.linear(h, w), _reference_loss(h, w, targets)
        total = loss + ((logits * probe).sum() * 1e-3 if extra_logit_grad else 0)
        grads.append((logits.detach(), loss.detach(), *torch.autograd.grad(total, (h, w))))
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def test_linear_cross_entropy_under_bf16_autocast_matches_autocast_reference():
    h = torch.randn(2, 64, 32, requires_grad=True)
    w = torch.randn(1000, 32, requires_grad=True)
    targets = torch.randint(0, 1000, (2, 64))
    out = []
    for fused in (True, False):
        with torch.autocast("cpu", torch.bfloat16):
            logits, loss = linear_cross_entropy(h, w, targets) if fused else (F.linear(h, w), _reference_loss(h, w, targets))
        assert logits.dtype == torch.bfloat16
        out.append((loss, *torch.autograd.grad(loss, (h, w))))
    for a, b in zip(*out):
        torch.testing.assert_close(a, b, rtol=2e-2, atol=1e-3)


# -- project_qkv_gate ----------------------------------------------------------------------------------------
H, K, D, C = 4, 2, 8, 32  # query heads, key/value heads, head dim, d_model
PROJECTION_CASES = list(itertools.product([None, "fused", "own"], [False, True], [False, True]))


def _projection_ids(case):
    gate, qkv_bias, qk_norm = case
    return f"gate={gate},qkv_bias={qkv_bias},qk_norm={qk_norm}"


def _projection_modules(gate, qkv_bias, qk_norm, dtype):
    """q/k/v projections (q widened by H * D gate rows for the fused gate), the gate's own projection,
    per-head norms with random weights: (q_proj, k_proj, v_proj, gate_proj, q_norm, k_norm)."""
    q_proj = nn.Linear(C, H * D + (H * D if gate == "fused" else 0), bias=qkv_bias)
    k_proj, v_proj = nn.Linear(C, K * D, bias=qkv_bias), nn.Linear(C, K * D, bias=qkv_bias)
    gate_proj = nn.Linear(C, H * D, bias=False) if gate == "own" else None
    q_norm, k_norm = (RMSNorm(D), RMSNorm(D)) if qk_norm else (None, None)
    modules = (q_proj, k_proj, v_proj, gate_proj, q_norm, k_norm)
    for m in modules:
        if m is not None:
            m.to(dtype)
            for p in m.parameters():
                p.data.normal_()
    return modules


def _reference_projection(x, q_proj, k_proj, v_proj, gate_proj, q_norm, k_norm):
    """Each projection and each norm through its own module, as a plain block would write it."""
    q = q_proj(x)
    logits = q[..., H * D:] if q.shape[-1] > H * D else (gate_proj(x) if gate_proj is not None else None)
    q, k = q[..., :H * D].unflatten(-1, (H, D)), k_proj(x).unflatten(-1, (K, D))
    if q_norm is not None:
        q, k = q_norm(q), k_norm(k)
    return torch.cat([q, k], 2), v_proj(x).unflatten(-1, (K, D)), logits


def _outputs_and_grads(fn, x, modules):
    """The projection's outputs and the gradients of a random linear function of them w.r.t. x and every
    parameter."""
    outputs = [o for o in fn(x, *modules) if o is not None]
    params = [x] + [p for m in modules if m is not None for p in m.parameters()]
    gen = torch.Generator().manual_seed(1)
    total = sum((o.float() * torch.randn(o.shape, generator=gen)).sum() for o in outputs)
    return [o.detach() for o in outputs] + list(torch.autograd.grad(total, params))


def _fused(x, *modules):
    return project_qkv_gate(x, *modules, H, K, D)


@pytest.mark.parametrize("case", PROJECTION_CASES, ids=_projection_ids)
def test_project_qkv_gate_equals_separate_projections_forward_and_backward(case):
    modules = _projection_modules(*case, torch.float64)
    x = torch.randn(2, 5, C, dtype=torch.float64, requires_grad=True)
    qk, v, logits = _fused(x, *modules)
    assert qk.shape == (2, 5, H + K, D) and v.shape == (2, 5, K, D)
    assert (logits is None) == (case[0] is None)
    for a, b in zip(_outputs_and_grads(_fused, x, modules), _outputs_and_grads(_reference_projection, x, modules)):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    with torch.no_grad():  # the separate path (decoding) gives the same outputs
        for a, b in zip(_fused(x, *modules), _reference_projection(x, *modules)):
            if a is not None:
                torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("case", [("fused", True, True), ("own", False, True), (None, False, False)],
                         ids=_projection_ids)
def test_project_qkv_gate_under_bf16_autocast_matches_autocast_reference(case):
    modules = _projection_modules(*case, torch.float32)
    x = torch.randn(2, 5, C, requires_grad=True)
    results = []
    for fn in (_fused, _reference_projection):
        with torch.autocast("cpu", torch.bfloat16):
            results.append(_outputs_and_grads(fn, x, modules))
    assert results[0][1].dtype == torch.bfloat16  # the values (normed q/k: float32, as HF's norm with a float32 weight)
    for a, b in zip(*results):
        assert a.dtype == b.dtype
        # Relative to the tensor's scale: the reference rounds each projection's input gradient to bf16
        # before summing them, the fused matmul rounds the sum once.
        torch.testing.assert_close(a, b, rtol=2e-2, atol=1e-2 * b.abs().max().item())


# -- through the model ---------------------------------------------------------------------------------------
VARIANTS = [
    {},
    {"attention.gate.position": "g1"},
    {"attention.gate.position": "g1", "attention.gate.granularity": "headwise", "attention.gate.bias": True},
    {"attention.gate.position": "g2", "attention.qkv_bias": True},
    {"attention.gate.position": "g3", "attention.qk_norm": False},
    {"attention.gate.position": "g4", "attention.gate.fused": False, "attention.sink": "learned"},
    {"attention.gate.position": "g5", "attention.num_register_tokens": 2, "tie_embeddings": False},
    {"attention.gate.position": "g1", "moe.num_experts": 4, "moe.shared_expert_ffn_dim": 32},
]


def _ids(cfg):
    return ",".join(f"{k.split('.')[-1]}={v}" for k, v in cfg.items()) or "baseline"


@pytest.mark.parametrize("cfg", VARIANTS, ids=_ids)
def test_fused_projections_under_autograd_equal_the_separate_ones(cfg):
    model = tiny_model(**cfg)  # grad mode: one matmul over q | k | v | gate; no_grad: one per projection
    x = torch.randint(0, 256, (2, 10))
    fused = model(x).logits
    with torch.no_grad():
        separate = model(x).logits
    torch.testing.assert_close(fused, separate, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("cfg", VARIANTS, ids=_ids)
def test_gradients_match_finite_differences(cfg):
    """The custom backward passes (head + loss, fused projections) against a central difference."""
    model = tiny_model(**cfg)
    x = torch.randint(0, 256, (2, 9))
    params = [p for p in model.parameters() if p.requires_grad]
    grads = torch.autograd.grad(model(x, labels=x).loss, params)
    direction = [0.02 * torch.randn_like(p) for p in params]  # the scale of the initialisation
    eps = 1e-4
    with torch.no_grad():
        def loss_at(sign):
            for p, d in zip(params, direction):
                p.add_(sign * eps * d)
            value = model(x, labels=x).loss
            for p, d in zip(params, direction):
                p.sub_(sign * eps * d)
            return value
        numeric = (loss_at(1) - loss_at(-1)) / (2 * eps)
    analytic = sum((g * d).sum() for g, d in zip(grads, direction))
    torch.testing.assert_close(analytic, numeric, rtol=1e-6, atol=1e-8)


def test_a_replaced_projection_module_is_honoured_under_autograd():
    """The fused matmul reads weights directly, so it must step aside for wrapped projections (adapters)."""

    class Doubled(torch.nn.Linear):
        def forward(self, x):
            return 2 * super().forward(x)

    model = tiny_model(**{"attention.gate.position": "g1"})
    x = torch.randint(0, 256, (2, 10))
    plain = model(x).logits
    attn = model.layers[0].attn
    doubled = Doubled(attn.k_proj.in_features, attn.k_proj.out_features, bias=False).double()
    doubled.load_state_dict(attn.k_proj.state_dict())
    attn.k_proj = doubled
    wrapped = model(x).logits
    with torch.no_grad():
        separate = model(x).logits
    assert not torch.allclose(wrapped, plain)
    torch.testing.assert_close(wrapped, separate, rtol=1e-12, atol=1e-12)
