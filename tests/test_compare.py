"""`gatedattn compare` end to end on a small budget: same data for every variant, report, plots, resume."""

import contextlib
import json
import logging
import re
import subprocess
import sys
from pathlib import Path

import pytest

from gatedattn.experiments import CompareSettings, ComparisonResult, parse_variants, run_compare
from gatedattn.errors import GatedAttnError
from gatedattn.reporting import format_number


def _corpus(tmp_path: Path) -> Path:
    """Four real plays from the built-in corpus as plain .txt files (a small, fast corpus)."""
    from gatedattn.data.corpora import shakespeare_documents

    folder = tmp_path / "plays"
    folder.mkdir()
    for doc in shakespeare_documents()[:4]:
        (folder / f"{doc.name}.txt").write_text(doc.text[:60_000])
    return folder


def _assert_one_number_format(markdown: str) -> None:
    """Every table cell as format_number writes it: no scientific notation, thousands separated."""
    for line in markdown.splitlines():
        for cell in line.strip().strip("|").split("|") if line.startswith("|") else ():
            cell = cell.strip()
            assert not re.search(r"\d[eE][+-]?\d", cell), cell
            plain = re.fullmatch(r"[+-]?(\d+)(\.\d+)?", cell)
            assert not (plain and len(plain.group(1)) >= 4), cell


def test_compare_quick_end_to_end_and_resume(tmp_path, monkeypatch):
    monkeypatch.setenv("GATEDATTN_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "cmp"
    settings = CompareSettings(out=out, quick=True, progress=False, analysis_sequences=2, tasks=["text"], overrides={
        "data.source": str(_corpus(tmp_path)), "data.vocab_size": 400, "data.val_fraction": 0.25,
        "train.max_steps": 4, "train.eval_every": 2, "train.checkpoint_every": 2, "train.batch_size": 4})
    results = run_compare(settings).tasks["text"]
    none, g1 = results.variants["none"], results.variants["g1"]
    for r in (none, g1):
        assert r.train.steps == 4 and r.train.tokens == 4 * 4 * 128
        assert r.val_ppl > 1 and len(r.probes.record["first_token_share"]) == 4
        assert [s for s, _ in r.curves.train] == [1, 2, 3, 4]
    # Same seed and data: the first step's loss differs only through the gate (g1 starts near 0.5 gates).
    assert none.train.tokens == g1.train.tokens
    assert g1.probes.has_gate and not none.probes.has_gate
    assert 0 < g1.probes.gate_mean < 1
    assert g1.parameters - none.parameters == 4 * 128 * 4 * 32  # layers x d_model x heads x head_dim
    report = (out / "report.md").read_text()
    assert "| none |" in report and "| g1 |" in report and "0.467" in report
    _assert_one_number_format(report)
    assert f"| none | {format_number(none.parameters, si=True)} |" in report
    saved = json.loads((out / "text/results.json").read_text())
    assert saved["variants"]["g1"]["val_ppl"] == pytest.approx(g1.val_ppl)
    for plot in saved["plots"]:
        assert (out / "text" / plot).stat().st_size > 1000
    assert any("loss_curves" in p for p in saved["plots"])
    # results.json holds the whole comparison: it reads back into equal dataclasses.
    loaded = ComparisonResult.load(out / "text/results.json")
    assert loaded.to_json() == results.to_json() == ComparisonResult.from_json(loaded.to_json()).to_json()
    assert loaded.variants["g1"].train == g1.train and loaded.variants["g1"].curves == g1.curves
    # Re-running on the same directory reuses the finished runs and their stored measurements: nothing is
    # trained, loaded, evaluated or probed again, and one line per variant says so.
    calls = _count_calls(monkeypatch)
    with _log_lines("gatedattn.experiments") as lines:
        again = run_compare(settings).tasks["text"]
    assert calls == {"train": 0, "from_pretrained": 0, "evaluate_perplexity": 0, "analyze_model": 0}
    assert sum("reused" in line for line in lines) == 2 and any(line.startswith("g1: ") for line in lines)
    assert again.to_json() == results.to_json()
    # --fresh-eval measures again, on the model train() loads from the finished run's checkpoint: the
    # numbers equal those of the in-memory model the first pass measured (no reload then), bit for bit.
    settings.fresh_eval = True
    with _log_lines("gatedattn.experiments") as lines:
        fresh = run_compare(settings).tasks["text"]
    assert calls == {"train": 2, "from_pretrained": 0, "evaluate_perplexity": 2, "analyze_model": 2}
    assert any(line.startswith("evaluating g1 on ") for line in lines) and "probing g1 on 2 held-out sequences" in lines
    for name in ("none", "g1"):
        assert fresh.variants[name].val_ppl == results.variants[name].val_ppl
        assert fresh.variants[name].probes.record["first_token_share"] == \
            results.variants[name].probes.record["first_token_share"]
        assert fresh.variants[name].train == results.variants[name].train  # the training session's summary
    # Other probe settings: the stored probes do not apply, so they are measured again.
    settings.fresh_eval, settings.analysis_sequences = False, 1
    run_compare(settings)
    assert calls["analyze_model"] == 4


def test_compare_runs_the_sink_lab_first_with_probes_during_training(tmp_path, monkeypatch):
    monkeypatch.setenv("GATEDATTN_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "cmp"
    lab = {"model.d_model": 32, "model.ffn_dim": 64, "model.attention.head_dim": 32, "train.batch_size": 8,
           "train.max_steps": 6, "train.probe_every": 3, "train.checkpoint_every": 6, "data.seq_len": 32,
           "data.bigram_backcopy.train_sequences": 200, "data.bigram_backcopy.val_sequences": 16}
    text = {"data.source": str(_corpus(tmp_path)), "data.vocab_size": 400, "data.val_fraction": 0.25,
            "train.max_steps": 2, "train.eval_every": 2, "train.checkpoint_every": 2, "train.batch_size": 2}
    comparison = run_compare(CompareSettings(out=out, quick=True, progress=False, analysis_sequences=2,
                                             lab_overrides=lab, overrides=text))
    assert list(comparison.tasks) == ["lab", "text"]
    lab_result = comparison.tasks["lab"]
    for name in ("none", "g1"):
        v = lab_result.variants[name]
        assert [step for step, _ in v.sink_curve] == [0, 3, 6]  # the probes logged during training
        assert v.lab.loss >= v.lab.bayes_loss - 0.05 and v.lab.excess_loss == pytest.approx(v.lab.loss - v.lab.bayes_loss)
        assert 0 <= v.sink.f_attn_dormant <= 1 and 0 <= v.sink.f_attn_active <= 1
        assert v.sink.f_attn_dormant == pytest.approx(v.probes.record["f_attn_dormant"])
    assert lab_result.variants["g1"].sink.gate_mean is not None
    assert (out / "lab/sink_formation.png").stat().st_size > 1000
    loaded = ComparisonResult.load(out / "lab/results.json")
    assert loaded.to_json() == lab_result.to_json() and loaded.variants["g1"].sink == lab_result.variants["g1"].sink
    report = (out / "report.md").read_text()
    assert report.index("## Sink lab") < report.index("## Natural text")
    assert "| none |" in report.split("## Natural text")[0] and "sink_formation" in report
    _assert_one_number_format(report)
    # The shared parts of the report are what results.json holds: it rebuilds from the files alone.
    from gatedattn.experiments.compare import Comparison
    from gatedattn.experiments.report import report_markdown

    rebuilt = Comparison({t: ComparisonResult.load(out / t / "results.json") for t in ("lab", "text")})
    assert report_markdown(rebuilt) == report


def _count_calls(monkeypatch) -> dict:
    """Count calls of what re-measuring would use, by wrapping the library functions compare looks up."""
    import gatedattn.analysis
    import gatedattn.evaluation.perplexity
    import gatedattn.training
    from gatedattn.modeling.model import GatedLM

    calls = {"train": 0, "from_pretrained": 0, "evaluate_perplexity": 0, "analyze_model": 0}

    def counted(name, fn):
        def wrapper(*args, **kwargs):
            calls[name] += 1
            return fn(*args, **kwargs)
        return wrapper

    monkeypatch.setattr(gatedattn.training, "train", counted("train", gatedattn.training.train))
    monkeypatch.setattr(gatedattn.evaluation.perplexity, "evaluate_perplexity",
                        counted("evaluate_perplexity", gatedattn.evaluation.perplexity.evaluate_perplexity))
    monkeypatch.setattr(gatedattn.analysis, "analyze_model", counted("analyze_model", gatedattn.analysis.analyze_model))
    monkeypatch.setattr(GatedLM, "from_pretrained", classmethod(counted("from_pretrained",
                                                                        GatedLM.from_pretrained.__func__)))
    return calls


@contextlib.contextmanager
def _log_lines(logger_name: str):
    lines: list[str] = []
    handler = logging.Handler(logging.INFO)
    handler.emit = lambda record: lines.append(record.getMessage())
    logger = logging.getLogger(logger_name)
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield lines
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def test_variant_names_are_checked(tmp_path):
    assert parse_variants("none, g1,g1-headwise") == ["none", "g1", "g1-headwise"]
    with pytest.raises(GatedAttnError, match="allowed: none, g1"):
        parse_variants("none,g7")
    proc = subprocess.run([sys.executable, "-m", "gatedattn.cli.main", "compare", "--variants", "g9",
                           "--out", str(tmp_path / "x")], capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "g9" in proc.stderr
    assert not (tmp_path / "x").exists()
