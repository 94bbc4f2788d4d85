"""Logs that work in files: progress bars only on a terminal, plain lines every --log-every steps elsewhere (or with
--progress false), --progress/--quiet honoured by every command, and the metrics records written to metrics.jsonl,
TensorBoard and CSV."""
import csv
import json
import re

import pytest

from conftest import TINY_TRAIN_ARGS
from didi.cli import build_parser, config_from_args, main
from didi.runtime import progress
from didi.runtime.metrics_log import MetricsLog, read_metrics

STEP_LINE = re.compile(r"^\[didi\] (?P<desc>[\w -]+) step (?P<step>\d+)/(?P<total>\d+) \([^)]*\): (?P<values>.*)$")


def step_lines(err: str) -> list[tuple[int, dict[str, str]]]:
    """``(step, {key: value})`` of every plain step line of a log."""
    out = []
    for line in err.splitlines():
        match = STEP_LINE.match(line)
        if match:
            out.append((int(match["step"]), dict(kv.split("=", 1) for kv in match["values"].split())))
    return out


@pytest.fixture
def terminal(monkeypatch):
    """Pretend stderr is a terminal (the one check every bar goes through)."""
    monkeypatch.setattr(progress, "bars_work", lambda: True)


def train(out, corpus_file, *extra):
    return main(["train", "--out", str(out), "--data", str(corpus_file), "--steps", "6", "--log-every", "2",
                 "--save-every", "6", *TINY_TRAIN_ARGS, "--progress", "true", *extra])


# ------------------------------------------------------------------------------------------------ the mechanism

def test_off_a_terminal_a_line_every_few_seconds_and_one_at_the_end(monkeypatch, capsys):
    clock = [0.0]
    monkeypatch.setattr(progress.time, "perf_counter", lambda: clock[0])
    with progress.Progress(6, "sampling", unit="step", every_s=25.0) as bar:
        for _ in range(6):
            clock[0] += 10.0  # a step every 10 s: lines after steps 3 (30 s) and 6 (60 s)
            bar.update()
    err = capsys.readouterr().err
    assert err.splitlines() == ["[didi] sampling: 3/6 steps (50%), 30 s, ~30 s left",
                                "[didi] sampling: 6/6 steps (100%), 60 s",
                                "[didi] sampling: 6/6 steps (100%) in 60 s"]


def test_short_work_prints_nothing_off_a_terminal_and_disabled_work_nothing_anywhere(monkeypatch, capsys):
    assert list(progress.track(range(3), "quick", every_s=3600.0)) == [0, 1, 2]
    monkeypatch.setattr(progress, "bars_work", lambda: True)
    assert list(progress.track(range(3), "off", enabled=False)) == [0, 1, 2]
    assert capsys.readouterr().err == ""


def test_a_terminal_gets_a_bar(terminal, capsys):
    with progress.Progress(4, "teacher pool", unit="batch") as bar:
        assert bar.is_bar
        for _ in range(4):
            bar.update()
    assert "\r" in capsys.readouterr().err


def test_step_line_reads_like_the_metrics():
    line = progress.step_line("distill", 20, 200, {"loss": "3.41", "lr": "1.00e-03"}, elapsed=30.0, done=10)
    assert line == "[didi] distill step 20/200 (10%, 30 s, ~9.0 min left): loss=3.41 lr=1.00e-03"
    assert step_lines(line) == [(20, {"loss": "3.41", "lr": "1.00e-03"})]


# ------------------------------------------------------------------------------------------------- the commands

def test_train_in_a_file_prints_a_line_every_log_every_steps(tmp_path, corpus_file, capsys):
    assert train(tmp_path / "run", corpus_file) == 0
    err = capsys.readouterr().err
    assert "\r" not in err
    lines = step_lines(err)
    assert [step for step, _ in lines] == [2, 4, 6]
    records = [r for r in read_metrics(tmp_path / "run") if "loss" in r]
    assert [r["step"] for r in records] == [2, 4, 6]
    for (_, shown), record in zip(lines, records):  # the line shows the record's values
        assert set(shown) == {"loss", "lr", "tok_s", "grad_norm"}
        assert float(shown["loss"]) == pytest.approx(record["loss"], abs=5e-4)
        assert float(shown["lr"]) == pytest.approx(record["lr"], rel=1e-2)
        assert float(shown["grad_norm"]) == pytest.approx(record["grad_norm"], rel=1e-2)


def test_train_on_a_terminal_draws_a_bar_and_progress_false_prints_lines(tmp_path, corpus_file, terminal, capsys):
    assert train(tmp_path / "bar", corpus_file) == 0
    err = capsys.readouterr().err
    assert "\r" in err and "train mdlm" in err and step_lines(err) == []
    assert train(tmp_path / "lines", corpus_file, "--progress", "false") == 0
    err = capsys.readouterr().err
    assert "\r" not in err and [step for step, _ in step_lines(err)] == [2, 4, 6]


DISTILL_SHOWN = {"didi-instruct": {"disc_loss", "reward", "advantage_std", "kl", "entropy", "samples_per_s"},
                 "sdtt": {"loss", "round", "samples_per_s"}}


@pytest.mark.parametrize("method", ["didi-instruct", "sdtt"])
def test_distill_in_a_file_prints_the_methods_metrics(tmp_path, teacher_run, method, capsys):
    extra = (["--group-size", "2"] if method == "didi-instruct" else
             ["--rounds", "2", "--round-steps", "2", "--start-nfe", "8"])
    out = tmp_path / "student"
    assert main(["distill", "--method", method, "--teacher", str(teacher_run), "--out", str(out), "--steps", "4",
                 "--batch-size", "2", "--lr", "1e-4", "--warmup-steps", "1", "--save-every", "4", "--log-every",
                 "2", *extra]) == 0
    err = capsys.readouterr().err
    assert "\r" not in err
    lines = step_lines(err)
    assert [step for step, _ in lines] == [2, 4] and all(set(shown) == DISTILL_SHOWN[method] for _, shown in lines)
    records = read_metrics(out)
    assert [r["step"] for r in records] == [2, 4]
    for (_, shown), record in zip(lines, records):
        assert all(float(shown[k]) == pytest.approx(record[k], rel=1e-2, abs=1e-9) for k in shown)


def texts(out: str) -> list[str]:
    """The printed samples without their headers (which hold timings)."""
    return [line for line in out.splitlines() if not line.startswith("--- sample")]


def test_sample_quiet_prints_no_bar_and_progress_false_no_bar_but_the_samples(teacher_run, terminal, capsys):
    base = ["sample", "--model", str(teacher_run), "--nfe", "4", "--num-samples", "2", "--device", "cpu"]
    assert main(base) == 0
    shown = capsys.readouterr()
    assert "\r" in shown.err and "sampling" in shown.err and shown.out  # the bar this test would catch
    assert main([*base, "--quiet"]) == 0
    quiet = capsys.readouterr()
    assert "\r" not in quiet.err and "sampling" not in quiet.err and quiet.out == ""
    assert quiet.err.splitlines()[-1].startswith("[didi] 2 samples, nfe 4")
    assert main([*base, "--progress", "false"]) == 0
    lines = capsys.readouterr()
    assert "\r" not in lines.err and "sampling" not in lines.err and texts(lines.out) == texts(shown.out)


def test_eval_and_quickstart_take_progress():
    from didi.recipes.evaluate.runner import EvalConfig
    from didi.recipes.quickstart import QuickstartConfig

    args = build_parser("eval").parse_args(["eval", "--model", "m", "--progress", "false"])
    assert config_from_args(EvalConfig, args).progress is False
    args = build_parser("quickstart").parse_args(["quickstart", "--progress", "false"])
    assert config_from_args(QuickstartConfig, args).progress is False


def test_eval_progress_reaches_the_sampler(teacher_run, terminal, capsys):
    base = ["eval", "--model", str(teacher_run), "--nfe", "4", "--num-samples", "2", "--no-likelihood",
            "--no-references", "--warmup", "0", "--repeats", "1", "--device", "cpu"]
    assert main([*base, "--progress", "false"]) == 0
    quiet = capsys.readouterr().err
    assert "\r" not in quiet and "[didi eval]" in quiet  # the row lines stay
    assert main(base) == 0
    assert "\r" in capsys.readouterr().err


def test_a_bad_log_to_is_one_line_naming_the_option(tmp_path, corpus_file, capsys):
    assert train(tmp_path / "run", corpus_file, "--log-to", "wandb") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--log-to" in err[0] and "wandb" in err[0]
    assert not (tmp_path / "run" / "config.json").exists()


# ----------------------------------------------------------------------------------------- TensorBoard and CSV

def scalars(log_dir) -> dict[str, list[tuple[int, float]]]:
    """Every scalar of the event files in ``log_dir``, as TensorBoard shows them."""
    from tensorboard.backend.event_processing import event_accumulator

    acc = event_accumulator.EventAccumulator(str(log_dir), size_guidance={event_accumulator.SCALARS: 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_train_writes_the_records_to_tensorboard_and_csv(tmp_path, corpus_file):
    pytest.importorskip("tensorboard")
    run = tmp_path / "run"
    assert train(run, corpus_file, "--log-to", "tensorboard,csv", "--eval-every", "3", "--eval-batches", "1") == 0
    records = read_metrics(run)
    seen = scalars(run / "tensorboard")
    for key in ("loss", "lr", "grad_norm", "tokens_per_s", "val_loss", "val_ppl"):
        expected = [(r["step"], r[key]) for r in records if key in r]
        assert [s for s, _ in seen[key]] == [s for s, _ in expected]
        assert [v for _, v in seen[key]] == pytest.approx([v for _, v in expected], rel=1e-6)
    assert [s for s, _ in seen["val_loss"]] == [3, 6]
    with open(run / "metrics.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [int(r["step"]) for r in rows] == [r["step"] for r in records]
    for row, record in zip(rows, records):
        assert {k: float(v) for k, v in row.items() if v != ""} == pytest.approx(record)


def test_a_resumed_run_hides_the_events_past_its_snapshot(tmp_path):
    pytest.importorskip("tensorboard")
    log = MetricsLog(tmp_path, ["tensorboard"])
    for step in (1, 2, 3, 4):
        log.write({"step": step, "loss": float(step)})
    log.close()
    resumed = MetricsLog(tmp_path, ["tensorboard"], start=2)  # the stopped run's steps 3 and 4 are redone
    for step in (3, 4, 5):
        resumed.write({"step": step, "loss": 10.0 * step})
    resumed.close()
    assert scalars(tmp_path / "tensorboard")["loss"] == [(1, 1.0), (2, 2.0), (3, 30.0), (4, 40.0), (5, 50.0)]
    assert [json.loads(line)["step"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()] == \
        [1, 2, 3, 4, 3, 4, 5]  # trimming metrics.jsonl is the resume's job (checkpoint.trim_metrics), not the log's



@pytest.mark.parametrize("unit, total, shown", [("batch", 16, "0/16 batches (0%)"), ("step", 2, "0/2 steps (0%)"),
                                                ("batch", 1, "0/1 batch (0%)"), ("pass", 3, "0/3 passes (0%)")])
def test_lines_name_the_unit_in_english(unit, total, shown):
    with progress.Progress(total, "work", unit=unit, enabled=False) as bar:
        assert bar._count() == shown
