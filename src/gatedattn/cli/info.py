"""Parameter counts, gate overhead, per-layer shapes and FLOPs per token of a config.

Built on the meta device, so the paper-size presets cost no memory.
"""

from __future__ import annotations

import argparse
import json

from ..errors import GatedAttnError
from ..reporting import format_number
from .common import add_config_args, config_from_args


def add_parser(p: argparse.ArgumentParser) -> None:
    add_config_args(p)
    p.add_argument("--seq-len", type=int, default=None, help="context for attention FLOPs (default: data.seq_len)")
    p.add_argument("--ranks", type=int, default=8,
                   help="data-parallel ranks for the FSDP memory row (docs/distributed.md)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")


def run(args: argparse.Namespace) -> int:
    from ..modeling.stats import model_stats, training_memory

    cfg = config_from_args(args)
    if args.seq_len is not None and args.seq_len < 1:
        raise GatedAttnError(f"--seq-len must be a positive integer, got {args.seq_len}")
    if args.ranks < 1:
        raise GatedAttnError(f"--ranks must be a positive integer, got {args.ranks}")
    stats = model_stats(cfg.model, args.seq_len if args.seq_len is not None else cfg.data.seq_len)
    stats["training_memory"] = memory = training_memory(cfg.model, args.ranks)
    g = cfg.model.attention.gate
    stats["gate"] = {k: getattr(g, k) for k in ("position", "granularity", "shared_across_heads", "combine",
                                                "activation", "input_dependent")}
    if args.json:
        print(json.dumps(stats, indent=2))
        return 0
    m = cfg.model
    print(f"model: {m.num_layers} layers, d_model {m.d_model}, heads {m.attention.num_heads}/"
          f"{m.attention.num_kv_heads} (q/kv) x {m.attention.head_dim}, vocab {m.vocab_size}"
          + (f", MoE {m.moe.num_experts} experts top-{m.moe.top_k}" if m.moe.num_experts else f", FFN {m.ffn_dim}"))
    print("gate: " + ", ".join(f"{k}={v}" for k, v in stats["gate"].items()))
    rows = [("total parameters", stats["total_params"]), ("active parameters", stats["active_params"]),
            ("embedding parameters", stats["embedding_params"]),
            ("gate-added parameters", stats["gate_added_params"]),
            ("gate-added per layer", stats["gate_added_params_per_layer"]),
            (f"forward FLOPs/token @ {stats['seq_len']}", stats["forward_flops_per_token"]),
            (f"train FLOPs/token @ {stats['seq_len']}", stats["train_flops_per_token"])]
    for name, value in rows:
        print(f"  {name:<32} {value:>18,.0f}  ({format_number(value, si=True)})")
    print(f"  {'gate share of forward FLOPs':<32} {100 * stats['gate_flop_share']:>17.2f}%")
    gib = 2 ** 30
    print("training memory per rank (fp32 weights + gradients + AdamW moments; activations extra):")
    print(f"  {'one process or DDP':<32} {memory['whole_state_bytes'] / gib:>14.2f} GiB")
    print(f"  {f'FSDP over {args.ranks} ranks':<32} {memory['fsdp_state_bytes_per_rank'] / gib:>14.2f} GiB"
          f"  + {memory['largest_unit_bytes'] / gib:.2f} GiB for the largest unit gathered")
    print("layer 0 parameter shapes:")
    for name, shape in stats["layer_shapes"].items():
        print(f"  {name:<40} {'x'.join(map(str, shape))}")
    return 0
