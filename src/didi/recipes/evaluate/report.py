"""The report of ``didi eval``: its rows (:class:`EvalRow`, one model or sample file at one budget), the Markdown
table with notes saying what every column measures (:func:`format_table`), the JSON (:func:`write_report`) and
the plot of gen-PPL and entropy against NFE (:func:`plot_report`).
"""
from __future__ import annotations

import dataclasses
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ...runtime.checkpoint import atomic_write, write_json
from .metrics import Likelihood, Perplexity


@dataclass
class EvalRow:
    """One line of the report: a model (or a sample file) at one sampling budget."""

    model: str
    kind: str
    sampler: str
    nfe: int | None  # requested budget; None for AR models (always seq_len - 1 calls)
    source: str  # run directory or sample file
    num_samples: int
    seq_len: int | None
    generated_tokens: int  # positions the sampler fills per sample (AR: seq_len - 1, BOS is given)
    nfe_per_batch: list[int]  # network calls counted by the sampler, per timed batch
    extra_calls: dict[str, list[int]]  # other networks' calls per timed batch (RGAS: discriminator)
    batch_sizes: list[int]  # of the timed batches
    latencies_s: list[float]  # wall-clock seconds of the timed batches
    timing: str  # how the latencies were obtained
    entropy: float | None = None
    gen_ppl: Perplexity | None = None
    likelihood: Likelihood | None = None
    peak_memory_mib: float | None = None
    speedup: float | None = None
    protein: dict[str, float] | None = None  # didi.data.protein.protein_metrics (+ plddt) of protein rows

    @property
    def nfe_made(self) -> float | None:
        return float(np.mean(self.nfe_per_batch)) if self.nfe_per_batch else None

    @property
    def latency_s(self) -> float | None:
        """Median latency of the full-size batches (a smaller remainder batch is not comparable)."""
        if not self.latencies_s:
            return None
        full = max(self.batch_sizes)
        return statistics.median(s for s, b in zip(self.latencies_s, self.batch_sizes) if b == full)

    @property
    def tokens_per_s(self) -> float | None:
        latency = self.latency_s
        if not latency or not self.generated_tokens:
            return None
        return max(self.batch_sizes) * self.generated_tokens / latency

    def to_json(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "nfe_made": self.nfe_made, "latency_s": self.latency_s,
                "tokens_per_s": self.tokens_per_s}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> EvalRow:
        """Inverse of :meth:`to_json` (derived fields are recomputed, not read)."""
        names = {f.name for f in dataclasses.fields(cls)}
        row = cls(**{k: v for k, v in data.items() if k in names})
        row.gen_ppl = Perplexity(**row.gen_ppl) if isinstance(row.gen_ppl, dict) else row.gen_ppl
        row.likelihood = Likelihood(**row.likelihood) if isinstance(row.likelihood, dict) else row.likelihood
        return row


@dataclass
class EvalReport:
    rows: list[EvalRow]
    meta: dict[str, Any]
    reference: str | None = None  # the row speed-ups are relative to

    def to_json(self) -> dict[str, Any]:
        return {"meta": self.meta, "reference": self.reference, "rows": [r.to_json() for r in self.rows]}


# ----------------------------------------------------------------------------------------------------------- table

def _fmt(value: float | None, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def _fmt_calls(calls: Sequence[int]) -> str:
    """Calls per batch: the exact count when every batch made the same number, else the mean."""
    if not calls:
        return "n/a"
    return str(calls[0]) if len(set(calls)) == 1 else f"{np.mean(calls):.1f}"


def _protein_cells(row: EvalRow, plddt: bool) -> list[str]:
    """length (mean ± std), AA-comp JS, distinct, low-complexity (and pLDDT) of a protein row."""
    m = row.protein
    if m is None:
        return ["n/a"] * (5 if plddt else 4)
    cells = [f"{m['length_mean']:.1f} ± {m['length_std']:.1f}", _fmt(m["composition_js"], ".4f"),
             f"{m['distinct_fraction']:.2f}", f"{m['low_complexity_fraction']:.2f}"]
    return cells + ([_fmt(m.get("plddt"), ".1f")] if plddt else [])


def format_table(report: EvalReport) -> str:
    """The report as a Markdown table followed by notes saying exactly what every column measures."""
    rows = report.rows
    extra_keys = sorted({k for r in rows for k in r.extra_calls})
    protein = any(r.protein for r in rows)
    plddt = any(r.protein and "plddt" in r.protein for r in rows)
    protein_header = ["length", "AA-comp JS", "distinct", "low-complexity", *(["pLDDT"] if plddt else [])]
    header = ["model", "kind", "sampler", "NFE", "NFE made", *(f"{k} calls" for k in extra_keys), "gen-PPL",
              "entropy", *(protein_header if protein else []), "likelihood", "latency/batch (s)", "tokens/s",
              "speed-up", "peak mem (MiB)"]
    lines = ["| " + " | ".join(header) + " |",
             "|" + "|".join("---" if i < 3 else "---:" for i in range(len(header))) + "|"]
    for r in rows:
        likelihood = "n/a" if r.likelihood is None else ("≤ " if r.likelihood.bound else "") + \
            f"{r.likelihood.ppl:.2f}"
        cells = [r.model, r.kind, r.sampler, "—" if r.nfe is None else str(r.nfe), _fmt_calls(r.nfe_per_batch),
                 *(_fmt_calls(r.extra_calls.get(k, [])) for k in extra_keys),
                 _fmt(r.gen_ppl.ppl if r.gen_ppl else None, ".2f"), _fmt(r.entropy, ".3f"),
                 *(_protein_cells(r, plddt) if protein else []), likelihood,
                 _fmt(r.latency_s, ".3f"), _fmt(r.tokens_per_s, ",.1f"),
                 _fmt(r.speedup, ".2f") + ("×" if r.speedup is not None else ""), _fmt(r.peak_memory_mib, ",.0f")]
        lines.append("| " + " | ".join(cells) + " |")
    meta, cfg = report.meta, report.meta["config"]
    evaluator = meta["evaluator"]
    lines.append("")
    if evaluator:
        lines.append(f"- gen-PPL: exp(Σ NLL / Σ scored tokens) over all samples of a row under {evaluator['name']} "
                     f"(fp32, context {evaluator['context_len']}), decoded text re-tokenised by its tokenizer; "
                     "scored: every non-EOS token and the first EOS of a sample, not the first token of a chunk.")
    else:
        lines.append("- gen-PPL: not computed (no --evaluator and no AR --model).")
    lines.append("- entropy: mean over samples of the unigram entropy (nats) of each sample's own token ids"
                 + ("; protein rows: of its residues (special tokens such as PAD excluded; at most ln 20 = 3.00)."
                    if protein else "."))
    if protein:
        natural = meta["protein_reference"]
        lines.append("- protein rows score the decoded sequences: the first run of residues of each sample (a sample "
                     "ends at its first EOS/PAD). length: residues, mean ± std; AA-comp JS: Jensen-Shannon "
                     "divergence (nats) between the pooled composition of the 20 standard residues and that of "
                     f"{natural['source']}; distinct: share of distinct sequences; low-complexity: share of "
                     "sequences more than half covered by SEG-style windows (12 residues, entropy <= 2.2 bits).")
        if natural["name"]:
            lines.append(f"- {natural['name']}: the first validation sequences (a seeded random choice, as many as "
                         "the largest row has samples), scored like samples: what a perfect model would reach.")
        if plddt:
            lines.append("- pLDDT: ESMFold's mean per-residue confidence (0-100), averaged over non-empty sequences.")
    if cfg["likelihood"] and cfg["models"]:
        lines.append(f"- likelihood: validation perplexity (AR) or its NELBO upper bound '≤' (diffusion, one "
                     f"antithetic time per block), over at most {cfg['eval_blocks']} validation blocks"
                     + (" (protein blocks: per position, PAD included)." if protein else "."))
    lines.append("- NFE made: network calls counted by the sampler per batch (the diffusion cache skips calls while "
                 "no token changed; AR: one call per generated token).")
    if "discriminator" in extra_keys:
        lines.append("- discriminator calls: RGAS discriminator forward passes per batch (one re-ranking pass over "
                     "all batch x candidates rows counts once); discriminator_backward: its gradient-tilting "
                     "backward passes. Neither is included in NFE.")
    if cfg["models"]:
        batch = min(cfg["batch_size"] or cfg["num_samples"], cfg["num_samples"])
        lines.append(f"- speed on {meta['device']}: latency = median over >= {cfg['repeats']} full batches of "
                     f"{batch} after {cfg['warmup']} warm-up batch(es), synchronised; tokens/s = generated tokens "
                     "per batch / latency; peak mem: CUDA only (weights + activations).")
    if report.reference:
        lines.append(f"- speed-up: tokens/s relative to {report.reference}.")
    if cfg["samples"]:
        lines.append("- rows from --samples files: timings as recorded by `didi sample` (no warm-up).")
    if cfg["models"]:
        lines.append(f"- {cfg['num_samples']} samples per sampled row, seed {cfg['seed']} (batch i: seed + i).")
    return "\n".join(lines)


def write_report(report: EvalReport, path: Path) -> None:
    write_json(Path(path), report.to_json())


# ------------------------------------------------------------------------------------------------------------ plot

def plot_report(report: EvalReport, path: Path) -> None:
    """gen-PPL (log scale) and entropy against the NFE budget (log2 axis): one curve per diffusion model (and
    sampler), each AR model a dashed horizontal reference line."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    curves: dict[str, list[EvalRow]] = {}
    references = [r for r in report.rows if r.nfe is None]  # AR models and the natural protein sequences
    samplers = {r.sampler for r in report.rows if r.nfe is not None}
    for r in report.rows:
        if r.nfe is not None:
            curves.setdefault(r.model if len(samplers) == 1 else f"{r.model} ({r.sampler})", []).append(r)
    fig = Figure(figsize=(11, 4.2), layout="constrained")
    ax_ppl, ax_ent = fig.subplots(1, 2)
    colors = iter(f"C{i % 10}" for i in range(len(curves) + len(references)))
    metrics = ((ax_ppl, lambda r: r.gen_ppl.ppl if r.gen_ppl else None), (ax_ent, lambda r: r.entropy))
    for label, rows in curves.items():
        color, rows = next(colors), sorted(rows, key=lambda r: r.nfe)
        for ax, metric in metrics:
            points = [(r.nfe, metric(r)) for r in rows if metric(r) is not None]
            if points:
                ax.plot(*zip(*points), "o-", color=color, label=label)
    for r in references:
        color = next(colors)
        for ax, metric in metrics:
            if metric(r) is not None:
                label = f"{r.model} (AR, {_fmt_calls(r.nfe_per_batch)} NFE)" if r.kind == "ar" else r.model
                ax.axhline(metric(r), linestyle="--", color=color, label=label)
    budgets = sorted({r.nfe for rows in curves.values() for r in rows})
    evaluator = report.meta.get("evaluator")
    for ax, ylabel in ((ax_ppl, f"gen-PPL ({Path(evaluator['name']).name if evaluator else 'no evaluator'})"),
                       (ax_ent, "sample entropy (nats)")):
        ax.set_xscale("log", base=2)
        if budgets:
            ax.set_xticks(budgets)
            ax.xaxis.set_major_formatter(ScalarFormatter())
            ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("NFE (sampling steps)")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    scale_value_axes(ax_ppl, ax_ent)
    fmt = Path(path).suffix.lstrip(".").lower()
    atomic_write(Path(path), lambda p: fig.savefig(p, format=fmt, dpi=120))


PPL_MIN_SPAN = 2.0
"""The gen-PPL axis spans at least this factor, so a change of a few percent does not fill the panel."""


def scale_value_axes(ax_ppl: Any, ax_ent: Any) -> None:
    """Scales that do not exaggerate small differences: gen-PPL on a log axis spanning at least
    :data:`PPL_MIN_SPAN` (centred on the data), entropy on a linear axis from 0 with its data range written in the
    panel (a 0.03 % change in entropy would otherwise look like a cliff)."""
    from matplotlib.ticker import LogFormatter

    def values(ax: Any) -> list[float]:
        return [float(y) for line in ax.get_lines() for y in line.get_ydata() if np.isfinite(float(y))]

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
