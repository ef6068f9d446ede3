"""Gate retrofit: an identity-at-init gate keeps a pretrained model's function; frozen or slower base training."""

import dataclasses

import pytest
import torch
from conftest import tiny_model, write_plays
from safetensors.torch import load_file

from gatedattn import GatedAttnError, load_config
from gatedattn.artifacts import load_model
from gatedattn.cli.main import main
from gatedattn.config import ConfigError, GateConfig
from gatedattn.modeling.retrofit import parse_gate_spec, retrofit_gate
from gatedattn.training import param_groups, train
from gatedattn.training.optim import build_optimizer

# Every position x granularity the config offers (g5 has no heads), and the other gate options.
SPECS = ([f"{p},{g}" for p in ("g1", "g2", "g3", "g4") for g in ("elementwise", "headwise")] + ["g5"]
         + ["g1,fused", "g4,headwise,fused", "g1,shared", "g2,headwise,shared", "g1,input_independent",
            "g3,bias", "g1,ns_sigmoid", "g1,add,silu", "g5,add,identity", "g4,headwise,fused,bias"])


def _source():
    """An ungated pretrained stand-in: random weights, q/k/v biases (a fused gate must extend them), QK-norm."""
    model = tiny_model(**{"attention.qkv_bias": True}).float()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") or "norm" in name:
                p.normal_(0.5 if "norm" in name else 0.0, 0.3)  # not the init's ones and zeros
    return model


@pytest.mark.parametrize("spec", SPECS)
def test_retrofit_keeps_the_logits_at_step_0(spec):
    source = _source()
    gated = retrofit_gate(source, parse_gate_spec(spec))
    ids = torch.randint(0, source.config.vocab_size, (2, 24))
    with torch.no_grad():
        torch.testing.assert_close(gated(ids).logits, source(ids).logits, rtol=1e-6, atol=1e-6)
        # The gate is in the path: moving its parameters changes the function.
        for name, p in gated.named_parameters():
            if ".gate." in name:
                p.add_(0.5)
            elif name.endswith("q_proj.weight") and "fused" in spec:
                p[-1].add_(0.5)  # a gate row
        assert (gated(ids).logits - source(ids).logits).abs().max() > 1e-3


def test_identity_scores_are_exactly_one():
    gated = retrofit_gate(_source(), parse_gate_spec("g1,ns_sigmoid"))  # 0.75 / 0.75, not 0.75 x 4/3
    scores = []
    gated.layers[0].attn.gate.hook_score.register_forward_hook(lambda m, i, out: scores.append(out))
    gated(torch.randint(0, 64, (1, 5)))
    assert torch.equal(scores[0], torch.ones_like(scores[0]))


@pytest.mark.parametrize("combine,activation", [("multiply", "silu"), ("multiply", "identity"),
                                                ("add", "sigmoid"), ("add", "ns_sigmoid")])
def test_impossible_identity_is_refused(combine, activation):
    gate = GateConfig(position="g1", combine=combine, activation=activation, init="identity")
    with pytest.raises(ConfigError, match="cannot start as the identity") as e:
        retrofit_gate(_source(), gate)
    assert "\n" not in str(e.value)


def test_retrofit_of_a_gated_model_is_refused():
    with pytest.raises(GatedAttnError, match="already has a gate"):
        retrofit_gate(tiny_model(**{"attention.gate.position": "g1"}), parse_gate_spec("g1"))


@pytest.mark.parametrize("spec,message", [("bogus", "first word must be a gate position"),
                                          ("g1,wide", "unknown word 'wide'"), ("g1,add", "cannot start as"),
                                          ("g5,headwise", "no heads")])
def test_cli_bad_gate_is_one_line_exit_2(spec, message, tmp_path, capsys):
    src = tmp_path / "src"
    _source().save_pretrained(src)
    assert main(["retrofit", str(src), "--gate", spec, "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not (tmp_path / "out").exists()


# -- continued training --------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """A briefly trained ungated tiny run (model + tokenizer), the model to retrofit."""
    root = tmp_path_factory.mktemp("retrofit")
    (root / "corpus").mkdir()
    corpus = write_plays(root / "corpus", 3, 8000)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GATEDATTN_CACHE", str(root / "cache"))
        cfg = load_config("tiny", {"data.source": str(corpus), "data.vocab_size": 300, "data.seq_len": 32,
                                   "train.max_steps": 3, "train.eval_batches": 0, "train.device": "cpu"})
        train(cfg, root / "run", progress=False)
    return root, corpus


def _continue(root, corpus, model_dir, out, **settings):
    cfg = load_config(str(model_dir / "train.yaml"), {
        "data.source": str(corpus), "data.seq_len": 32, "train.max_steps": 3, "train.warmup_steps": 1,
        "train.eval_batches": 0, "train.device": "cpu", "train.lr": 1e-2, **settings})
    return train(cfg, out, init_from=model_dir, progress=False)


def test_cli_retrofit_then_train_only_the_gates(pretrained, tmp_path, capsys, monkeypatch):
    root, corpus = pretrained
    monkeypatch.setenv("GATEDATTN_CACHE", str(root / "cache"))
    out = tmp_path / "gated"
    assert main(["retrofit", str(root / "run"), "--gate", "g1,headwise", "--out", str(out)]) == 0
    assert "max |logit difference| 0 on 64 tokens" in capsys.readouterr().out
    source, gated = load_model(root / "run"), load_model(out)
    assert gated.model.config.attention.gate.granularity == "headwise" and gated.tokenizer is not None
    ids = torch.tensor([gated.tokenizer.encode("ROMEO. What light through yonder window breaks?")])
    torch.testing.assert_close(gated.model(ids).logits, source.model(ids).logits, rtol=1e-6, atol=1e-6)

    _continue(root, corpus, out, tmp_path / "frozen", **{"train.trainable": "gates"})
    before, after = load_file(out / "model.safetensors"), load_model(tmp_path / "frozen").model.state_dict()
    gate_names = {n for n in before if ".gate." in n}
    assert gate_names and all(not torch.equal(before[n], after[n]) for n in gate_names)
    assert all(torch.equal(before[n], after[n]) for n in before if n not in gate_names)


def test_base_lr_mult_slows_only_the_base(pretrained, tmp_path, monkeypatch):
    root, corpus = pretrained
    monkeypatch.setenv("GATEDATTN_CACHE", str(root / "cache"))
    main(["retrofit", str(root / "run"), "--gate", "g1", "--out", str(tmp_path / "gated")])
    model = load_model(tmp_path / "gated").model
    cfg = dataclasses.replace(load_config("tiny").train, lr=1e-3, base_lr_mult=0.1, warmup_steps=0)
    optimizer, _ = build_optimizer(model, cfg)
    gate_ids = {id(p) for n, p in model.named_parameters() if ".gate." in n}
    for group in optimizer.param_groups:
        expected = 1e-3 if all(id(p) in gate_ids for p in group["params"]) else 1e-4
        assert group["lr"] == pytest.approx(expected)
    assert sum(len(g["params"]) for g in optimizer.param_groups) == len(list(model.parameters()))
    assert optimizer.param_groups[0]["lr"] == 1e-3  # group 0 (the logged lr) runs at train.lr
    assert len(param_groups(model, 0.1)) == 2  # no split without a multiplier
    result = _continue(root, corpus, tmp_path / "gated", tmp_path / "slow", **{"train.base_lr_mult": 0.1})
    assert result.steps == 3


@pytest.mark.parametrize("settings,message", [
    ({"train.base_lr_mult": 0}, "base_lr_mult must be positive"),
    ({"train.trainable": "gates", "train.base_lr_mult": 0.5}, "set one of the two"),
    ({"train.trainable": "everything"}, "train.trainable"),
])
def test_bad_continued_training_settings(settings, message):
    with pytest.raises(ConfigError, match=message):
        load_config("tiny", settings)


def test_gates_only_or_base_lr_needs_a_gate_of_its_own(pretrained, tmp_path, monkeypatch):
    root, corpus = pretrained
    monkeypatch.setenv("GATEDATTN_CACHE", str(root / "cache"))
    main(["retrofit", str(root / "run"), "--gate", "g1,fused", "--out", str(tmp_path / "fused")])
    for key, value in (("train.trainable", "gates"), ("train.base_lr_mult", 0.5)):
        with pytest.raises(GatedAttnError, match="fused=false"):
            _continue(root, corpus, tmp_path / "fused", tmp_path / f"run-{value}", **{key: value})
