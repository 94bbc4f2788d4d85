"""benchmarks/reward_diagnostics.py probe: the discriminator-only probe runs on a tiny teacher (2-step rollouts
and the 5-step sampler) and reports AUCs."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("student_steps", ["2", "5"])
def test_probe_reports_held_out_auc_per_tau_quarter(teacher_run, student_steps):
    command = [sys.executable, str(ROOT / "benchmarks" / "reward_diagnostics.py"), "probe", "--teacher",
               str(teacher_run), "--disc-positions", "all", "--steps", "4", "--pool", "32", "--held-out", "32",
               "--batch-size", "4", "--eval-every", "2", "--student-steps", student_steps]
    proc = subprocess.run(command, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    steps = re.findall(r"step (\d+): held-out BCE ([\d.]+)\s+AUC ([\d.]+)", proc.stdout)
    assert [s[0] for s in steps] == ["2", "4"]
    assert all(0.0 <= float(a) <= 1.0 and float(b) > 0 for _, b, a in steps)
    quarters = re.findall(r"τ in \[[\d.]+, [\d.]+\): (\d+) pairs", proc.stdout)
    assert len(quarters) == 4 and sum(map(int, quarters)) == 32
