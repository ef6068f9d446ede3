"""Cost of measuring the first-token attention share at long context: ``gatedattn.analysis.analyze_model``
(chunked, no T x T matrix) against the ``output_attentions`` way (HF eager attention returning every layer's
attention probabilities).

Both run on the same HF Qwen3 model with the shapes of the preset (sequence length raised as needed). Each
measurement is a fresh child process, so its peak resident memory is its own: peak RSS during the call
minus RSS just before it. The two ways alternate per round. The ``output_attentions`` way is skipped at a
length whose attention matrices alone would not fit in the memory limit; the table says so. The per-layer
shares of both ways are compared where both ran. Target: >= 10x less peak memory at 8k tokens.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

import harness
from gatedattn import load_config

METHODS = ("analysis", "output_attentions")


def _rss_bytes() -> int:
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def child(method: str, tokens: int, preset: str, threads: int) -> dict:
    """One measurement in this (fresh) process: seconds, peak extra memory, per-layer first-token share."""
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    cfg = load_config(preset, {"model.max_position_embeddings": tokens, "data.seq_len": tokens}).model
    model = harness.hf_peer(cfg, implementation="eager" if method == "output_attentions" else "sdpa").eval()
    ids = torch.randint(0, cfg.vocab_size, (1, tokens))
    before = _rss_bytes()
    start = time.perf_counter()
    if method == "analysis":
        from gatedattn.analysis import analyze_model

        share = analyze_model(model, ids, map_layers=[], progress=False)["first_token_share"]
    else:
        with torch.no_grad():
            attentions = model(input_ids=ids, output_attentions=True, use_cache=False).attentions
        # Queries after the sink position (0), as the analysis counts them; mean over heads.
        share = [float(a[0, :, 1:, 0].mean()) for a in attentions]
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"seconds": seconds, "peak_extra_bytes": max(peak - before, 0), "share": share}


def _run_child(method: str, tokens: int, args) -> dict:
    cmd = [sys.executable, __file__, "--child", method, "--tokens-one", str(tokens), "--preset", args.preset,
           "--threads", str(args.threads)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode:
        return {"error": (proc.stderr.strip().splitlines() or ["killed"])[-1]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv=None) -> dict:
    p = harness.base_parser("analysis_cost", __doc__)
    p.add_argument("--preset", default="small")
    p.add_argument("--tokens", default="4096,8192,16384,32768", help="comma-separated sequence lengths")
    p.add_argument("--memory-limit-gib", type=float, default=16.0,
                   help="skip output_attentions where its attention matrices alone exceed this")
    p.add_argument("--child", choices=METHODS, help=argparse.SUPPRESS)  # internal: one measurement
    p.add_argument("--tokens-one", type=int, help=argparse.SUPPRESS)
    p.set_defaults(rounds=2, warmup=0)
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child, args.tokens_one, args.preset, args.threads)))
        return {}
    from tqdm import tqdm

    cfg = load_config(args.preset).model
    rows = []
    lengths = [int(t) for t in args.tokens.split(",")]
    with tqdm(total=len(lengths) * args.rounds * 2, desc="analysis cost") as bar:
        for tokens in lengths:
            # Every layer's (heads x T x T) float32 probabilities are returned at once.
            attn_bytes = cfg.num_layers * cfg.attention.num_heads * tokens ** 2 * 4
            methods = [m for m in METHODS if m == "analysis" or attn_bytes <= args.memory_limit_gib * 2 ** 30]
            runs: dict[str, list[dict]] = {m: [] for m in methods}
            for r in range(args.rounds):
                for m in (methods if r % 2 == 0 else methods[::-1]):
                    runs[m].append(_run_child(m, tokens, args))
                    bar.update(1)
                bar.update(2 - len(methods))
            row = {"tokens": tokens, "output_attentions_matrices_gib": attn_bytes / 2 ** 30}
            for m in methods:
                errors = [x["error"] for x in runs[m] if "error" in x]
                if errors:
                    row[f"{m}_error"] = errors[0]
                    continue
                row[f"{m}_seconds"] = harness.median([x["seconds"] for x in runs[m]])
                row[f"{m}_peak_gib"] = harness.median([x["peak_extra_bytes"] for x in runs[m]]) / 2 ** 30
            if "output_attentions" not in methods:
                row["output_attentions_error"] = f"not run: its matrices need {attn_bytes / 2 ** 30:.0f} GiB"
            if "analysis_seconds" in row and "output_attentions_seconds" in row:
                row["memory_ratio"] = row["output_attentions_peak_gib"] / row["analysis_peak_gib"]
                row["time_ratio"] = row["output_attentions_seconds"] / row["analysis_seconds"]
                row["max_share_difference"] = max(abs(a - b) for a, b in zip(runs["analysis"][0]["share"],
                                                                             runs["output_attentions"][0]["share"]))
            rows.append(row)
    print(f"first-token share at long context ({args.preset} shapes, HF Qwen3, {args.threads} threads, "
          f"median of {args.rounds} fresh processes per cell)")
    print(harness.table(rows, [("tokens", "tokens", "d"), ("analysis_seconds", "analysis s", ".1f"),
                               ("analysis_peak_gib", "analysis peak GiB", ".2f"),
                               ("output_attentions_seconds", "output_attentions s", ".1f"),
                               ("output_attentions_peak_gib", "output_attentions peak GiB", ".2f"),
                               ("memory_ratio", "memory ratio", ".1f"), ("time_ratio", "time ratio", ".2f"),
                               ("max_share_difference", "max share diff", ".1e")]))
    for row in rows:
        if "output_attentions_error" in row:
            print(f"  {row['tokens']} tokens, output_attentions: {row['output_attentions_error']}")
    payload = {"benchmark": "analysis_cost", "preset": args.preset, "rounds": args.rounds,
               "memory_limit_gib": args.memory_limit_gib, "environment": harness.environment(args.threads),
               "rows": rows}
    harness.write_json(args.out, payload)
    return payload


if __name__ == "__main__":
    main()
