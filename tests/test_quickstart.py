"""`didi quickstart` end to end at toy sizes: every stage runs, the table is printed, a re-run reuses the runs."""
from __future__ import annotations

import json

from didi.cli import main


def test_quickstart_runs_every_stage_and_resumes(tmp_path, corpus_file, capsys):
    out = tmp_path / "qs"
    argv = ["quickstart", "--out", str(out), "--data", str(corpus_file), "--seq-len", "32", "--vocab-size", "300",
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
