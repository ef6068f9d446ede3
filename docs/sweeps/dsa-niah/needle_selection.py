"""Does a DSA layer's top-k keep the needle? For each evaluation sample of niah_single_1 (the same samples as
`gatedattn long-eval --samples 20 --max-new-tokens 16`), the prompt followed by the true answer goes through
the model once; at every query that predicts an answer token, each layer's selection is checked for the
needle's value tokens (those overlapping the 7 digits in the haystack).

    python docs/sweeps/dsa-niah/needle_selection.py runs/dsa-niah/dsa runs/dsa-niah/g1-dsa --lengths 256,512,1024
"""

import argparse
import json
import sys

import torch

from gatedattn import load_model
from gatedattn.evaluation.ruler import generate_samples


def needle_selection(run: str, length: int, samples: int) -> dict:
    loaded = load_model(run)
    model, tok = loaded.model, loaded.require_tokenizer()
    bos = [tok.bos_id]
    picked = {}
    hooks = [layer.attn.hook_selection.register_forward_hook(
        lambda m, args, out, i=i: picked.__setitem__(i, out[0])) for i, layer in enumerate(model.layers)]
    whole, some, queries = [0] * len(model.layers), [0] * len(model.layers), 0
    for s in generate_samples("niah_single_1", length, samples, lambda p: len(bos) + len(tok.encode(p)), "",
                              seed=0, max_new_tokens=16):
        value = s.answers[0]
        start = s.needles[0].start + s.needles[0].text.index(value)
        text = s.prompt + " " + value
        enc = tok.tokenizer.encode(text, add_special_tokens=False)
        ids = bos + enc.ids
        needle = {len(bos) + j for j, (a, b) in enumerate(enc.offsets) if a < start + len(value) and b > start}
        answer = [len(bos) + j for j, (a, b) in enumerate(enc.offsets) if a >= len(s.prompt)]
        with torch.no_grad():
            model(torch.tensor([ids]))
        for q in (a - 1 for a in answer):  # the query at a - 1 predicts token a
            queries += 1
            for i in range(len(model.layers)):
                chosen = set(picked[i][q].tolist())
                whole[i] += needle <= chosen
                some[i] += bool(needle & chosen)
    for h in hooks:
        h.remove()
    return {"run": run, "length": length, "answer_queries": queries,
            "all_value_tokens_selected": [w / queries for w in whole],
            "some_value_token_selected": [x / queries for x in some]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+")
    p.add_argument("--lengths", default="256,512,1024")
    p.add_argument("--samples", type=int, default=20)
    args = p.parse_args()
    for run in args.runs:
        for length in map(int, args.lengths.split(",")):
            json.dump(needle_selection(run, length, args.samples), sys.stdout)
            print()


if __name__ == "__main__":
    main()
