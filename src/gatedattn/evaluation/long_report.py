"""The long-eval report: markdown tables (RULER accuracy per task and length, perplexity per length and
position bucket) and two PNGs (matplotlib through ``reporting.pyplot``, imported on the first plot)."""

from __future__ import annotations

import json
import math
from pathlib import Path

from ..reporting import format_number, plain_ticks, pyplot, value_scale


def format_report(summary: dict) -> str:
    """Markdown tables: RULER accuracy (%) per task and length, perplexity per length and position bucket."""
    s = summary["settings"]
    rope = s["rope"]
    lines = [f"# long-eval: {s['model']}", "",
             f"RoPE theta {rope['rope_theta']}, scaling {json.dumps(rope['scaling'])}; seed {s['seed']}", ""]
    ruler = summary.get("ruler")
    if ruler:
        lengths = sorted({n for row in ruler["accuracy"].values() for n in row}, key=int)
        lines += [f"## RULER accuracy (%), {s['samples']} samples per cell", "",
                  "| task | " + " | ".join(str(n) for n in lengths) + " |",
                  "|---|" + "---:|" * len(lengths)]
        for task, row in ruler["accuracy"].items():
            lines.append(f"| {task} | " + " | ".join(_cell(row.get(n)) for n in lengths) + " |")
        lines += ["| **mean** | " + " | ".join(_cell(ruler["mean"].get(n)) for n in lengths) + " |", ""]
        skipped = ruler.get("skipped") or {}
        if skipped:
            lines += ["Skipped (the prompt with its smallest haystack does not fit): " + "; ".join(
                f"{task} at {', '.join(map(str, ns))}" for task, ns in skipped.items()) + ".", ""]
    ppl = summary.get("perplexity")
    if ppl:
        lengths = sorted(ppl, key=int)
        edges = sorted({(b["start"], b["end"]) for n in lengths for b in ppl[n]["buckets"]})
        lines += [f"## Perplexity, {s['ppl_samples']} windows per length", "",
                  "| positions | " + " | ".join(str(n) for n in lengths) + " |", "|---|" + "---:|" * len(lengths),
                  "| **all** | " + " | ".join(format_number(ppl[n]["ppl"], decimals=2) for n in lengths) + " |"]
        for lo, hi in edges:
            cells = []
            for n in lengths:
                b = next((b for b in ppl[n]["buckets"] if (b["start"], b["end"]) == (lo, hi)), None)
                cells.append(format_number(b["ppl"], decimals=2) if b else "")
            lines.append(f"| [{lo}, {hi}) | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def _cell(value: float | None) -> str:
    return format_number(value, decimals=1, missing="")


def plot(summary: dict, out_dir: Path) -> list[Path]:
    """ruler_accuracy.png (accuracy vs length per task, and their mean) and perplexity.png (perplexity vs
    position per context length, and vs context length, with the trained context marked when known); the
    paths written."""
    plt = pyplot()
    written = []
    ruler = summary.get("ruler")
    if ruler:
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for task, row in ruler["accuracy"].items():
            xs = sorted(row, key=int)
            ax.plot([int(x) for x in xs], [row[x] for x in xs], marker="o", lw=1, alpha=0.7, label=task)
        xs = sorted(ruler["mean"], key=int)
        ax.plot([int(x) for x in xs], [ruler["mean"][x] for x in xs], color="black", lw=2.5, marker="s",
                label="mean")
        ax.set(xscale="log", xlabel="context length (tokens)", ylabel="accuracy (%)", ylim=(-3, 103),
               title=f"RULER: {summary['settings']['model']}")
        _length_ticks(ax, xs)
        ax.legend(fontsize=7, ncol=2)
        fig.tight_layout()
        written.append(out_dir / "ruler_accuracy.png")
        fig.savefig(written[-1], dpi=120)
        plt.close(fig)
    ppl = summary.get("perplexity")
    if ppl:
        fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
        lengths = sorted(ppl, key=int)
        for i, n in enumerate(reversed(lengths)):  # longest first and widest: shorter ones often overlap it
            b = ppl[n]["buckets"]
            left.plot([math.sqrt(x["start"] * x["end"]) for x in b], [x["ppl"] for x in b], marker="o",
                      lw=1 + 2.5 * (len(lengths) - 1 - i) / max(len(lengths) - 1, 1), label=f"context {n}")
        left.set(xscale="log", yscale=value_scale([x["ppl"] for n in lengths for x in ppl[n]["buckets"]]),
                 xlabel="token position (bucket)", ylabel="perplexity", title="perplexity by position")
        right.plot([int(n) for n in lengths], [ppl[n]["ppl"] for n in lengths], marker="o")
        right.set(xscale="log", yscale=value_scale([ppl[n]["ppl"] for n in lengths]),
                  xlabel="context length (tokens)", ylabel="perplexity (all positions)",
                  title="perplexity by context length")
        trained = summary.get("trained_seq_len")
        if trained:  # beyond it the model extrapolates
            for ax in (left, right):
                ax.axvline(trained, color="grey", ls=":", lw=1.5, label=f"trained context ({trained} tokens)")
        left.legend(fontsize=8)
        if trained:
            right.legend(fontsize=8)
        _length_ticks(right, lengths)
        for axis in (left.xaxis, left.yaxis, right.yaxis):
            plain_ticks(axis)
        fig.tight_layout()
        written.append(out_dir / "perplexity.png")
        fig.savefig(written[-1], dpi=120)
        plt.close(fig)
    return written


def _length_ticks(ax, lengths) -> None:
    from matplotlib.ticker import NullFormatter

    ax.set_xticks([int(n) for n in lengths], [str(n) for n in lengths])
    ax.xaxis.set_minor_formatter(NullFormatter())


__all__ = ["format_report", "plot"]
