"""Multi-process training and fault tolerance, on CPU with the gloo backend.

Multi-process runs are real ``torchrun`` launches (``python -m torch.distributed.run --standalone``, which picks a
free port) of the ``didi`` command in a subprocess. One single-process run serves as the reference: a 2-process
run with the same global batch must reach the same weights (within float tolerance, only the order of gradient
summation differs), however it was interrupted and resumed.
"""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import TINY_TRAIN_ARGS
from didi.cli import main
from didi.data.corpora import BatchSchedule, DataConfig, TokenBlocks, prepare_data, shard
from didi.diffusion.instruct import group_advantages
from didi.errors import ConfigError
from didi.recipes.train import batch_split
from didi.runtime import checkpoint

STEPS = 240  # long enough (a few seconds) for a signal to arrive mid-run
RUN_ARGS = [*TINY_TRAIN_ARGS, "--dropout", "0", "--lr-schedule", "constant", "--log-every", "10", "--save-every", "20"]
"""Constant learning rate: a run stopped early with --steps K and resumed to STEPS follows the same schedule."""

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def torchrun(nproc: int, *args: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc),
            "-m", "didi.cli", *args]


def run_ok(command: list[str], timeout: float = 240) -> str:
    proc = subprocess.run(command, env=ENV, capture_output=True, text=True, timeout=timeout)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[:3000] + "\n[...]\n" + output[-3000:]
    return output


def weights(run: Path, name: str = "model") -> dict[str, torch.Tensor]:
    return checkpoint.load_tensors(run / f"{name}.safetensors")


def assert_close(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], atol: float = 1e-5) -> None:
    assert a.keys() == b.keys()
    worst = max(float((a[k] - b[k]).abs().max()) for k in a)
    assert worst <= atol, worst


def assert_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def wait_for_snapshot(run: Path, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while checkpoint.latest_snapshot(run) is None:
        assert proc.poll() is None, "the run ended before writing its first snapshot"
        assert time.monotonic() < deadline, "no snapshot written in time"
        time.sleep(0.01)


def snapshot_step(run: Path) -> int:
    return checkpoint.completed_steps(run)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, corpus_file) -> Path:
    """The single-process run every multi-process or interrupted run must reproduce."""
    run = tmp_path_factory.mktemp("reference") / "run"
    assert main(["train", "--out", str(run), "--data", str(corpus_file), "--steps", str(STEPS), *RUN_ARGS]) == 0
    return run


# ------------------------------------------------------------------------------------------------ training

def test_sigterm_on_one_rank_stops_every_rank_and_resumes(tmp_path, corpus_file, reference):
    """SIGTERM to rank 1 only: the ranks agree to stop after the same step, rank 0 writes a final snapshot there,
    says so and every rank exits with 143 (so torchrun fails: the run did not finish); a 2-process --resume then
    ends on the 1-process weights (with gradient accumulation: the per-rank batch of 4 runs as 2 micro-batches
    of 2)."""
    run = tmp_path / "run"
    launcher = subprocess.Popen(torchrun(2, "train", "--out", str(run), "--data", str(corpus_file), "--steps",
                                         str(STEPS), "--micro-batch-size", "2", *RUN_ARGS),
                                env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_for_snapshot(run, launcher)
        children = Path(f"/proc/{launcher.pid}/task/{launcher.pid}/children").read_text().split()
        rank1 = next(int(pid) for pid in children
                     if b"RANK=1" in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0"))
        os.kill(rank1, signal.SIGTERM)
        output, _ = launcher.communicate(timeout=120)
    finally:
        launcher.kill()
    assert launcher.returncode != 0, output[-4000:]
    stopped = snapshot_step(run)
    assert 20 <= stopped < STEPS
    assert output.count(f"[didi] interrupted at step {stopped} of {STEPS} (SIGTERM): snapshot written") == 1
    assert "run written" not in output
    assert re.search(r"exitcode\s*: 143 ", output), output[-4000:]  # torchrun's report of the failed rank
    assert checkpoint.tensors_metadata(run / "model.safetensors")["step"] == str(stopped)

    run_ok(torchrun(2, "train", "--resume", str(run), "--progress", "false"))
    assert snapshot_step(run) == STEPS
    assert_close(weights(run), weights(reference))
    assert_close(weights(run, "ema"), weights(reference, "ema"))


def test_fsdp_snapshot_is_interchangeable(tmp_path, corpus_file, reference):
    """2 processes with FSDP2 (and activation checkpointing) for 10 steps, resumed in one plain process: the full
    state dicts gathered on rank 0 have the single-process layout and the run ends on the reference weights."""
    run = tmp_path / "run"
    run_ok(torchrun(2, "train", "--out", str(run), "--data", str(corpus_file), "--steps", "10", "--fsdp", "true",
                    "--grad-checkpointing", "true", *RUN_ARGS))
    state = checkpoint.load_trainer_state(checkpoint.latest_snapshot(run))
    parameters = set(weights(reference)) - {"rotary_emb.inv_freq"}  # a buffer has no optimiser state
    assert set(state["optimizer"]["state"]) == parameters  # unsharded, keyed by parameter name
    assert main(["train", "--resume", str(run), "--steps", str(STEPS), "--fsdp", "false", "--progress", "false"]) == 0
    assert_close(weights(run), weights(reference))
    assert_close(weights(run, "ema"), weights(reference, "ema"))


def test_ar_two_processes_match_one_process(tmp_path, corpus_file):
    one, two = tmp_path / "one", tmp_path / "two"
    args = ["--data", str(corpus_file), "--steps", "8", *RUN_ARGS, "--log-every", "1", "--eval-batches", "2"]
    assert main(["train-ar", "--out", str(one), *args]) == 0
    run_ok(torchrun(2, "train-ar", "--out", str(two), *args, "--micro-batch-size", "2"))
    assert_close(weights(two), weights(one))
    metrics = [[json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()] for run in (one, two)]
    assert [m["loss"] for m in metrics[0]] == pytest.approx([m["loss"] for m in metrics[1]], rel=1e-5)
    assert metrics[0][-1]["val_loss"] == pytest.approx(metrics[1][-1]["val_loss"], rel=1e-5)  # same rows and noise


def test_kill_9_resumes_exactly_and_ignores_a_partial_snapshot(tmp_path, corpus_file, reference):
    """SIGKILL after the first snapshot; a half-written snapshot directory (what a crash during a save leaves) is
    neither picked up nor kept; the resumed run ends bit-identical to the uninterrupted one."""
    run = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "didi.cli", "train", "--out", str(run), "--data", str(corpus_file),
                             "--steps", str(STEPS), *RUN_ARGS], env=ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        wait_for_snapshot(run, proc)
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=60) == -signal.SIGKILL
    finally:
        proc.kill()
    killed_at = snapshot_step(run)
    assert killed_at < STEPS
    partial = run / "checkpoints" / f".tmp-{checkpoint.snapshot_name(STEPS)}-12345"
    partial.mkdir()
    complete = checkpoint.latest_snapshot(run) / "model.safetensors"
    (partial / "model.safetensors").write_bytes(complete.read_bytes()[:99])
    assert checkpoint.latest_snapshot(run).name == checkpoint.snapshot_name(killed_at)

    assert main(["train", "--resume", str(run), "--progress", "false"]) == 0
    assert not partial.exists()
    assert_equal(weights(run), weights(reference))
    assert_equal(weights(run, "ema"), weights(reference, "ema"))


PREPARE_FAILS = textwrap.dedent('''
    import sys
    from pathlib import Path
    from didi.runtime import distributed
    from didi.errors import DidiError

    ctx = distributed.init("cpu")
    try:
        with distributed.main_process_first():
            if ctx.is_main:
                raise DidiError("corpus.txt: no such file")
        outcome = "no error"
    except DidiError as exc:
        outcome = str(exc)
    Path(sys.argv[1], f"rank{ctx.rank}.txt").write_text(outcome)
    distributed.barrier()
''')


def test_rank_0_errors_reach_every_rank(tmp_path):
    """Rank 0 fails inside ``main_process_first``: every other rank raises the same error instead of waiting."""
    script = tmp_path / "prepare_fails.py"
    script.write_text(PREPARE_FAILS)
    run_ok([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", str(script),
            str(tmp_path)], timeout=120)
    assert [(tmp_path / f"rank{r}.txt").read_text() for r in (0, 1)] == ["corpus.txt: no such file"] * 2


def test_a_failing_distributed_run_exits_with_one_line(tmp_path):
    """The same through ``didi train``: torchrun may stop rank 1 before it prints, so at least rank 0's line."""
    proc = subprocess.run(torchrun(2, "train", "--out", str(tmp_path / "run"), "--data",
                                   str(tmp_path / "missing.txt"), *TINY_TRAIN_ARGS),
                          env=ENV, capture_output=True, text=True, timeout=120)
    errors = [line for line in (proc.stdout + proc.stderr).splitlines() if line.startswith("didi: error:")]
    assert proc.returncode != 0 and errors and all("missing.txt" in e for e in errors), errors


def test_an_empty_validation_split_is_skipped(tmp_path, corpus_file):
    run = tmp_path / "run"
    assert main(["train", "--out", str(run), "--data", str(corpus_file), "--steps", "2", "--valid-fraction", "0",
                 *TINY_TRAIN_ARGS]) == 0
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert records[-1]["step"] == 2 and not any("val_loss" in record for record in records)


def test_batch_split():
    assert batch_split(32, 0, 4) == (8, 1)
    assert batch_split(32, 2, 4) == (2, 4)
    with pytest.raises(ConfigError, match="--global-batch-size"):
        batch_split(30, 0, 4)
    with pytest.raises(ConfigError, match="--micro-batch-size"):
        batch_split(32, 3, 4)


# ------------------------------------------------------------------------------------------------ storage

def test_memmap_blocks_give_the_same_batches_as_in_memory(tmp_path, corpus_file):
    prepared = prepare_data(DataConfig(data=str(corpus_file), tokenizer="bpe", vocab_size=300, seq_len=32),
                            progress=False)
    assert isinstance(prepared.train.array, np.memmap)
    in_memory = TokenBlocks(np.array(prepared.train.array))
    path = tmp_path / "blocks.npy"
    in_memory.save(path)
    reloaded = TokenBlocks.load(path, mmap=True)
    assert isinstance(reloaded.array, np.memmap)
    schedule = BatchSchedule(len(in_memory), 8, seed=3)
    steps = range(0, 3 * len(in_memory) // 8, 7)  # crosses epoch boundaries
    for step in steps:
        for rank in range(2):
            rows = shard(schedule.indices(step), rank, 2)
            expected = in_memory.batch(rows)
            assert torch.equal(prepared.train.batch(rows), expected)
            assert torch.equal(reloaded.batch(rows), expected)


# ------------------------------------------------------------------------------------------------ distillation

def distill_args(teacher: Path, out: Path, steps: int) -> list[str]:
    return ["distill", "--teacher", str(teacher), "--out", str(out), "--steps", str(steps), "--batch-size", "4",
            "--group-size", "2", "--lr", "1e-4", "--warmup-steps", "1", "--save-every", "2", "--log-every", "1",
            "--progress", "false"]


def test_distill_two_processes_are_deterministic_and_resume(tmp_path, teacher_run):
    """Exact equality with one process is impossible by design: each rank draws its rows' rollouts from its own
    (seed, step, rank) stream. So: two 2-process runs with the same seed agree bit for bit, also when one is
    stopped and resumed, and the gradient averaging itself is checked against one process in the next test."""
    full, part = tmp_path / "full", tmp_path / "part"
    run_ok(torchrun(2, *distill_args(teacher_run, full, 4)))
    run_ok(torchrun(2, *distill_args(teacher_run, part, 2)))
    run_ok(torchrun(2, "distill", "--resume", str(part), "--steps", "4", "--progress", "false"))
    for name in ("model", "ema", "discriminator"):
        assert_equal(weights(full, name), weights(part, name))
    assert not all(torch.equal(a, b) for a, b in zip(weights(full).values(), weights(teacher_run).values()))
    last = json.loads((full / "metrics.jsonl").read_text().splitlines()[-1])
    assert last["step"] == 4 and all(np.isfinite(v) for v in last.values())


DDP_GRADIENTS = textwrap.dedent('''
    """Each network of DiDi-Instruct runs two forward passes before one backward (student: steps 1 and 2 of the
    rollout; discriminator: real and fake rows). Under DDP the averaged gradients must equal the mean of the
    per-rank gradients computed in one process."""
    import copy

    import torch

    from didi.runtime import distributed as dist
    from didi.models.dit import DiT
    from didi.config import ModelConfig
    from didi.diffusion.process import forward_mask
    from didi.diffusion.instruct import discriminator_loss
    from didi.recipes.didi_instruct import DiDiInstruct, InstructConfig

    MASK, N, L = 11, 4, 8
    ctx = dist.init("cpu")
    torch.manual_seed(0)
    teacher = DiT(ModelConfig(vocab_size=MASK + 1, hidden_size=32, n_blocks=3, n_heads=2, cond_dim=16,
                              max_seq_len=L, dropout=0.1))
    with torch.no_grad():  # leave the zero-initialised output and adaLN layers
        for p in teacher.parameters():
            p.add_(0.3 * torch.randn_like(p))
    cfg = InstructConfig(teacher="t", out="o", disc_blocks=2, progress=False)


    def build():
        torch.manual_seed(1)  # same spectral-norm vectors everywhere
        return DiDiInstruct.from_teacher(copy.deepcopy(teacher), cfg, MASK, 1e-3, torch.device("cpu"))


    def backward(models, rank):
        g = torch.Generator().manual_seed(100 + rank)
        torch.manual_seed(200 + rank)  # dropout
        tau = 0.05 + 0.9 * torch.rand(N, generator=g, dtype=torch.float64)
        rollout = models.rollout(N, L, tau, g)
        alpha, sigma = models.schedule.alpha(tau)[:, None], models.schedule.sigma(tau).float()
        z_real = forward_mask(torch.randint(0, MASK, (N, L), generator=g), alpha, MASK,
                              torch.rand(N, L, generator=g, dtype=torch.float64))
        z_fake = forward_mask(rollout.x_fake, alpha, MASK, torch.rand(N, L, generator=g, dtype=torch.float64))
        discriminator_loss(models.disc_logits(z_real, sigma), z_real == MASK, models.disc_logits(z_fake, sigma),
                           z_fake == MASK, 0.1).backward()
        (-(torch.randn(N, generator=g) * rollout.log_prob).mean()).backward()


    def grads(module):
        return torch.cat([p.grad.flatten() for p in dist.unwrap(module).parameters() if p.requires_grad])


    models = build()
    models.student = dist.ddp(models.student, ctx.device)
    models.discriminator = dist.ddp(models.discriminator, ctx.device)
    backward(models, ctx.rank)
    references = [build() for _ in range(ctx.world_size)]  # one per rank: spectral norm updates its vectors
    for rank, reference in enumerate(references):
        backward(reference, rank)
    for name in ("student", "discriminator"):
        got = grads(getattr(models, name))
        expected = sum(grads(getattr(reference, name)) for reference in references) / ctx.world_size
        assert expected.abs().max() > 1e-3, name
        assert torch.allclose(got, expected, rtol=1e-5, atol=1e-7), (name, float((got - expected).abs().max()))
    print(f"rank {ctx.rank}: DDP gradients match")
''')


def test_distill_ddp_gradients_match_one_process(tmp_path):
    script = tmp_path / "ddp_gradients.py"
    script.write_text(DDP_GRADIENTS)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", str(script)]
    output = run_ok(command)
    assert "rank 0: DDP gradients match" in output and "rank 1: DDP gradients match" in output


def test_grouped_normalisation_never_mixes_ranks():
    """A rank holds whole groups: its real rows, each replicated G times (as distill_step does), so the advantages
    computed per rank are those of the global batch, and one rank's rewards cannot move another rank's."""
    world, batch, group = 2, 6, 3
    rows = BatchSchedule(20, batch, seed=0).indices(5)
    shares = [torch.from_numpy(shard(rows, rank, world)).repeat_interleave(group) for rank in range(world)]
    assert torch.equal(torch.cat(shares), torch.from_numpy(rows).repeat_interleave(group))
    for share in shares:
        assert all(len(set(g.tolist())) == 1 for g in share.view(-1, group))  # each group: one real row
    g = torch.Generator().manual_seed(0)
    rewards = [torch.randn(len(share), generator=g) * 5 for share in shares]
    per_rank = torch.cat([group_advantages(r, group) for r in rewards])
    assert torch.equal(per_rank, group_advantages(torch.cat(rewards), group))
    rewards[1] = rewards[1] * 100 + 7
    assert torch.equal(group_advantages(torch.cat(rewards), group)[:len(shares[0])], per_rank[:len(shares[0])])
