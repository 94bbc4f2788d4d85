"""benchmarks/reproduce.py --smoke: the whole reproduction pipeline (teacher, AR evaluator, DiDi-Instruct student,
evaluation with both samplers, conditional rows, ablation, results page and plot) end to end on a synthetic corpus,
in seconds; then the markov regime (exact metrics, two distillation seeds) beside it."""
from __future__ import annotations

import dataclasses
import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def reproduce_module():
    spec = importlib.util.spec_from_file_location("reproduce_under_test", ROOT / "benchmarks" / "reproduce.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def curve_row(model: str, temperature: float, entropy: float, ppl: float, std: float):
    from didi.recipes.evaluate.report import EvalRow
    return EvalRow(model=model, kind="mdlm", sampler="ancestral", nfe=8, source=model, num_samples=4, seq_len=8,
                   generated_tokens=8, nfe_per_batch=[8], extra_calls={}, batch_sizes=[4], latencies_s=[0.5],
                   timing="", temperature=temperature, seeds=[0, 1, 2],
                   spread={"gen_ppl": {"mean": ppl, "std": std}, "entropy": {"mean": entropy, "std": 0.01}})


def test_a_student_is_read_against_the_teachers_temperature_curve_at_its_own_entropy():
    """The issue-14 reading: the teacher's curve (log gen-PPL linear in entropy between the bracketing temperatures)
    at the student's entropy, and a verdict that needs more than 3x the spread (in quadrature) to call a difference."""
    from didi.recipes.evaluate.report import EvalReport, compute_frontiers
    reproduce = reproduce_module()
    teacher = [curve_row("teacher", 1.0, 4.0, 200.0, 5.0), curve_row("teacher", 0.8, 3.0, 50.0, 1.0)]

    def read(entropy: float, ppl: float) -> str:
        student = curve_row("student", 1.0, entropy, ppl, 2.0)
        rows = teacher + [student]
        report = EvalReport(rows=rows, meta={}, frontiers=compute_frontiers(rows, None))
        return reproduce._against_curve(student, teacher[0], report, "gen_ppl")

    spread = math.hypot(2.0, 5.0)  # the student's and the larger of the two bracketing rows'
    assert read(3.5, 80.0) == (f"; at its own entropy 3.500 the teacher's @ 8 temperature curve reads 100.0: the "
                               f"student is 20.0 below it (spread {spread:.1f})")
    assert read(3.5, 95.0).endswith(f"the student is no different from it (5.0 apart, within 3× the spread "
                                    f"{spread:.1f})")
    assert "is 20.0 above it" in read(3.5, 120.0)
    assert "lies outside the teacher's @ 8 temperature curve (3.000-4.000): not compared" in read(4.5, 80.0)
    # the same rule for the student against the teacher at the same NFE
    assert reproduce._verdict(curve_row("s", 1.0, 4.0, 180.0, 2.0), teacher[0], "gen_ppl") == "beats"
    assert reproduce._verdict(curve_row("s", 1.0, 4.0, 185.0, 2.0), teacher[0], "gen_ppl").startswith("is no diff")


def test_every_regime_and_scale_gives_valid_training_and_distillation_settings(tmp_path):
    """Each Scale of every regime (gpu and paper too, which no CPU test runs) builds its teacher's TrainConfig, a
    DataConfig and every distillation seed's InstructConfig without a validation error; the bytes regime distils
    with the markov settings, its cpu scale with the quickstart's (same dict)."""
    from didi.data.corpora import DataConfig
    from didi.recipes.quickstart import BYTES_DISTILL, MARKOV_DISTILL
    from didi.recipes.quickstart import REGIMES as QUICKSTART
    from didi.recipes.train import TrainConfig

    rp = reproduce_module()
    for regime, scales in rp.REGIMES.items():
        for name, scale in scales.items():
            TrainConfig(out=str(tmp_path / "t"), preset=scale.preset, steps=scale.teacher_steps, lr=scale.teacher_lr,
                        global_batch_size=scale.global_batch_size,
                        **{"warmup_steps": min(50, scale.teacher_steps), **scale.train_extra})
            DataConfig(data=scale.data or "x.txt", seq_len=scale.seq_len, tokenizer=scale.tokenizer)
            for seed in scale.distill_seeds or [0]:
                cfg = rp.student_config(tmp_path / "t", tmp_path / f"s{seed}", scale, "cpu", seed)
                assert cfg.steps == scale.distill_iterations >= 1, (regime, name)
    assert BYTES_DISTILL == MARKOV_DISTILL
    assert rp.BYTES_SCALES["cpu"].distill is BYTES_DISTILL and QUICKSTART["bytes"]["distill"] is BYTES_DISTILL
    cpu = rp.BYTES_SCALES["cpu"]
    assert (cpu.seq_len, cpu.teacher_steps, cpu.ar_steps, cpu.train_extra["hidden_size"]) == (
        QUICKSTART["bytes"]["seq_len"], QUICKSTART["bytes"]["teacher_steps"], QUICKSTART["bytes"]["ar_steps"],
        QUICKSTART["bytes"]["hidden_size"])


def test_reproduce_smoke_writes_results_and_plot(tmp_path):
    command = [sys.executable, str(ROOT / "benchmarks" / "reproduce.py"), "--smoke", "--ablation", "--out",
               str(tmp_path)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = (tmp_path / "results.md").read_text()
    rows = [line.split(" | ") for line in text.splitlines() if line.startswith("| ") and " | ancestral" in line
            or line.startswith("| ") and " | rgas" in line or line.startswith("| AR |")]
    labels = {(r[0].strip("| "), r[1]) for r in rows}
    assert labels == {("teacher", "ancestral"), ("student", "ancestral"), ("student", "rgas"),
                      ("AR", "autoregressive")}, labels
    assert "## Cumulative ablation" in text and "+ Guided inference (RGAS)" in text
    conditional = text.split("## Conditional generation (8-token prefixes)")[1]
    assert [line.split(" | ")[:3] for line in conditional.splitlines() if line.startswith("| ")][1:] == [
        ["| teacher", "ancestral", "4"], ["| student", "ancestral", "4"], ["| AR", "autoregressive", "—"]]
    assert "Command: `python benchmarks/reproduce.py --smoke --ablation`" in text
    assert (tmp_path / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    header = next(line for line in text.splitlines() if line.startswith("| model | sampler | NFE | calls made"))
    assert "gen-PPL (T = 1)" in header and "gen-PPL @ entropy " in header and "MAUVE" in header
    assert "speed-up vs teacher@8 (per-sample latency, batch 16)" in header  # one batch size for every row
    main_rows = {(r[0].strip("| "), r[1], r[2]): r[5] for r in rows if len(r) == 13}  # gen-PPL at T = 1
    assert " ± " in main_rows["teacher", "ancestral", "4"] and " ± " in main_rows["student", "ancestral", "4"]
    assert " ± " in main_rows["teacher", "ancestral", "8"]  # the largest budget with every seed too (issue 27)
    assert " [" in main_rows["student", "rgas", "4"]  # one seed: a bootstrap interval
    assert any(line.startswith("| data | n/a | — |") for line in text.splitlines())  # the held-out data row
    assert "## Temperature sweeps" in text and "T = 0.5: gen-PPL / entropy" in text
    assert "sampled at each temperature with sampling seeds 0, 1 (each cell: the mean over them)" in text
    saved = json.loads((tmp_path / "results.json").read_text())
    rgas = [r for r in saved["rows"] if r["sampler"] == "rgas"]
    assert rgas and all(sum(r["extra_calls"]["discriminator"]) > 0 for r in rgas)
    assert [r["generated_tokens"] for r in saved["conditional_rows"]] == [32 - 1 - 8] * 3
    assert all(saved["wall_clock_s"][stage] > 0 for stage in ("teacher", "ar", "student"))
    assert saved["target_entropy"]["value"] == next(r["entropy"] for r in saved["rows"] if r["kind"] == "data")
    assert {(f["model"], f["nfe"]) for f in saved["frontiers"]} == {("teacher", 4), ("student", 4), ("ar", None)}
    assert {r["temperature"] for r in saved["rows"]} == {0.5, 1.0, None}
    assert all(r["seeds"] == [0, 1] for r in saved["rows"] if r["temperature"] == 1.0 and r["sampler"] == "ancestral"
               and r["nfe"] == 4)
    assert saved["meta"]["mauve"]["features"].endswith("(evaluator: mean-pooled last hidden state)")
    assert all(r["mauve"] is not None for r in saved["rows"] if r["kind"] != "data")

    # a second run reuses every trained model and every saved evaluation: same table, nothing retrained
    again = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and "distill:" not in again.stderr and "[didi eval]" not in again.stderr
    table = [line for line in text.splitlines() if line.startswith("| ")]
    assert [line for line in (tmp_path / "results.md").read_text().splitlines() if line.startswith("| ")] == table

    # new weights for the student (as after retraining it): its rows are evaluated again, the teacher's are not
    weights = tmp_path / "student" / "model.safetensors"
    os.utime(weights, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns + 10**9))
    third = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert third.returncode == 0
    assert "[didi eval] student:" in third.stderr and "[didi eval] teacher:" not in third.stderr
    saved = json.loads((tmp_path / "results.json").read_text())
    bpe_rows = saved["rows"]
    assert [r["model"] for r in saved["regimes"]["bpe"]["rows"]][:2] == ["teacher", "teacher"]
    page = (tmp_path / "results.md").read_text()
    assert "## Other regimes" in page and "- markov (no results-markov.md yet when this page was written)" in page
    assert "- bytes-256 (no results-bytes-256.md yet when this page was written): the bytes regime on 256-byte" in page
    # the reading gives each student's entropy against the teacher's at its largest NFE (issue 14's bytes criterion)
    reading = next(line for line in page.splitlines() if line.startswith("- student (ancestral) @ 4:"))
    teacher_top = next(r for r in saved["regimes"]["bpe"]["rows"] if r["model"] == "teacher" and r["nfe"] == 8)
    assert f"and teacher @ 8 {teacher_top['entropy_mean']:.3f} (the student's is " in reading

    # the markov regime beside it: its own runs (OUT/markov), page (results-markov.md) and rows in results.json
    markov = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "reproduce.py"), "--regime", "markov",
                             "--smoke", "--out", str(tmp_path), "--jobs", "2", "--ablation"], env=env,
                            capture_output=True, text=True, timeout=600)
    assert markov.returncode == 0, markov.stderr[-3000:]
    # --jobs 2: the two distillation seeds, and each ablated row's two seeds, ran as child processes, each
    # with its own log and its own time
    module = reproduce_module()
    ablated = module.ablation_plan("markov")[1][1:]  # the rows after the full setting
    runs = ["student-s0", "student-s1"] + [f"ablation-{key}-s{s}" for key, _, _ in ablated for s in (0, 1)]
    assert all((tmp_path / "markov" / f"{run}.err").read_text() for run in runs)
    wall = json.loads((tmp_path / "markov" / "wall_clock.json").read_text())
    assert wall["parallel_jobs"] == 2 and all(wall[run] > 0 for run in runs)
    # each ablation run was distilled with its row's switches, the rest of the setting unchanged
    for key, _, switches in ablated:
        saved_cfg = json.loads((tmp_path / "markov" / f"ablation-{key}-s1" / "config.json").read_text())
        distill_cfg = saved_cfg["extra"]["distill"]
        assert distill_cfg["seed"] == 1 and all(distill_cfg[k] == v for k, v in switches.items())
        fitted = saved_cfg["extra"].get("fitted_warmups", {})  # warm-ups shortened to fit 3 smoke iterations
        assert all(distill_cfg[k] == v for k, v in module.MARKOV_SCALES["smoke"].distill.items()
                   if k not in switches and k != "steps" and k not in fitted)
    assert (tmp_path / "markov" / "student-s0").is_dir() and (tmp_path / "markov" / "student-s1").is_dir()
    assert not (tmp_path / "markov" / "ar").exists()  # the exact metrics are the evaluator
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["rows"] == bpe_rows and set(saved["regimes"]) == {"bpe", "markov"}  # the bpe rows are kept
    rows = saved["regimes"]["markov"]["rows"]
    assert all(r["regime"] == "markov" and "invalid_rate_mean" in r and "invalid_rate_std" in r for r in rows)
    students = [r for r in rows if r["model"] == "student" and r["temperature"] == 1.0 and r["sampler"] == "ancestral"]
    assert students and all(r["distill_seeds"] == [0, 1] and r["seeds"] == [0, 1] for r in students)
    assert all(r["invalid_rate_std"] is not None for r in students)  # over the distillation seeds
    [data] = [r for r in rows if r["model"] == "data"]
    assert data["invalid_rate_mean"] == 0.0 and "gen_ppl_mean" not in data
    assert saved["regimes"]["markov"]["frontier_axis"] == "conditional_entropy"
    page = (tmp_path / "results-markov.md").read_text()
    assert page.startswith("# Reproduced results: the markov regime") and "| invalid % (T = 1) ↓ |" in page
    assert "--smoke --ablation --jobs 2`" in page and "ran 2 at a time (`--jobs 2`)" in page
    # the ablation table: the full setting is the main students' row, every other row a mean ± std over its
    # two distillation seeds, each cell beside its H(X'|X) and its place against the teacher's curve
    table = page.split("## Ablation of the setting (invalid % by NFE, ancestral sampler, T = 1)")[1].split("\n## ")[0]
    lines = [line for line in table.splitlines() if line.startswith("| ")]
    assert [line.split(" | ")[0][2:] for line in lines[1:]] == [
        "Teacher, no distillation (reference)", "Full setting (the students above)",
        *(label for _, label, _ in ablated)]
    [student4] = [r for r in students if r["nfe"] == 4]
    full = lines[2].split(" | ")
    assert full[1] == f"{100 * student4['invalid_rate_mean']:.2f} ± {100 * student4['invalid_rate_std']:.2f}"
    assert all(" ± " in line.split(" | ")[1] and " ± " in line.split(" | ")[2] for line in lines[3:])

    # a student made with other settings (an older MARKOV_DISTILL) is neither reused nor resumed
    scale, student = module.MARKOV_SCALES["smoke"], tmp_path / "markov" / "student-s0"
    module.check_same_settings(student, module.student_config(tmp_path / "t", student, scale, "cpu", 0))
    changed = dataclasses.replace(scale, distill={**scale.distill, "disc_lr": 0.5})
    with pytest.raises(SystemExit, match=r"student-s0: made with other distillation settings \(disc_lr\)"):
        module.check_same_settings(student, module.student_config(tmp_path / "t", student, changed, "cpu", 0))

    # a teacher trained elsewhere (--teacher): the page's command names it and the scale's teacher steps are not
    # claimed for it
    teacher = tmp_path / "markov" / "teacher"
    given = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "reproduce.py"), "--regime", "markov",
                            "--smoke", "--out", str(tmp_path), "--teacher", str(teacher)], env=env,
                           capture_output=True, text=True, timeout=300)
    assert given.returncode == 0, given.stderr[-3000:]
    page = (tmp_path / "results-markov.md").read_text()
    assert f"--smoke --teacher {teacher}`" in page and f"teacher given (`{teacher}`" in page
    assert "| teacher | not timed here" in page

    # --rivals on the same runs: the compute-matched teacher and three SDTT students are trained, every rival is
    # evaluated, and results-rivals.md gets the markov section with its frontier plot (a PNG beside the page)
    rivals = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "reproduce.py"), "--regime", "markov",
                             "--smoke", "--out", str(tmp_path), "--rivals"], env=env, capture_output=True, text=True,
                            timeout=600)
    assert rivals.returncode == 0, rivals.stderr[-3000:]
    assert all((tmp_path / "markov" / f"rival-sdtt-s{s}" / "model.safetensors").is_file() for s in (0, 1, 2))
    cost = json.loads((tmp_path / "markov" / "compute_cost.json").read_text())  # measured with the scale's settings,
    assert "regime" not in cost                                                 # not labelled the default regime's
    assert cost["settings"] == {**scale.distill, "steps": scale.distill_iterations}
    page = (tmp_path / "results-rivals.md").read_text()
    section = page.split("## the Markov language")[1]
    methods = {line.split(" | ")[0][2:] + ", " + line.split(" | ")[1] for line in section.splitlines()
               if line.startswith("| ") and " | 4 | " in line}
    assert {"teacher, ancestral", "teacher, maskgit", "teacher, low-confidence", "teacher, threshold",
            "DiDi-Instruct student, ancestral", "SDTT student, ancestral"} <= methods
    assert "![every rival against the teacher's temperature curve](results-rivals-markov.png)" in section
    assert (tmp_path / "results-rivals-markov.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_compute_matched_teachers_and_the_scaling_students_are_planned_as_documented(tmp_path):
    """One teacher stands for both compute controls when their budgets are within SAME_BUDGET; the scaling students
    are distillation families only with --scaling; --scaling needs --controls."""
    reproduce = reproduce_module()
    controls = reproduce.companion("controls")
    scale = reproduce.REGIMES["bytes"]["cpu"]

    def cost(flops: float, wall: float) -> dict:
        return {"methods": {"didi-instruct": {"teacher_steps_equivalent_flops": flops,
                                              "teacher_steps_equivalent_wall": wall}}}
    near = controls.control_teachers(tmp_path, 3000, cost(7018.0, 6908.0))  # the measured bytes figures: 1.1 % apart
    assert near == {"flops": (tmp_path / "control-teacher-flops", 10018)}
    far = controls.control_teachers(tmp_path, 3000, cost(7000.0, 9000.0))
    assert far == {"flops": (tmp_path / "control-teacher-flops", 10000),
                   "wall": (tmp_path / "control-teacher-wall", 12000)}
    assert controls.scaling_budgets(scale, None) == []
    assert controls.scaling_budgets(scale, []) == [1500, 12000]
    assert controls.scaling_budgets(scale, [12000]) == [12000]
    assert [v.key for v in controls.variants(tmp_path, scale)] == ["pure"]
    assert [v.key for v in controls.variants(tmp_path, scale, [1500, 12000])] == ["pure", "scaling-1500",
                                                                                  "scaling-12000"]
    for argv in (["--scaling"], ["--controls", "--scaling", "7"]):  # --scaling needs --controls; 7 is no budget
        with pytest.raises(SystemExit):
            reproduce.main(["--regime", "bytes", "--scale", "cpu", *argv, "--out", str(tmp_path)])


def test_sdtt_students_are_given_a_didi_instruct_students_flops():
    """rivals.training_compute on the bytes regime's measured exchange rates (OUT/compute_cost.json, 2026-12-07):
    SDTT's round length makes its student cost a DiDi-Instruct student's FLOPs, to the rounding of one round-step."""
    reproduce = reproduce_module()
    rivals = reproduce.companion("rivals")
    scale = reproduce.REGIMES["bytes"]["cpu"]
    cost = {"flops": {"teacher step": 10158604288, "didi-instruct": 59411202048,
                      "sdtt (per round-step)": 16932405248},
            "seconds_median": {"teacher step": 0.1705, "didi-instruct": 0.9815, "sdtt (per round-step)": 0.2893},
            "methods": {"didi-instruct": {"iterations": 1200, "teacher_steps_equivalent_flops": 7018.04,
                                          "teacher_steps_equivalent_wall": 6908.22}},
            "sdtt_iteration_in_didi_instruct_iterations": {"flops": 0.28500, "wall": 0.29470}}
    compute = rivals.training_compute(scale, cost)
    di_flops, sdtt_flops = compute["DiDi-Instruct student"][0], compute["SDTT student"][0]
    assert compute["teacher"] == (3000, 3000)
    assert abs(sdtt_flops - di_flops) < 4 * 16932405248 / 10158604288  # within the rounding of 4 rounds
    assert compute["teacher + one distillation's FLOPs"] == (10018, 10018)
    # a distillation shorter than SDTT's rounds (the smoke scale): each round still runs one step, and counts it
    short = {**cost, "methods": {"didi-instruct": {**cost["methods"]["didi-instruct"], "iterations": 1}},
             "sdtt_iteration_in_didi_instruct_iterations": {"flops": 1.0, "wall": 1.0}}  # 1 / 1 / 4 rounds to 0
    assert rivals.sdtt_round_steps(short) == 1
    assert rivals.training_compute(scale, short)["SDTT student"][0] == 3000 + 4 * 16932405248 / 10158604288


def test_compute_cost_measures_the_teacher_pool_only_when_asked(tmp_path, monkeypatch):
    """The rivals alone skip the pool's sampling (``--pool 0``); the controls measure again when the kept file has no
    pool entry, and reuse a file that has what they need."""
    reproduce = reproduce_module()
    controls = reproduce.companion("controls")
    entry = reproduce.companion("compute_cost").POOL_ENTRY
    scale = reproduce.REGIMES["bytes"]["cpu"]
    commands = []

    def fake_run(command, check, stdout):
        commands.append(command)
        methods = {"didi-instruct": {}} | ({} if "--pool" in command and command[command.index("--pool") + 1] == "0"
                                          else {entry: {}})
        (tmp_path / "compute_cost.json").write_text(json.dumps({"methods": methods}))
    monkeypatch.setattr(controls.subprocess, "run", fake_run)
    teacher = tmp_path / "teacher"
    assert entry not in controls.compute_cost(tmp_path, teacher, scale, pool=False)["methods"]
    assert commands[-1][-2:] == ["--pool", "0"]
    controls.compute_cost(tmp_path, teacher, scale, pool=False)  # kept: no second measurement
    assert len(commands) == 1
    assert entry in controls.compute_cost(tmp_path, teacher, scale)["methods"]
    assert len(commands) == 2 and "--pool" not in commands[-1]  # the cpu scale's pool: the default size
    controls.compute_cost(tmp_path, teacher, scale)
    controls.compute_cost(tmp_path, teacher, scale, pool=False)
    assert len(commands) == 2


def test_the_slowest_teacher_row_can_be_sampled_and_timed_on_one_batch(tmp_path, monkeypatch):
    """``top_nfe_one_batch`` (the bpe cpu scale's 1024-NFE row, 11-17 min a batch): seed 0 only, one batch, no warm-up,
    and the page says so; the other rows keep every seed and their timed batches."""
    module = reproduce_module()
    assert module.SCALES["cpu"].top_nfe_one_batch and not module.BYTES_SCALES["cpu"].top_nfe_one_batch
    monkeypatch.setitem(module.SCALES, "smoke", dataclasses.replace(module.SCALES["smoke"], top_nfe_one_batch=True,
                                                                    repeats=2))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert module.main(["--smoke", "--out", str(tmp_path)]) == 0
    top = json.loads((tmp_path / "eval" / "teacher-top.json").read_text())["report"]
    assert [(r["seeds"], r["batch_sizes"]) for r in top["rows"]] == [([0], [16])]
    assert top["meta"]["config"]["warmup"] == 0 and top["meta"]["config"]["repeats"] == 1
    rest = json.loads((tmp_path / "eval" / "teacher.json").read_text())["report"]
    at_t1 = [r for r in rest["rows"] if r["temperature"] == 1.0]
    assert at_t1 and all(r["seeds"] == [0, 1] and len(r["batch_sizes"]) >= 2 for r in at_t1)
    assert "on that one batch (no warm-up, no further batches)" in (tmp_path / "results.md").read_text()


def test_a_stage_resumed_after_an_interruption_is_timed_as_a_part(tmp_path, monkeypatch):
    """A stage that resumes from a snapshot (its process was killed at the end of a session) counts only its own
    part of the wall-clock: wall_clock.json says from which step, and the page marks it and keeps it out of the
    distillation/teacher ratio; a stage run whole afterwards drops the mark."""
    module = reproduce_module()
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    argv = ["--regime", "markov", "--smoke", "--train-only", "--out", str(tmp_path)]
    assert module.main(argv) == 0
    out = tmp_path / "markov"
    first = json.loads((out / "wall_clock.json").read_text())
    assert module.RESUMED not in first and first["teacher"] > 0
    section = "\n".join(module.training_cost_section(first))
    assert "after resuming" not in section and "A distillation took" in section

    snapshots = sorted((out / "teacher" / "checkpoints").iterdir())
    assert len(snapshots) >= 2
    import shutil
    shutil.rmtree(snapshots[-1])  # the process died before its last snapshot
    kept = module.completed_steps(out / "teacher")
    assert 0 < kept < module.MARKOV_SCALES["smoke"].teacher_steps
    assert module.main(argv) == 0
    wall = json.loads((out / "wall_clock.json").read_text())
    assert wall[module.RESUMED] == {"teacher": kept}
    assert all(wall[s] == first[s] for s in first if s.startswith("student-s"))  # complete stages keep their time
    section = "\n".join(module.training_cost_section(wall))
    assert f"| teacher | {wall['teacher'] / 60:.1f} min after resuming at step {kept} (the time before" in section
    assert "A distillation took" not in section  # no ratio against a part

    recorded = dict(wall)
    module.record_stage(recorded, "teacher", 3.0, 0)  # the teacher trained again from step 0: a whole time
    assert module.RESUMED not in recorded and recorded["teacher"] == 3.0
    module.record_stage(recorded, "teacher", None, 0)  # reused: the measurement stays
    assert recorded["teacher"] == 3.0


def test_an_interrupted_parallel_distillation_says_so_in_one_line_and_exits_130(tmp_path, monkeypatch, capsys):
    """A ``--jobs`` child stopped by SIGINT/SIGTERM exits 130/143 after its snapshot: the parent reports the
    interruption (not "distillation failed"), keeps the finished students' seconds and exits 130; a child that
    fails for another reason is still a failure. The command line turns an interruption in this process into one
    line and 128 + the signal, never a traceback."""
    module = reproduce_module()
    codes = {"student-s0": 0, "student-s1": 130, "student-s2": 143}

    def fake_child(command, env, stdout, stderr):
        name = next(d for d in codes if f"--distill-seed {d[-1]}" in " ".join(command))
        if codes[name] == 0:
            stdout.write(json.dumps({"seconds": 2.5}) + "\n")
        return subprocess.CompletedProcess(command, codes[name])

    monkeypatch.setattr(subprocess, "run", fake_child)
    runs = [(tmp_path / name, ["--distill-seed", name[-1]], 10) for name in codes]
    wall: dict = {}
    with pytest.raises(SystemExit) as stopped:
        module.parallel_distill_stages([], runs, module.MARKOV_SCALES["smoke"], 3, wall)
    assert stopped.value.code == 130
    err = capsys.readouterr().err
    assert "interrupted: student-s1 at step 0, student-s2 at step 0 (snapshots written); rerun the same command" in err
    assert "failed" not in err and wall["student-s0"] == 2.5 and "student-s1" not in wall

    codes["student-s2"] = 1  # a crash beside the interruption: the run failed
    with pytest.raises(SystemExit, match=r"distillation failed: student-s2 \(exit 1; see "):
        module.parallel_distill_stages([], runs[1:], module.MARKOV_SCALES["smoke"], 3, {})

    from didi.errors import RunInterrupted

    def interrupted_main():
        raise RunInterrupted(15, 7, 30, "didi distill --resume x")

    monkeypatch.setattr(module, "main", interrupted_main)
    assert module.cli() == 143
    assert capsys.readouterr().err == ("reproduce: interrupted at step 7 of 30 (SIGTERM): snapshot written; rerun "
                                       "the same command to resume\n")
