"""The report of ``didi eval``: its rows (:class:`EvalRow`, one model or sample file at one budget and temperature,
or a reference: held-out data), the gen-PPL/entropy frontiers of temperature sweeps (:func:`compute_frontiers`; on
the sample entropy, or on the conditional entropy ``H(X'|X)`` of Markov-language runs) and the JSON
(:func:`write_report`), from which everything else is regenerated: the Markdown tables
(:func:`~.tables.format_table`) and the plots (:func:`~.plots.plot_report`).
"""
from __future__ import annotations

import dataclasses
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ...runtime.checkpoint import write_json
from .markov import MARKOV_METRICS
from .metrics import Likelihood, Perplexity, interpolate_at


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
    prefix_tokens: int | None = None  # conditional rows (didi eval --prefix-tokens): held-out prefix length
    entropy: float | None = None
    gen_ppl: Perplexity | None = None
    likelihood: Likelihood | None = None
    peak_memory_mib: float | None = None
    speedup: float | None = None
    protein: dict[str, float] | None = None  # didi.data.protein.protein_metrics (+ plddt) of protein rows
    markov: dict[str, float] | None = None  # Markov-language runs: MARKOV_METRICS (means over seeds), the chain's
    # entropy rate and the transitions counted (all seeds)
    temperature: float | None = 1.0  # sampling temperature (None: not sampled, e.g. held-out data)
    seeds: list[int] = field(default_factory=list)  # sampling seeds (one set of samples each)
    per_seed: list[dict[str, Any]] = field(default_factory=list)  # {seed, gen_ppl, entropy, mauve (+ markov)}
    spread: dict[str, dict[str, Any]] = field(default_factory=dict)  # metric -> {mean, std | low, high, method}
    mauve: float | None = None  # mean over seeds of MAUVE against held-out text
    sample_entropy: list[float] = field(default_factory=list)  # per sample, all seeds (bootstrap intervals)
    evaluators: dict[str, dict[str, Any]] = field(default_factory=dict)  # several evaluators: name -> {gen_ppl:
    # Perplexity pooled over seeds, spread: {gen_ppl, gen_ppl_median, gen_ppl_trimmed}}, the first one included

    def value(self, metric: str, evaluator: str | None = None) -> float | None:
        """The row's number for ``gen_ppl``, ``entropy``, ``mauve``, one of :data:`~.markov.MARKOV_METRICS`, of
        :data:`~.quality.QUALITY_METRICS` or of :data:`~.quality.PPL_METRICS` (under ``evaluator``, by name, when
        given): the mean over seeds (one seed: its value)."""
        if evaluator is not None:
            return self.evaluators.get(evaluator, {}).get("spread", {}).get(metric, {}).get("mean")
        if metric in self.spread:
            return self.spread[metric]["mean"]
        if metric == "gen_ppl":
            return self.gen_ppl.ppl if self.gen_ppl else None
        if metric in MARKOV_METRICS:
            return None if self.markov is None else self.markov.get(metric)
        return getattr(self, metric, None)

    @property
    def latency_per_sample_s(self) -> float | None:
        """Median full-batch latency divided by the batch size."""
        latency = self.latency_s
        return None if latency is None else latency / max(self.batch_sizes)

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
                "latency_per_sample_s": self.latency_per_sample_s, "tokens_per_s": self.tokens_per_s}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> EvalRow:
        """Inverse of :meth:`to_json` (derived fields are recomputed, not read)."""
        names = {f.name for f in dataclasses.fields(cls)}
        row = cls(**{k: v for k, v in data.items() if k in names})
        row.gen_ppl = Perplexity(**row.gen_ppl) if isinstance(row.gen_ppl, dict) else row.gen_ppl
        row.likelihood = Likelihood(**row.likelihood) if isinstance(row.likelihood, dict) else row.likelihood
        row.evaluators = {name: {**scores, "gen_ppl": Perplexity(**scores["gen_ppl"])
                                 if isinstance(scores["gen_ppl"], dict) else scores["gen_ppl"]}
                          for name, scores in row.evaluators.items()}  # new dicts: ``data`` is left as it was
        return row


@dataclass
class EvalReport:
    rows: list[EvalRow]
    meta: dict[str, Any]
    reference: str | None = None  # the row speed-ups are relative to
    target_entropy: dict[str, Any] | None = None  # {value, source}: where the frontiers are read
    frontiers: list[dict[str, Any]] = field(default_factory=list)  # compute_frontiers

    def to_json(self) -> dict[str, Any]:
        return {"meta": self.meta, "reference": self.reference, "target_entropy": self.target_entropy,
                "frontiers": self.frontiers, "rows": [r.to_json() for r in self.rows]}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> EvalReport:
        return cls(rows=[EvalRow.from_json(r) for r in data["rows"]], meta=data.get("meta", {}),
                   reference=data.get("reference"), target_entropy=data.get("target_entropy"),
                   frontiers=data.get("frontiers") or [])


# ------------------------------------------------------------------------------------------------------- frontiers

def curve_key(row: EvalRow) -> tuple[str, str, str, int | None]:
    """Rows on one frontier: the same model (or file), sampler and budget, at different temperatures."""
    return row.model, row.kind, row.sampler, row.nfe


COND_ENTROPY = "H(X'\\|X)"
"""``H(X'|X)`` in a Markdown table cell (an unescaped ``|`` would end the cell)."""

FRONTIER_AXES = {"entropy": "entropy", "conditional_entropy": COND_ENTROPY}
"""The entropy axes of the frontiers (as table headers): the sample entropy, or (Markov-language runs) the
empirical ``H(X'|X)``."""

FRONTIER_METRICS = (("gen_ppl", True), ("invalid_rate", False), ("nll_per_transition", False))
"""What the frontiers read at the target entropy, and whether on a log scale (gen-PPL) or a linear one."""


def frontier_axis(frontier: dict[str, Any]) -> str:
    """The entropy axis of a frontier (``entropy`` in reports written before there was a choice)."""
    return frontier.get("axis", "entropy")


def compute_frontiers(rows: Sequence[EvalRow], target: float | None, axis: str = "entropy") -> list[dict[str, Any]]:
    """Per model x NFE with rows at two or more temperatures: its points (temperature, entropy, gen-PPL, and for
    Markov-language runs ``H(X'|X)``, invalid rate and NLL/transition) by temperature and its values at the
    ``target`` on the entropy ``axis`` (:data:`FRONTIER_AXES`; :func:`~.metrics.interpolate_at` between the two
    bracketing temperatures: ``log gen-PPL`` linear in entropy, the Markov metrics linear; ``None`` when not
    reached, or not measured). Every value is the rows' mean over seeds. Unconditional rows only (conditional rows,
    ``prefix_tokens``, are not swept)."""
    if axis not in FRONTIER_AXES:
        raise ValueError(f"axis must be one of {', '.join(FRONTIER_AXES)} (got {axis!r})")
    curves: dict[tuple, list[EvalRow]] = {}
    for row in rows:
        if (row.prefix_tokens is None and row.temperature is not None and row.value(axis) is not None
                and any(row.value(m) is not None for m, _ in FRONTIER_METRICS)):
            curves.setdefault(curve_key(row), []).append(row)
    out = []
    for (model, kind, sampler, nfe), members in curves.items():
        members = sorted(members, key=lambda r: r.temperature)
        if len({r.temperature for r in members}) < 2:
            continue
        measured = [m for m, _ in FRONTIER_METRICS if all(r.value(m) is not None for r in members)]
        if not measured:
            continue
        keys = ["entropy", *(["conditional_entropy"] if axis == "conditional_entropy" or
                             any(r.markov for r in members) else []), *measured]
        points = [{"temperature": r.temperature, **{k: r.value(k) for k in keys}} for r in members]
        xs = [p[axis] for p in points]
        frontier: dict[str, Any] = {"model": model, "kind": kind, "sampler": sampler, "nfe": nfe, "axis": axis,
                                    "points": points, "target_entropy": target}
        bracket = None
        for metric, log_y in FRONTIER_METRICS:
            if metric not in measured:
                if metric == "gen_ppl":
                    frontier[metric] = None
                continue
            matched = None if target is None else interpolate_at(xs, [p[metric] for p in points], target,
                                                                 log_y=log_y)
            frontier[metric] = None if matched is None else matched[0]
            if matched is not None:
                bracket = [points[matched[1]]["temperature"], points[matched[1] + 1]["temperature"]]
        frontier["bracket"] = bracket
        out.append(frontier)
    return out


def frontier_of(report: EvalReport, row: EvalRow) -> dict[str, Any] | None:
    """The frontier the row lies on, if any."""
    key = curve_key(row)
    return next((f for f in report.frontiers if (f["model"], f["kind"], f["sampler"], f["nfe"]) == key), None)


def write_report(report: EvalReport, path: Path) -> None:
    write_json(Path(path), report.to_json())
