"""Cost of the gate in a training step: gated / ungated step time per position and granularity, beside
the gate's share of the model FLOPs.

Every case is a forward + backward + AdamW step on the same batch; the ungated model runs in every round
and each overhead is the median over rounds of (gated step / ungated step) - 1. Targets: headwise G1 <= 2%
of a step; elementwise G1 <= its FLOP share + 2%.
"""

from __future__ import annotations

import torch

import harness
from gatedattn import GatedLM, load_config
from gatedattn.modeling.stats import model_stats

VARIANTS = [(p, g) for p in ("g1", "g2", "g3", "g4", "g5") for g in ("elementwise", "headwise") if (p, g) != ("g5", "headwise")]


def main(argv=None) -> dict:
    p = harness.base_parser("gate_overhead", __doc__)
    p.add_argument("--preset", default="small")
    p.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32", help="bf16 = autocast")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--positions", default="g1,g2,g3,g4,g5", help="comma-separated subset of g1..g5")
    p.set_defaults(rounds=9)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    base_cfg = load_config(args.preset)
    seq = base_cfg.data.seq_len
    ids = torch.randint(0, base_cfg.model.vocab_size, (args.batch_size, seq))
    variants = [v for v in VARIANTS if v[0] in args.positions.split(",")]
    cases = {"none": harness.train_step(GatedLM(base_cfg.model), ids, args.dtype)}
    stats = {}
    for position, granularity in variants:
        name = f"{position} {granularity}"
        cfg = load_config(args.preset, {"model.attention.gate.position": position,
                                        "model.attention.gate.granularity": granularity})
        cases[name] = harness.train_step(GatedLM(cfg.model), ids, args.dtype)
        stats[name] = model_stats(cfg.model, seq)
    times = harness.interleaved(cases, args.rounds, args.warmup, progress="gate overhead")
    rows = []
    for position, granularity in variants:
        name = f"{position} {granularity}"
        s = stats[name]
        overhead = harness.median_ratio(times, name, "none") - 1
        row = {"position": position, "granularity": granularity, "gate_params": s["gate_added_params"],
               "flop_share": s["gate_flop_share"], "step_overhead": overhead,
               "excess_over_flops": overhead - s["gate_flop_share"]}
        if position == "g1":
            limit = 0.02 if granularity == "headwise" else s["gate_flop_share"] + 0.02
            row.update(target=limit, met=overhead <= limit)
        rows.append(row)
    base_tok_s = args.batch_size * seq / harness.median(times["none"])
    print(f"gate overhead in a training step ({args.preset}, {args.dtype}, batch {args.batch_size} x {seq}, "
          f"ungated {base_tok_s:.0f} tok/s, {args.threads} threads, median of {args.rounds} rounds)")
    print(harness.table(rows, [("position", "position", "s"), ("granularity", "granularity", "s"),
                               ("gate_params", "gate params", ","), ("flop_share", "FLOP share", ".2%"),
                               ("step_overhead", "step overhead", ".2%"), ("target", "target", ".2%"),
                               ("met", "met", "")]))
    payload = {"benchmark": "gate_overhead", "preset": args.preset, "dtype": args.dtype,
               "batch_size": args.batch_size, "seq_len": seq, "rounds": args.rounds,
               "ungated_tokens_per_s": base_tok_s, "environment": harness.environment(args.threads),
               "rows": rows, "step_seconds": {k: harness.median(v) for k, v in times.items()}}
    harness.write_json(args.out, payload)
    return payload


if __name__ == "__main__":
    main()
