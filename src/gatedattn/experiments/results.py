"""What a comparison produces, as dataclasses: per variant the training summary, held-out loss, probe
numbers and loss curves; the whole comparison with its settings. Serialised once, to results.json
(``to_json`` / ``from_json``); the report and the CLI read these objects, not the JSON.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from ..analysis.probes import SinkProbe
from ..errors import GatedAttnError
from ..evaluation.bigram_backcopy import LabLoss
from ..reporting import LossCurves


def _known(cls, d: dict) -> dict:
    names = {f.name for f in dataclasses.fields(cls)}
    return {k: v for k, v in d.items() if k in names}


@dataclass
class TrainSummary:
    """A run's training summary (the fields of ``RunResult.to_dict()``)."""

    out_dir: str
    steps: int
    tokens: int
    train_loss: float | None
    val_loss: float | None  # the last in-training validation (a few batches), not the full held-out pass
    checkpoint: str | None
    spikes: int
    nonfinite_skips: int
    resumed_from: int | None
    tokens_per_s: float
    metrics_path: str

    @classmethod
    def from_dict(cls, d: dict) -> "TrainSummary":
        return cls(**_known(cls, d))


@dataclass
class Probes:
    """The headline probe numbers of one model, and everything ``analyze_model`` returned (``record``, keys
    in docs/analysis.md) for the analysis report."""

    f_attn: float  # first-token attention share, mean over layers and heads
    frac_heads_above_eps: float
    m_act: float  # mean over layers of the max |hidden|
    gate_mean: float | None  # None without a gate
    has_gate: bool
    record: dict = field(repr=False)

    @classmethod
    def from_record(cls, record: dict) -> "Probes":
        return cls(f_attn=record["f_attn"], frac_heads_above_eps=record["frac_heads_above_eps"],
                   m_act=record["m_act"], gate_mean=record.get("gate_mean"), has_gate=bool(record["has_gate"]),
                   record=record)


@dataclass
class Stability:
    """How smoothly a run trained, from its metrics records."""

    max_grad_norm: float | None  # before clipping, over finite steps
    spikes: int  # steps whose loss exceeded train.spike_factor x the recent median
    largest_spike: float | None  # the highest loss among those steps
    nonfinite_steps: int  # non-finite losses or gradients (skipped)

    @classmethod
    def from_records(cls, records: list[dict]) -> "Stability":
        steps = [r for r in records if "grad_norm" in r]
        norms = [r["grad_norm"] for r in steps if r["grad_norm"] is not None and math.isfinite(r["grad_norm"])]
        spiked = [r["loss"] for r in steps if r.get("spike") and r.get("loss") is not None]
        nonfinite = sum(1 for r in steps if r.get("loss") is None or not math.isfinite(r["loss"])
                        or r["grad_norm"] is None or not math.isfinite(r["grad_norm"]))
        return cls(max(norms, default=None), len(spiked), max(spiked, default=None), nonfinite)


@dataclass
class VariantResult:
    name: str
    config_overrides: dict
    run_dir: str
    train: TrainSummary
    wall_s: float
    parameters: int
    val_loss: float  # full held-out split
    val_ppl: float
    val_tokens: int
    probes: Probes
    curves: LossCurves  # x = step
    # The sink lab only: the loss split beside the Bayes-optimal one, the final sink probe (active and
    # dormant queries), and the probes logged during training (step, probe).
    lab: LabLoss | None = None
    sink: SinkProbe | None = None
    sink_curve: list[tuple[int, SinkProbe]] = field(default_factory=list, repr=False)
    stability: Stability | None = None

    def to_dict(self) -> dict:
        out = {"config_overrides": self.config_overrides, "run_dir": self.run_dir,
               "train": dataclasses.asdict(self.train), "wall_s": self.wall_s, "parameters": self.parameters,
               "val_loss": self.val_loss, "val_ppl": self.val_ppl, "val_tokens": self.val_tokens,
               "analysis": self.probes.record, "curves": self.curves.to_dict()}
        if self.stability is not None:
            out["stability"] = dataclasses.asdict(self.stability)
        if self.lab is not None:
            out.update(lab=self.lab.to_dict(), sink=dataclasses.asdict(self.sink),
                       sink_curve=[[step, dataclasses.asdict(p)] for step, p in self.sink_curve])
        return out

    @classmethod
    def from_dict(cls, name: str, d: dict) -> "VariantResult":
        return cls(name=name, config_overrides=d["config_overrides"], run_dir=d["run_dir"],
                   train=TrainSummary.from_dict(d["train"]), wall_s=d["wall_s"], parameters=d["parameters"],
                   val_loss=d["val_loss"], val_ppl=d["val_ppl"], val_tokens=d["val_tokens"],
                   probes=Probes.from_record(d["analysis"]), curves=LossCurves.from_dict(d["curves"]),
                   lab=LabLoss(**d["lab"]) if d.get("lab") else None,
                   sink=SinkProbe(**d["sink"]) if d.get("sink") else None,
                   sink_curve=[(step, SinkProbe(**p)) for step, p in d.get("sink_curve", [])],
                   stability=Stability(**d["stability"]) if d.get("stability") else None)


@dataclass
class RecordedSettings:
    """What the comparison was run with."""

    variants: list[str]
    quick: bool
    preset: str
    overrides: dict
    analysis_input_shape: list[int]  # (sequences, tokens) the probes read

    def same_runs(self, other: "RecordedSettings") -> bool:
        """Whether a variant's run and measurements under ``other`` are those it would get under these
        settings (the list of variants may differ)."""
        def key(s: RecordedSettings):
            return json.dumps([s.quick, s.preset, s.overrides, list(s.analysis_input_shape)], sort_keys=True,
                              default=str)
        return key(self) == key(other)


@dataclass
class ComparisonResult:
    """One task's comparison ("lab": the Bigram-Backcopy sink lab; "text": natural text)."""

    settings: RecordedSettings
    data: dict  # the shared data bundle's record (corpus, split, token counts, tokenizer)
    variants: dict[str, VariantResult]
    plots: list[str] = field(default_factory=list)  # relative to the task's output directory
    task: str = "text"

    def to_dict(self) -> dict:
        return {"task": self.task, "settings": dataclasses.asdict(self.settings), "data": self.data,
                "variants": {name: v.to_dict() for name, v in self.variants.items()}, "plots": self.plots}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1, default=str)

    @classmethod
    def from_dict(cls, d: dict) -> "ComparisonResult":
        return cls(settings=RecordedSettings(**_known(RecordedSettings, d["settings"])), data=d["data"],
                   variants={name: VariantResult.from_dict(name, v) for name, v in d["variants"].items()},
                   plots=list(d.get("plots", [])), task=d.get("task", "text"))

    @classmethod
    def from_json(cls, text: str) -> "ComparisonResult":
        return cls.from_dict(json.loads(text))

    @classmethod
    def load(cls, path: str | Path) -> "ComparisonResult":
        """Read a results.json; a missing, unreadable or foreign file is a one-line error."""
        path = Path(path)
        try:
            return cls.from_json(path.read_text(encoding="utf-8"))
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise GatedAttnError(f"cannot read comparison results {path}: {type(e).__name__}: {e}") from None
