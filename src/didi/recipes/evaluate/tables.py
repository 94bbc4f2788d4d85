"""The Markdown tables of ``didi eval`` (:func:`format_table`): one line per unconditional row with notes saying
exactly what every column measures, the matched-entropy table of temperature sweeps (:func:`frontier_table`) and
the conditional rows' table (:func:`conditional_table`); everything from an :class:`~.report.EvalReport`, so the
tables of a saved JSON report come out the same.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .metrics import RELIABLE_MAUVE_SAMPLES
from .quality import QUALITY_COLUMNS, TRIM, quality_notes
from .report import COND_ENTROPY, FRONTIER_AXES, EvalReport, EvalRow, frontier_axis


def _fmt(value: float | None, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def fmt_calls(calls: Sequence[int]) -> str:
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


def fmt_spread(row: EvalRow, metric: str, spec: str, scale: float = 1.0, evaluator: str | None = None) -> str:
    """``mean ± std`` over seeds, ``value [low, high]`` (bootstrap 95% interval over samples, one seed), or the
    bare value; every number times ``scale`` (100: a rate in percent); ``evaluator``: a gen-PPL metric under that
    one of several evaluators."""
    value = row.value(metric, evaluator)
    if value is None:
        return "n/a"
    spread = (row.evaluators[evaluator]["spread"] if evaluator else row.spread).get(metric, {})
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


@dataclass
class _Columns:
    """Which optional columns the main table has (from its rows)."""

    extra_keys: list[str]
    protein: bool
    plddt: bool
    show_t: bool
    show_mauve: bool
    mauve_reference: int | None  # held-out sequences MAUVE compared with (reports written before: unknown)
    markov: bool
    ppl_summary: bool  # gen-PPL median / trimmed mean (reports written before them have none)
    evaluators: dict[str, str]  # the second and later evaluators: name -> short name
    quality: list[tuple[str, tuple[str, ...], str, float]]  # QUALITY_COLUMNS measured in some row

    @classmethod
    def of(cls, rows: Sequence[EvalRow], mauve_reference: int | None = None) -> _Columns:
        names = list(dict.fromkeys(name for r in rows for name in r.evaluators))[1:]
        short = [Path(name).name or name for name in names]
        return cls(extra_keys=sorted({k for r in rows for k in r.extra_calls}), protein=any(r.protein for r in rows),
                   plddt=any(r.protein and "plddt" in r.protein for r in rows),
                   show_t=any(r.temperature not in (None, 1.0) for r in rows),
                   show_mauve=any(r.mauve is not None for r in rows), mauve_reference=mauve_reference,
                   markov=any(r.markov for r in rows),
                   ppl_summary=any(r.value("gen_ppl_median") is not None for r in rows),
                   evaluators={n: s if short.count(s) == 1 else n for n, s in zip(names, short)},
                   quality=[c for c in QUALITY_COLUMNS if any(r.value(m) is not None for r in rows for m in c[1])])

    def header(self, batch: int | None) -> list[str]:
        protein_header = ["length", "AA-comp JS", "distinct", "low-complexity", *(["pLDDT"] if self.plddt else [])]
        evaluators = [h for short in self.evaluators.values() for h in (f"gen-PPL ({short})",
                                                                        f"median / trimmed ({short})")]
        return ["model", "kind", "sampler", "NFE", "NFE made", *(f"{k} calls" for k in self.extra_keys),
                *(["T"] if self.show_t else []), "gen-PPL", *(["gen-PPL median / trimmed"] if self.ppl_summary else []),
                *evaluators, "entropy", *(["MAUVE"] if self.show_mauve else []),
                *([c[0] for c in MARKOV_COLUMNS] if self.markov else []), *(protein_header if self.protein else []),
                "likelihood", *(c[0] for c in self.quality), "latency/batch (s)", "tokens/s",
                f"speed-up (tokens/s, batch {batch})" if batch else "speed-up", "peak mem (MiB)"]

    def cells(self, r: EvalRow) -> list[str]:
        likelihood = "n/a" if r.likelihood is None else ("≤ " if r.likelihood.bound else "") + \
            f"{r.likelihood.ppl:.2f}"
        return [r.model, r.kind, r.sampler, "—" if r.nfe is None else str(r.nfe), fmt_calls(r.nfe_per_batch),
                *(fmt_calls(r.extra_calls.get(k, [])) for k in self.extra_keys),
                *([_fmt_temperature(r.temperature)] if self.show_t else []),
                fmt_spread(r, "gen_ppl", ".2f"), *([_summary_cell(r)] if self.ppl_summary else []),
                *(cell for name in self.evaluators for cell in (fmt_spread(r, "gen_ppl", ".2f", evaluator=name),
                                                                _summary_cell(r, name))),
                fmt_spread(r, "entropy", ".3f"), *([_mauve_cell(r, self.mauve_reference)] if self.show_mauve else []),
                *(markov_cells(r) if self.markov else []), *(_protein_cells(r, self.plddt) if self.protein else []),
                likelihood, *(_quality_cell(r, metrics, spec, scale) for _, metrics, spec, scale in self.quality),
                _fmt(r.latency_s, ".3f"), _fmt(r.tokens_per_s, ",.1f"),
                _fmt(r.speedup, ".2f") + ("×" if r.speedup is not None else ""), _fmt(r.peak_memory_mib, ",.0f")]


def _few_for_mauve(row: EvalRow, reference: int | None) -> bool:
    """Whether a row's MAUVE compares fewer than :data:`~.metrics.RELIABLE_MAUVE_SAMPLES` samples per side."""
    return min(row.num_samples, reference or row.num_samples) < RELIABLE_MAUVE_SAMPLES


def _mauve_cell(row: EvalRow, reference: int | None) -> str:
    """MAUVE with its spread, marked * when computed on few samples (:func:`_few_for_mauve`)."""
    cell = fmt_spread(row, "mauve", ".3f")
    return cell + "*" if row.mauve is not None and _few_for_mauve(row, reference) else cell


def copy_indexes(rows: Sequence[EvalRow]) -> list[dict[str, Any]]:
    """The distinct training-split indexes the rows' copy rates were measured against (their ``spread``)."""
    found = [r.spread["copy_rate"].get("index") for r in rows if "copy_rate" in r.spread]
    return [i for n, i in enumerate(found) if i and i not in found[:n]]


def _summary_cell(row: EvalRow, evaluator: str | None = None) -> str:
    """``median / trimmed mean`` of the per-sample gen-PPLs (means over seeds)."""
    values = [row.value(m, evaluator) for m in ("gen_ppl_median", "gen_ppl_trimmed")]
    return "n/a" if values[0] is None else " / ".join(_fmt(v, ".2f") for v in values)


def _quality_cell(row: EvalRow, metrics: Sequence[str], spec: str, scale: float) -> str:
    """The row's values of ``metrics`` (means over seeds), joined by ``/``; n/a when none is measured."""
    values = [row.value(m) for m in metrics]
    if all(v is None for v in values):
        return "n/a"
    return "/".join("n/a" if v is None else format(v * scale, spec) for v in values)


def format_table(report: EvalReport) -> str:
    """The report as a Markdown table (and the matched-entropy table of temperature sweeps) followed by notes
    saying exactly what every column measures; then the conditional rows' table (:func:`conditional_table`)."""
    rows = [r for r in report.rows if r.prefix_tokens is None]  # conditional rows: conditional_table
    if not rows:
        return conditional_table(report)
    columns = _Columns.of(rows, (report.meta.get("mauve") or {}).get("reference_size"))
    header = columns.header(speed_batch(report))
    lines = ["| " + " | ".join(header) + " |",
             "|" + "|".join("---" if i < 3 else "---:" for i in range(len(header))) + "|"]
    lines += ["| " + " | ".join(columns.cells(r)) + " |" for r in rows]
    frontier = frontier_table(report)
    if frontier:
        lines += ["", *frontier]
    lines += ["", *_metric_notes(report, rows, columns), *_setting_notes(report, columns)]
    conditional = conditional_table(report)
    return "\n".join(lines) + ("\n\n" + conditional if conditional else "")


def _metric_notes(report: EvalReport, rows: Sequence[EvalRow], columns: _Columns) -> list[str]:
    """What gen-PPL, entropy, the spreads, T, the Markov metrics, MAUVE and the data row measure."""
    meta, cfg = report.meta, report.meta["config"]
    evaluator = meta["evaluator"]
    if evaluator:
        lines = [f"- gen-PPL: exp(Σ NLL / Σ scored tokens) over all samples of a row under {evaluator['name']} "
                 f"(fp32, context {evaluator['context_len']}), decoded text re-tokenised by its tokenizer; "
                 "scored: every non-EOS token and the first EOS of a sample, not the first token of a chunk."]
    else:
        lines = ["- gen-PPL: not computed (no --evaluator and no AR --model)."]
    lines += _evaluator_notes(report, columns)
    lines.append("- entropy: mean over samples of the unigram entropy (nats) of each sample's own token ids"
                 + ("; protein rows: of its residues (special tokens such as PAD excluded; at most ln 20 = 3.00)."
                    if columns.protein else "."))
    seeds = cfg.get("seeds") or [cfg.get("seed", 0)]
    if len(seeds) > 1:
        lines.append(f"- spread: mean ± standard deviation (ddof 1) over seeds {', '.join(map(str, seeds))}, each "
                     "seed a full set of samples (gen-PPL: the mean of the seeds' corpus gen-PPLs).")
    elif any(r.spread for r in rows):
        lines.append(f"- spread: one seed; [low, high] is a percentile bootstrap 95% interval over samples "
                     f"({cfg.get('bootstrap', 1000)} resamples).")
    if columns.show_t or any(r.temperature is not None for r in rows):
        controls = [c for c in _controls(cfg) if c]
        lines.append("- T: sampling temperature, draws from softmax(logits / T)" +
                     (f"; every draw also uses {', '.join(controls)}." if controls else
                      " (no truncation)." if columns.show_t else "; every row at T = 1, no truncation."))
    if columns.markov:
        lines.append(markov_note(rows))
    if columns.show_mauve:
        mauve = meta.get("mauve") or {}
        few = [r for r in rows if r.mauve is not None and _few_for_mauve(r, columns.mauve_reference)]
        lines.append(f"- MAUVE (mauve-text, its defaults) of each row's samples against {mauve.get('reference', '?')}, "
                     f"on features of {mauve.get('features', '?')}; 1 = indistinguishable."
                     + (f" *: fewer than {RELIABLE_MAUVE_SAMPLES} samples per side (as few as "
                        f"{min(min(r.num_samples for r in few), columns.mauve_reference or 10**9)}): MAUVE varies a "
                        "lot from one set of samples to the next at this size; compare with care." if few else ""))
    heldout = meta.get("heldout")
    if heldout and any(r.kind == "data" for r in rows):
        lines.append(f"- {heldout['name']}: {heldout['row']}, decoded and scored like samples: what a perfect "
                     "model would reach." + ("" if heldout.get("disjoint", True) or not columns.show_mauve else
                                             " Its MAUVE is not reported: too few held-out sequences for a second, "
                                             "disjoint reference set."))
    return lines + quality_notes({c[0] for c in columns.quality}, copy_indexes(rows)) + _frontier_notes(report)


def _evaluator_notes(report: EvalReport, columns: _Columns) -> list[str]:
    """What the median / trimmed mean and the other evaluators' columns are."""
    lines = []
    if columns.ppl_summary:
        lines.append(f"- gen-PPL median / trimmed: the median and the {TRIM:.0%} trimmed mean ({TRIM:.0%} of the "
                     "samples cut at each end) of the per-sample gen-PPLs exp(NLL_i / scored tokens_i), means over "
                     "seeds: a few long or degenerate samples move the pooled gen-PPL, not these.")
    if columns.evaluators:
        contexts = {e["name"]: e["context_len"] for e in report.meta.get("evaluators") or []}
        described = "; ".join(f"({short}): {name}" + (f" (context {contexts[name]})" if name in contexts else "")
                              for name, short in columns.evaluators.items())
        lines.append(f"- gen-PPL and median / trimmed under the other evaluators, by the same protocol: {described}. "
                     "The first evaluator's gen-PPL is the one the frontiers read.")
    return lines


def _controls(cfg: dict[str, Any]) -> list[str]:
    """The truncation controls of the config, as the notes name them (empty strings for those not used)."""
    return [f"top-k {cfg['top_k']}" if cfg.get("top_k") else "",
            f"top-p {cfg['top_p']}" if cfg.get("top_p", 1.0) < 1.0 else "",
            "greedy last step" if cfg.get("greedy_tail") else ""]


def _frontier_notes(report: EvalReport) -> list[str]:
    """How the matched-entropy values are read."""
    if not report.frontiers or not report.target_entropy:
        return []
    t = report.target_entropy
    axis = frontier_axis(report.frontiers[0])
    if axis == "entropy":
        lines = [f"- gen-PPL @ entropy {t['value']:.3f}: the target is {t['source']}; log gen-PPL is "
                 "interpolated linearly in entropy between the two temperatures whose rows bracket it (first "
                 "such pair by temperature; row means over seeds); 'not reached': no two temperatures "
                 "bracket it, nothing is extrapolated."]
    else:
        lines = [f"- @ H(X'|X) {t['value']:.3f}: the target is {t['source']}; between the two temperatures "
                 "whose rows bracket it on the conditional-entropy axis (first such pair by temperature; row "
                 "means over seeds) log gen-PPL, the invalid rate and NLL/transition are interpolated "
                 "linearly; 'not reached': no two temperatures bracket it, nothing is extrapolated."]
    if axis == "entropy" and any("invalid_rate" in f for f in report.frontiers):
        lines.append("- invalid % and NLL/transition @ entropy: interpolated linearly in entropy between the same "
                     "two temperatures.")
    return lines


def _setting_notes(report: EvalReport, columns: _Columns) -> list[str]:
    """Proteins, likelihood, NFE, extra calls, speed, sample files and seeds."""
    meta, cfg = report.meta, report.meta["config"]
    lines = []
    if columns.protein:
        natural = meta["protein_reference"]
        lines.append("- protein rows score the decoded sequences: the first run of residues of each sample (a sample "
                     "ends at its first EOS/PAD). length: residues, mean ± std; AA-comp JS: Jensen-Shannon "
                     "divergence (nats) between the pooled composition of the 20 standard residues and that of "
                     f"{natural['source']}; distinct: share of distinct sequences; low-complexity: share of "
                     "sequences more than half covered by SEG-style windows (12 residues, entropy <= 2.2 bits).")
        if natural["name"]:
            lines.append(f"- {natural['name']}: the first validation sequences (a seeded random choice, as many as "
                         "the largest row has samples), scored like samples: what a perfect model would reach.")
        if columns.plddt:
            lines.append("- pLDDT: ESMFold's mean per-residue confidence (0-100), averaged over non-empty sequences.")
    if cfg["likelihood"] and cfg["models"]:
        lines.append(f"- likelihood: validation perplexity (AR) or its NELBO upper bound '≤' (diffusion, one "
                     f"antithetic time per block), over at most {cfg['eval_blocks']} validation blocks"
                     + (" (protein blocks: per position, PAD included)." if columns.protein else "."))
    lines.append("- NFE made: network calls counted by the sampler per batch (the diffusion cache skips calls while "
                 "no token changed; AR: one call per generated token).")
    if "discriminator" in columns.extra_keys:
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
                     f"{speed_batch(report)} samples (rows timed at another batch size: n/a).")
    if cfg["samples"]:
        lines.append("- rows from --samples files: timings as recorded by `didi sample` (no warm-up).")
    if cfg["models"]:
        seeds = cfg.get("seeds") or [cfg.get("seed", 0)]
        lines.append(f"- {cfg['num_samples']} samples per sampled row and seed, seed(s) {', '.join(map(str, seeds))} "
                     f"(batch i of seed s: s + i{' x ' + str(max(seeds) - min(seeds) + 1) if len(seeds) > 1 else ''}).")
    return lines


def conditional_table(report: EvalReport) -> str:
    """The conditional rows (``didi eval --prefix-tokens P``, :mod:`.conditional`) as a Markdown table with notes;
    ``""`` if there are none."""
    rows = [r for r in report.rows if r.prefix_tokens is not None]
    if not rows:
        return ""
    p = rows[0].prefix_tokens
    columns = _Columns.of(rows)
    header = ["model", "kind", "sampler", "NFE", "NFE made", "gen-PPL given prefix",
              *(["median / trimmed"] if columns.ppl_summary else []),
              *(f"given prefix ({short})" for short in columns.evaluators.values()), "entropy",
              *(c[0] for c in columns.quality), "continued tokens", "latency/batch (s)"]
    lines = [f"Conditional generation: continuations of {p}-token held-out prefixes", "",
             "| " + " | ".join(header) + " |",
             "|" + "|".join("---" if i < 3 else "---:" for i in range(len(header))) + "|"]
    for r in rows:
        lines.append("| " + " | ".join([
            r.model, r.kind, r.sampler, "—" if r.nfe is None else str(r.nfe), fmt_calls(r.nfe_per_batch),
            _fmt(r.gen_ppl.ppl if r.gen_ppl else None, ".2f"), *([_summary_cell(r)] if columns.ppl_summary else []),
            *(_fmt(r.value("gen_ppl", name), ".2f") for name in columns.evaluators), _fmt(r.entropy, ".3f"),
            *(_quality_cell(r, metrics, spec, scale) for _, metrics, spec, scale in columns.quality),
            str(r.generated_tokens), _fmt(r.latency_s, ".3f")]) + " |")
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
    if columns.quality:
        lines.append("- median / trimmed, the other evaluators, rep-n, distinct-n and copy %: as for unconditional "
                     "rows, of the continuations (their gen-PPL given their prefixes).")
        if all(r.prefix_tokens is not None for r in report.rows):  # no table above to define them
            lines += quality_notes({c[0] for c in columns.quality}, copy_indexes(rows))
    cfg = report.meta.get("config") or {}
    controls = [f"T {rows[0].temperature:g}" if rows[0].temperature not in (None, 1.0) else "", *_controls(cfg)]
    controls = [c for c in controls if c]
    if controls or cfg.get("temperatures") or len(cfg.get("seeds") or []) > 1:
        lines.append(f"- sampled with seed {rows[0].seeds[0] if rows[0].seeds else cfg.get('seed', 0)} (batch i: "
                     f"seed + i), {', '.join(controls) or 'T = 1, no truncation'}; temperature sweeps and further "
                     "seeds apply to the unconditional rows only.")
    return "\n".join(lines)
