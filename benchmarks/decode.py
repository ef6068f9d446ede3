"""KV-cache decoding at batch 1 against HF ``generate``: tokens/s of greedy continuation, same shapes.

Our ``GatedLM.generate`` and HF transformers' ``Qwen3ForCausalLM.generate`` (greedy, batch 1, no early stop)
produce the same number of new tokens from the same prompt, interleaved; the figure is the median over
rounds of HF time / our time. Target: >= 2x.
"""

from __future__ import annotations

import torch

import harness
from gatedattn import GatedLM, load_config


def main(argv=None) -> dict:
    p = harness.base_parser("decode", __doc__)
    p.add_argument("--preset", default="small")
    p.add_argument("--gates", default="none,g1", help="gate positions of our model (the peer is ungated)")
    p.add_argument("--prompt-len", type=int, default=16)
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--dtypes", default="fp32", help="fp32 and/or bf16 (weights cast, no autocast)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    base = load_config(args.preset)
    prompt = torch.randint(0, base.model.vocab_size, (1, args.prompt_len))
    n = args.new_tokens
    cases = {}
    for dtype in args.dtypes.split(","):
        torch_dtype = torch.float32 if dtype == "fp32" else torch.bfloat16
        peer = harness.hf_peer(base.model).to(torch_dtype).eval()
        peer.generation_config.eos_token_id = None  # never stop early, like ours without eos_token_id
        cases[f"hf {dtype}"] = lambda m=peer: m.generate(prompt, max_new_tokens=n, do_sample=False,
                                                        pad_token_id=0)
        for gate in args.gates.split(","):
            cfg = load_config(args.preset, {"model.attention.gate.position": gate})
            ours = GatedLM(cfg.model).to(torch_dtype).eval()
            cases[f"ours gate={gate} {dtype}"] = lambda m=ours: m.generate(prompt, max_new_tokens=n)
    times = harness.interleaved(cases, args.rounds, args.warmup, progress="decode")
    rows = []
    for name in cases:
        who, *_, dtype = name.split()
        row = {"model": name.rsplit(" ", 1)[0], "dtype": dtype, "tokens_per_s": n / harness.median(times[name])}
        if who == "ours":
            row["vs_hf"] = harness.median_ratio(times, f"hf {dtype}", name)
            row["met"] = row["vs_hf"] >= 2.0
        rows.append(row)
    print(f"batch-1 greedy decoding ({args.preset}, prompt {args.prompt_len}, {n} new tokens, "
          f"{args.threads} threads, median of {args.rounds} rounds)")
    print(harness.table(rows, [("model", "model", "s"), ("dtype", "dtype", "s"), ("tokens_per_s", "tok/s", ".0f"),
                               ("vs_hf", "vs HF", ".2f"), ("met", ">= 2x", "")]))
    payload = {"benchmark": "decode", "preset": args.preset, "prompt_len": args.prompt_len, "new_tokens": n,
               "rounds": args.rounds, "environment": harness.environment(args.threads), "rows": rows}
    harness.write_json(args.out, payload)
    return payload


if __name__ == "__main__":
    main()
