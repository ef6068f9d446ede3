"""What every report in the package shares: the lazy matplotlib entry, the number formatter and the
loss-curve plot.

matplotlib is an extra (``gatedattn[train]``): it is imported on the first plot, so a base install runs
everything that draws nothing. This module imports nothing else from gatedattn but the errors.
"""

from __future__ import annotations

import math
import numbers
import sys
from dataclasses import dataclass, field
from pathlib import Path

from .errors import MissingExtraError

MISSING = "–"  # a value that was not measured (e.g. the gate mean of an ungated model)
_SI_UNITS = (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3))


def pyplot():
    """``matplotlib.pyplot``, imported on first use (Agg backend unless pyplot is already in use)."""
    if "matplotlib.pyplot" in sys.modules:
        return sys.modules["matplotlib.pyplot"]
    try:
        import matplotlib
    except ImportError:
        raise MissingExtraError("plots need matplotlib: pip install 'gatedattn[train]'") from None
    matplotlib.use("Agg")  # files only: no display needed
    import matplotlib.pyplot as plt

    return plt


def format_number(x, digits: int = 3, *, si: bool = False, decimals: int | None = None,
                  missing: str = MISSING) -> str:
    """One number for a table or a line of text.

    Default: ``digits`` significant digits; numbers of ``digits`` or more integer digits as a
    thousands-separated integer (1,053 rather than 1.05e+03). ``si``: K/M/B/T suffix with 2 decimals
    (parameter and FLOP counts). ``decimals``: fixed decimals. None or NaN gives ``missing``.
    """
    if isinstance(x, bool) or (x is not None and not isinstance(x, numbers.Real)):
        return str(x)
    if x is None or math.isnan(x):
        return missing
    if decimals is not None:
        return f"{x:,.{decimals}f}"
    if si:
        for unit, div in _SI_UNITS:
            if abs(x) >= div:
                return f"{x / div:.2f}{unit}"
        return f"{x:.0f}"
    if isinstance(x, numbers.Integral) or abs(x) >= 10 ** (digits - 1):
        return f"{x:,.0f}"
    return f"{x:.{digits}g}"


def value_scale(values, span: float = 100.0) -> str:
    """"log" for positive values spanning at least ``span`` x (where a linear axis would flatten the small
    ones), else "linear"."""
    finite = [v for v in values if v is not None and math.isfinite(v)]
    return "log" if finite and min(finite) > 0 and max(finite) >= span * min(finite) else "linear"


def _plain_formatter():
    from matplotlib.ticker import FuncFormatter

    return FuncFormatter(lambda value, _: format_number(value))


def plain_ticks(axis) -> None:
    """Tick labels as plain numbers (``format_number``: 20, 0.5, 1,000), not powers of ten, on a linear or
    log axis; a log axis spanning less than a decade labels its minor ticks too (it has few major ones)."""
    from matplotlib.ticker import NullFormatter

    label = _plain_formatter()
    axis.set_major_formatter(label)
    if axis.get_scale() == "log":
        lo, hi = sorted(axis.get_view_interval())
        axis.set_minor_formatter(label if lo > 0 and hi / lo < 10 else NullFormatter())


@dataclass
class LossCurves:
    """One run's losses: (x, loss) pairs for training steps and validations; x is a step or a token count."""

    train: list[tuple[int, float]] = field(default_factory=list)
    val: list[tuple[int, float]] = field(default_factory=list)

    @classmethod
    def from_records(cls, records: list[dict], x: str = "step") -> "LossCurves":
        """From metrics.jsonl records; ``x`` is ``step`` or ``tokens`` (validation lines take the tokens of
        the training line of their step)."""
        at = {r["step"]: r[x] for r in records if x in r and "loss" in r}
        train = [(r[x], r["loss"]) for r in records if r.get("loss") is not None and x in r]
        val = [(r["step"] if x == "step" else at[r["step"]], r["val_loss"]) for r in records
               if "val_loss" in r and (x == "step" or r["step"] in at)]
        return cls(train, val)

    def to_dict(self) -> dict:
        return {"train": [list(p) for p in self.train], "val": [list(p) for p in self.val]}

    @classmethod
    def from_dict(cls, d: dict) -> "LossCurves":
        return cls([tuple(p) for p in d.get("train", [])], [tuple(p) for p in d.get("val", [])])


def smooth(values: list[float], alpha: float = 0.1) -> list[float]:
    """Exponential moving average (weight ``alpha`` on the new value)."""
    out, avg = [], None
    for v in values:
        avg = v if avg is None else (1 - alpha) * avg + alpha * v
        out.append(avg)
    return out


def heatmap_range(matrices, near_zero: float = 0.1) -> tuple[float, str]:
    """The top of a [0, 1] share's colour scale: 1, or the data's maximum when every value is below
    ``near_zero`` (a 0-1 scale would paint them all one colour), with a note stating that range."""
    top = max((float(v) for m in matrices for row in m for v in row), default=0.0)
    if 0 < top < near_zero:
        return top, f"\n(colour scale 0 to {format_number(top)}: every value is near zero)"
    return 1.0, ""


def annotate_cells(ax, matrix, max_cells: int = 400) -> bool:
    """Print each cell's value (2 significant digits) in a heatmap drawn with ``imshow``; skipped above
    ``max_cells`` cells, where the text would not be readable. Whether it printed them."""
    rows, cols = len(matrix), len(matrix[0]) if len(matrix) else 0
    if not rows * cols or rows * cols > max_cells:
        return False
    size = max(4.0, min(9.0, 120 / max(rows, cols)))
    image = ax.get_images()[-1]
    for i in range(rows):
        for j in range(cols):
            value = float(matrix[i][j])
            light = sum(image.cmap(image.norm(value))[:3]) / 3 > 0.5  # dark text on light colours
            ax.text(j, i, format_number(value, 2), ha="center", va="center", fontsize=size,
                    color="black" if light else "white")
    return True


def plot_loss_curves(curves: dict[str, LossCurves], path: str | Path, *, xlabel: str = "step",
                     smoothing: float | None = None, final_ppl: dict[str, float] | None = None) -> Path:
    """Training loss (solid; EMA-smoothed with weight ``smoothing`` if given) and validation loss during
    training (dashed, markers; on ``train.eval_batches`` batches), one colour per run; with ``final_ppl`` (the
    final evaluation on the whole held-out split) a star at the end of each run whose legend entry gives that
    figure beside the last in-training one, and a bar panel of the perplexities."""
    plt = pyplot()
    if final_ppl:
        fig, (ax, ax_ppl) = plt.subplots(1, 2, figsize=(12, 4.2), gridspec_kw={"width_ratios": [2, 1]})
    else:
        fig, ax = plt.subplots(figsize=(7, 4.2))
    for i, (name, c) in enumerate(curves.items()):
        color = f"C{i}"
        if c.train:
            xs, losses = zip(*c.train)
            ys = smooth(list(losses), smoothing) if smoothing else losses
            ax.plot(xs, ys, color=color, lw=1.2, label=f"{name} train" + (" (smoothed)" if smoothing else ""))
        if c.val:
            ax.plot(*zip(*c.val), "o--", color=color, ms=4,
                    label=f"{name} validation in training (last {format_number(c.val[-1][1], decimals=3)})")
        ppl = (final_ppl or {}).get(name)
        ends = [p[0] for p in c.train + c.val]
        if ppl is not None and math.isfinite(ppl) and ends:
            # The final figure covers the whole held-out split, the in-training points a few batches of it:
            # the two differ by that sampling, which the legend shows side by side.
            ax.plot([max(ends)], [math.log(ppl)], "*", color=color, ms=12, mec="black", mew=0.6,
                    label=f"{name} final, whole held-out split: {format_number(math.log(ppl), decimals=3)} "
                          f"(ppl {format_number(ppl, decimals=2)})")
    ax.set(xlabel=xlabel, ylabel="loss (nats/token)", title="training and validation loss")
    ax.xaxis.set_major_formatter(_plain_formatter())
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    if final_ppl:
        names = list(final_ppl)
        for i, name in enumerate(names):
            ppl = final_ppl[name]
            ax_ppl.bar(i, ppl, color=f"C{list(curves).index(name) if name in curves else i}")
            ax_ppl.text(i, ppl, format_number(ppl, decimals=2), ha="center", va="bottom")
        ax_ppl.set(xticks=range(len(names)), xticklabels=names, ylabel="perplexity",
                   title="held-out perplexity (final, whole split)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)
