"""KV-cache decoding at batch 1 against HF ``generate``: tokens/s of greedy continuation, same shapes.

Our ``GatedLM.generate``, eager and with ``compile=True`` (static cache, compiled step), and HF transformers'
``Qwen3ForCausalLM.generate`` with the preset's shapes (or, with ``--model``, a pretrained HF model against
our import of it) make the same number of new tokens greedily from the same prompt at batch 1, interleaved;
the compilation falls in the warm-up rounds. The ratio is the median over rounds of HF time / our time, with
the ratio of the fastest rounds beside it. Target: >= 2x.

The floor is what memory traffic alone allows: per token, decoding reads every weight once (the tied
embedding as the output layer) and the KV cache (its mean length over the run); the floor time is a copy of
that many bytes, measured in the same run (a copy also writes them, so the floor errs low).
"""

from __future__ import annotations

import copy
import time

import torch

import harness
from gatedattn import GatedLM, load_config


def bytes_per_token(model: GatedLM, mean_cached: float) -> int:
    """Weights (each tensor once: tied weights are one tensor) plus the mean KV cache read per token."""
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    a, p = model.config.attention, next(model.parameters())
    kv = 2 * len(model.layers) * a.num_kv_heads * a.head_dim * mean_cached * p.element_size()
    return int(weights + kv)


def copy_seconds(nbytes: int, rounds: int) -> float:
    """Fastest of ``rounds`` copies of ``nbytes`` between two warm buffers."""
    src, dst = torch.ones(nbytes // 4), torch.empty(nbytes // 4)
    best = float("inf")
    for _ in range(rounds + 2):
        start = time.perf_counter()
        dst.copy_(src)
        best = min(best, time.perf_counter() - start)
    return best


def main(argv=None) -> dict:
    p = harness.base_parser("decode", __doc__)
    p.add_argument("--preset", default="small")
    p.add_argument("--gates", default="none,g1", help="gate positions of our model (the peer is ungated)")
    p.add_argument("--prompt-len", type=int, default=16)
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--dtypes", default="fp32", help="fp32 and/or bf16 (weights cast, no autocast)")
    p.add_argument("--no-compile", action="store_true", help="leave out generate(compile=True)")
    p.add_argument("--model", help="a pretrained HF model instead of --preset (e.g. smollm2): HF's generate on it "
                                   "against ours on its import (ungated)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    pretrained = None
    if args.model:
        from gatedattn.artifacts import load_model
        from gatedattn.modeling.hf_convert import from_hf

        hf = load_model(args.model).model.eval()
        pretrained, args.gates = (hf, from_hf(hf).eval()), "none"
    vocab = pretrained[1].config.vocab_size if pretrained else load_config(args.preset).model.vocab_size
    prompt = torch.randint(0, vocab, (1, args.prompt_len))
    n = args.new_tokens
    cases, floors = {}, {}
    for dtype in args.dtypes.split(","):
        torch_dtype = torch.float32 if dtype == "fp32" else torch.bfloat16
        peer = (copy.deepcopy(pretrained[0]) if pretrained else
                harness.hf_peer(load_config(args.preset).model)).to(torch_dtype).eval()
        peer.generation_config.eos_token_id = None  # never stop early, like ours without eos_token_id
        cases[f"hf {dtype}"] = lambda m=peer: m.generate(prompt, max_new_tokens=n, do_sample=False,
                                                        pad_token_id=0)
        for gate in args.gates.split(","):
            if pretrained:
                ours = copy.deepcopy(pretrained[1]).to(torch_dtype)
            else:
                cfg = load_config(args.preset, {"model.attention.gate.position": gate})
                ours = GatedLM(cfg.model).to(torch_dtype).eval()
            cases[f"ours gate={gate} eager {dtype}"] = lambda m=ours: m.generate(prompt, max_new_tokens=n)
            if not args.no_compile:
                cases[f"ours gate={gate} compiled {dtype}"] = \
                    lambda m=ours: m.generate(prompt, max_new_tokens=n, compile=True)
            floors[f"gate={gate} {dtype}"] = bytes_per_token(ours, args.prompt_len + n / 2)
    times = harness.interleaved(cases, args.rounds, args.warmup, progress="decode")
    rows = []
    for name in cases:
        who, *mid, dtype = name.split()
        row = {"model": name.rsplit(" ", 1)[0], "dtype": dtype, "tokens_per_s": n / harness.median(times[name]),
               "best_tokens_per_s": n / min(times[name])}
        if who == "ours":
            row["vs_hf"] = harness.median_ratio(times, f"hf {dtype}", name)
            row["vs_hf_best"] = min(times[f"hf {dtype}"]) / min(times[name])
            row["met"] = row["vs_hf"] >= 2.0
            nbytes = floors[f"{mid[0]} {dtype}"]
            row["bytes_per_token"] = nbytes
            row["floor_tokens_per_s"] = 1.0 / copy_seconds(nbytes, args.rounds)
            row["of_floor"] = row["best_tokens_per_s"] / row["floor_tokens_per_s"]
        rows.append(row)
    print(f"batch-1 greedy decoding ({args.model or args.preset}, prompt {args.prompt_len}, {n} new tokens, "
          f"{args.threads} threads, median / best of {args.rounds} rounds)")
    print(harness.table(rows, [("model", "model", "s"), ("dtype", "dtype", "s"), ("tokens_per_s", "tok/s", ".0f"),
                               ("best_tokens_per_s", "best", ".0f"), ("vs_hf", "vs HF", ".2f"),
                               ("vs_hf_best", "vs HF best", ".2f"), ("met", ">= 2x", ""),
                               ("floor_tokens_per_s", "floor tok/s", ".0f"), ("of_floor", "best / floor", ".0%")]))
    payload = {"benchmark": "decode", "model": args.model or args.preset, "prompt_len": args.prompt_len,
               "new_tokens": n, "rounds": args.rounds, "environment": harness.environment(args.threads), "rows": rows}
    harness.write_json(args.out, payload)
    return payload


if __name__ == "__main__":
    main()
