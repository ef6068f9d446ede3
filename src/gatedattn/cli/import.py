"""Import an HF model directory as a gatedattn model directory.

Reads transformers' Qwen3-Next (every layer full attention; Gated DeltaNet layers are refused), Qwen3, Llama
and Qwen2 directories, and the official gated_attention code's layout (per-KV-group q_proj with its gate
rows, headwise or elementwise, with the o_proj bias of its qkv_bias). load_model reads them directly too.
"""

from __future__ import annotations

import argparse


def add_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("source", metavar="HF_DIR", help="an HF model directory (config.json + safetensors)")
    p.add_argument("--out", required=True, metavar="DIR", help="a new (or empty) folder")


def run(args: argparse.Namespace) -> int:
    from ..hf.export import import_model

    print(f"wrote {import_model(args.source, args.out)}")
    return 0
