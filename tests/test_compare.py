"""`gatedattn compare` end to end on a small budget: same data for every variant, report, plots, resume."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from gatedattn.compare import CompareSettings, parse_variants, run_compare
from gatedattn.errors import GatedAttnError


def _corpus(tmp_path: Path) -> Path:
    """Four real plays from the built-in corpus as plain .txt files (a small, fast corpus)."""
    from gatedattn.data.corpora import shakespeare_documents

    folder = tmp_path / "plays"
    folder.mkdir()
    for doc in shakespeare_documents()[:4]:
        (folder / f"{doc.name}.txt").write_text(doc.text[:60_000])
    return folder


def test_compare_quick_end_to_end_and_resume(tmp_path, monkeypatch):
    monkeypatch.setenv("GATEDATTN_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "cmp"
    settings = CompareSettings(out=out, quick=True, progress=False, analysis_sequences=2, overrides={
        "data.source": str(_corpus(tmp_path)), "data.vocab_size": 400, "data.val_fraction": 0.25,
        "train.max_steps": 4, "train.eval_every": 2, "train.checkpoint_every": 2, "train.batch_size": 4})
    results = run_compare(settings)
    none, g1 = results["variants"]["none"], results["variants"]["g1"]
    for r in (none, g1):
        assert r["train"]["steps"] == 4 and r["train"]["tokens"] == 4 * 4 * 128
        assert r["val_ppl"] > 1 and len(r["analysis"]["first_token_share"]) == 4
        assert [s for s, _ in r["curves"]["train"]] == [1, 2, 3, 4]
    # Same seed and data: the first step's loss differs only through the gate (g1 starts near 0.5 gates).
    assert none["train"]["tokens"] == g1["train"]["tokens"]
    assert g1["analysis"]["has_gate"] and not none["analysis"]["has_gate"]
    assert 0 < g1["analysis"]["gate_mean"] < 1
    assert g1["parameters"] - none["parameters"] == 4 * 128 * 4 * 32  # layers x d_model x heads x head_dim
    report = (out / "report.md").read_text()
    assert "| none |" in report and "| g1 |" in report and "0.467" in report
    saved = json.loads((out / "results.json").read_text())
    assert saved["variants"]["g1"]["val_ppl"] == pytest.approx(g1["val_ppl"])
    for plot in saved["plots"]:
        assert (out / plot).stat().st_size > 1000
    assert any("loss_curves" in p for p in saved["plots"])
    # Re-running on the same directory reuses the finished runs: identical numbers, no retraining.
    again = run_compare(settings)
    assert again["variants"]["g1"]["val_ppl"] == pytest.approx(g1["val_ppl"])
    assert again["variants"]["none"]["train"]["steps"] == 4


def test_variant_names_are_checked(tmp_path):
    assert parse_variants("none, g1,g1-headwise") == ["none", "g1", "g1-headwise"]
    with pytest.raises(GatedAttnError, match="allowed: none, g1"):
        parse_variants("none,g7")
    proc = subprocess.run([sys.executable, "-m", "gatedattn.cli.main", "compare", "--variants", "g9",
                           "--out", str(tmp_path / "x")], capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "g9" in proc.stderr
    assert not (tmp_path / "x").exists()
