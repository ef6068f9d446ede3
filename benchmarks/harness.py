"""Shared pieces of the benchmark scripts: interleaved timing, the machine's matmul rate, the HF peer,
training-step closures, the environment, tables and JSON.

Every figure the scripts report is a ratio measured side by side in one process: the cases run in rounds
(A B C, then B C A, ...) and each ratio is the median over rounds of the per-round ratio, so slow drift and
other people's jobs on a shared machine hit both sides alike.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Callable

import torch

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"


def base_parser(name: str, doc: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=doc.splitlines()[0])
    p.add_argument("--out", type=Path, default=RESULTS / f"{name}.json", help="JSON results path")
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    p.add_argument("--rounds", type=int, default=7, help="timed rounds (each runs every case once)")
    p.add_argument("--warmup", type=int, default=2, help="untimed rounds first")
    return p


LOAD: list[float] = []  # 1-minute load average at the start and end of each timed run (others' jobs)


def load_average() -> float:
    return os.getloadavg()[0]


def interleaved(cases: dict[str, Callable[[], object]], rounds: int, warmup: int,
                progress: str | None = None) -> dict[str, list[float]]:
    """Seconds per call of each case, run in rotating order ``rounds`` times after ``warmup`` rounds."""
    from tqdm import tqdm

    LOAD.append(load_average())
    names = list(cases)
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in tqdm(range(warmup + rounds), desc=progress, disable=progress is None, leave=False):
        order = names[r % len(names):] + names[:r % len(names)]
        for name in order:
            start = time.perf_counter()
            cases[name]()
            elapsed = time.perf_counter() - start
            if r >= warmup:
                times[name].append(elapsed)
    LOAD.append(load_average())
    return times


def median_ratio(times: dict[str, list[float]], a: str, b: str) -> float:
    """Median over rounds of time(a) / time(b)."""
    return statistics.median(x / y for x, y in zip(times[a], times[b]))


def median(xs: list[float]) -> float:
    return statistics.median(xs)


def matmul_case(dtype: torch.dtype, n: int = 2048) -> tuple[Callable[[], object], float]:
    """A large square matmul in ``dtype`` and its FLOP count: the machine's own rate in that dtype."""
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    out = torch.empty(n, n, dtype=dtype)
    return (lambda: torch.mm(a, b, out=out)), 2.0 * n ** 3


def autocast(dtype: str):
    return torch.autocast("cpu", torch.bfloat16) if dtype == "bf16" else nullcontext()


def train_step(model: torch.nn.Module, ids: torch.Tensor, dtype: str, hf: bool = False) -> Callable[[], None]:
    """One forward + backward + AdamW step; ``dtype`` bf16 = autocast, as a researcher would run it."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    model.train()

    def step():
        with autocast(dtype):
            loss = (model(input_ids=ids, labels=ids) if hf else model(ids, labels=ids)).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return step


def hf_peer(cfg, implementation: str = "sdpa"):
    """HF transformers' Qwen3ForCausalLM with the same shapes as our ModelConfig ``cfg`` (ungated)."""
    from transformers import Qwen3Config, Qwen3ForCausalLM

    a = cfg.attention
    hc = Qwen3Config(vocab_size=cfg.vocab_size, hidden_size=cfg.d_model, intermediate_size=cfg.ffn_dim,
                     num_hidden_layers=cfg.num_layers, num_attention_heads=a.num_heads,
                     num_key_value_heads=a.num_kv_heads, head_dim=a.head_dim, rms_norm_eps=cfg.norm_eps,
                     max_position_embeddings=cfg.max_position_embeddings, tie_word_embeddings=cfg.tie_embeddings,
                     rope_parameters={"rope_type": "default", "rope_theta": cfg.rope.theta},
                     attention_bias=a.qkv_bias, bos_token_id=cfg.bos_token_id, eos_token_id=cfg.eos_token_id,
                     pad_token_id=cfg.eos_token_id)
    hc._attn_implementation = implementation
    return Qwen3ForCausalLM(hc)


def environment(threads: int) -> dict:
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "src"], cwd=ROOT, capture_output=True,
                                    text=True).stdout.strip())
    except OSError:
        sha, dirty = "", False
    try:
        import transformers
        tf = transformers.__version__
    except ImportError:
        tf = None
    cpu = platform.processor()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"torch": torch.__version__, "transformers": tf, "python": platform.python_version(), "cpu": cpu,
            "cpu_count": os.cpu_count(), "threads": threads, "git_sha": sha, "src_modified": dirty,
            "load_average_1min": LOAD or [load_average()],
            "time": time.strftime("%Y-%m-%dT%H:%M:%S")}


def table(rows: list[dict], columns: list[tuple[str, str, str]]) -> str:
    """Plain-text table; columns are (key, header, format)."""
    cells = [[h for _, h, _ in columns]]
    for row in rows:
        cells.append([("" if row.get(k) is None else format(row[k], f)) for k, _, f in columns])
    widths = [max(len(c[i]) for c in cells) for i in range(len(columns))]
    left = [f == "s" for _, _, f in columns]  # text left, numbers right
    lines = ["  ".join(c.ljust(w) if l else c.rjust(w) for c, w, l in zip(line, widths, left)).rstrip()
             for line in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def write_json(path: Path, payload: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"wrote {path}")
