"""Training throughput against the HF peer and against this machine's matmul rate.

Our GatedLM and HF transformers' Qwen3ForCausalLM with identical shapes (layers, width, heads, KV heads,
head dim, FFN, vocabulary, sequence length, tied embeddings, QK-norm) run forward + backward + AdamW steps
on the same batch, in float32 and under bf16 autocast, interleaved with a large square matmul in each dtype.
Model FLOPs utilisation = model FLOPs per step (``model_stats``: 3 x forward, attention included) / step time
/ the matmul rate of the dtype measured in the same rounds.

The ``matmul-only`` row runs just the step's projection matmuls (forward, input and weight gradients of every
nn.Linear at the step's shapes) as bare ``torch.mm`` calls: the MFU a step would reach if attention, norms,
the loss and the optimizer were free. ``--compile blocks,model`` adds our model under ``torch.compile`` as
``train.compile`` runs it (``blocks``: each decoder block; ``model``: the whole forward), compiled before
timing. ``--set key=value`` changes the preset (e.g. a wider, deeper model). Ratios: the median of per-round
ratios, and the ratio of the fastest rounds beside it.
"""

from __future__ import annotations

import torch

import harness
from gatedattn import GatedLM, load_config
from gatedattn.config import parse_value
from gatedattn.modeling.stats import model_stats
from gatedattn.training.compilation import compiled_forward

# Performance round 2's targets (issue 17), for our model in its fastest training mode.
TARGETS = {"fp32": {"vs_hf": 1.3, "mfu": 0.60}, "bf16": {"vs_hf": 1.6, "mfu": 0.35}}
COMPILE_MODES = ("blocks", "model")


def matmul_ceiling_case(model: torch.nn.Module, tokens: int, dtype: torch.dtype):
    """Only the step's projection matmuls, bare: forward, input gradient and weight gradient of every
    nn.Linear (the tied head included; attention scores excluded) on (tokens x in) activations. The time
    a step could take if everything else were free."""
    shapes = [(m.in_features, m.out_features) for m in model.modules() if isinstance(m, torch.nn.Linear)]
    work = []
    for k, n in shapes:
        x, w, g = (torch.randn(tokens, k).to(dtype), torch.randn(n, k).to(dtype), torch.randn(tokens, n).to(dtype))
        work += [(x, w.T, torch.empty(tokens, n, dtype=dtype)), (g, w, torch.empty(tokens, k, dtype=dtype)),
                 (g.T, x, torch.empty(n, k, dtype=dtype))]
    return lambda: [torch.mm(a, b, out=out) for a, b, out in work]


def main(argv=None) -> dict:
    p = harness.base_parser("throughput", __doc__)
    p.add_argument("--preset", default="small")
    p.add_argument("--gate", default="none", help="gate position of our model (the peer is ungated)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--dtypes", default="fp32,bf16")
    p.add_argument("--matmul-size", type=int, default=2048, help="side of the square matmul (default 2048)")
    p.add_argument("--compile", default="", help="also time our model compiled: blocks and/or model, comma-separated")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a preset override (repeatable)")
    args = p.parse_args(argv)
    modes = [m for m in args.compile.split(",") if m]
    if any(m not in COMPILE_MODES for m in modes) or any("=" not in kv for kv in args.set):
        p.error(f"--compile takes {', '.join(COMPILE_MODES)}; --set takes KEY=VALUE")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    overrides = {k: parse_value(v) for k, v in (kv.split("=", 1) for kv in args.set)}
    cfg = load_config(args.preset, {"model.attention.gate.position": args.gate, **overrides})
    seq, tokens = cfg.data.seq_len, args.batch_size * cfg.data.seq_len
    ids = torch.randint(0, cfg.model.vocab_size, (args.batch_size, seq))
    step_flops = model_stats(cfg.model, seq)["train_flops_per_token"] * tokens
    ours, peer = GatedLM(cfg.model), harness.hf_peer(cfg.model)
    dtypes = args.dtypes.split(",")
    cases, matmul_flops, compiled = {}, {}, {}
    for mode in modes:  # each its own copy of the weights, compiled as train.compile=MODE does
        copy = GatedLM(cfg.model)
        copy.load_state_dict(ours.state_dict())
        compiled[mode] = compiled_forward(mode, copy, copy)
    ours_rows = ("ours",) + tuple(f"ours+{m}" for m in modes)
    for dtype in dtypes:
        torch_dtype = torch.float32 if dtype == "fp32" else torch.bfloat16
        cases[f"ours {dtype}"] = harness.train_step(ours, ids, dtype)
        cases[f"hf {dtype}"] = harness.train_step(peer, ids, dtype, hf=True)
        for mode in modes:
            cases[f"ours+{mode} {dtype}"] = harness.train_step(compiled[mode], ids, dtype)
        cases[f"matmul {dtype}"], matmul_flops[dtype] = harness.matmul_case(torch_dtype, args.matmul_size)
        cases[f"matmul-only {dtype}"] = matmul_ceiling_case(ours, tokens, torch_dtype)
    times = harness.interleaved(cases, args.rounds, args.warmup, progress="throughput")
    rows = []
    for dtype in dtypes:
        rate = matmul_flops[dtype] / harness.median(times[f"matmul {dtype}"])
        for who in ours_rows + ("hf", "matmul-only"):
            name = f"{who} {dtype}"
            # Per-round MFU: step FLOPs / step time / the matmul rate of the same round.
            mfu = harness.median([step_flops / t / (matmul_flops[dtype] / m)
                                  for t, m in zip(times[name], times[f"matmul {dtype}"])])
            row = {"model": who, "dtype": dtype, "tokens_per_s": tokens / harness.median(times[name]),
                   "gflops": step_flops / harness.median(times[name]) / 1e9, "matmul_gflops": rate / 1e9,
                   "mfu": mfu}
            if who in ours_rows:
                row["vs_hf"] = harness.median_ratio(times, f"hf {dtype}", name)
                row["vs_hf_best"] = min(times[f"hf {dtype}"]) / min(times[name])
                row["mfu_target"] = TARGETS[dtype]["mfu"]
                row["vs_hf_target"] = TARGETS[dtype]["vs_hf"]
                row["mfu_met"] = row["mfu"] >= row["mfu_target"]
                row["vs_hf_met"] = row["vs_hf"] >= row["vs_hf_target"]
            rows.append(row)
    shape = f"{args.preset}{' ' + ' '.join(args.set) if args.set else ''}"
    params = sum(p.numel() for p in ours.parameters()) / 1e6
    print(f"training throughput ({shape}, {params:.1f}M params, gate {args.gate}, batch {args.batch_size} x {seq}, "
          f"{step_flops / 1e9:.1f} GFLOP/step, {args.threads} threads, median of {args.rounds} rounds)")
    print(harness.table(rows, [("model", "model", "s"), ("dtype", "dtype", "s"), ("tokens_per_s", "tok/s", ".0f"),
                               ("gflops", "GFLOP/s", ".1f"), ("matmul_gflops", "matmul GFLOP/s", ".1f"),
                               ("mfu", "MFU", ".1%"), ("mfu_target", "target", ".0%"), ("mfu_met", "met", ""),
                               ("vs_hf", "vs HF", ".3f"), ("vs_hf_best", "best rounds", ".3f"),
                               ("vs_hf_target", "target", ".1f"),
                               ("vs_hf_met", "met", "")]))
    payload = {"benchmark": "throughput", "preset": args.preset, "overrides": overrides, "gate": args.gate,
               "batch_size": args.batch_size, "seq_len": seq, "step_flops": step_flops, "matmul_size": args.matmul_size, "rounds": args.rounds,
               "environment": harness.environment(args.threads), "rows": rows}
    harness.write_json(args.out, payload)
    return payload


if __name__ == "__main__":
    main()
