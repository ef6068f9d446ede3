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

``--measure memory`` measures memory instead, each case and length in a fresh child process (Linux): the
peak resident memory a prefill of L tokens adds (peak RSS during the call minus RSS before it), the cache's
bytes per context token after it (keys, values and DSA's indexer keys), and the peak a decoded token adds.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import torch

import harness
from gatedattn import load_config
from gatedattn.modeling.attention import Attention
from gatedattn.modeling.cache import KVCache
from gatedattn.modeling.rope import RotaryEmbedding


def layer(cfg, seed: int = 0) -> Attention:
    torch.manual_seed(seed)
    return Attention(cfg.model, 0).eval()


def build(args):
    """The dense layer and one DSA layer per indexer dtype (same seed: the same indexer weights in every dtype;
    the dense layer's own weights), with the dense config and the dtypes."""
    base = {"model.d_model": 512, "model.attention.num_heads": 8, "model.attention.num_kv_heads": 2,
            "model.attention.head_dim": 64, "model.max_position_embeddings": 65536}
    dtypes = args.indexer_dtypes.split(",")
    sparse = {**base, "model.attention.sparse.type": "dsa", "model.attention.sparse.top_k": args.top_k,
              "model.attention.sparse.indexer_heads": 4, "model.attention.sparse.indexer_dim": 64,
              "model.attention.sparse.implementation": "gather", "model.attention.sparse.query_chunk": 512}
    dense_cfg = load_config("tiny", base)
    dense = layer(dense_cfg)
    models = {"dense": dense}
    for dt in dtypes:
        models[f"dsa-{dt}"] = layer(load_config("tiny", {**sparse, "model.attention.sparse.indexer_dtype": dt}))
        models[f"dsa-{dt}"].load_state_dict(dense.state_dict(), strict=False)
    return models, dense_cfg, dtypes


def _status_bytes(field: str) -> int:
    line = next(x for x in Path("/proc/self/status").read_text().splitlines() if x.startswith(field + ":"))
    return int(line.split()[1]) * 1024


def _peak_extra(fn) -> int:
    """Peak resident bytes ``fn`` adds: the peak RSS is reset (Linux clear_refs 5) just before it."""
    Path("/proc/self/clear_refs").write_text("5")
    before = _status_bytes("VmRSS")
    fn()
    return max(_status_bytes("VmHWM") - before, 0)


def decoder(m, x, cos, sin, L: int, n: int):
    """A cache holding the first L tokens of x, and a call that decodes the next n one at a time and rewinds
    the cache, so every call decodes the same tokens."""
    cache = KVCache(1, capacity=L + n)
    with torch.inference_mode():
        m(x[:, :L], cos[:L], sin[:L], cache)

    def run():
        for i in range(n):
            m(x[:, L + i:L + i + 1], cos[L + i:L + i + 1], sin[L + i:L + i + 1], cache)
        cache.truncate(L)
    return cache, run


def child(args) -> dict:
    """One case at one length in this fresh process: prefill's and a decoded token's added peak memory, and
    the cache's bytes per context token."""
    models, dense_cfg, _ = build(args)
    m, L, n = models[args.child], args.length, args.decode_steps
    x = torch.randn(1, L + n, dense_cfg.model.d_model)
    cos, sin = RotaryEmbedding(dense_cfg.model)(torch.arange(L + n), torch.float32)
    # Each measured call follows an unmeasured one: first calls also map the kernels' code pages.
    with torch.inference_mode():
        m(x[:, :L], cos[:L], sin[:L])
        prefill = _peak_extra(lambda: m(x[:, :L], cos[:L], sin[:L]))
        cache, decode = decoder(m, x, cos, sin, L, n)
        cached = sum(b.element_size() * b[:, :L].numel() for store in (cache._k, cache._v, cache._index_k)
                     for b in store if b is not None)
        decode()
        decode_peak = _peak_extra(decode)
    return {"prefill_peak_bytes": prefill, "cache_bytes_per_token": cached / L, "decode_peak_bytes": decode_peak}


def memory(args, cases: list[str], dtypes: list[str]) -> dict:
    rows = []
    for L in (int(x) for x in args.lengths.split(",")):
        row = {"length": L}
        for case in cases:
            cmd = [sys.executable, __file__, "--child", case, "--length", str(L), "--threads", str(args.threads),
                   "--top-k", str(args.top_k), "--decode-steps", str(args.decode_steps),
                   "--indexer-dtypes", args.indexer_dtypes]
            # A fixed mmap threshold: freed buffers go back to the system, so the warm-up call's do not stay resident.
            env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
            proc = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env)
            out = json.loads(proc.stdout.splitlines()[-1])
            key = case.replace("-", "_")
            row[f"{key}_prefill_mb"] = out["prefill_peak_bytes"] / 2 ** 20
            row[f"{key}_cache_bytes_per_token"] = out["cache_bytes_per_token"]
            row[f"{key}_decode_mb"] = out["decode_peak_bytes"] / 2 ** 20
        print(f"L={L} done", file=sys.stderr)
        rows.append(row)
    columns = [("length", "L", "d")]
    for what, header, fmt in (("prefill_mb", "prefill MB", ".1f"), ("cache_bytes_per_token", "cache B/tok", ".0f"),
                              ("decode_mb", "decode MB", ".1f")):
        columns += [(f"{c.replace('-', '_')}_{what}", f"{c} {header}", fmt) for c in cases]
    print(f"one attention layer, dense SDPA vs DSA (top-k {args.top_k}, gather path): added peak resident memory "
          f"of a prefill of L tokens and of {args.decode_steps} decoded tokens, and the cache per context token")
    print(harness.table(rows, columns))
    payload = {"benchmark": "sparse_attention_memory", "top_k": args.top_k, "decode_steps": args.decode_steps,
               "indexer_dtypes": dtypes, "environment": harness.environment(args.threads), "rows": rows}
    harness.write_json(args.out, payload)
    return payload


def main(argv=None) -> dict:
    p = harness.base_parser("sparse_attention", __doc__)
    p.add_argument("--lengths", default="1024,2048,4096,8192,16384", help="context lengths (comma-separated)")
    p.add_argument("--top-k", type=int, default=256)
    p.add_argument("--decode-steps", type=int, default=8, help="decoded tokens timed per call")
    p.add_argument("--indexer-dtypes", default="float32,bfloat16", help="DSA indexer dtypes (comma-separated)")
    p.add_argument("--measure", choices=["time", "memory"], default="time",
                   help="time per token (default), or peak memory in child processes")
    p.add_argument("--child", help=argparse.SUPPRESS)  # memory: the case one child process measures
    p.add_argument("--length", type=int, help=argparse.SUPPRESS)
    p.set_defaults(rounds=3, warmup=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.child:
        print(json.dumps(child(args)))
        return {}
    models, dense_cfg, dtypes = build(args)
    if args.measure == "memory":
        return memory(args, list(models), dtypes)
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
            return decoder(m, x, cos, sin, L, n)[1]

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
