"""The training loop: ``train(config, out_dir) -> RunResult``, resumable and exactly reproducible on CPU.

A run directory holds ``config.yaml`` (the resolved config), ``tokenizer.json``, ``data.json`` (corpus,
split and token counts), ``environment.json`` (versions, git revision, threads, CPU, per session),
``metrics.jsonl`` (one line per logged step; validation lines carry ``val_loss``), ``result.json``,
``loss.png`` and ``checkpoints/step_XXXXXXX/``. Calling ``train`` again on the same directory resumes from
the latest readable checkpoint: weights, optimizer, scheduler, RNG states, data position, spike window and
counters are restored, and metrics lines past the checkpoint are rewritten, so an interrupted run ends with
the same losses as an uninterrupted one.
"""

from __future__ import annotations

import copy
import dataclasses
import fcntl
import json
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import yaml

from ..config import Config
from ..data.cache import atomic_write_text
from ..data.pipeline import DataBundle, prepare_data
from ..data.sampler import EpochSampler
from ..data.tokenizer import TextTokenizer
from ..errors import GatedAttnError
from ..evaluation.perplexity import autocast, evaluate_perplexity
from ..modeling.model import WEIGHTS_NAME, GatedLM, resolve_model_dir
from .checkpoint import (TOKENIZER_NAME, checkpoint_step, latest_checkpoint, load_trainer_state, save_checkpoint,
                         test_pause, tidy_before_resume)
from .metrics import MetricsLog, SpikeDetector, environment_info, log, plot_loss_curves, read_metrics
from .optim import build_optimizer
from .pretrained import run_file

# Settings that may differ when a run is resumed: they change neither the model nor the data order.
# (A new max_steps also stretches the cosine schedule from the resumed step on.)
RESUMABLE_CHANGES = ("train.max_steps", "train.log_every", "train.eval_every", "train.eval_batches",
                     "train.checkpoint_every", "train.keep_checkpoints", "train.compile", "train.device")


LOSS_KEYS = ("loss", "lm_loss", "aux_loss", "load_balance_loss", "z_loss")  # GatedLMOutput fields, all logged


class TrainingError(GatedAttnError):
    """Training cannot go on (e.g. repeated non-finite losses); the message says why and what to change."""


@dataclass
class RunResult:
    out_dir: Path
    steps: int
    tokens: int
    train_loss: float | None  # the last step's loss
    val_loss: float | None  # the last validation
    checkpoint: Path | None
    spikes: int
    nonfinite_skips: int
    resumed_from: int | None  # the step resumed from, None for a fresh run
    tokens_per_s: float  # this session's training throughput (validation and checkpoints excluded)
    metrics_path: Path
    # In memory only (not in to_dict): the trained model, on its device, and the run's metrics.jsonl records.
    model: GatedLM | None = dataclasses.field(default=None, repr=False, compare=False)
    history: list[dict] = dataclasses.field(default_factory=list, repr=False, compare=False)

    def to_dict(self) -> dict:
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                  if f.name not in ("model", "history")}
        return {k: str(v) if isinstance(v, Path) else v for k, v in values.items()}


def resolve_config(config: Config, tokenizer: TextTokenizer) -> Config:
    """The config with ``model.vocab_size``, ``bos_token_id`` and ``eos_token_id`` taken from the tokenizer."""
    cfg = copy.deepcopy(config)
    cfg.model.vocab_size = tokenizer.vocab_size
    cfg.model.bos_token_id, cfg.model.eos_token_id = tokenizer.bos_id, tokenizer.eos_id
    cfg.model.validate()
    return cfg


def config_yaml(cfg: Config) -> str:
    return ("# Resolved config of this run (load it with gatedattn.load_config). model.vocab_size,\n"
            "# model.bos_token_id and model.eos_token_id were set from the run's tokenizer (tokenizer.json).\n"
            + yaml.safe_dump(cfg.to_dict(), sort_keys=False))


def _flatten(tree: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in tree.items():
        key = f"{prefix}{k}"
        out.update(_flatten(v, key + ".") if isinstance(v, dict) and k != "scaling" else {key: v})
    return out


def _check_same_run(saved_path: Path, cfg: Config, out_dir: Path) -> None:
    saved = _flatten(yaml.safe_load(saved_path.read_text()))
    new = _flatten(cfg.to_dict())
    diff = [f"{k}: {saved.get(k)!r} -> {new.get(k)!r}" for k in sorted(set(saved) | set(new))
            if saved.get(k) != new.get(k) and k not in RESUMABLE_CHANGES]
    if diff:
        raise GatedAttnError(f"{out_dir} holds a run with other settings ({'; '.join(diff[:4])}); resume it with "
                             "its own settings or train into another --out")


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise GatedAttnError("train.device=cuda but no CUDA device is available; allowed: auto, cpu, cuda")
    return torch.device(name)


def load_init_weights(model: GatedLM, init_from: str | Path) -> None:
    """Copy a saved model's weights into ``model``; every parameter must exist with the same shape (settings
    such as model.rope.* may differ: that is the long-context recipe)."""
    source = GatedLM.from_pretrained(init_from)
    if source.config.tie_embeddings != model.config.tie_embeddings:
        raise GatedAttnError(f"--init-from {init_from}: model.tie_embeddings is {source.config.tie_embeddings} "
                             f"there but {model.config.tie_embeddings} here; the architecture must match")
    theirs, ours = source.state_dict(), model.state_dict()
    for name in sorted(set(theirs) | set(ours)):
        a, b = theirs.get(name), ours.get(name)
        if a is None or b is None or a.shape != b.shape:
            there = "missing" if a is None else f"shape {tuple(a.shape)}"
            here = "missing" if b is None else f"shape {tuple(b.shape)}"
            raise GatedAttnError(f"--init-from {init_from}: parameter '{name}' is {there} there but {here} in "
                                 "this config; the architecture (gate, sizes, heads) must match")
    model.load_state_dict(theirs)


def _rng_state() -> dict:
    np_state = np.random.get_state()
    py_version, py_state, py_gauss = random.getstate()
    state = {"torch": torch.get_rng_state(),
             "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                       "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
             "python": {"version": py_version, "state": list(py_state), "gauss": py_gauss}}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _lock(out_dir: Path):
    handle = open(out_dir / ".lock", "w")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.close()
        raise GatedAttnError(f"another process is training in {out_dir}") from None
    return handle


def _write_session_files(out_dir: Path, cfg: Config, bundle: DataBundle, device: torch.device, start: int,
                         init_from: str | Path | None, n_params: int) -> None:
    atomic_write_text(out_dir / "config.yaml", config_yaml(cfg))
    bundle.tokenizer.save(out_dir / TOKENIZER_NAME)
    env_path = out_dir / "environment.json"
    sessions = json.loads(env_path.read_text())["sessions"] if env_path.is_file() and start else []
    sessions.append({"start_step": start, "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                     **environment_info(device)})
    atomic_write_text(env_path, json.dumps({"sessions": sessions}, indent=2))
    data_path = out_dir / "data.json"
    if not start or not data_path.is_file():
        info = {**bundle.info, "init_from": str(init_from) if init_from else None, "parameters": n_params}
        atomic_write_text(data_path, json.dumps(info, indent=2))


def train(config: Config, out_dir: str | Path, data: DataBundle | None = None, init_from: str | Path | None = None,
          model: GatedLM | None = None, progress: bool = True) -> RunResult:
    """Train (or resume training) a GatedLM as ``config`` says, writing the run into ``out_dir``.

    ``data``: a bundle from ``prepare_data(config)`` to share one tokenizer and data set across runs (with
    the same ``train.seed`` they also see the same batches in the same order). ``init_from``: a model or
    run directory whose weights start the run (shapes must match). ``model``: a ready-built GatedLM to train
    instead of a fresh one (its vocabulary must match the tokenizer).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    lock = _lock(out_dir)
    try:
        return _train(config, out_dir, data, init_from, model, progress)
    finally:
        lock.close()


def _train(config, out_dir, data, init_from, model, progress) -> RunResult:
    from tqdm.auto import tqdm

    tc = config.train
    resume = latest_checkpoint(out_dir)
    # The tokenizer of a resumed run is its own; a run started from another model uses that model's.
    tok_source = out_dir if resume is not None else (
        resolve_model_dir(Path(init_from)) if init_from is not None else None)
    tokenizer = None
    if tok_source is not None:
        tok_file = run_file(tok_source, TOKENIZER_NAME)
        if tok_file is None:
            raise GatedAttnError(f"{tok_source} has no {TOKENIZER_NAME}")
        tokenizer = TextTokenizer.from_file(tok_file)
    if data is None:
        data = prepare_data(config, tokenizer)
    else:
        if data.config != config.data:
            raise GatedAttnError("the data bundle was prepared with other data settings than config.data")
        if tokenizer is not None and data.tokenizer.fingerprint() != tokenizer.fingerprint():
            raise GatedAttnError(f"the data bundle's tokenizer differs from the one of {tok_source}")
    if data.train is None:
        raise GatedAttnError("the data bundle has no training split")
    cfg = resolve_config(config, data.tokenizer)
    if cfg.data.seq_len > cfg.model.max_position_embeddings:
        log.warning("warning: data.seq_len=%d exceeds model.max_position_embeddings=%d", cfg.data.seq_len,
                    cfg.model.max_position_embeddings)
    if resume is not None and (out_dir / "config.yaml").is_file():
        _check_same_run(out_dir / "config.yaml", cfg, out_dir)
    tidy_before_resume(out_dir, resume)

    device = pick_device(tc.device)
    torch.manual_seed(tc.seed)
    if model is None:
        model = GatedLM(cfg.model)
    elif model.config.vocab_size != cfg.model.vocab_size:
        raise GatedAttnError(f"the model has vocab_size {model.config.vocab_size}, the tokenizer "
                             f"{cfg.model.vocab_size} tokens")
    if init_from is not None and resume is None:
        load_init_weights(model, init_from)
    model.to(device).train()
    optimizer, scheduler = build_optimizer(model, tc)
    sampler = EpochSampler(len(data.train), tc.seed)
    detector = SpikeDetector(tc.spike_window, tc.spike_factor)
    start, tokens, spikes, nonfinite_total, nonfinite_run = 0, 0, 0, 0, 0
    if resume is not None:
        from safetensors.torch import load_model

        state = load_trainer_state(resume)
        load_model(model, str(resume / WEIGHTS_NAME), device=str(device))
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        sampler.load_state_dict(state["sampler"])
        _set_rng_state(state["rng"])
        detector = SpikeDetector(tc.spike_window, tc.spike_factor, state["spike_history"])
        start, tokens = state["step"], state["tokens"]
        c = state["counters"]
        spikes, nonfinite_total, nonfinite_run = c["spikes"], c["nonfinite_skips"], c["nonfinite_run"]
        log.info("resuming %s from step %d (%s)", out_dir, start, resume.name)

    metrics_path = out_dir / "metrics.jsonl"
    MetricsLog.truncate(metrics_path, start)
    last_loss = last_val = None
    for record in read_metrics(metrics_path) if metrics_path.is_file() else []:
        last_loss, last_val = record.get("loss", last_loss), record.get("val_loss", last_val)
    checkpoint = resume
    session_tokens, session_time = 0, 0.0

    def result() -> RunResult:
        return RunResult(out_dir=out_dir, steps=max(start, tc.max_steps), tokens=tokens, train_loss=last_loss,
                         val_loss=last_val, checkpoint=checkpoint, spikes=spikes, nonfinite_skips=nonfinite_total,
                         resumed_from=checkpoint_step(resume) if resume is not None else None,
                         tokens_per_s=session_tokens / session_time if session_time else 0.0,
                         metrics_path=metrics_path, model=model,
                         history=read_metrics(metrics_path) if metrics_path.is_file() else [])

    if start >= tc.max_steps:
        log.info("%s is already trained to step %d (train.max_steps=%d)", out_dir, start, tc.max_steps)
        return result()
    n_params = sum(p.numel() for p in model.parameters())
    _write_session_files(out_dir, cfg, data, device, start, init_from, n_params)
    run_config = config_yaml(cfg)
    metrics = MetricsLog(metrics_path)
    if resume is not None:
        metrics.write({"step": start, "event": "resume", "checkpoint": resume.name})
    forward = torch.compile(model) if tc.compile else model
    params = [p for p in model.parameters() if p.requires_grad]
    tokens_per_step = tc.batch_size * tc.grad_accum * cfg.data.seq_len
    interval_tokens, interval_time = 0, 0.0

    def validate(step: int) -> None:
        nonlocal last_val
        if data.val is None or tc.eval_batches == 0:
            return
        r = evaluate_perplexity(model, data.val, tc.batch_size, tc.eval_batches, tc.dtype)
        last_val = r.loss
        metrics.write({"step": step, "val_loss": r.loss, "val_ppl": r.perplexity, "val_tokens": r.tokens})

    def save(step: int) -> Path:
        state = {"step": step, "tokens": tokens, "optimizer": optimizer.state_dict(),
                 "scheduler": scheduler.state_dict(), "sampler": sampler.state_dict(), "rng": _rng_state(),
                 "spike_history": list(detector.history),
                 "counters": {"spikes": spikes, "nonfinite_skips": nonfinite_total, "nonfinite_run": nonfinite_run}}
        return save_checkpoint(out_dir, step, model, data.tokenizer, run_config, state, tc.keep_checkpoints)

    bar = tqdm(total=tc.max_steps, initial=start, desc="train", unit="step", disable=not progress,
               dynamic_ncols=True)
    try:
        for step in range(start, tc.max_steps):
            t0 = time.perf_counter()
            lr = optimizer.param_groups[0]["lr"]
            parts = 0.0
            for _ in range(tc.grad_accum):
                x = data.train.batch(sampler.next_indices(tc.batch_size)).to(device, non_blocking=True)
                with autocast(device, tc.dtype):
                    out = forward(x, labels=x)
                (out.loss / tc.grad_accum).backward()
                parts = parts + torch.stack([getattr(out, k).detach().float() for k in LOSS_KEYS]) / tc.grad_accum
            sums = dict(zip(LOSS_KEYS, parts.tolist()))  # one device sync per step
            grad_norm = float(torch.nn.utils.clip_grad_norm_(params, tc.grad_clip if tc.grad_clip > 0 else math.inf))
            finite = math.isfinite(sums["loss"]) and math.isfinite(grad_norm)
            if finite:
                optimizer.step()
                nonfinite_run = 0
            else:  # skip the update: the weights and optimizer state stay as they were
                nonfinite_run += 1
                nonfinite_total += 1
            optimizer.zero_grad(set_to_none=True)
            scheduler.step()
            done = step + 1
            tokens += tokens_per_step
            spike = detector.update(sums["loss"])
            spikes += spike
            dt = time.perf_counter() - t0
            session_tokens, session_time = session_tokens + tokens_per_step, session_time + dt
            interval_tokens, interval_time = interval_tokens + tokens_per_step, interval_time + dt
            last_loss = sums["loss"]
            if done % tc.log_every == 0 or done == tc.max_steps or spike or not finite:
                tps = interval_tokens / interval_time
                metrics.write({"step": done, **sums, "lr": lr, "tokens": tokens, "tokens_per_s": tps,
                               "grad_norm": grad_norm, "spike": spike, "spikes": spikes,
                               "nonfinite_skips": nonfinite_total})
                bar.set_postfix(loss=f"{sums['loss']:.4f}", tok_s=f"{tps:,.0f}", lr=f"{lr:.2e}", refresh=False)
                interval_tokens, interval_time = 0, 0.0
            if spike:
                log.warning("warning: loss spike at step %d: %.4f (> %.2f x the median of the last %d)", done,
                            sums["loss"], tc.spike_factor, tc.spike_window)
            if nonfinite_run >= tc.max_nonfinite:
                raise TrainingError(
                    f"stopped at step {done}: {nonfinite_run} non-finite losses or gradients in a row "
                    f"(train.max_nonfinite={tc.max_nonfinite}); lower train.lr, raise train.warmup_steps or set "
                    f"train.grad_clip; last checkpoint: {checkpoint or 'none'}")
            if (tc.eval_every and done % tc.eval_every == 0) or done == tc.max_steps:
                validate(done)
            if (tc.checkpoint_every and done % tc.checkpoint_every == 0) or done == tc.max_steps:
                checkpoint = save(done)
            bar.update(1)
            test_pause("step", done)
    finally:
        bar.close()
        metrics.close()
    final = result()
    atomic_write_text(out_dir / "result.json", json.dumps(final.to_dict(), indent=2))
    plot_loss_curves({out_dir.name: out_dir}, out_dir / "loss.png")
    return final
