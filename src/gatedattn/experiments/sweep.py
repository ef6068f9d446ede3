"""``gatedattn sweep``: every cell of a spec's grid, once per seed, on each of its tasks; then the statistics.

Runs are ordinary run directories, ``OUT/<task>/runs/<cell>/seed<k>``: a killed sweep resumes the run it was
in from its last checkpoint, and a run whose ``sweep_run.json`` records its measurements under the same
resolved config is reused as is. Runs of one seed share ``train.seed`` and so the model's initial draw and
the data order; one data bundle (tokenizer and packed data) serves every run with the same data settings.
``jobs`` > 1 runs that many processes, the CPU threads divided between them, or one per GPU.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..config import dotted
from ..errors import GatedAttnError
from ..fileio import atomic_write_text, read_json_object
from .results import VariantResult
from .spec import VARIANT_AXIS, SweepSpec
from .variants import task_config, variant_overrides

log = logging.getLogger("gatedattn.experiments")

RUN_RECORD = "sweep_run.json"
ANALYSIS_SEQUENCES = 4


@dataclass
class RunPlan:
    """One run of a sweep: a task, a cell of the grid, a seed, and the overrides that make its config."""

    task: str
    cell: dict  # axis -> value
    cell_id: str
    seed: int
    overrides: dict  # on top of the task's preset and budget
    run_dir: str
    eval_batches: int | None
    budget: str
    preset: str | None

    def config(self):
        return task_config(self.task, self.overrides, quick=self.budget == "quick", preset=self.preset)


@dataclass
class RunRecord:
    """What one run produced: its measurements, or how it diverged."""

    task: str
    cell: dict
    cell_id: str
    seed: int
    fingerprint: str  # of the resolved config and the measurement settings
    config: dict  # the resolved config, flattened to dotted keys
    diverged: bool
    error: str | None  # why training stopped early (non-finite losses), if it did
    divergence_loss: float
    result: VariantResult | None = field(default=None, repr=False)

    def to_dict(self) -> dict:
        out = {k: getattr(self, k) for k in ("task", "cell", "cell_id", "seed", "fingerprint", "config",
                                             "diverged", "error", "divergence_loss")}
        out["result"] = self.result.to_dict() if self.result is not None else None
        return out

    @classmethod
    def from_dict(cls, d: dict) -> "RunRecord":
        result = VariantResult.from_dict(d["cell_id"], d["result"]) if d.get("result") else None
        return cls(**{k: d[k] for k in ("task", "cell", "cell_id", "seed", "fingerprint", "config", "diverged",
                                        "error", "divergence_loss")}, result=result)


def cell_id(cell: dict) -> str:
    """A readable, path-safe name of a cell: ``g1``, ``g1_lr=0.003_sandwich_norm=true``."""
    parts = []
    for axis, value in cell.items():
        text = json.dumps(value) if not isinstance(value, str) else value
        parts.append(text if axis == VARIANT_AXIS else f"{axis.rsplit('.', 1)[-1]}={text}")
    return "_".join(parts).replace("/", "-").replace(" ", "")


def plan_sweep(spec: SweepSpec, out: Path) -> tuple[list[RunPlan], list[str]]:
    """Every run of ``spec``, each config built (so a bad key or value fails here, before any training), and
    a notice for each cell that does not apply to a task (e.g. more KV heads than query heads)."""
    plans, skipped = [], []
    quick = spec.budget == "quick"
    for task in spec.tasks:
        task_set = spec.lab_set if task == "lab" else spec.set
        for cell in spec.cells():
            axes = {k: v for k, v in cell.items() if k != VARIANT_AXIS}
            base = {**task_set, **axes}
            extra = {}
            if VARIANT_AXIS in cell:
                base_config = task_config(task, base, quick=quick, preset=spec.preset)  # a bad key fails here
                try:
                    extra = variant_overrides(cell[VARIANT_AXIS], base_config)
                except GatedAttnError as e:
                    skipped.append(f"{task}: {cell_id(cell)} skipped: {e}")
                    continue
            for seed in spec.seeds:
                overrides = {**base, **extra, "train.seed": seed}
                plan = RunPlan(task, cell, cell_id(cell), seed, overrides,
                               str(out / task / "runs" / cell_id(cell) / f"seed{seed}"), spec.eval_batches,
                               spec.budget, spec.preset)
                plan.config()
                plans.append(plan)
    if not plans:
        raise GatedAttnError(f"sweep spec {spec.name!r}: no cell applies to its tasks ({'; '.join(skipped)})")
    return plans, skipped


# train.compile was a boolean when most stored runs were fingerprinted; its default (auto) and off hash as the
# old false, model as true, so a new default does not retrain every stored sweep.
LEGACY_COMPILE = {"auto": False, "off": False, "model": True}


def fingerprint(cfg, plan: RunPlan) -> str:
    config = cfg.to_dict()
    config["train"]["compile"] = LEGACY_COMPILE.get(config["train"]["compile"], config["train"]["compile"])
    sparse = config["model"]["attention"]["sparse"]
    if sparse is not None and sparse["indexer_dtype"] == "float32":  # added later: its default hashes as absent
        del sparse["indexer_dtype"]
    settings = {"config": config, "eval_batches": plan.eval_batches, "analysis": ANALYSIS_SEQUENCES}
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]


def stored_record(plan: RunPlan, cfg) -> RunRecord | None:
    """The run's record if it measured this very config; None otherwise (a changed spec retrains)."""
    path = Path(plan.run_dir) / RUN_RECORD
    if not path.is_file():
        return None
    try:
        record = RunRecord.from_dict(read_json_object(path))
    except (GatedAttnError, KeyError, TypeError, ValueError) as e:
        log.warning("warning: %s is unreadable (%s); the run is measured again", path, e)
        return None
    return record if record.fingerprint == fingerprint(cfg, plan) else None


_BUNDLES: dict[str, object] = {}  # one data bundle per data config, per process


def _bundle(cfg):
    from ..training import prepare_data

    key = json.dumps(cfg.to_dict()["data"], sort_keys=True, default=str)
    if key not in _BUNDLES:
        bundle = prepare_data(cfg)
        if bundle.val is None:
            raise GatedAttnError("the corpus gave no validation text; use a larger corpus or data.val_fraction > 0")
        _BUNDLES[key] = bundle
    return _BUNDLES[key]


def execute(plan: RunPlan, divergence_loss: float | None, progress: bool = True) -> RunRecord:
    """Train and measure one run (or reuse its stored record); a run that stops on non-finite losses, or
    ends above the divergence bound, is recorded as diverged instead of failing the sweep."""
    from ..training import TrainingError
    from .measure import probe_ids, train_and_measure

    cfg = plan.config()
    stored = stored_record(plan, cfg)
    if stored is not None:
        return stored
    bundle = _bundle(cfg)
    bound = divergence_loss if divergence_loss is not None else math.log(bundle.tokenizer.vocab_size)
    result, error = None, None
    try:
        result = train_and_measure(f"{plan.cell_id} seed {plan.seed}", cfg, Path(plan.run_dir), bundle,
                                   probe_ids(bundle, ANALYSIS_SEQUENCES), plan.overrides, progress=progress,
                                   eval_batches=plan.eval_batches)
    except TrainingError as e:
        error = str(e)
    diverged = result is None or not math.isfinite(result.val_loss) or result.val_loss > bound
    record = RunRecord(plan.task, plan.cell, plan.cell_id, plan.seed, fingerprint(cfg, plan),
                       dotted(cfg.to_dict()), diverged, error, bound, result)
    atomic_write_text(Path(plan.run_dir) / RUN_RECORD, json.dumps(record.to_dict(), indent=1, default=str))
    return record


def _worker_init(threads: int, devices) -> None:
    import torch

    torch.set_num_threads(threads)
    if devices is not None:  # one GPU per worker process
        torch.cuda.set_device(devices.get())


def _execute_quietly(plan: RunPlan, divergence_loss: float | None) -> dict:
    return execute(plan, divergence_loss, progress=False).to_dict()


@dataclass
class SweepSettings:
    out: Path
    jobs: int = 1
    threads: int | None = None  # CPU threads per run (default: the cores divided by jobs)
    progress: bool = True


def run_sweep(spec: SweepSpec, settings: SweepSettings):
    """Run (or resume) every run of ``spec``; write summary.md, summary.json, runs.csv and the plots into
    ``settings.out``; return the ``SweepSummary``."""
    from ..reporting import pyplot
    from .sweep_report import summarize, write_outputs

    pyplot()  # the summary needs matplotlib: say so before the runs, not after
    if settings.jobs < 1:
        raise GatedAttnError(f"--jobs must be >= 1, got {settings.jobs}")
    out = Path(settings.out)
    plans, skipped = plan_sweep(spec, out)
    for line in skipped:
        log.warning("%s", line)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "spec.json", json.dumps(spec.to_dict(), indent=1))
    started = time.time()
    records = _run_all(plans, spec, settings)
    summary = summarize(spec, records, skipped, wall_s=time.time() - started)
    write_outputs(summary, records, out)
    return summary


def _run_all(plans: list[RunPlan], spec: SweepSpec, settings: SweepSettings) -> list[RunRecord]:
    import torch

    reused = sum(stored_record(p, p.config()) is not None for p in plans)
    log.info("sweep %s: %d runs (%d finished before, reused)", spec.name, len(plans), reused)
    cuda = torch.cuda.is_available() and all(p.config().train.device != "cpu" for p in plans)
    jobs = min(settings.jobs, torch.cuda.device_count()) if cuda and settings.jobs > 1 else settings.jobs
    if jobs == 1:
        if settings.threads:
            torch.set_num_threads(settings.threads)
        records = []
        for i, plan in enumerate(plans, 1):
            log.info("[%d/%d] %s: %s seed %d", i, len(plans), plan.task, plan.cell_id, plan.seed)
            records.append(execute(plan, spec.divergence_loss, progress=settings.progress))
        return records
    return _run_parallel(plans, spec, jobs, settings.threads or max(1, (os.cpu_count() or 1) // jobs), cuda)


def _run_parallel(plans, spec, jobs: int, threads: int, cuda: bool) -> list[RunRecord]:
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor, as_completed

    context = mp.get_context("spawn")  # fresh interpreters: no forked torch thread pools
    devices = None
    if cuda:
        devices = context.Manager().Queue()
        for i in range(jobs):
            devices.put(i)
    log.info("running %d processes of %d thread(s) each%s", jobs, threads, " on one GPU each" if cuda else "")
    records: dict[int, RunRecord] = {}
    with ProcessPoolExecutor(jobs, mp_context=context, initializer=_worker_init,
                             initargs=(threads, devices)) as pool:
        futures = {pool.submit(_execute_quietly, plan, spec.divergence_loss): i for i, plan in enumerate(plans)}
        for done, future in enumerate(as_completed(futures), 1):
            plan = plans[futures[future]]
            records[futures[future]] = RunRecord.from_dict(future.result())
            log.info("[%d/%d] finished %s: %s seed %d", done, len(plans), plan.task, plan.cell_id, plan.seed)
    return [records[i] for i in range(len(plans))]
