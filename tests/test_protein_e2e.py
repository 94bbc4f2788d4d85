"""Proteins end to end through the ``didi`` command: train, distill, sample FASTA, train-ar, eval; bad FASTA input."""
from __future__ import annotations

import json
import math
import random
import re
import warnings

import numpy as np
import pytest
import torch

from didi.cli import main
from didi.data.corpora import DataConfig, prepare_data
from didi.data.protein import SWISSPROT_COMPOSITION, SkippedRecordsWarning, read_fasta, write_fasta
from didi.data.tokenizer import AMINO_ACIDS, STANDARD_AMINO_ACIDS, ProteinTokenizer
from didi.pipelines.load import load

SEQ_LEN = 32
TINY = ["--hidden-size", "32", "--n-blocks", "2", "--n-heads", "2", "--cond-dim", "16", "--seq-len", str(SEQ_LEN),
        "--global-batch-size", "8", "--eval-every", "0", "--eval-batches", "1", "--progress", "false",
        "--warmup-steps", "2", "--lr", "3e-3", "--device", "cpu"]


def protein_families(n: int = 160, seed: int = 0) -> list[str]:
    """``n`` sequences from 8 families: each a random ancestor (natural composition, 8-44 residues, starting with
    M) with 10% of its residues substituted; about a third are longer than a 32-token block holds."""
    rng = random.Random(seed)
    letters, weights = zip(*SWISSPROT_COMPOSITION.items())
    ancestors = ["M" + "".join(rng.choices(letters, weights, k=rng.randint(7, 43))) for _ in range(8)]
    sequences = []
    for i in range(n):
        ancestor = ancestors[i % len(ancestors)]
        sequences.append("".join(rng.choice(STANDARD_AMINO_ACIDS) if j and rng.random() < 0.1 else residue
                                 for j, residue in enumerate(ancestor)))
    return sequences


def table_rows(stdout: str) -> list[list[str]]:
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in stdout.splitlines()
            if line.startswith("| ")]


def test_protein_pipeline_end_to_end(tmp_path, capsys):
    fasta = tmp_path / "families.fa.gz"
    sequences = protein_families()
    write_fasta(fasta, sequences, [f"fam{i % 8}_{i} synthetic" for i in range(len(sequences))])
    teacher, student, ar = tmp_path / "teacher", tmp_path / "student", tmp_path / "ar"

    # train: the corpus is routed by its file name, the tokenizer and crop packing follow from it
    assert main(["train", "--out", str(teacher), "--data", str(fasta), "--steps", "20", *TINY]) == 0
    config = json.loads((teacher / "config.json").read_text())
    assert config["tokenizer"]["type"] == "protein" and config["model"]["vocab_size"] == 29
    assert config["data"]["packing"] == "auto"
    tok = ProteinTokenizer()
    prepared = prepare_data(DataConfig(**config["data"]), tokenizer=tok, progress=False)
    blocks = np.asarray(prepared.train.array)
    assert prepared.stats["train"]["blocks"] == prepared.stats["train"]["documents"] == len(blocks)
    assert 0 < prepared.stats["train"]["cropped"] < len(blocks)
    assert (blocks[:, 0] == tok.bos_id).all() and (blocks != tok.mask_id).all()
    for row in blocks:
        text = tok.decode(row)
        assert text in sequences or (len(text) == SEQ_LEN - 1 and any(s.startswith(text) for s in sequences))
        tail = row[1 + len(text):]
        if len(text) < SEQ_LEN - 1:
            assert tail[0] == tok.eos_id and (tail[1:] == tok.pad_id).all()
    metrics = [json.loads(line) for line in (teacher / "metrics.jsonl").read_text().splitlines()]
    assert all(math.isfinite(m["loss"]) for m in metrics) and metrics[-1]["loss"] < math.log(29)

    # distill a few DiDi-Instruct steps from it
    assert main(["distill", "--teacher", str(teacher), "--out", str(student), "--steps", "2", "--batch-size", "2",
                 "--group-size", "2", "--warmup-steps", "1", "--save-every", "2", "--progress", "false",
                 "--device", "cpu"]) == 0
    assert json.loads((student / "config.json").read_text())["data"] == config["data"]

    # sample: FASTA on stdout and in the file, valid residues only
    capsys.readouterr()
    out = tmp_path / "samples.fasta"
    assert main(["sample", "--model", str(student), "--nfe", "8", "--num-samples", "6", "--batch-size", "3",
                 "--device", "cpu", "--out", str(out)]) == 0
    headers = re.findall(r"^>(.*)$", capsys.readouterr().out, flags=re.M)
    assert len(headers) == 6 and headers[0].startswith("sample_0 nfe=") and "steps=8 length=" in headers[0]
    with warnings.catch_warnings():  # an empty sample (EOS right after BOS) is a header alone, skipped here
        warnings.simplefilter("ignore", SkippedRecordsWarning)
        records = read_fasta(out, on_error="skip")
    assert [r.header for r in records] == [h for h in headers if not h.endswith("length=0")]
    assert all(set(r.sequence) <= set(AMINO_ACIDS) and len(r.sequence) <= SEQ_LEN for r in records)

    # the AR evaluator trained on the same corpus, then eval with the protein metrics
    assert main(["train-ar", "--out", str(ar), "--data", str(fasta), "--steps", "20", *TINY]) == 0
    report = tmp_path / "eval.json"
    capsys.readouterr()
    assert main(["eval", "--model", str(teacher), "--model", str(student), "--nfe", "4,8", "--evaluator", str(ar),
                 "--num-samples", "8", "--repeats", "1", "--warmup", "0", "--eval-blocks", "4", "--device", "cpu",
                 "--json", str(report)]) == 0
    header, *rows = table_rows(capsys.readouterr().out)
    assert header[header.index("entropy") + 1:header.index("likelihood")] == ["length", "AA-comp JS", "distinct",
                                                                              "low-complexity"]
    assert [(r[0], r[3]) for r in rows] == [("teacher", "4"), ("teacher", "8"), ("student", "4"), ("student", "8"),
                                            ("ar (evaluator)", "—"), ("families.fa.gz (validation)", "—")]
    result = json.loads(report.read_text())
    assert "validation sequences of" in result["meta"]["protein_reference"]["source"]
    for row in result["rows"]:
        protein = row["protein"]
        assert protein["num_sequences"] == 8 and 0.0 <= protein["distinct_fraction"] <= 1.0
        assert 0.0 <= protein["low_complexity_fraction"] <= 1.0 and 0.0 <= protein["composition_js"] <= math.log(2)
        assert 0 <= protein["length_min"] <= protein["length_mean"] <= protein["length_max"] <= SEQ_LEN
        assert row["entropy"] == protein["entropy"] <= math.log(20)
        assert 1.0 < row["gen_ppl"]["ppl"] < 100.0
    natural = result["rows"][-1]
    assert natural["kind"] == "data" and natural["protein"]["composition_js"] < 0.1


def test_diffusion_model_learns_where_proteins_end(tmp_path):
    """PAD is an ordinary token: after a clean EOS, the trained teacher predicts PAD at every masked position
    (so its samples end there)."""
    fasta = tmp_path / "short.fasta"
    write_fasta(fasta, [s[:length] for s, length in zip(protein_families(), [6, 9, 12, 15] * 40)])
    run = tmp_path / "teacher"
    assert main(["train", "--out", str(run), "--data", str(fasta), "--steps", "200", *TINY]) == 0
    model = load(run, device="cpu")
    tok = model.tokenizer
    x = torch.full((1, SEQ_LEN), model.mask_index)
    x[0, :9] = torch.tensor([tok.bos_id, *tok.encode("MKVLAAG"), tok.eos_id])
    with torch.no_grad():
        probs = model.denoiser(x, torch.zeros(1)).float().softmax(-1)[0, 9:]
    assert (probs.argmax(-1) == tok.pad_id).all() and probs[:, tok.pad_id].mean() > 0.9


@pytest.mark.parametrize("text, message", [
    (">p1\nMKVL\n>p2 bad\nMKV1L\n", r"record 2 \(>p2, line 3\): invalid character '1' at residue 4"),
    (">p1\nMKVL\n>p2\n\n>p3\nAC\n", r"record 2 \(>p2, line 3\): empty sequence"),
    ("MKVLLA\nACDE\n", r"no FASTA header \('>' line\) found"),
    (None, "FASTA file not found"),
])
def test_bad_fasta_is_a_one_line_error(tmp_path, capsys, text, message):
    fasta = tmp_path / "bad.faa"
    if text is not None:
        fasta.write_text(text)
    assert main(["train", "--out", str(tmp_path / "run"), "--data", str(fasta), "--steps", "1", *TINY]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and re.match(rf"didi: error: {re.escape(str(fasta))}: .*{message}", err[0])
    assert not (tmp_path / "run" / "config.json").exists()
