"""Export parity: the largest |logit difference| between a GatedLM and transformers' own class for the same
weights (`gatedattn.hf.export.to_native`), per export target, in float32 and in bfloat16.

Each model is randomly initialised and every parameter (norms and biases too) moved by N(0, 0.05), so no
weight sits at a special value. bf16 is put beside each side's own bf16-vs-fp32 error, the scale at which
two correct bf16 implementations may differ. Not a timing: no ratios, one pass.
"""

from __future__ import annotations

import torch

import harness
from gatedattn import GatedLM, load_config
from gatedattn.hf import GatedAttnForCausalLM
from gatedattn.hf.export import to_native

SHAPE = {"model.vocab_size": 2048, "model.d_model": 256, "model.num_layers": 4, "model.ffn_dim": 768,
         "model.attention.num_heads": 4, "model.attention.num_kv_heads": 2, "model.attention.head_dim": 64}
G1_NEXT = {"model.attention.gate.position": "g1", "model.norm_zero_centered": True,
           "model.rope.partial_rotary_factor": 0.25}
CASES = {  # name: (target, overrides)
    "qwen3-next dense, q/k/v/o bias": ("qwen3-next", {**G1_NEXT, "model.attention.qkv_bias": True,
                                                      "model.attention.o_bias": True, "model.tie_embeddings": False}),
    "qwen3-next MoE 8x top-2 + gated shared": ("qwen3-next", {**G1_NEXT, "model.moe.num_experts": 8,
                                                              "model.moe.top_k": 2, "model.moe.expert_ffn_dim": 128,
                                                              "model.moe.shared_expert_ffn_dim": 256,
                                                              "model.moe.shared_expert_gate": True}),
    "qwen3-next, plain norms (w - 1)": ("qwen3-next", {"model.attention.gate.position": "g1"}),
    "qwen3": ("qwen3", {}),
    "llama": ("llama", {"model.attention.qk_norm": False}),
    "qwen2": ("qwen2", {"model.attention.qk_norm": False, "model.attention.qkv_bias": True}),
}


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).abs().max())


@torch.no_grad()
def main() -> None:
    args = harness.base_parser("hf_parity", __doc__).parse_args()
    torch.set_num_threads(args.threads)
    ids = torch.randint(0, SHAPE["model.vocab_size"], (2, 128), generator=torch.Generator().manual_seed(1))
    rows = []
    for name, (target, overrides) in CASES.items():
        torch.manual_seed(0)
        ours = GatedLM(load_config(None, {**SHAPE, **overrides}).model).eval()
        for p in ours.parameters():
            p.add_(0.05 * torch.randn_like(p))
        theirs = to_native(ours, target)
        a32, b32 = ours(ids).logits, theirs(ids).logits
        a16, b16 = ours.to(torch.bfloat16)(ids).logits, theirs.to(torch.bfloat16)(ids).logits
        rows.append({"case": name, "class": type(theirs).__name__, "fp32": max_diff(a32, b32),
                     "max_logit": float(a32.abs().max()), "bf16": max_diff(a16, b16),
                     "ours_bf16_vs_fp32": max_diff(a16, a32), "hf_bf16_vs_fp32": max_diff(b16, b32)})
    torch.manual_seed(0)
    ours = GatedLM(load_config(None, {**SHAPE, "model.attention.gate.position": "g1"}).model).eval()
    wrapper = GatedAttnForCausalLM.from_gatedlm(ours)
    rows.append({"case": "gatedattn.hf wrapper (G1)", "class": type(wrapper).__name__,
                 "fp32": max_diff(wrapper(ids).logits, ours(ids).logits)})
    print(harness.table(rows, [("case", "case", "s"), ("class", "transformers class", "s"),
                               ("fp32", "fp32 max|d|", ".3g"), ("max_logit", "max|logit|", ".3g"),
                               ("bf16", "bf16 max|d|", ".3g"), ("ours_bf16_vs_fp32", "ours bf16-fp32", ".3g"),
                               ("hf_bf16_vs_fp32", "HF bf16-fp32", ".3g")]))
    harness.write_json(args.out, {"environment": harness.environment(args.threads), "tokens": list(ids.shape),
                                  "rows": rows})


if __name__ == "__main__":
    main()
