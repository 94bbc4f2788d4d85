"""An evaluation never throws its results away: rows saved as they finish and resumed (``didi.recipes.evaluate
.resume``), sample files that carry their provenance and combine over seeds (``.files``), the MAUVE warning."""
import json
import os
import re

import numpy as np
import pytest

from didi.cli import main
from didi.interop.sample_files import read_samples
from didi.recipes.evaluate import runner
from didi.recipes.evaluate.report import EvalReport
from didi.recipes.evaluate.resume import rows_path
from didi.recipes.evaluate.runner import EvalConfig, evaluate
from didi.recipes.evaluate.tables import format_table
from test_ar import corpus_runs, tiny_tokenizer

SEQ_LEN = 16
TIMING = ("latencies_s", "latency_s", "latency_per_sample_s", "tokens_per_s", "speedup", "peak_memory_mib")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    corpus_runs(root, tiny_tokenizer(), seq_len=SEQ_LEN)
    return root


def without_timings(report: dict) -> dict:
    """A saved report minus what depends on the clock (timings, speed-ups, the date, memory)."""
    rows = [{k: v for k, v in row.items() if k not in TIMING} for row in report["rows"]]
    return {"rows": rows, "frontiers": report["frontiers"], "target_entropy": report["target_entropy"]}


class CountingRows:
    """Wraps ``runner.sample_row``: counts the rows sampled and raises KeyboardInterrupt at call ``stop_at``."""

    def __init__(self, monkeypatch, stop_at: int | None = None):
        self.calls, self.stop_at, self.wrapped = [], stop_at, runner.sample_row
        monkeypatch.setattr(runner, "sample_row", self)

    def __call__(self, model, label, path, config, scoring, nfe, temperature, **kwargs):
        self.calls.append((label, nfe))
        if len(self.calls) == self.stop_at:
            raise KeyboardInterrupt
        return self.wrapped(model, label, path, config, scoring, nfe, temperature, **kwargs)


def test_interrupted_eval_keeps_its_rows_and_resumes(runs, tmp_path, monkeypatch, capsys):
    def argv(out):
        return ["eval", "--model", str(runs / "mdlm"), "--model", str(runs / "ar"), "--nfe", "2,4", "--num-samples",
                "3", "--eval-blocks", "2", "--warmup", "0", "--repeats", "1", "--device", "cpu", "--json", str(out)]

    full = tmp_path / "full" / "eval.json"
    counter = CountingRows(monkeypatch)
    assert main(argv(full)) == 0
    assert counter.calls == [("mdlm", 2), ("mdlm", 4), ("ar", None)]

    out = tmp_path / "resumed" / "eval.json"
    counter = CountingRows(monkeypatch, stop_at=2)  # Ctrl-C while sampling the second row
    assert main(argv(out)) == 130
    err = capsys.readouterr().err
    assert "interrupted: 1 finished unit(s) of rows are kept in" in err and not out.exists()
    [saved] = rows_path(out).read_text().splitlines()
    assert json.loads(saved)["about"]["nfe"] == 2 and json.loads(saved)["rows"][0]["nfe"] == 2

    counter = CountingRows(monkeypatch)
    assert main(argv(out)) == 0
    assert counter.calls == [("mdlm", 4), ("ar", None)]  # only the rows not saved yet
    assert "mdlm: 1 of 2 unit(s) of rows reused from" in capsys.readouterr().err
    resumed, reference = json.loads(out.read_text()), json.loads(full.read_text())
    assert without_timings(resumed) == without_timings(reference)
    notes = [[line for line in format_table(EvalReport.from_json(r)).splitlines() if line.startswith("- ")]
             for r in (resumed, reference)]
    assert notes[0] == notes[1] and any(line.startswith("- copy %: ") and "k = 8 tokens against the" in line
                                        for line in notes[0])
    assert [r["speedup"] is not None for r in resumed["rows"]] == [True, True, True, False]

    # a finished report again: nothing sampled; new weights for a model: its rows again; for the evaluator (the
    # AR model): every row; a new budget: its rows alone; --no-resume or another setting: every row
    def sampled(extra=()):
        counter = CountingRows(monkeypatch)
        assert main([*argv(out), *extra]) == 0
        return counter.calls

    def touch(weights):
        stat = weights.stat()
        os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))

    assert sampled() == []
    touch(runs / "mdlm" / "model.safetensors")
    assert sampled() == [("mdlm", 2), ("mdlm", 4)]
    touch(runs / "ar" / "model.safetensors")
    assert sampled() == [("mdlm", 2), ("mdlm", 4), ("ar", None)]
    assert sampled(["--nfe", "2,4,8"]) == [("mdlm", 8)]
    assert len(sampled(["--no-resume"])) == 3 and len(sampled(["--num-samples", "2"])) == 3


def test_sample_files_record_their_provenance_and_combine_over_seeds(runs, tmp_path, capsys):
    def sample(out, seed, nfe="4"):
        assert main(["sample", "--model", str(runs / "mdlm"), "--nfe", nfe, "--num-samples", "4", "--seed", str(seed),
                     "--device", "cpu", "--out", str(out), "--quiet", "--temperature", "0.9"]) == 0

    files = [tmp_path / "s0.jsonl", tmp_path / "s1.jsonl", tmp_path / "other-nfe.jsonl", tmp_path / "s0-again.jsonl"]
    for out, seed, nfe in zip(files, (0, 1, 2, 0), ("4", "4", "2", "4")):
        sample(out, seed, nfe)
    record = read_samples(files[1])[0]
    assert record["model"] == str(runs / "mdlm") and record["seed"] == 1 and record["num_steps"] == 4
    assert record["sampler"] == "ancestral" and record["controls"]["temperature"] == 0.9
    assert record["settings"] == {"use_cache": True, "weights": "ema", "seq_len": None, "stride": None,
                                  "sampler_options": {}}

    out = tmp_path / "eval.json"
    argv = ["eval", "--evaluator", str(runs / "ar"), "--device", "cpu", "--no-references", "--json", str(out)]
    assert main([*argv, *(a for f in files for a in ("--samples", str(f)))]) == 0
    stdout = capsys.readouterr().out
    combined, other, again = json.loads(out.read_text())["rows"]
    assert combined["seeds"] == [0, 1] and combined["source"] == f"{files[0]}, {files[1]}"
    assert combined["num_samples"] == 4 and combined["gen_ppl"]["samples"] == 8 and combined["nfe"] == 4
    assert other["seeds"] == [2] and other["nfe"] == 2  # other settings: a row of its own
    assert again["seeds"] == [0] and again["source"] == str(files[3])  # seed 0 again: not a second seed

    singles = []
    for f in files[:2]:
        assert main([*argv, "--samples", str(f), "--json", str(tmp_path / f"{f.stem}.json")]) == 0
        singles.append(json.loads((tmp_path / f"{f.stem}.json").read_text())["rows"][0])
    for metric in ("gen_ppl", "entropy", "rep_tokens_1", "distinct_2"):
        values = [s["spread"][metric]["mean"] for s in singles]
        assert [m[metric] for m in combined["per_seed"]] == pytest.approx(values)
        assert combined["spread"][metric]["mean"] == pytest.approx(np.mean(values))
        assert combined["spread"][metric]["std"] == pytest.approx(np.std(values, ddof=1))
    line = next(line for line in stdout.splitlines() if line.startswith("| mdlm") and " 4 | " in line)
    assert re.search(r"\| [\d.]+ ± [\d.]+ \|", line)  # gen-PPL: mean ± std over the two seeds


def test_mauve_on_few_samples_is_marked_and_warned(runs, capsys):
    report = evaluate(EvalConfig(models=[str(runs / "mdlm")], nfe=[2], evaluator=str(runs / "ar"), num_samples=16,
                                 mauve=True, likelihood=False, warmup=0, repeats=1, device="cpu", bootstrap=200,
                                 references=False))
    assert "warning: MAUVE on 16 samples per side (fewer than 128)" in capsys.readouterr().err
    table = format_table(report)
    header = [c.strip() for c in table.splitlines()[0].strip("|").split("|")]
    cell = [c.strip() for c in table.splitlines()[2].strip("|").split("|")][header.index("MAUVE")]
    assert cell.endswith("*") and "*: fewer than 128 samples per side (as few as 16)" in table
    assert report.meta["mauve"]["reference_size"] == 16


def test_frontier_warning_only_when_no_frontier_reaches_the_target():
    from didi.recipes.evaluate.report import EvalReport, compute_frontiers
    from test_evaluation import synthetic_row

    rows = [synthetic_row("a", 0.8, 3.0, 50.0), synthetic_row("a", 1.0, 4.0, 200.0)]
    for target, warned in ((3.5, False), (4.5, True)):
        report = EvalReport(rows=rows, meta={}, target_entropy={"value": target, "source": "test"},
                            frontiers=compute_frontiers(rows, target))
        warning = runner.frontier_warning(report)
        assert (warning is not None) == warned
    assert "4.500 nats (test) is bracketed by no model x NFE: their entropies span 3.000-4.000" in warning


def test_reused_rows_name_their_evaluators_as_this_run_does(runs, tmp_path, monkeypatch):
    """The same evaluator files spelled otherwise (a run from another directory: relative against absolute paths)
    reuse the saved rows, and every row's second-evaluator scores are found under this run's names."""
    (tmp_path / "ar-link").symlink_to(runs / "ar")
    out = tmp_path / "eval.json"

    def argv(first, second):
        return ["eval", "--model", str(runs / "mdlm"), "--nfe", "2", "--num-samples", "3", "--eval-blocks", "2",
                "--warmup", "0", "--repeats", "1", "--device", "cpu", "--evaluator", first, "--evaluator", second,
                "--json", str(out)]

    assert main(argv(str(runs / "ar"), str(tmp_path / "ar-link"))) == 0
    before = json.loads(out.read_text())["rows"]
    monkeypatch.chdir(tmp_path)
    names = [os.path.relpath(runs / "ar", tmp_path), "ar-link"]
    counter = CountingRows(monkeypatch)
    assert main(argv(*names)) == 0
    assert counter.calls == []  # every row reused
    after = json.loads(out.read_text())["rows"]
    scored = [(b, a) for b, a in zip(before, after) if b.get("evaluators")]
    assert scored and all(list(a["evaluators"]) == names for _, a in scored)
    assert all([s["gen_ppl"]["ppl"] for s in b["evaluators"].values()] ==
               [s["gen_ppl"]["ppl"] for s in a["evaluators"].values()] for b, a in scored)
