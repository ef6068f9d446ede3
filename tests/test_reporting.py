"""The shared reporting pieces: the number formatter, the lazy matplotlib entry and the loss-curve plot."""

import math
import sys

import pytest

from gatedattn.errors import GatedAttnError, MissingExtraError
from gatedattn.reporting import LossCurves, format_number, plot_loss_curves, pyplot, smooth


@pytest.mark.parametrize("value, text", [
    (0.467, "0.467"), (0.04812, "0.0481"), (94.46, "94.5"), (123.456, "123"), (999.7, "1,000"),
    (1053.0, "1,053"), (1234567.8, "1,234,568"), (5, "5"), (12345, "12,345"), (-0.5, "-0.5"),
    (1.5e-5, "1.5e-05"), (None, "–"), (math.nan, "–"), (math.inf, "inf"), ("g1", "g1"), (True, "True"),
])
def test_format_number_default(value, text):
    assert format_number(value) == text


def test_format_number_options():
    assert format_number(135_004_000, si=True) == "135.00M"
    assert format_number(2.5e12, si=True) == "2.50T" and format_number(999, si=True) == "999"
    assert format_number(1234.5678, decimals=2) == "1,234.57" and format_number(87.25, decimals=1) == "87.2"
    assert format_number(0.123456, digits=5) == "0.12346" and format_number(12345.6, digits=5) == "12,346"
    assert format_number(None, missing="") == ""


def test_missing_matplotlib_is_one_line_naming_the_extra(monkeypatch):
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` now raises ImportError
    with pytest.raises(MissingExtraError) as info:
        pyplot()
    message = str(info.value)
    assert "\n" not in message and "matplotlib" in message and "gatedattn[train]" in message
    assert isinstance(info.value, GatedAttnError) and isinstance(info.value, ImportError)
    with pytest.raises(MissingExtraError):
        plot_loss_curves({"a": LossCurves([(1, 2.0)])}, "never.png")


def test_loss_curves_from_metrics_records_and_plot(tmp_path):
    records = [{"step": 1, "loss": 3.0, "tokens": 64}, {"step": 2, "loss": None, "tokens": 128},
               {"step": 2, "val_loss": 2.9, "val_ppl": 18.2}, {"step": 2, "event": "resume"},
               {"step": 3, "loss": 2.5, "tokens": 192}, {"step": 4, "val_loss": 2.4}]
    by_step = LossCurves.from_records(records)
    assert by_step.train == [(1, 3.0), (3, 2.5)] and by_step.val == [(2, 2.9), (4, 2.4)]
    by_tokens = LossCurves.from_records(records, x="tokens")
    assert by_tokens.train == [(64, 3.0), (192, 2.5)] and by_tokens.val == [(128, 2.9)]  # step 4 has no tokens
    assert LossCurves.from_dict(by_step.to_dict()) == by_step
    assert smooth([1.0, 2.0, 3.0], 0.5) == [1.0, 1.5, 2.25]
    for kwargs in ({}, {"smoothing": 0.1, "final_ppl": {"a": 18.2, "b": 17.0}}):
        path = plot_loss_curves({"a": by_step, "b": LossCurves()}, tmp_path / "curves.png", **kwargs)
        assert path.stat().st_size > 1000
        path.unlink()
