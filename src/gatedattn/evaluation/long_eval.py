"""Long-context evaluation: perplexity by position and by context length, and RULER-style tasks, for our
models and HF causal LMs, with RoPE base/scaling changes applied at load time (no training).

Long inputs stream through the KV cache in chunks (``chunk_size`` tokens per forward; see streaming.py).
Outputs (``long_eval`` with ``out_dir``): ``settings.json``, ``perplexity.jsonl`` (one line per window),
``samples.jsonl`` (one line per task sample: prompt length, needle depths, prediction, score),
``summary.json``, ``report.md`` and two PNGs. Units already in the JSONL files are skipped when the same
command runs again in the same directory. A task whose prompt does not fit a length (a model trained at a
short context, asked for short lengths) is skipped there with one notice per task; only when no task fits
at any length is that an error.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Iterable

from ..config import RopeScalingConfig
from ..errors import GatedAttnError
from .lm import LongContextLM, load_lm
from .long_report import format_report, plot
from .position_ppl import bucket_edges, perplexity_window, summarize_perplexity, window_starts
from .rope_override import apply_rope, rope_change, rope_description
from .ruler import TASKS, PromptTooLong, answer_ended, make_sample, score
from .streaming import greedy_generate_batch

log = logging.getLogger("gatedattn.evaluation")
BATCH_TOKENS = 16384  # task samples decoded together: at most this many tokens of target length per batch


def summarize_tasks(records: Iterable[dict]) -> dict:
    """{task: {length: accuracy %}} and the mean over tasks per length, as RULER reports them."""
    acc: dict[str, dict[int, list[float]]] = {}
    for r in records:
        acc.setdefault(r["task"], {}).setdefault(r["length"], []).append(r["score"])
    table = {t: {n: 100 * sum(v) / len(v) for n, v in sorted(by_len.items())} for t, by_len in acc.items()}
    lengths = sorted({n for by_len in table.values() for n in by_len})
    mean = {n: sum(table[t][n] for t in table if n in table[t]) / sum(n in table[t] for t in table)
            for n in lengths}
    return {"accuracy": table, "mean": mean}


def parse_lengths(spec: str) -> list[int]:
    """``"1k,2k,4k"`` -> [1024, 2048, 4096]; plain integers too."""
    out = []
    for item in spec.split(","):
        item = item.strip().lower()
        try:
            n = int(float(item[:-1]) * 1024) if item.endswith("k") else int(item)
        except ValueError:
            n = None
        if n is None or n < 16:
            raise GatedAttnError(f"bad length {item!r} in --lengths {spec!r}: use integers >= 16 or k suffixes "
                                 "(1k = 1024), e.g. 1k,2k,4k")
        out.append(n)
    return sorted(set(out))


def validation_text(source: str, val_fraction: float) -> str:
    """The held-out documents of a data source, split as training splits it (gatedattn.data)."""
    from ..data import load_corpus, split_documents

    docs = load_corpus(source).documents
    held = split_documents(docs, val_fraction)[1] or docs
    return "\n\n".join(d.text for d in held)


def long_eval(model: str | LongContextLM, lengths: list[int], tasks: list[str], samples: int = 5,
              ppl_samples: int | None = None, text: str | None = None, seed: int = 0, chunk_size: int = 1024,
              rope_theta: float | None = None,
              rope_scaling: str | dict | RopeScalingConfig | None = None,
              factor: float | None = None, original_max_position_embeddings: int | None = None,
              max_new_tokens: int | None = None, out_dir: str | Path | None = None,
              progress: bool = True) -> dict:
    """Perplexity (by position and length) and RULER task accuracy at each length; returns the summary."""
    if chunk_size < 1 or samples < 0 or (ppl_samples is not None and ppl_samples < 0):
        raise GatedAttnError("--chunk-size must be >= 1 and --samples / --ppl-samples >= 0")
    if max_new_tokens is not None and max_new_tokens < 1:
        raise GatedAttnError(f"--max-new-tokens must be >= 1, got {max_new_tokens}")
    if out_dir is not None:
        from ..reporting import pyplot

        pyplot()  # the plots need matplotlib: say so before loading any model
    lm = load_lm(model) if isinstance(model, str) else model
    scaling = rope_change(lm, rope_theta, rope_scaling, factor, original_max_position_embeddings)
    lm = apply_rope(lm, rope_theta, scaling)
    ppl_samples = samples if ppl_samples is None else ppl_samples
    if text is None:
        text = validation_text(*lm.validation)
    settings = {"model": lm.name, "lengths": lengths, "tasks": tasks, "samples": samples,
                "ppl_samples": ppl_samples, "seed": seed, "max_new_tokens": max_new_tokens,
                "text_sha": _sha(text), "rope": rope_description(lm)}
    run_log = _RunLog(out_dir, settings)
    stream = lm.encode(text) if ppl_samples else []
    if ppl_samples and len(stream) + len(lm.prefix) < max(lengths):
        raise GatedAttnError(f"the evaluation text has {len(stream)} tokens, fewer than the longest length "
                             f"{max(lengths)}; give a longer --text or shorter --lengths")
    edges = bucket_edges(max(lengths))
    starts = window_starts(len(stream), max(lengths) - len(lm.prefix), ppl_samples)
    units = [("ppl", n, w) for n in lengths for w in range(ppl_samples)] + \
            [(t, n, i) for t in tasks for n in lengths for i in range(samples)]
    todo = [u for u in units if u not in run_log.done]
    # Build every task prompt first: what does not fit is known before any model time is spent.
    prompts, too_long = {}, {}
    for u in todo:
        if u[0] != "ppl":
            try:
                prompts[u] = make_sample(*u, lm.count_tokens, text, seed, max_new_tokens)
            except PromptTooLong as e:
                too_long[u] = e
    if too_long and all(u in too_long for u in units if u[0] != "ppl"):
        raise next(iter(too_long.values()))  # no task fits at any length: nothing of what was asked can run
    skipped = _skip_notices(too_long)
    todo = [u for u in todo if u not in too_long]
    bar = _progress(len(units) - len(too_long), len(units) - len(too_long) - len(todo), progress)
    started, tokens = time.time(), 0

    def done(kind: str, length: int, i: int, record: dict, n_tokens: int) -> None:
        nonlocal tokens
        run_log.add(kind, length, i, record)
        tokens += n_tokens
        bar.update(1)
        bar.set_postfix(tok_s=f"{tokens / max(time.time() - started, 1e-9):.0f}")

    for kind, length, i in todo:
        if kind == "ppl":
            done(kind, length, i, perplexity_window(lm, stream, length, i, starts[i], edges, chunk_size), length)
    for batch in _task_batches([u for u in todo if u[0] != "ppl"]):
        task = batch[0][0]
        samples = [prompts[u] for u in batch]
        ids = [lm.prefix + lm.encode(s.prompt) for s in samples]
        news = greedy_generate_batch(lm, ids, samples[0].max_new_tokens, chunk_size,
                                     stop=lambda new, end=TASKS[task].terminator: answer_ended(lm.decode(new), end))
        for (_, length, i), sample, prompt, new in zip(batch, samples, ids, news):
            prediction = lm.decode(new)
            record = {"task": task, "length": length, "index": i, "prompt_tokens": len(prompt),
                      "generated_tokens": len(new), "needle_depths": [n.depth for n in sample.needles],
                      "answers": sample.answers, "prediction": prediction,
                      "score": score(prediction, sample.answers, sample.metric)}
            done(task, length, i, record, len(prompt) + len(new))
    bar.close()
    summary = {"settings": settings, "trained_seq_len": lm.trained_seq_len,
               "perplexity": summarize_perplexity(run_log.records("ppl")),
               "ruler": summarize_tasks(run_log.records("tasks")) if tasks and samples else None}
    if summary["ruler"] is not None:
        summary["ruler"]["skipped"] = skipped
    summary["files"] = run_log.finish(summary)
    return summary


def _task_batches(units: list[tuple]) -> list[list[tuple]]:
    """Task units decoded together: the samples of one task and length, at most ``BATCH_TOKENS`` tokens of
    target length per batch (the batch's KV cache grows with it)."""
    groups: dict[tuple, list[tuple]] = {}
    for u in units:
        groups.setdefault(u[:2], []).append(u)
    batches = []
    for (_, length), group in groups.items():
        rows = max(1, BATCH_TOKENS // length)
        batches += [group[a:a + rows] for a in range(0, len(group), rows)]
    return batches


def _skip_notices(too_long: dict[tuple, PromptTooLong]) -> dict[str, list[int]]:
    """{task: lengths skipped}, with one notice per task."""
    skipped: dict[str, dict[int, PromptTooLong]] = {}
    for (task, length, _), e in too_long.items():
        skipped.setdefault(task, {}).setdefault(length, e)
    for task, by_length in skipped.items():
        longest = max(by_length)
        log.warning("long-eval: skipping %s at length %s: its shortest prompt takes %d tokens, %d fit beside "
                    "the answer budget", task, ", ".join(map(str, sorted(by_length))), by_length[longest].tokens,
                    by_length[longest].limit)
    return {task: sorted(by_length) for task, by_length in skipped.items()}


def _sha(text: str) -> str:
    import hashlib

    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:16]


def _progress(total: int, done: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, initial=done, desc="long-eval", unit="unit", disable=not enabled)


class _RunLog:
    """Records kept in memory and, with an output directory, appended to JSONL files as they come; a rerun
    with the same settings skips what is there, one with other settings refuses (nothing is overwritten)."""

    FILES = {"ppl": "perplexity.jsonl", "tasks": "samples.jsonl"}

    def __init__(self, out_dir: str | Path | None, settings: dict):
        self.out = Path(out_dir) if out_dir is not None else None
        self.settings = json.loads(json.dumps(settings))
        self._records: dict[str, list[dict]] = {"ppl": [], "tasks": []}
        self.done: set[tuple] = set()
        if self.out is None or not (self.out / "settings.json").exists():
            return
        try:
            old = json.loads((self.out / "settings.json").read_text())
        except (OSError, ValueError):
            old = {}
        if old != self.settings:
            diff = sorted(k for k in self.settings if old.get(k) != self.settings[k])
            raise GatedAttnError(f"{self.out} holds a long-eval with other settings (differs in: "
                                 f"{', '.join(diff) or 'settings.json'}); use another --out")
        self._load()

    def _load(self) -> None:
        for kind, name in self.FILES.items():
            path = self.out / name
            if not path.exists():
                continue
            for line in path.read_text().splitlines():
                try:
                    r = json.loads(line)
                except ValueError:
                    continue  # a line cut by an interrupted write: that unit runs again
                key = ("ppl", r["length"], r["window"]) if kind == "ppl" else (r["task"], r["length"], r["index"])
                if key not in self.done:
                    self.done.add(key)
                    self._records[kind].append(r)

    def _write_settings(self) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        path = self.out / "settings.json"
        if not path.exists():  # written with the first result, so a run that failed early blocks nothing
            path.write_text(json.dumps(self.settings, indent=2))

    def add(self, kind: str, length: int, index: int, record: dict) -> None:
        group = "ppl" if kind == "ppl" else "tasks"
        self._records[group].append(record)
        self.done.add((kind, length, index))
        if self.out is not None:
            self._write_settings()
            with open(self.out / self.FILES[group], "a") as f:
                f.write(json.dumps(record) + "\n")

    def records(self, group: str) -> list[dict]:
        return self._records[group]

    def finish(self, summary: dict) -> list[str]:
        """Write the summary, report and plots; the names of the files in the output directory that hold
        this evaluation (none without one)."""
        if self.out is None:
            return []
        self._write_settings()
        pngs = plot(summary, self.out)
        files = ["settings.json", *(n for n in self.FILES.values() if (self.out / n).exists()), "summary.json",
                 "report.md", *(p.name for p in pngs)]
        (self.out / "summary.json").write_text(json.dumps({**summary, "files": files}, indent=2))
        (self.out / "report.md").write_text(format_report(summary))
        return files


__all__ = ["long_eval", "parse_lengths", "validation_text", "summarize_tasks"]
