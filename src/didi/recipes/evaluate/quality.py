"""Sample quality beyond perplexity: repetition, diversity, copying and robust gen-PPL summaries.

* :func:`repetition` — rep-n (Welleck et al. 2020, *Neural text generation with unlikelihood training*, sec. 6):
  the share of a sample's n-grams that repeat an earlier one of the same sample, ``1 - |unique n-grams| / |n-grams|``;
  :func:`mean_repetition` averages it over samples, on token ids and on whitespace-separated words, n = 1..4;
* :func:`distinct_n` — distinct-n (Li et al. 2016, *A diversity-promoting objective*): the unique n-grams of all
  samples of a row over all their n-grams (token ids, n = 2..4): low when samples repeat one another;
* :class:`CopyIndex` — the copy rate against a model's training split: the share of a sample's tokens that lie
  inside a verbatim window of ``k`` tokens occurring in the training data (:meth:`CopyIndex.rate`), from a set of
  64-bit hashes of every training ``k``-gram (:meth:`CopyIndex.build`);
* :func:`ppl_summary` — the median and the trimmed mean of per-sample gen-PPL ``exp(NLL_i / tokens_i)``, beside the
  pooled gen-PPL that long or odd samples can dominate;

and how the tables show them (:data:`QUALITY_COLUMNS`, :func:`quality_notes`).
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

REPETITION_NS = (1, 2, 3, 4)
DISTINCT_NS = (2, 3, 4)
TRIM = 0.1
"""The share of per-sample gen-PPLs cut from each end before the trimmed mean."""
SUBWORD_WINDOW, CHARACTER_WINDOW = 8, 32
"""Default copy windows (``--copy-window 0``): 8 tokens of a subword vocabulary (BPE, GPT-2: 3-4 characters per
token) and 32 of a character-level one (bytes, residues) span 25-32 characters, five or six English words: long
enough that held-out text rarely matches by chance, short enough to catch copied phrases. Held-out Shakespeare
against its training split (``benchmarks/quality_metrics.py``, 128 blocks of 64 tokens): 1.2 % of bytes in a
copied 32-byte window (17.8 % at 16 bytes, 91.9 % at 8), 6.4 % of 4096-BPE tokens in a copied 8-token window
(53.2 % at 4), 10.4 % of GPT-2 tokens; the data row of every report measures it for its own corpus."""
QUALITY_METRICS = (*(f"rep_tokens_{n}" for n in REPETITION_NS), *(f"rep_words_{n}" for n in REPETITION_NS),
                   *(f"distinct_{n}" for n in DISTINCT_NS), "copy_rate")
"""The metrics of :mod:`.quality` every row reports (means over seeds; per seed in ``per_seed``)."""
PPL_METRICS = ("gen_ppl", "gen_ppl_median", "gen_ppl_trimmed")
"""gen-PPL under an evaluator: pooled over the samples, and the median and trimmed mean of per-sample gen-PPLs."""
MAX_INDEXED_TOKENS = 50_000_000
"""At most this many training tokens are indexed for the copy rate (8 bytes per distinct window); beyond, the first
ones, and the rate is a lower bound (the table says so)."""


def ngrams(items: Sequence[Any], n: int) -> list[tuple[Any, ...]]:
    """The ``n``-grams of a sequence, in order (none if it is shorter than ``n``)."""
    return [tuple(items[i:i + n]) for i in range(len(items) - n + 1)]


def repetition(items: Sequence[Any], n: int) -> float | None:
    """rep-n of one sample: ``1 - |unique n-grams| / |n-grams|`` (``a b a b``: rep-1 1/2, rep-2 1/3); ``None`` for a
    sample with no ``n``-gram."""
    grams = ngrams(items, n)
    return 1.0 - len(set(grams)) / len(grams) if grams else None


def mean_repetition(samples: Iterable[Sequence[Any]], ns: Sequence[int] = REPETITION_NS) -> dict[int, float | None]:
    """rep-n averaged over the samples that have an ``n``-gram, for every ``n`` in ``ns``."""
    samples = list(samples)
    out: dict[int, float | None] = {}
    for n in ns:
        values = [v for v in (repetition(s, n) for s in samples) if v is not None]
        out[n] = float(np.mean(values)) if values else None
    return out


def distinct_n(samples: Iterable[Sequence[Any]], n: int) -> float | None:
    """distinct-n of a set of samples: unique ``n``-grams over all ``n``-grams, pooled over the samples (``a b a b``
    and ``a b c``: bigrams ab ba ab ab bc, distinct-2 = 3/5); ``None`` when no sample has an ``n``-gram."""
    grams = [g for s in samples for g in ngrams(list(s), n)]
    return len(set(grams)) / len(grams) if grams else None


def words(text: str) -> list[str]:
    """Whitespace-separated words (the word-level rep-n)."""
    return text.split()


# ----------------------------------------------------------------------------------------------------- copy rate

_MULTIPLIER = np.uint64(0x100000001B3)  # odd: multiplication mod 2^64 is invertible


def _token_keys(ids: np.ndarray) -> np.ndarray:
    """A pseudo-random 64-bit key per token id (the splitmix64 finaliser), so that window hashes mix well."""
    with np.errstate(over="ignore"):
        z = ids.astype(np.uint64) + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def window_hashes(ids: np.ndarray, k: int, specials: Sequence[int] = ()) -> tuple[np.ndarray, np.ndarray]:
    """``(hashes, valid)`` of every ``k``-token window ``ids[i:i + k]`` of a 1-D id array: a polynomial hash mod 2^64
    of the tokens' keys, and whether the window holds no special token (``specials``: BOS, EOS, PAD, [MASK], ...;
    a window across one is never counted as copied)."""
    ids = np.asarray(ids, dtype=np.int64)
    count = len(ids) - k + 1
    if count <= 0:
        return np.empty(0, dtype=np.uint64), np.empty(0, dtype=bool)
    keys = _token_keys(ids)
    hashes = np.zeros(count, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for j in range(k):
            hashes = hashes * _MULTIPLIER + keys[j:j + count]
    special = np.isin(ids, np.asarray(list(specials), dtype=np.int64))
    before = np.concatenate([[0], np.cumsum(special)])
    return hashes, (before[k:] - before[:count]) == 0


@dataclass
class CopyIndex:
    """The distinct ``k``-gram hashes of a training split (sorted), the special ids that break windows, and what
    was indexed (``source``, ``tokens``, ``truncated``: the split had more than :data:`MAX_INDEXED_TOKENS`).

    A false match needs two different windows with one 64-bit hash: with ``m`` indexed windows, probability about
    ``m / 2^64`` per window (below 1e-11 for 50M)."""

    k: int
    hashes: np.ndarray
    specials: tuple[int, ...]
    source: str
    tokens: int
    truncated: bool = False

    @classmethod
    def build(cls, stream: np.ndarray, k: int, specials: Sequence[int], source: str,
              max_tokens: int = MAX_INDEXED_TOKENS, chunk: int = 1 << 22) -> CopyIndex:
        """Index the ``k``-grams of a 1-D token ``stream`` (the wrap-packed text, or documents one after another with
        special tokens between them), its first ``max_tokens`` tokens, in chunks of ``chunk`` tokens."""
        truncated = len(stream) > max_tokens
        stream = np.asarray(stream[:max_tokens])
        parts = []
        for start in range(0, max(1, len(stream) - k + 1), chunk):
            hashes, valid = window_hashes(stream[start:start + chunk + k - 1], k, specials)
            parts.append(_sorted_unique(hashes[valid]))
        hashes = _sorted_unique(np.concatenate(parts)) if parts else np.empty(0, dtype=np.uint64)
        return cls(k=k, hashes=hashes, specials=tuple(specials), source=source, tokens=len(stream),
                   truncated=truncated)

    def describe(self) -> dict[str, Any]:
        """What the index holds, as the rows record it (``window``, ``source``, ``tokens``, ``truncated``)."""
        return {"window": self.k, "source": self.source, "tokens": self.tokens, "truncated": self.truncated}

    def covered(self, sample: Sequence[int]) -> tuple[int, int]:
        """``(covered, countable)``: the sample's non-special tokens, and those inside a window found in the index."""
        ids = np.asarray(sample, dtype=np.int64)
        countable = int((~np.isin(ids, np.asarray(self.specials, dtype=np.int64))).sum())
        hashes, valid = window_hashes(ids, self.k, self.specials)
        if not len(hashes) or not len(self.hashes):
            return 0, countable
        at = np.minimum(np.searchsorted(self.hashes, hashes), len(self.hashes) - 1)
        found = valid & (self.hashes[at] == hashes)
        inside = np.zeros(len(ids) + 1, dtype=np.int64)  # +1 at each found window's start, -1 after its end
        np.add.at(inside, np.flatnonzero(found), 1)
        np.add.at(inside, np.flatnonzero(found) + self.k, -1)
        return int((np.cumsum(inside[:-1]) > 0).sum()), countable

    def rate(self, samples: Iterable[Sequence[int]]) -> float | None:
        """Copy rate of a set of samples: the mean over samples (with a countable token) of the share of their
        tokens inside a copied window."""
        shares = [c / n for c, n in (self.covered(s) for s in samples) if n > 0]
        return float(np.mean(shares)) if shares else None


def _sorted_unique(values: np.ndarray) -> np.ndarray:
    """``np.unique`` by a sort (several times faster on large uint64 arrays than numpy 2's hashing unique)."""
    values = np.sort(values)
    return values[np.concatenate([[True], values[1:] != values[:-1]])] if len(values) else values


def default_copy_window(tokenizer_kind: str) -> int:
    """:data:`CHARACTER_WINDOW` for byte and protein tokenizers, :data:`SUBWORD_WINDOW` for the others."""
    return CHARACTER_WINDOW if tokenizer_kind in ("byte", "protein") else SUBWORD_WINDOW


# ------------------------------------------------------------------------------------------ robust gen-PPL summaries

def trimmed_mean(values: Sequence[float], proportion: float = TRIM) -> float:
    """Mean after cutting ``int(proportion * n)`` values from each end of the sorted values (as
    ``scipy.stats.trim_mean``)."""
    ordered = np.sort(np.asarray(values, dtype=np.float64))
    cut = int(proportion * len(ordered))
    return float(ordered[cut:len(ordered) - cut].mean())


def ppl_summary(sample_nll: Sequence[float], sample_tokens: Sequence[int]) -> dict[str, float | None]:
    """``median`` and ``trimmed`` (:func:`trimmed_mean`, :data:`TRIM`) of the per-sample gen-PPLs
    ``exp(NLL_i / tokens_i)`` over the samples with a scored token."""
    ppls = [math.exp(nll / n) for nll, n in zip(sample_nll, sample_tokens) if n > 0]
    if not ppls:
        return {"median": None, "trimmed": None}
    return {"median": float(np.median(ppls)), "trimmed": trimmed_mean(ppls)}


# --------------------------------------------------------------------------------------------------------- table

QUALITY_COLUMNS = (("rep-n tokens (1/2/3/4)", tuple(f"rep_tokens_{n}" for n in REPETITION_NS), ".3f", 1.0),
                   ("rep-n words (1/2/3/4)", tuple(f"rep_words_{n}" for n in REPETITION_NS), ".3f", 1.0),
                   ("distinct-n (2/3/4)", tuple(f"distinct_{n}" for n in DISTINCT_NS), ".3f", 1.0),
                   ("copy %", ("copy_rate",), ".1f", 100.0))
"""The table columns of :mod:`.quality`: header, the metrics of its cell (joined by /), format, scale."""


def quality_notes(headers: set[str], indexes: Sequence[dict[str, Any]]) -> list[str]:
    """The table notes saying what the :data:`QUALITY_COLUMNS` with these ``headers`` measure; ``indexes``: the
    copy indexes the rows were scored against (:meth:`CopyIndex.describe`)."""
    lines = []
    if headers & {"rep-n tokens (1/2/3/4)", "rep-n words (1/2/3/4)"}:
        lines.append("- rep-n (n = 1/2/3/4): share of a sample's n-grams that repeat an earlier n-gram of the same "
                     "sample, 1 - unique / all (Welleck et al. 2020), mean over samples (and seeds); tokens: the "
                     "sample's token ids (protein rows: its residues); words: the whitespace-separated words of its "
                     "text. 0 = no repetition.")
    if "distinct-n (2/3/4)" in headers:
        lines.append("- distinct-n (n = 2/3/4): unique n-grams of token ids (protein rows: residues) over all "
                     "n-grams, pooled over the samples of a row and seed (Li et al. 2016): low when samples repeat "
                     "one another.")
    if "copy %" in headers:
        described = "; ".join(f"k = {i['window']} tokens against {i['source']}"
                              + (f" (its first {i['tokens']:,} tokens only: a lower bound)" if i["truncated"] else "")
                              for i in indexes) or "?"
        lines.append("- copy %: mean over samples of the share of a sample's tokens (BOS/EOS/PAD/[MASK] excluded) "
                     "inside a window of k consecutive tokens found verbatim in the training split of its model's "
                     f"corpus: {described}. The held-out data row's is the rate of text the model never saw.")
    return lines
