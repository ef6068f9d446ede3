"""Where the time goes: torch.profiler over training steps or batch-1 decoding of our model.

Prints the top operators by self CPU time (grouped by input shapes) per step or per generated token and
writes them as JSON. Profiler overhead inflates small ops: read shares, and time with the other scripts.
"""

from __future__ import annotations

import torch
from torch.profiler import profile

import harness
from gatedattn import GatedLM, load_config


def main(argv=None) -> dict:
    p = harness.base_parser("profile_step", __doc__)
    p.add_argument("--preset", default="small")
    p.add_argument("--gate", default="none")
    p.add_argument("--what", choices=("train", "decode"), default="train")
    p.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32", help="train: bf16 = autocast")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--top", type=int, default=25)
    p.set_defaults(rounds=2)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cfg = load_config(args.preset, {"model.attention.gate.position": args.gate})
    model = GatedLM(cfg.model)
    ids = torch.randint(0, cfg.model.vocab_size, (args.batch_size, cfg.data.seq_len))
    if args.what == "train":
        run, per = harness.train_step(model, ids, args.dtype), args.rounds
    else:
        model.eval()
        run, per = (lambda: model.generate(ids[:1, :16], max_new_tokens=args.new_tokens)), \
            args.rounds * args.new_tokens
    for _ in range(args.warmup):
        run()
    with profile(record_shapes=True) as prof:
        for _ in range(args.rounds):
            run()
    events = sorted(prof.key_averages(group_by_input_shape=True), key=lambda e: -e.self_cpu_time_total)
    total = sum(e.self_cpu_time_total for e in events)
    rows = [{"op": e.key.removeprefix("aten::")[:40], "shapes": str(e.input_shapes)[:70], "ms": e.self_cpu_time_total / 1e3 / per,
             "share": e.self_cpu_time_total / total, "calls": e.count / per} for e in events[:args.top]]
    unit = "step" if args.what == "train" else "token"
    print(f"{args.what} ({args.preset}, gate {args.gate}, {args.dtype}, {args.threads} threads): "
          f"{total / 1e3 / per:.1f} ms self CPU per {unit}")
    print(harness.table(rows, [("ms", f"ms/{unit}", ".2f"), ("share", "share", ".1%"), ("calls", "calls", ".1f"),
                               ("op", "op", "s"), ("shapes", "input shapes", "s")]))
    payload = {"benchmark": "profile_step", "what": args.what, "preset": args.preset, "gate": args.gate,
               "dtype": args.dtype, "per": unit, "total_ms": total / 1e3 / per,
               "environment": harness.environment(args.threads), "rows": rows}
    harness.write_json(args.out, payload)
    return payload


if __name__ == "__main__":
    main()
