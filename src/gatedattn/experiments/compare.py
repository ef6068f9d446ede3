"""The main job: train an ungated baseline and gated twins on the same data, evaluate, probe, report.

Two tasks, in this order: the sink lab (Bigram-Backcopy, where a baseline grows an attention sink within
minutes, with sink probes logged during training) and natural text. Within a task every variant starts
from the same seed and sees the same batches in the same order (one shared data bundle and tokenizer) for
the same token budget, so the only difference between runs is the attention variant. Each run lives in
``OUT/<task>/runs/<variant>``; re-running the job on the same OUT resumes unfinished runs, and for a
finished run whose evaluation and probes ``OUT/<task>/results.json`` already holds under the same settings
it reuses those numbers (``fresh_eval`` recomputes them). ``OUT/report.md`` leads with the lab.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import GatedAttnError
from ..reporting import LossCurves, pyplot
from .measure import probe_ids as _probe_ids
from .measure import train_and_measure
from .report import report_markdown, write_plots
from .results import ComparisonResult, RecordedSettings, VariantResult
from .variants import LAB_PRESET, TASKS, VARIANTS, resolve_preset, variant_config

log = logging.getLogger("gatedattn.experiments")

RESULTS_NAME = "results.json"


@dataclass
class CompareSettings:
    out: Path
    variants: list[str] = field(default_factory=lambda: ["none", "g1"])
    preset: str | None = None  # of the text task
    quick: bool = False
    overrides: dict = field(default_factory=dict)  # of the text task
    lab_overrides: dict = field(default_factory=dict)  # of the sink lab
    tasks: list[str] = field(default_factory=lambda: list(TASKS))
    analysis_sequences: int = 4
    progress: bool = True
    fresh_eval: bool = False  # re-evaluate and re-probe finished runs instead of reusing results.json


@dataclass
class Comparison:
    """The comparison of every task, in report order."""

    tasks: dict[str, ComparisonResult]


def run_compare(settings: CompareSettings) -> Comparison:
    """Train, evaluate and probe every variant on every task; write each task's results.json and plots into
    ``out/<task>/`` and report.md into ``out``."""
    from ..fileio import atomic_write_text

    pyplot()  # the report needs matplotlib: say so before hours of training, not after
    out = Path(settings.out)
    comparison = Comparison({task: _run_task(task, settings, out / task) for task in settings.tasks})
    atomic_write_text(out / "report.md", report_markdown(comparison))
    return comparison


def _run_task(task: str, settings: CompareSettings, out: Path) -> ComparisonResult:
    from ..fileio import atomic_write_text
    from ..training import prepare_data

    overrides = settings.lab_overrides if task == "lab" else settings.overrides
    configs = {v: variant_config(v, quick=settings.quick, preset=settings.preset, overrides=overrides, task=task)
               for v in settings.variants}
    first = configs[settings.variants[0]]
    out.mkdir(parents=True, exist_ok=True)
    bundle = prepare_data(first)  # one tokenizer, one data set, one order for every variant
    if bundle.val is None:
        raise GatedAttnError("the corpus gave no validation text; use a larger corpus or data.val_fraction > 0")
    probe_ids = _probe_ids(bundle, settings.analysis_sequences)
    preset = LAB_PRESET if task == "lab" else resolve_preset(settings.preset, settings.quick)
    result = ComparisonResult(
        settings=RecordedSettings(variants=list(settings.variants), quick=settings.quick, preset=preset,
                                  overrides=overrides, analysis_input_shape=list(probe_ids.shape)),
        data=bundle.info, variants={}, task=task)
    stored = _stored_results(out, result)
    for name in settings.variants:
        cfg = configs[name]
        run_dir = out / "runs" / name
        previous = stored.get(name)
        if previous is not None and not settings.fresh_eval and _finished(run_dir, cfg.train.max_steps, previous):
            log.info("%s: trained to step %d; reused its evaluation and probes from %s (--fresh-eval "
                     "recomputes them)", name, previous.train.steps, out / RESULTS_NAME)
            result.variants[name] = dataclasses.replace(previous, run_dir=str(run_dir))
        else:
            log.info("%s: %s task", name, "sink lab" if task == "lab" else "natural text")
            result.variants[name] = train_and_measure(name, cfg, run_dir, bundle, probe_ids, VARIANTS[name],
                                                      progress=settings.progress)
    result.plots = write_plots(result, out)
    atomic_write_text(out / RESULTS_NAME, result.to_json())
    return result


def _stored_results(out: Path, current: ComparisonResult) -> dict[str, VariantResult]:
    """The variants of an earlier results.json in ``out`` measured under the current settings and data."""
    path = out / RESULTS_NAME
    if not path.is_file():
        return {}
    try:
        stored = ComparisonResult.load(path)
    except GatedAttnError as e:
        log.warning("warning: %s; its runs are evaluated again", e)
        return {}
    same_data = json.dumps(stored.data, sort_keys=True, default=str) == json.dumps(current.data, sort_keys=True,
                                                                                   default=str)
    if not (same_data and stored.settings.same_runs(current.settings)):
        return {}
    return {name: v for name, v in stored.variants.items() if v.config_overrides == VARIANTS.get(name)}


def _finished(run_dir: Path, max_steps: int, previous: VariantResult) -> bool:
    """Whether the run in ``run_dir`` is trained to ``max_steps``, the step ``previous`` measured it at."""
    from ..artifacts import checkpoint_step, latest_checkpoint

    checkpoint = latest_checkpoint(run_dir)
    return checkpoint is not None and checkpoint_step(checkpoint) == max_steps == previous.train.steps
