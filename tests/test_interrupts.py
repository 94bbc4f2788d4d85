"""SIGINT/SIGTERM during `didi train`, `didi train-ar` and `didi distill` in one process: the run writes its
snapshot, says "interrupted at step N of M" (never "run written") and exits with 128 + signal (130 / 143), so a
script can tell it from a finished run. The torchrun case is in test_distributed.py."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import TINY_TRAIN_ARGS
from didi.cli import main
from didi.runtime import checkpoint

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
STEPS = 400  # far more than the time between the first snapshot and the signal


def interrupt(args: list[str], run: Path, sig: signal.Signals) -> tuple[int, str]:
    """Start ``didi ARGS``, send ``sig`` once its first snapshot exists, return (exit status, output)."""
    proc = subprocess.Popen([sys.executable, "-m", "didi.cli", *args], env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 120
        while checkpoint.latest_snapshot(run) is None:
            assert proc.poll() is None, "the run ended before its first snapshot: " + proc.stdout.read()[-3000:]
            assert time.monotonic() < deadline, "no snapshot written in time"
            time.sleep(0.01)
        proc.send_signal(sig)
        output, _ = proc.communicate(timeout=120)
    finally:
        proc.kill()
    return proc.returncode, output


def assert_interrupted(run: Path, code: int, output: str, sig: signal.Signals, expected_code: int) -> int:
    stopped = checkpoint.completed_steps(run)
    assert code == expected_code, output[-3000:]
    assert 0 < stopped < STEPS
    assert f"[didi] interrupted at step {stopped} of {STEPS} ({sig.name}): snapshot written" in output
    assert "written to" not in output  # neither "run written" nor "student written"
    assert checkpoint.tensors_metadata(run / "model.safetensors")["step"] == str(stopped)
    return stopped


@pytest.mark.parametrize("command, sig, code", [("train", signal.SIGINT, 130), ("train-ar", signal.SIGTERM, 143)])
def test_interrupted_training_exits_non_zero_after_its_snapshot(tmp_path, corpus_file, capsys, command, sig, code):
    run = tmp_path / "run"
    status, output = interrupt([command, "--out", str(run), "--data", str(corpus_file), "--steps", str(STEPS),
                                *TINY_TRAIN_ARGS, "--save-every", "10"], run, sig)
    stopped = assert_interrupted(run, status, output, sig, code)
    assert f"continue with `didi {command} --resume {run}`" in output
    if command == "train":  # the resumed run (cut short to 2 more steps) finishes and says so
        assert main(["train", "--resume", str(run), "--steps", str(stopped + 2), "--progress", "false"]) == 0
        err = capsys.readouterr().err
        assert f"[didi] resuming from step {stopped} of {stopped + 2}" in err and "[didi] run written to" in err
        assert checkpoint.completed_steps(run) == stopped + 2


def test_interrupted_distillation_exits_130(tmp_path, teacher_run):
    out = tmp_path / "student"
    status, output = interrupt(["distill", "--teacher", str(teacher_run), "--out", str(out), "--steps", str(STEPS),
                                "--batch-size", "2", "--group-size", "2", "--save-every", "2", "--progress", "false"],
                               out, signal.SIGINT)
    assert_interrupted(out, status, output, signal.SIGINT, 130)
    assert f"continue with `didi distill --resume {out}`" in output
