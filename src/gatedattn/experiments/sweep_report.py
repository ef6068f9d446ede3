"""A sweep's statistics and outputs: per cell the mean and 95% interval over seeds of every metric, the
differences against the baseline cell paired by seed (paired t-test and exact sign-flip test), and
summary.md (tables shaped like the paper's, its numbers beside ours), summary.json, runs.csv and PNGs.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from ..fileio import atomic_write_text
from ..reporting import format_number, pyplot
from .paper import TABLE2, TABLES
from .spec import VARIANT_AXIS, SweepSpec
from .stats import Estimate, PairedDifference


def _sink(attr):
    return lambda r: getattr(r.sink, attr) if r.sink is not None else None


def _lab(attr):
    return lambda r: getattr(r.lab, attr) if r.lab is not None else None


def _stability(attr):
    return lambda r: getattr(r.stability, attr) if r.stability is not None else None


def _sink_slots(r) -> float | None:
    """DSA: the share of the selected slots that go to the first token, over the model's DSA layers."""
    shares = [s for s in r.probes.record.get("sink_slot_share") or [] if s is not None]
    return sum(shares) / len(shares) if shares else None


# metric -> (label, value of a VariantResult). Lower is better for every loss; the rest are descriptive.
METRICS = {
    "val_loss": ("val loss", lambda r: r.val_loss),
    "val_ppl": ("val ppl", lambda r: r.val_ppl),
    "f_attn": ("F-Attn", lambda r: r.probes.f_attn),
    "m_act": ("M-Act", lambda r: r.probes.m_act),
    "gate_mean": ("gate mean", lambda r: r.probes.gate_mean),
    "sink_rate": ("sink rate", lambda r: r.probes.record.get("sink_rate")),
    "f_attn_dormant": ("dormant share", _sink("f_attn_dormant")),
    "f_attn_active": ("active share", _sink("f_attn_active")),
    "value_drain": ("value drain", _sink("value_drain")),
    "excess_loss": ("excess loss", _lab("excess_loss")),
    "copy_loss": ("copy loss", _lab("copy_loss")),
    "sink_slot_share": ("sink slot share", _sink_slots),
    "max_grad_norm": ("max grad norm", _stability("max_grad_norm")),
    "spikes": ("loss spikes", _stability("spikes")),
    "largest_spike": ("largest spike", _stability("largest_spike")),
}
PAIRED = ("val_loss", "f_attn", "m_act", "f_attn_dormant", "excess_loss")  # differences tested against baseline
PER_SEED = ("f_attn_dormant", "sink_rate")  # shown seed by seed too: a sink forms in some seeds and not others


@dataclass
class CellSummary:
    task: str
    cell: dict
    cell_id: str
    seeds: list[int]
    diverged: int  # runs that diverged
    parameters: int | None
    added_parameters: int | None  # against the baseline cell
    baseline: str | None  # the cell id paired against (None for the baseline itself)
    metrics: dict[str, Estimate] = field(default_factory=dict)
    paired: dict[str, PairedDifference] = field(default_factory=dict)
    values: dict[str, dict] = field(default_factory=dict, repr=False)  # metric -> seed -> value


@dataclass
class SweepSummary:
    spec: SweepSpec
    tasks: dict[str, list[CellSummary]]
    skipped: list[str]
    wall_s: float
    runs: int
    settings: dict  # task -> the budget every run of it shares (steps, batch, tokens, preset)

    def to_dict(self) -> dict:
        return {"spec": self.spec.to_dict(), "runs": self.runs, "wall_s": self.wall_s, "skipped": self.skipped,
                "settings": self.settings,
                "tasks": {t: [dataclasses.asdict(c) for c in cells] for t, cells in self.tasks.items()}}


def summarize(spec: SweepSpec, records: list, skipped: list[str], wall_s: float = 0.0) -> SweepSummary:
    tasks, settings = {}, {}
    for task in spec.tasks:
        mine = [r for r in records if r.task == task]
        if not mine:
            continue
        settings[task] = _task_settings(mine)
        by_cell: dict[str, list] = {}
        for r in mine:
            by_cell.setdefault(r.cell_id, []).append(r)
        cells = {cid: _cell(rs) for cid, rs in by_cell.items()}
        for c in cells.values():
            base_id = _baseline_of(c, cells, spec)
            if base_id is None:
                continue
            base = cells[base_id]
            c.baseline = base_id
            c.paired = {m: PairedDifference.of(c.values[m], base.values[m]) for m in PAIRED
                        if c.values[m] and base.values[m]}
            if c.parameters is not None and base.parameters is not None:
                c.added_parameters = c.parameters - base.parameters
        tasks[task] = list(cells.values())
    return SweepSummary(spec, tasks, skipped, wall_s, len(records), settings)


def _cell(records: list) -> CellSummary:
    first = records[0]
    values = {m: {r.seed: getter(r.result) for r in records if r.result is not None}
              for m, (_, getter) in METRICS.items()}
    values = {m: {s: v for s, v in vs.items() if v is not None} for m, vs in values.items()}
    for m in ("val_loss", "val_ppl"):  # a diverged run has no loss to average
        values[m] = {r.seed: values[m][r.seed] for r in records if not r.diverged and r.seed in values[m]}
    params = next((r.result.parameters for r in records if r.result is not None), None)
    return CellSummary(first.task, first.cell, first.cell_id, sorted(r.seed for r in records),
                       sum(r.diverged for r in records), params, None, None,
                       {m: Estimate.of(vs.values()) for m, vs in values.items()}, {}, values)


def _baseline_of(cell: CellSummary, cells: dict, spec: SweepSpec) -> str | None:
    axis, value = spec.baseline_axis, spec.baseline_value()
    if axis not in cell.cell or cell.cell[axis] == value:
        return None
    target = {**cell.cell, axis: value}
    return next((cid for cid, c in cells.items() if c.cell == target), None)


def _task_settings(records: list) -> dict:
    cfg = records[0].config
    keys = ("train.max_steps", "train.batch_size", "data.seq_len", "train.lr", "model.d_model",
            "model.num_layers", "data.source")
    out = {k: cfg.get(k) for k in keys}
    out["tokens"] = cfg["train.max_steps"] * cfg["train.batch_size"] * cfg["train.grad_accum"] * cfg["data.seq_len"]
    return out


# ---------------------------------------------------------------------------------------------------------
# Outputs

def varied_keys(records: list) -> list[str]:
    """The config keys whose value differs between runs (train.seed included)."""
    keys = sorted({k for r in records for k in r.config})
    return [k for k in keys if len({json.dumps(r.config.get(k), default=str) for r in records}) > 1]


def runs_csv(records: list) -> str:
    varied = varied_keys(records)
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["task", "cell", "seed", "diverged", "error", *varied, "parameters", "steps", "tokens_per_s",
                     *METRICS])
    for r in records:
        res = r.result
        writer.writerow([r.task, r.cell_id, r.seed, r.diverged, r.error or "",
                         *[r.config.get(k) for k in varied],
                         res.parameters if res else "", res.train.steps if res else "",
                         round(res.train.tokens_per_s) if res else "",
                         *[("" if res is None or (v := getter(res)) is None else v) for _, getter in METRICS.values()]])
    return buf.getvalue()


def write_outputs(summary: SweepSummary, records: list, out: Path) -> list[Path]:
    out = Path(out)
    atomic_write_text(out / "summary.json", json.dumps(summary.to_dict(), indent=1, default=_json_default))
    atomic_write_text(out / "runs.csv", runs_csv(records))
    plots = write_plots(summary, records, out / "plots")
    atomic_write_text(out / "summary.md", summary_markdown(summary, [p.relative_to(out) for p in plots]))
    return [out / "summary.md", out / "summary.json", out / "runs.csv", *plots]


def _json_default(x):
    return x if not isinstance(x, float) or math.isfinite(x) else None


def _est(e: Estimate, digits: int = 3, seeds: dict | None = None) -> str:
    """``mean ± half-width``; with ``seeds`` (seed -> value) the values themselves follow, in seed order."""
    if e.mean is None:
        return "–"
    text = format_number(e.mean, digits)
    if e.low is not None:
        text += f" ± {format_number((e.high - e.low) / 2, 2)}"
    if seeds:
        text += " (" + ", ".join(format_number(seeds[s], 2) for s in sorted(seeds)) + ")"
    return text


def _diff(p: PairedDifference | None) -> str:
    if p is None or p.diff.mean is None:
        return "–"
    d = p.diff
    ci = f" [{d.low:+.4f}, {d.high:+.4f}]" if d.low is not None else ""
    return f"{d.mean:+.4f}{ci}"


def _short_diff(p: PairedDifference | None) -> str:
    """``Δ (p_t)``: the paired mean difference and its t-test p-value."""
    if p is None or p.diff.mean is None:
        return "–"
    return f"{format_number(p.diff.mean, 2)} ({format_number(p.p_t, 2)})" if p.p_t is not None else \
        format_number(p.diff.mean, 2)


def _pvalues(p: PairedDifference | None) -> str:
    if p is None or p.p_perm is None:
        return "–"
    t = format_number(p.p_t, 2) if p.p_t is not None else "–"
    return f"{t} / {format_number(p.p_perm, 2)}"


_LAB_COLUMNS = ("excess_loss", "f_attn_dormant", "f_attn_active", "sink_rate", "value_drain", "gate_mean", "m_act")
_TEXT_COLUMNS = ("val_ppl", "f_attn", "m_act", "gate_mean")
_STABILITY_COLUMNS = ("max_grad_norm", "spikes")
TASK_TITLES = {"lab": "Sink lab (Bigram-Backcopy)", "text": "Natural text"}


def _baseline_name(spec: SweepSpec) -> str:
    if spec.baseline_axis == VARIANT_AXIS:
        return f"`{spec.baseline}`"
    return f"`{spec.baseline_axis}={spec.baseline_value()}`"


def summary_markdown(summary: SweepSummary, plots: list) -> str:
    spec = summary.spec
    n_seeds = len(spec.seeds)
    lines = [f"# Sweep `{spec.name}`", "", *([spec.description, ""] if spec.description else []),
             f"{summary.runs} runs: {n_seeds} seeds ({', '.join(map(str, spec.seeds))}) per cell; "
             f"wall time {format_number(summary.wall_s / 60, 2)} min (runs reused from an earlier sweep count "
             "as zero).", "",
             "Each number is the mean over seeds ± the half-width of its 95% Student-t interval. Δ is the cell "
             f"minus the {_baseline_name(spec)} cell of the same seed (paired), with its 95% interval; p is the paired "
             "t-test / the exact sign-flip permutation test (two-sided). With n seeds the sign-flip p cannot go "
             f"below 2/2^n ({format_number(2 / 2 ** n_seeds, 2)} here), so a difference needs both the interval "
             "clear of zero and enough seeds before it is called one."]
    if summary.skipped:
        lines += ["", *[f"- {line}" for line in summary.skipped]]
    for task, cells in summary.tasks.items():
        s = summary.settings[task]
        lines += ["", f"## {TASK_TITLES[task]}", "",
                  f"{s['train.max_steps']} steps of {s['train.batch_size']} x {s['data.seq_len']} tokens "
                  f"({format_number(s['tokens'], si=True)} tokens) per run; d_model {s['model.d_model']}, "
                  f"{s['model.num_layers']} layer(s); data {s['data.source']}.", ""]
        columns = (_LAB_COLUMNS if task == "lab" else _TEXT_COLUMNS) + _STABILITY_COLUMNS
        if any(c.metrics["sink_slot_share"].n for c in cells):  # DSA cells: the sink's share of top-k
            columns += ("sink_slot_share",)
        lines += _cell_table(cells, columns)
        if "train.lr" in spec.grid:
            lines += ["", *_lr_table(cells, spec)]
        if spec.paper in TABLES and VARIANT_AXIS in spec.grid:
            lines += ["", *_paper_table(cells, spec.paper, task)]
    if spec.paper == "table2":
        lines += ["", "## The paper's Table 2 (1.7B dense models)", "",
                  "| setting | method | max LR | avg PPL |", "|---|---|---|---|"]
        lines += [f"| {s} | {m} | {lr:g} | {'diverged' if ppl is None else ppl} |" for s, m, lr, ppl in TABLE2]
    if plots:
        lines += ["", "## Plots", ""] + [f"![{p.stem}]({p.as_posix()})" for p in plots]
    return "\n".join(lines) + "\n"


def _cell_table(cells: list[CellSummary], columns: tuple[str, ...]) -> list[str]:
    head = ["cell", "runs", "val loss", "Δ loss", "p (t / perm)", *[METRICS[c][0] for c in columns], "added params"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for c in cells:
        runs = f"{len(c.seeds)}" + (f" ({c.diverged} diverged)" if c.diverged else "")
        added = "–" if c.added_parameters is None else f"{c.added_parameters:+,}"
        lines.append("| " + " | ".join([f"`{c.cell_id}`", runs, _est(c.metrics["val_loss"], 4),
                                       _diff(c.paired.get("val_loss")), _pvalues(c.paired.get("val_loss")),
                                       *[_est(c.metrics[m], seeds=c.values[m] if m in PER_SEED else None)
                                         for m in columns], added]) + " |")
    return lines


def _by_learning_rate(cells: list[CellSummary], spec: SweepSpec) -> dict[str, dict]:
    """The cells grouped by their other axes ("g1, sandwich_norm=True"), each group as lr -> cell."""
    groups: dict[str, dict] = {}
    for c in cells:
        label = ", ".join(f"{a.rsplit('.', 1)[-1]}={c.cell[a]}" if a != VARIANT_AXIS else str(c.cell[a])
                          for a in spec.grid if a != "train.lr")
        groups.setdefault(label, {})[c.cell["train.lr"]] = c
    return groups


def _lr_table(cells: list[CellSummary], spec: SweepSpec) -> list[str]:
    """Final loss by learning rate, one column per (variant, other axes): the stability picture."""
    groups = _by_learning_rate(cells, spec)
    lrs = spec.grid["train.lr"]
    lines = ["Final validation loss by peak learning rate (diverged runs: non-finite or above ln(vocab), "
             "counted, not averaged):", "", "| | " + " | ".join(f"lr {lr:g}" for lr in lrs) + " |",
             "|---|" + "---|" * len(lrs)]
    for label, by_lr in groups.items():
        row = []
        for lr in lrs:
            c = by_lr.get(lr)
            if c is None:
                row.append("–")
                continue
            text = _est(c.metrics["val_loss"], 4)
            if c.diverged:
                text += f" ({c.diverged}/{len(c.seeds)} diverged)"
            row.append(text)
        lines.append(f"| {label} | " + " | ".join(row) + " |")
    return lines


def _paper_table(cells: list[CellSummary], table: str, task: str) -> list[str]:
    t = TABLES[table]
    ours = {c.cell[VARIANT_AXIS]: c for c in cells if len(c.cell) == 1}
    if not ours:
        return []
    share = "f_attn" if task == "text" else "f_attn_dormant"
    head = ["variant", "paper row", *[f"paper: {col}" for col in t.columns], "here: val loss", "here: Δ loss (p_t)",
            f"here: {METRICS[share][0]}", "Δ (p_t)", "here: M-Act", "Δ (p_t)", "here: gate mean"]
    lines = [f"Beside the paper's {t.title} ({t.scale}; ours trains models of about a million parameters on "
             "a few million tokens):", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for variant, c in ours.items():
        label, values = t.rows.get(variant, ("not in the table", (None,) * len(t.columns)))
        lines.append("| " + " | ".join([f"`{variant}`", label, *[format_number(v) for v in values],
                                       _est(c.metrics["val_loss"], 4), _short_diff(c.paired.get("val_loss")),
                                       _est(c.metrics[share]), _short_diff(c.paired.get(share)),
                                       _est(c.metrics["m_act"]), _short_diff(c.paired.get("m_act")),
                                       _est(c.metrics["gate_mean"])]) + " |")
    return lines


# ---------------------------------------------------------------------------------------------------------
# Plots

def write_plots(summary: SweepSummary, records: list, out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for task, cells in summary.tasks.items():
        mine = [r for r in records if r.task == task and r.result is not None]
        written.append(_plot_curves(cells, mine, out / f"{task}_loss_curves.png", TASK_TITLES[task]))
        written.append(_plot_bars(cells, out / f"{task}_val_loss.png", TASK_TITLES[task]))
        if "train.lr" in summary.spec.grid:
            written.append(_plot_lr(cells, summary.spec, out / f"{task}_lr_vs_loss.png", TASK_TITLES[task]))
        if any(r.result.sink_curve for r in mine):
            written.append(_plot_sink(cells, mine, out / f"{task}_sink_formation.png", TASK_TITLES[task]))
    return written


def _band(series: list[list[tuple[int, float]]]):
    """Mean, min and max over seeds at the steps every seed logged."""
    common = sorted(set.intersection(*(set(x for x, _ in s) for s in series))) if series else []
    at = [dict(s) for s in series]
    ys = [[a[x] for a in at] for x in common]
    return common, [sum(y) / len(y) for y in ys], [min(y) for y in ys], [max(y) for y in ys]


def _plot_curves(cells, records, path: Path, title: str) -> Path:
    from ..reporting import smooth

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for c in cells:
        series = [list(zip((x for x, _ in r.result.curves.train), smooth([y for _, y in r.result.curves.train])))
                  for r in records if r.cell_id == c.cell_id and r.result.curves.train]
        if not series:
            continue
        x, mean, low, high = _band(series)
        line, = ax.plot(x, mean, label=f"{c.cell_id} (n={len(series)})", lw=1.2)
        ax.fill_between(x, low, high, color=line.get_color(), alpha=0.2, lw=0)
    ax.set(xlabel="step", ylabel="training loss (EMA 0.1)", title=f"{title}\nmean over seeds, band = min to max")
    ax.legend(fontsize=7, ncol=2)
    return _save(fig, path)


def _plot_bars(cells, path: Path, title: str) -> Path:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(max(5, 0.6 * len(cells) + 2), 4))
    means = [c.metrics["val_loss"].mean for c in cells]
    errs = [[0 if e.low is None else e.mean - e.low for e in (c.metrics["val_loss"] for c in cells)],
            [0 if e.high is None else e.high - e.mean for e in (c.metrics["val_loss"] for c in cells)]]
    ok = [m is not None for m in means]
    xs = [i for i, k in enumerate(ok) if k]
    ax.bar(xs, [means[i] for i in xs], yerr=[[errs[0][i] for i in xs], [errs[1][i] for i in xs]], capsize=3,
           color="tab:blue", alpha=0.8)
    ax.set_xticks(range(len(cells)), [c.cell_id for c in cells], rotation=45, ha="right", fontsize=7)
    finite = [m for m in means if m is not None]
    if finite:
        spread = max(max(finite) - min(finite), 1e-3)
        ax.set_ylim(min(finite) - 2 * spread, max(finite) + 2 * spread)
    ax.set(ylabel="validation loss (nats)", title=f"{title}\nmean and 95% interval over seeds")
    return _save(fig, path)


def _plot_lr(cells, spec: SweepSpec, path: Path, title: str) -> Path:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for label, by_lr in _by_learning_rate(cells, spec).items():
        cs = [by_lr[lr] for lr in sorted(by_lr)]
        pts = [(c.cell["train.lr"], c.metrics["val_loss"]) for c in cs if c.metrics["val_loss"].mean is not None]
        half = [0 if e.low is None else (e.high - e.low) / 2 for _, e in pts]
        line = ax.errorbar([p for p, _ in pts], [e.mean for _, e in pts], yerr=half, marker="o", capsize=3,
                           label=label).lines[0]
        bad = [c.cell["train.lr"] for c in cs if c.diverged]
        if bad:
            ax.scatter(bad, [max((e.mean for _, e in pts), default=0)] * len(bad), marker="x", s=60,
                       color=line.get_color())
    ax.set_xscale("log")
    ax.set(xlabel="peak learning rate", ylabel="final validation loss (nats)",
           title=f"{title}\nloss by learning rate (x: a seed diverged)")
    ax.legend(fontsize=7)
    return _save(fig, path)


def _plot_sink(cells, records, path: Path, title: str) -> Path:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    for c in cells:
        series = []
        for r in records:
            if r.cell_id == c.cell_id and r.result.sink_curve:
                series.append([(step, p.f_attn_dormant if p.f_attn_dormant is not None else p.f_attn)
                               for step, p in r.result.sink_curve])
        if not series:
            continue
        x, mean, low, high = _band(series)
        line, = ax.plot(x, mean, marker=".", label=c.cell_id)
        ax.fill_between(x, low, high, color=line.get_color(), alpha=0.2, lw=0)
    ax.set(xlabel="step", ylabel="first-token share of dormant queries",
           title=f"{title}\nsink formation: mean over seeds, band = min to max")
    ax.legend(fontsize=7, ncol=2)
    return _save(fig, path)


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    pyplot().close(fig)
    return path
