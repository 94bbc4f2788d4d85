"""The exact metrics of a Markov-language run (``markov.json`` beside its weights, written for ``--data markov``;
:func:`markov_language`): the invalid-transition rate, the NLL per transition and the empirical ``H(X'|X)`` of the
samples decoded with a break at every special token (:func:`markov_rows`), pooled over a set of samples
(:func:`markov_scores`), with percentile bootstrap intervals over samples (:func:`markov_bootstrap`).
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ...data.markov import MarkovLanguage, metrics_from_counts, sample_transition_counts
from ...data.tokenizer import Tokenizer
from ...errors import require

MARKOV_FILE = "markov.json"
MARKOV_METRICS = ("invalid_rate", "nll_per_transition", "conditional_entropy")
"""The exact metrics of a Markov-language run (:func:`didi.data.markov.markov_metrics`) that rows report."""


def markov_language(run_dir: str | Path | None) -> MarkovLanguage | None:
    """The language a run was trained on (its ``markov.json``, written for ``--data markov``), else ``None``."""
    if not run_dir:
        return None
    path = Path(run_dir) / MARKOV_FILE
    return MarkovLanguage.load(path) if path.is_file() else None


def markov_rows(tokenizer: Tokenizer, samples: Sequence[Sequence[int]]) -> list[str]:
    """Each sample decoded by ``tokenizer.decode`` as the samples are, except that every special token (BOS/EOS,
    PAD, [MASK], ids outside the vocabulary) becomes a line break instead of its text: ``<|endoftext|>`` is made of
    letters, and no transition of the Markov chain may span a document boundary."""
    specials = {i for i in (tokenizer.bos_id, tokenizer.eos_id, tokenizer.pad_id, tokenizer.diffusion_mask_id)
                if i is not None}
    out = []
    for sample in samples:
        pieces: list[str] = []
        run: list[int] = []
        for i in (int(i) for i in sample):
            if i in specials or not 0 <= i < tokenizer.vocab_size:
                if run:
                    pieces.append(tokenizer.decode(run))
                    run = []
                pieces.append("\n")
            else:
                run.append(i)
        if run:
            pieces.append(tokenizer.decode(run))
        out.append("".join(pieces))
    return out


@dataclass
class MarkovScores:
    """:func:`didi.data.markov.markov_metrics` of a set of samples (pooled) under ``language``, and each sample's
    transition counts (N, S, S), from which :func:`markov_bootstrap` resamples."""

    language: MarkovLanguage
    metrics: dict[str, float]
    counts: np.ndarray


def markov_scores(language: MarkovLanguage, rows: Sequence[str | bytes | Sequence[int]]) -> MarkovScores:
    """The exact metrics of ``rows`` (text from :func:`markov_rows`, or byte-tokenizer ids): the same numbers as
    ``markov_metrics(language, rows)``, computed from the per-sample counts."""
    counts = sample_transition_counts(language, rows)
    return MarkovScores(language=language, metrics=metrics_from_counts(language, counts.sum(0)), counts=counts)


def markov_bootstrap(language: MarkovLanguage, counts: np.ndarray, *, resamples: int = 1000, seed: int = 0,
                     level: float = 0.95) -> dict[str, tuple[float, float]]:
    """Percentile bootstrap intervals over samples of the pooled invalid rate and NLL per transition (ratios of sums):
    each resample draws ``n`` samples with replacement and pools their transition counts. ``H(X'|X)`` gets none: a
    plug-in entropy is biased low under resampling (repeated samples add no new transitions), so its percentile
    interval would not even cover the value it is about."""
    n = len(counts)
    require(n > 0, "samples", "bootstrap needs at least one sample")
    idx = np.random.default_rng(seed).integers(0, n, size=(resamples, n))
    weights = np.bincount((idx + n * np.arange(resamples)[:, None]).ravel(), minlength=resamples * n)
    pooled = weights.reshape(resamples, n).astype(np.float64) @ counts.reshape(n, -1).astype(np.float64)
    pooled = pooled.reshape(resamples, *counts.shape[1:])
    t = language.transitions
    valid = t > 0
    total, kept = pooled.sum((1, 2)), pooled[:, valid].sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):  # a resample without transitions has no value: NaN
        stats = {"invalid_rate": pooled[:, ~valid].sum(1) / total,
                 "nll_per_transition": -(pooled[:, valid] * np.log(t[valid])).sum(1) / kept}
    quantiles = [(1 - level) / 2, (1 + level) / 2]
    return {k: tuple(float(q) for q in np.nanquantile(v, quantiles)) if np.isfinite(v).any() else (math.nan, math.nan)
            for k, v in stats.items()}
