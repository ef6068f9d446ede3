"""Per corner and length, from long-eval's samples.jsonl: RULER's score (the whole 7-digit value), the share
of predictions holding the value's last six digits, and the share of those six digits right in place (the
prediction's first seven digits against the value's).

    python docs/sweeps/dsa-niah/digits.py runs/dsa-niah none dsa g1 g1-dsa
"""

import json
import sys
from collections import defaultdict
from dataclasses import dataclass


@dataclass
class Cell:
    """One length's samples: their count and the three shares, in percent."""

    n: int = 0
    ruler: float = 0.0
    last_six: float = 0.0
    in_place: float = 0.0


def digit_scores(samples_path: str) -> dict[int, Cell]:
    """length -> Cell, from one long-eval samples.jsonl."""
    sums = defaultdict(lambda: [0, 0.0, 0, 0])
    with open(samples_path) as f:
        for line in f:
            r = json.loads(line)
            c = sums[r["length"]]
            value, digits = r["answers"][0], "".join(ch for ch in r["prediction"] if ch.isdigit())[:7]
            c[0] += 1
            c[1] += r["score"]
            c[2] += value[1:] in r["prediction"]
            c[3] += sum(a == b for a, b in zip(value[1:], digits[1:]))
    return {L: Cell(n, 100 * s / n, 100 * d / n, 100 * p / (6 * n)) for L, (n, s, d, p) in sorted(sums.items())}


if __name__ == "__main__":
    out, corners = sys.argv[1], sys.argv[2:]
    for v in corners:
        cells = digit_scores(f"{out}/eval-{v}/samples.jsonl")
        print(v, "  ".join(f"{L}: RULER {c.ruler:.0f}%, last six digits {c.last_six:.0f}%, in place {c.in_place:.0f}% "
                           f"(n={c.n})" for L, c in cells.items()))
