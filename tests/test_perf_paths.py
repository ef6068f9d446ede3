"""The fast paths equal plain references: fused head + loss, fused projections, fused RMSNorm, the decoding
loop, bf16 autocast and torch.compile."""

import pytest
import torch
import torch.nn.functional as F

from gatedattn import GatedLM, load_config
from gatedattn.modeling.model import linear_cross_entropy
from gatedattn.modeling.norm import RMSNorm, rms_norm
from conftest import tiny_model

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


def test_model_loss_equals_cross_entropy_of_shifted_logits():
    model = tiny_model(**{"attention.gate.position": "g1", "attention.num_register_tokens": 2})
    x = torch.randint(0, 256, (2, 12))
    labels = x.clone()
    labels[0, 4] = -100
    out = model(x, labels=labels)
    ref_logits = model(x).logits
    ref = F.cross_entropy(ref_logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten(), ignore_index=-100)
    torch.testing.assert_close(out.logits, ref_logits, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(out.lm_loss, ref, rtol=1e-12, atol=1e-12)
    fused_grads = torch.autograd.grad(out.loss, list(model.parameters()))
    ref_grads = torch.autograd.grad(ref, list(model.parameters()))
    for a, b in zip(fused_grads, ref_grads):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("weight_shape", [(16,), (4, 16)], ids=["one weight", "a weight per head"])
def test_rms_norm_and_its_backward_equal_the_formula(weight_shape):
    x = torch.randn(3, 5, 4, 16, dtype=torch.float64, requires_grad=True)
    w = torch.randn(weight_shape, dtype=torch.float64, requires_grad=True)
    probe = torch.randn(3, 5, 4, 16, dtype=torch.float64)
    ours = rms_norm(x, w, 1e-6)
    expected = w * x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6)
    torch.testing.assert_close(ours, expected, rtol=1e-14, atol=1e-14)
    for a, b in zip(torch.autograd.grad((ours * probe).sum(), (x, w)),
                    torch.autograd.grad((expected * probe).sum(), (x, w))):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_rms_norm_under_mixed_precision_equals_hf_qwen3():
    from transformers.models.qwen3.modeling_qwen3 import Qwen3RMSNorm

    hf = Qwen3RMSNorm(64, eps=1e-6)
    ours = RMSNorm(64, eps=1e-6)
    with torch.no_grad():
        hf.weight.normal_()
        ours.weight.copy_(hf.weight)
    x = torch.randn(4, 7, 64).to(torch.bfloat16).requires_grad_()
    probe = torch.randn(4, 7, 64)
    a, b = ours(x), hf(x)
    assert a.dtype == b.dtype == torch.float32
    torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)  # same rounding to bf16 before the scale
    for g, h in zip(torch.autograd.grad((a * probe).sum(), (x, ours.weight)),
                    torch.autograd.grad((b * probe).sum(), (x, hf.weight))):
        assert g.dtype == h.dtype
        torch.testing.assert_close(g, h, rtol=2e-2, atol=2e-2)


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


def _tiny_loss_and_grads(position):
    """A tiny model, an input, and its float32 eager output and parameter gradients (the reference)."""
    model = GatedLM(load_config("tiny", {"model.attention.gate.position": position}).model)
    x = torch.randint(0, 256, (2, 16))
    ref = model(x, labels=x)
    return model, x, ref, torch.autograd.grad(ref.loss, list(model.parameters()))


@pytest.mark.parametrize("position", ["none", "g1"])
def test_bf16_autocast_training_step_is_close_to_float32(position):
    model, x, ref, ref_grads = _tiny_loss_and_grads(position)
    with torch.autocast("cpu", torch.bfloat16):
        out = model(x, labels=x)
    assert out.logits.dtype == torch.bfloat16 and out.loss.dtype == torch.float32
    grads = torch.autograd.grad(out.loss, list(model.parameters()))
    torch.testing.assert_close(out.loss, ref.loss, rtol=1e-2, atol=1e-2)
    cos = [F.cosine_similarity(a.flatten(), b.flatten(), 0) for a, b in zip(grads, ref_grads) if b.abs().sum() > 0]
    assert min(cos) > 0.98


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


@pytest.mark.slow
@pytest.mark.parametrize("position", ["none", "g1"])
def test_torch_compile_gives_the_eager_logits_loss_and_gradients(position):
    model, x, eager, eager_grads = _tiny_loss_and_grads(position)
    compiled = torch.compile(model)
    out = compiled(x, labels=x)
    grads = torch.autograd.grad(out.loss, list(model.parameters()))
    torch.testing.assert_close(out.logits, eager.logits, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(out.loss, eager.loss, rtol=1e-5, atol=1e-6)
    for a, b in zip(grads, eager_grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    with torch.no_grad():  # the inference path (separate projections) compiles too
        torch.testing.assert_close(compiled(x).logits, eager.logits, rtol=1e-4, atol=1e-5)
