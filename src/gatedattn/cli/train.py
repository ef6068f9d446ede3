"""Train a model (resumable): AdamW, warmup + cosine, checkpoints, metrics.jsonl, validation.

Running the same command on the same --out resumes from the latest readable checkpoint. Data-parallel:
torchrun --nproc_per_node N -m gatedattn train ... --set train.parallel=fsdp (or ddp); see docs/distributed.md.
"""

from __future__ import annotations

import argparse

from .common import add_config_args, config_from_args


def add_parser(p: argparse.ArgumentParser) -> None:
    add_config_args(p)
    p.add_argument("--data", metavar="PATH[,PATH...]",
                   help="training text: shakespeare, python-stdlib, or .txt/.jsonl/.parquet files and folders "
                        "(sets data.source)")
    p.add_argument("--out", required=True, metavar="DIR", help="run directory (resumed if it has a checkpoint)")
    p.add_argument("--init-from", metavar="MODEL_DIR",
                   help="start from this model's (or run's) weights and tokenizer; shapes must match")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from ..training import train
    from ..training.distributed import launched_rank

    cfg = config_from_args(args)
    if args.data:
        cfg.data.source = args.data  # taken verbatim: a path is not a YAML value
    r = train(cfg, args.out, init_from=args.init_from, progress=not args.no_progress)
    if launched_rank() != 0:  # rank 0 speaks for the run
        return 0
    if r.resumed_from is not None and r.resumed_from >= r.steps:
        print(f"{r.out_dir}: already trained to step {r.resumed_from} (train.max_steps={cfg.train.max_steps}); "
              "nothing to do")
        return 0
    val = f", val_loss {r.val_loss:.4f}" if r.val_loss is not None else ""
    loss = f", loss {r.train_loss:.4f}" if r.train_loss is not None else ""
    print(f"{r.out_dir}: {r.steps} steps, {r.tokens:,} tokens{loss}{val}, {r.tokens_per_s:,.0f} tokens/s, "
          f"{r.spikes} loss spikes, {r.nonfinite_skips} non-finite steps skipped; checkpoint {r.checkpoint}")
    return 0
