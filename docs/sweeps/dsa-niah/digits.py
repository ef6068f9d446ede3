"""Per corner and length, from long-eval's samples.jsonl: RULER's score (the whole 7-digit value), the share
of predictions holding the value's last six digits, and the share of those six digits right in place (the
prediction's first seven digits against the value's).

    python docs/sweeps/dsa-niah/digits.py runs/dsa-niah none dsa g1 g1-dsa
"""

import json
import sys
from collections import defaultdict

out, corners = sys.argv[1], sys.argv[2:]
for v in corners:
    cells = defaultdict(lambda: [0, 0.0, 0, 0])
    with open(f"{out}/eval-{v}/samples.jsonl") as f:
        for line in f:
            r = json.loads(line)
            c = cells[r["length"]]
            c[0] += 1
            c[1] += r["score"]
            value, digits = r["answers"][0], "".join(ch for ch in r["prediction"] if ch.isdigit())[:7]
            c[2] += value[1:] in r["prediction"]
            c[3] += sum(a == b for a, b in zip(value[1:], digits[1:]))
    print(v, "  ".join(f"{L}: RULER {100 * s / n:.0f}%, last six digits {100 * d / n:.0f}%, "
                       f"in place {100 * p / (6 * n):.0f}% (n={n})" for L, (n, s, d, p) in sorted(cells.items())))
