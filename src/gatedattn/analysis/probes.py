"""The sink probe: the few numbers that show when an attention sink forms, cheap enough to run during training.

``sink_probe(model, ids, active_queries)`` runs ``analyze_model`` (chunked, no T x T matrix, no logits) and
keeps Gu et al.'s sink rate, the first-token share (overall, and on active / dormant queries when a mask is
given), Guo et al.'s value drain and residual peak, and the gate mean. ``SinkProbe.to_record()`` gives the
flat ``probe/...`` keys written to metrics.jsonl; ``plot_probe_curves`` draws them over steps, one line per run.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..errors import MissingExtraError
from ..reporting import plain_ticks, pyplot, value_scale
from .analyze import SINK_EPS, analyze_model

PREFIX = "probe/"


@dataclass
class SinkProbe:
    sink_rate: float  # share of (layer, head) whose mean first-token share exceeds sink_eps
    sink_eps: float
    f_attn: float  # first-token share, mean over layers, heads and queries
    f_attn_dormant: float | None  # on dormant / active queries (None: no mask, or no such query)
    f_attn_active: float | None
    sink_rate_dormant: float | None
    value_drain: float  # mean over layers and KV heads of |v_first| / median |v_token|
    residual_peak: float  # mean over layers of |h_first| / median |h_token|
    m_act: float
    gate_mean: float | None
    first_token_share_per_head: list  # layers x heads
    first_token_share_dormant_per_head: list | None
    first_token_share_active_per_head: list | None
    value_drain_per_head: list  # layers x KV heads
    residual_peak_per_layer: list

    def to_record(self, prefix: str = PREFIX) -> dict:
        return {prefix + k: v for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_analysis(cls, r: dict, eps: float = SINK_EPS) -> "SinkProbe":
        """From what ``analyze_model`` returned (with ``eps`` as its sink threshold)."""
        drain = r["value_drain_per_head"]
        return cls(
            sink_rate=r["sink_rate"], sink_eps=eps, f_attn=r["f_attn"], f_attn_dormant=r.get("f_attn_dormant"),
            f_attn_active=r.get("f_attn_active"), sink_rate_dormant=r.get("sink_rate_dormant"),
            value_drain=float(torch.tensor(drain).mean()),
            residual_peak=sum(r["residual_peak"]) / len(r["residual_peak"]), m_act=r["m_act"],
            gate_mean=r.get("gate_mean"), first_token_share_per_head=r["first_token_share_per_head"],
            first_token_share_dormant_per_head=r.get("first_token_share_dormant_per_head"),
            first_token_share_active_per_head=r.get("first_token_share_active_per_head"),
            value_drain_per_head=drain, residual_peak_per_layer=r["residual_peak"])

    @classmethod
    def from_record(cls, record: dict, prefix: str = PREFIX) -> "SinkProbe":
        return cls(**{f.name: record.get(prefix + f.name) for f in dataclasses.fields(cls)})


def sink_probe(model: nn.Module, input_ids, active_queries=None, eps: float = SINK_EPS) -> SinkProbe:
    """The sink numbers of ``model`` on ``input_ids`` (B, T); ``active_queries`` a (B, T) bool mask or None."""
    r = analyze_model(model, input_ids, eps=eps, map_layers=[], active_queries=active_queries, top_k=1,
                      progress=False)
    return SinkProbe.from_analysis(r, eps)


def probe_history(records: list[dict]) -> list[tuple[int, SinkProbe]]:
    """The (step, probe) pairs of a run's metrics records, in step order."""
    found = {r["step"]: SinkProbe.from_record(r) for r in records if PREFIX + "sink_rate" in r}
    return sorted(found.items())


def plot_probe_curves(runs: dict[str, str | Path | list[dict]], out_png: str | Path) -> Path | None:
    """Sink rate, first-token share (dormant solid, active dashed; overall when there is no split), value drain
    and residual peak over training steps, one colour per run (a run directory or its metrics records);
    None when matplotlib is not installed."""
    try:
        plt = pyplot()
    except MissingExtraError:
        return None
    from ..artifacts.runs import read_jsonl

    fig, axes = plt.subplots(2, 2, figsize=(10, 6.5), sharex=True)
    panels = [(axes[0, 0], "sink rate (share of heads, eps {eps})"), (axes[0, 1], "first-token attention share"),
              (axes[1, 0], "value drain: |v_first| / median |v|"), (axes[1, 1], "residual peak: |h_first| / median |h|")]
    eps = SINK_EPS
    for i, (name, run) in enumerate(runs.items()):
        records = run if isinstance(run, list) else read_jsonl(Path(run) / "metrics.jsonl")
        history = probe_history(records)
        if not history:
            continue
        steps = [s for s, _ in history]
        probes = [p for _, p in history]
        eps = probes[-1].sink_eps
        color = f"C{i}"

        def line(ax, values, **kw):
            pts = [(s, v) for s, v in zip(steps, values) if v is not None and math.isfinite(v)]
            if pts:
                ax.plot(*zip(*pts), color=color, marker=".", **kw)

        line(axes[0, 0], [p.sink_rate for p in probes], label=name)
        if any(p.f_attn_dormant is not None for p in probes):
            line(axes[0, 1], [p.f_attn_dormant for p in probes], label=f"{name} dormant")
            line(axes[0, 1], [p.f_attn_active for p in probes], ls="--", label=f"{name} active")
        else:
            line(axes[0, 1], [p.f_attn for p in probes], label=name)
        line(axes[1, 0], [p.value_drain for p in probes], label=name)
        line(axes[1, 1], [p.residual_peak for p in probes], label=name)
    for ax, title in panels:
        ax.set_title(title.format(eps=eps), fontsize=10)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    for ax in axes[1]:  # norm ratios: log scale when they span orders of magnitude
        ax.set_yscale(value_scale([y for line in ax.get_lines() for y in line.get_ydata()]))
        ax.set_xlabel("step")
    for ax in axes.ravel():
        plain_ticks(ax.yaxis)
    fig.tight_layout()
    fig.savefig(out_png, dpi=110)
    plt.close(fig)
    return Path(out_png)
