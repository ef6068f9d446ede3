"""Qwen3-Next-style hybrid (3 Gated DeltaNet : 1 gated attention layer) against all gated attention: training
tokens/s and decoding tokens/s by context length on CPU.

Both models are the preset's shapes with a G1 gate; the hybrid sets ``model.layer_types`` (default
``full_attention_every_4``) and Gated DeltaNet heads of the attention's head size. Training: one forward +
backward + AdamW step on one sequence of the context length. Decoding: after a prefill of the context
(untimed), ``--new-tokens`` greedy single-token steps with the cache, so each step's cost is its cost at that
context (attention reads the whole KV cache; a DeltaNet layer reads its fixed-size state). Cases alternate
per round; figures are medians over rounds, the speedup the median of the per-round ratio.
"""

from __future__ import annotations

import time

import torch

import harness
from gatedattn import GatedLM, KVCache, load_config


def models(args, context: int) -> dict[str, GatedLM]:
    base = {"model.attention.gate.position": "g1", "model.max_position_embeddings": max(context + args.new_tokens,
                                                                                         2048),
            "model.num_layers": args.layers}
    cfg = load_config(args.preset, base).model
    head = cfg.attention.head_dim
    linear = {"model.layer_types": args.pattern, "model.linear_attention.key_head_dim": head,
              "model.linear_attention.value_head_dim": head,
              "model.linear_attention.num_key_heads": cfg.attention.num_kv_heads,
              "model.linear_attention.num_value_heads": cfg.attention.num_heads}
    torch.manual_seed(0)
    return {"attention": GatedLM(cfg), "hybrid": GatedLM(load_config(args.preset, {**base, **linear}).model)}


def decode_steps(model: GatedLM, prompt: torch.Tensor, new_tokens: int):
    """A closure timing ``new_tokens`` cached steps after an untimed prefill of ``prompt``."""
    def run():
        with torch.inference_mode():
            cache = KVCache(len(model.layers), capacity=prompt.shape[1] + new_tokens)
            nxt = model(prompt, past_key_values=cache).logits[:, -1:].argmax(-1)
            start = time.perf_counter()  # the prefill is done
            for _ in range(new_tokens):
                nxt = model(nxt, past_key_values=cache).logits[:, -1:].argmax(-1)
            run.seconds = time.perf_counter() - start
    return run


def main(argv=None) -> dict:
    p = harness.base_parser("hybrid", __doc__)
    p.add_argument("--preset", default="small")
    p.add_argument("--layers", type=int, default=4, help="model.num_layers of both models")
    p.add_argument("--pattern", default="full_attention_every_4", help="the hybrid's model.layer_types")
    p.add_argument("--contexts", default="1024,2048,4096,8192,16384")
    p.add_argument("--new-tokens", type=int, default=32, help="decoding steps timed per context")
    p.set_defaults(rounds=3, warmup=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = []
    for context in map(int, args.contexts.split(",")):
        pair = models(args, context)
        ids = torch.randint(0, pair["attention"].config.vocab_size, (1, context))
        cases = {f"train {n}": harness.train_step(m, ids, "fp32") for n, m in pair.items()}
        train = harness.interleaved(cases, args.rounds, args.warmup, progress=f"train @ {context}")
        steps = {n: decode_steps(m.eval(), ids, args.new_tokens) for n, m in pair.items()}
        decode = {n: [] for n in steps}
        for r in range(args.warmup + args.rounds):  # alternate; keep only the timed decoding part
            for n in (list(steps) if r % 2 == 0 else list(steps)[::-1]):
                steps[n]()
                if r >= args.warmup:
                    decode[n].append(steps[n].seconds)
        for n, m in pair.items():
            rows.append({"context": context, "model": n, "params": sum(q.numel() for q in m.parameters()),
                         "train_tokens_per_s": context / harness.median(train[f"train {n}"]),
                         "decode_tokens_per_s": args.new_tokens / harness.median(decode[n]),
                         "train_speedup": harness.median_ratio(train, "train attention", f"train {n}"),
                         "decode_speedup": harness.median([a / b for a, b in zip(decode["attention"], decode[n])])})
        write(args, rows)  # after each context: a long run killed at 16k keeps the shorter contexts
    payload = write(args, rows)
    print(f"hybrid ({args.pattern}) vs all-attention, {args.preset} shapes with {args.layers} layers, G1 gate, "
          f"fp32, batch 1, {args.threads} threads, median of {args.rounds} rounds")
    print(harness.table(rows, [("context", "context", "d"), ("model", "model", "s"), ("params", "params", ",d"),
                               ("train_tokens_per_s", "train tok/s", ".0f"),
                               ("train_speedup", "x attention", ".2f"),
                               ("decode_tokens_per_s", "decode tok/s", ".1f"),
                               ("decode_speedup", "x attention", ".2f")]))
    return payload


def write(args, rows: list[dict]) -> dict:
    payload = {"benchmark": "hybrid", "preset": args.preset, "layers": args.layers, "pattern": args.pattern,
               "new_tokens": args.new_tokens, "rounds": args.rounds, "warmup": args.warmup,
               "environment": harness.environment(args.threads), "rows": rows}
    harness.write_json(args.out, payload)
    return payload


if __name__ == "__main__":
    main()
