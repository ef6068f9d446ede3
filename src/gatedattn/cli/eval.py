"""Perplexity of a trained model on held-out text.

By default: the validation split of the data the model was trained on (recorded in its run); else --data.
"""

from __future__ import annotations

import argparse
import dataclasses
import json

from ..config import DataConfig
from ..errors import GatedAttnError


def add_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", metavar="MODEL", help="a model directory, checkpoint or training run directory")
    p.add_argument("--data", metavar="PATH[,PATH...]",
                   help="evaluate on all of this text instead (built-in corpus name or files/folders)")
    p.add_argument("--max-batches", type=int, default=None, metavar="N", help="evaluate at most N batches")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--seq-len", type=int, default=None, help="tokens per sequence (default: the run's)")
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    p.add_argument("--json", action="store_true", help="print JSON")


def run(args: argparse.Namespace) -> int:
    from ..artifacts import load_model
    from ..data.pipeline import prepare_data
    from ..evaluation.perplexity import evaluate_perplexity
    from ..training.metrics import setup_cli_logging
    from ..training.trainer import pick_device

    setup_cli_logging(verbose=False)
    if args.batch_size < 1 or (args.max_batches is not None and args.max_batches < 1):
        raise GatedAttnError("--batch-size and --max-batches must be >= 1")
    loaded = load_model(args.model, pick_device("auto"))
    if not loaded.is_ours:
        raise GatedAttnError(f"{args.model}: eval works on gatedattn models (HF models: gatedattn long-eval)")
    tokenizer = loaded.require_tokenizer()
    recorded = loaded.run_config.data if loaded.run_config is not None else None
    if args.data:
        # All of the given text: a user who names data means it is held out.
        data_cfg = DataConfig(source=args.data, text_field=recorded.text_field if recorded else "text",
                              seq_len=args.seq_len or (recorded.seq_len if recorded else 256), val_fraction=0.0)
        split, what = "train", args.data
    elif recorded is not None:
        data_cfg = dataclasses.replace(recorded, seq_len=args.seq_len or recorded.seq_len)
        split, what = "val", f"{recorded.source} (validation split)"
        if data_cfg.val_fraction == 0:
            raise GatedAttnError(f"{args.model} was trained without a validation split; give --data")
    else:
        raise GatedAttnError(f"{args.model} records no training data; give --data")
    data_cfg.validate()
    bundle = prepare_data(data_cfg, tokenizer, splits=(split,))
    tokens = getattr(bundle, split)
    if tokens is None:
        raise GatedAttnError(f"no held-out text in {what}")
    r = evaluate_perplexity(loaded.model, tokens, args.batch_size, args.max_batches, args.dtype, progress=True)
    out = {"model": str(loaded.path), "data": what, "seq_len": data_cfg.seq_len, **r.to_dict()}
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        print(f"{out['model']} on {what}: loss {r.loss:.4f}, perplexity {r.perplexity:.2f} "
              f"({r.tokens:,} tokens, {r.sequences} sequences of <= {data_cfg.seq_len})")
    return 0
