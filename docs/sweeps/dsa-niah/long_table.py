"""The tables of long.sh: per corner and evaluation, the mean over seeds of the share of the value's digits 2-7
in place, RULER's score and the last six digits held, with 95% t-intervals; then differences in digits in
place paired by seed (gatedattn.experiments.stats); and each stage's validation loss. Markdown on stdout and
in OUT/long_table.md.

    python docs/sweeps/dsa-niah/long_table.py runs/dsa-niah-long
"""

import json
import sys
from pathlib import Path

from digits import digit_scores

from gatedattn.experiments.stats import Estimate, PairedDifference

CORNERS = ["none", "dsa", "g1", "g1-dsa"]
# (column, eval directory, length)
EVALS = [("stage 1 @ 256", "eval-short", 256), ("stage 2 @ 1,024", "eval-long", 1024),
         ("stage 2 @ 2,048", "eval-long", 2048), ("YaRN x4 @ 2,048", "eval-yarn", 2048),
         ("YaRN x4 @ 4,096", "eval-yarn", 4096)]
CONTRASTS = [("G1, dense (`g1` - `none`)", "g1", "none"), ("DSA, ungated (`dsa` - `none`)", "dsa", "none"),
             ("G1 on top of DSA (`g1-dsa` - `dsa`)", "g1-dsa", "dsa"), ("DSA, gated (`g1-dsa` - `g1`)", "g1-dsa", "g1")]


def _fmt(e: Estimate, digits: int = 0) -> str:
    if e.mean is None:
        return "–"
    if e.low is None:
        return f"{e.mean:.{digits}f}"
    return f"{e.mean:.{digits}f} [{e.low:.{digits}f}, {e.high:.{digits}f}]"


def collect(out: Path) -> tuple[list[int], dict]:
    """seeds, and (corner, column) -> {seed: Cell}, plus (corner, stage) -> {seed: val loss}."""
    seeds = sorted(int(p.name[1:]) for p in out.glob("s[0-9]*") if p.is_dir())
    cells: dict = {}
    for s in seeds:
        for v in CORNERS:
            run = out / f"s{s}" / v
            for column, directory, length in EVALS:
                path = run / directory / "samples.jsonl"
                if path.is_file() and length in (scores := digit_scores(str(path))):
                    cells.setdefault((v, column), {})[s] = scores[length]
            for stage in ("short", "long"):
                result = run / stage / "result.json"
                if result.is_file():
                    cells.setdefault((v, stage), {})[s] = json.loads(result.read_text())["val_loss"]
    return seeds, cells


def tables(out: Path) -> str:
    seeds, cells = collect(out)
    lines = [f"Seeds: {', '.join(map(str, seeds))}. Each cell: mean over the seeds [95% t-interval], in percent; "
             "per seed in the last table.", ""]
    for metric, title in (("in_place", "digits 2-7 in place (chance about 10%)"), ("ruler", "RULER score"),
                          ("last_six", "last six digits held")):
        lines += [f"**{title}**", "", "| corner | " + " | ".join(c for c, _, _ in EVALS) + " |",
                  "|---|" + "---|" * len(EVALS)]
        for v in CORNERS:
            row = [_fmt(Estimate.of(getattr(c, metric) for c in cells.get((v, col), {}).values()))
                   for col, _, _ in EVALS]
            lines.append(f"| `{v}` | " + " | ".join(row) + " |")
        lines.append("")
    lines += ["**Paired differences in digits in place** (percentage points; mean [95% CI], sign-flip p)", "",
              "| difference | " + " | ".join(c for c, _, _ in EVALS) + " |", "|---|" + "---|" * len(EVALS)]
    def in_place(v, col):
        return {s: c.in_place for s, c in cells.get((v, col), {}).items()}

    def gain(a, b, col):  # seed -> a - b, over the seeds both have
        x, y = in_place(a, col), in_place(b, col)
        return {s: x[s] - y[s] for s in x.keys() & y.keys()}

    def interaction(col):
        under_dsa, dense = gain("g1-dsa", "dsa", col), gain("g1", "none", col)
        return {s: under_dsa[s] - dense[s] for s in under_dsa.keys() & dense.keys()}

    zero = {s: 0.0 for s in seeds}
    rows = [(name, lambda col, a=a, b=b: gain(a, b, col)) for name, a, b in CONTRASTS]
    rows.append(("interaction: G1's gain under DSA minus its gain dense", interaction))
    for name, per_seed in rows:
        row = []
        for col, _, _ in EVALS:
            d = PairedDifference.of(per_seed(col), zero)
            row.append(f"{_fmt(d.diff)}, p {d.p_perm:.2f}" if d.n else "–")
        lines.append(f"| {name} | " + " | ".join(row) + " |")
    lines += ["", "**Validation loss** (mean [95% CI]) and digits in place per seed", "",
              "| corner | stage 1 val loss | stage 2 val loss | " + " | ".join(f"{c}, per seed" for c, _, _ in EVALS)
              + " |", "|---|---|---|" + "---|" * len(EVALS)]
    for v in CORNERS:
        losses = [_fmt(Estimate.of(cells.get((v, st), {}).values()), 4) for st in ("short", "long")]
        per_seed = [" / ".join(f"{cells[(v, col)][s].in_place:.0f}" if s in cells.get((v, col), {}) else "–"
                               for s in seeds) for col, _, _ in EVALS]
        lines.append(f"| `{v}` | " + " | ".join(losses + per_seed) + " |")
    lines += _selection_table(out / "needle_selection.jsonl")
    return "\n".join(lines) + "\n"


def _selection_table(path: Path) -> list[str]:
    """needle_selection.py's lines: per DSA corner, stage and seed, each layer's share of answer queries whose
    top-k holds a value token (and all of the value's tokens)."""
    if not path.is_file():
        return []
    lines = ["", "**DSA layers: answer queries whose top-16 holds a value token** (per layer; in brackets: all of "
             "the value's tokens)", "", "| corner | stage @ length | seed | per layer |", "|---|---|---|---|"]
    rows = []
    for line in path.read_text().splitlines():
        r = json.loads(line)
        seed, corner, stage = Path(r["run"]).parts[-3:]
        cells = ", ".join(f"{a:.2f} ({b:.2f})" for a, b in zip(r["some_value_token_selected"],
                                                                r["all_value_tokens_selected"]))
        rows.append((corner, stage, r["length"], seed, cells))
    lines += [f"| `{c}` | {st} @ {L:,} | {seed[1:]} | {cells} |" for c, st, L, seed, cells in sorted(rows)]
    return lines


if __name__ == "__main__":
    out = Path(sys.argv[1])
    text = tables(out)
    (out / "long_table.md").write_text(text)
    print(text, end="")
