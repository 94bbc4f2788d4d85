"""How a set of samples is scored into a row (:class:`Scoring`): gen-PPL under each evaluator (pooled, median and
trimmed mean), entropies, repetition, diversity and copy rate, protein metrics, MAUVE against held-out text, the
exact metrics of Markov-language runs, and the spread over seeds (or a bootstrap interval over samples);
:func:`data_row` scores the held-out data alike.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ...data.markov import MarkovLanguage
from ...data.protein import sequence_entropy
from ...runtime.checkpoint import is_run_dir
from .markov import MARKOV_METRICS, markov_bootstrap, markov_scores
from .metrics import (
    Evaluator,
    Featurizer,
    Perplexity,
    bootstrap_interval,
    generative_perplexity,
    mauve_score,
    mean_std,
    sample_entropy,
)
from .quality import (
    DISTINCT_NS,
    PPL_METRICS,
    QUALITY_METRICS,
    CopyIndex,
    distinct_n,
    mean_repetition,
    ppl_summary,
    words,
)
from .references import HeldOut, ProteinScoring, copy_index
from .report import EvalRow


@dataclass
class Scoring:
    """Everything that scores a set of samples: gen-PPL under each evaluator (the first is the row's own, read by
    the frontiers), entropies, repetition, diversity and copy rate (:mod:`.quality`), protein metrics, MAUVE against
    the held-out reference, and the spread over seeds (or a bootstrap interval over samples)."""

    evaluators: list[Evaluator]
    proteins: ProteinScoring | None
    featurizer: Featurizer | None
    reference_features: np.ndarray | None
    eval_batch_size: int
    bootstrap: int
    seed: int
    copy_window: int = 0  # 0: the tokenizer's default (quality.default_copy_window)
    copy_indexes: dict[Any, CopyIndex | None] = field(default_factory=dict)  # built once per corpus and tokenizer
    copy_runs: dict[str, CopyIndex | None] = field(default_factory=dict)  # run directory -> its index

    @property
    def evaluator(self) -> Evaluator | None:
        """The first evaluator (the row's own gen-PPL)."""
        return self.evaluators[0] if self.evaluators else None

    def copy_index(self, run_dir: str | Path | None) -> CopyIndex | None:
        """The training-split index of a run (``None`` for no run, a missing one, or one without a corpus)."""
        if not run_dir or not is_run_dir(run_dir):
            return None
        key = str(Path(run_dir).resolve())
        if key not in self.copy_runs:
            self.copy_runs[key] = copy_index(run_dir, self.copy_window, cache=self.copy_indexes)
        return self.copy_runs[key]

    def seed_metrics(self, texts: Sequence[str], tokens: Sequence[Sequence[int]] | None, seed: int | None, *,
                     protein: bool, mauve: bool = True, markov: tuple[MarkovLanguage, Sequence[str]] | None = None,
                     copy: CopyIndex | None = None, perplexities: dict[str, Perplexity] | None = None
                     ) -> dict[str, Any]:
        """Metrics of one seed's samples: ``perplexities`` (evaluator name -> :class:`Perplexity`, unless given, e.g.
        the conditional rows' gen-PPL given their prefixes; ``perplexity``: the first), per-sample ``entropies``,
        ``mauve``, ``quality`` (:data:`QUALITY_METRICS`; repetition over residues for proteins, the copy rate against
        ``copy``), and with ``markov`` = (language, the samples decoded by :func:`~.markov.markov_rows`) the exact
        metrics (:class:`~.markov.MarkovScores`)."""
        if perplexities is None:
            perplexities = {e.name: generative_perplexity(texts, e, batch_size=self.eval_batch_size)
                            for e in self.evaluators}
        out: dict[str, Any] = {"seed": seed, "texts": list(texts), "mauve": None, "perplexities": perplexities,
                               "markov": None if markov is None else markov_scores(*markov)}
        out["perplexity"] = out["perplexities"][self.evaluator.name] if self.evaluators else None
        if protein:
            out["entropies"] = [sequence_entropy(t) for t in texts]  # residues, as protein_metrics
        elif tokens is not None:
            out["entropies"] = [sample_entropy(t) for t in tokens]
        else:
            out["entropies"] = []
        units = [list(t) for t in texts] if protein else tokens  # repetition over residues, as the entropy
        out["quality"] = quality_metrics(units, None if protein else texts, tokens, copy)
        out["copy_index"] = None if copy is None else copy.describe()
        if mauve and self.featurizer is not None:
            out["mauve"] = mauve_score(self.featurizer.features(texts), self.reference_features)
        return out

    def fill(self, row: EvalRow, per_seed: list[dict[str, Any]], *, protein: bool) -> None:
        """Set the row's metrics from its seeds: pooled gen-PPL under each evaluator, mean entropy, MAUVE, the
        quality and Markov metrics (means over seeds), and their spreads."""
        row.seeds = [m["seed"] for m in per_seed if m["seed"] is not None]
        ppls = [m["perplexity"] for m in per_seed if m["perplexity"] is not None]
        if ppls:
            row.gen_ppl = Perplexity.pooled(ppls)
        row.sample_entropy = [e for m in per_seed for e in m["entropies"]]
        if protein:
            self.proteins.score(row, [t for m in per_seed for t in m["texts"]])
        elif row.sample_entropy:
            row.entropy = float(np.mean(row.sample_entropy))
        row.per_seed = [{"seed": m["seed"], **_ppl_fields(m["perplexity"]),
                         "entropy": float(np.mean(m["entropies"])) if m["entropies"] else None,
                         "mauve": m["mauve"], **_markov_fields(m.get("markov")), **m["quality"],
                         **({"evaluators": {name: _ppl_fields(p) for name, p in m["perplexities"].items()}}
                            if len(self.evaluators) > 1 else {})} for m in per_seed]
        markov = [m["markov"] for m in per_seed if m.get("markov") is not None]
        row.spread = {}
        for metric in ("gen_ppl_median", "gen_ppl_trimmed", "entropy", "mauve", *MARKOV_METRICS, *QUALITY_METRICS):
            values = [m[metric] for m in row.per_seed if m.get(metric) is not None]
            if not values:
                continue
            interval = None
            if len(values) == 1 and metric == "entropy":
                interval = bootstrap_interval(row.sample_entropy, resamples=self.bootstrap, seed=self.seed)
            elif len(values) == 1 and metric in MARKOV_METRICS and metric != "conditional_entropy":
                scores = next(m for m in markov if m.metrics["transitions"] > 0)
                interval = markov_bootstrap(scores.language, scores.counts, resamples=self.bootstrap,
                                            seed=self.seed)[metric]
            row.spread[metric] = self._spread(values, interval)
            if metric == "conditional_entropy" and len(values) == 1:
                row.spread[metric]["method"] += " (no bootstrap interval: a plug-in entropy is biased under resampling)"
        if row.gen_ppl is not None:
            row.spread = {"gen_ppl": self._ppl_spread(row.gen_ppl, [m["gen_ppl"] for m in row.per_seed]),
                          **row.spread}
        if "copy_rate" in row.spread:  # which training split, and which window
            row.spread["copy_rate"]["index"] = per_seed[0]["copy_index"]
        row.mauve = row.spread.get("mauve", {}).get("mean")
        row.evaluators = self._by_evaluator(per_seed, row) if len(self.evaluators) > 1 else {}
        if markov:
            row.markov = {metric: row.spread.get(metric, {}).get("mean") for metric in MARKOV_METRICS}
            row.markov.update(chain_entropy_rate=markov[0].metrics["chain_entropy_rate"],
                              transitions=float(sum(m.metrics["transitions"] for m in markov)))

    def _spread(self, values: Sequence[float], interval: tuple[float, float] | None = None) -> dict[str, Any]:
        """Mean and std over seeds; with one seed, a bootstrap ``interval`` over samples when there is one."""
        mean, std = mean_std(values)
        spread: dict[str, Any] = {"mean": mean, "std": std, "n_seeds": len(values)}
        if interval is not None:
            low, high = interval
            spread.update(low=low, high=high, method=f"bootstrap 95% over samples ({self.bootstrap} resamples)")
        else:
            spread["method"] = f"std over {len(values)} seeds" if len(values) > 1 else "one seed"
        return spread

    def _ppl_spread(self, pooled: Perplexity, per_seed: Sequence[float]) -> dict[str, Any]:
        """The spread of gen-PPL: over seeds, or (one seed) a bootstrap interval over the pooled samples."""
        interval = None
        if len(per_seed) == 1:
            interval = bootstrap_interval(pooled.sample_nll, pooled.sample_tokens, transform=np.exp,
                                          resamples=self.bootstrap, seed=self.seed)
        return self._spread(per_seed, interval)

    def _by_evaluator(self, per_seed: list[dict[str, Any]], row: EvalRow) -> dict[str, dict[str, Any]]:
        """Per evaluator name: its pooled :class:`Perplexity` and the spreads of :data:`PPL_METRICS`."""
        out = {}
        for evaluator in self.evaluators:
            seeds = [m["evaluators"][evaluator.name] for m in row.per_seed]
            pooled = Perplexity.pooled([m["perplexities"][evaluator.name] for m in per_seed])
            spread = {"gen_ppl": self._ppl_spread(pooled, [s["gen_ppl"] for s in seeds])}
            for metric in PPL_METRICS[1:]:
                values = [s[metric] for s in seeds if s[metric] is not None]
                if values:
                    spread[metric] = self._spread(values)
            out[evaluator.name] = {"gen_ppl": pooled, "spread": spread}
        return out


def quality_metrics(units: Sequence[Sequence[Any]] | None, texts: Sequence[str] | None,
                    tokens: Sequence[Sequence[int]] | None, copy: CopyIndex | None) -> dict[str, float | None]:
    """:data:`QUALITY_METRICS` of one seed's samples: rep-n over ``units`` (token ids, or residues) and over the
    words of ``texts`` (``None``: not measured), distinct-n over ``units``, the copy rate of ``tokens`` (ids)."""
    out: dict[str, float | None] = dict.fromkeys(QUALITY_METRICS)
    if units is not None:
        out.update({f"rep_tokens_{n}": v for n, v in mean_repetition(units).items()})
        out.update({f"distinct_{n}": distinct_n(units, n) for n in DISTINCT_NS})
    if texts is not None:
        out.update({f"rep_words_{n}": v for n, v in mean_repetition([words(t) for t in texts]).items()})
    if copy is not None and tokens is not None:
        out["copy_rate"] = copy.rate(tokens)
    return out


def _ppl_fields(perplexity: Perplexity | None) -> dict[str, float | None]:
    """``gen_ppl``, ``gen_ppl_median`` and ``gen_ppl_trimmed`` of one seed (``None`` without an evaluator)."""
    if perplexity is None:
        return dict.fromkeys(PPL_METRICS)
    summary = ppl_summary(perplexity.sample_nll, perplexity.sample_tokens)
    return {"gen_ppl": perplexity.ppl, "gen_ppl_median": summary["median"], "gen_ppl_trimmed": summary["trimmed"]}


def _markov_fields(scores: Any) -> dict[str, float | None]:
    """The per-seed record of the exact Markov metrics (nothing for other corpora; ``None`` for samples without a
    single letter-to-letter transition, which would otherwise score a perfect 0 % invalid)."""
    if scores is None:
        return {}
    measured = scores.metrics["transitions"] > 0
    return {**{k: scores.metrics[k] if measured else None for k in MARKOV_METRICS},
            "transitions": scores.metrics["transitions"]}


def data_row(heldout: HeldOut, scoring: Scoring) -> EvalRow:
    """The held-out data scored like samples (no sampling, no timing)."""
    seq_len = len(heldout.tokens[0]) if heldout.tokens else None
    row = EvalRow(model=heldout.name, kind="data", sampler="n/a", nfe=None, source=heldout.source,
                  num_samples=len(heldout.texts), seq_len=seq_len, generated_tokens=0, nfe_per_batch=[],
                  extra_calls={}, batch_sizes=[], latencies_s=[], timing="not sampled", temperature=None)
    protein = heldout.tokens is None
    scoring.fill(row, [scoring.seed_metrics(heldout.texts, heldout.ids, None, protein=protein, mauve=heldout.disjoint,
                                            markov=heldout.markov, copy=scoring.copy_index(heldout.run_dir))],
                 protein=protein)
    return row

