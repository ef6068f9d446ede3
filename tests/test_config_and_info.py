"""Config validation, presets, overrides, the gate's parameter formulas and `gatedattn info`."""

import json
import subprocess
import sys

import pytest

from gatedattn import ConfigError, GatedLM, load_config
from gatedattn.cli.main import main
from gatedattn.config import PRESETS, Config, RopeScalingConfig, build, parse_overrides
from gatedattn.modeling.stats import model_stats


def _stats(preset, **gate):
    cfg = load_config(preset, {f"model.attention.gate.{k}": v for k, v in gate.items()})
    return cfg.model, model_stats(cfg.model, 4096)


@pytest.mark.parametrize("preset", ["paper-dense-1.7b-28l", "paper-dense-1.7b-48l", "paper-moe-15a2b"])
def test_gate_added_parameters_follow_the_papers_formulas(preset):
    m, _ = _stats(preset)
    d, L, H, Hk, D = m.d_model, m.num_layers, m.attention.num_heads, m.attention.num_kv_heads, m.attention.head_dim
    expected = {
        ("g1", "elementwise"): d * H * D, ("g1", "headwise"): d * H,
        ("g4", "elementwise"): d * H * D, ("g4", "headwise"): d * H,
        ("g2", "elementwise"): d * Hk * D, ("g2", "headwise"): d * Hk,
        ("g3", "elementwise"): d * Hk * D, ("g3", "headwise"): d * Hk,
        ("g5", "elementwise"): d * d,
    }
    for (position, granularity), per_layer in expected.items():
        for fused in (True, False):
            _, s = _stats(preset, position=position, granularity=granularity, fused=fused)
            assert s["gate_added_params"] == L * per_layer, (position, granularity, fused)
    _, s = _stats(preset, position="g1", input_dependent=False)
    assert s["gate_added_params"] == L * H * D  # one learnable vector per head


def test_paper_moe_shape_and_figures():
    m, s = _stats("paper-moe-15a2b", position="g1")
    assert 15.0e9 < s["total_params"] - s["gate_added_params"] < 16.0e9
    assert 1.9e9 < s["active_params"] - s["gate_added_params"] < 2.1e9  # "15A2B"
    assert round(s["gate_added_params"] / 1e6) == 201  # the paper's +201M for elementwise G1
    _, s = _stats("paper-moe-15a2b", position="g1", granularity="headwise")
    assert round(s["gate_added_params"] / 1e6, 1) == 1.6
    _, s = _stats("paper-moe-15a2b", position="g2")
    assert round(s["gate_added_params"] / 1e6) == 25
    _, s = _stats("paper-dense-1.7b-28l")
    assert 1.6e9 < s["total_params"] < 1.8e9


def test_overrides_and_yaml_base(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("base: tiny\nmodel:\n  attention:\n    gate: {position: g2, granularity: headwise}\n")
    cfg = load_config(str(f), {"model.rope.scaling.rope_type": "yarn", "model.rope.scaling.factor": 4})
    assert cfg.model.attention.gate.position == "g2" and cfg.model.attention.gate.granularity == "headwise"
    assert cfg.model.d_model == 64 and cfg.model.rope.scaling == RopeScalingConfig("yarn", factor=4.0)


@pytest.mark.parametrize("overrides, fragment", [
    ({"model.attention.gate.postion": "g1"}, "did you mean 'position'"),
    ({"model.attention.gate.position": "g7"}, "allowed: none, g1, g2, g3, g4, g5"),
    ({"model.attention.gate.activation": "tanh"}, "allowed: sigmoid, silu, ns_sigmoid, identity"),
    ({"model.attention.num_kv_heads": 3}, "multiple of num_kv_heads"),
    ({"model.attention.gate.position": "g5", "model.attention.gate.granularity": "headwise"}, "g5"),
    ({"model.d_model": "wide"}, "must be an integer"),
    ({"model.rope.scaling.rope_type": "yarn"}, "factor must be a number"),
    ({"model.rope.scaling.factor": 2}, "rope_type is required; allowed: default, linear, dynamic, yarn, llama3"),
    ({"model.rope.scaling.rope_type": "ntk"}, "rope_type='ntk' is not allowed; allowed: default, linear"),
    ({"model.rope.scaling": {"rope_type": "llama3", "factor": 8}}, "low_freq_factor is required"),
    ({"model.rope.scaling": {"rope_type": "yarn", "factor": 4, "beta": 1}}, "unknown config key "
                                                                           "'model.rope.scaling.beta'"),
    ({"model.rope.scaling": {"type": "yarn", "rope_type": "linear", "factor": 2}}, "give one of them"),
    ({"model.rope.scaling": "yarn"}, "model.rope.scaling must be a mapping"),
    ({"model.d_model": float("nan")}, "model.d_model must be a finite number, got nan"),
    ({"model.attention.num_heads": float("inf")}, "must be a finite number, got inf"),
    ({"train.lr": float("nan")}, "train.lr must be a finite number, got nan"),
    ({"train.lr": float("-inf")}, "train.lr must be a finite number"),
    ({"train.lr": "nan"}, "train.lr must be a number, got 'nan'"),
    ({"model.rope.scaling": {"rope_type": "yarn", "factor": float("inf")}}, "factor must be a finite number"),
    ({"train.dtype": "float16"}, "train.dtype='float16' is not allowed; allowed: float32, bfloat16"),
    ({"data.seq_len": 4096}, "data.seq_len=4096 exceeds model.max_position_embeddings=2048; lower data.seq_len "
                             "or set model.max_position_embeddings >= 4096"),
    ({"model.moe.num_experts": 4, "model.moe.top_k": 5}, "top_k"),
])
def test_bad_configs_fail_with_a_clear_message(overrides, fragment):
    with pytest.raises(ConfigError, match=None) as e:
        load_config("tiny", overrides)
    assert fragment in str(e.value) and "\n" not in str(e.value)


def test_info_json_and_bad_input_exit_code(capsys):
    assert main(["info", "paper-moe-15a2b", "--set", "model.attention.gate.position=g2", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["gate_added_params"] == 24 * 2048 * 4 * 128
    proc = subprocess.run([sys.executable, "-m", "gatedattn.cli.main", "info", "tiny", "--set",
                           "model.attention.gate.granularity=rowwise"], capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "allowed: elementwise, headwise" in proc.stderr
    assert "Traceback" not in proc.stderr


# -- numbers, RoPE scaling as a typed section, and bad input through the real CLI ---------------------------

def test_floats_in_every_common_spelling_from_set_and_yaml(tmp_path):
    expected = {"lr": 3e-4, "weight_decay": 1e5, "grad_clip": 1e3, "min_lr_ratio": 0.5}
    cfg = load_config("tiny", parse_overrides(["train.lr=3e-4", "train.weight_decay=1E5", "train.grad_clip=1e+3",
                                               "train.min_lr_ratio=.5", "train.max_steps=1e2"]))
    assert {k: getattr(cfg.train, k) for k in expected} == expected and cfg.train.max_steps == 100
    f = tmp_path / "c.yaml"
    f.write_text("base: tiny\ntrain: {lr: 3e-4, weight_decay: 1E5, grad_clip: 1e+3, min_lr_ratio: .5}\n"
                 "model: {rope: {scaling: {rope_type: yarn, factor: 4e0}}}\n")
    cfg = load_config(str(f))
    assert {k: getattr(cfg.train, k) for k in expected} == expected and cfg.model.rope.scaling.factor == 4.0
    with pytest.raises(ConfigError, match="model.d_model must be an integer, got '6.45e1'"):
        load_config("tiny", parse_overrides(["model.d_model=6.45e1"]))


def test_rope_scaling_is_typed_and_speaks_hf_at_the_boundary():
    cfg = load_config("tiny", parse_overrides(["model.rope.scaling.type=yarn", "model.rope.scaling.factor=4",
                                               "model.rope.scaling.beta_fast=16"]))
    scaling = cfg.model.rope.scaling
    assert isinstance(scaling, RopeScalingConfig) and scaling.rope_type == "yarn" and scaling.beta_fast == 16.0
    assert scaling.to_hf_dict() == {"rope_type": "yarn", "factor": 4.0, "beta_fast": 16.0}
    assert RopeScalingConfig.from_hf_dict({"type": "linear", "factor": 2}) == RopeScalingConfig("linear", 2.0)
    assert cfg.to_dict()["model"]["rope"]["scaling"] == scaling.to_hf_dict()  # config.yaml lists the set keys
    assert load_config(cfg.to_dict()) == cfg
    assert build(Config, cfg) == cfg
    with pytest.raises(ConfigError, match="factor must be a number >= 1"):  # an instance is checked too
        load_config("tiny", {"model.rope.scaling": RopeScalingConfig("yarn", factor=0.5)})


def test_saved_model_configs_round_trip_old_and_new(tmp_path):
    cfg = load_config("tiny", {"model.rope.scaling": {"rope_type": "llama3", "factor": 8, "low_freq_factor": 1,
                                                      "high_freq_factor": 4,
                                                      "original_max_position_embeddings": 64}}).model
    GatedLM(cfg).save_pretrained(tmp_path / "new")
    assert GatedLM.from_pretrained(tmp_path / "new").config == cfg
    saved = json.loads((tmp_path / "new" / "config.json").read_text())
    saved["rope"]["scaling"] = {"type": "llama3", "factor": 8, "low_freq_factor": 1, "high_freq_factor": 4,
                                "original_max_position_embeddings": 64}  # as older versions wrote it
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "config.json").write_text(json.dumps(saved))
    (tmp_path / "old" / "model.safetensors").write_bytes((tmp_path / "new" / "model.safetensors").read_bytes())
    assert GatedLM.from_pretrained(tmp_path / "old").config == cfg


def test_every_preset_loads_within_its_context():
    for name in PRESETS:
        cfg = load_config(name)
        assert cfg.data.seq_len <= cfg.model.max_position_embeddings


def _cli(*argv):
    proc = subprocess.run([sys.executable, "-m", "gatedattn.cli.main", *map(str, argv)], capture_output=True,
                          text=True)
    return proc.returncode, proc.stderr


def _bad_config_files(tmp_path):
    (tmp_path / "list.yaml").write_text("[1, 2]\n")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.json").write_text('"x"')
    for name, text in {"empty-list.yaml": "[]", "false.yaml": "false", "base-list.yaml": "base: [tiny]"}.items():
        (tmp_path / name).write_text(text)
    return tmp_path


@pytest.mark.parametrize("argv, message", [
    (["info", "tiny", "--set", "train.lr=.nan"], "train.lr must be a finite number, got nan"),
    (["info", "tiny", "--set", "model.d_model=.inf"], "model.d_model must be a finite number, got inf"),
    (["info", "tiny", "--seq-len", "-3"], "--seq-len must be a positive integer, got -3"),
    (["info", "tiny", "--set", "data.seq_len=4096"], "data.seq_len=4096 exceeds model.max_position_embeddings"),
    (["info", "{tmp}/list.yaml"], "list.yaml must hold a mapping (a JSON object) at the top level, got list"),
    (["info", "{tmp}/run"], "config.json must hold a mapping (a JSON object) at the top level, got str 'x'"),
])
def test_cli_refuses_bad_numbers_and_files_in_one_line(tmp_path, argv, message):
    tmp = _bad_config_files(tmp_path)
    code, err = _cli(*(a.format(tmp=tmp) for a in argv))
    assert code == 2 and message in err and err.count("\n") == 1 and "Traceback" not in err, err


@pytest.mark.parametrize("argv, message", [
    (["info", "tiny", "--set", "model.d_model=.nan"], "model.d_model must be a finite number, got nan"),
    (["info", "tiny", "--set", "train.lr=.inf"], "train.lr must be a finite number, got inf"),
    (["info", "tiny", "--seq-len", "0"], "--seq-len must be a positive integer, got 0"),
    (["info", "tiny", "--set", "model.rope.scaling.rope_type=ntk"], "allowed: default, linear, dynamic, yarn"),
    (["info", "{tmp}/empty-list.yaml"], "at the top level, got list []"),
    (["info", "{tmp}/false.yaml"], "at the top level, got bool False"),
    (["info", "{tmp}/base-list.yaml"], "base=['tiny'] is not a preset; presets: tiny"),
])
def test_main_refuses_bad_input_in_one_line(tmp_path, capsys, argv, message):
    tmp = _bad_config_files(tmp_path)
    code = main([a.format(tmp=tmp) for a in argv])
    err = capsys.readouterr().err
    assert code == 2 and message in err and err.count("\n") == 1, err


def test_cli_accepts_exponent_floats():
    code, err = _cli("info", "tiny", "--set", "train.lr=3e-4", "--set", "model.initializer_range=2E-2", "--json")
    assert code == 0, err


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_no_preset_warns_about_its_own_settings(name, tmp_path, monkeypatch):
    """Preparing a preset's tokenizer as training does logs nothing about the preset's own values (the tiny
    preset once asked for a 256-token BPE and was raised to 257 with a notice)."""
    import logging

    pytest.importorskip("tokenizers")
    from gatedattn.data import Document
    from gatedattn.data.tokenizer import MIN_BPE_VOCAB, build_tokenizer

    monkeypatch.setenv("GATEDATTN_CACHE", str(tmp_path))
    cfg = load_config(name)
    if cfg.data.source == "bigram-backcopy":  # the lab's tokenizer is its task's vocabulary, not a BPE
        assert cfg.data.bigram_backcopy.vocab > 0
        return
    messages: list[str] = []
    handler = logging.Handler(logging.DEBUG)
    handler.emit = lambda record: messages.append(record.getMessage())
    logger = logging.getLogger("gatedattn")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        tok = build_tokenizer(cfg.data.tokenizer, cfg.data.vocab_size, [Document("d", "ROMEO. But soft!")], name)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    assert [m for m in messages if not m.startswith("tokenizer: training a byte-level BPE")] == []
    assert cfg.data.vocab_size >= MIN_BPE_VOCAB and tok.vocab_size <= cfg.data.vocab_size


def test_readme_parameter_counts_are_the_models():
    """The sizes the README states are what the presets build (compare --quick: with its budget's vocabulary)."""
    from pathlib import Path

    from gatedattn.experiments.variants import variant_config
    from gatedattn.reporting import format_number

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    for label, cfg in (("quick", variant_config("none", quick=True)), ("quick-g1", variant_config("g1", quick=True)),
                       ("small", load_config("small"))):
        size = format_number(model_stats(cfg.model, cfg.data.seq_len)["total_params"], si=True)
        assert size in readme, (label, size)
    assert "1.1M" not in readme and "1.3M" not in readme and "6.8M" not in readme
