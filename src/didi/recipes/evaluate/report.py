"""The report of ``didi eval``: its rows (:class:`EvalRow`, one model or sample file at one budget and temperature,
or a reference: held-out data), the gen-PPL/entropy frontiers of temperature sweeps (:func:`compute_frontiers`; on
the sample entropy, or on the conditional entropy ``H(X'|X)`` of Markov-language runs),
the Markdown tables with notes saying what every column measures (:func:`format_table`), the JSON
(:func:`write_report`, from which everything else can be regenerated) and the plots of gen-PPL and entropy against
NFE and of gen-PPL against entropy (:func:`plot_report`).
"""
from __future__ import annotations

import dataclasses
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ...runtime.checkpoint import atomic_write, write_json
from .metrics import MARKOV_METRICS, Likelihood, Perplexity, interpolate_at


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

    def value(self, metric: str) -> float | None:
        """The row's number for ``gen_ppl``, ``entropy``, ``mauve`` or one of :data:`~.metrics.MARKOV_METRICS`: the
        mean over seeds (one seed: its value)."""
        if metric in self.spread:
            return self.spread[metric]["mean"]
        if metric == "gen_ppl":
            return self.gen_ppl.ppl if self.gen_ppl else None
        if metric in MARKOV_METRICS:
            return None if self.markov is None else self.markov.get(metric)
        return getattr(self, metric)

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


def fmt_spread(row: EvalRow, metric: str, spec: str, scale: float = 1.0) -> str:
    """``mean ± std`` over seeds, ``value [low, high]`` (bootstrap 95% interval over samples, one seed), or the
    bare value; every number times ``scale`` (100: a rate in percent)."""
    value = row.value(metric)
    if value is None:
        return "n/a"
    spread = row.spread.get(metric, {})
    text = format(value * scale, spec)
    if spread.get("std") is not None:
        return f"{text} ± {format(spread['std'] * scale, spec)}"
    if spread.get("low") is not None:
        return f"{text} [{format(spread['low'] * scale, spec)}, {format(spread['high'] * scale, spec)}]"
    return text


MARKOV_COLUMNS = (("invalid %", "invalid_rate", ".3f", 100.0), ("NLL/transition", "nll_per_transition", ".4f", 1.0),
                  (COND_ENTROPY, "conditional_entropy", ".4f", 1.0))
"""The table columns of the exact Markov-language metrics: header, metric, format, scale."""


def markov_cells(row: EvalRow) -> list[str]:
    """invalid %, NLL/transition and H(X'|X) of a row, with their spreads (n/a for rows of other corpora)."""
    return [fmt_spread(row, metric, spec, scale) for _, metric, spec, scale in MARKOV_COLUMNS]


def chain_rates(rows: Sequence[EvalRow]) -> list[float]:
    """The distinct entropy rates of the Markov chains the rows were scored against."""
    return sorted({r.markov["chain_entropy_rate"] for r in rows if r.markov})


def markov_note(rows: Sequence[EvalRow]) -> str:
    """What the Markov columns measure, and the chain's entropy rate."""
    rates = " / ".join(f"{rate:.4f}" for rate in chain_rates(rows))
    return ("- invalid %, NLL/transition, H(X'|X): exact metrics of the Markov language the model was trained on "
            "(markov.json in its run directory), over the letter-to-letter transitions of the decoded samples (the "
            "end-of-text token, [MASK] and any other non-letter break a sample into runs): the share of transitions "
            "the chain gives probability 0; the mean -log T(a, b) over the valid ones (nats); the empirical "
            "conditional entropy H(X'|X) of the transition counts pooled over a seed's samples (nats). The chain's "
            f"entropy rate is {rates} nats: a perfect sampler has 0 invalid transitions and approaches it in both "
            "NLL/transition and H(X'|X). A single seed's H(X'|X) has no bootstrap interval (a plug-in entropy is "
            "biased low under resampling).")


def _fmt_temperature(t: float | None) -> str:
    return "—" if t is None else f"{t:g}"


def speed_batch(report: EvalReport) -> int | None:
    """The full-batch size of the row speed-ups are relative to (every speed-up is measured at it)."""
    ref = next((r for r in report.rows if _row_label(r) == report.reference), None)
    return max(ref.batch_sizes) if ref is not None and ref.batch_sizes else None


def _row_label(row: EvalRow) -> str:
    return row.model if row.nfe is None else f"{row.model} @ {row.nfe} NFE"


def _matched_cell(frontier: dict[str, Any], metric: str, spec: str, scale: float = 1.0) -> str:
    """A frontier's value at the target: "not reached" when no two temperatures bracket it, n/a if not measured."""
    if frontier.get("bracket") is None:
        return "not reached"
    value = frontier.get(metric)
    return "n/a" if value is None else format(value * scale, spec)


def frontier_table(report: EvalReport) -> list[str]:
    """The matched-entropy table: per model x NFE, gen-PPL (and for Markov-language runs the invalid rate and NLL
    per transition) at the target entropy, and where it was read."""
    target = report.target_entropy
    if not report.frontiers or target is None:
        return []
    axis = frontier_axis(report.frontiers[0])
    at = f"{FRONTIER_AXES[axis]} {target['value']:.3f}"
    ppl = axis == "entropy" or any(p.get("gen_ppl") is not None for f in report.frontiers for p in f["points"])
    markov = any("invalid_rate" in f for f in report.frontiers)
    columns = [*([(f"gen-PPL @ {at}", "gen_ppl", ".2f", 1.0)] if ppl else []),
               *([(f"invalid % @ {at}", "invalid_rate", ".3f", 100.0),
                  (f"NLL/transition @ {at}", "nll_per_transition", ".4f", 1.0)] if markov else [])]
    lines = ["| model | kind | sampler | NFE | " + " | ".join(c[0] for c in columns) + " | between T | "
             f"{FRONTIER_AXES[axis]} over the sweep |", "|---|---|---|---:|" + "---:|" * len(columns) + "---:|---|"]
    for f in report.frontiers:
        points = f["points"]
        matched = " | ".join(_matched_cell(f, metric, spec, scale) for _, metric, spec, scale in columns)
        bracket = "—" if f["bracket"] is None else f"{f['bracket'][0]:g}–{f['bracket'][1]:g}"
        sweep = ", ".join(f"{p[axis]:.3f} (T {p['temperature']:g})" for p in points)
        lines.append(f"| {f['model']} | {f['kind']} | {f['sampler']} | {'—' if f['nfe'] is None else f['nfe']} | "
                     f"{matched} | {bracket} | {sweep} |")
    return lines


def format_table(report: EvalReport) -> str:
    """The report as a Markdown table (and the matched-entropy table of temperature sweeps) followed by notes
    saying exactly what every column measures; then the conditional rows' table (:func:`conditional_table`)."""
    rows = [r for r in report.rows if r.prefix_tokens is None]  # conditional rows: conditional_table
    if not rows:
        return conditional_table(report)
    extra_keys = sorted({k for r in rows for k in r.extra_calls})
    protein = any(r.protein for r in rows)
    plddt = any(r.protein and "plddt" in r.protein for r in rows)
    show_t = any(r.temperature not in (None, 1.0) for r in rows)
    show_mauve = any(r.mauve is not None for r in rows)
    markov = any(r.markov for r in rows)
    batch = speed_batch(report)
    protein_header = ["length", "AA-comp JS", "distinct", "low-complexity", *(["pLDDT"] if plddt else [])]
    header = ["model", "kind", "sampler", "NFE", "NFE made", *(f"{k} calls" for k in extra_keys),
              *(["T"] if show_t else []), "gen-PPL", "entropy", *(["MAUVE"] if show_mauve else []),
              *([c[0] for c in MARKOV_COLUMNS] if markov else []), *(protein_header if protein else []),
              "likelihood", "latency/batch (s)", "tokens/s",
              f"speed-up (tokens/s, batch {batch})" if batch else "speed-up", "peak mem (MiB)"]
    lines = ["| " + " | ".join(header) + " |",
             "|" + "|".join("---" if i < 3 else "---:" for i in range(len(header))) + "|"]
    for r in rows:
        likelihood = "n/a" if r.likelihood is None else ("≤ " if r.likelihood.bound else "") + \
            f"{r.likelihood.ppl:.2f}"
        cells = [r.model, r.kind, r.sampler, "—" if r.nfe is None else str(r.nfe), _fmt_calls(r.nfe_per_batch),
                 *(_fmt_calls(r.extra_calls.get(k, [])) for k in extra_keys),
                 *([_fmt_temperature(r.temperature)] if show_t else []),
                 fmt_spread(r, "gen_ppl", ".2f"), fmt_spread(r, "entropy", ".3f"),
                 *([fmt_spread(r, "mauve", ".3f")] if show_mauve else []),
                 *(markov_cells(r) if markov else []), *(_protein_cells(r, plddt) if protein else []), likelihood,
                 _fmt(r.latency_s, ".3f"), _fmt(r.tokens_per_s, ",.1f"),
                 _fmt(r.speedup, ".2f") + ("×" if r.speedup is not None else ""), _fmt(r.peak_memory_mib, ",.0f")]
        lines.append("| " + " | ".join(cells) + " |")
    frontier = frontier_table(report)
    if frontier:
        lines += ["", *frontier]
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
    seeds = cfg.get("seeds") or [cfg.get("seed", 0)]
    if len(seeds) > 1:
        lines.append(f"- spread: mean ± standard deviation (ddof 1) over seeds {', '.join(map(str, seeds))}, each "
                     "seed a full set of samples (gen-PPL: the mean of the seeds' corpus gen-PPLs).")
    elif any(r.spread for r in rows):
        lines.append(f"- spread: one seed; [low, high] is a percentile bootstrap 95% interval over samples "
                     f"({cfg.get('bootstrap', 1000)} resamples).")
    if show_t or any(r.temperature is not None for r in rows):
        controls = [f"top-k {cfg['top_k']}" if cfg.get("top_k") else "",
                    f"top-p {cfg['top_p']}" if cfg.get("top_p", 1.0) < 1.0 else "",
                    "greedy last step" if cfg.get("greedy_tail") else ""]
        controls = [c for c in controls if c]
        lines.append("- T: sampling temperature, draws from softmax(logits / T)" +
                     (f"; every draw also uses {', '.join(controls)}." if controls else
                      " (no truncation)." if show_t else "; every row at T = 1, no truncation."))
    if markov:
        lines.append(markov_note(rows))
    if show_mauve:
        mauve = meta.get("mauve") or {}
        lines.append(f"- MAUVE (mauve-text, its defaults) of each row's samples against {mauve.get('reference', '?')}, "
                     f"on features of {mauve.get('features', '?')}; 1 = indistinguishable.")
    heldout = meta.get("heldout")
    if heldout and any(r.kind == "data" for r in rows):
        lines.append(f"- {heldout['name']}: {heldout['row']}, decoded and scored like samples: what a perfect "
                     "model would reach." + ("" if heldout.get("disjoint", True) or not show_mauve else
                                             " Its MAUVE is not reported: too few held-out sequences for a second, "
                                             "disjoint reference set."))
    if report.frontiers and report.target_entropy:
        t = report.target_entropy
        axis = frontier_axis(report.frontiers[0])
        if axis == "entropy":
            lines.append(f"- gen-PPL @ entropy {t['value']:.3f}: the target is {t['source']}; log gen-PPL is "
                         "interpolated linearly in entropy between the two temperatures whose rows bracket it (first "
                         "such pair by temperature; row means over seeds); 'not reached': no two temperatures "
                         "bracket it, nothing is extrapolated.")
        else:
            lines.append(f"- @ H(X'|X) {t['value']:.3f}: the target is {t['source']}; between the two temperatures "
                         "whose rows bracket it on the conditional-entropy axis (first such pair by temperature; row "
                         "means over seeds) log gen-PPL, the invalid rate and NLL/transition are interpolated "
                         "linearly; 'not reached': no two temperatures bracket it, nothing is extrapolated.")
        if axis == "entropy" and any("invalid_rate" in f for f in report.frontiers):
            lines.append("- invalid % and NLL/transition @ entropy: interpolated linearly in entropy between the same "
                         "two temperatures.")
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
        batch_cfg = min(cfg["batch_size"] or cfg["num_samples"], cfg["num_samples"])
        lines.append(f"- speed on {meta['device']}: latency = median over >= {cfg['repeats']} full batches of "
                     f"{batch_cfg} after {cfg['warmup']} warm-up batch(es), synchronised; tokens/s = generated tokens "
                     "per batch / latency; peak mem: CUDA only (weights + activations).")
    if report.reference:
        lines.append(f"- speed-up: tokens/s relative to {report.reference}, every row timed at full batches of "
                     f"{batch} samples (rows timed at another batch size: n/a).")
    if cfg["samples"]:
        lines.append("- rows from --samples files: timings as recorded by `didi sample` (no warm-up).")
    if cfg["models"]:
        lines.append(f"- {cfg['num_samples']} samples per sampled row and seed, seed(s) {', '.join(map(str, seeds))} "
                     f"(batch i of seed s: s + i{' x ' + str(max(seeds) - min(seeds) + 1) if len(seeds) > 1 else ''}).")
    conditional = conditional_table(report)
    return "\n".join(lines) + ("\n\n" + conditional if conditional else "")


def conditional_table(report: EvalReport) -> str:
    """The conditional rows (``didi eval --prefix-tokens P``, :mod:`.conditional`) as a Markdown table with notes;
    ``""`` if there are none."""
    rows = [r for r in report.rows if r.prefix_tokens is not None]
    if not rows:
        return ""
    p = rows[0].prefix_tokens
    header = ["model", "kind", "sampler", "NFE", "NFE made", "gen-PPL given prefix", "entropy", "continued tokens",
              "latency/batch (s)"]
    lines = [f"Conditional generation: continuations of {p}-token held-out prefixes", "",
             "| " + " | ".join(header) + " |",
             "|" + "|".join("---" if i < 3 else "---:" for i in range(len(header))) + "|"]
    for r in rows:
        lines.append("| " + " | ".join([
            r.model, r.kind, r.sampler, "—" if r.nfe is None else str(r.nfe), _fmt_calls(r.nfe_per_batch),
            _fmt(r.gen_ppl.ppl if r.gen_ppl else None, ".2f"), _fmt(r.entropy, ".3f"), str(r.generated_tokens),
            _fmt(r.latency_s, ".3f")]) + " |")
    evaluator = report.meta.get("evaluator")
    lines += ["", f"- prefixes: [BOS] and the first {p} tokens of {rows[0].num_samples} validation blocks of each "
                  "model's corpus, evenly spaced over the split (the same text for models sharing corpus, tokenizer "
                  "and length); diffusion models keep them fixed and fill the rest of the sequence at each NFE, AR "
                  "models continue them token by token.",
              "- gen-PPL given prefix: " + (
                  f"exp(Σ NLL / Σ scored tokens) of the continuations under {evaluator['name']}, each scored after "
                  "its prefix (prefix and continuation re-tokenised separately; scored: every non-EOS continuation "
                  "token and its first EOS)." if evaluator else "not computed (no --evaluator and no AR --model)."),
              "- entropy: mean over samples of the unigram entropy (nats) of the continuation's own token ids."]
    cfg = report.meta.get("config") or {}
    controls = [f"T {rows[0].temperature:g}" if rows[0].temperature not in (None, 1.0) else "",
                f"top-k {cfg['top_k']}" if cfg.get("top_k") else "",
                f"top-p {cfg['top_p']}" if cfg.get("top_p", 1.0) < 1.0 else "",
                "greedy last step" if cfg.get("greedy_tail") else ""]
    controls = [c for c in controls if c]
    if controls or cfg.get("temperatures") or len(cfg.get("seeds") or []) > 1:
        lines.append(f"- sampled with seed {rows[0].seeds[0] if rows[0].seeds else cfg.get('seed', 0)} (batch i: "
                     f"seed + i), {', '.join(controls) or 'T = 1, no truncation'}; temperature sweeps and further "
                     "seeds apply to the unconditional rows only.")
    return "\n".join(lines)


def write_report(report: EvalReport, path: Path) -> None:
    write_json(Path(path), report.to_json())


# ------------------------------------------------------------------------------------------------------------ plot

def plot_report(report: EvalReport, path: Path) -> None:
    """gen-PPL (log scale) and entropy against the NFE budget (log2 axis): one curve per diffusion model (and
    sampler, and temperature when several), each AR model and the held-out data a dashed horizontal reference line.
    Markov-language rows add a panel of the invalid-transition rate against NFE (and drop the gen-PPL panel when no
    row has a gen-PPL). With temperature sweeps a last
    panel draws the frontiers: gen-PPL (log; without gen-PPL: the invalid rate) against the frontiers' entropy
    axis, one curve per model x NFE, the target (data) entropy a vertical line and the matched values open
    circles."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import LogFormatter, NullFormatter, ScalarFormatter

    curves: dict[str, list[EvalRow]] = {}
    unconditional = [r for r in report.rows if r.prefix_tokens is None]
    references = [r for r in unconditional if r.nfe is None]  # AR models and the held-out data
    samplers = {r.sampler for r in unconditional if r.nfe is not None}
    several_t = len({r.temperature for r in unconditional if r.temperature is not None}) > 1

    def label(r: EvalRow) -> str:
        name = r.model if len(samplers) == 1 else f"{r.model} ({r.sampler})"
        return f"{name}, T {r.temperature:g}" if several_t and r.temperature is not None else name

    for r in unconditional:
        if r.nfe is not None:
            curves.setdefault(label(r), []).append(r)
    frontiers = report.frontiers
    markov = any(r.markov for r in unconditional)
    ppl = not markov or any(r.value("gen_ppl") is not None for r in unconditional)
    panels = int(ppl) + 1 + int(markov) + int(bool(frontiers))
    fig = Figure(figsize=(5.5 * panels, 4.6), layout="constrained")
    axes = list(fig.subplots(1, panels))
    ax_ppl = axes.pop(0) if ppl else None
    ax_ent = axes.pop(0)
    ax_invalid = axes.pop(0) if markov else None
    colors = iter(f"C{i % 10}" for i in range(len(curves) + len(references)))
    metrics = [*([(ax_ppl, lambda r: r.value("gen_ppl"))] if ppl else []), (ax_ent, lambda r: r.value("entropy"))]
    if markov:
        invalid = lambda r: None if r.value("invalid_rate") is None else 100 * r.value("invalid_rate")  # noqa: E731
        metrics.append((ax_invalid, invalid))
    for name, rows in curves.items():
        color, rows = next(colors), sorted(rows, key=lambda r: r.nfe)
        for ax, metric in metrics:
            points = [(r.nfe, metric(r)) for r in rows if metric(r) is not None]
            if points:
                ax.plot(*zip(*points), "o-", color=color, label=name)
    for r in references:
        color = next(colors)
        for ax, metric in metrics:
            if metric(r) is not None:
                name = f"{label(r)} (AR, {_fmt_calls(r.nfe_per_batch)} NFE)" if r.kind == "ar" else r.model
                ax.axhline(metric(r), linestyle="--", color=color, label=name)
    budgets = sorted({r.nfe for rows in curves.values() for r in rows})
    evaluator = report.meta.get("evaluator")
    ppl_label = f"gen-PPL ({Path(evaluator['name']).name if evaluator else 'no evaluator'})"
    value_axes = [*([(ax_ppl, ppl_label)] if ppl else []), (ax_ent, "sample entropy (nats)")]
    if markov:
        value_axes.append((ax_invalid, "invalid transitions (%)"))
        ax_invalid.set_ylim(bottom=0.0)
    for ax, ylabel in value_axes:
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
    log_axes = []  # the frontier panel (the NFE panels: scale_value_axes)
    if frontiers:
        ax = axes[0]
        axis = frontier_axis(frontiers[0])
        y_metric = "gen_ppl" if all(f["points"][0].get("gen_ppl") is not None for f in frontiers) else "invalid_rate"
        y_scale = 1.0 if y_metric == "gen_ppl" else 100.0
        if y_metric == "gen_ppl":
            log_axes.append(ax)
        maps = ["Blues", "Oranges", "Greens", "Purples", "Reds", "Greys"]
        models = list(dict.fromkeys((f["model"], f["sampler"]) for f in frontiers))
        from matplotlib import colormaps

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
    scale_value_axes(ax_ppl, ax_ent)
    for ax in log_axes:
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(LogFormatter(labelOnlyBase=False))
        ax.yaxis.set_minor_formatter(LogFormatter(labelOnlyBase=False, minor_thresholds=(1, 0.5)))
    fmt = Path(path).suffix.lstrip(".").lower()
    atomic_write(Path(path), lambda p: fig.savefig(p, format=fmt, dpi=120))


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
