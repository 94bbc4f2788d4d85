"""`didi eval --plot` axes that do not exaggerate small differences (issue 17)."""
from __future__ import annotations

from matplotlib.figure import Figure

from didi.recipes.evaluate.plots import PPL_MIN_SPAN, scale_value_axes


def test_value_axes_do_not_magnify_small_differences():
    ax_ppl, ax_ent = Figure().subplots(1, 2)
    ax_ppl.plot([8, 16, 32], [100.0, 101.0, 100.5], "o-")
    ax_ent.plot([8, 16, 32], [5.6010, 5.6025, 5.6015], "o-")
    ax_ent.axhline(5.6030, linestyle="--")
    scale_value_axes(ax_ppl, ax_ent)
    assert ax_ppl.get_yscale() == "log"
    low, high = ax_ppl.get_ylim()
    assert high / low >= PPL_MIN_SPAN and low < 100.0 and high > 101.0
    assert ax_ent.get_ylim()[0] == 0.0 and ax_ent.get_ylim()[1] >= 5.603
    [note] = ax_ent.texts
    assert note.get_text() == "data range 5.601 to 5.603 nats (0.04% of the top)"
