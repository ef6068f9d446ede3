"""Local lm-evaluation-harness tasks built from the built-in corpora (no download): ``write_tasks(folder)``.

``shakespeare_lastword`` (LAMBADA-style): a passage of >= 60 words from the held-out Shakespeare plays (the
documents ``data.val_fraction=0.1`` holds out, which our Shakespeare runs never train on), ending at a line
end; the task is the passage's last word. Metrics: acc (greedy decoding gives the word) and perplexity of it.

``passkey``: a five-digit pass key hidden at a random depth in repeated filler (Mohtashami & Jaggi 2023),
then "What is the pass key? The pass key is"; greedy generation must give the key (exact match).

Each task is a YAML file beside its JSONL data, read by lm_eval's local ``json`` loader.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import yaml

from ..data.corpora import builtin_documents, split_documents
from ..fileio import atomic_write_text

TASKS = ("shakespeare_lastword", "passkey")
LASTWORD_MIN_WORDS = 60
PASSKEY_FILLER = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."


def lastword_docs(count: int, val_fraction: float = 0.1) -> list[dict]:
    """``count`` passages spread evenly over the held-out plays; ``target`` is " " + the last word."""
    _, held_out = split_documents(builtin_documents("shakespeare"), val_fraction)
    candidates = []
    for doc in held_out:
        passage: list[str] = []
        for line in doc.text.splitlines():
            if not line.strip():
                continue
            passage.append(line.rstrip())
            words = sum(len(p.split()) for p in passage)
            head, _, last = passage[-1].rpartition(" ")
            if words >= LASTWORD_MIN_WORDS and head.strip() and last.isalpha() and len(last) >= 3:
                candidates.append({"context": "\n".join(passage[:-1] + [head]), "target": " " + last})
                passage = []
    step = max(1, len(candidates) // count)
    return candidates[::step][:count]


def passkey_docs(count: int, seed: int = 0, max_filler: int = 12) -> list[dict]:
    rng = random.Random(seed)
    docs = []
    for _ in range(count):
        key = str(rng.randint(10000, 99999))
        filler = rng.randint(2, max_filler)
        depth = rng.randint(0, filler)
        body = [PASSKEY_FILLER] * filler
        body.insert(depth, f"The pass key is {key}. Remember it. {key} is the pass key.")
        docs.append({"context": "There is important information hidden inside a lot of irrelevant text. Find it "
                                "and memorize it. I will quiz you about the important information there. "
                                + " ".join(body) + " What is the pass key? The pass key is",
                     "answer": key})
    return docs


def _task(name: str, data: Path) -> dict:
    common = {"task": name, "dataset_path": "json", "dataset_kwargs": {"data_files": {"test": str(data)}},
              "test_split": "test", "doc_to_text": "{{context}}", "metadata": {"version": 1.0}}
    if name == "shakespeare_lastword":
        return {**common, "output_type": "loglikelihood", "doc_to_target": "{{target}}", "target_delimiter": "",
                "metric_list": [{"metric": "perplexity", "aggregation": "perplexity", "higher_is_better": False},
                                {"metric": "acc", "aggregation": "mean", "higher_is_better": True}]}
    return {**common, "output_type": "generate_until", "doc_to_target": "{{answer}}", "target_delimiter": " ",
            "generation_kwargs": {"until": ["\n", "."], "max_gen_toks": 12, "do_sample": False},
            "metric_list": [{"metric": "exact_match", "aggregation": "mean", "higher_is_better": True,
                             "ignore_punctuation": True, "regexes_to_ignore": [" "]}]}


def write_tasks(folder: str | Path, count: int = 200) -> Path:
    """Write both tasks (``count`` documents each) as YAML + JSONL into ``folder``, for ``--include_path``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for name, docs in (("shakespeare_lastword", lastword_docs(count)), ("passkey", passkey_docs(count))):
        data = folder / f"{name}.jsonl"
        atomic_write_text(data, "".join(json.dumps(d) + "\n" for d in docs))
        atomic_write_text(folder / f"{name}.yaml", yaml.safe_dump(_task(name, data.resolve()), sort_keys=False))
    return folder
