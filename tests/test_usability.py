"""What a new user trips over (issue 17): short runs, the cache, file modes, a fast `didi --help` and CLI gaps.
Interrupted runs are in test_interrupts.py, plot axes in test_plot_axes.py."""
from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time

import pytest
import torch

from conftest import TINY_TRAIN_ARGS
from didi.cli import build_parser, main
from didi.config import fit_warmups
from didi.data.corpora import DataConfig, prepare_data
from didi.recipes.didi_instruct import InstructConfig
from didi.runtime import cache, checkpoint

# ----------------------------------------------------------------------------------------------- short runs


def test_fit_warmups_scales_only_warmups_longer_than_half_the_run():
    def fit(steps, warmup, disc_warmup=0):
        return fit_warmups(InstructConfig(steps=steps, warmup_steps=warmup, disc_warmup_steps=disc_warmup),
                           "warmup_steps", "disc_warmup_steps")

    cfg = InstructConfig(steps=2000, warmup_steps=100)
    assert fit_warmups(cfg, "warmup_steps") == (cfg, {}, None)
    assert fit(10, 5)[1:] == ({}, None)  # exactly half: kept
    cfg, fitted, note = fit(10, 6)
    assert (cfg.warmup_steps, cfg.disc_warmup_steps, cfg.steps) == (1, 0, 10)
    assert fitted == {"warmup_steps": {"requested": 6, "used": 1}}
    assert note == "--warmup-steps 6 is more than half of --steps 10: using 1 (10% of the run)"
    cfg, fitted, note = fit(5, 1000)
    assert cfg.warmup_steps == 0 and list(fitted) == ["warmup_steps"] and "disc" not in note
    cfg, fitted, note = fit(30, 100, 40)
    assert (cfg.warmup_steps, cfg.disc_warmup_steps) == (3, 3)
    assert note == "--warmup-steps 100, --disc-warmup-steps 40 are more than half of --steps 30: using 3, 3 (10% of " \
                   "the run)"


def test_short_training_run_reaches_its_learning_rate(tmp_path, corpus_file, capsys):
    """--steps 6 with --warmup-steps 100: the warm-up becomes 1 step (one line says so, config.json records it),
    so the rate is at its peak (constant schedule) from the first step instead of 1-6% of it."""
    run = tmp_path / "run"
    assert main(["train", "--out", str(run), "--data", str(corpus_file), "--steps", "6", *TINY_TRAIN_ARGS,
                 "--warmup-steps", "100", "--lr", "2e-3", "--lr-schedule", "constant", "--log-every", "1"]) == 0
    assert "[didi] --warmup-steps 100 is more than half of --steps 6: using 1 (10% of the run)" in \
        capsys.readouterr().err
    training = checkpoint.read_run_config(run).training
    assert training["warmup_steps"] == 1
    assert training["fitted_warmups"] == {"warmup_steps": {"requested": 100, "used": 1}}
    lrs = [json.loads(line)["lr"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert lrs == [2e-3] * 6


def test_short_distillation_trains_the_student(tmp_path, teacher_run, capsys):
    """--steps 3 with the published 1000-step warm-up and a discriminator warm-up as long as the run: both are
    scaled to 0, so the student is updated (without the scaling its weights would not move at all)."""
    out = tmp_path / "student"
    assert main(["distill", "--teacher", str(teacher_run), "--out", str(out), "--steps", "3", "--batch-size", "2",
                 "--group-size", "2", "--lr", "1e-3", "--disc-warmup-steps", "3", "--progress", "false"]) == 0
    assert "--warmup-steps 1000, --disc-warmup-steps 3 are more than half of --steps 3: using 0, 0" in \
        capsys.readouterr().err
    config = checkpoint.read_run_config(out)
    assert config.extra["distill"]["warmup_steps"] == 0 and config.extra["distill"]["disc_warmup_steps"] == 0
    assert config.extra["fitted_warmups"]["warmup_steps"] == {"requested": 1000, "used": 0}
    student, teacher = checkpoint.load_tensors(out / "model.safetensors"), \
        checkpoint.load_tensors(teacher_run / "ema.safetensors")
    moved = [k for k in teacher if not torch.equal(student[k], teacher[k])]
    assert len(moved) > len(teacher) // 2


# ----------------------------------------------------------------------------------------------------- cache

def test_cache_root_honours_didi_cache_then_xdg(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("DIDI_CACHE", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    assert cache.cache_root() == tmp_path / "home" / ".cache" / "didi"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache.cache_root() == tmp_path / "xdg" / "didi"
    monkeypatch.setenv("DIDI_CACHE", str(tmp_path / "mine"))
    assert cache.cache_root() == tmp_path / "mine"


def test_token_cache_is_announced_listed_and_cleared(tmp_path, monkeypatch, corpus_file, capsys):
    root = tmp_path / "cache"
    monkeypatch.setenv("DIDI_CACHE", str(root))
    (root).mkdir()
    (root / "notes.txt").write_text("not didi's")  # a shared cache root: only didi's folders are touched
    config = DataConfig(data=str(corpus_file), tokenizer="bpe", vocab_size=300, seq_len=32)
    prepare_data(config, progress=False)
    err = capsys.readouterr().err
    assert f"[didi] cached tokens of {corpus_file}: {root / 'tokens'}/ (" in err and "didi cache clear" in err
    prepare_data(config, progress=False)
    assert "cached" not in capsys.readouterr().err  # found in the cache: nothing new to announce

    files = sorted(p.name for p in (root / "tokens").iterdir())
    assert len(files) == 4 and all(f.endswith((".npy", ".json")) for f in files)  # .npy blocks, .json stats
    assert main(["cache", "list"]) == 0
    out = capsys.readouterr().out.splitlines()
    size = sum(p.stat().st_size for p in (root / "tokens").iterdir())
    assert out[0] == f"{root}: 2 entries, {cache.format_size(size)}"
    assert sum("play.txt train, seq_len 32" in line for line in out) == 1
    assert main(["cache", "clear"]) == 0
    assert capsys.readouterr().out.strip() == f"removed {cache.format_size(size)} from {root}"
    assert not (root / "tokens").exists() and (root / "notes.txt").read_text() == "not didi's"
    assert main(["cache", "list"]) == 0
    assert capsys.readouterr().out.strip() == f"{root}: 0 entries, 0 B"


# ------------------------------------------------------------------------- exports, info, converted copies

@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def test_exported_directory_info_sample_and_modes(tmp_path, teacher_run, monkeypatch, capsys, umask_022):
    """`didi export` writes 0644 files like the rest; `didi info` describes the export; `didi sample` on it
    announces the converted copy in the cache; `didi info` on a converted run says so instead of "step ?"."""
    monkeypatch.setenv("DIDI_CACHE", str(tmp_path / "cache"))
    hf = tmp_path / "hf"
    assert main(["export", str(teacher_run), str(hf)]) == 0
    capsys.readouterr()
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in hf.iterdir()}
    assert modes and set(modes.values()) == {0o644}, modes
    assert stat.S_IMODE((teacher_run / "model.safetensors").stat().st_mode) == 0o644  # run directories too

    assert main(["info", str(hf)]) == 0
    out = capsys.readouterr().out
    assert f"checkpoint: {hf} (hf layout, not a run directory" in out
    assert "kind:       mdlm" in out and "hidden 32, 2 blocks, 2 heads, vocab 301" in out
    assert main(["info", str(hf), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["model"]["hidden_size"] == 32

    assert main(["sample", "--model", str(hf), "--nfe", "2", "--num-samples", "1", "--quiet"]) == 0
    converted = next((tmp_path / "cache" / "converted").iterdir())
    assert f"[didi] cached conversion of {hf}: {converted} (" in capsys.readouterr().err
    assert main(["sample", "--model", str(hf), "--nfe", "2", "--num-samples", "1", "--quiet"]) == 0
    assert "cached" not in capsys.readouterr().err

    assert main(["info", str(converted)]) == 0
    out = capsys.readouterr().out
    assert "step ?" not in out and "model.safetensors (converted," in out
    assert f"converted:  from {hf} (hf layout)" in out


# ------------------------------------------------------------------------------------------------- CLI gaps

def test_sample_out_txt_is_plain_text_and_unknown_suffixes_are_refused(tmp_path, teacher_run, capsys):
    out = tmp_path / "samples.txt"
    assert main(["sample", "--model", str(teacher_run), "--nfe", "4", "--num-samples", "2", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    text = out.read_text()
    assert text == printed and text.startswith("--- sample 0 (nfe ") and "--- sample 1 (nfe " in text
    with pytest.raises(json.JSONDecodeError):
        json.loads(text.splitlines()[0])
    assert main(["sample", "--model", str(teacher_run), "--out", str(tmp_path / "s.csv")]) == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("didi: error: --out: ") and "s.csv: unknown format .csv" in line
    assert not (tmp_path / "s.csv").exists()
    assert main(["eval", "--samples", str(out), "--no-likelihood"]) == 2
    assert "plain-text file holds the sequences only" in capsys.readouterr().err


def test_train_refuses_a_folder_with_other_files_unless_forced(tmp_path, corpus_file, capsys):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "thesis.tex").write_text("my work")
    args = ["train", "--out", str(folder), "--data", str(corpus_file), "--steps", "1", *TINY_TRAIN_ARGS]
    assert main(args) == 2
    assert "mine: already exists and is not empty (pass --force" in capsys.readouterr().err
    assert sorted(p.name for p in folder.iterdir()) == ["thesis.tex"]
    assert main([*args, "--force"]) == 0
    assert (folder / "thesis.tex").read_text() == "my work" and (folder / "config.json").exists()


def test_resume_says_where_it_starts(tmp_path, corpus_file, capsys):
    run = tmp_path / "run"
    assert main(["train", "--out", str(run), "--data", str(corpus_file), "--steps", "2", *TINY_TRAIN_ARGS]) == 0
    capsys.readouterr()
    assert main(["train", "--resume", str(run), "--steps", "3", "--progress", "false"]) == 0
    assert f"[didi] resuming from step 2 of 3 ({run / 'checkpoints' / 'step-00000002'})" in capsys.readouterr().err


def test_a_mistyped_path_is_not_sent_to_the_hub(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    assert main(["sample", "--model", "runs/typo"]) == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line == "didi: error: runs/typo: no such file or directory"


def test_nfe_does_not_apply_to_an_ar_model(tmp_path, corpus_file, capsys):
    """A note rather than an error: `didi eval` and scripts pass one --nfe to diffusion and AR models alike."""
    run = tmp_path / "ar"
    assert main(["train-ar", "--out", str(run), "--data", str(corpus_file), "--steps", "1", *TINY_TRAIN_ARGS]) == 0
    capsys.readouterr()
    assert main(["sample", "--model", str(run), "--nfe", "8", "--num-samples", "1", "--quiet"]) == 0
    err = capsys.readouterr().err
    assert "[didi] --nfe 8 does not apply to an autoregressive model: it makes one network call per generated " \
           "token" in err
    assert "nfe 31" in err  # one call per generated token of a 32-token block, whatever --nfe said
    assert main(["sample", "--model", str(run), "--num-samples", "1", "--quiet"]) == 0
    assert "does not apply" not in capsys.readouterr().err


def test_no_option_shows_an_empty_default():
    parser = build_parser(full=True)
    commands = parser._subparsers._group_actions[0].choices
    assert len(commands) >= 10
    for name, sub in commands.items():
        assert "(default: )" not in sub.format_help(), name
    assert "--teacher STR" in commands["distill"].format_help()


# ------------------------------------------------------------------------------------------------- --help

HELP_PROBE = """
import sys, time
start = time.perf_counter()
from didi.cli import main
try:
    main(["--help"])
except SystemExit:
    pass
print("TIMING", time.perf_counter() - start, "torch" in sys.modules, "numpy" in sys.modules)
"""


def test_top_level_help_imports_no_torch_and_is_fast():
    """`didi --help` declares no command's options (they import torch). Measured for the whole process on the
    2-core development machine under a load of 6-7: 0.25-0.37 s, against 7.6-8.5 s before. The time bounds are
    loose (a loaded CI machine takes 0.2 s to start Python at all); the import check is the real guard."""
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", HELP_PROBE], capture_output=True, text=True, timeout=60)
    wall = time.perf_counter() - started
    assert proc.returncode == 0, proc.stderr
    assert "train-ar" in proc.stdout and "cache" in proc.stdout
    seconds, torch_loaded, numpy_loaded = proc.stdout.split("TIMING")[1].split()
    assert torch_loaded == "False" and numpy_loaded == "False"
    assert float(seconds) < 1.5 and wall < 6.0, (seconds, wall)


def test_command_help_still_lists_config_options(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = capsys.readouterr().out
    assert "--warmup-steps" in out and "--force" in out and "--data" in out
