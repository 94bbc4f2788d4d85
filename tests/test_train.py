import hashlib
import json

import pytest
import torch

from conftest import TINY_TRAIN_ARGS
from didi.cli import main
from didi.diffusion.process import LogLinearSchedule, mdlm_token_losses, sample_times
from didi.errors import TrainingError
from didi.models.dit import DiT
from didi.runtime import checkpoint


def digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_loss_falls_on_a_fixed_batch(tiny_model_config):
    torch.manual_seed(0)
    model = DiT(tiny_model_config)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    start, stride = torch.randint(0, 10, (16, 1), generator=g), torch.randint(1, 4, (16, 1), generator=g)
    x = (start + stride * torch.arange(16)) % 10  # each row is predictable from any two of its tokens
    losses = []
    for _ in range(150):
        loss = mdlm_token_losses(model, x, sample_times(16, g), torch.rand(16, 16, generator=g),
                                 schedule=LogLinearSchedule(), mask_index=10).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    first, last = sum(losses[:10]) / 10, sum(losses[-10:]) / 10
    assert last < 0.8 * first, (first, last)


def train_args(out, corpus, steps, *extra):
    return ["train", "--out", str(out), "--data", str(corpus), "--steps", str(steps), *TINY_TRAIN_ARGS, *extra]


def read_metrics(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_run_directory_layout(teacher_run):
    for name in ("config.json", "model.safetensors", "ema.safetensors", "trainer_state.pt", "tokenizer.json"):
        assert (teacher_run / name).exists(), name
    config = checkpoint.read_run_config(teacher_run)
    assert config.kind == "mdlm" and config.model.vocab_size == 301 and config.diffusion.mask_index == 300
    assert [p.name for p in checkpoint.list_snapshots(teacher_run)] == ["step-00000040"]
    assert checkpoint.tensors_metadata(teacher_run / "model.safetensors")["step"] == "40"
    losses = [m["loss"] for m in read_metrics(teacher_run)]
    assert losses[-1] < losses[0]


def test_resume_continues_exactly(tmp_path, corpus_file):
    """Kill-free resume: 3 steps + resume to 6 == 6 uninterrupted steps (weights and losses), dropout on."""
    full, part = tmp_path / "full", tmp_path / "part"
    # the same learning rates whatever --steps says: a constant schedule after a warm-up short enough for the
    # 3-step first part (a warm-up over half of the run is scaled to it, see test_usability.py)
    extra = ["--dropout", "0.1", "--save-every", "3", "--log-every", "1", "--warmup-steps", "1", "--lr-schedule",
             "constant"]
    assert main(train_args(full, corpus_file, 6, *extra)) == 0
    assert main(train_args(part, corpus_file, 3, *extra)) == 0
    assert main(["train", "--resume", str(part), "--steps", "6", "--progress", "false"]) == 0
    a = checkpoint.load_tensors(full / "model.safetensors")
    b = checkpoint.load_tensors(part / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    ema_a, ema_b = checkpoint.load_tensors(full / "ema.safetensors"), checkpoint.load_tensors(part / "ema.safetensors")
    assert all(torch.equal(ema_a[k], ema_b[k]) for k in ema_a)
    assert [m["loss"] for m in read_metrics(full)] == [m["loss"] for m in read_metrics(part)]
    assert checkpoint.read_run_config(part).training["steps"] == 6  # a later --resume goes on to the new length


def test_crash_during_save_keeps_previous_checkpoint(tmp_path, corpus_file, monkeypatch):
    run = tmp_path / "run"
    assert main(train_args(run, corpus_file, 2, "--save-every", "2")) == 0
    before = {name: digest(run / name) for name in ("model.safetensors", "ema.safetensors", "trainer_state.pt")}
    real_save = checkpoint.save_tensors

    def crashing(path, tensors, metadata=None):
        if path.name == "ema.safetensors":
            raise OSError("disk full (simulated)")
        return real_save(path, tensors, metadata)

    monkeypatch.setattr(checkpoint, "save_tensors", crashing)
    with pytest.raises(OSError):
        main(["train", "--resume", str(run), "--steps", "4", "--save-every", "2", "--progress", "false"])
    monkeypatch.setattr(checkpoint, "save_tensors", real_save)
    assert [p.name for p in checkpoint.list_snapshots(run)] == ["step-00000002"]
    assert {name: digest(run / name) for name in before} == before
    assert not any(p.name.startswith(".tmp") for p in (run / "checkpoints").iterdir())
    # and the old checkpoint still resumes
    assert main(["train", "--resume", str(run), "--steps", "4", "--save-every", "2", "--progress", "false"]) == 0
    assert checkpoint.latest_snapshot(run).name == "step-00000004"


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path, corpus_file, monkeypatch):
    run = tmp_path / "run"
    assert main(train_args(run, corpus_file, 2, "--save-every", "2")) == 0
    before = digest(run / "model.safetensors")
    import didi.recipes.train as train_module

    real = train_module.mdlm_objective

    def poisoned(schedule, diffusion):
        objective = real(schedule, diffusion)
        return lambda model, x, noise: objective(model, x, noise) * float("nan")

    monkeypatch.setattr(train_module, "mdlm_objective", poisoned)
    with pytest.raises(TrainingError, match="non-finite loss at step 2"):
        train_module.train(train_module.resume_config(run, steps=4, progress=False), train_module.DataConfig(),
                           resume=True)
    assert digest(run / "model.safetensors") == before
    assert checkpoint.latest_snapshot(run).name == "step-00000002"


def test_cli_train_then_sample(tmp_path, teacher_run, capsys):
    out = tmp_path / "samples.jsonl"
    assert main(["sample", "--model", str(teacher_run), "--nfe", "8", "--num-samples", "3", "--seed", "1",
                 "--out", str(out)]) == 0
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(records) == 3
    for r in records:
        assert len(r["tokens"]) == 32 and 300 not in r["tokens"]  # no [MASK] left
        assert 1 <= r["nfe"] <= 8 and r["seconds"] > 0 and isinstance(r["text"], str)
    assert "--- sample 0" in capsys.readouterr().out
    assert main(["info", str(teacher_run)]) == 0


@pytest.mark.parametrize("make_bad, option", [
    (lambda d: (d / "empty.txt").write_text("   \n"), "empty"),
    (lambda d: (d / "latin1.txt").write_bytes("caf\xe9 ".encode("latin-1") * 2000), "UTF-8"),
    (lambda d: None, "not found"),
])
def test_bad_corpus_is_one_line_error(tmp_path, capsys, make_bad, option):
    make_bad(tmp_path)
    names = {"empty": "empty.txt", "UTF-8": "latin1.txt", "not found": "missing.txt"}
    path = tmp_path / names[option]
    assert main(train_args(tmp_path / "run", path, 2)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("didi: error:") and path.name in err[0]
    assert not (tmp_path / "run" / "config.json").exists()


def test_bad_sampling_inputs(tmp_path, teacher_run, capsys):
    assert main(["sample", "--model", str(teacher_run), "--nfe", "0"]) == 2
    assert "--nfe" in capsys.readouterr().err
    assert main(["sample", "--model", str(teacher_run), "--seq-len", "0"]) == 2  # above the length: windows
    assert "--seq-len: must be >= 1 (got 0)" in capsys.readouterr().err
    # truncated / missing weights and a tokenizer that does not match the model
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(teacher_run, broken)
    (broken / "ema.safetensors").unlink()
    data = (broken / "model.safetensors").read_bytes()
    (broken / "model.safetensors").write_bytes(data[: len(data) // 2])
    assert main(["sample", "--model", str(broken), "--nfe", "4"]) == 2
    assert "model.safetensors" in capsys.readouterr().err
    (broken / "model.safetensors").unlink()
    assert main(["sample", "--model", str(broken), "--nfe", "4"]) == 2
    assert "model.safetensors" in capsys.readouterr().err
    mismatch = tmp_path / "mismatch"
    shutil.copytree(teacher_run, mismatch)
    config = json.loads((mismatch / "config.json").read_text())
    config["tokenizer"]["vocab_size"] = 512
    (mismatch / "config.json").write_text(json.dumps(config))
    assert main(["sample", "--model", str(mismatch), "--nfe", "4"]) == 2
    assert "tokenizer" in capsys.readouterr().err


def test_training_never_overwrites_an_existing_run(teacher_run, corpus_file, capsys):
    before = digest(teacher_run / "model.safetensors")
    assert main(train_args(teacher_run, corpus_file, 2)) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert digest(teacher_run / "model.safetensors") == before


def test_invalid_option_names_the_option(tmp_path, corpus_file, capsys):
    assert main(train_args(tmp_path / "r", corpus_file, 0)) == 2
    assert "--steps" in capsys.readouterr().err
    assert main(train_args(tmp_path / "r", corpus_file, 2, "--lr-schedule", "weird")) == 2
    assert "--lr-schedule" in capsys.readouterr().err
