"""Reproduce the paper's tables at your scale: a grid of variants and config values, several seeds each,
with means, 95% intervals and differences against the baseline paired by seed.

SPEC is a built-in spec (paper-table1, paper-table3, paper-table4, lr-stability) or a YAML file
('gatedattn sweep NAME --print-spec' prints one to start from). Writes OUT/summary.md (tables shaped like
the paper's, its numbers beside ours), OUT/summary.json, OUT/runs.csv (one row per run) and
OUT/plots/*.png; each run is a resumable run directory under OUT/TASK/runs/CELL/seedK. Re-running on the same OUT reuses finished runs and
resumes the one a killed sweep was in.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..experiments.spec import SPECS


def add_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("spec", nargs="?", metavar="SPEC", help=f"a YAML file or one of: {', '.join(SPECS)}")
    p.add_argument("--out", default=None, help="output directory (default: runs/sweep/SPEC_NAME)")
    p.add_argument("--quick", action="store_true",
                   help="the spec's quick form: fewer cells, two seeds, shorter runs (a few minutes)")
    p.add_argument("--tasks", default=None, help="only these of the spec's tasks: lab, text (comma-separated)")
    p.add_argument("--seeds", default=None, help="replace the spec's seeds: a count (3) or a list (0,1,2)")
    p.add_argument("--jobs", type=int, default=1, help="runs in parallel processes (default: 1; GPUs: one each)")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads per run (default: all cores with --jobs 1, else cores / jobs)")
    p.add_argument("--print-spec", action="store_true", help="print the spec as YAML and exit")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def _seeds(text: str) -> list[int]:
    from ..errors import GatedAttnError

    try:
        values = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise GatedAttnError(f"--seeds {text!r}: give a count (3) or comma-separated integers (0,1,2)") from None
    return list(range(values[0])) if len(values) == 1 else values


def run(args: argparse.Namespace) -> int:
    from ..errors import GatedAttnError
    from ..experiments.spec import from_dict, load_spec, spec_yaml
    from ..experiments.sweep import SweepSettings, run_sweep
    from ..experiments.variants import parse_tasks
    from ..training.metrics import setup_cli_logging

    if args.spec is None:
        raise GatedAttnError(f"give a sweep spec: a YAML file or one of {', '.join(SPECS)}")
    spec = load_spec(args.spec)
    if args.quick:
        spec = spec.with_quick()
    changes = {}
    if args.tasks:
        tasks = parse_tasks(args.tasks)
        missing = [t for t in tasks if t not in spec.tasks]
        if missing:
            raise GatedAttnError(f"--tasks {args.tasks}: the spec has no task {missing[0]!r}; it has "
                                 f"{', '.join(spec.tasks)}")
        changes["tasks"] = tasks
    if args.seeds:
        changes["seeds"] = _seeds(args.seeds)
    if changes:
        spec = from_dict({**spec.to_dict(), **changes})
    if args.print_spec:
        print(spec_yaml(spec), end="")
        return 0
    setup_cli_logging()
    out = Path(args.out or f"runs/sweep/{spec.name}" + ("-quick" if args.quick else ""))
    summary = run_sweep(spec, SweepSettings(out=out, jobs=args.jobs, threads=args.threads,
                                            progress=not args.no_progress))
    print(f"wrote {out / 'summary.md'}, summary.json, runs.csv and plots/ ({summary.runs} runs)")
    for task, cells in summary.tasks.items():
        print(f"{task}:")
        for c in cells:
            loss, d = c.metrics["val_loss"], c.paired.get("val_loss")
            text = f"  {c.cell_id:<28} val loss {loss.mean:.4f}" if loss.mean is not None else \
                f"  {c.cell_id:<28} diverged"
            if d is not None and d.diff.mean is not None:
                text += f"  Δ {d.diff.mean:+.4f} (p_t {d.p_t if d.p_t is not None else float('nan'):.2g}, n={d.n})"
            print(text)
    return 0
