"""Reports of one or several analysed models side by side: JSON, a markdown summary and PNG plots.

``results`` maps a model label to the dict ``analyze_model`` returns; plots overlay one line per model,
and the summary has one column per model.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..reporting import MISSING, annotate_cells, heatmap_range, plain_ticks, pyplot, value_scale
from ..reporting import format_number as _fmt

PLOTS = ("first_token_share_heatmap.png", "per_layer.png", "gate_histograms.png", "attention_maps.png")


def _largest(r: dict) -> str:
    layer = max(range(r["num_layers"]), key=lambda i: r["max_abs_activation"][i])
    top = r["top_activations"][layer][0]
    return (f"{_fmt(top['abs'])} (layer {layer}, pos {top['position']}, ch {top['channel']}; "
            f"{_fmt(r['massive_activation_ratio'][layer])}x median)")


def _mean(values: list | None) -> float | None:
    return sum(values) / len(values) if values else None


SUMMARY_ROWS = [
    ("architecture", lambda r: f"{r['architecture']} ({r['num_layers']} layers x {r['num_heads']} heads)"),
    ("gate position", lambda r: r["gate_position"]),
    ("tokens analysed (x batch)", lambda r: f"{r['num_tokens']} x {r['batch_size']}"),
    ("F-Attn: first-token share, mean over layers and heads", lambda r: _fmt(r["f_attn"])),
    ("heads with first-token share > eps", lambda r: f"{100 * r['frac_heads_above_eps']:.1f}%"),
    ("attention entropy (nats), mean", lambda r: _fmt(_mean(r["entropy"]))),
    ("register-token share, mean", lambda r: _fmt(_mean(r.get("register_share")))),
    ("sink-slot share, mean", lambda r: _fmt(_mean(r.get("sink_peer_share")))),
    ("M-Act: mean over layers of max abs hidden", lambda r: _fmt(r["m_act"])),
    ("largest abs hidden", _largest),
    ("gate score mean", lambda r: _fmt(r.get("gate_mean"))),
    ("gate scores < 0.1", lambda r: _fmt(r.get("gate_frac_below_0_1"))),
    ("gate scores < 0.5", lambda r: _fmt(r.get("gate_frac_below_0_5"))),
    ("gate score on first token / rest", lambda r: f"{_fmt(_mean(r['gate_first_token_mean']))} / "
     f"{_fmt(_mean(r['gate_rest_mean']))}" if r.get("has_gate") else MISSING),
    ("SDPA output mean abs before / after gate", lambda r: f"{_fmt(_mean(r['attn_out_mean_abs']))} / "
     f"{_fmt(_mean(r['gated_out_mean_abs']))}" if "attn_out_mean_abs" in r else MISSING),
]


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *("| " + " | ".join(row) + " |" for row in rows)]


def _attention_layers(r: dict) -> list[int]:
    """The layers the attention statistics cover (a hybrid's full-attention layers; older results: all)."""
    return r.get("attention_layers", list(range(r["num_layers"])))


def _at_layer(r: dict, key: str, layer: int) -> str:
    if layer >= r["num_layers"]:
        return ""
    if key == "max_abs_activation":
        return _fmt(r[key][layer])
    layers = _attention_layers(r)
    return _fmt(r[key][layers.index(layer)]) if layer in layers else "linear"


def summary_markdown(results: dict[str, dict], source: str = "") -> str:
    names = list(results)
    first = next(iter(results.values()))
    lines = ["# Attention sinks, massive activations and gate scores", ""]
    if source:
        lines.append(f"Input: {source}.")
    where = "the first BOS token" if first["sink"] == "bos" else "position 0 (a BOS if one leads)"
    lines += [f"First token = {where}; "
              f"shares and entropies are means over the queries after it (its own row, share 1 without "
              f"registers or a sink slot, is left out); eps = {first['sink_eps']}.", ""]
    lines += _table(["metric", *names], [[label, *(fn(results[n]) for n in names)] for label, fn in SUMMARY_ROWS])
    depth = max(r["num_layers"] for r in results.values())
    for title, key in (("first-token share (mean over heads)", "first_token_share"),
                       ("max abs hidden after the block", "max_abs_activation")):
        rows = [[str(i), *(_at_layer(results[n], key, i) for n in names)] for i in range(depth)]
        lines += ["", f"## Per layer: {title}", "", *_table(["layer", *names], rows)]
    return "\n".join(lines) + "\n"


def _heatmaps(results: dict[str, dict], path: Path) -> None:
    plt = pyplot()
    from matplotlib.ticker import MaxNLocator

    fig, axes = plt.subplots(1, len(results), figsize=(2 + 3 * len(results), 5), squeeze=False,
                             layout="constrained")
    top, note = heatmap_range([r["first_token_share_per_head"] for r in results.values()])
    for ax, (name, r) in zip(axes[0], results.items()):
        im = ax.imshow(r["first_token_share_per_head"], aspect="auto", vmin=0, vmax=top, cmap="viridis",
                       interpolation="nearest")
        annotate_cells(ax, r["first_token_share_per_head"])
        ax.set(title=name, xlabel="head", ylabel="layer")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    fig.colorbar(im, ax=axes[0].tolist(), label="first-token attention share" + note)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _per_layer(results: dict[str, dict], path: Path) -> None:
    plt = pyplot()
    from matplotlib.ticker import MaxNLocator

    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 4.5))
    for name, r in results.items():
        a.plot(_attention_layers(r), r["first_token_share"], marker="o", ms=3, label=name)
        b.plot(r["max_abs_activation"], marker="o", ms=3, label=name)
    a.set(xlabel="layer", ylabel="first-token share (mean over heads)", ylim=(0, 1),
          title="attention sink per layer")
    peaks = [v for r in results.values() for v in r["max_abs_activation"]]
    b.set(xlabel="layer", ylabel="max |hidden| after the block", yscale=value_scale(peaks),
          title="massive activations")
    for ax in (a, b):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        plain_ticks(ax.yaxis)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _gate_histograms(results: dict[str, dict], path: Path) -> bool:
    plt = pyplot()
    gated = {n: r for n, r in results.items() if r.get("has_gate")}
    if not gated:
        return False
    fig, ax = plt.subplots(figsize=(7, 4.5))
    fractions = []
    for name, r in gated.items():
        h = r["gate_histogram"]
        total = max(sum(h["counts"]) + h["below"] + h["above"], 1)
        fractions.extend(c / total for c in h["counts"] if c)
        ax.stairs([c / total for c in h["counts"]], h["edges"], label=f"{name} (mean {_fmt(r['gate_mean'])})")
    ax.set(xlabel="gate score", ylabel="fraction of scores", yscale=value_scale(fractions),
           title="gate-score distribution")
    plain_ticks(ax.yaxis)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def _attention_maps(results: dict[str, dict], path: Path) -> bool:
    plt = pyplot()
    cols = max(len(r["attention_maps"]) for r in results.values())
    if not cols:
        return False
    fig, axes = plt.subplots(len(results), cols, figsize=(3 * cols + 1.5, 3 * len(results)), squeeze=False,
                             layout="constrained")
    from matplotlib.ticker import MaxNLocator

    top, note = heatmap_range([m for r in results.values() for m in r["attention_maps"].values()])
    for row, (name, r) in zip(axes, results.items()):
        for ax in row:
            ax.axis("off")
        for j, (ax, (layer, m)) in enumerate(zip(row, r["attention_maps"].items())):
            ax.axis("on")
            im = ax.imshow(m, vmin=0, vmax=top, cmap="magma", interpolation="nearest")
            ax.set(title=f"{name}: layer {layer}", xlabel="key", ylabel="query" if j == 0 else None)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    fig.colorbar(im, ax=axes.ravel().tolist(), label="attention (mean over heads)" + note)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def write_report(results: dict[str, dict], out_dir: str | Path, source: str = "",
                 inputs: dict | None = None) -> list[Path]:
    """Write analysis.json, summary.md and the PNGs into ``out_dir``; returns the paths written."""
    pyplot()  # fail before writing anything when matplotlib is missing
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = [out / "analysis.json", out / "summary.md"]
    written[0].write_text(json.dumps({"inputs": inputs or {}, "models": results}, indent=1))
    written[1].write_text(summary_markdown(results, source))
    heat, lines, gates, maps = (out / name for name in PLOTS)
    _heatmaps(results, heat)
    _per_layer(results, lines)
    written += [heat, lines]
    if _gate_histograms(results, gates):
        written.append(gates)
    if _attention_maps(results, maps):
        written.append(maps)
    return written
