"""DSA against dense SDPA: one attention layer's time per token over context lengths, prefill and decoding.

One attention layer (our ``Attention``; width 512, 8 query / 2 KV heads of 64, QK-norm) with and without
``attention.sparse`` (top-k 256 by default, 4 indexer heads of 64, the gather path), same weights, timed
interleaved; DSA once per ``--indexer-dtypes`` (float32, and bfloat16 as DeepSeek-V3.2 runs its indexer in low
precision):

- prefill: the whole context of L tokens at once (causal), seconds per token;
- decode: one new token against a cache of L tokens, seconds per token.

Dense attention does O(L) work per token in both; DSA's attention does O(top_k), but its indexer still
scores all L past tokens (cheaply: 4 heads of 64, one shared key), so the crossover is where the saved
attention outweighs the indexer. ``bytes_per_token`` is what a decoded token reads from the cache:
dense 2 x L x K x D float32 values; DSA L x indexer_dim indexer keys (4 or 2 bytes) plus 2 x top_k x K x D.
"""

from __future__ import annotations

import torch

import harness
from gatedattn import load_config
from gatedattn.modeling.attention import Attention
from gatedattn.modeling.cache import KVCache
from gatedattn.modeling.rope import RotaryEmbedding


def layer(cfg, seed: int = 0) -> Attention:
    torch.manual_seed(seed)
    return Attention(cfg.model, 0).eval()


def main(argv=None) -> dict:
    p = harness.base_parser("sparse_attention", __doc__)
    p.add_argument("--lengths", default="1024,2048,4096,8192,16384", help="context lengths (comma-separated)")
    p.add_argument("--top-k", type=int, default=256)
    p.add_argument("--decode-steps", type=int, default=8, help="decoded tokens timed per call")
    p.add_argument("--indexer-dtypes", default="float32,bfloat16", help="DSA indexer dtypes (comma-separated)")
    p.set_defaults(rounds=3, warmup=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    base = {"model.d_model": 512, "model.attention.num_heads": 8, "model.attention.num_kv_heads": 2,
            "model.attention.head_dim": 64, "model.max_position_embeddings": 65536}
    dtypes = args.indexer_dtypes.split(",")
    sparse = {**base, "model.attention.sparse.type": "dsa", "model.attention.sparse.top_k": args.top_k,
              "model.attention.sparse.indexer_heads": 4, "model.attention.sparse.indexer_dim": 64,
              "model.attention.sparse.implementation": "gather", "model.attention.sparse.query_chunk": 512}
    dense_cfg = load_config("tiny", base)
    dense = layer(dense_cfg)
    models = {"dense": dense}
    for dt in dtypes:  # same seed: the same indexer weights in every dtype; the dense layer's own weights
        models[f"dsa-{dt}"] = layer(load_config("tiny", {**sparse, "model.attention.sparse.indexer_dtype": dt}))
        models[f"dsa-{dt}"].load_state_dict(dense.state_dict(), strict=False)
    rotary = RotaryEmbedding(dense_cfg.model)
    a = dense_cfg.model.attention
    rows = []
    for L in (int(x) for x in args.lengths.split(",")):
        n = args.decode_steps
        x = torch.randn(1, L + n, dense_cfg.model.d_model)
        cos, sin = rotary(torch.arange(L + n), torch.float32)

        def prefill(m):
            return lambda: m(x[:, :L], cos[:L], sin[:L])

        def decode(m):
            cache = KVCache(1, capacity=L + n)
            with torch.inference_mode():
                m(x[:, :L], cos[:L], sin[:L], cache)

            def run():
                for i in range(n):  # the cache is rewound after each call, so every call decodes the same tokens
                    m(x[:, L + i:L + i + 1], cos[L + i:L + i + 1], sin[L + i:L + i + 1], cache)
                cache.truncate(L)
            return run

        cases = {f"{name} {phase}": (prefill if phase == "prefill" else decode)(m)
                 for phase in ("prefill", "decode") for name, m in models.items()}
        with torch.inference_mode():
            times = harness.interleaved(cases, args.rounds, args.warmup, progress=f"L={L}")
        kv = a.num_kv_heads * a.head_dim * 4
        for phase, tokens in (("prefill", L), ("decode", n)):
            row = {"length": L, "phase": phase,
                   "dense_us_per_token": 1e6 * harness.median(times[f"dense {phase}"]) / tokens}
            if phase == "decode":
                row["dense_bytes_per_token"] = 2 * L * kv
            for dt in dtypes:
                row[f"dsa_{dt}_us_per_token"] = 1e6 * harness.median(times[f"dsa-{dt} {phase}"]) / tokens
                row[f"speedup_{dt}"] = harness.median_ratio(times, f"dense {phase}", f"dsa-{dt} {phase}")
                if phase == "decode":
                    key_bytes = torch.empty(0, dtype=getattr(torch, dt)).element_size()
                    row[f"dsa_{dt}_bytes_per_token"] = L * 64 * key_bytes + 2 * min(args.top_k, L) * kv
            rows.append(row)
    crossover = {dt: {phase: next((r["length"] for r in rows if r["phase"] == phase and r[f"speedup_{dt}"] > 1), None)
                      for phase in ("prefill", "decode")} for dt in dtypes}
    print(f"one attention layer, dense SDPA vs DSA (top-k {args.top_k}, gather path), {args.threads} threads, "
          f"median of {args.rounds} rounds")
    columns = [("length", "L", "d"), ("phase", "phase", "s"), ("dense_us_per_token", "dense us/tok", ".1f")]
    for dt in dtypes:
        columns += [(f"dsa_{dt}_us_per_token", f"DSA {dt} us/tok", ".1f"), (f"speedup_{dt}", "dense/DSA", ".2f")]
    columns += [("dense_bytes_per_token", "dense B/tok", ".0f")]
    columns += [(f"dsa_{dt}_bytes_per_token", f"DSA {dt} B/tok", ".0f") for dt in dtypes]
    print(harness.table(rows, columns))
    for dt in dtypes:
        print(f"crossover (first length where DSA {dt} is faster): prefill {crossover[dt]['prefill']}, "
              f"decode {crossover[dt]['decode']}")
    payload = {"benchmark": "sparse_attention", "top_k": args.top_k, "rounds": args.rounds,
               "decode_steps": args.decode_steps, "indexer_dtypes": dtypes, "crossover": crossover,
               "environment": harness.environment(args.threads), "rows": rows}
    harness.write_json(args.out, payload)
    return payload


if __name__ == "__main__":
    main()
