"""Add an identity-at-init gate to a pretrained model (ours, smollm2 or an HF directory): same function at step 0.

The gate is 2·sigmoid(X·W) with W = 0 (generally act(X·W) / act(0); gate.init=identity), so the new model's
logits equal the old ones until training moves W. DIR is an ordinary model directory of ours, with a
train.yaml for continued training:
  gatedattn train DIR/train.yaml --init-from DIR --data shakespeare --set train.trainable=gates
"""

from __future__ import annotations

import argparse

from ..modeling.retrofit import GATE_SPEC_WORDS


def add_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", metavar="MODEL", help="smollm2, a model or run directory of ours, or a HF model directory")
    p.add_argument("--gate", required=True, metavar="POSITION[,WORD...]",
                   help=f"g1..g5, then any of: {', '.join(GATE_SPEC_WORDS)} (e.g. g1,headwise); none = no gate "
                        "(the control: the model converted as it is)")
    p.add_argument("--out", required=True, metavar="DIR", help="the new model directory")


def run(args: argparse.Namespace) -> int:
    from ..artifacts.retrofit import CHECK_TOKENS, TRAIN_CONFIG_NAME, retrofit

    r = retrofit(args.model, args.gate, args.out)
    g = r.model.config.attention.gate
    what = "no gate" if g.position == "none" else f"a {g.position} {g.granularity} gate (init=identity)"
    print(f"{r.out_dir}: {args.model} with {what}; step-0 check: "
          f"max |logit difference| {r.max_abs_logit_diff:.3g} on {CHECK_TOKENS} tokens; continue with: gatedattn train "
          f"{r.out_dir / TRAIN_CONFIG_NAME} --init-from {r.out_dir} --data ...")
    return 0
