"""`didi quickstart` end to end at toy sizes: every stage runs, the table is printed, a re-run reuses the runs."""
from __future__ import annotations

import json

from didi.cli import main


def test_quickstart_runs_every_stage_and_resumes(tmp_path, corpus_file, capsys):
    out = tmp_path / "qs"
    argv = ["quickstart", "--regime", "bpe", "--out", str(out), "--data", str(corpus_file), "--seq-len", "32",
            "--vocab-size", "300",
            "--teacher-steps", "3", "--distill-steps", "2", "--ar-steps", "2", "--num-samples", "1",
            "--eval-samples", "2", "--device", "cpu"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    for header in ("teacher @ 1024 NFE", "teacher @ 16 NFE", "student @ 16 NFE"):
        assert header in printed
    report = json.loads((out / "eval.json").read_text())
    rows = {(r["model"], r["nfe"]) for r in report["rows"]}
    assert rows == {("teacher", 16), ("teacher", 1024), ("student", 16), ("student", 1024), ("ar", None),
                    ("data (play.txt validation)", None)}  # the held-out reference row
    assert all(r["gen_ppl"]["ppl"] > 1 for r in report["rows"])
    assert (out / "eval.png").stat().st_size > 10_000
    student = json.loads((out / "student" / "config.json").read_text())
    assert student["kind"] == "didi" and student["extra"]["distill"]["lr"] == 1e-4

    assert main(argv) == 0  # a second run reuses the three finished runs
    again = capsys.readouterr().out
    assert again.count("is complete, reusing it") == 3


def test_quickstart_markov_regime_scores_against_the_chain(tmp_path, capsys):
    """--regime markov: the byte teacher of the synthetic Markov language, a student distilled with the markov
    settings, samples at 128 and 8 NFE and the table of exact metrics (no AR evaluator)."""
    out = tmp_path / "qm"
    argv = ["quickstart", "--regime", "markov", "--out", str(out), "--seq-len", "16", "--teacher-steps", "3",
            "--distill-steps", "2", "--num-samples", "1", "--eval-samples", "4", "--device", "cpu"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    for header in ("teacher @ 128 NFE", "teacher @ 8 NFE", "student @ 8 NFE", "evaluating against the chain"):
        assert header in printed
    assert "invalid" in printed  # the exact metrics' columns
    assert not (out / "ar").exists()
    report = json.loads((out / "eval.json").read_text())
    rows = [r for r in report["rows"] if r["model"] in ("teacher", "student")]
    assert {(r["model"], r["nfe"]) for r in rows} == {("teacher", 8), ("teacher", 128), ("student", 8),
                                                       ("student", 128)}
    assert all(0.0 <= r["markov"]["invalid_rate"] <= 1.0 for r in rows)
    teacher = json.loads((out / "teacher" / "config.json").read_text())
    student = json.loads((out / "student" / "config.json").read_text())
    assert teacher["model"]["hidden_size"] == 128
    assert student["extra"]["distill"]["disc_window"] == 1 and student["extra"]["distill"]["steps"] == 2


def test_quickstart_bytes_regime_distils_a_byte_teacher_and_scores_it_under_a_byte_ar(tmp_path, corpus_file,
                                                                                       capsys):
    """--regime bytes: a byte-tokenizer teacher of hidden size 128, a student with the markov settings, samples at
    128 and 8 NFE, and gen-PPL under an AR evaluator trained on the same bytes."""
    out = tmp_path / "qb"
    argv = ["quickstart", "--regime", "bytes", "--out", str(out), "--data", str(corpus_file), "--seq-len", "16",
            "--teacher-steps", "3", "--distill-steps", "2", "--ar-steps", "2", "--num-samples", "1",
            "--eval-samples", "2", "--device", "cpu"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    for header in ("teacher @ 128 NFE", "teacher @ 8 NFE", "student @ 8 NFE", "training an AR evaluator"):
        assert header in printed
    teacher = json.loads((out / "teacher" / "config.json").read_text())
    student = json.loads((out / "student" / "config.json").read_text())
    ar = json.loads((out / "ar" / "config.json").read_text())
    assert teacher["tokenizer"]["type"] == ar["tokenizer"]["type"] == "byte"
    assert teacher["model"]["hidden_size"] == 128 and teacher["model"]["vocab_size"] == 258
    assert student["extra"]["distill"]["disc_window"] == 1 and student["extra"]["distill"]["steps"] == 2
    report = json.loads((out / "eval.json").read_text())
    rows = {(r["model"], r["nfe"]) for r in report["rows"] if r["model"] in ("teacher", "student")}
    assert rows == {("teacher", 8), ("teacher", 128), ("student", 8), ("student", 128)}
    assert all(r["gen_ppl"]["ppl"] > 1 for r in report["rows"])
