"""The main job: train an ungated baseline and gated twins on the same data, evaluate, probe and report.

Writes OUT/report.md, OUT/results.json, PNG plots (loss curves, perplexity, first-token share, max
activation, gate scores) and one run directory per variant under OUT/runs/. Re-running on the same OUT
resumes.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..compare import VARIANTS, CompareSettings, parse_variants, run_compare
from ..config import parse_overrides


def add_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quick", action="store_true", help="a ~2-minute run with a smaller model and budget")
    p.add_argument("--preset", default=None,
                   help="model preset or YAML (default: small; compare-quick with --quick)")
    p.add_argument("--variants", default="none,g1", help=f"comma-separated, from: {', '.join(VARIANTS)}")
    p.add_argument("--out", default="runs/compare", help="output directory (default: runs/compare)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override for every variant, e.g. train.max_steps=800 (repeatable)")
    p.add_argument("--analysis-sequences", type=int, default=4, help="held-out sequences the probes read")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    settings = CompareSettings(out=Path(args.out), variants=parse_variants(args.variants), preset=args.preset,
                               quick=args.quick, overrides=parse_overrides(args.overrides),
                               analysis_sequences=args.analysis_sequences, progress=not args.no_progress)
    results = run_compare(settings)
    print(f"wrote {settings.out / 'report.md'}, {settings.out / 'results.json'} and "
          f"{len(results.get('plots', []))} plots")
    for name, r in results["variants"].items():
        a = r["analysis"]
        gate = f", gate mean {a['gate_mean']:.3f}" if a.get("gate_mean") is not None else ""
        print(f"  {name:<14} val ppl {r['val_ppl']:.3f}  first-token share {a['f_attn']:.3f}  "
              f"M-Act {a['m_act']:.2f}{gate}")
    return 0
