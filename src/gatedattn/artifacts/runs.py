"""The files of a training run directory (beside ``checkpoints/``, see ``checkpoints.py``).

``config.yaml`` (the resolved config), ``tokenizer.json``, ``data.json`` (corpus, split and token counts),
``environment.json`` (versions, git revision, threads, CPU, one entry per session), ``metrics.jsonl`` (one
JSON object per logged step), ``result.json`` (the run's summary) and ``loss.png``.
"""

from __future__ import annotations

import json
from pathlib import Path

RUN_CONFIG_YAML, DATA_INFO, ENVIRONMENT, METRICS, RESULT, LOSS_PLOT = (
    "config.yaml", "data.json", "environment.json", "metrics.jsonl", "result.json", "loss.png")


def read_jsonl(path: Path) -> list[dict]:
    """The JSON objects of a JSONL file; lines that are cut short, not UTF-8 or not objects are skipped
    (a crash mid-write or a stray byte must not make the rest of a run's history unreadable)."""
    records = []
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(record, dict):
                records.append(record)
    return records
