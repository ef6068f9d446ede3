"""The Trainer: ``Trainer(config, out_dir).train() -> RunResult``, resumable and exactly reproducible on CPU.

The run directory's files are described in ``gatedattn.artifacts.runs`` and ``.checkpoints``. Calling
``train`` again on the same directory resumes from the newest readable checkpoint: weights, optimizer,
scheduler, data position, RNG states, spike window and counters come back through ``load_state_dict``
(the same object ``state_dict`` saved), and metrics lines past the checkpoint are rewritten, so an
interrupted run ends with the same losses as an uninterrupted one. Finishing is idempotent: calling a
finished run again completes whatever it had not written (result.json, loss.png, pruning).
"""

from __future__ import annotations

import copy
import dataclasses
import fcntl
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import yaml

from ..artifacts import (DATA_INFO, ENVIRONMENT, LOSS_PLOT, METRICS, RESULT, RUN_CONFIG_NAME, RUN_CONFIG_YAML,
                         TOKENIZER_NAME, CheckpointError, load_model, load_trainer_state, open_latest, run_file,
                         save_checkpoint, tidy_run)
from ..artifacts.checkpoints import (checkpoint_step, is_sharded, load_sharded_state, prune_checkpoints,
                                     save_sharded_checkpoint)
from ..config import DEVICES, Config, dotted
from ..data.pipeline import DataBundle, prepare_data
from ..data.sampler import EpochSampler
from ..data.tokenizer import TextTokenizer
from ..errors import GatedAttnError
from ..evaluation.perplexity import EvalResult, autocast, evaluate_perplexity
from ..fileio import atomic_write_text, read_json_object
from ..modeling.model import GatedLM
from .callbacks import Callback
from .compilation import compile_mode, compiled_forward
from .distributed import (Parallel, clip_grad_norm, load_named_optimizer_state, named_optimizer_state,
                          parallelize, setup_parallel)
from .metrics import MetricsLog, SpikeDetector, environment_info, log, plot_loss_curves, read_metrics
from .optim import build_optimizer, freeze_except
from .state import TrainState, rng_state, set_rng_state

# Settings that may differ when a run is resumed: they change neither the model nor the data order.
# (A new max_steps keeps the learning-rate schedule planned for the first one: see Trainer._setup.)
RESUMABLE_CHANGES = ("train.max_steps", "train.log_every", "train.eval_every", "train.eval_batches",
                     "train.checkpoint_every", "train.keep_checkpoints", "train.compile", "train.device",
                     "train.probe_every", "train.parallel", "train.fsdp_param_dtype",
                     "train.activation_checkpointing")

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
    resumed_from: int | None  # the step this session resumed from, None for a fresh run
    tokens_per_s: float  # training throughput over the run (validation and checkpoints excluded)
    metrics_path: Path
    model: GatedLM | None = field(default=None, repr=False)  # the trained model, on its device
    history: list[dict] = field(default_factory=list, repr=False)  # the run's metrics.jsonl records

    def to_dict(self) -> dict:
        skip = ("model", "history")
        return {f.name: str(v) if isinstance(v := getattr(self, f.name), Path) else v
                for f in dataclasses.fields(self) if f.name not in skip}


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


def pick_device(name: str, setting: str = "train.device") -> torch.device:
    """auto, cpu or cuda (``setting`` names where the choice came from, for the error)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise GatedAttnError(f"{setting}=cuda but no CUDA device is available; allowed: {', '.join(DEVICES)}")
    return torch.device(name)


def load_init_weights(model: GatedLM, source: GatedLM, init_from: str | Path) -> None:
    """Copy ``source``'s weights into ``model``; every parameter must exist with the same shape (settings
    such as model.rope.* may differ: that is the long-context recipe), except DSA indexers, which a dense
    source lacks: they keep their fresh initialisation (DeepSeek's warm-up starts from a dense model)."""
    if source.config.tie_embeddings != model.config.tie_embeddings:
        raise GatedAttnError(f"--init-from {init_from}: model.tie_embeddings is {source.config.tie_embeddings} "
                             f"there but {model.config.tie_embeddings} here; the architecture must match")
    theirs, ours = source.state_dict(), model.state_dict()
    fresh = sorted(n for n in ours if n not in theirs and ".attn.indexer." in n)
    for name in sorted((set(theirs) | set(ours)) - set(fresh)):
        a, b = theirs.get(name), ours.get(name)
        if a is None or b is None or a.shape != b.shape:
            there = "missing" if a is None else f"shape {tuple(a.shape)}"
            here = "missing" if b is None else f"shape {tuple(b.shape)}"
            raise GatedAttnError(f"--init-from {init_from}: parameter '{name}' is {there} there but {here} in "
                                 "this config; the architecture (gate, sizes, heads) must match")
    if fresh:
        log.info("--init-from %s: %d DSA indexer tensors are new (freshly initialised)", init_from, len(fresh))
    model.load_state_dict(theirs, strict=not fresh)


def _lock(out_dir: Path):
    handle = open(out_dir / ".lock", "w")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.close()
        raise GatedAttnError(f"another process is training in {out_dir}") from None
    return handle


@dataclass
class _Resume:
    """What a checkpoint gives a resumed run, read and checked before anything is changed."""

    path: Path
    state: dict
    tokenizer: TextTokenizer
    run_config: dict  # the flattened resolved config the run was started with


def _read_resume(path: Path) -> _Resume:
    state = load_trainer_state(path)
    tok_file = run_file(path, TOKENIZER_NAME)  # the checkpoint's own copy first
    if tok_file is None:
        raise CheckpointError(f"no {TOKENIZER_NAME} in the checkpoint or the run")
    try:
        saved = yaml.safe_load((path / RUN_CONFIG_NAME).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        raise CheckpointError(f"{RUN_CONFIG_NAME} is unreadable") from None
    if not isinstance(saved, dict):
        raise CheckpointError(f"{RUN_CONFIG_NAME} holds no config")
    return _Resume(path, state, TextTokenizer.from_file(tok_file), dotted(saved))


def _describes(path: Path, result: RunResult) -> bool:
    """Whether ``path`` is a readable result.json of the same finished run (steps and tokens)."""
    try:
        saved = read_json_object(path)
    except GatedAttnError:
        return False
    return saved.get("steps") == result.steps and saved.get("tokens") == result.tokens


class Trainer:
    """One training run in ``out_dir``: ``train()`` runs it to ``train.max_steps`` (resuming if it can).

    ``data``: a bundle from ``prepare_data(config)`` to share one tokenizer and data set across runs (with
    the same ``train.seed`` they also see the same batches in the same order). ``init_from``: a model or
    run directory whose weights and tokenizer start the run (shapes must match). ``model``: a ready-built
    GatedLM to train instead of a fresh one (its vocabulary must match the tokenizer). ``callbacks``: see
    ``training.callbacks``; with ``train.probe_every > 0`` a ``SinkProbeCallback`` comes first.
    """

    def __init__(self, config: Config, out_dir: str | Path, data: DataBundle | None = None,
                 init_from: str | Path | None = None, model: GatedLM | None = None, progress: bool = True,
                 callbacks: list[Callback] | tuple[Callback, ...] = ()):
        self.requested, self.out_dir = config, Path(out_dir)
        self.data, self.init_from, self.model, self.progress = data, init_from, model, progress
        # DSA models also log their indexers' KL to the main attention.
        self.loss_keys = LOSS_KEYS + (("indexer_kl",) if config.model.attention.sparse is not None else ())
        self.callbacks = list(callbacks)
        if config.train.probe_every > 0:
            from .probes import SinkProbeCallback

            self.callbacks.insert(0, SinkProbeCallback(config.train.probe_every))
        self.metrics: MetricsLog | None = None
        self.parallel = Parallel("none", torch.device("cpu"))  # train() sets up the run's
        self.state = TrainState()
        self.history: list[dict] = []
        self.resumed_from: int | None = None
        self.checkpoint: Path | None = None
        self.trained_now = False  # whether this call trained any step
        self.train_seconds = 0.0  # training time of the run (all sessions), validation and checkpoints excluded

    # -- the run --------------------------------------------------------------------------------------------
    def train(self) -> RunResult:
        self.device = pick_device(self.requested.train.device)  # before anything is created on disk
        self.parallel = setup_parallel(self.requested.train, self.device)
        self.device = self.parallel.device
        try:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            lock = _lock(self.out_dir) if self.parallel.is_main else None  # rank 0 holds it for the ranks
        except BaseException:
            self.parallel.close()
            raise
        try:
            self._setup()
            self.trained_now = self.state.step < self.config.train.max_steps
            if self.trained_now:
                self._run_steps()
            else:
                log.info("%s is already trained to step %d (train.max_steps=%d)", self.out_dir, self.state.step,
                         self.config.train.max_steps)
            return self._finish()
        finally:
            if lock is not None:
                lock.close()
            self.parallel.close()

    def _run_steps(self) -> None:
        from tqdm.auto import tqdm

        tc = self.config.train
        main = self.parallel.is_main
        self.compile_mode, why = compile_mode(self.config, self.device)
        if main:
            self._write_session_files()
        self.metrics = MetricsLog(self.out_dir / METRICS) if main else None
        if self.resumed_from is not None:
            self._log({"step": self.state.step, "event": "resume", "checkpoint": self.checkpoint.name})
        if self.compile_mode != "off":
            log.info("compiling the training forward: %s (%s)", self.compile_mode, why)
        self.forward = compiled_forward(self.compile_mode, self.model, self.wrapped)
        self._interval = [0, 0.0]  # tokens and seconds since the last logged step
        for cb in self.callbacks:
            cb.on_train_start(self)
        bar = tqdm(total=tc.max_steps, initial=self.state.step, desc="train", unit="step",
                   disable=not (self.progress and main), dynamic_ncols=True)
        try:
            while self.state.step < tc.max_steps:
                record = self.train_step()
                self.maybe_log(record, bar)
                self.check_nonfinite()
                self.maybe_eval()
                self.maybe_checkpoint()
                bar.update(1)
                for cb in self.callbacks:
                    cb.on_step_end(self, record)
        finally:
            bar.close()
            self.model.compiled_blocks = None  # the model leaves the trainer as it came: eager
            if self.metrics is not None:
                self.metrics.close()
            self.metrics = None

    def train_step(self) -> dict:
        """One optimizer step over ``grad_accum`` micro-batches; returns the step's numbers."""
        tc, st = self.config.train, self.state
        t0 = time.perf_counter()
        lr = self.optimizer.param_groups[0]["lr"]
        parts = 0.0
        for _ in range(tc.grad_accum):
            indices = self.parallel.shard(self.sampler.next_indices(tc.batch_size))
            x = self.data.train.batch(indices).to(self.device, non_blocking=True)
            with autocast(self.device, tc.dtype):
                out = self.forward(x, labels=x)
            (out.loss / tc.grad_accum).backward()
            parts = parts + torch.stack([getattr(out, k).detach().float() for k in self.loss_keys]) / tc.grad_accum
        # The global batch's losses (the mean over ranks: each rank's slice is the same size); every rank
        # then takes the same decisions (skip, spike) from the same numbers.
        losses = dict(zip(self.loss_keys, self.parallel.mean(parts).tolist()))  # one device sync per step
        clip = tc.grad_clip if tc.grad_clip > 0 else math.inf
        grad_norm = clip_grad_norm(self._params, clip, self.parallel)
        finite = math.isfinite(losses["loss"]) and math.isfinite(grad_norm)
        if finite:
            self.optimizer.step()
            st.nonfinite_run = 0
        else:  # skip the update: the weights and optimizer state stay as they were
            st.nonfinite_run += 1
            st.nonfinite_skips += 1
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        st.step += 1
        st.tokens += self.tokens_per_step
        spike = self.spikes.update(losses["loss"])
        st.spikes += spike
        st.last_loss = losses["loss"]
        dt = time.perf_counter() - t0
        self.train_seconds += dt
        self._interval[0] += self.tokens_per_step
        self._interval[1] += dt
        if spike:
            log.warning("warning: loss spike at step %d: %.4f (> %.2f x the median of the last %d)", st.step,
                        losses["loss"], tc.spike_factor, tc.spike_window)
        return {"step": st.step, **losses, "lr": lr, "tokens": st.tokens, "grad_norm": grad_norm,
                "spike": spike, "spikes": st.spikes, "nonfinite_skips": st.nonfinite_skips}

    def check_nonfinite(self) -> None:
        tc, st = self.config.train, self.state
        if st.nonfinite_run >= tc.max_nonfinite:
            raise TrainingError(
                f"stopped at step {st.step}: {st.nonfinite_run} non-finite losses or gradients in a row "
                f"(train.max_nonfinite={tc.max_nonfinite}); lower train.lr, raise train.warmup_steps or set "
                f"train.grad_clip; last checkpoint: {self.checkpoint or 'none'}")

    def maybe_log(self, record: dict, bar=None) -> None:
        tc, step = self.config.train, self.state.step
        finite = record["loss"] is not None and math.isfinite(record["loss"]) and math.isfinite(record["grad_norm"])
        if step % tc.log_every and step != tc.max_steps and not record["spike"] and finite:
            return
        tokens, seconds = self._interval
        record["tokens_per_s"] = tokens / seconds if seconds else 0.0
        # The logged line keeps the order of older runs' metrics: throughput right after the token count.
        line = {k: record[k] for k in ("step", *self.loss_keys, "lr", "tokens", "tokens_per_s", "grad_norm", "spike",
                                       "spikes", "nonfinite_skips")}
        self._log(line)
        if bar is not None:
            bar.set_postfix(loss=f"{record['loss']:.4f}", tok_s=f"{record['tokens_per_s']:,.0f}",
                            lr=f"{record['lr']:.2e}", refresh=False)
        self._interval = [0, 0.0]

    def maybe_eval(self, force: bool = False) -> EvalResult | None:
        tc, step = self.config.train, self.state.step
        due = (tc.eval_every and step % tc.eval_every == 0) or step == tc.max_steps
        if not (due or force) or self.data.val is None or tc.eval_batches == 0:
            return None
        r = evaluate_perplexity(self.model, self.data.val, tc.batch_size, tc.eval_batches, tc.dtype)
        self.state.last_val_loss = r.loss
        self._log({"step": step, "val_loss": r.loss, "val_ppl": r.perplexity, "val_tokens": r.tokens})
        for cb in self.callbacks:
            cb.on_eval(self, r)
        return r

    def maybe_checkpoint(self, force: bool = False) -> Path | None:
        tc, step = self.config.train, self.state.step
        if not (force or (tc.checkpoint_every and step % tc.checkpoint_every == 0) or step == tc.max_steps):
            return None
        if self.parallel.active:
            state = self.state_dict()
            del state["optimizer"]  # sharded with the model
            self.checkpoint = save_sharded_checkpoint(self.out_dir, step, self.model, self.optimizer,
                                                      self.data.tokenizer, self.run_config_text, state,
                                                      tc.keep_checkpoints)
        else:
            self.checkpoint = save_checkpoint(self.out_dir, step, self.model, self.data.tokenizer,
                                              self.run_config_text, self.state_dict(), tc.keep_checkpoints)
        for cb in self.callbacks:
            cb.on_checkpoint(self, self.checkpoint)
        return self.checkpoint

    def _log(self, record: dict) -> None:
        if self.metrics is not None:  # rank 0's
            self.metrics.write(record)
        self.history.append(record)

    def log_metrics(self, record: dict) -> None:
        """Append a record (it must carry "step", so that a resume truncates it with the rest) to metrics.jsonl
        and the run's history; callbacks use this, also after the training loop has closed its log."""
        if "step" not in record:
            raise ValueError("a metrics record needs its 'step'")
        if self.metrics is not None or not self.parallel.is_main:
            self._log(record)
            return
        metrics = MetricsLog(self.out_dir / METRICS, tensorboard=False)
        try:
            metrics.write(record)
        finally:
            metrics.close()
        self.history.append(record)

    # -- state ----------------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """Everything beside the weights that a resumed run needs (saved as trainer_state.pt; a data-parallel
        run saves "optimizer" with the weights, sharded)."""
        return {**self.state.state_dict(), "train_seconds": self.train_seconds, "schedule_steps": self.schedule_steps,
                "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                "sampler": self.sampler.state_dict(), "rng": rng_state(), "spike_history": list(self.spikes.history)}

    def load_state_dict(self, state: dict) -> None:
        self.state.load_state_dict(state)
        self.train_seconds = state.get("train_seconds", 0.0)
        if "optimizer" in state:  # else loaded with the sharded weights
            self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.sampler.load_state_dict(state["sampler"])
        set_rng_state(state["rng"])
        tc = self.config.train
        self.spikes = SpikeDetector(tc.spike_window, tc.spike_factor, state["spike_history"])

    # -- set-up and finish ----------------------------------------------------------------------------------
    def _setup(self) -> None:
        tc, par = self.requested.train, self.parallel
        # Rank 0 picks the checkpoint (and sets aside newer broken ones below); the others read the same one.
        found = open_latest(self.out_dir, _read_resume) if par.is_main else None
        chosen = par.broadcast(found[0] if found is not None else None)
        if found is None and chosen is not None:
            found = chosen, _read_resume(chosen)
        resume = found[1] if found is not None else None
        init = load_model(self.init_from) if self.init_from is not None and resume is None else None
        if init is not None and not init.is_ours:
            raise GatedAttnError(f"--init-from {self.init_from}: only gatedattn models can start a run")
        # The tokenizer of a resumed run is its own; a run started from another model uses that model's.
        tokenizer = resume.tokenizer if resume is not None else (init.require_tokenizer() if init else None)
        if self.data is None:
            with par.main_first():  # rank 0 fills the tokenizer and token caches; the others read them
                self.data = prepare_data(self.requested, tokenizer)
        else:
            if self.data.config != self.requested.data:
                raise GatedAttnError("the data bundle was prepared with other data settings than config.data")
            if tokenizer is not None and self.data.tokenizer.fingerprint() != tokenizer.fingerprint():
                raise GatedAttnError("the data bundle's tokenizer differs from the run's own")
        if self.data.train is None:
            raise GatedAttnError("the data bundle has no training split")
        self.config = cfg = resolve_config(self.requested, self.data.tokenizer)
        self.run_config_text = config_yaml(cfg)
        if resume is not None:
            self._check_same_run(resume.run_config)
        if par.is_main:
            tidy_run(self.out_dir, resume.path if resume is not None else None)

        torch.manual_seed(tc.seed)
        if self.model is None:
            self.model = GatedLM(cfg.model)
        elif self.model.config.vocab_size != cfg.model.vocab_size:
            raise GatedAttnError(f"the model has vocab_size {self.model.config.vocab_size}, the tokenizer "
                                 f"{cfg.model.vocab_size} tokens")
        if init is not None:
            load_init_weights(self.model, init.model, self.init_from)
        sharded = resume is not None and is_sharded(resume.path)
        if resume is not None and not sharded:  # whole weights load before FSDP shards them
            from safetensors.torch import load_model as load_weights

            load_weights(self.model, str(resume.path / "model.safetensors"))
        # A single-process checkpoint's optimizer state, renamed by parameter while the model is whole.
        named_optim = (named_optimizer_state(self.model, tc, resume.state.pop("optimizer"))
                       if resume is not None and not sharded and tc.parallel == "fsdp" else None)
        self.model.to(self.device).train()
        if tc.trainable != "all":
            freeze_except(self.model, tc.trainable)
        self.wrapped = parallelize(self.model, tc, par)
        # The learning-rate schedule is planned once, for the run's first max_steps: a resumed run that
        # asks for more steps holds the schedule's floor after it instead of jumping back up the cosine.
        self.schedule_steps = tc.max_steps
        if resume is not None:
            self.schedule_steps = resume.state.get("schedule_steps", resume.run_config["train.max_steps"])
            if self.schedule_steps != tc.max_steps:
                log.info("train.max_steps is %d, the run was planned for %d: the learning rate keeps its "
                         "schedule (cosine to step %d, then %.3g x train.lr)", tc.max_steps, self.schedule_steps,
                         self.schedule_steps, tc.min_lr_ratio)
        self.optimizer, self.scheduler = build_optimizer(self.model, tc, self.schedule_steps)
        self.sampler = EpochSampler(len(self.data.train), tc.seed)
        self.spikes = SpikeDetector(tc.spike_window, tc.spike_factor)
        self._params = [p for p in self.model.parameters() if p.requires_grad]
        self.tokens_per_step = tc.batch_size * tc.grad_accum * cfg.data.seq_len
        if resume is not None:
            if sharded:
                load_sharded_state(resume.path, self.model, self.optimizer)
            elif named_optim is not None:
                load_named_optimizer_state(self.model, self.optimizer, named_optim)
            self.load_state_dict(resume.state)
            self.resumed_from, self.checkpoint = checkpoint_step(resume.path), resume.path
            log.info("resuming %s from step %d (%s)", self.out_dir, self.state.step, resume.path.name)

        metrics_path = self.out_dir / METRICS
        if par.is_main:
            MetricsLog.truncate(metrics_path, self.state.step)
        par.barrier()
        self.history = read_metrics(metrics_path) if metrics_path.is_file() else []
        for record in self.history:  # checkpoints older than TrainState.last_* have them only here
            if self.state.last_loss is None and "loss" in record:
                self.state.last_loss = record["loss"]
            if "val_loss" in record:
                self.state.last_val_loss = record["val_loss"]

    def _check_same_run(self, saved: dict) -> None:
        new = dotted(self.config.to_dict())
        default = dotted(Config().to_dict())  # a key added since the run started, at its default, is no change
        diff = [f"{k}: {saved.get(k)!r} -> {new.get(k)!r}" for k in sorted(set(saved) | set(new))
                if saved.get(k) != new.get(k) and k not in RESUMABLE_CHANGES
                and not (k not in saved and k in default and new.get(k) == default[k])]
        if diff:
            raise GatedAttnError(f"{self.out_dir} holds a run with other settings ({'; '.join(diff[:4])}); resume "
                                 "it with its own settings or train into another --out")

    def _write_session_files(self) -> None:
        out, st = self.out_dir, self.state
        atomic_write_text(out / RUN_CONFIG_YAML, self.run_config_text)
        self.data.tokenizer.save(out / TOKENIZER_NAME)
        env_path = out / ENVIRONMENT
        sessions = []
        if st.step and env_path.is_file():
            try:
                sessions = list(read_json_object(env_path).get("sessions", []))
            except GatedAttnError:
                log.warning("warning: %s is unreadable; starting its session list anew", env_path)
        sessions.append({"start_step": st.step, "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                         "parallel": self.parallel.mode, "world_size": self.parallel.world_size,
                         "compile": self.compile_mode, **environment_info(self.device)})
        atomic_write_text(env_path, json.dumps({"sessions": sessions}, indent=2))
        data_path = out / DATA_INFO
        if not st.step or not data_path.is_file():
            info = {**self.data.info, "init_from": str(self.init_from) if self.init_from else None,
                    "parameters": sum(p.numel() for p in self.model.parameters())}
            atomic_write_text(data_path, json.dumps(info, indent=2))

    def result(self) -> RunResult:
        st = self.state
        return RunResult(out_dir=self.out_dir, steps=st.step, tokens=st.tokens, train_loss=st.last_loss,
                         val_loss=st.last_val_loss, checkpoint=self.checkpoint, spikes=st.spikes,
                         nonfinite_skips=st.nonfinite_skips, resumed_from=self.resumed_from,
                         tokens_per_s=st.tokens / self.train_seconds if self.train_seconds else 0.0,
                         metrics_path=self.out_dir / METRICS, model=self.model, history=self.history)

    def _finish(self) -> RunResult:
        """Complete what a finished run writes; safe to repeat (a kill after the last checkpoint leaves some
        of it undone)."""
        out = self.out_dir
        result = self.result()
        if self.parallel.is_main:
            prune_checkpoints(out, self.config.train.keep_checkpoints)
            # The run-level copies a reader looks for first (they may have been lost or damaged).
            atomic_write_text(out / RUN_CONFIG_YAML, self.run_config_text)
            self.data.tokenizer.save(out / TOKENIZER_NAME)
            if self.trained_now or not _describes(out / RESULT, result):  # else it records the finishing session
                atomic_write_text(out / RESULT, json.dumps(result.to_dict(), indent=2))
            plot_loss_curves({out.name: out}, out / LOSS_PLOT)
        self.model.eval()
        for cb in self.callbacks:
            cb.on_train_end(self, result)
        return result


def train(config: Config, out_dir: str | Path, data: DataBundle | None = None, init_from: str | Path | None = None,
          model: GatedLM | None = None, progress: bool = True,
          callbacks: list[Callback] | tuple[Callback, ...] = ()) -> RunResult:
    """Train (or resume, or finish) a run: ``Trainer(...).train()``; see ``Trainer`` for the arguments."""
    return Trainer(config, out_dir, data, init_from, model, progress, callbacks).train()
