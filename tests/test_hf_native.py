"""Native export and import, each against an independent reference.

- Export: `gatedattn export` directories load with *only* transformers (a subprocess that never imports
  gatedattn) as Qwen3NextForCausalLM / Qwen3ForCausalLM / LlamaForCausalLM / Qwen2ForCausalLM, with our
  logits, and
  AutoTokenizer encodes as our tokenizer does.
- Import: those directories, and a checkpoint in the official gated_attention layout written here by a
  re-implementation of its per-KV-group row order (loops over groups, not layout.py), give our logits back.
- The Qwen3-Next features (zero-centred RMSNorm, the sigmoid-gated shared expert) against plain math.
- What cannot be represented is refused with one line and exit code 2.
"""

import json
import os
import subprocess
import sys

import pytest
import torch
from conftest import tiny_model

pytest.importorskip("transformers")

from gatedattn import load_model  # noqa: E402
from gatedattn.cli.main import main  # noqa: E402
from gatedattn.data.corpora import Document  # noqa: E402
from gatedattn.data.tokenizer import train_bpe  # noqa: E402
from gatedattn.modeling.ffn import MoE  # noqa: E402

TEXT = "To be, or not to be, that is the question: whether 'tis nobler in the mind to suffer."
QWEN3_NEXT = {"attention.gate.position": "g1", "norm_zero_centered": True, "rope.partial_rotary_factor": 0.25,
              "attention.qkv_bias": True, "attention.o_bias": True, "tie_embeddings": False}
QWEN3_NEXT_MOE = {"attention.gate.position": "g1", "norm_zero_centered": True, "rope.partial_rotary_factor": 0.5,
                  "moe.num_experts": 4, "moe.top_k": 2, "moe.shared_expert_ffn_dim": 32,
                  "moe.shared_expert_gate": True}
EXPORTS = {"qwen3-next": QWEN3_NEXT, "qwen3-next-moe": QWEN3_NEXT_MOE, "qwen3": {},
           "llama": {"attention.qk_norm": False},
           "qwen2": {"attention.qk_norm": False, "attention.qkv_bias": True}}
CLASSES = {"qwen3-next": "Qwen3NextForCausalLM", "qwen3-next-moe": "Qwen3NextForCausalLM",
           "qwen3": "Qwen3ForCausalLM", "llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM"}

# Runs with transformers and torch only; gatedattn must stay unimported.
ONLY_TRANSFORMERS = """
import json, sys, torch
from transformers import AutoModelForCausalLM, AutoTokenizer
dirs, ids, out = json.loads(sys.argv[1]), torch.load(sys.argv[2]), {}
for name, folder in dirs.items():
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    with torch.no_grad():
        logits = model(ids).logits
    out[name] = {"class": type(model).__name__, "logits": logits,
                 "ids": AutoTokenizer.from_pretrained(folder)(sys.argv[3])["input_ids"]}
assert not any(m.partition(".")[0] == "gatedattn" for m in sys.modules), "gatedattn was imported"
torch.save(out, sys.argv[2] + ".out")
"""


def _perturbed(**overrides):
    """A float32 tiny model with every parameter moved off its initial value (norms and biases too)."""
    model = tiny_model(**overrides).float()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


def _save_with_tokenizer(model, folder):
    model.save_pretrained(folder)
    tok = train_bpe([Document("hamlet", TEXT)], 257)
    tok.save(folder / "tokenizer.json")
    return tok


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """Our models, their exports, and what only-transformers computed on them."""
    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("export")
    ids = torch.randint(0, 257, (2, 13))
    models, dirs, tok = {}, {}, None
    for name, overrides in EXPORTS.items():
        models[name] = _perturbed(**overrides)
        tok = _save_with_tokenizer(models[name], root / name)
        target = name.removesuffix("-moe")
        assert main(["-q", "export", str(root / name), "--to", target, "--out", str(root / f"{name}.hf")]) == 0
        dirs[name] = str(root / f"{name}.hf")
    torch.save(ids, root / "ids.pt")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # no gatedattn on the path at all
    proc = subprocess.run([sys.executable, "-c", ONLY_TRANSFORMERS, json.dumps(dirs), str(root / "ids.pt"), TEXT],
                          capture_output=True, text=True, timeout=300, env=env, cwd=root)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return models, dirs, ids, tok, torch.load(root / "ids.pt.out")


@pytest.mark.parametrize("name", EXPORTS)
def test_export_loads_with_only_transformers_and_gives_our_logits(exported, name):
    models, _, ids, tok, theirs = exported
    assert theirs[name]["class"] == CLASSES[name]
    with torch.no_grad():
        ours = models[name](ids).logits
    torch.testing.assert_close(theirs[name]["logits"], ours, rtol=0, atol=1e-5)
    assert theirs[name]["ids"] == tok.encode(TEXT)


@pytest.mark.parametrize("name", EXPORTS)
def test_import_of_the_export_gives_our_logits(exported, tmp_path, name):
    models, dirs, ids, _, _ = exported
    assert main(["-q", "import", dirs[name], "--out", str(tmp_path / "back")]) == 0
    loaded = load_model(tmp_path / "back")
    assert loaded.is_ours and loaded.tokenizer is not None and loaded.tokenizer.encode(TEXT)
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(ids).logits, models[name](ids).logits, rtol=0, atol=1e-5)
    if name.startswith("qwen3-next"):  # zero-centred norms, gate rows and experts come back as they were
        for (key, ours), theirs in zip(models[name].state_dict().items(), loaded.model.state_dict().values()):
            assert torch.equal(ours, theirs), key


def test_import_of_a_qwen3_next_built_by_transformers_gives_its_logits(tmp_path):
    """A checkpoint our exporter never touched: transformers' own Qwen3-Next (MoE, partial rotary, biases)."""
    from transformers import Qwen3NextConfig, Qwen3NextForCausalLM

    cfg = Qwen3NextConfig(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=2, head_dim=16, num_experts=4,
                          num_experts_per_tok=2, moe_intermediate_size=16, shared_expert_intermediate_size=24,
                          attention_bias=True, layer_types=["full_attention"] * 2, tie_word_embeddings=False)
    hf = Qwen3NextForCausalLM(cfg).eval()
    with torch.no_grad():
        for p in hf.parameters():
            p.add_(0.05 * torch.randn_like(p))
    hf.save_pretrained(tmp_path / "hf")
    assert main(["-q", "import", str(tmp_path / "hf"), "--out", str(tmp_path / "ours")]) == 0
    ours = load_model(tmp_path / "ours").model
    assert ours.config.rope.partial_rotary_factor == 0.25 and ours.config.moe.shared_expert_gate
    ids = torch.randint(0, 97, (2, 11))
    with torch.no_grad():
        torch.testing.assert_close(ours(ids).logits, hf(ids).logits, rtol=0, atol=1e-5)


# -- the official gated_attention layout ---------------------------------------------------------------------
def _official_q_rows(q_proj, H, K, D, per_head):
    """The official modeling_qwen3.py reads q_proj's output as (KV group, [its n heads' queries, then their
    gate logits]); our rows are all queries head-major, then all gate rows head-major. Built row by row."""
    n = H // K
    rows = []
    for group in range(K):
        heads = range(group * n, (group + 1) * n)
        rows += [q_proj[h * D + c] for h in heads for c in range(D)]
        rows += [q_proj[H * D + h * per_head + c] for h in heads for c in range(per_head)]
    return torch.stack(rows)


def _qwen3_name(key):
    """Our parameter name -> Qwen3's, which the official checkpoints use (spelled out here)."""
    if key in ("embed.weight", "norm.weight"):
        return {"embed.weight": "model.embed_tokens.weight", "norm.weight": "model.norm.weight"}[key]
    _, i, rest = key.split(".", 2)
    rest = {"attn_norm.weight": "input_layernorm.weight", "ffn_norm.weight": "post_attention_layernorm.weight"}.get(
        rest, rest.replace("attn.", "self_attn.").replace("ffn.", "mlp."))
    return f"model.layers.{i}.{rest}"


@pytest.mark.parametrize("granularity,bias", [("elementwise", True), ("headwise", False)])
def test_official_layout_imports_with_our_logits(tmp_path, granularity, bias):
    from safetensors.torch import save_file

    ours = _perturbed(**{"attention.gate.position": "g1", "attention.gate.granularity": granularity,
                         "attention.qkv_bias": bias, "attention.o_bias": bias, "attention.num_heads": 4,
                         "attention.num_kv_heads": 2})
    a = ours.config.attention
    per_head = a.head_dim if granularity == "elementwise" else 1
    state = {}
    for key, value in ours.state_dict().items():
        if key == "lm_head.weight":
            continue  # tied
        if ".attn.q_proj." in key:
            value = _official_q_rows(value, a.num_heads, a.num_kv_heads, a.head_dim, per_head)
        state[_qwen3_name(key)] = value.contiguous()
    save_file(state, str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text(json.dumps({
        "model_type": "qwen3", "architectures": ["Qwen3ForCausalLM"], "vocab_size": 257, "hidden_size": 64,
        "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
        "head_dim": 16, "rms_norm_eps": 1e-6, "tie_word_embeddings": True, "rope_theta": 10000.0,
        "max_position_embeddings": 2048, "use_qk_norm": True, "qkv_bias": bias,
        f"{granularity}_attn_output_gate": True, "bos_token_id": 0, "eos_token_id": 0}))
    ids = torch.randint(0, 257, (2, 11))
    loaded = load_model(tmp_path)
    assert loaded.is_ours and loaded.model.config.attention.gate.granularity == granularity
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(ids).logits, ours(ids).logits, rtol=0, atol=1e-6)
    assert main(["-q", "import", str(tmp_path), "--out", str(tmp_path / "ours")]) == 0
    with torch.no_grad():
        torch.testing.assert_close(load_model(tmp_path / "ours").model(ids).logits, ours(ids).logits, rtol=0, atol=1e-6)


# -- refusals --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("overrides,target,named", [
    ({"attention.gate.position": "g2"}, "qwen3-next", "attention.gate.position='g2'"),
    ({"attention.gate.position": "g1", "attention.gate.granularity": "headwise"}, "qwen3-next",
     "attention.gate.granularity='headwise'"),
    ({"attention.gate.position": "g1", "attention.sink": "learned"}, "qwen3-next", "attention.sink='learned'"),
    ({"attention.gate.position": "g1"}, "qwen3", "--to qwen3-next"),
    ({}, "llama", "--to qwen3"),
    ({"attention.num_register_tokens": 2}, "qwen3", "attention.num_register_tokens=2"),
])
def test_export_refuses_what_the_target_cannot_represent(tmp_path, capsys, overrides, target, named):
    tiny_model(**overrides).float().save_pretrained(tmp_path / "m")
    assert main(["export", str(tmp_path / "m"), "--to", target, "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and named in err, err
    assert not (tmp_path / "out").exists()


# -- the Qwen3-Next features against plain math ----------------------------------------------------------------
def test_zero_centered_norms_equal_plain_norms_with_one_added():
    centred = tiny_model(**{"norm_zero_centered": True, "attention.gate.position": "g1"})
    torch.manual_seed(0)
    fresh = tiny_model(**{"norm_zero_centered": True, "attention.gate.position": "g1"})
    torch.manual_seed(0)
    plain = tiny_model(**{"attention.gate.position": "g1"})
    ids = torch.randint(0, 257, (2, 9))
    assert all(float(m.weight.detach().abs().max()) == 0 for n, m in fresh.named_modules() if n.endswith("norm"))
    torch.testing.assert_close(fresh(ids).logits, plain(ids).logits, rtol=0, atol=0)  # same function at init
    with torch.no_grad():
        for p in centred.parameters():
            p.add_(0.1 * torch.randn_like(p))
        state = {k: v + 1 if k.endswith("norm.weight") else v for k, v in centred.state_dict().items()}
    plain.load_state_dict(state)
    for grad in (False, True):  # the decoding path and the fused training path
        with torch.set_grad_enabled(grad):
            torch.testing.assert_close(centred(ids).logits, plain(ids).logits, rtol=0, atol=1e-12)


def test_shared_expert_gate_equals_its_formula():
    model = tiny_model(**{"moe.num_experts": 4, "moe.top_k": 2, "moe.shared_expert_ffn_dim": 24,
                          "moe.shared_expert_gate": True})
    moe = model.layers[0].ffn
    assert isinstance(moe, MoE)
    x = torch.randn(7, 64, dtype=torch.float64)
    expected = []
    for token in x:  # route one token at a time: softmax, top-k, renormalise, weighted experts
        probs = torch.softmax(moe.router.weight @ token, -1)
        weights, experts = probs.topk(2)
        weights = weights / weights.sum()
        routed = sum(w * (torch.nn.functional.silu(token @ moe.w_gate[e]) * (token @ moe.w_up[e])) @ moe.w_down[e]
                     for w, e in zip(weights, experts))
        s = moe.shared_expert
        hidden = torch.nn.functional.silu(s.gate_proj.weight @ token) * (s.up_proj.weight @ token)
        shared = s.down_proj.weight @ hidden
        expected.append(routed + torch.sigmoid(moe.shared_expert_gate.weight[0] @ token) * shared)
    torch.testing.assert_close(moe(x), torch.stack(expected), rtol=0, atol=1e-12)


def test_shared_expert_gate_needs_a_shared_expert():
    from gatedattn import ConfigError, load_config

    with pytest.raises(ConfigError, match="shared_expert_gate"):
        load_config("tiny", {"model.moe.num_experts": 4, "model.moe.shared_expert_gate": True})
