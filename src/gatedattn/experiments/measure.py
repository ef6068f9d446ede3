"""One run of an experiment: train (or resume, or finish) it, then measure the model training hands back:
held-out loss, the paper's probes, the sink lab's loss split and sink probe, and training stability.
``compare`` and ``sweep`` both measure every run here.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from ..errors import GatedAttnError
from ..reporting import LossCurves
from .results import Probes, Stability, TrainSummary, VariantResult

log = logging.getLogger("gatedattn.experiments")


def train_and_measure(name: str, cfg, run_dir: Path, bundle, probe_ids, overrides: dict, *, progress: bool = True,
                      eval_batches: int | None = None) -> VariantResult:
    """Train ``cfg`` in ``run_dir`` on ``bundle``, then measure it; ``eval_batches`` caps the held-out pass
    (of ``cfg.train.batch_size`` sequences; None = the whole validation split)."""
    import torch

    from ..analysis import analyze_model
    from ..analysis.probes import SinkProbe, probe_history
    from ..evaluation.bigram_backcopy import lab_loss
    from ..evaluation.perplexity import evaluate_perplexity
    from ..training import train

    started = time.time()
    run = train(cfg, run_dir, data=bundle, progress=progress)
    model = run.model  # the trained model itself: no reload from disk
    tokens = bundle.val.num_tokens if eval_batches is None else min(
        bundle.val.num_tokens, eval_batches * cfg.train.batch_size * bundle.val.seq_len)
    log.info("evaluating %s on %s held-out tokens", name, f"{tokens:,}")
    val = evaluate_perplexity(model, bundle.val, batch_size=cfg.train.batch_size, max_batches=eval_batches,
                              dtype=cfg.train.dtype, progress=progress)
    log.info("probing %s on %d held-out sequences", name, probe_ids.shape[0])
    lab = bundle.lab
    active = torch.as_tensor(lab.active_queries(probe_ids)) if lab is not None else None
    probes = analyze_model(model, probe_ids, sink="first", progress=progress, desc=f"probe {name}",
                           active_queries=active)
    lab_result = sink = None
    if lab is not None:
        lab_result = lab_loss(model, lab, bundle.val, batch_size=cfg.train.batch_size, max_batches=eval_batches,
                              dtype=cfg.train.dtype)
        sink = SinkProbe.from_analysis(probes)
    summary = TrainSummary.from_dict(run.to_dict())
    if run.resumed_from is not None and run.resumed_from >= run.steps:  # finished before: nothing trained now
        summary = _last_session_summary(run_dir, run.steps) or summary
    return VariantResult(name=name, config_overrides=overrides, run_dir=str(run_dir), train=summary,
                         wall_s=time.time() - started, parameters=sum(p.numel() for p in model.parameters()),
                         val_loss=val.loss, val_ppl=val.perplexity, val_tokens=val.tokens,
                         probes=Probes.from_record(probes), curves=LossCurves.from_records(run.history),
                         lab=lab_result, sink=sink, sink_curve=probe_history(run.history),
                         stability=Stability.from_records(run.history))


def _last_session_summary(run_dir: Path, steps: int) -> TrainSummary | None:
    """The summary of the session that finished the run (its result.json), which measured its throughput."""
    try:
        summary = TrainSummary.from_dict(json.loads((run_dir / "result.json").read_text()))
    except (OSError, ValueError, TypeError):
        return None
    return summary if summary.steps == steps else None


def probe_ids(bundle, n_sequences: int):
    """The first held-out sequences, packed like training ones (BOS + seq_len - 1 tokens), for the probes."""
    n = min(n_sequences, len(bundle.val))
    if n == 0:
        raise GatedAttnError(f"the validation text is shorter than one sequence of data.seq_len="
                             f"{bundle.val.seq_len}; nothing to probe")
    return bundle.val.batch(range(n))
