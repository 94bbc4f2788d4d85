"""A synthetic language with a known distribution: a sparse first-order Markov chain over letters.

Every sample's exact log-likelihood is computable, so the errors of a few-step sampler can be counted without a
learned evaluator. The chain (``MarkovLanguage.build``) is generated deterministically from a seed:

* ``num_states`` letters (``a-z`` then ``A-Z``), each with ``num_successors`` allowed successors: one on a random
  Hamiltonian cycle (so the chain is irreducible) and the others drawn at random; the transition weights of a
  letter are ``Dirichlet(concentration)``;
* documents start in the stationary distribution and follow the chain.

Metrics on generated text (:func:`markov_metrics`), over the letter-to-letter transitions of each sample (other
characters, e.g. the end-of-text token, split a sample into runs):

* invalid-transition rate: the share of transitions the chain gives probability 0;
* NLL per transition: ``-log T(a, b)`` averaged over the valid transitions (invalid ones are counted apart);
* empirical conditional entropy ``H(X_{i+1} | X_i)`` of the pooled transition counts, to compare with the chain's
  entropy rate.
"""
from __future__ import annotations

import json
import string
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ALPHABET = string.ascii_lowercase + string.ascii_uppercase

MARKOV_CORPUS = {"language": {"seed": 0, "num_states": 48, "num_successors": 3, "concentration": 4.0},
                 "document_length": 2000, "train_documents": 1500, "valid_documents": 80, "train_seed": 1,
                 "valid_seed": 2, "version": 1}
"""The registered ``--data markov`` corpus: 3 M training characters in 2,000-character documents."""


@dataclass
class MarkovLanguage:
    """Transition matrix ``T`` (S, S) over ``letters`` and its stationary distribution."""

    letters: str
    transitions: np.ndarray

    @classmethod
    def build(cls, seed: int = 0, num_states: int = 48, num_successors: int = 3, concentration: float = 4.0
              ) -> MarkovLanguage:
        if not 2 <= num_states <= len(ALPHABET):
            raise ValueError(f"num_states must be in [2, {len(ALPHABET)}] (got {num_states})")
        if not 1 <= num_successors <= num_states:
            raise ValueError(f"num_successors must be in [1, {num_states}] (got {num_successors})")
        rng = np.random.default_rng(seed)
        cycle = rng.permutation(num_states)
        next_on_cycle = np.empty(num_states, dtype=np.int64)
        next_on_cycle[cycle] = np.roll(cycle, -1)
        transitions = np.zeros((num_states, num_states))
        for a in range(num_states):
            others = np.setdiff1d(np.arange(num_states), [next_on_cycle[a]])
            successors = np.concatenate([[next_on_cycle[a]], rng.choice(others, num_successors - 1, replace=False)])
            transitions[a, successors] = rng.dirichlet([concentration] * num_successors)
        return cls(ALPHABET[:num_states], transitions)

    @property
    def num_states(self) -> int:
        return len(self.letters)

    def stationary(self) -> np.ndarray:
        """The stationary distribution (left eigenvector of ``T`` for eigenvalue 1)."""
        values, vectors = np.linalg.eig(self.transitions.T)
        p = np.real(vectors[:, np.argmin(np.abs(values - 1.0))])
        return p / p.sum()

    def entropy_rate(self) -> float:
        """``H = -Σ_a π(a) Σ_b T(a,b) log T(a,b)`` in nats per transition."""
        t = self.transitions
        row_entropy = -np.where(t > 0, t * np.log(np.where(t > 0, t, 1.0)), 0.0).sum(1)
        return float(self.stationary() @ row_entropy)

    def generate(self, num_documents: int, length: int, seed: int = 0) -> list[str]:
        """``num_documents`` strings of ``length`` letters, each started from the stationary distribution."""
        rng = np.random.default_rng(seed)
        cumulative = np.cumsum(self.transitions, axis=1)
        docs = []
        state = rng.choice(self.num_states, size=num_documents, p=self.stationary())
        out = np.empty((num_documents, length), dtype=np.int64)
        for i in range(length):
            out[:, i] = state
            u = rng.random(num_documents)
            state = np.minimum((cumulative[state] < u[:, None]).sum(1), self.num_states - 1)
        letters = np.frombuffer(self.letters.encode(), dtype=np.uint8)
        for row in out:
            docs.append(letters[row].tobytes().decode())
        return docs

    def describe(self) -> str:
        successors = int((self.transitions > 0).sum(1).max())
        return (f"{self.num_states} letters, {successors} successors each, entropy rate "
                f"{self.entropy_rate():.3f} nats")

    def to_json(self) -> dict:
        return {"letters": self.letters, "transitions": self.transitions.tolist(),
                "entropy_rate": self.entropy_rate()}

    @classmethod
    def from_json(cls, data: dict) -> MarkovLanguage:
        return cls(data["letters"], np.asarray(data["transitions"], dtype=np.float64))

    def save(self, path: Path) -> None:
        Path(path).write_text(json.dumps(self.to_json()))

    @classmethod
    def load(cls, path: Path) -> MarkovLanguage:
        return cls.from_json(json.loads(Path(path).read_text()))


def letter_codes(language: MarkovLanguage, rows: Iterable[bytes | str | Sequence[int]]) -> list[np.ndarray]:
    """Each row as letter indices (-1 for anything else): text, UTF-8 bytes, or byte-tokenizer ids (ids >= 256,
    i.e. end-of-text and [MASK], are not letters)."""
    lookup = np.full(512, -1, dtype=np.int64)
    lookup[np.frombuffer(language.letters.encode(), dtype=np.uint8)] = np.arange(language.num_states)
    out = []
    for row in rows:
        if isinstance(row, str):
            row = row.encode("utf-8", "replace")
        ids = np.frombuffer(row, dtype=np.uint8).astype(np.int64) if isinstance(row, bytes) else np.asarray(row)
        out.append(lookup[np.clip(ids, 0, 511)])
    return out


def transition_counts(language: MarkovLanguage, rows: Iterable[bytes | str | Sequence[int]]) -> np.ndarray:
    """(S, S) counts of adjacent letter pairs in ``rows`` (see :func:`letter_codes`); a non-letter breaks a run."""
    counts = np.zeros((language.num_states, language.num_states), dtype=np.int64)
    for codes in letter_codes(language, rows):
        a, b = codes[:-1], codes[1:]
        keep = (a >= 0) & (b >= 0)
        np.add.at(counts, (a[keep], b[keep]), 1)
    return counts


def sample_transition_counts(language: MarkovLanguage, rows: Iterable[bytes | str | Sequence[int]]) -> np.ndarray:
    """(N, S, S): the :func:`transition_counts` of each row on its own (their sum is the pooled counts)."""
    out = [transition_counts(language, [row]) for row in rows]
    return np.stack(out) if out else np.zeros((0, language.num_states, language.num_states), dtype=np.int64)


def markov_metrics(language: MarkovLanguage, rows: Iterable[bytes | str | Sequence[int]]) -> dict[str, float]:
    """Invalid-transition rate, NLL per valid transition, empirical ``H(X_{i+1}|X_i)`` and the chain's rate.

    ``H(X_{i+1}|X_i) = -Σ_ab c(a,b)/N · log(c(a,b)/c(a,·))`` over the pooled counts ``c`` of all rows. Invalid
    transitions raise it (they are extra outcomes); a sampler that collapses onto few paths lowers it.
    """
    return metrics_from_counts(language, transition_counts(language, rows))


def metrics_from_counts(language: MarkovLanguage, counts: np.ndarray) -> dict[str, float]:
    """:func:`markov_metrics` of pooled (S, S) transition counts (e.g. the sum of per-sample
    :func:`transition_counts`)."""
    counts = np.asarray(counts).astype(np.float64)
    total = counts.sum()
    t = language.transitions
    valid = t > 0
    invalid = counts[~valid].sum()
    nll = -(counts[valid] * np.log(t[valid])).sum() / max(1.0, counts[valid].sum())
    joint = counts / max(1.0, total)
    row = joint.sum(1, keepdims=True)
    cond = np.where(joint > 0, joint / np.where(row > 0, row, 1.0), 1.0)
    conditional_entropy = float(-(joint * np.log(cond)).sum())
    return {"invalid_rate": float(invalid / max(1.0, total)), "nll_per_transition": float(nll),
            "conditional_entropy": conditional_entropy, "chain_entropy_rate": language.entropy_rate(),
            "transitions": float(total)}
