"""Proteins: FASTA files, the built-in protein corpus file and protein sample metrics.

* :func:`read_fasta` / :func:`write_fasta` — plain or gzipped FASTA; bad records raise one clear
  :class:`~didi.errors.DataError` line, or are skipped with a counted :class:`SkippedRecordsWarning`.
* :func:`builtin_protein_fasta` / :func:`split_by_sequence` — the file behind ``--data proteins`` (Debian
  ``mmseqs2-examples``, else the ``pyhmmer`` wheel) and the split by sequence, so that copies never straddle it;
  :func:`didi.data.corpora.load_protein_corpus` turns them (or any FASTA path) into a corpus.
* :func:`protein_metrics` — entropy, amino-acid composition divergence, distinct and low-complexity fractions,
  length statistics; :func:`esmfold_scorer` / :func:`esmfold_plddt` — optional structure confidence (needs
  ESMFold weights).

The amino-acid alphabet and :class:`~didi.data.tokenizer.ProteinTokenizer` live in :mod:`didi.data.tokenizer`.
"""
from __future__ import annotations

import gzip
import hashlib
import importlib.util
import math
import re
import statistics
import warnings
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from ..errors import DataError, require
from ..runtime.checkpoint import atomic_write
from ..runtime.devices import pick_device
from .tokenizer import AMINO_ACIDS, STANDARD_AMINO_ACIDS

_INVALID_RESIDUE = re.compile(f"[^{AMINO_ACIDS}]")


def _first_invalid(sequence: str) -> tuple[int, str] | None:
    """1-based position and character of the first non-amino-acid letter of an upper-case ``sequence``."""
    match = _INVALID_RESIDUE.search(sequence)
    return None if match is None else (match.start() + 1, match.group())


# ------------------------------------------------------------------------------------------------------- FASTA

class FastaRecord(NamedTuple):
    header: str  # the header line without '>'
    sequence: str  # upper-case residues, whitespace and one trailing '*' removed


class SkippedRecordsWarning(UserWarning):
    """Emitted once per file by ``read_fasta(..., on_error="skip")``; ``skipped`` is the number of records dropped."""

    def __init__(self, message: str, skipped: int):
        super().__init__(message)
        self.skipped = skipped


def _read_lines(path: Path) -> list[str]:
    """Lines of a plain or gzip-compressed (detected from its magic bytes) UTF-8 file; any newline convention."""
    if not path.is_file():
        raise DataError(f"{path}: FASTA file not found")
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as exc:
            raise DataError(f"{path}: corrupt gzip file ({exc})") from exc
    try:
        return raw.decode("utf-8").removeprefix("\ufeff").splitlines()
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text (invalid byte at offset {exc.start})") from exc


def _raw_records(lines: list[str]) -> list[tuple[int, str | None, list[str]]]:
    """``(line number, header, sequence lines)`` per record; header ``None`` holds lines before the first '>'."""
    records: list[tuple[int, str | None, list[str]]] = []
    header: str | None = None
    start, chunk = 1, []
    for number, line in enumerate(lines, 1):
        line = line.strip()
        if line.startswith(">"):
            if header is not None or chunk:
                records.append((start, header, chunk))
            header, start, chunk = line[1:].strip(), number, []
        elif line:
            chunk.append(line)
    if header is not None or chunk:
        records.append((start, header, chunk))
    return records


def read_fasta(path: str | Path, *, on_error: str = "raise") -> list[FastaRecord]:
    """Read a protein FASTA file (``.gz`` allowed): sequences may span lines; blank lines, CRLF, lower case and
    one trailing ``*`` (stop codon, as in Prodigal/pyhmmer ``.faa`` files) are accepted.

    A record with an empty sequence or a non-amino-acid character, or text before the first ``>`` header, raises a
    DataError naming the file, record number, header and line; ``on_error="skip"`` drops such records instead and
    emits one :class:`SkippedRecordsWarning` with the count. A file without any header always raises.
    """
    require(on_error in ("raise", "skip"), "on_error", f"must be raise or skip (got {on_error!r})")
    path = Path(path)
    raw = _raw_records(_read_lines(path))
    if not any(header is not None for _, header, _ in raw):
        raise DataError(f"{path}: no FASTA header ('>' line) found" if raw else f"{path}: empty FASTA file")
    records: list[FastaRecord] = []
    problems: list[str] = []
    number = 0
    for line, header, chunk in raw:
        if header is None:
            problems.append(f"{path}: line {line}: sequence data before the first '>' header")
        else:
            number += 1
            sequence = "".join("".join(chunk).split()).upper()
            sequence = sequence[:-1] if sequence.endswith("*") else sequence
            invalid = _first_invalid(sequence)
            where = f"{path}: record {number} (>{header.split()[0] if header else ''}, line {line})"
            if not sequence:
                problems.append(f"{where}: empty sequence")
            elif invalid is not None:
                problems.append(f"{where}: invalid character {invalid[1]!r} at residue {invalid[0]} "
                                f"(expected amino-acid letters {AMINO_ACIDS})")
            else:
                records.append(FastaRecord(header, sequence))
        if problems and on_error == "raise":
            raise DataError(problems[0])
    if not records:
        raise DataError(f"{path}: no valid FASTA record ({len(problems)} skipped; first: {problems[0]})")
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        warnings.warn(SkippedRecordsWarning(f"{path}: skipped {len(problems)} of {len(raw)} FASTA records: "
                                            f"{problems[0]}{more}", len(problems)), stacklevel=2)
    return records


def write_fasta(path: str | Path, sequences: Sequence[str], headers: Sequence[str] | None = None,
                width: int | None = 60) -> None:
    """Write ``sequences`` as FASTA, atomically (gzip-compressed if ``path`` ends in ``.gz``).

    Headers default to ``seq_1, seq_2, ...``; sequence lines are wrapped at ``width`` residues (``None``: one line).
    An empty sequence is written as a header alone (``read_fasta`` reports it as an empty record).
    """
    path = Path(path)
    headers = [f"seq_{i}" for i in range(1, len(sequences) + 1)] if headers is None else list(headers)
    if len(headers) != len(sequences):
        raise DataError(f"{path}: {len(headers)} FASTA headers for {len(sequences)} sequences")
    require(width is None or width >= 1, "width", f"must be >= 1 (got {width})")
    lines: list[str] = []
    for number, (header, sequence) in enumerate(zip(headers, sequences), 1):
        invalid = _first_invalid(sequence.upper())
        if invalid is not None:
            raise DataError(f"{path}: sequence {number} has invalid character {invalid[1]!r} at residue {invalid[0]}")
        if "\n" in header or "\r" in header:
            raise DataError(f"{path}: FASTA header {number} contains a line break")
        lines.append(f">{header}")
        step = width or max(len(sequence), 1)
        lines.extend(sequence[i:i + step] for i in range(0, len(sequence), step))
    data = ("\n".join(lines) + "\n").encode("utf-8")
    if path.name.endswith(".gz"):
        data = gzip.compress(data, mtime=0)
    atomic_write(path, lambda tmp: tmp.write_bytes(data))


# ------------------------------------------------------------------------------------------------------ corpus

PROTEIN_CORPUS = "proteins"
FASTA_SUFFIXES = (".fasta", ".fa", ".faa", ".fas")
MMSEQS2_EXAMPLE_DB = Path("/usr/share/doc/mmseqs2/example-data/DB.fasta.gz")
PYHMMER_PROTEINS = "tests/data/seqs/938293.PRJEB85.HG003687.faa"  # inside the installed ``pyhmmer`` package


def is_fasta_path(name: str) -> bool:
    """Whether ``--data`` names a FASTA file (``.fasta``, ``.fa``, ``.faa``, ``.fas``, optionally ``.gz``)."""
    name = str(name).lower().removesuffix(".gz")
    return name.endswith(FASTA_SUFFIXES)


def builtin_protein_fasta() -> tuple[Path, str]:
    """The file behind ``--data proteins`` and its provenance.

    Debian ``mmseqs2-examples`` (20,000 UniProtKB sequences, CC BY 4.0) if installed, else the proteins shipped in
    the PyPI ``pyhmmer`` wheel (2,100 Prodigal-predicted proteins of one proGenomes genome, MIT), which the
    ``protein`` extra installs (``pip install 'didi[protein]'``, part of ``make install``).
    """
    if MMSEQS2_EXAMPLE_DB.is_file():
        return MMSEQS2_EXAMPLE_DB, "Debian mmseqs2-examples: UniProtKB entries, CC BY 4.0"
    spec = importlib.util.find_spec("pyhmmer")  # locates the package without importing it
    if spec is not None and spec.submodule_search_locations:
        path = Path(list(spec.submodule_search_locations)[0]) / PYHMMER_PROTEINS
        if path.is_file():
            return path, "pyhmmer wheel: Prodigal-predicted proteins of proGenomes genome 938293, MIT"
    raise DataError(f"--data {PROTEIN_CORPUS}: no built-in protein corpus installed; run `pip install "
                    f"'didi[protein]'` (the pyhmmer wheel's 2,100 proteins; `make install` includes it) or "
                    f"`apt-get install mmseqs2-examples` (20,000 UniProt sequences), or pass a FASTA file as --data")


def _split_key(sequence: str, seed: int) -> bytes:
    return hashlib.blake2b(sequence.encode("utf-8"), digest_size=8, key=str(seed).encode()).digest()


def split_by_sequence(sequences: Sequence[str], valid_fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """Deterministic ``(train, valid)`` split by sequence identity.

    Distinct sequences are ordered by a seeded hash; the first ``round(valid_fraction * n_distinct)`` (at least one
    when ``valid_fraction > 0``) are held out, with all their copies. Both lists come in that hashed order, so any
    prefix is a seeded random sample.
    """
    require(0.0 <= valid_fraction < 1.0, "valid_fraction", f"must be in [0, 1) (got {valid_fraction})")
    keys = {s: _split_key(s, seed) for s in set(sequences)}
    distinct = sorted(keys, key=keys.__getitem__)
    n_valid = max(1, round(valid_fraction * len(distinct))) if valid_fraction > 0 else 0
    if n_valid >= len(distinct):
        raise DataError(f"need more than {n_valid} distinct sequences to hold out {valid_fraction:.0%} "
                        f"(got {len(distinct)})")
    held_out = set(distinct[:n_valid])
    ordered = sorted(sequences, key=keys.__getitem__)
    return [s for s in ordered if s not in held_out], [s for s in ordered if s in held_out]


# ----------------------------------------------------------------------------------------------------- metrics

# Background amino-acid composition of UniProtKB/Swiss-Prot (percent of all residues), from the Expasy release
# statistics https://web.expasy.org/docs/relnotes/relstat.html (release 2022), normalised to sum to 1.
_SWISSPROT_PERCENT = {
    "A": 8.25, "R": 5.53, "N": 4.06, "D": 5.46, "C": 1.38, "Q": 3.93, "E": 6.72, "G": 7.07, "H": 2.27, "I": 5.91,
    "L": 9.65, "K": 5.80, "M": 2.41, "F": 3.86, "P": 4.74, "S": 6.64, "T": 5.35, "W": 1.10, "Y": 2.92, "V": 6.86,
}
SWISSPROT_COMPOSITION = {aa: _SWISSPROT_PERCENT[aa] / sum(_SWISSPROT_PERCENT.values()) for aa in STANDARD_AMINO_ACIDS}

# Low complexity, after SEG (Wootton & Federhen 1993, Comput. Chem. 17:149): a window of 12 residues whose Shannon
# entropy is <= 2.2 bits (SEG's default trigger window W and complexity K1) is low-complexity. SEG's extension and
# optimisation stages are omitted: every residue of a triggering window is counted as covered.
SEG_WINDOW = 12
SEG_MAX_BITS = 2.2
# A sequence is low-complexity when more than half of it is covered: 1.0% of the UniProt sequences of
# mmseqs2-examples and 0.9% of the pyhmmer proteins are.
LOW_COMPLEXITY_COVERAGE = 0.5


def sequence_entropy(sequence: str) -> float:
    """Unigram entropy (nats) of the letters of one sequence: ``-sum_a p_a log p_a``; 0 for an empty sequence."""
    p = np.array(list(Counter(sequence).values())) / max(len(sequence), 1)
    return float((p * np.log(1 / p)).sum())


def _standard_counts(sequences: Iterable[str]) -> np.ndarray:
    """Occurrences of each of the 20 standard residues (in ``STANDARD_AMINO_ACIDS`` order) over ``sequences``."""
    counts = np.zeros(len(STANDARD_AMINO_ACIDS), dtype=np.int64)
    for sequence in sequences:
        counts += [sequence.count(aa) for aa in STANDARD_AMINO_ACIDS]
    return counts


def amino_acid_composition(sequences: Iterable[str]) -> dict[str, float]:
    """Frequency of each of the 20 standard residues over all residues of ``sequences`` (others are ignored)."""
    counts = _standard_counts(sequences)
    if counts.sum() == 0:
        raise DataError("amino-acid composition: the sequences contain no standard residue")
    return dict(zip(STANDARD_AMINO_ACIDS, (counts / counts.sum()).tolist()))


def _distribution(composition: dict[str, float]) -> np.ndarray:
    p = np.array([float(composition.get(aa, 0.0)) for aa in STANDARD_AMINO_ACIDS])
    if set(composition) - set(STANDARD_AMINO_ACIDS) or (p < 0).any() or p.sum() <= 0:
        raise DataError(f"a composition maps the 20 standard residues to non-negative frequencies (got {composition})")
    return p / p.sum()


def kl_divergence(p: dict[str, float], q: dict[str, float]) -> float:
    """``KL(p || q) = sum_a p_a log(p_a / q_a)`` in nats (inf if ``q`` lacks a residue that ``p`` has)."""
    p_, q_ = _distribution(p), _distribution(q)
    support = p_ > 0
    with np.errstate(divide="ignore"):
        return float((p_[support] * (np.log(p_[support]) - np.log(q_[support]))).sum())


def js_divergence(p: dict[str, float], q: dict[str, float]) -> float:
    """Jensen-Shannon divergence ``(KL(p || m) + KL(q || m)) / 2`` with ``m = (p + q) / 2``, in nats (<= log 2)."""
    p_, q_ = _distribution(p), _distribution(q)
    m = dict(zip(STANDARD_AMINO_ACIDS, (p_ + q_) / 2))
    return 0.5 * (kl_divergence(p, m) + kl_divergence(q, m))


def low_complexity_coverage(sequence: str, window: int = SEG_WINDOW, max_bits: float = SEG_MAX_BITS) -> float:
    """Fraction of residues lying in at least one ``window``-residue window of entropy <= ``max_bits`` bits.

    Sequences shorter than the window are not assessed (coverage 0).
    """
    n = len(sequence)
    if n < window:
        return 0.0
    _, codes = np.unique(np.frombuffer(sequence.encode("utf-32-le"), dtype=np.uint32), return_inverse=True)
    onehot = np.zeros((n + 1, codes.max() + 1), dtype=np.int32)
    onehot[np.arange(1, n + 1), codes] = 1
    cumulative = onehot.cumsum(axis=0)
    p = (cumulative[window:] - cumulative[:-window]) / window  # letter frequencies of each window
    with np.errstate(divide="ignore", invalid="ignore"):
        bits = -np.where(p > 0, p * np.log2(p), 0.0).sum(axis=1)
    starts = np.flatnonzero(bits <= max_bits + 1e-9)
    cover = np.zeros(n + 1, dtype=np.int64)  # +1 where a low window starts, -1 where it ends
    cover[starts] += 1
    cover[starts + window] -= 1
    return float((cover[:n].cumsum() > 0).mean())


def protein_metrics(sequences: Sequence[str],
                    reference_composition: dict[str, float] | None = None) -> dict[str, float]:
    """Sample-quality statistics of residue strings (upper case, as from ``decode`` or ``read_fasta``).

    * ``entropy``: mean over samples of :func:`sequence_entropy` (nats); at most ``log 20`` = 3.00 over the 20
      standard residues; 2.78 for the UniProt sequences of ``mmseqs2-examples``.
    * ``composition_kl`` = ``KL(samples || reference)`` and ``composition_js`` (nats) between the pooled residue
      composition of the samples and ``reference_composition`` (default: :data:`SWISSPROT_COMPOSITION`; pass
      ``amino_acid_composition(train_sequences)`` for the training corpus). ``nonstandard_fraction``: share of
      residues outside the 20 standard ones (X, B, Z, U, O; a left-over [MASK] decodes to X).
    * ``distinct_fraction``: distinct sequences / sequences.
    * ``low_complexity_fraction``: share of sequences with :func:`low_complexity_coverage` >
      :data:`LOW_COMPLEXITY_COVERAGE` (SEG-style windows, W = 12, K1 = 2.2 bits).
    * ``length_mean/std/min/max/median`` (population std).
    """
    if not sequences:
        raise DataError("protein metrics: no sequences")
    lengths = [len(s) for s in sequences]
    reference = SWISSPROT_COMPOSITION if reference_composition is None else reference_composition
    counts = _standard_counts(sequences)
    if counts.sum():
        composition = dict(zip(STANDARD_AMINO_ACIDS, (counts / counts.sum()).tolist()))
        kl, js = kl_divergence(composition, reference), js_divergence(composition, reference)
    else:
        kl = js = math.nan
    return {
        "num_sequences": len(sequences),
        "entropy": statistics.fmean(sequence_entropy(s) for s in sequences),
        "composition_kl": kl,
        "composition_js": js,
        "nonstandard_fraction": 1.0 - counts.sum() / sum(lengths) if sum(lengths) else 0.0,
        "distinct_fraction": len(set(sequences)) / len(sequences),
        "low_complexity_fraction": statistics.fmean(
            low_complexity_coverage(s) > LOW_COMPLEXITY_COVERAGE for s in sequences),
        "length_mean": statistics.fmean(lengths),
        "length_std": statistics.pstdev(lengths),
        "length_min": min(lengths),
        "length_max": max(lengths),
        "length_median": statistics.median(lengths),
    }


# ----------------------------------------------------------------------------------------------------- ESMFold

ESMFOLD_HF = "facebook/esmfold_v1"


def _reason(exc: Exception) -> str:
    """``TypeName: first line of the message`` (library errors can span many lines)."""
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__


def _load_esmfold(device: torch.device) -> tuple[torch.nn.Module, float]:
    """ESMFold and the factor that scales its ``plddt`` output to 0-100: transformers first, then fair-esm."""
    failures = []
    try:
        from transformers import EsmForProteinFolding

        model = EsmForProteinFolding.from_pretrained(ESMFOLD_HF)
        return model.to(device).eval(), 100.0  # the transformers port predicts pLDDT in [0, 1]
    except Exception as exc:  # noqa: BLE001 - any failure means "not available here"
        failures.append(f"transformers: {_reason(exc)}")
    try:
        import esm

        model = esm.pretrained.esmfold_v1()
        return model.to(device).eval(), 1.0  # fair-esm already scales pLDDT to 0-100
    except Exception as exc:  # noqa: BLE001
        failures.append(f"fair-esm: {_reason(exc)}")
    raise DataError(f"ESMFold is not available ({'; '.join(failures)}): `pip install transformers` with the "
                    f"{ESMFOLD_HF} weights in the Hugging Face cache, or `pip install 'fair-esm[esmfold]'` "
                    f"(needs openfold) with its weights in the torch hub cache")


def _require_residues(sequences: Sequence[str]) -> None:
    empty = [i + 1 for i, s in enumerate(sequences) if not s]
    if empty:
        raise DataError(f"ESMFold: sequence {empty[0]} is empty")


def esmfold_scorer(device: str | torch.device = "auto", batch_size: int = 4) -> Callable[[Sequence[str]], list[float]]:
    """Load ESMFold once; the returned function gives ESMFold's mean pLDDT (0-100) of each sequence: per-atom
    confidence averaged over the predicted atoms, as fair-esm's ``mean_plddt``. Optional evaluator: needs ESMFold
    and its weights (a GPU in practice)."""
    model, scale = _load_esmfold(pick_device(str(device)))

    def score(sequences: Sequence[str]) -> list[float]:
        _require_residues(sequences)
        scores: list[float] = []
        for start in range(0, len(sequences), batch_size):
            output = model.infer(list(sequences[start:start + batch_size]))  # runs under torch.no_grad
            exists = output["atom37_atom_exists"]
            mean = (output["plddt"] * exists).sum(dim=(1, 2)) / exists.sum(dim=(1, 2))
            scores.extend((scale * mean).float().cpu().tolist())
        return scores

    return score


def esmfold_plddt(sequences: Sequence[str], device: str = "auto", batch_size: int = 4) -> list[float]:
    """ESMFold's mean pLDDT (0-100) of each sequence (see :func:`esmfold_scorer`, which loads the model once)."""
    _require_residues(sequences)
    return esmfold_scorer(device, batch_size)(sequences)
