"""The main job: train an ungated baseline and gated twins on the same data, evaluate, probe and report.

Two tasks: the sink lab (Bigram-Backcopy: a baseline grows an attention sink within minutes; sink probes
during training) and natural text. Writes OUT/report.md, and per task OUT/TASK/results.json, PNG plots
(loss curves, sink formation, first-token share, max activation, gate scores) and one run directory per
variant under OUT/TASK/runs/. Re-running on the same OUT resumes, and reuses the evaluation and probes of
finished runs (--fresh-eval recomputes them).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..config import parse_overrides
from ..experiments.variants import TASKS, VARIANTS, parse_tasks, parse_variants


def add_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quick", action="store_true", help="a ~2-minute run with a smaller model and budget")
    p.add_argument("--preset", default=None,
                   help="model preset or YAML (default: small; compare-quick with --quick)")
    p.add_argument("--variants", default="none,g1", help=f"comma-separated, from: {', '.join(VARIANTS)}")
    p.add_argument("--out", default="runs/compare", help="output directory (default: runs/compare)")
    p.add_argument("--tasks", default=",".join(TASKS),
                   help="lab (the Bigram-Backcopy sink lab), text (natural text) or both (default: lab,text)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="text task: override for every variant, e.g. train.max_steps=800 (repeatable)")
    p.add_argument("--lab-set", dest="lab_overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="sink lab: override for every variant, e.g. train.max_steps=500 (repeatable)")
    p.add_argument("--analysis-sequences", type=int, default=4, help="held-out sequences the probes read")
    p.add_argument("--fresh-eval", action="store_true",
                   help="evaluate and probe finished runs again instead of reusing results.json")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    from ..experiments.compare import CompareSettings, run_compare

    settings = CompareSettings(out=Path(args.out), variants=parse_variants(args.variants), preset=args.preset,
                               quick=args.quick, overrides=parse_overrides(args.overrides),
                               lab_overrides=parse_overrides(args.lab_overrides), tasks=parse_tasks(args.tasks),
                               analysis_sequences=args.analysis_sequences, progress=not args.no_progress,
                               fresh_eval=args.fresh_eval)
    comparison = run_compare(settings)
    print(f"wrote {settings.out / 'report.md'} and, per task, results.json and plots under "
          + ", ".join(str(settings.out / t) for t in comparison.tasks))
    for task, result in comparison.tasks.items():
        print(f"{'sink lab' if task == 'lab' else 'natural text'}:")
        for name, v in result.variants.items():
            p = v.probes
            gate = f", gate mean {p.gate_mean:.3f}" if p.gate_mean is not None else ""
            if v.sink is not None:
                print(f"  {name:<14} excess loss {v.lab.excess_loss:+.4f}  first-token share dormant "
                      f"{v.sink.f_attn_dormant:.3f} / active {v.sink.f_attn_active:.3f}  sink rate "
                      f"{v.sink.sink_rate:.2f}{gate}")
            else:
                print(f"  {name:<14} val ppl {v.val_ppl:.3f}  first-token share {p.f_attn:.3f}  "
                      f"M-Act {p.m_act:.2f}{gate}")
    return 0
