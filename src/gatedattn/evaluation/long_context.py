"""Long-context evaluation: perplexity by position and by context length, and RULER-style tasks, for our
models and HF causal LMs, with RoPE base/scaling changes applied at load time (no training).

Long inputs stream through the KV cache in chunks (``chunk_size`` tokens per forward), so memory holds the
cache and one chunk's activations and logits, never a T x T score matrix or T x vocab logits. For our
models the cache declares the total length it will reach, which fixes dynamic-NTK frequencies for the
whole sequence (see modeling/rope.py): chunked prefill and cached decoding equal a full forward exactly.
HF models run as HF runs them (its dynamic NTK rescales at every decoding step).

Outputs (``long_eval`` with ``out_dir``): ``settings.json``, ``perplexity.jsonl`` (one line per window),
``samples.jsonl`` (one line per task sample: prompt length, needle depths, prediction, score),
``summary.json``, ``report.md`` and two PNGs. Units already in the JSONL files are skipped when the same
command runs again in the same directory.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import torch
from torch import nn

from ..config import ROPE_TYPES, DataConfig, RopeScalingConfig, model_config_from_dict, parse_value
from ..errors import GatedAttnError
from ..modeling.cache import KVCache
from ..modeling.model import CONFIG_NAME, GatedLM
from .ruler import TASKS, make_sample, parse_tasks, score

SCALED_TYPES = tuple(t for t in ROPE_TYPES if t != "default")
ORIGINAL_KEY = "original_max_position_embeddings"


# -- the model under test ---------------------------------------------------------------------------------

@dataclass
class LongContextLM:
    """A causal LM (ours or HF) with what long-context evaluation needs from its tokenizer."""

    name: str
    model: nn.Module
    encode: Callable[[str], list[int]]  # a text's tokens, no special tokens
    decode: Callable[[list[int]], str]
    prefix: list[int]  # special tokens the model sees before a document (ours: BOS, as in training)
    eos_token_id: int | None
    trained_context: int  # default original context for RoPE scaling
    # The data source whose held-out documents are the default text, and the held-out fraction.
    validation: tuple[str, float] = (DataConfig.source, DataConfig.val_fraction)

    @property
    def is_ours(self) -> bool:
        return isinstance(self.model, GatedLM)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def new_cache(self, total_tokens: int):
        """An empty KV cache for a sequence that will reach ``total_tokens`` tokens."""
        if self.is_ours:
            positions = total_tokens + self.model.num_register_tokens  # allocated once, at the final size
            return KVCache(len(self.model.layers), rope_seq_len=positions, capacity=positions)
        from transformers import DynamicCache

        return DynamicCache(config=self.model.config)

    def logits(self, ids: torch.Tensor, cache) -> torch.Tensor:
        """Logits (1, T, V) of the next chunk ``ids`` (1, T), appended to ``cache``."""
        if self.is_ours:
            return self.model(ids, past_key_values=cache).logits
        return self.model(input_ids=ids, past_key_values=cache, use_cache=True).logits

    def count_tokens(self, text: str) -> int:
        return len(self.prefix) + len(self.encode(text))


def load_lm(name_or_path: str) -> LongContextLM:
    """Our model or run directory (with its tokenizer.json), ``smollm2``, a HF model directory or .gguf."""
    from ..analysis.targets import ALIASES, _model_type, load_analysis_target

    path = Path(name_or_path)
    ours = path.is_dir() and ((path / "checkpoints").is_dir() or _model_type(path / CONFIG_NAME) == "gatedattn")
    if name_or_path not in ALIASES and ours:
        from ..training.pretrained import load_pretrained

        pre = load_pretrained(path)
        tok, cfg = pre.tokenizer, pre.model.config
        trained = pre.run_config.data.seq_len if pre.run_config else cfg.max_position_embeddings
        data = pre.run_config.data if pre.run_config else DataConfig()
        return LongContextLM(name_or_path, pre.model, tok.encode, tok.decode, [tok.bos_id], tok.eos_id, trained,
                             (data.source, data.val_fraction))
    target = load_analysis_target(name_or_path)  # resolves smollm2, HF directories and .gguf files
    from transformers import AutoTokenizer

    folder, gguf = ALIASES[name_or_path]() if name_or_path in ALIASES else (
        (str(path.parent), path.name) if path.suffix == ".gguf" else (str(path), None))
    try:
        tok = AutoTokenizer.from_pretrained(folder, **({"gguf_file": gguf} if gguf else {}))
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise GatedAttnError(f"{name_or_path} has no usable tokenizer: {str(e).splitlines()[0]}") from None
    cfg = target.model.config
    eos = tok.eos_token_id if tok.eos_token_id is not None else cfg.eos_token_id
    return LongContextLM(name_or_path, target.model,
                         lambda text: tok(text, add_special_tokens=False, verbose=False)["input_ids"],
                         lambda ids: tok.decode(ids, skip_special_tokens=True),
                         tok("", verbose=False)["input_ids"], eos[0] if isinstance(eos, list) else eos,
                         cfg.max_position_embeddings)


def rope_change(lm: LongContextLM, theta: float | None = None,
                scaling: str | dict | RopeScalingConfig | None = None, factor: float | None = None,
                original: int | None = None) -> RopeScalingConfig | None:
    """The RoPE scaling to apply, completed and checked; None = keep the model's.

    ``scaling`` is a type name (linear, dynamic, yarn, llama3), a mapping of HF ``rope_scaling`` keys (or
    its YAML text) or a RopeScalingConfig; ``factor`` and ``original`` fill ``factor`` and
    ``original_max_position_embeddings`` (default: the context the model was trained at: our run's
    data.seq_len, or max_position_embeddings).
    """
    if theta is not None and not theta > 0:
        raise GatedAttnError(f"--rope-theta must be positive, got {theta}")
    if scaling is None:
        if factor is not None or original is not None:
            raise GatedAttnError("--factor and --original-max-position-embeddings need --rope-scaling TYPE")
        return None
    if isinstance(scaling, RopeScalingConfig):
        scaling = scaling.to_hf_dict()
    elif isinstance(scaling, str):
        parsed = parse_value(scaling)
        scaling = parsed if isinstance(parsed, dict) else {"rope_type": scaling}
    s = dict(scaling)
    rope_type = s.get("rope_type", s.get("type"))
    if rope_type not in SCALED_TYPES:
        raise GatedAttnError(f"--rope-scaling {rope_type!r} is not allowed; allowed: {', '.join(SCALED_TYPES)} "
                             "(or a mapping such as '{rope_type: yarn, factor: 4}')")
    if factor is not None:
        s["factor"] = factor
    if "factor" not in s:
        raise GatedAttnError(f"--rope-scaling {rope_type} needs --factor F (a number >= 1)")
    if original is not None:
        s[ORIGINAL_KEY] = original
    if rope_type != "linear":
        s.setdefault(ORIGINAL_KEY, lm.trained_context)
    return RopeScalingConfig.from_hf_dict(s)


def apply_rope(lm: LongContextLM, theta: float | None, scaling: RopeScalingConfig | None) -> LongContextLM:
    """``lm`` with another RoPE base and/or scaling (weights unchanged); the identity when both are None."""
    if theta is None and scaling is None:
        return lm
    if lm.is_ours:
        cfg = dataclasses.asdict(lm.model.config)
        if theta is not None:
            cfg["rope"]["theta"] = theta
        if scaling is not None:
            cfg["rope"]["scaling"] = dataclasses.asdict(scaling)
        param = next(lm.model.parameters())
        model = GatedLM(model_config_from_dict(cfg)).to(device=param.device, dtype=param.dtype)
        model.load_state_dict(lm.model.state_dict())
        lm.model = model.eval()
    else:
        from ..modeling.hf_convert import set_hf_rope

        set_hf_rope(lm.model, theta, scaling)
    return lm


def rope_description(lm: LongContextLM) -> dict:
    """The model's RoPE as plain data (scaling in HF's ``rope_scaling`` vocabulary, None = plain RoPE)."""
    if lm.is_ours:
        r = lm.model.config.rope
        return {"rope_theta": r.theta, "partial_rotary_factor": r.partial_rotary_factor,
                "scaling": r.scaling.to_hf_dict() if r.scaling is not None else None}
    params = dict(getattr(lm.model.config, "rope_parameters", None) or {})
    return {"rope_theta": params.pop("rope_theta", None),
            "partial_rotary_factor": params.pop("partial_rotary_factor", 1.0),
            "scaling": params if params.get("rope_type", "default") != "default" else None}


# -- streaming through the KV cache ----------------------------------------------------------------------

@torch.no_grad()
def token_nll(lm: LongContextLM, ids: list[int], chunk_size: int = 1024) -> torch.Tensor:
    """Negative log-likelihood (float64) of ids[1:] given their prefixes: chunked prefill into a cache."""
    x = torch.tensor([ids], device=lm.device)
    cache = lm.new_cache(len(ids))
    out = []
    for start in range(0, len(ids) - 1, chunk_size):
        end = min(start + chunk_size, len(ids) - 1)  # the last token is only a target
        logits = lm.logits(x[:, start:end], cache)[0]
        logp = torch.log_softmax(logits.to(torch.promote_types(logits.dtype, torch.float32)), -1)
        out.append(-logp.gather(-1, x[0, start + 1:end + 1, None])[:, 0].double())
    return torch.cat(out)


@torch.no_grad()
def greedy_generate(lm: LongContextLM, ids: list[int], max_new_tokens: int, chunk_size: int = 1024,
                    stop_at_eos: bool = True) -> list[int]:
    """Greedy continuation of ``ids`` with the KV cache: the prompt in chunks, then one token per step."""
    x = torch.tensor([ids], device=lm.device)
    cache = lm.new_cache(len(ids) + max_new_tokens)
    for start in range(0, len(ids), chunk_size):
        last = lm.logits(x[:, start:start + chunk_size], cache)[:, -1]
    new: list[int] = []
    while len(new) < max_new_tokens:
        token = int(last.argmax(-1))
        if stop_at_eos and token == lm.eos_token_id:
            break
        new.append(token)
        if len(new) < max_new_tokens:
            last = lm.logits(torch.tensor([[token]], device=lm.device), cache)[:, -1]
    return new


# -- perplexity ------------------------------------------------------------------------------------------

def bucket_edges(max_length: int) -> list[int]:
    """Position buckets [1, 16), [16, 32), [32, 64), ... up to max_length (doubling, so a log axis)."""
    edges = [1, 16]
    while edges[-1] < max_length:
        edges.append(edges[-1] * 2)
    edges[-1] = max_length
    return edges


def window_starts(stream_tokens: int, longest: int, windows: int) -> list[int]:
    """Where the windows start in the token stream: spread evenly, the same for every length (so a shorter
    context is a prefix of a longer one and lengths differ only in how much context they see)."""
    room = stream_tokens - longest
    return [0 if windows == 1 else round(w * room / (windows - 1)) for w in range(windows)]


def perplexity_window(lm: LongContextLM, stream: list[int], length: int, window: int, start: int,
                      edges: list[int], chunk_size: int) -> dict:
    """NLL sums per position bucket of one ``length``-token window: the model's prefix (BOS for ours), then
    the text tokens from ``start``."""
    body = length - len(lm.prefix)
    nll = token_nll(lm, lm.prefix + stream[start:start + body], chunk_size)  # position p predicts token p
    positions = torch.arange(1, length)
    buckets = []
    for lo, hi in zip(edges[:-1], edges[1:]):
        mask = (positions >= lo) & (positions < hi)
        if mask.any():
            buckets.append({"start": lo, "end": hi, "nll_sum": float(nll[mask].sum()), "tokens": int(mask.sum())})
    return {"length": length, "window": window, "start_token": start, "nll_sum": float(nll.sum()),
            "tokens": len(nll), "buckets": buckets}


def summarize_perplexity(records: Iterable[dict]) -> dict:
    """{length: {ppl, tokens, windows, buckets: [{start, end, ppl, tokens}]}} from window records."""
    out: dict[int, dict] = {}
    for r in records:
        agg = out.setdefault(r["length"], {"nll_sum": 0.0, "tokens": 0, "windows": 0, "buckets": {}})
        agg["nll_sum"] += r["nll_sum"]
        agg["tokens"] += r["tokens"]
        agg["windows"] += 1
        for b in r["buckets"]:
            acc = agg["buckets"].setdefault((b["start"], b["end"]), [0.0, 0])
            acc[0] += b["nll_sum"]
            acc[1] += b["tokens"]
    return {length: {"ppl": math.exp(a["nll_sum"] / a["tokens"]), "tokens": a["tokens"], "windows": a["windows"],
                     "buckets": [{"start": lo, "end": hi, "ppl": math.exp(s / n), "tokens": n}
                                 for (lo, hi), (s, n) in sorted(a["buckets"].items())]}
            for length, a in sorted(out.items())}


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


# -- the whole evaluation --------------------------------------------------------------------------------

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
    lm = load_lm(model) if isinstance(model, str) else model
    scaling = rope_change(lm, rope_theta, rope_scaling, factor, original_max_position_embeddings)
    lm = apply_rope(lm, rope_theta, scaling)
    ppl_samples = samples if ppl_samples is None else ppl_samples
    if text is None:
        text = validation_text(*lm.validation)
    settings = {"model": lm.name, "lengths": lengths, "tasks": tasks, "samples": samples,
                "ppl_samples": ppl_samples, "seed": seed, "max_new_tokens": max_new_tokens,
                "text_sha": _sha(text), "rope": rope_description(lm)}
    log = _RunLog(out_dir, settings)
    stream = lm.encode(text) if ppl_samples else []
    if ppl_samples and len(stream) + len(lm.prefix) < max(lengths):
        raise GatedAttnError(f"the evaluation text has {len(stream)} tokens, fewer than the longest length "
                             f"{max(lengths)}; give a longer --text or shorter --lengths")
    edges = bucket_edges(max(lengths))
    starts = window_starts(len(stream), max(lengths) - len(lm.prefix), ppl_samples)
    units = [("ppl", n, w) for n in lengths for w in range(ppl_samples)] + \
            [(t, n, i) for t in tasks for n in lengths for i in range(samples)]
    todo = [u for u in units if u not in log.done]
    # Build every task prompt first: a length too short for a task fails before any model time is spent.
    prompts = {u: make_sample(*u, lm.count_tokens, text, seed, max_new_tokens) for u in todo if u[0] != "ppl"}
    bar = _progress(len(units), len(units) - len(todo), progress)
    started, tokens = time.time(), 0
    for kind, length, i in todo:
        if kind == "ppl":
            record = perplexity_window(lm, stream, length, i, starts[i], edges, chunk_size)
            tokens += length
        else:
            sample = prompts[kind, length, i]
            ids = lm.prefix + lm.encode(sample.prompt)
            new = greedy_generate(lm, ids, sample.max_new_tokens, chunk_size)
            prediction = lm.decode(new)
            record = {"task": kind, "length": length, "index": i, "prompt_tokens": len(ids),
                      "generated_tokens": len(new), "needle_depths": [n.depth for n in sample.needles],
                      "answers": sample.answers, "prediction": prediction,
                      "score": score(prediction, sample.answers, sample.metric)}
            tokens += len(ids) + len(new)
        log.add(kind, length, i, record)
        bar.update(1)
        bar.set_postfix(tok_s=f"{tokens / max(time.time() - started, 1e-9):.0f}")
    bar.close()
    summary = {"settings": settings,
               "perplexity": summarize_perplexity(log.records("ppl")),
               "ruler": summarize_tasks(log.records("tasks")) if tasks and samples else None}
    log.finish(summary)
    return summary


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

    def finish(self, summary: dict) -> None:
        if self.out is None:
            return
        self._write_settings()
        (self.out / "summary.json").write_text(json.dumps(summary, indent=2))
        (self.out / "report.md").write_text(format_report(summary))
        plot(summary, self.out)


# -- reporting -------------------------------------------------------------------------------------------

def format_report(summary: dict) -> str:
    """Markdown tables: RULER accuracy (%) per task and length, perplexity per length and position bucket."""
    s = summary["settings"]
    rope = s["rope"]
    lines = [f"# long-eval: {s['model']}", "",
             f"RoPE theta {rope['rope_theta']}, scaling {json.dumps(rope['scaling'])}; seed {s['seed']}", ""]
    ruler = summary.get("ruler")
    if ruler:
        lengths = sorted({n for row in ruler["accuracy"].values() for n in row}, key=int)
        lines += [f"## RULER accuracy (%), {s['samples']} samples per cell", "",
                  "| task | " + " | ".join(str(n) for n in lengths) + " |",
                  "|---|" + "---:|" * len(lengths)]
        for task, row in ruler["accuracy"].items():
            lines.append(f"| {task} | " + " | ".join(_cell(row.get(n)) for n in lengths) + " |")
        lines += ["| **mean** | " + " | ".join(_cell(ruler["mean"].get(n)) for n in lengths) + " |", ""]
    ppl = summary.get("perplexity")
    if ppl:
        lengths = sorted(ppl, key=int)
        edges = sorted({(b["start"], b["end"]) for n in lengths for b in ppl[n]["buckets"]})
        lines += [f"## Perplexity, {s['ppl_samples']} windows per length", "",
                  "| positions | " + " | ".join(str(n) for n in lengths) + " |", "|---|" + "---:|" * len(lengths),
                  "| **all** | " + " | ".join(f"{ppl[n]['ppl']:.2f}" for n in lengths) + " |"]
        for lo, hi in edges:
            cells = []
            for n in lengths:
                b = next((b for b in ppl[n]["buckets"] if (b["start"], b["end"]) == (lo, hi)), None)
                cells.append(f"{b['ppl']:.2f}" if b else "")
            lines.append(f"| [{lo}, {hi}) | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def _cell(value: float | None) -> str:
    return "" if value is None else f"{value:.1f}"


def plot(summary: dict, out_dir: Path) -> list[Path]:
    """ruler_accuracy.png (accuracy vs length per task, and their mean) and perplexity.png (perplexity vs
    position per context length, and vs context length)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    ruler = summary.get("ruler")
    if ruler:
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for task, row in ruler["accuracy"].items():
            xs = sorted(row, key=int)
            ax.plot([int(x) for x in xs], [row[x] for x in xs], marker="o", lw=1, alpha=0.7, label=task)
        xs = sorted(ruler["mean"], key=int)
        ax.plot([int(x) for x in xs], [ruler["mean"][x] for x in xs], color="black", lw=2.5, marker="s",
                label="mean")
        ax.set(xscale="log", xlabel="context length (tokens)", ylabel="accuracy (%)", ylim=(-3, 103),
               title=f"RULER: {summary['settings']['model']}")
        _length_ticks(ax, xs)
        ax.legend(fontsize=7, ncol=2)
        fig.tight_layout()
        written.append(out_dir / "ruler_accuracy.png")
        fig.savefig(written[-1], dpi=120)
        plt.close(fig)
    ppl = summary.get("perplexity")
    if ppl:
        fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
        lengths = sorted(ppl, key=int)
        for i, n in enumerate(reversed(lengths)):  # longest first and widest: shorter ones often overlap it
            b = ppl[n]["buckets"]
            left.plot([math.sqrt(x["start"] * x["end"]) for x in b], [x["ppl"] for x in b], marker="o",
                      lw=1 + 2.5 * (len(lengths) - 1 - i) / max(len(lengths) - 1, 1), label=f"context {n}")
        left.set(xscale="log", yscale="log", xlabel="token position (bucket)", ylabel="perplexity",
                 title="perplexity by position")
        left.legend(fontsize=8)
        right.plot([int(n) for n in lengths], [ppl[n]["ppl"] for n in lengths], marker="o")
        right.set(xscale="log", xlabel="context length (tokens)", ylabel="perplexity (all positions)",
                  title="perplexity by context length")
        _length_ticks(right, lengths)
        fig.tight_layout()
        written.append(out_dir / "perplexity.png")
        fig.savefig(written[-1], dpi=120)
        plt.close(fig)
    return written


def _length_ticks(ax, lengths) -> None:
    from matplotlib.ticker import NullFormatter

    ax.set_xticks([int(n) for n in lengths], [str(n) for n in lengths])
    ax.xaxis.set_minor_formatter(NullFormatter())


__all__ = ["LongContextLM", "load_lm", "rope_change", "apply_rope", "token_nll", "greedy_generate",
           "window_starts", "perplexity_window", "summarize_perplexity", "summarize_tasks", "parse_lengths",
           "validation_text", "long_eval", "format_report", "plot", "TASKS", "parse_tasks"]
