"""The plots of ``didi eval --plot`` (:func:`plot_report`): gen-PPL and entropy against the NFE budget, the
invalid-transition rate of Markov-language runs, and the temperature frontiers (gen-PPL against entropy), on scales
that do not exaggerate small differences (:func:`scale_value_axes`).
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ...runtime.checkpoint import atomic_write
from .report import EvalReport, EvalRow, frontier_axis
from .tables import fmt_calls

Metric = Callable[[EvalRow], "float | None"]


def plot_report(report: EvalReport, path: Path) -> None:
    """gen-PPL (log scale) and entropy against the NFE budget (log2 axis): one curve per diffusion model (and
    sampler, and temperature when several), each AR model and the held-out data a dashed horizontal reference line.
    Markov-language rows add a panel of the invalid-transition rate against NFE (and drop the gen-PPL panel when no
    row has a gen-PPL). With temperature sweeps a last panel draws the frontiers (:func:`_frontier_panel`)."""
    from matplotlib.figure import Figure

    unconditional = [r for r in report.rows if r.prefix_tokens is None]
    markov = any(r.markov for r in unconditional)
    ppl = not markov or any(r.value("gen_ppl") is not None for r in unconditional)
    panels = int(ppl) + 1 + int(markov) + int(bool(report.frontiers))
    fig = Figure(figsize=(5.5 * panels, 4.6), layout="constrained")
    axes = list(fig.subplots(1, panels))
    ax_ppl = axes.pop(0) if ppl else None
    ax_ent = axes.pop(0)
    ax_invalid = axes.pop(0) if markov else None
    evaluator = report.meta.get("evaluator")
    ppl_label = f"gen-PPL ({Path(evaluator['name']).name if evaluator else 'no evaluator'})"
    metrics: list[tuple[Any, Metric, str]] = [
        *([(ax_ppl, lambda r: r.value("gen_ppl"), ppl_label)] if ppl else []),
        (ax_ent, lambda r: r.value("entropy"), "sample entropy (nats)"),
        *([(ax_invalid, _invalid_percent, "invalid transitions (%)")] if markov else [])]
    label = _curve_labeller(unconditional)
    _nfe_panels(unconditional, metrics, label)
    if markov:
        ax_invalid.set_ylim(bottom=0.0)
    if report.frontiers:
        _frontier_panel(axes[0], report, ppl_label)
    scale_value_axes(ax_ppl, ax_ent)
    fmt = Path(path).suffix.lstrip(".").lower()
    atomic_write(Path(path), lambda p: fig.savefig(p, format=fmt, dpi=120))


def _invalid_percent(row: EvalRow) -> float | None:
    value = row.value("invalid_rate")
    return None if value is None else 100 * value


def _curve_labeller(rows: list[EvalRow]) -> Callable[[EvalRow], str]:
    """A row's curve name: the model, with its sampler when several are plotted, and its temperature when
    several."""
    samplers = {r.sampler for r in rows if r.nfe is not None}
    several_t = len({r.temperature for r in rows if r.temperature is not None}) > 1

    def label(r: EvalRow) -> str:
        name = r.model if len(samplers) == 1 else f"{r.model} ({r.sampler})"
        return f"{name}, T {r.temperature:g}" if several_t and r.temperature is not None else name

    return label


def _nfe_panels(rows: list[EvalRow], metrics: list[tuple[Any, Metric, str]], label: Callable[[EvalRow], str]
                ) -> None:
    """Each metric against NFE on its axis: a curve per diffusion model (label), a dashed line per reference."""
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    curves: dict[str, list[EvalRow]] = {}
    for r in rows:
        if r.nfe is not None:
            curves.setdefault(label(r), []).append(r)
    references = [r for r in rows if r.nfe is None]  # AR models and the held-out data
    colors = iter(f"C{i % 10}" for i in range(len(curves) + len(references)))
    for name, members in curves.items():
        color, members = next(colors), sorted(members, key=lambda r: r.nfe)
        for ax, metric, _ in metrics:
            points = [(r.nfe, metric(r)) for r in members if metric(r) is not None]
            if points:
                ax.plot(*zip(*points), "o-", color=color, label=name)
    for r in references:
        color = next(colors)
        for ax, metric, _ in metrics:
            if metric(r) is not None:
                name = f"{label(r)} (AR, {fmt_calls(r.nfe_per_batch)} NFE)" if r.kind == "ar" else r.model
                ax.axhline(metric(r), linestyle="--", color=color, label=name)
    budgets = sorted({r.nfe for members in curves.values() for r in members})
    for ax, _, ylabel in metrics:
        ax.set_xscale("log", base=2)
        if budgets:
            ax.set_xticks(budgets)
            ax.xaxis.set_major_formatter(ScalarFormatter())
            ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("NFE (sampling steps)")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)


def _frontier_panel(ax: Any, report: EvalReport, ppl_label: str) -> None:
    """The temperature frontiers: gen-PPL (log; without gen-PPL: the invalid rate) against the frontiers' entropy
    axis, one curve per model x NFE (T rises along each), the target entropy a vertical line, the matched values
    open circles and the data row a star."""
    from matplotlib import colormaps
    from matplotlib.ticker import LogFormatter

    frontiers = report.frontiers
    axis = frontier_axis(frontiers[0])
    y_metric = "gen_ppl" if all(f["points"][0].get("gen_ppl") is not None for f in frontiers) else "invalid_rate"
    y_scale = 1.0 if y_metric == "gen_ppl" else 100.0
    maps = ["Blues", "Oranges", "Greens", "Purples", "Reds", "Greys"]
    models = list(dict.fromkeys((f["model"], f["sampler"]) for f in frontiers))
    samplers = {r.sampler for r in report.rows if r.prefix_tokens is None and r.nfe is not None}
    for f in frontiers:
        members = [g for g in frontiers if (g["model"], g["sampler"]) == (f["model"], f["sampler"])]
        rank = members.index(f)
        cmap = colormaps[maps[models.index((f["model"], f["sampler"])) % len(maps)]]
        color = cmap(0.45 + 0.5 * rank / max(1, len(members) - 1))
        name = f["model"] if len(samplers) <= 1 else f"{f['model']} ({f['sampler']})"
        name += "" if f["nfe"] is None else f" @ {f['nfe']}"
        points = [p for p in f["points"] if p.get(y_metric) is not None]
        xs, ys = [p[axis] for p in points], [p[y_metric] * y_scale for p in points]
        ax.plot(xs, ys, "o-" if f["kind"] != "ar" else "s--", color=color, label=name, markersize=4)
        if f.get(y_metric) is not None:
            ax.plot([f["target_entropy"]], [f[y_metric] * y_scale], "o", markerfacecolor="none", color=color,
                    markersize=9)
    target = report.target_entropy
    if target is not None:
        ax.axvline(target["value"], color="k", linestyle=":", label=f"target entropy {target['value']:.3f}")
    for r in report.rows:
        if r.kind == "data" and r.value(axis) is not None and r.value(y_metric) is not None:
            ax.plot([r.value(axis)], [r.value(y_metric) * y_scale], "k*", markersize=11, label=r.model)
    ax.set_xlabel("sample entropy (nats)" if axis == "entropy" else "H(X'|X) of the samples (nats)")
    ax.set_ylabel(ppl_label if y_metric == "gen_ppl" else "invalid transitions (%)")
    ax.set_title("temperature sweeps (T rises along each curve)", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    if y_metric == "gen_ppl":
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(LogFormatter(labelOnlyBase=False))
        ax.yaxis.set_minor_formatter(LogFormatter(labelOnlyBase=False, minor_thresholds=(1, 0.5)))


PPL_MIN_SPAN = 2.0
"""The gen-PPL axis spans at least this factor, so a change of a few percent does not fill the panel."""


def scale_value_axes(ax_ppl: Any | None, ax_ent: Any) -> None:
    """Scales that do not exaggerate small differences: gen-PPL on a log axis spanning at least
    :data:`PPL_MIN_SPAN` (centred on the data), entropy on a linear axis from 0 with its data range written in the
    panel (a 0.03 % change in entropy would otherwise look like a cliff). ``ax_ppl`` None: no gen-PPL panel."""
    from matplotlib.ticker import LogFormatter

    def values(ax: Any) -> list[float]:
        return [float(y) for line in ax.get_lines() for y in line.get_ydata() if np.isfinite(float(y))]

    if ax_ppl is not None:
        ax_ppl.set_yscale("log")
        ax_ppl.yaxis.set_major_formatter(LogFormatter(labelOnlyBase=False))
        ax_ppl.yaxis.set_minor_formatter(LogFormatter(labelOnlyBase=False, minor_thresholds=(1, 0.5)))
        ppl = [v for v in values(ax_ppl) if v > 0]
        if ppl:
            lo, hi = min(ppl), max(ppl)
            if hi / lo < PPL_MIN_SPAN:
                centre = float(np.sqrt(lo * hi))
                lo, hi = centre / float(np.sqrt(PPL_MIN_SPAN)), centre * float(np.sqrt(PPL_MIN_SPAN))
            ax_ppl.set_ylim(lo / 1.05, hi * 1.05)
    entropy = values(ax_ent)
    if entropy:
        lo, hi = min(entropy), max(entropy)
        ax_ent.set_ylim(min(0.0, lo), max(hi, 1e-9) * 1.1)
        spread = f" ({(hi - lo) / abs(hi):.2%} of the top)" if hi else ""
        ax_ent.text(0.02, 0.03, f"data range {lo:.4g} to {hi:.4g} nats{spread}", transform=ax_ent.transAxes,
                    fontsize=8, color="0.3")
