"""`gatedattn sweep`: spec validation, the seed statistics against scipy, the paired differences against the
runs themselves, resume after a kill, reuse of finished runs, and --jobs 2 equal to --jobs 1."""

import csv
import json
import math
import os
import sys
from pathlib import Path

import pytest

from gatedattn.cli.main import main
from gatedattn.errors import GatedAttnError
from gatedattn.experiments.spec import SPECS, from_dict, load_spec
from gatedattn.experiments.stats import Estimate, PairedDifference, paired_t_pvalue, permutation_pvalue, t_cdf, t_ppf
from gatedattn.experiments.sweep import RUN_RECORD, SweepSettings, plan_sweep, run_sweep

from conftest import kill_when_paused

# A sink-lab sweep that trains in about a second a run: a narrow model, a few steps, a small data set.
TINY_LAB = {"train.max_steps": 4, "train.batch_size": 4, "train.probe_every": 2, "train.checkpoint_every": 2,
            "train.warmup_steps": 1, "model.d_model": 32, "model.ffn_dim": 64, "model.attention.head_dim": 32,
            "data.bigram_backcopy.train_sequences": 400, "data.bigram_backcopy.val_sequences": 16}


def tiny_spec(**changes):
    return from_dict({"name": "tiny", "tasks": ["lab"], "lab_set": TINY_LAB, "seeds": [0, 1],
                      "grid": {"variant": ["none", "g1"]}, "eval_batches": 2, **changes})


# --- statistics -------------------------------------------------------------------------------------------

def test_t_distribution_matches_scipy():
    stats = pytest.importorskip("scipy.stats")
    for df in (1, 2, 3, 4, 7, 30):
        for t in (-6.0, -2.1, -0.3, 0.0, 0.9, 3.3):
            assert t_cdf(t, df) == pytest.approx(stats.t.cdf(t, df), abs=1e-12)
        assert t_ppf(0.975, df) == pytest.approx(stats.t.ppf(0.975, df), abs=1e-9)


def test_interval_and_paired_tests_match_scipy():
    stats = pytest.importorskip("scipy.stats")
    a = {0: 1.71, 1: 1.69, 2: 1.75, 3: 1.70, 4: 1.72}
    b = {0: 1.73, 1: 1.72, 2: 1.74, 3: 1.74, 4: 1.76, 9: 0.0}  # seed 9 has no partner: left out
    p = PairedDifference.of(a, b)
    diffs = [a[s] - b[s] for s in range(5)]
    assert p.n == 5 and p.diff.mean == pytest.approx(sum(diffs) / 5)
    assert p.p_t == pytest.approx(stats.ttest_rel([a[s] for s in range(5)], [b[s] for s in range(5)]).pvalue)
    low, high = stats.t.interval(0.95, 4, loc=sum(diffs) / 5, scale=stats.sem(diffs))
    assert (p.diff.low, p.diff.high) == (pytest.approx(low), pytest.approx(high))
    exact = stats.permutation_test((diffs,), lambda d: sum(d) / len(d), permutation_type="samples",
                                   n_resamples=math.inf, alternative="two-sided")
    assert p.p_perm == pytest.approx(exact.pvalue)


def test_sign_flip_test_by_hand():
    # |sum| of [0.1, 0.3, -0.05, 0.2] is 0.55; flips of -0.05 give 0.65: 4 of the 16 sign patterns reach 0.55.
    assert permutation_pvalue([0.1, 0.3, -0.05, 0.2]) == pytest.approx(4 / 16)
    assert permutation_pvalue([1.0, 2.0, 3.0]) == pytest.approx(2 / 8)  # the floor with 3 seeds
    assert paired_t_pvalue([0.5]) is None and paired_t_pvalue([0.2, 0.2]) == 0.0
    e = Estimate.of([2.0, float("nan"), None, 4.0])
    assert (e.n, e.mean) == (2, 3.0) and e.high - e.mean == pytest.approx(12.706204736 * 1.0, rel=1e-6)


# --- specs --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("changes, message", [
    ({"gird": {}}, "unknown key(s) ['gird']"),
    ({"grid": {}}, "the grid is empty"),
    ({"grid": {"variant": []}}, "non-empty list"),
    ({"grid": {"variant": ["none", "g9"]}}, "unknown variant(s) ['g9']"),
    ({"grid": {"lr": [0.1]}}, "neither 'variant' nor a dotted config key"),
    ({"grid": {"variant": ["g1"]}}, "baseline 'none' is not among"),
    ({"baseline_axis": "train.lr"}, "baseline_axis 'train.lr' is not an axis of the grid"),
    ({"grid": {"variant": ["g1"], "train.lr": [0.1]}, "baseline_axis": "train.lr", "baseline": "0.2"},
     "baseline '0.2' is not among the grid's values of 'train.lr'"),
    ({"seeds": [0, 0]}, "seeds must be distinct"),
    ({"tasks": ["lab", "speech"]}, "tasks must list"),
    ({"quick": {"name": "x"}}, "quick may not set ['name']"),
])
def test_bad_specs_are_one_line_errors(changes, message):
    with pytest.raises(GatedAttnError) as e:
        tiny_spec(**changes)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_bad_spec_on_the_command_line_exits_2_before_anything_is_written(tmp_path, capsys):
    spec = tmp_path / "bad.yaml"
    spec.write_text("name: bad\ntasks: [lab]\ngrid: {variant: [none, g1], train.lrr: [0.1]}\n")
    out = tmp_path / "out"
    assert main(["sweep", str(spec), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("gatedattn sweep: error:") and "lrr" in err and len(err.splitlines()) == 1
    assert not out.exists()
    assert main(["sweep", "paper-table9"]) == 2
    assert "paper-table4" in capsys.readouterr().err


def test_builtin_specs_plan_every_run(tmp_path):
    for name in SPECS:
        for spec in (load_spec(name), load_spec(name).with_quick()):
            plans, skipped = plan_sweep(spec, tmp_path)
            cells = len(spec.cells())
            assert len(plans) + len(skipped) * len(spec.seeds) == cells * len(spec.seeds) * len(spec.tasks)
            assert {p.task for p in plans} == {"lab", "text"}
    quick = load_spec("paper-table4").with_quick()
    assert quick.seeds == [0, 1] and quick.grid["variant"][0] == "none" and quick.name == "paper-table4"


def test_parameter_matched_baselines_add_about_what_the_gate_adds():
    from gatedattn import GatedLM
    from gatedattn.experiments.variants import task_config, variant_overrides

    def params(variant):
        base = task_config("text", {}, quick=True)
        cfg = task_config("text", variant_overrides(variant, base), quick=True)
        return sum(p.numel() for p in GatedLM(cfg.model).parameters())

    none = params("none")
    g1 = params("g1") - none
    model = task_config("text", {}, quick=True).model
    # The FFN widened by the gate's parameters, rounded up to whole FFN units (3 x d_model each) per layer.
    assert 0 <= (params("more-experts") - none) - g1 < 3 * model.d_model * model.num_layers
    assert params("more-q-heads") - none == g1  # half the heads again: their q and o rows = the gate's weights
    moe = variant_overrides("more-experts", task_config("text", {}, preset="paper-moe-15a2b"))
    assert moe == {"model.moe.num_experts": 132, "model.moe.top_k": 12}
    with pytest.raises(GatedAttnError, match="cannot be doubled"):
        variant_overrides("more-kv-heads", task_config("lab", {}))


# --- running ------------------------------------------------------------------------------------------------

def _metrics(out: Path) -> dict:
    """summary.json without the wall time (the only field a resumed or parallel sweep may change)."""
    summary = json.loads((out / "summary.json").read_text())
    return summary["tasks"]


def test_sweep_end_to_end_statistics_match_the_runs(tmp_path, shared_cache):
    spec = tiny_spec(grid={"variant": ["none", "g1"], "train.lr": [1e-3, 1e-2]}, paper="table4")
    summary = run_sweep(spec, SweepSettings(out=tmp_path / "sw", progress=False))
    out = tmp_path / "sw"
    for name in ("summary.md", "summary.json", "runs.csv", "plots/lab_loss_curves.png", "plots/lab_val_loss.png",
                 "plots/lab_lr_vs_loss.png", "plots/lab_sink_formation.png"):
        assert (out / name).is_file(), name
    rows = list(csv.DictReader((out / "runs.csv").open()))
    assert len(rows) == 8 and {"train.lr", "train.seed", "model.attention.gate.position"} <= set(rows[0])
    loss = {(r["cell"], int(r["seed"])): float(r["val_loss"]) for r in rows}
    cells = {c.cell_id: c for c in summary.tasks["lab"]}
    g1 = cells["g1_lr=0.01"]
    assert g1.baseline == "none_lr=0.01" and g1.added_parameters == 32 * 32  # d_model x heads x head_dim
    diffs = [loss[("g1_lr=0.01", s)] - loss[("none_lr=0.01", s)] for s in (0, 1)]
    assert g1.paired["val_loss"].diff.mean == pytest.approx(sum(diffs) / 2)
    assert g1.metrics["val_loss"].mean == pytest.approx((loss[("g1_lr=0.01", 0)] + loss[("g1_lr=0.01", 1)]) / 2)
    report = (out / "summary.md").read_text()
    assert "| `g1_lr=0.01` | 2 |" in report and "lr 0.001 | lr 0.01" in report

    # A second sweep on the same OUT trains nothing and writes the same summary.
    records = sorted(out.glob(f"lab/runs/*/seed*/{RUN_RECORD}"))
    stamps = [p.stat().st_mtime_ns for p in records]
    before = _metrics(out)
    run_sweep(spec, SweepSettings(out=out, progress=False))
    assert [p.stat().st_mtime_ns for p in records] == stamps and _metrics(out) == before

    # Paired along another axis (the same runs, reused): each lr against lr 0.001 of the same variant.
    by_lr = run_sweep(tiny_spec(grid=spec.grid, paper="table4", baseline_axis="train.lr", baseline="1e-3"),
                      SweepSettings(out=out, progress=False))
    assert [p.stat().st_mtime_ns for p in records] == stamps
    cells = {c.cell_id: c for c in by_lr.tasks["lab"]}
    assert cells["g1_lr=0.001"].baseline is None and cells["g1_lr=0.01"].baseline == "g1_lr=0.001"
    diffs = [loss[("g1_lr=0.01", s)] - loss[("g1_lr=0.001", s)] for s in (0, 1)]
    assert cells["g1_lr=0.01"].paired["val_loss"].diff.mean == pytest.approx(sum(diffs) / 2)
    assert "minus the `train.lr=0.001` cell" in (out / "summary.md").read_text()


def test_diverged_runs_are_counted_not_averaged(tmp_path, shared_cache):
    summary = run_sweep(tiny_spec(divergence_loss=0.01, paper="table4"),
                        SweepSettings(out=tmp_path / "sw", progress=False))
    for c in summary.tasks["lab"]:
        assert c.diverged == 2 and c.metrics["val_loss"].mean is None
        assert c.metrics["f_attn_dormant"].n == 2  # the probes of a diverged run are still reported
    report = (tmp_path / "sw" / "summary.md").read_text()
    assert "(2 diverged)" in report
    assert "| `g1` | (2) SDPA Elementwise Gate | 0.116 | 94 | 0.048 |" in report  # the paper's row beside ours


CHILD = """
import sys, time
from gatedattn.experiments import sweep
from gatedattn.experiments.spec import from_dict
spec = from_dict({spec!r})
calls = []
real = sweep.execute
def execute(plan, *args, **kwargs):
    calls.append(plan)
    if len(calls) == 3:  # two runs finished and recorded
        print("PAUSED", file=sys.stderr, flush=True)
        time.sleep(120)
    return real(plan, *args, **kwargs)
sweep.execute = execute
sweep.run_sweep(spec, sweep.SweepSettings(out=sys.argv[1], progress=False))
"""


def test_killed_sweep_resumes_reusing_finished_runs(tmp_path, shared_cache):
    spec = tiny_spec()
    out = tmp_path / "killed"
    kill_when_paused(CHILD.format(spec=spec.to_dict()), str(out))
    finished = sorted(out.glob(f"lab/runs/*/seed*/{RUN_RECORD}"))
    assert len(finished) == 2
    stamps = [p.stat().st_mtime_ns for p in finished]
    run_sweep(spec, SweepSettings(out=out, progress=False))
    assert [p.stat().st_mtime_ns for p in finished] == stamps  # reused, not retrained
    run_sweep(spec, SweepSettings(out=tmp_path / "whole", progress=False))
    assert _metrics(out) == _metrics(tmp_path / "whole")


@pytest.mark.skipif(sys.platform == "win32", reason="spawned workers")
def test_two_jobs_give_the_numbers_of_one(tmp_path, shared_cache):
    spec = tiny_spec()
    run_sweep(spec, SweepSettings(out=tmp_path / "one", jobs=1, threads=1, progress=False))
    run_sweep(spec, SweepSettings(out=tmp_path / "two", jobs=2, threads=1, progress=False))
    assert _metrics(tmp_path / "one") == _metrics(tmp_path / "two")
    assert os.path.isfile(tmp_path / "two" / "summary.md")


def test_run_fingerprints_survive_train_compile_becoming_a_mode():
    """Runs stored while train.compile was a boolean (default false) keep their fingerprint under the new
    default, so a sweep reuses them instead of retraining."""
    import dataclasses
    import hashlib

    from gatedattn import load_config
    from gatedattn.experiments.sweep import ANALYSIS_SEQUENCES, RunPlan, fingerprint

    plan = RunPlan("lab", {}, "none", 0, {}, "unused", 2, "quick", None)

    def legacy(cfg, compile_flag):  # the old computation, on the old config format
        tree = dataclasses.asdict(cfg)
        tree["train"]["compile"] = compile_flag
        settings = {"config": tree, "eval_batches": 2, "analysis": ANALYSIS_SEQUENCES}
        return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]

    for mode, old in (("auto", False), ("off", False), ("model", True)):
        cfg = load_config("tiny", {"train.compile": mode})
        assert fingerprint(cfg, plan) == legacy(cfg, old), mode
    blocks = load_config("tiny", {"train.compile": "blocks"})
    assert fingerprint(blocks, plan) not in {legacy(blocks, False), legacy(blocks, True)}


def test_dsa_run_fingerprints_survive_the_indexer_dtype_setting():
    """A DSA run stored before model.attention.sparse.indexer_dtype existed keeps its fingerprint at the
    default (float32); bfloat16 is a different run."""
    import dataclasses
    import hashlib

    from gatedattn import load_config
    from gatedattn.experiments.sweep import ANALYSIS_SEQUENCES, RunPlan, fingerprint

    plan = RunPlan("lab", {}, "dsa", 0, {}, "unused", 2, "quick", None)

    def legacy(cfg):  # the computation before the setting, on the config without it
        tree = dataclasses.asdict(cfg)
        tree["train"]["compile"] = False
        del tree["model"]["attention"]["sparse"]["indexer_dtype"]
        settings = {"config": tree, "eval_batches": 2, "analysis": ANALYSIS_SEQUENCES}
        return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]

    dsa = {"model.attention.sparse.type": "dsa"}
    cfg = load_config("tiny", dsa)
    assert fingerprint(cfg, plan) == legacy(cfg)
    bf16 = load_config("tiny", {**dsa, "model.attention.sparse.indexer_dtype": "bfloat16"})
    assert fingerprint(bf16, plan) != legacy(bf16)
