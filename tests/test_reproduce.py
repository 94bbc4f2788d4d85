"""benchmarks/reproduce.py --smoke: the whole reproduction pipeline (teacher, AR evaluator, DiDi-Instruct student,
evaluation with both samplers, conditional rows, ablation, results page and plot) end to end on a synthetic corpus,
in seconds; then the markov regime (exact metrics, two distillation seeds) beside it."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_reproduce_smoke_writes_results_and_plot(tmp_path):
    command = [sys.executable, str(ROOT / "benchmarks" / "reproduce.py"), "--smoke", "--ablation", "--out",
               str(tmp_path)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = (tmp_path / "results.md").read_text()
    rows = [line.split(" | ") for line in text.splitlines() if line.startswith("| ") and " | ancestral" in line
            or line.startswith("| ") and " | rgas" in line or line.startswith("| AR |")]
    labels = {(r[0].strip("| "), r[1]) for r in rows}
    assert labels == {("teacher", "ancestral"), ("student", "ancestral"), ("student", "rgas"),
                      ("AR", "autoregressive")}, labels
    assert "## Cumulative ablation" in text and "+ Guided inference (RGAS)" in text
    conditional = text.split("## Conditional generation (8-token prefixes)")[1]
    assert [line.split(" | ")[:3] for line in conditional.splitlines() if line.startswith("| ")][1:] == [
        ["| teacher", "ancestral", "4"], ["| student", "ancestral", "4"], ["| AR", "autoregressive", "—"]]
    assert "Command: `python benchmarks/reproduce.py --smoke --ablation`" in text
    assert (tmp_path / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    header = next(line for line in text.splitlines() if line.startswith("| model | sampler | NFE | calls made"))
    assert "gen-PPL (T = 1)" in header and "gen-PPL @ entropy " in header and "MAUVE" in header
    assert "speed-up vs teacher@8 (per-sample latency, batch 16)" in header  # one batch size for every row
    main_rows = {(r[0].strip("| "), r[1], r[2]): r[5] for r in rows if len(r) == 13}  # gen-PPL at T = 1
    assert " ± " in main_rows["teacher", "ancestral", "4"] and " ± " in main_rows["student", "ancestral", "4"]
    assert " [" in main_rows["teacher", "ancestral", "8"]  # one seed: a bootstrap interval
    assert any(line.startswith("| data | n/a | — |") for line in text.splitlines())  # the held-out data row
    assert "## Temperature sweeps" in text and "T = 0.5: gen-PPL / entropy" in text
    saved = json.loads((tmp_path / "results.json").read_text())
    rgas = [r for r in saved["rows"] if r["sampler"] == "rgas"]
    assert rgas and all(sum(r["extra_calls"]["discriminator"]) > 0 for r in rgas)
    assert [r["generated_tokens"] for r in saved["conditional_rows"]] == [32 - 1 - 8] * 3
    assert all(saved["wall_clock_s"][stage] > 0 for stage in ("teacher", "ar", "student"))
    assert saved["target_entropy"]["value"] == next(r["entropy"] for r in saved["rows"] if r["kind"] == "data")
    assert {(f["model"], f["nfe"]) for f in saved["frontiers"]} == {("teacher", 4), ("student", 4), ("ar", None)}
    assert {r["temperature"] for r in saved["rows"]} == {0.5, 1.0, None}
    assert all(r["seeds"] == [0, 1] for r in saved["rows"] if r["temperature"] == 1.0 and r["sampler"] == "ancestral"
               and r["nfe"] == 4)
    assert saved["meta"]["mauve"]["features"].endswith("(evaluator: mean-pooled last hidden state)")
    assert all(r["mauve"] is not None for r in saved["rows"] if r["kind"] != "data")

    # a second run reuses every trained model and every saved evaluation: same table, nothing retrained
    again = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and "distill:" not in again.stderr and "[didi eval]" not in again.stderr
    table = [line for line in text.splitlines() if line.startswith("| ")]
    assert [line for line in (tmp_path / "results.md").read_text().splitlines() if line.startswith("| ")] == table

    # new weights for the student (as after retraining it): its rows are evaluated again, the teacher's are not
    weights = tmp_path / "student" / "model.safetensors"
    os.utime(weights, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns + 10**9))
    third = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert third.returncode == 0
    assert "[didi eval] student:" in third.stderr and "[didi eval] teacher:" not in third.stderr
    saved = json.loads((tmp_path / "results.json").read_text())
    bpe_rows = saved["rows"]
    assert [r["model"] for r in saved["regimes"]["bpe"]["rows"]][:2] == ["teacher", "teacher"]
    assert "## Other regimes" in (tmp_path / "results.md").read_text()

    # the markov regime beside it: its own runs (OUT/markov), page (results-markov.md) and rows in results.json
    markov = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "reproduce.py"), "--regime", "markov",
                             "--smoke", "--out", str(tmp_path)], env=env, capture_output=True, text=True, timeout=300)
    assert markov.returncode == 0, markov.stderr[-3000:]
    assert (tmp_path / "markov" / "student-s0").is_dir() and (tmp_path / "markov" / "student-s1").is_dir()
    assert not (tmp_path / "markov" / "ar").exists()  # the exact metrics are the evaluator
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["rows"] == bpe_rows and set(saved["regimes"]) == {"bpe", "markov"}  # the bpe rows are kept
    rows = saved["regimes"]["markov"]["rows"]
    assert all(r["regime"] == "markov" and "invalid_rate_mean" in r and "invalid_rate_std" in r for r in rows)
    students = [r for r in rows if r["model"] == "student" and r["temperature"] == 1.0 and r["sampler"] == "ancestral"]
    assert students and all(r["distill_seeds"] == [0, 1] and r["seeds"] == [0, 1] for r in students)
    assert all(r["invalid_rate_std"] is not None for r in students)  # over the distillation seeds
    [data] = [r for r in rows if r["model"] == "data"]
    assert data["invalid_rate_mean"] == 0.0 and "gen_ppl_mean" not in data
    assert saved["regimes"]["markov"]["frontier_axis"] == "conditional_entropy"
    page = (tmp_path / "results-markov.md").read_text()
    assert page.startswith("# Reproduced results: the markov regime") and "| invalid % (T = 1) ↓ |" in page
