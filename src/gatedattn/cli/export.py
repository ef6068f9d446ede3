"""Export a model as a directory that plain transformers loads with its own classes (no custom code).

--to qwen3-next: a G1 elementwise gated model -> Qwen3NextForCausalLM (every layer full attention);
--to qwen3 | qwen2 | llama: an ungated dense model. What the target cannot represent (G2..G5 gates, headwise
gates for Qwen3-Next, sinks, register tokens, ...) is refused with one line. The tokenizer goes along as a
tokenizer.json that AutoTokenizer loads.
"""

from __future__ import annotations

import argparse


def add_parser(p: argparse.ArgumentParser) -> None:
    from ..modeling.hf_convert import EXPORT_TARGETS

    p.add_argument("model", metavar="MODEL", help="a model directory, checkpoint or training run (or anything "
                                                  "`gatedattn import` reads)")
    p.add_argument("--to", required=True, choices=EXPORT_TARGETS, help="the transformers model family to write")
    p.add_argument("--out", required=True, metavar="DIR", help="a new (or empty) folder")


def run(args: argparse.Namespace) -> int:
    from ..artifacts import load_model
    from ..hf.export import export_model

    out = export_model(load_model(args.model), args.to, args.out)
    print(f"wrote {out} (transformers {args.to}: AutoModelForCausalLM.from_pretrained({str(out)!r}))")
    return 0
