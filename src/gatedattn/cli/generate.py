"""Generate text from a trained model (KV cache; temperature / top-p / top-k sampling or greedy)."""

from __future__ import annotations

import argparse

from ..config import DEVICES, WEIGHT_DTYPES
from ..errors import GatedAttnError


def add_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", metavar="MODEL", help="a model directory, checkpoint or training run directory")
    p.add_argument("--prompt", required=True, help="text to continue")
    p.add_argument("--max-new-tokens", type=int, default=64,
                   help="at most this many tokens (prompt + new tokens must fit model.max_position_embeddings)")
    p.add_argument("--temperature", type=float, default=0.8, help="0 = greedy; finite, >= 0")
    p.add_argument("--top-p", type=float, default=0.95, help="nucleus sampling, in (0, 1]")
    p.add_argument("--top-k", type=int, default=0, help="0 = no top-k cut; >= 0")
    p.add_argument("--seed", type=int, default=0, help="seed of the sampling")
    p.add_argument("--device", choices=DEVICES, default="auto", help="auto = CUDA when available, else CPU")
    p.add_argument("--dtype", choices=WEIGHT_DTYPES, default="float32", help="the weights' dtype")
    p.add_argument("--compile", action="store_true",
                   help="static KV cache and a compiled decoding step: faster per token after a compilation "
                        "of 10-50 s, so for long outputs (full-attention models with dense FFNs)")


def run(args: argparse.Namespace) -> int:
    from ..artifacts import load_model
    from ..evaluation.generation import generate_text
    from ..training.trainer import pick_device

    loaded = load_model(args.model, pick_device(args.device, "--device"), args.dtype)
    if not loaded.is_ours:
        raise GatedAttnError(f"{args.model}: generate works on gatedattn models; allowed: a model directory, "
                             "checkpoint or training run of gatedattn")
    text = generate_text(loaded.model, loaded.require_tokenizer(), args.prompt, args.max_new_tokens,
                         args.temperature, args.top_p, args.top_k, args.seed, compile=args.compile)
    print(args.prompt + text)
    return 0
