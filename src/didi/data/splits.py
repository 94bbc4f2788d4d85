"""How a corpus without a natural split is split into training and validation documents, and whether one run's
training data includes text another run held out.

The generic rule (:func:`split_documents`): a seeded choice of ``valid_fraction`` of the documents
(:func:`holdout`), or, when the corpus has too few documents for that (a single ``.txt`` file), the last
``valid_fraction`` of each document's text cut at a line start (:func:`text_tails`). The seed is the *split seed*
(``DataConfig.seed``, ``--split-seed``), never the training seed, so that runs trained with different seeds hold out
the same documents; :func:`held_out_overlap` checks two runs' recorded settings.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .protein import PROTEIN_CORPUS, is_fasta_path

VALID_FRACTION = 0.05
"""The default ``valid_fraction`` (and the value of runs saved before it was recorded)."""

NATURAL_SPLITS: set[str] = set()
"""Registered corpora whose validation documents are fixed (``register_corpus(..., natural_split=True)``)."""


def holdout(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Document indices ``(train, valid)``: a seeded choice of ``int(n * fraction)`` documents, in corpus order."""
    valid = np.sort(np.random.default_rng(seed).choice(n, int(n * fraction), replace=False))
    keep = np.ones(n, dtype=bool)
    keep[valid] = False
    return np.flatnonzero(keep), valid


def text_tails(documents: Sequence[str], fraction: float) -> tuple[list[str], list[str]]:
    """Split every document at a line start near ``1 - fraction`` of its length: heads train, tails validate."""
    train, valid = [], []
    for text in documents:
        cut = int(len(text) * (1.0 - fraction))
        cut = text.rfind("\n", 0, cut) + 1 or cut
        train.append(text[:cut])
        valid.append(text[cut:])
    return [t for t in train if t.strip()], [t for t in valid if t.strip()]


def split_documents(documents: Sequence[str], fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """The generic train/validation rule for corpora without a natural split (see the module docstring)."""
    if 0 < len(documents) * fraction < 1:
        return text_tails(documents, fraction)
    train, valid = holdout(len(documents), fraction, seed)
    return [documents[i] for i in train], [documents[i] for i in valid]


def held_out_overlap(evaluator: Any, model: Any) -> str | None:
    """Whether ``evaluator`` (e.g. the AR model of ``didi eval``) was trained on text that ``model`` holds out for
    validation: a one-line reason when it was (or, for a Hugging Face dataset, may have been), ``None`` when it
    was not or nothing is known. Both are run configs (:class:`didi.runtime.checkpoint.RunConfig`, or anything with
    their ``data`` dict).

    An overlap needs the same corpus (``data``; local paths compared resolved) and a split that moves with the
    settings: the seeded holdout of local text/JSONL, FASTA and Hugging Face datasets without a ``validation``
    split differs with the split seed or ``valid_fraction``; the text tails of a single ``.txt`` file with
    ``valid_fraction``. Natural splits (``shakespeare``, ``markov``, OpenWebText, corpora registered with
    ``natural_split``) never overlap; an evaluator trained with ``valid_fraction`` 0 saw every document. A
    directory or ``.jsonl`` file is taken to have enough documents for the seeded holdout (with fewer than
    ``1 / valid_fraction`` it is split by text tails instead, and a seed difference is reported needlessly).
    """
    ours, theirs = _data_settings(evaluator), _data_settings(model)
    if ours is None or theirs is None or _corpus_key(ours["data"]) != _corpus_key(theirs["data"]):
        return None
    rule = _split_rule(theirs["data"])
    mine, held = float(ours["valid_fraction"]), float(theirs["valid_fraction"])
    if rule == "natural" or held == 0:
        return None
    corpus = theirs["data"]
    if mine == 0:
        return (f"the evaluator was trained on all of {corpus} (valid_fraction 0), the model's held-out "
                f"{held:.0%} included")
    if rule == "tails":
        if mine >= held:
            return None
        return (f"{corpus} is split by text position: the evaluator trained on the first {1 - mine:.0%} of the text, "
                f"the model holds out the last {held:.0%}")
    if (int(ours["seed"]), mine) == (int(theirs["seed"]), held):
        return None
    caveat = " (unless the dataset has its own validation split)" if rule == "dataset" else ""
    return (f"{corpus} was split differently{caveat}: evaluator split seed {ours['seed']}, valid_fraction {mine:g}; "
            f"model split seed {theirs['seed']}, valid_fraction {held:g}: the evaluator trained on documents the "
            "model holds out")


def _data_settings(run: Any) -> dict[str, Any] | None:
    """The split settings of a run config's ``data`` (defaults for fields it predates), or ``None``."""
    data = run.get("data") if isinstance(run, dict) else getattr(run, "data", None)
    if not isinstance(data, dict) or not data.get("data"):
        return None
    return {"data": data["data"], "seed": data.get("seed", 0),
            "valid_fraction": data.get("valid_fraction", VALID_FRACTION)}


def _corpus_key(data: str) -> str:
    """One name per corpus: registered names as they are, local paths resolved, Hugging Face names without
    ``hf:``."""
    spec = data[3:] if data.startswith("hf:") else data
    local = Path(spec).expanduser()
    return str(local.resolve()) if local.exists() else spec


def _split_rule(data: str) -> str:
    """``natural``, ``seeded`` (a seeded holdout), ``tails`` (a single text file) or ``dataset`` (a Hugging Face
    dataset: seeded unless it has its own validation split, which its name does not tell)."""
    if data in NATURAL_SPLITS:
        return "natural"
    if is_fasta_path(data) or data == PROTEIN_CORPUS:
        return "seeded"
    spec = data[3:] if data.startswith("hf:") else data
    local = Path(spec).expanduser()
    if not data.startswith("hf:") and local.exists():
        return "tails" if local.is_file() and local.suffix == ".txt" else "seeded"
    if spec.partition(":")[0].split("/")[-1].lower() == "openwebtext" and not local.exists():
        return "natural"
    return "dataset"
