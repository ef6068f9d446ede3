"""Wall and CPU time of the slow user-facing commands, before and after a change, side by side.

Each case runs as a fresh process (Python start and imports included: what a user waits for), once with
``--before SRC`` on PYTHONPATH (a source tree of the old code, e.g. ``git archive <rev> src | tar -x``) and
once with this checkout's ``src``, alternating per round. Cases: ``load`` (``load_model("smollm2")``),
``analyze`` (``gatedattn analyze smollm2 --data shakespeare --max-tokens 1024``) and ``long-eval``
(``gatedattn long-eval smollm2 --lengths 512,1024 --tasks niah_single_1 --samples 10``). One untimed run
of the new code first fills the model cache (``$GATEDATTN_CACHE``), so "after" is the warm-cache time.
The table gives min and median of the rounds and the load average before each run (the machine is shared).
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import harness

ROOT = Path(__file__).resolve().parents[1]
CASES = {
    "load": [sys.executable, "-c", "from gatedattn.artifacts import load_model; load_model('smollm2')"],
    "analyze": [sys.executable, "-m", "gatedattn", "analyze", "smollm2", "--data", "shakespeare",
                "--max-tokens", "1024"],
    "long-eval": [sys.executable, "-m", "gatedattn", "long-eval", "smollm2", "--lengths", "512,1024", "--tasks",
                  "niah_single_1", "--samples", "10", "--no-progress"],
}


def timed(cmd: list[str], src: Path, threads: int) -> dict:
    env = {**os.environ, "PYTHONPATH": str(src), "OMP_NUM_THREADS": str(threads)}
    before, load = resource.getrusage(resource.RUSAGE_CHILDREN), harness.load_average()
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr[-2000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"wall": wall, "cpu": cpu, "load_average": load, "stdout": proc.stdout}


def main(argv=None) -> dict:
    p = harness.base_parser("user_paths", __doc__)
    p.add_argument("--before", type=Path, required=True, help="source tree (its src folder) of the old code")
    p.add_argument("--cases", default="load,analyze", help=f"comma-separated, from {', '.join(CASES)}")
    p.set_defaults(rounds=3, warmup=0)
    args = p.parse_args(argv)
    cases = [c.strip() for c in args.cases.split(",")]
    unknown = [c for c in cases if c not in CASES]
    if unknown:
        p.error(f"unknown case {unknown[0]!r}; allowed: {', '.join(CASES)}")
    sides = {"before": args.before, "after": ROOT / "src"}
    rows = []
    for case in cases:
        timed(CASES[case], sides["after"], args.threads)  # fills the model cache
        runs = {side: [] for side in sides}
        for r in range(args.rounds):
            for side in (list(sides) if r % 2 == 0 else list(sides)[::-1]):
                runs[side].append(timed(CASES[case], sides[side], args.threads))
        row = {"case": case, "rounds": args.rounds}
        for side, xs in runs.items():
            walls, cpus = [x["wall"] for x in xs], [x["cpu"] for x in xs]
            row.update({f"{side}_wall_min": min(walls), f"{side}_wall_median": harness.median(walls),
                        f"{side}_cpu_min": min(cpus), f"{side}_cpu_median": harness.median(cpus),
                        f"{side}_load_average": [x["load_average"] for x in xs],
                        f"{side}_walls": walls, f"{side}_cpus": cpus})
        row["wall_ratio_min"] = row["before_wall_min"] / row["after_wall_min"]
        row["cpu_ratio_min"] = row["before_cpu_min"] / row["after_cpu_min"]
        if case == "long-eval":  # same scores: the RULER table of both sides' last runs
            row["before_report"], row["after_report"] = runs["before"][-1]["stdout"], runs["after"][-1]["stdout"]
        rows.append(row)
    print(f"user-facing commands, fresh processes, {args.threads} threads, {args.rounds} rounds "
          f"(before/after alternating); load average {harness.load_average():.1f} at the end")
    print(harness.table(rows, [("case", "case", "s"), ("before_wall_min", "before wall min s", ".1f"),
                               ("before_wall_median", "before wall med s", ".1f"),
                               ("after_wall_min", "after wall min s", ".1f"),
                               ("after_wall_median", "after wall med s", ".1f"),
                               ("wall_ratio_min", "wall ratio (min)", ".2f"),
                               ("before_cpu_min", "before CPU min s", ".1f"),
                               ("after_cpu_min", "after CPU min s", ".1f"),
                               ("cpu_ratio_min", "CPU ratio (min)", ".2f")]))
    payload = {"benchmark": "user_paths", "rounds": args.rounds, "environment": harness.environment(args.threads),
               "rows": rows}
    harness.write_json(args.out, payload)
    return payload


if __name__ == "__main__":
    main()
