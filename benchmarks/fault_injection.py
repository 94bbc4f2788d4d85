"""Randomized fault injection: ``kill -9`` at random moments of ``didi train``, ``didi distill`` and ``didi eval``,
then the documented recovery, run to completion and compared with an uninterrupted run.

Every trial starts a fresh run folder and aims 1 to ``--max-kills`` SIGKILLs at it, each at a random moment of
the wall time an uninterrupted run took: with probability 0.2 uniformly during its start-up (imports, tokenizing,
writing the run folder: until its ``config.json`` appeared; for eval, its first saved row), else uniformly over the
rest (training, validation, snapshot writes, sampling and scoring: whatever is under way then). A first kill
drawn after the run had finished is drawn again; later ones may miss a shorter recovery. Then it recovers the way
the README says:

* the folder holds a ``config.json``: ``didi train|distill --resume RUN`` (from the newest intact snapshot, or
  from step 0 when the start was cut before the first one);
* otherwise: the original command again (with ``--force`` when the folder holds anything but the lock file);
* ``didi eval --json FILE``: the same command again (it takes the rows saved in ``FILE.rows.jsonl``).

Each recovery command can itself be killed (the later kills of a trial); the last one runs to the end. A trial
survives when the run's final weights (``model``, ``ema`` and, for distillation, ``discriminator``: tensors,
compared with ``torch.equal``), its last snapshot step and its ``metrics.jsonl`` (every step once, values equal,
timing fields aside) equal the uninterrupted reference's; for eval, when its report (rows, frontiers, reference
rows; timings, dates and memory aside) equals the uninterrupted report. Where each kill landed is read from the
folder it left. Trials cycle through train, distill and eval.

``--reproducibility`` measures instead what "identical" rests on: the largest weight difference between two
uninterrupted training runs, and between an uninterrupted run and one stopped halfway and resumed, with the
default number of threads and with ``OMP_NUM_THREADS=1`` (width 256, 4 blocks, 20 steps, dropout on).

Usage::

    python benchmarks/fault_injection.py --trials 60 --json fault_injection.json
    python benchmarks/fault_injection.py --reproducibility

The runs are tiny (the embedded Shakespeare as bytes, 2 blocks of width 32, one thread each) so that 60 trials take
about ten minutes on 2 busy cores. Prints a Markdown table.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import torch
from safetensors.torch import load_file

DATA = ["--data", "shakespeare", "--tokenizer", "byte", "--max-documents", "20", "--seq-len", "32"]
MODEL = ["--hidden-size", "32", "--n-blocks", "2", "--n-heads", "2", "--cond-dim", "16"]
TRAIN = ["--steps", "40", "--global-batch-size", "8", "--eval-every", "10", "--eval-batches", "1", "--save-every",
         "3", "--log-every", "1", "--warmup-steps", "2", "--dropout", "0.1", "--progress", "false"]
DISTILL = ["--steps", "10", "--batch-size", "2", "--group-size", "2", "--lr", "1e-4", "--warmup-steps", "2",
           "--save-every", "2", "--log-every", "1", "--progress", "false"]
EVAL = ["--nfe", "4,8", "--num-samples", "4", "--seeds", "0,1", "--temperatures", "0.5,1.0", "--no-references",
        "--progress", "false"]
TIMING = {"tokens_per_s", "samples_per_s"}
REPORT_TIMING = {"latencies_s", "latency_s", "latency_per_sample_s", "tokens_per_s", "speedup", "peak_memory_mib",
                 "timing", "date", "process_peak_rss_mib"}
WEIGHTS = {"train": ("model", "ema"), "distill": ("model", "ema", "discriminator")}
KINDS = ("train", "distill", "eval")


def didi(*args: str) -> list[str]:
    return [sys.executable, "-m", "didi.cli", *args]


def start_command(kind: str, out: Path, work: Path) -> list[str]:
    """``work`` holds the references: ``teacher`` (a train run), ``reference-student`` and the AR evaluator ``ar``."""
    if kind == "train":
        return didi("train", "--out", str(out), *DATA, *MODEL, *TRAIN)
    if kind == "distill":
        return didi("distill", "--teacher", str(work / "teacher"), "--out", str(out), *DISTILL)
    return didi("eval", "--model", str(work / "teacher"), "--model", str(work / "reference-student"), "--evaluator",
                str(work / "ar"), *EVAL, "--json", str(out / "eval.json"))


def recovery_command(kind: str, out: Path, work: Path) -> tuple[list[str], str]:
    """The documented next command for the folder a killed run left, and its name."""
    if kind == "eval":
        return start_command(kind, out, work), "eval again"
    if (out / "config.json").exists():
        return didi(kind, "--resume", str(out)), "resume"
    others = out.is_dir() and any(p.name != ".didi-lock" for p in out.iterdir())
    return start_command(kind, out, work) + (["--force"] if others else []), "start --force" if others else "start"


def progress_file(kind: str, out: Path) -> Path:
    """The file whose appearance ends a run's start-up: config.json, or eval's first saved row."""
    return out / ("eval.rows.jsonl" if kind == "eval" else "config.json")


def state_after_kill(kind: str, out: Path, pid: int) -> str:
    """Where a kill landed, read from the folder: before the run folder existed, before config.json, before the
    first snapshot, while a snapshot was being written (the killed process's .tmp- folder left), or between
    snapshots; for eval, how many units of rows were saved."""
    if kind == "eval":
        rows = out / "eval.rows.jsonl"
        saved = len(rows.read_text().splitlines()) if rows.exists() else 0
        return "eval: before its first row" if saved == 0 else "eval: after some rows"
    if not out.exists():
        return "before the run folder"
    if not (out / "config.json").exists():
        return "before config.json"
    root = out / "checkpoints"
    if root.is_dir() and any(p.name.startswith(".tmp-") and p.name.endswith(f"-{pid}") for p in root.iterdir()):
        return "during a snapshot write"
    if not root.is_dir() or not any(p.name.startswith("step-") for p in root.iterdir()):
        return "before the first snapshot"
    return "between snapshots"


def run(command: list[str], env: dict[str, str], log: Path, kill_after: float | None,
        watch: Path | None = None) -> tuple[int | None, float | None]:
    """Run ``command``; SIGKILL it after ``kill_after`` seconds if it is still running. Returns the pid of a killed
    process (None if it finished) and, with ``watch``, the seconds until that file appeared."""
    with open(log, "a") as fh:
        fh.write(f"$ {' '.join(command)}\n")
        fh.flush()
        started = time.perf_counter()
        proc = subprocess.Popen(command, env=env, stdout=fh, stderr=subprocess.STDOUT)
        appeared = None
        try:
            while proc.poll() is None:
                now = time.perf_counter() - started
                if appeared is None and watch is not None and watch.exists():
                    appeared = now
                if kill_after is not None and now >= kill_after:
                    proc.send_signal(signal.SIGKILL)
                    proc.wait()
                    fh.write(f"[fault_injection] SIGKILL after {kill_after:.2f} s\n")
                    return proc.pid, appeared
                time.sleep(0.002)
        finally:
            if proc.poll() is None:
                proc.kill()
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} exited with {proc.returncode} (log: {log})")
    return None, appeared


def metrics(run_dir: Path) -> list[dict]:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in TIMING} for r in records]


def without_timings(value):
    """A report with its timing, date and memory fields removed (they differ between any two runs)."""
    if isinstance(value, dict):
        return {k: without_timings(v) for k, v in value.items() if k not in REPORT_TIMING}
    if isinstance(value, list):
        return [without_timings(v) for v in value]
    return value


def compare(kind: str, run_dir: Path, reference: Path) -> str | None:
    """What differs from the reference (None: nothing)."""
    if kind == "eval":
        ours, theirs = (json.loads((d / "eval.json").read_text()) for d in (run_dir, reference))
        ours, theirs = ({k: without_timings(r[k]) for k in ("rows", "frontiers", "reference", "target_entropy")}
                        for r in (ours, theirs))
        return None if ours == theirs else "the eval report differs"
    for name in WEIGHTS[kind]:
        a, b = load_file(str(run_dir / f"{name}.safetensors")), load_file(str(reference / f"{name}.safetensors"))
        if a.keys() != b.keys() or not all(torch.equal(a[k], b[k]) for k in a):
            diff = max((a[k] - b[k]).abs().max().item() for k in a if k in b)
            return f"{name} weights differ (max |diff| {diff:.3g})"
    if metrics(run_dir) != metrics(reference):
        return "metrics.jsonl differs"
    steps = sorted(p.name for p in (run_dir / "checkpoints").iterdir() if p.name.startswith("step-"))
    expected = sorted(p.name for p in (reference / "checkpoints").iterdir() if p.name.startswith("step-"))
    if steps != expected:
        return f"snapshots {steps} instead of {expected}"
    return None


def max_difference(a: Path, b: Path) -> float:
    x, y = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    return max((x[k] - y[k]).abs().max().item() for k in x)


def reproducibility(work: Path) -> None:
    """Two uninterrupted runs and a stopped-and-resumed one, per thread setting: their largest weight difference."""
    wide = ["--hidden-size", "256", "--n-blocks", "4", "--n-heads", "4", "--cond-dim", "128", "--save-every", "10",
            "--lr-schedule", "constant", "--warmup-steps", "1", "--dropout", "0.1", "--global-batch-size", "8",
            "--eval-every", "0", "--progress", "false"]
    print("| threads | run vs run | run vs stopped at 10 and resumed |\n|---|---:|---:|")
    for threads in (None, "1"):
        env = {**os.environ, "DIDI_CACHE": str(work / "cache")}
        env.pop("OMP_NUM_THREADS", None)
        if threads:
            env["OMP_NUM_THREADS"] = threads
        runs = {name: work / f"{threads or 'default'}-{name}" for name in ("a", "b", "resumed")}
        for name, steps in (("a", 20), ("b", 20), ("resumed", 10)):
            run(didi("train", "--out", str(runs[name]), *DATA, "--steps", str(steps), *wide), env, work / "log", None)
        run(didi("train", "--resume", str(runs["resumed"]), "--steps", "20", "--progress", "false"), env,
            work / "log", None)
        label = f"OMP_NUM_THREADS={threads}" if threads else f"default ({torch.get_num_threads()})"
        print(f"| {label} | {max_difference(runs['a'], runs['b']):.3g} | "
              f"{max_difference(runs['a'], runs['resumed']):.3g} |", flush=True)
    print(f"\ndefault threads vs OMP_NUM_THREADS=1: {max_difference(work / 'default-a', work / '1-a'):.3g}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=60)
    parser.add_argument("--max-kills", type=int, default=3, help="kills per trial, drawn from 1..N")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", type=Path, default=None, help="default: a temporary folder, removed after")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--reproducibility", action="store_true", help="measure run-to-run and resume differences")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    work = args.workdir or Path(tempfile.mkdtemp(prefix="didi-faults-"))
    work.mkdir(parents=True, exist_ok=True)
    if args.reproducibility:
        reproducibility(work)
        if args.workdir is None:
            shutil.rmtree(work)
        return
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DIDI_CACHE": str(work / "cache"), "PYTHONUNBUFFERED": "1"}
    started = time.time()

    durations, setup = {}, {}  # wall time of an uninterrupted run; seconds until its start-up was over
    references = {"train": work / "teacher", "distill": work / "reference-student", "eval": work / "reference-eval"}
    run(didi("train-ar", "--out", str(work / "ar"), *DATA, *MODEL, *TRAIN), env, work / "reference-ar.log", None)
    for kind in KINDS:  # the train reference is the distillations' teacher; eval scores teacher and student
        run(start_command(kind, references[kind], work), env, work / f"reference-{kind}.log", None)
    for kind in KINDS:  # timed again once the caches are warm, as every trial finds them
        out = work / f"timing-{kind}"
        t0 = time.perf_counter()
        _, setup[kind] = run(start_command(kind, out, work), env, work / f"timing-{kind}.log", None,
                             watch=progress_file(kind, out))
        durations[kind] = time.perf_counter() - t0
        shutil.rmtree(out)

    def kill_moment(kind: str) -> float:
        """A fifth of the kills during start-up (imports, tokenizing, the run folder), the rest while it trains."""
        if rng.random() < 0.2:
            return rng.uniform(0.0, setup[kind])
        return rng.uniform(setup[kind], durations[kind])

    trials, landed, recoveries, missed = [], Counter(), Counter(), 0
    for trial in range(args.trials):
        kind = KINDS[trial % len(KINDS)]
        out = work / f"trial-{trial:03d}"
        log = work / f"trial-{trial:03d}.log"
        kills = rng.randint(1, args.max_kills)
        delivered, where = 0, []
        try:
            while True:  # the first kill must land: a run that ends before it is drawn again
                command = start_command(kind, out, work)
                pid, _ = run(command, env, log, kill_moment(kind))
                if pid is not None:
                    break
                missed += 1
                shutil.rmtree(out)
            for attempt in range(kills):
                if attempt:
                    pid, _ = run(command, env, log, kill_moment(kind))
                    if pid is None:
                        break  # the recovery finished before this kill
                delivered += 1
                where.append(state_after_kill(kind, out, pid))
                landed[where[-1]] += 1
                command, how = recovery_command(kind, out, work)
                recoveries[how] += 1
            else:
                run(command, env, log, None)  # the last recovery, to the end
            problem = compare(kind, out, references[kind])
            outcome = "identical" if problem is None else problem
        except RuntimeError as exc:
            outcome = f"recovery failed: {exc}"
        trials.append({"trial": trial, "kind": kind, "kills": delivered, "landed": where, "outcome": outcome})
        print(f"trial {trial:3d} {kind:7s} kills {delivered}: {', '.join(where) or '-'} -> {outcome}", flush=True)
        if outcome == "identical":
            shutil.rmtree(out)
            log.unlink()

    survived = sum(t["outcome"] == "identical" for t in trials)
    kills = sum(t["kills"] for t in trials)
    counts = ", ".join(f"{sum(t['kind'] == kind for t in trials)} {kind}" for kind in KINDS)
    print(f"\n{len(trials)} trials ({counts}), {kills} kills delivered, "
          f"{survived} trials identical to the uninterrupted run, {len(trials) - survived} lost or different; "
          f"{(time.time() - started) / 60:.1f} min ({missed} first kills drawn after the run had finished were drawn "
          "again)\n")
    print("| where the kill landed | kills |\n|---|---:|")
    for state, count in landed.most_common():
        print(f"| {state} | {count} |")
    print("\n| recovery command | times |\n|---|---:|")
    for how, count in recoveries.most_common():
        print(f"| {how} | {count} |")
    if args.json:
        args.json.write_text(json.dumps({"trials": trials, "landed": landed, "recoveries": recoveries,
                                         "missed": missed, "reference_seconds": durations, "setup_seconds": setup,
                                         "survived": survived}, indent=2) + "\n")
    if args.workdir is None and survived == len(trials):
        shutil.rmtree(work)


if __name__ == "__main__":
    main()
