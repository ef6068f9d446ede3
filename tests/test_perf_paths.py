"""Fast paths outside modeling/ops equal plain references: the model's shifted loss, the fused RMSNorm,
bf16 autocast, torch.compile and compiled decoding. The ops themselves are tested in tests/test_ops.py."""

import pytest
import torch
import torch.nn.functional as F

from gatedattn import GatedLM, load_config
from gatedattn.modeling.norm import RMSNorm, rms_norm
from conftest import tiny_model


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


@pytest.mark.slow
@pytest.mark.parametrize("cfg", [{}, {"attention.gate.position": "g1"},
                                 {"attention.gate.position": "g1", "attention.sink": "learned",
                                  "attention.num_register_tokens": 2}], ids=["baseline", "g1", "g1+sink+registers"])
def test_compiled_decoding_gives_the_eager_tokens_and_follows_weight_updates(cfg):
    model = tiny_model(**cfg).float()
    prompts = torch.randint(0, 256, (2, 7))
    assert torch.equal(model.generate(prompts, max_new_tokens=12, compile=True),
                       model.generate(prompts, max_new_tokens=12))
    with torch.no_grad():  # weights changed in place after the compilation: the compiled step must see them
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    sampled = dict(do_sample=True, temperature=0.8, top_k=20)
    eager = model.generate(prompts[:1], max_new_tokens=12, generator=torch.Generator().manual_seed(3), **sampled)
    compiled = model.generate(prompts[:1], max_new_tokens=12, generator=torch.Generator().manual_seed(3),
                              compile=True, **sampled)
    assert torch.equal(compiled, eager)


def test_compiled_blocks_serve_only_forwards_that_record_gradients():
    model = tiny_model()
    x = torch.randint(0, 256, (1, 5))
    with torch.no_grad():
        eager = model(x).logits
    calls = []

    def spy(layer):
        def run(*args):
            calls.append(layer)
            return layer(*args)
        return run
    model.compiled_blocks = [spy(layer) for layer in model.layers]
    with torch.no_grad():  # inference (eval, probes, decoding): the eager modules
        torch.testing.assert_close(model(x).logits, eager, rtol=0, atol=0)
    assert calls == []
    model(x, labels=x).loss.backward()
    assert calls == list(model.layers)


@pytest.mark.parametrize("overrides,device,want", [
    ({"train.compile": "model"}, "cpu", "model"),
    ({"train.compile": True}, "cpu", "model"),  # the old boolean
    ({"train.compile": False, "train.max_steps": 10 ** 6}, "cpu", "off"),
    ({}, "cpu", "off"),  # auto: small's 200 steps are too short to pay for a compilation
    ({"train.max_steps": 2000}, "cpu", "blocks"),
    ({"train.max_steps": 2000}, "cuda", "off"),
    ({"train.max_steps": 2000, "train.parallel": "ddp"}, "cpu", "off"),
    ({"train.max_steps": 2000, "model.moe.num_experts": 4, "model.moe.expert_ffn_dim": 64}, "cpu", "off"),
], ids=["model", "true", "false", "auto-short", "auto-long", "auto-cuda", "auto-ddp", "auto-moe"])
def test_train_compile_resolves_to_the_measured_mode(overrides, device, want, monkeypatch):
    from gatedattn.training import compilation
    from gatedattn.training.compilation import AUTO_COMPILE_FLOPS, compile_mode, planned_flops

    monkeypatch.setattr(compilation, "has_cpp_compiler", lambda: True)  # whatever this machine has
    cfg = load_config("small", overrides)
    mode, why = compile_mode(cfg, torch.device(device))
    assert mode == want, why
    if not overrides:  # the threshold the decision names
        assert planned_flops(cfg) < AUTO_COMPILE_FLOPS and "too short" in why


def test_a_bad_train_compile_is_one_line_naming_the_allowed_modes():
    from gatedattn.config import ConfigError

    with pytest.raises(ConfigError, match=r"^train.compile='fast' is not allowed; allowed: auto, off, model, blocks$"):
        load_config("tiny", {"train.compile": "fast"})
    with pytest.raises(ConfigError, match="train.compile=1 is not allowed"):  # 1 is not the boolean true
        load_config("tiny", {"train.compile": 1})


def test_input_major_weights_keep_values_and_shapes_and_give_the_storage_back():
    from gatedattn.modeling.model import input_major_weights

    model = tiny_model(**{"attention.gate.position": "g1"})  # tied embeddings: lm_head.weight is embed.weight
    x = torch.randint(0, 256, (1, 7))
    with torch.no_grad():
        ref = model(x).logits
    before = {n: (p.data_ptr(), p.clone()) for n, p in model.named_parameters()}
    with pytest.raises(RuntimeError, match="inside"):
        with input_major_weights(model):
            w = model.layers[0].attn.q_proj.weight
            assert w.stride() == (1, w.shape[0])  # input-major storage, the (out, in) shape kept
            assert model.lm_head.weight is model.embed.weight and not model.embed.weight.is_contiguous()
            with torch.no_grad():
                torch.testing.assert_close(model(x).logits, ref, rtol=1e-12, atol=1e-12)
            raise RuntimeError("inside")
    for n, p in model.named_parameters():  # the very tensors of before, even after an error
        assert p.data_ptr() == before[n][0] and torch.equal(p, before[n][1]) and p.is_contiguous(), n


def test_train_compile_auto_stays_eager_without_a_cpp_compiler(monkeypatch):
    from gatedattn.training import compilation

    monkeypatch.setattr(compilation, "has_cpp_compiler", lambda: False)
    mode, why = compilation.compile_mode(load_config("small", {"train.max_steps": 2000}), torch.device("cpu"))
    assert mode == "off" and "no C++ compiler" in why
    assert compilation.compile_mode(load_config("small", {"train.max_steps": 2000, "train.compile": "blocks"}),
                                    torch.device("cpu"))[0] == "blocks"  # asked for: compiled, and fails loudly
