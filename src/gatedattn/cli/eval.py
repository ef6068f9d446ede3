"""Perplexity of a trained model on held-out text.

By default it scores the first 262,144 tokens of the validation split of the data the model was trained on
(recorded in its run): seconds for a small model on a CPU, minutes for a large one. --max-tokens 0 scores
the whole split (666k tokens for Shakespeare); --data scores other text instead. The output says how many
tokens were scored, of how many held out.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging

from ..config import DEVICES, DataConfig
from ..errors import GatedAttnError

DEFAULT_MAX_TOKENS = 262_144
log = logging.getLogger("gatedattn.eval")


def add_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", metavar="MODEL", help="a model directory, checkpoint or training run directory")
    p.add_argument("--data", metavar="PATH[,PATH...]",
                   help="evaluate on this text instead (built-in corpus name or files/folders); "
                        "default: the run's validation split")
    p.add_argument("--max-tokens", type=int, default=DEFAULT_MAX_TOKENS, metavar="N",
                   help="score the first N held-out tokens; 0 = all of them")
    p.add_argument("--max-batches", type=int, default=None, metavar="N",
                   help="also stop after N batches (whichever limit comes first)")
    p.add_argument("--batch-size", type=int, default=8, help="sequences per forward")
    p.add_argument("--seq-len", type=int, default=None, help="tokens per sequence (default: the run's)")
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32", help="compute dtype")
    p.add_argument("--device", choices=DEVICES, default="auto", help="auto = CUDA when available, else CPU")
    p.add_argument("--json", action="store_true", help="print JSON")


def run(args: argparse.Namespace) -> int:
    from ..artifacts import load_model
    from ..data.pipeline import prepare_data
    from ..evaluation.perplexity import evaluate_perplexity
    from ..reporting import format_number
    from ..training.trainer import pick_device

    if args.batch_size < 1 or (args.max_batches is not None and args.max_batches < 1) or args.max_tokens < 0:
        raise GatedAttnError("--batch-size and --max-batches must be >= 1, and --max-tokens >= 0 (0 = all)")
    loaded = load_model(args.model, pick_device(args.device, "--device"))
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
    held_out = getattr(bundle, split)
    if held_out is None:
        raise GatedAttnError(f"no held-out text in {what}")
    available = held_out.num_tokens
    tokens = held_out.head(args.max_tokens) if args.max_tokens else held_out
    log.info("eval: scoring %s of %s held-out tokens in %s (--max-tokens %s; 0 = all)",
             format_number(tokens.num_tokens), format_number(available), what, args.max_tokens)
    r = evaluate_perplexity(loaded.model, tokens, args.batch_size, args.max_batches, args.dtype, progress=True)
    out = {"model": str(loaded.path), "data": what, "seq_len": data_cfg.seq_len, **r.to_dict(),
           "available_tokens": available}
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        print(f"{out['model']} on {what}: loss {r.loss:.4f}, perplexity {r.perplexity:.2f} "
              f"({format_number(r.tokens)} of {format_number(available)} held-out tokens scored, "
              f"{r.sequences} sequences of <= {data_cfg.seq_len})")
    return 0
