"""Speed-up of the working tree's model over a git revision of it (training steps and batch-1 decoding).

The baseline's ``src/gatedattn`` is extracted with ``git archive`` (read-only; the checkout is untouched)
and imported under another package name, so both versions run interleaved in one process with the same
weights.
"""

from __future__ import annotations

import importlib
import io
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import torch

import harness
from gatedattn import GatedLM, load_config
from gatedattn.config import parse_overrides


def import_baseline(rev: str, into: Path):
    """Import ``src/gatedattn`` as of git revision ``rev`` (or a copy of the package directory at path
    ``rev``) as the package ``gatedattn_baseline``."""
    if Path(rev).is_dir():
        shutil.copytree(rev, into / "gatedattn_baseline")
    else:
        blob = subprocess.run(["git", "archive", rev, "src/gatedattn"], cwd=harness.ROOT, capture_output=True,
                              check=True).stdout
        with tarfile.open(fileobj=io.BytesIO(blob)) as tar:
            tar.extractall(into, filter="data")
        (into / "src" / "gatedattn").rename(into / "gatedattn_baseline")
    sys.path.insert(0, str(into))
    return importlib.import_module("gatedattn_baseline")


def main(argv=None) -> dict:
    p = harness.base_parser("before_after", __doc__)
    p.add_argument("--baseline", default="HEAD",
                   help="git revision to compare against (default HEAD), or a directory holding a gatedattn package")
    p.add_argument("--preset", default="small")
    p.add_argument("--gates", default="none,g1", help="comma-separated gate positions to time")
    p.add_argument("--what", default="train,decode", help="train and/or decode")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--new-tokens", type=int, default=128, help="tokens generated per decoding call")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="config override of both versions, e.g. model.attention.sparse.type=dsa or data.seq_len=1024")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        base_pkg = import_baseline(args.baseline, Path(tmp))
        return run(args, base_pkg)


def run(args, base_pkg) -> dict:
    rows, cases, pairs = [], {}, []
    extra = parse_overrides(args.overrides)
    for gate in args.gates.split(","):
        overrides = {**extra, "model.attention.gate.position": gate}
        cfg = load_config(args.preset, overrides)
        new = GatedLM(cfg.model)
        old = base_pkg.GatedLM(base_pkg.load_config(args.preset, overrides).model)
        old.load_state_dict(new.state_dict())
        ids = torch.randint(0, cfg.model.vocab_size, (args.batch_size, cfg.data.seq_len))
        if "train" in args.what:
            for dtype in ("fp32", "bf16"):
                key = f"train {dtype} gate={gate}"
                cases[f"{key} | before"] = harness.train_step(old, ids, dtype)
                cases[f"{key} | after"] = harness.train_step(new, ids, dtype)
                pairs.append((key, args.batch_size * cfg.data.seq_len))
        if "decode" in args.what:
            prompt = ids[:1, :16]
            key = f"decode fp32 gate={gate}"
            # Separate eval copies: the training closures put their models in train mode.
            old_eval, new_eval = base_pkg.GatedLM(old.config).eval(), GatedLM(new.config).eval()
            new_eval.load_state_dict(new.state_dict())
            old_eval.load_state_dict(new.state_dict())
            cases[f"{key} | before"] = lambda m=old_eval, x=prompt: m.generate(x, max_new_tokens=args.new_tokens)
            cases[f"{key} | after"] = lambda m=new_eval, x=prompt: m.generate(x, max_new_tokens=args.new_tokens)
            pairs.append((key, args.new_tokens))
    times = harness.interleaved(cases, args.rounds, args.warmup, progress="before/after")
    for key, tokens in pairs:
        before, after = f"{key} | before", f"{key} | after"
        rows.append({"case": key, "before_tok_s": tokens / harness.median(times[before]),
                     "after_tok_s": tokens / harness.median(times[after]),
                     "speedup": harness.median_ratio(times, before, after)})
    print(f"working tree vs {args.baseline} ({args.preset}{''.join(f', {k}={v}' for k, v in extra.items())}, "
          f"{args.threads} threads, median of {args.rounds} rounds)")
    print(harness.table(rows, [("case", "case", "s"), ("before_tok_s", "before tok/s", ".0f"),
                               ("after_tok_s", "after tok/s", ".0f"), ("speedup", "speed-up", ".2f")]))
    payload = {"benchmark": "before_after", "baseline": args.baseline, "preset": args.preset, "overrides": extra,
               "batch_size": args.batch_size, "new_tokens": args.new_tokens, "rounds": args.rounds,
               "environment": harness.environment(args.threads), "rows": rows}
    harness.write_json(args.out, payload)
    return payload


if __name__ == "__main__":
    main()
