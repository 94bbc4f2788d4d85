"""Faults around a run folder (issue "a run folder nobody can corrupt, results nobody loses, splits that never
leak"): two writers, a start killed before its first snapshot, damaged cache files and snapshots, the validation
split and the training seed, and the smaller one-line errors. The longer randomized kill -9 campaign is
benchmarks/fault_injection.py."""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from conftest import TINY_TRAIN_ARGS
from didi.cli import main
from didi.data.corpora import DataConfig, held_out_overlap, load_corpus, prepare_data
from didi.runtime import checkpoint
from didi.runtime.lock import LOCK_FILE, RunLock

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
EXACT = ["--dropout", "0.1", "--log-every", "1", "--warmup-steps", "1", "--lr-schedule", "constant"]
"""Options of runs compared across a resume: the same learning rates whatever --steps says, dropout on."""


def train_args(out, corpus, steps, *extra):
    return ["train", "--out", str(out), "--data", str(corpus), "--steps", str(steps), *TINY_TRAIN_ARGS, *extra]


def distill_args(teacher, out, steps, *extra):
    return ["distill", "--teacher", str(teacher), "--out", str(out), "--steps", str(steps), "--batch-size", "2",
            "--group-size", "2", "--lr", "1e-4", "--warmup-steps", "1", "--save-every", "2", "--log-every", "1",
            "--progress", "false", *extra]


def assert_same_weights(a: Path, b: Path, names=("model", "ema")) -> None:
    for name in names:
        x, y = checkpoint.load_tensors(a / f"{name}.safetensors"), checkpoint.load_tensors(b / f"{name}.safetensors")
        assert x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x), name


def losses(run: Path) -> list[tuple[int, float]]:
    return [(r["step"], r["loss"]) for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
            if "loss" in r]


def one_error_line(capsys) -> str:
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("didi: error: "), lines
    return lines[0]


def cli(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "didi.cli", *args], env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


@pytest.fixture(scope="module")
def student_run(tmp_path_factory, teacher_run):
    out = tmp_path_factory.mktemp("students") / "student"
    assert main(distill_args(teacher_run, out, 2)) == 0
    return out


# ------------------------------------------------------------------------------------------------ one writer

def test_a_second_writer_is_refused_with_the_holder_named(tmp_path, corpus_file, student_run, capsys):
    """While a process holds a run folder (here this test, through the lock every writer takes), a `--resume` and a
    new run into it are refused with one line naming the holder, for train and distill alike; nothing changes."""
    run = tmp_path / "run"
    assert main(train_args(run, corpus_file, 2)) == 0
    for folder, attempts in ((run, [["train", "--resume", str(run), "--steps", "3", "--progress", "false"],
                                    train_args(run, corpus_file, 3)]),
                             (student_run, [["distill", "--resume", str(student_run), "--steps", "3"]])):
        before = (folder / "model.safetensors").read_bytes()
        capsys.readouterr()
        with RunLock(folder, command="didi train --out elsewhere") as held:
            held.acquire()
            for args in attempts:
                assert main(args) == 2
                line = one_error_line(capsys)
                assert f"{folder}: another didi process is writing this run (pid {os.getpid()} on " \
                       f"{socket.gethostname()}, started " in line and "`didi train --out elsewhere`" in line
        assert (folder / "model.safetensors").read_bytes() == before
        assert checkpoint.completed_steps(folder) == 2
    assert main(["train", "--resume", str(run), "--steps", "3", "--progress", "false"]) == 0  # released: goes on


def test_convert_and_export_never_replace_a_run_being_written(tmp_path, teacher_run, capsys):
    live = tmp_path / "live"
    shutil.copytree(teacher_run, live)
    before = sorted(p.name for p in live.iterdir())
    with RunLock(live) as held:
        held.acquire()
        for command in (["export", str(teacher_run), str(live), "--force"],
                        ["convert", str(teacher_run), str(live), "--force"]):
            assert main(command) == 2
            assert "another didi process is writing this run" in one_error_line(capsys)
    assert sorted(p.name for p in live.iterdir()) == before


def test_two_runs_started_together_leave_one_consistent_run(tmp_path, corpus_file):
    """Two `didi train --out dup` started at once with different seeds: one finishes, the other is refused with one
    line; metrics.jsonl holds each step once and config.json names the winner's seed."""
    run = tmp_path / "dup"
    procs = {seed: cli(*train_args(run, corpus_file, 30, "--seed", str(seed), "--log-every", "1")) for seed in (1, 2)}
    outputs = {seed: proc.communicate(timeout=300)[0] for seed, proc in procs.items()}
    codes = {seed: proc.returncode for seed, proc in procs.items()}
    assert sorted(codes.values()) == [0, 2], outputs
    winner, loser = (1, 2) if codes[1] == 0 else (2, 1)
    refusal = [line for line in outputs[loser].splitlines() if line.startswith("didi: error:")]
    assert len(refusal) == 1 and ("another didi process is writing this run" in refusal[0]
                                  or "already holds a run" in refusal[0]), outputs[loser]
    assert [step for step, _ in losses(run)] == list(range(1, 31))
    assert checkpoint.read_run_config(run).training["seed"] == winner
    assert (run / LOCK_FILE).read_text() == ""  # released on exit


def test_a_run_between_its_lock_and_its_config_is_refused_as_being_written(tmp_path):
    """The moment the race above can hit: the first writer holds the lock and has written a file but not yet
    config.json. A second start is told another process writes there (not "pass --force", which would write into
    the live run); once the writer let go, the same folder is refused only for its files."""
    run = tmp_path / "dup"
    with RunLock(run) as writer:
        writer.acquire()
        (run / "metrics.jsonl").write_text("")
        with RunLock(run) as second, pytest.raises(checkpoint.CheckpointError,
                                                   match="another didi process is writing this run"):
            checkpoint.check_new_run_dir(run, lock=second)
    with RunLock(run) as third, pytest.raises(checkpoint.CheckpointError, match="already exists and is not empty"):
        checkpoint.check_new_run_dir(run, lock=third)


def test_a_lock_left_by_a_dead_writer_is_taken_over_with_one_line(tmp_path, corpus_file, capsys):
    run = tmp_path / "run"
    assert main(train_args(run, corpus_file, 2)) == 0
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    record = {"pid": int(dead.stdout), "host": "node7", "command": "didi train --out run", "started": "yesterday"}
    (run / LOCK_FILE).write_text(json.dumps(record))
    capsys.readouterr()
    assert main(["train", "--resume", str(run), "--steps", "3", "--progress", "false"]) == 0
    err = capsys.readouterr().err
    assert f"[didi] {run}: its previous writer (pid {record['pid']} on node7, started yesterday: `didi train --out " \
           "run`) ended without releasing the run (killed?); taking it over" in err
    assert (run / LOCK_FILE).read_text() == ""


# ------------------------------------------------------------------------------------------------ failed start

def test_a_start_killed_before_its_first_snapshot_can_resume_or_restart(tmp_path, corpus_file, capsys):
    """kill -9 once config.json exists (long before the first snapshot): the folder is not a dead end. A new start
    without --force says what to do; --resume trains from step 0 to exactly the uninterrupted run; --force starts
    it again."""
    run = tmp_path / "run"
    proc = cli(*train_args(run, corpus_file, 400, *EXACT, "--save-every", "400"))
    try:
        deadline = time.monotonic() + 120
        while not (run / "config.json").exists():
            assert proc.poll() is None, proc.stdout.read()
            assert time.monotonic() < deadline
            time.sleep(0.005)
        proc.kill()
        proc.wait(timeout=60)
    finally:
        proc.kill()
    assert checkpoint.latest_snapshot(run) is None
    restart = tmp_path / "restart"
    shutil.copytree(run, restart)

    assert main(train_args(run, corpus_file, 4, *EXACT)) == 2
    assert "holds a run that stopped before its first snapshot: continue it from step 0 with --resume, or start it " \
           "again with --force" in one_error_line(capsys)
    assert main(["train", "--resume", str(run), "--steps", "4", "--progress", "false"]) == 0
    err = capsys.readouterr().err
    assert "no snapshot yet (its start was interrupted): starting from step 0" in err
    assert "ended without releasing the run (killed?); taking it over" in err
    reference = tmp_path / "reference"
    assert main(train_args(reference, corpus_file, 4, *EXACT)) == 0
    assert_same_weights(run, reference)
    assert losses(run) == losses(reference)

    assert main(train_args(restart, corpus_file, 4, *EXACT, "--force")) == 0
    assert_same_weights(restart, reference)
    assert losses(restart) == losses(reference)


def test_a_distillation_stopped_before_its_first_snapshot_resumes_from_step_0(tmp_path, teacher_run, monkeypatch,
                                                                               capsys):
    import didi.recipes.distill as distill_module

    out, reference = tmp_path / "student", tmp_path / "reference"
    real_run = distill_module._run

    def crash(*args, **kwargs):
        raise RuntimeError("killed (simulated) before the first snapshot")

    monkeypatch.setattr(distill_module, "_run", crash)
    with pytest.raises(RuntimeError, match="simulated"):
        main(distill_args(teacher_run, out, 2))
    monkeypatch.setattr(distill_module, "_run", real_run)
    assert checkpoint.is_run_dir(out) and checkpoint.latest_snapshot(out) is None
    assert main(["distill", "--resume", str(out), "--progress", "false"]) == 0
    assert "starting from step 0" in capsys.readouterr().err
    assert main(distill_args(teacher_run, reference, 2)) == 0
    assert_same_weights(out, reference, ("model", "ema", "discriminator"))


def test_a_distillation_resumes_on_its_own_data_settings(tmp_path, teacher_run, capsys):
    """A student started with a data option of its own (--seq-len 16, the teacher's is 32) resumes on it, not on the
    teacher's; giving another value on resume is refused."""
    full, part = tmp_path / "full", tmp_path / "part"
    assert main(distill_args(teacher_run, full, 4, "--seq-len", "16")) == 0
    assert main(distill_args(teacher_run, part, 2, "--seq-len", "16")) == 0
    capsys.readouterr()
    assert main(["distill", "--resume", str(part), "--steps", "4", "--seq-len", "24"]) == 2
    assert "--seq-len: cannot change when resuming (saved: 16)" in one_error_line(capsys)
    assert main(["distill", "--resume", str(part), "--steps", "4", "--progress", "false"]) == 0
    assert_same_weights(part, full, ("model", "ema", "discriminator"))
    assert checkpoint.read_run_config(part).data["seq_len"] == 16


# ------------------------------------------------------------------------------------------------ damaged files

def damage(path: Path, how: str) -> None:
    data = bytearray(path.read_bytes())
    if how == "truncated":
        path.write_bytes(bytes(data[: len(data) // 2]))
    else:  # same size, the second half overwritten (headers intact: only a checksum can tell)
        half = len(data) // 2
        data[half:] = np.random.default_rng(0).integers(0, 256, len(data) - half, dtype=np.uint8).tobytes()
        path.write_bytes(bytes(data))


@pytest.mark.parametrize("how", ["truncated", "same-size garbage"])
def test_a_damaged_token_cache_entry_is_rebuilt(tmp_path, corpus_file, capsys, how):
    config = DataConfig(data=str(corpus_file), tokenizer="bpe", vocab_size=300, seq_len=32,
                        cache_dir=str(tmp_path / "cache"))
    first = prepare_data(config, progress=False)
    expected = np.array(first.train.array)
    [entry] = (tmp_path / "cache").glob("*-train-*.npy")
    del first
    damage(entry, how)
    capsys.readouterr()
    again = prepare_data(config, progress=False)
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[0].startswith(f"[didi] token cache entry {entry} is damaged (") and "rebuilding it" in lines[0]
    np.testing.assert_array_equal(np.array(again.train.array), expected)
    prepare_data(config, progress=False)
    assert "damaged" not in capsys.readouterr().err  # rebuilt once, intact since


def test_training_on_a_garbled_token_cache_rebuilds_it(tmp_path, corpus_file, capsys):
    """The reported failure: same-size garbage in the cache made `didi train` die with `index -1 is out of bounds`
    and left a run folder that could neither resume nor restart."""
    cache = tmp_path / "cache"
    args = ["--cache-dir", str(cache), "--log-every", "1"]
    assert main(train_args(tmp_path / "a", corpus_file, 2, *args)) == 0
    for entry in cache.glob("*.npy"):
        damage(entry, "same-size garbage")
    assert main(train_args(tmp_path / "b", corpus_file, 2, *args)) == 0
    assert "is damaged" in capsys.readouterr().err
    assert losses(tmp_path / "a") == losses(tmp_path / "b")


@pytest.mark.parametrize("file, how", [("model.safetensors", "same-size garbage"),
                                       ("trainer_state.pt", "truncated")])
def test_a_damaged_latest_snapshot_falls_back_to_the_previous_one(tmp_path, corpus_file, capsys, file, how):
    run, reference = tmp_path / "run", tmp_path / "reference"
    assert main(train_args(reference, corpus_file, 6, *EXACT, "--save-every", "2")) == 0
    assert main(train_args(run, corpus_file, 4, *EXACT, "--save-every", "2")) == 0
    damage(run / "checkpoints" / "step-00000004" / file, how)
    capsys.readouterr()
    assert main(["train", "--resume", str(run), "--steps", "6", "--progress", "false"]) == 0
    err = capsys.readouterr().err
    warning = next(line for line in err.splitlines() if "damaged" in line)
    assert warning.startswith(f"[didi] warning: snapshot {run / 'checkpoints' / 'step-00000004'} is damaged ({file} ")
    assert "falling back to the previous snapshot" in warning
    assert f"[didi] resuming from step 2 of 6 ({run / 'checkpoints' / 'step-00000002'})" in err
    assert_same_weights(run, reference)
    assert losses(run) == losses(reference)  # metrics.jsonl trimmed to step 2, then written again
    assert len(list((run / "checkpoints").glob("damaged-step-00000004-*"))) == 1


def test_no_intact_snapshot_is_one_line(tmp_path, corpus_file, capsys):
    run = tmp_path / "run"
    assert main(train_args(run, corpus_file, 2)) == 0
    damage(run / "checkpoints" / "step-00000002" / "model.safetensors", "truncated")
    capsys.readouterr()
    assert main(["train", "--resume", str(run), "--steps", "3", "--progress", "false"]) == 2
    assert "no intact snapshot to resume from" in capsys.readouterr().err.splitlines()[-1]


# ------------------------------------------------------------------------------------------------ the split

def jsonl_corpus(path: Path, n: int = 60) -> Path:
    path.write_text("".join(json.dumps({"text": f"document {i}: " + "words " * (5 + i % 7)}) + "\n" for i in range(n)))
    return path


def test_the_training_seed_does_not_move_the_validation_split(tmp_path, capsys):
    corpus = jsonl_corpus(tmp_path / "docs.jsonl")
    args = ["--valid-fraction", "0.2", "--tokenizer", "byte", "--seq-len", "16"]
    runs = {}
    for name, extra in (("seed0", ["--seed", "0"]), ("seed1", ["--seed", "1"]),
                        ("split3", ["--seed", "1", "--split-seed", "3"])):
        runs[name] = tmp_path / name
        assert main(train_args(runs[name], corpus, 1, *args, *extra)) == 0
    saved = {name: checkpoint.read_run_config(run) for name, run in runs.items()}
    assert [saved[n].data["seed"] for n in runs] == [0, 0, 3]  # the split seed, recorded in config.json
    assert [saved[n].training["seed"] for n in runs] == [0, 1, 1]
    valid = {n: load_corpus(DataConfig(**saved[n].data)).valid for n in runs}
    assert valid["seed0"] == valid["seed1"] != valid["split3"]
    assert held_out_overlap(saved["seed0"], saved["seed1"]) is None
    assert "split seed 3" in held_out_overlap(saved["seed0"], saved["split3"])


def brute_force_overlap(evaluator: dict, model: dict) -> bool:
    """Does the evaluator's training split contain a line of the model's validation split? (Every line of the test
    corpora is unique, and a text split cuts at line starts.)"""
    def lines(documents):
        return {line for text in documents for line in text.splitlines()}

    return bool(lines(load_corpus(DataConfig(**evaluator)).train) & lines(load_corpus(DataConfig(**model)).valid))


def test_held_out_overlap_agrees_with_the_actual_splits(tmp_path):
    """Runs saved before --split-seed recorded their training seed as `seed`: read as their split seed."""
    jsonl = str(jsonl_corpus(tmp_path / "docs.jsonl"))
    book = tmp_path / "book.txt"
    book.write_text("".join(f"line {i} of the only document\n" for i in range(400)))
    cases = [
        ({"data": jsonl, "seed": 0}, {"data": jsonl, "seed": 1}, True),
        ({"data": jsonl, "seed": 4}, {"data": jsonl, "seed": 4}, False),
        ({"data": jsonl, "seed": 0, "valid_fraction": 0.0}, {"data": jsonl, "seed": 0}, True),
        ({"data": jsonl, "seed": 0, "valid_fraction": 0.1}, {"data": jsonl, "seed": 0}, True),
        ({"data": str(book), "valid_fraction": 0.05}, {"data": str(book), "valid_fraction": 0.1, "seed": 9}, True),
        ({"data": str(book), "valid_fraction": 0.1}, {"data": str(book), "valid_fraction": 0.05, "seed": 9}, False),
        ({"data": str(book)}, {"data": jsonl, "seed": 1}, False),
        ({"data": jsonl, "seed": 0}, {"data": jsonl, "seed": 1, "valid_fraction": 0.0}, False),
    ]
    for evaluator, model, overlaps in cases:
        assert brute_force_overlap(evaluator, model) == overlaps, (evaluator, model)
        verdict = held_out_overlap(SimpleNamespace(data=evaluator), {"data": model})
        assert (verdict is not None) == overlaps, (evaluator, model, verdict)
        assert verdict is None or "\n" not in verdict
    relative = os.path.relpath(jsonl)
    assert held_out_overlap({"data": {"data": relative, "seed": 0}}, {"data": {"data": jsonl, "seed": 1}})
    # natural splits never depend on the seed; a Hugging Face dataset may have its own validation split
    plays = ({"data": {"data": "shakespeare", "seed": 0}}, {"data": {"data": "shakespeare", "seed": 1}})
    assert held_out_overlap(*plays) is None
    owt = ({"data": {"data": "openwebtext", "seed": 0}}, {"data": {"data": "hf:openwebtext"}})
    assert held_out_overlap(*owt) is None
    assert "unless the dataset has its own validation split" in held_out_overlap(
        {"data": {"data": "hf:user/set", "seed": 0}}, {"data": {"data": "user/set", "seed": 1}})
    assert held_out_overlap({"data": {}}, {"data": {"data": jsonl}}) is None  # converted checkpoints record none


# ------------------------------------------------------------------------------------------------ one-line errors

@pytest.mark.parametrize("option, value, message", [("--preset", "huge", "--preset: must be one of"),
                                                    ("--n-heads", "3", "--n-heads: hidden_size 32 is not divisible")])
def test_the_model_shape_is_checked_before_tokenizing(tmp_path, corpus_file, monkeypatch, capsys, option, value,
                                                      message):
    import didi.recipes.train as train_module

    def never(*args, **kwargs):
        raise AssertionError("the corpus was tokenized before the model options were checked")

    monkeypatch.setattr(train_module, "prepare_data", never)
    assert main(train_args(tmp_path / "run", corpus_file, 2, option, value)) == 2
    assert message in one_error_line(capsys)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("section, key, value, message", [
    ("model", "hidden_size", "32", "model.hidden_size must be int (got '32')"),
    ("diffusion", "time_conditioning", "no", "diffusion.time_conditioning must be bool (got 'no')"),
    ("diffusion", "mask_index", 999, "diffusion.mask_index 999 is not a token of the model (model.vocab_size 301)"),
    ("diffusion", "mask_index", -1, "diffusion: --mask-index: must be >= 0 (got -1)"),
    ("data", "seq_len", [32], "data must be"),
])
def test_a_bad_value_in_config_json_names_the_field(tmp_path, teacher_run, capsys, section, key, value, message):
    run = tmp_path / "run"
    shutil.copytree(teacher_run, run)
    config = json.loads((run / "config.json").read_text())
    if section == "data" and isinstance(value, list):
        config["data"] = value  # a section that is not an object
    else:
        config[section][key] = value
    (run / "config.json").write_text(json.dumps(config))
    for command in (["info", str(run)], ["sample", "--model", str(run), "--nfe", "2", "--num-samples", "1"]):
        assert main(command) == 2
        line = one_error_line(capsys)
        assert f"{run / 'config.json'}: {message}" in line, line


def test_a_cache_path_that_is_a_file_is_one_line(tmp_path, corpus_file, monkeypatch, capsys):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file")
    monkeypatch.setenv("DIDI_CACHE", str(blocker))
    assert main(train_args(tmp_path / "run", corpus_file, 1)) == 2
    assert f"$DIDI_CACHE: {blocker} is a file; it must be a directory" in one_error_line(capsys)
    assert main(["cache", "list"]) == 2
    one_error_line(capsys)
    monkeypatch.setenv("DIDI_CACHE", str(tmp_path / "cache"))
    assert main(train_args(tmp_path / "run", corpus_file, 1, "--cache-dir", str(blocker / "tokens"))) == 2
    assert f"--cache-dir: {blocker / 'tokens'} is below {blocker}, a file" in one_error_line(capsys)


def test_info_on_a_student_shows_its_distillation(student_run, teacher_run, capsys):
    assert main(["info", str(student_run)]) == 0
    out = capsys.readouterr().out
    assert f"method:     didi-instruct (teacher {teacher_run})" in out
    assert "steps:      2 (distillation; the teacher trained 40)" in out
    assert "steps:      40" not in out


def test_token_embedding_gradients_do_not_depend_on_the_thread_count():
    """The reported 1.2e-7 between a resumed and an uninterrupted run (and between two uninterrupted ones) came from
    the token embedding's backward: indexing accumulates rows in a thread-dependent order. The layer's gradient
    with 2 threads must equal the 1-thread gradient, every time."""
    from didi.models.dit import EmbeddingLayer

    layer = EmbeddingLayer(256, 301)
    x = torch.randint(0, 301, (8, 32), generator=torch.Generator().manual_seed(0))
    upstream = torch.randn(8, 32, 256, generator=torch.Generator().manual_seed(1))

    def gradient(threads: int) -> torch.Tensor:
        torch.set_num_threads(threads)
        layer.zero_grad()
        layer(x).backward(upstream)
        return layer.embedding.grad.clone()

    try:
        one = gradient(1)
        assert all(torch.equal(gradient(2), one) for _ in range(5))
    finally:
        torch.set_num_threads(1)
