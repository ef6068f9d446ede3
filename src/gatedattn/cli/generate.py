"""Generate text from a trained model (KV cache; temperature / top-p / top-k sampling or greedy)."""

from __future__ import annotations

import argparse



def add_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", metavar="MODEL", help="a model directory, checkpoint or training run directory")
    p.add_argument("--prompt", required=True, help="text to continue")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--temperature", type=float, default=0.8, help="0 = greedy")
    p.add_argument("--top-p", type=float, default=0.95)
    p.add_argument("--top-k", type=int, default=0, help="0 = no top-k cut")
    p.add_argument("--seed", type=int, default=0)


def run(args: argparse.Namespace) -> int:
    from ..training import generate_text, load_pretrained
    from ..training.trainer import pick_device

    loaded = load_pretrained(args.model, pick_device("auto"))
    text = generate_text(loaded.model, loaded.tokenizer, args.prompt, args.max_new_tokens, args.temperature,
                         args.top_p, args.top_k, args.seed)
    print(args.prompt + text)
    return 0
