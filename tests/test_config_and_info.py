"""Config validation, presets, overrides, the gate's parameter formulas and `gatedattn info`."""

import json
import subprocess
import sys

import pytest

from gatedattn import ConfigError, load_config
from gatedattn.cli.main import main
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
    assert cfg.model.d_model == 64 and cfg.model.rope.scaling == {"rope_type": "yarn", "factor": 4}


@pytest.mark.parametrize("overrides, fragment", [
    ({"model.attention.gate.postion": "g1"}, "did you mean 'position'"),
    ({"model.attention.gate.position": "g7"}, "allowed: none, g1, g2, g3, g4, g5"),
    ({"model.attention.gate.activation": "tanh"}, "allowed: sigmoid, silu, ns_sigmoid, identity"),
    ({"model.attention.num_kv_heads": 3}, "multiple of num_kv_heads"),
    ({"model.attention.gate.position": "g5", "model.attention.gate.granularity": "headwise"}, "g5"),
    ({"model.d_model": "wide"}, "must be an integer"),
    ({"model.rope.scaling.rope_type": "yarn"}, "factor must be a number"),
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
