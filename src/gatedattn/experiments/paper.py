"""The paper's published numbers (Qiu et al., 2025, arXiv 2505.06708), shown beside a sweep's results.

Tables 1, 3 and 4: 15B-A2B MoE models on 400B tokens; Table 2: 1.7B dense models on 400B-3.5T tokens.
Each row is keyed by our variant name, with the paper's own row label; only the paper's columns a sweep
can set beside its own measurements are kept (added parameters in millions, average perplexity, MMLU, and
Table 4's gate score, M-Act and F-Attn).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PaperTable:
    title: str
    scale: str
    columns: tuple[str, ...]
    rows: dict  # our variant -> (the paper's row label, values in column order; None = not reported)


_MOE = "15B-A2B MoE, 400B tokens"

TABLES: dict[str, PaperTable] = {
    "table1": PaperTable("Table 1: gating variants", _MOE, ("added M", "avg PPL", "MMLU"), {
        "none": ("(1) Baseline", (0, 6.026, 58.79)),
        "more-kv-heads": ("(2) k = 8", (50, 5.979, 59.78)),
        "more-q-heads": ("(3) q = 48", (201, 5.953, 58.45)),
        "more-experts": ("(4) Add 4 Experts", (400, 5.964, 58.84)),
        "g1": ("(5) SDPA Elementwise G1", (201, 5.761, 60.82)),
        "g2": ("(6) v Elementwise G2", (25, 5.820, 59.17)),
        "g3": ("(7) k Elementwise G3", (25, 6.016, 59.18)),
        "g4": ("(8) q Elementwise G4", (201, 5.981, 58.74)),
        "g5": ("(9) Dense Output G5", (100, 6.017, 59.41)),
        "g1-headwise": ("(10) SDPA Headwise G1", (1.6, 5.792, 60.05)),
        "g2-headwise": ("(11) v Headwise G2", (None, 5.808, 59.32)),
        "g1-shared": ("(12) SDPA Head-Shared G1", (201, 5.801, 60.06)),
        "g2-shared": ("(13) v Head-Shared G2", (25, 5.867, 59.02)),
        "g1-add": ("(14) SDPA Additive G1 (SiLU)", (201, 5.821, 60.06)),
        "g1-silu": ("(15) SDPA Elementwise G1 (SiLU)", (201, 5.822, 60.49)),
    }),
    "table3": PaperTable("Table 3: (non-)linearity controls", _MOE, ("avg PPL", "MMLU"), {
        "none": ("(1) Baseline", (6.026, 58.79)),
        "g1": ("(2) SDPA Elementwise Gate", (5.761, 60.82)),
        "g2": ("(3) v Elementwise Gate", (5.820, 59.17)),
        "g1-add": ("(4) SDPA Additive Gate (SiLU)", (5.821, 60.06)),
        "rmsnorm": ("(5) SDPA GroupNorm", (5.847, 60.15)),
        "silu": ("(6) SDPA SiLU", (5.975, 59.55)),
        "g1-add-identity": ("(7) SDPA Additive Gate (Identity)", (5.882, 59.20)),
    }),
    "table4": PaperTable("Table 4: gate score, massive activations, first-token attention", _MOE,
                         ("gate score", "M-Act", "F-Attn", "PPL"), {
        "none": ("(1) Baseline", (None, 1053, 0.467, 6.026)),
        "g1": ("(2) SDPA Elementwise Gate", (0.116, 94, 0.048, 5.761)),
        "g1-headwise": ("(3) SDPA Headwise Gate", (0.172, 98, 0.073, 5.792)),
        "g1-shared": ("(4) SDPA Elementwise Head-shared Gate", (0.271, 286, 0.301, 5.801)),
        "g2": ("(5) v Elementwise Gate", (0.221, 125, 0.297, 5.820)),
        "g1-static": ("(6) SDPA Input Independent Gate", (0.335, 471, 0.364, 5.917)),
        "g1-ns_sigmoid": ("(7) SDPA Elementwise Gate (NS-sigmoid)", (0.653, 892, 0.451, 5.900)),
    }),
}

# Table 2 (1.7B dense): (setting, method, max LR, avg PPL; None = diverged). Its stability evidence.
TABLE2 = [
    ("28 layers, 400B tokens", "baseline", 4.0e-3, 7.499),
    ("28 layers, 400B tokens", "G1", 4.0e-3, 7.404),
    ("48 layers, 400B tokens", "baseline", 4.0e-3, 7.421),
    ("48 layers, 400B tokens", "baseline", 8.0e-3, 9.195),
    ("48 layers, 400B tokens", "baseline + sandwich norm", 8.0e-3, 7.407),
    ("48 layers, 400B tokens", "G1", 4.0e-3, 7.288),
    ("48 layers, 400B tokens", "G1", 8.0e-3, 7.325),
    ("48 layers, 1T tokens", "baseline", 5.3e-3, 7.363),
    ("48 layers, 1T tokens", "baseline", 8.0e-3, None),
    ("48 layers, 1T tokens", "G1", 5.3e-3, 7.101),
    ("48 layers, 1T tokens", "G1", 8.0e-3, 7.078),
]
