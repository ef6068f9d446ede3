"""Score a model with lm-evaluation-harness on local tasks built from the built-in corpora (no download).

Tasks: shakespeare_lastword (LAMBADA-style last word of a held-out Shakespeare passage: acc, perplexity)
and passkey (a five-digit key hidden in filler, greedy generation: exact_match). Needs lm-eval
(pip install 'gatedattn[eval]'). The same tasks with lm_eval's own Python API: see docs/lm_eval.md.
"""

from __future__ import annotations

import argparse
import json

from ..evaluation.harness_tasks import TASKS


def add_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", metavar="MODEL", help="smollm2, a model or run directory of ours, or a HF model directory")
    p.add_argument("--tasks", default=",".join(TASKS), metavar="TASK[,TASK...]", help=f"of {', '.join(TASKS)}")
    p.add_argument("--limit", type=int, default=None, metavar="N", help="score the first N documents of each task")
    p.add_argument("--count", type=int, default=200, help="documents per task when the tasks are written")
    p.add_argument("--tasks-dir", metavar="DIR", default=None,
                   help="where the task YAML + JSONL files go (default: the gatedattn cache)")
    p.add_argument("--batch-size", type=int, default=1, help="requests per forward")
    p.add_argument("--max-length", type=int, default=None, metavar="TOKENS",
                   help="tokens per forward (default: the run's data.seq_len - 1, else max_position_embeddings)")
    p.add_argument("--json", metavar="FILE", help="also write the scores as JSON")


def run(args: argparse.Namespace) -> int:
    from ..data.cache import cache_dir
    from ..errors import GatedAttnError
    from ..evaluation.harness import evaluate_local_tasks
    from ..evaluation.harness_tasks import write_tasks
    from ..fileio import atomic_write_text

    tasks = [t.strip() for t in args.tasks.split(",")]
    unknown = [t for t in tasks if t not in TASKS]
    if unknown:
        raise GatedAttnError(f"--tasks: unknown task {unknown[0]!r}; allowed: {', '.join(TASKS)}")
    for flag in ("limit", "count", "batch_size", "max_length"):
        if getattr(args, flag) is not None and getattr(args, flag) < 1:
            raise GatedAttnError(f"--{flag.replace('_', '-')} must be >= 1, got {getattr(args, flag)}")
    folder = write_tasks(args.tasks_dir or cache_dir("lm_eval_tasks") / f"n{args.count}", args.count)
    scores = evaluate_local_tasks(args.model, tasks, str(folder), args.limit, args.batch_size, args.max_length)
    for task, metrics in scores.items():
        print(f"{task}: " + ", ".join(f"{k} {v:.4g}" for k, v in metrics.items() if isinstance(v, float)))
    if args.json:
        atomic_write_text(args.json, json.dumps({"model": args.model, "limit": args.limit, "scores": scores}, indent=2))
    return 0
