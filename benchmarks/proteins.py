"""Protein benchmark: an MDLM teacher vs its DiDi-Instruct student at 8/16/32 NFE on the built-in protein corpus.

Four stages, each one ``didi`` command (printed before it runs), each skipped when its run directory is already
complete, so an interrupted benchmark resumes where it stopped:

1. ``didi train``    — MDLM teacher on ``--data`` (default ``proteins``: 20,000 UniProt sequences of Debian's
   ``mmseqs2-examples``), one protein per block (crop packing, the default for protein corpora);
2. ``didi train-ar`` — the AR evaluator, same corpus and size;
3. ``didi distill``  — DiDi-Instruct student from the teacher (hyper-parameters scaled down for small models:
   the published ones are for a 169M model and 10k iterations);
4. ``didi eval``     — teacher and student at 8, 16, 32 and 256 NFE (teacher @ 256 is the many-step reference):
   gen-PPL under the AR model, protein metrics, validation NELBO and speed, next to a row of natural validation
   sequences.

Usage::

    python benchmarks/proteins.py                    # --scale cpu: 30-50 minutes on 2 CPU cores
    python benchmarks/proteins.py --scale gpu --device cuda

Writes ``OUT/eval.json``, ``OUT/eval.png`` and ``OUT/eval.md`` (the table, its notes, and every command with its
wall-clock time).
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import io
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from didi.cli import main as didi
from didi.runtime.checkpoint import completed_steps, is_run_dir


@dataclass(frozen=True)
class Scale:
    """Sizes of one benchmark scale; ``model`` options are shared by the teacher and the AR evaluator."""

    model: tuple[str, ...]
    seq_len: int
    batch_size: int
    lr: float
    teacher_steps: int
    ar_steps: int
    distill_steps: int
    distill: tuple[str, ...]
    eval_samples: int
    eval_batch_size: int


SCALES = {
    # 1M-parameter models, two thirds of an epoch: 30-50 minutes on 2 CPU cores (51 measured on a busy machine).
    "cpu": Scale(model=("--hidden-size", "128", "--n-blocks", "4", "--n-heads", "4", "--cond-dim", "64"),
                 seq_len=128, batch_size=32, lr=1e-3, teacher_steps=400, ar_steps=300, distill_steps=150,
                 distill=("--batch-size", "2", "--group-size", "4", "--lr", "3e-5", "--disc-lr", "3e-4",
                          "--warmup-steps", "20", "--disc-warmup-steps", "50"),
                 eval_samples=64, eval_batch_size=32),
    # 25-29M-parameter models, about 17 epochs of the built-in corpus, for a GPU (not run for the results page).
    "gpu": Scale(model=("--hidden-size", "512", "--n-blocks", "8", "--n-heads", "8", "--cond-dim", "128"),
                 seq_len=256, batch_size=64, lr=5e-4, teacher_steps=5000, ar_steps=3000, distill_steps=1000,
                 distill=("--batch-size", "8", "--group-size", "4", "--lr", "1e-5", "--disc-lr", "1e-4",
                          "--warmup-steps", "100", "--disc-warmup-steps", "200"),
                 eval_samples=256, eval_batch_size=64),
}
NFE = "8,16,32,256"


def stage(argv: list[str], log: list[dict]) -> str:
    """Run ``didi ARGV`` (exit on failure), record the command and its wall-clock time; return what it printed."""
    print(f"\n$ didi {' '.join(argv)}", flush=True)
    start = time.perf_counter()
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        status = didi(argv)
    print(stdout.getvalue(), end="", flush=True)
    if status != 0:
        sys.exit(status)
    log.append({"command": "didi " + " ".join(argv), "seconds": round(time.perf_counter() - start, 1)})
    return stdout.getvalue()


def train(kind: str, run_dir: Path, steps: int, scale: Scale, args: argparse.Namespace, log: list[dict]) -> None:
    command = "train" if kind == "mdlm" else "train-ar"
    if completed_steps(run_dir) >= steps:
        print(f"[benchmark] {run_dir} is complete, reusing it")
    elif is_run_dir(run_dir):  # with or without a snapshot: a killed start resumes from step 0
        stage([command, "--resume", str(run_dir), "--steps", str(steps), "--device", args.device], log)
    else:
        stage([command, "--out", str(run_dir), "--data", args.data, "--seq-len", str(scale.seq_len), *scale.model,
               "--steps", str(steps), "--global-batch-size", str(scale.batch_size), "--lr", str(scale.lr),
               "--warmup-steps", str(max(1, steps // 10)), "--eval-every", str(max(1, steps // 4)),
               "--save-every", str(max(1, steps // 4)), "--seed", str(args.seed), "--device", args.device], log)


def distill(teacher: Path, student: Path, scale: Scale, args: argparse.Namespace, log: list[dict]) -> None:
    if completed_steps(student) >= scale.distill_steps:
        print(f"[benchmark] {student} is complete, reusing it")
    elif is_run_dir(student):
        stage(["distill", "--resume", str(student), "--steps", str(scale.distill_steps), "--device", args.device], log)
    else:
        stage(["distill", "--teacher", str(teacher), "--out", str(student), "--steps", str(scale.distill_steps),
               *scale.distill, "--save-every", str(max(1, scale.distill_steps // 3)), "--seed", str(args.seed),
               "--device", args.device], log)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", choices=sorted(SCALES), default="cpu", help="run sizes (default: cpu)")
    parser.add_argument("--out", type=Path, default=Path("runs/proteins"), help="directory of the runs and report")
    parser.add_argument("--data", default="proteins", help="protein corpus: proteins (built-in) or a FASTA file")
    parser.add_argument("--seed", type=int, default=0, help="seed of every stage")
    parser.add_argument("--device", default="auto", help="auto (cuda > mps > cpu), cpu, cuda, ...")
    args = parser.parse_args()
    scale = SCALES[args.scale]
    out = args.out / args.scale
    teacher, student, evaluator = out / "teacher", out / "student", out / "ar"
    log: list[dict] = []
    start = time.perf_counter()

    train("mdlm", teacher, scale.teacher_steps, scale, args, log)
    train("ar", evaluator, scale.ar_steps, scale, args, log)
    distill(teacher, student, scale, args, log)
    table = stage(["eval", "--model", str(teacher), "--model", str(student), "--nfe", NFE, "--evaluator",
                   str(evaluator), "--num-samples", str(scale.eval_samples), "--batch-size", str(scale.eval_batch_size),
                   "--repeats", "2", "--seed", str(args.seed), "--device", args.device, "--json",
                   str(out / "eval.json"), "--plot", str(out / "eval.png")], log)
    commands = "\n".join(f"{entry['seconds'] / 60:6.1f} min  {entry['command']}" for entry in log)
    (out / "eval.md").write_text(
        f"# Protein benchmark, scale {args.scale}\n\n{table}\n"
        f"Machine: {platform.platform()}, {platform.processor() or platform.machine()}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads; finished {datetime.datetime.now().isoformat(timespec='minutes')}.\n\n"
        f"Commands run (stages reused from an earlier run are not listed):\n\n```\n{commands}\n```\n")
    print(f"\n[benchmark] {(time.perf_counter() - start) / 60:.1f} min; report in {out / 'eval.md'}", file=sys.stderr)


if __name__ == "__main__":
    main()
