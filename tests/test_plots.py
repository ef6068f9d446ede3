"""What the pictures show: integer layer ticks, plain tick labels, values in heatmap cells (or a fitted
colour scale, stated), the trained-context mark and the reconciled validation figures in the legend.

The figures are read back from ``Figure.savefig`` (patched to record them), so the production code draws
exactly as it does for users."""

import math

import pytest
import torch
from conftest import tiny_model

from gatedattn.reporting import format_number

pytest.importorskip("matplotlib")


@pytest.fixture
def saved_figures(monkeypatch):
    from matplotlib.figure import Figure

    figures = {}
    save = Figure.savefig

    def record(fig, path, *args, **kwargs):
        figures[str(path).rsplit("/", 1)[-1]] = fig
        return save(fig, path, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", record)
    return figures


def _tick_texts(axis) -> list[str]:
    axis.figure.canvas.draw()
    return [t.get_text() for t in axis.get_ticklabels() if t.get_text()]


def test_analysis_plots_integer_layers_plain_ticks_and_values_in_cells(tmp_path, saved_figures):
    from gatedattn.analysis import analyze_model, write_report

    model = tiny_model(**{"attention.gate.position": "g1"}, num_layers=3)
    record = analyze_model(model, torch.randint(0, 256, (1, 24)), progress=False, map_size=8)
    write_report({"a": record, "b": record}, tmp_path)
    per_layer = saved_figures["per_layer.png"]
    for ax in per_layer.axes:
        ticks = [t for t in ax.get_xticks() if 0 <= t <= 2]
        assert ticks == [0, 1, 2] or all(float(t).is_integer() for t in ticks), ticks
        assert all(text.lstrip("−-").replace(".", "").replace(",", "").isdigit() for text in _tick_texts(ax.yaxis))
    assert per_layer.axes[1].get_yscale() == "linear"  # a few-fold range needs no log scale
    heat = saved_figures["first_token_share_heatmap.png"]
    cells = [t.get_text() for t in heat.axes[0].texts]
    share = record["first_token_share_per_head"]
    assert cells == [format_number(v, 2) for row in share for v in row]
    for ax in heat.axes[:2]:
        assert all(float(t).is_integer() for t in ax.get_yticks() if 0 <= t <= 2)
    gate_ticks = _tick_texts(saved_figures["gate_histograms.png"].axes[0].yaxis)
    assert gate_ticks and not any("$" in text for text in gate_ticks), gate_ticks  # no mathtext powers of ten


def test_near_zero_shares_get_a_fitted_colour_scale_that_says_so():
    from gatedattn.reporting import heatmap_range

    assert heatmap_range([[[0.5, 0.01]], [[0.2]]]) == (1.0, "") and heatmap_range([[[0.1]]]) == (1.0, "")
    top, note = heatmap_range([[[0.004, 0.012]], [[0.003]]])
    assert top == 0.012 and note == "\n(colour scale 0 to 0.012: every value is near zero)"


def test_loss_legend_shows_the_last_validation_point_beside_the_final_whole_split_figure(tmp_path, saved_figures):
    from gatedattn.reporting import LossCurves, plot_loss_curves

    curves = {"none": LossCurves([(100, 5.0), (200, 4.5)], [(100, 4.9), (200, 4.41)]),
              "g1": LossCurves([(100, 4.8), (200, 4.4)], [(100, 4.7), (200, 4.3)])}
    plot_loss_curves(curves, tmp_path / "loss.png", final_ppl={"none": math.exp(4.45), "g1": math.exp(4.2)})
    ax = saved_figures["loss.png"].axes[0]
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "none validation in training (last 4.410)" in legend
    assert "none final, whole held-out split: 4.450 (ppl 85.63)" in legend
    assert "g1 final, whole held-out split: 4.200 (ppl 66.69)" in legend
    star = next(line for line in ax.get_lines() if line.get_label().startswith("none final"))
    assert list(star.get_xdata()) == [200] and star.get_ydata()[0] == pytest.approx(4.45)
