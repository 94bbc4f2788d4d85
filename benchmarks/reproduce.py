"""Reproduce the DiDi-Instruct results table (paper-notes §6) at a chosen scale and write docs/results.md.

    python benchmarks/reproduce.py                  # CPU scale: embedded Shakespeare, tiny models (< 60 min, 2 cores)
    python benchmarks/reproduce.py --ablation       # + the cumulative ablation table (adds ~6 distillations)
    python benchmarks/reproduce.py --scale paper --teacher runs/mdlm-owt   # 169M DiT, L=1024, OpenWebText,
                                                    # GPT-2 Large evaluator (GPU + network; teacher from
                                                    # `didi convert mdlm.ckpt runs/mdlm-owt`)
    python benchmarks/reproduce.py --smoke --out /tmp/x   # seconds, used by the test suite

Stages (each skipped when its run directory is complete, so an interrupted benchmark resumes):
teacher MDLM -> AR baseline/evaluator -> DiDi-Instruct student -> evaluation of the teacher at
8/16/32/64/128/1024 NFE, the student at 8..128 NFE with the ancestral sampler and with RGAS, and the AR baseline,
all in one process so that every latency ratio is measured on the same machine in the same run; then the
conditional rows (teacher and student at 8..128 NFE and the AR baseline continue held-out 32-token prefixes,
`didi eval --prefix-tokens`; `--prefix-tokens 0` skips them).

The evaluation (``Scale.seeds``, ``Scale.temperatures``, ``Scale.mauve``): every row at temperature 1 with each
seed (mean ± std), the rest of the temperature sweep with the first seed, each model x NFE's gen-PPL at the
held-out data's entropy, MAUVE against held-out text, and the data and AR reference rows; the teacher's largest
budget and RGAS at temperature 1 with one seed (bootstrap intervals), for CPU time. Speed-ups are ratios of
per-sample latencies, every row timed at one batch size. results.json carries every row, seed and temperature,
the frontiers and the settings (the conditional rows under "conditional_rows").
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import sys
import time
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

import torch

from didi.data.corpora import DataConfig
from didi.diffusion.rgas import RGASConfig
from didi.recipes.distill import DistillConfig, distill
from didi.recipes.evaluate.report import (
    EvalReport,
    EvalRow,
    compute_frontiers,
    fmt_spread,
    frontier_of,
    plot_report,
)
from didi.recipes.evaluate.runner import EvalConfig, evaluate
from didi.recipes.quickstart import TINY_DISTILL
from didi.recipes.train import TrainConfig, resume_config, train
from didi.runtime.checkpoint import completed_steps, latest_snapshot

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Scale:
    """Everything that changes between the CPU, paper and smoke settings."""

    data: str
    seq_len: int
    preset: str
    teacher_steps: int
    ar_steps: int
    distill_steps: int
    global_batch_size: int
    teacher_lr: float
    distill: dict
    teacher_nfe: list[int]
    student_nfe: list[int]
    num_samples: int
    evaluator: str | None = None  # None: the AR run trained here
    vocab_size: int = 4096
    train_extra: dict = field(default_factory=dict)
    eval_blocks: int = 64
    batch_size: int = 0  # samples per sampling batch (0: num_samples)
    repeats: int = 2  # timed batches per row at least
    top_nfe_samples: int = 0  # samples for the teacher's largest budget (0: num_samples; 1024 NFE is slow on CPU)
    rgas_samples: int = 0  # samples per RGAS row (0: num_samples; RGAS also runs the discriminator)
    ablation_nfe: list[int] = field(default_factory=lambda: [8, 16])
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])  # temperature 1 rows: mean ± std over these seeds
    temperatures: list[float] = field(default_factory=lambda: [0.7, 0.8, 0.9, 1.0])  # frontier sweep (first seed)
    mauve: bool = True  # MAUVE against held-out text (needs >= 16 samples per side)
    prefix_tokens: int = 32  # conditional rows: held-out prefix length (--prefix-tokens overrides, 0 = none)


# "cpu" uses the quickstart's sizes and its distillation settings (didi.recipes.quickstart.TINY_DISTILL).
SCALES = {
    "cpu": Scale(data="shakespeare", seq_len=128, preset="tiny", teacher_steps=600, ar_steps=400, distill_steps=300,
                 global_batch_size=32, teacher_lr=1e-3, distill=TINY_DISTILL,
                 teacher_nfe=[8, 16, 32, 64, 128, 1024], student_nfe=[8, 16, 32, 64, 128], num_samples=128,
                 batch_size=64, top_nfe_samples=64, rgas_samples=64),
    "paper": Scale(data="openwebtext", seq_len=1024, preset="small", teacher_steps=1_000_000, ar_steps=1_000_000,
                   distill_steps=10_000, global_batch_size=512, teacher_lr=3e-4, distill={},
                   teacher_nfe=[8, 16, 32, 64, 128, 1024], student_nfe=[8, 16, 32, 64, 128], num_samples=64,
                   evaluator="gpt2-large", vocab_size=50257, train_extra={"warmup_steps": 2500}, eval_blocks=256),
    "smoke": Scale(data="", seq_len=32, preset="tiny", teacher_steps=4, ar_steps=4, distill_steps=3,
                   global_batch_size=8, teacher_lr=3e-3,
                   distill=dict(batch_size=2, group_size=2, lr=1e-4, disc_lr=1e-3, warmup_steps=1),
                   teacher_nfe=[4, 8], student_nfe=[4], num_samples=16, vocab_size=300, eval_blocks=2, repeats=1,
                   ablation_nfe=[4], seeds=[0, 1], temperatures=[0.5, 1.0], prefix_tokens=8,
                   train_extra=dict(hidden_size=32, n_blocks=2, n_heads=2, cond_dim=16)),
}

# The paper's cumulative ablation (notes §6.3) as distillation switches, each row adding one technique. The
# "+ π(t) weighting" row is absent: with the default proposal Beta(1, 1) it is the identity (see --tau-a/--tau-b).
ABLATION = [
    ("Baseline (1-step policy gradient)", dict(student_steps=1, coupled_time=False, omega="constant",
                                              regularize=False)),
    ("+ Score decomposition (2 steps)", dict(coupled_time=False, omega="constant", regularize=False)),
    ("+ Coupled time", dict(omega="constant", regularize=False)),
    ("+ ω(t) correction", dict(regularize=False)),
    ("+ Regularisation (full DiDi-Instruct)", dict()),
]


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def train_stage(kind: str, run_dir: Path, scale: Scale, data: str, device: str, seed: int) -> float | None:
    """Train (or resume) a teacher/AR run; returns its wall-clock seconds (None when reused)."""
    steps = scale.teacher_steps if kind == "mdlm" else scale.ar_steps
    if completed_steps(run_dir) >= steps:
        return None
    if latest_snapshot(run_dir) is not None:
        return _timed(lambda: train(resume_config(run_dir, steps=steps), DataConfig(), kind=kind, resume=True))
    cfg = TrainConfig(out=str(run_dir), preset=scale.preset, steps=steps, lr=scale.teacher_lr,
                      global_batch_size=scale.global_batch_size, eval_every=max(1, steps // 3),
                      save_every=max(1, steps // 3), seed=seed, device=device,
                      **{"warmup_steps": min(50, steps), **scale.train_extra})
    data_cfg = DataConfig(data=data, seq_len=scale.seq_len, vocab_size=scale.vocab_size, seed=seed,
                          tokenizer="gpt2" if scale.vocab_size == 50257 else "auto")
    return _timed(lambda: train(cfg, data_cfg, kind=kind))


def distill_stage(teacher: Path, out: Path, scale: Scale, device: str, seed: int, **switches) -> float | None:
    if completed_steps(out) >= scale.distill_steps:
        return None
    cfg = DistillConfig(teacher=str(teacher), out=str(out), steps=scale.distill_steps, seed=seed, device=device,
                        save_every=max(1, scale.distill_steps // 3), **{**scale.distill, **switches})
    resume = latest_snapshot(out) is not None
    return _timed(lambda: distill(cfg, resume=resume))


def eval_report(tag: str, out: Path, models: list[Path], nfe: list[int], scale: Scale, evaluator: str, device: str,
                seed: int, sampler: str = "ancestral", num_samples: int = 0, **options) -> EvalReport:
    """Evaluate ``models`` at ``nfe`` (``options``: more :class:`EvalConfig` fields, e.g. ``seeds``), saved as
    OUT/eval/TAG.json and reused while the models' weights and the settings are unchanged (a re-run only adds what
    is new; a retrained model is evaluated again)."""
    saved = out / "eval" / f"{tag}.json"
    n = num_samples or scale.num_samples
    config = EvalConfig(models=[str(m) for m in models], nfe=nfe, evaluator=evaluator, num_samples=n,
                        batch_size=min(n, scale.batch_size or n), warmup=0, repeats=scale.repeats, seed=seed,
                        sampler=sampler, eval_blocks=scale.eval_blocks, device=device,
                        rgas=RGASConfig() if sampler == "rgas" else None, **{"references": False, **options})
    key = {"weights": [os.stat(Path(m) / "model.safetensors").st_mtime_ns for m in models], "config": repr(config)}
    if saved.exists():
        cached = json.loads(saved.read_text())
        if isinstance(cached, dict) and cached.get("key") == key and "report" in cached:
            return EvalReport.from_json(cached["report"])
    report = evaluate(config)
    saved.parent.mkdir(parents=True, exist_ok=True)
    saved.write_text(json.dumps({"key": key, "report": report.to_json()}, default=str))
    return report


def eval_rows(*args, **kwargs) -> list[EvalRow]:
    """The rows of :func:`eval_report`."""
    return eval_report(*args, **kwargs).rows


def _cell(value, spec: str) -> str:
    return "—" if value is None else format(value, spec)


def _spread_cell(row: EvalRow | None, metric: str, spec: str) -> str:
    return "—" if row is None or row.value(metric) is None else fmt_spread(row, metric, spec)


def _per_sample(row: EvalRow) -> float | None:
    return row.latency_per_sample_s


def results_table(rows: list[EvalRow], names: dict[str, str], report: EvalReport) -> str:
    """Markdown table of the temperature-1 rows and the data row: gen-PPL with its spread, gen-PPL at the matched
    entropy, MAUVE, and speed-ups from per-sample latencies relative to the teacher at its largest budget and to
    the AR baseline (every row's batch size is stated in the header)."""
    main = [r for r in rows if r.temperature in (1.0, None)]
    timed = [r for r in main if r.latency_s]
    teacher = [r for r in timed if names.get(r.source) == "teacher"]
    top = max(teacher, key=lambda r: r.nfe) if teacher else None
    ar = next((r for r in timed if r.kind == "ar"), None)
    batches = sorted({max(r.batch_sizes) for r in timed})
    batch = f"batch {batches[0]}" if len(batches) == 1 else f"batch sizes differ: {', '.join(map(str, batches))}"
    target = report.target_entropy
    matched_header = f"gen-PPL @ entropy {target['value']:.3f} ↓" if target else "gen-PPL @ matched entropy ↓"
    header = ["model", "sampler", "NFE", "calls made", "disc. calls", "gen-PPL (T = 1) ↓", "entropy (T = 1)",
              matched_header, "MAUVE ↑", "latency / sample (ms)", "tokens/s",
              f"speed-up vs teacher@{top.nfe if top else 'max'} (per-sample latency, {batch})",
              f"speed-up vs AR (per-sample latency, {batch})"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in main:
        disc = r.extra_calls.get("discriminator")
        frontier = frontier_of(report, r)
        matched = "—" if frontier is None else "not reached" if frontier["gen_ppl"] is None else \
            f"{frontier['gen_ppl']:.1f} (T {frontier['bracket'][0]:g}–{frontier['bracket'][1]:g})"
        per_sample = _per_sample(r)
        lines.append(" | ".join([
            f"| {names.get(r.source, 'data' if r.kind == 'data' else r.model)}", r.sampler,
            "—" if r.nfe is None else str(r.nfe), _cell(r.nfe_made, ".0f"),
            "—" if not disc else f"{sum(disc) / len(disc):.0f}",
            _spread_cell(r, "gen_ppl", ".1f"), _spread_cell(r, "entropy", ".3f"), matched,
            _spread_cell(r, "mauve", ".3f"), _cell(per_sample * 1000 if per_sample else None, ".1f"),
            _cell(r.tokens_per_s, ".0f"),
            _cell(_per_sample(top) / per_sample if top and per_sample else None, ".1f") + ("×" if per_sample else ""),
            _cell(_per_sample(ar) / per_sample if ar and per_sample else None, ".2f") + ("×" if per_sample else "")
            + " |"]))
    return "\n".join(lines)


def sweep_table(rows: list[EvalRow], names: dict[str, str], report: EvalReport) -> str:
    """gen-PPL / entropy of every model x NFE at every temperature of the sweep, and the matched value."""
    temps = sorted({p["temperature"] for f in report.frontiers for p in f["points"]})
    lines = ["| model | sampler | NFE | " + " | ".join(f"T = {t:g}: gen-PPL / entropy" for t in temps)
             + " | gen-PPL @ target |", "|" + "---|" * (len(temps) + 4)]
    for f in report.frontiers:
        by_t = {p["temperature"]: p for p in f["points"]}
        source = next((r.source for r in rows if (r.model, r.kind, r.sampler, r.nfe) ==
                       (f["model"], f["kind"], f["sampler"], f["nfe"])), f["model"])
        cells = [f"{by_t[t]['gen_ppl']:.1f} / {by_t[t]['entropy']:.3f}" if t in by_t else "—" for t in temps]
        lines.append(f"| {names.get(source, f['model'])} | {f['sampler']} | {'—' if f['nfe'] is None else f['nfe']} | "
                     + " | ".join(cells) + " | " + ("not reached" if f["gen_ppl"] is None else f"{f['gen_ppl']:.1f}")
                     + " |")
    return "\n".join(lines)


def machine() -> str:
    cpu = platform.processor() or "unknown CPU"
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (f"{cpu}, {os.cpu_count()} logical cores, {gpu}, torch {torch.__version__}, "
            f"Python {platform.python_version()}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", choices=["cpu", "paper"], default="cpu", help="experiment size (default cpu)")
    parser.add_argument("--smoke", action="store_true", help="a seconds-long run on a synthetic corpus (tests)")
    parser.add_argument("--ablation", action="store_true", help="also distill and evaluate the ablation rows")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "reproduce", help="run directories")
    parser.add_argument("--teacher", type=Path, default=None, help="use this teacher run instead of training one")
    parser.add_argument("--results", type=Path, default=None, help="Markdown output (default docs/results.md; "
                        "with --smoke: OUT/results.md)")
    parser.add_argument("--data", default=None, help="override the corpus of the scale")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--prefix-tokens", type=int, default=None, help="conditional rows: teacher, student and AR "
                        "continue held-out prefixes of this many tokens (default: 32, 8 with --smoke; 0: none)")
    args = parser.parse_args(argv)

    scale = SCALES["smoke" if args.smoke else args.scale]
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    data = args.data or scale.data
    if args.smoke and not data:
        data = str(out / "corpus.txt")
        if not Path(data).exists():
            words = "the king queen lord night day love sword crown heart fair sweet good speak come go".split()
            Path(data).write_text("\n".join(f"KING. {' '.join(words[(i * 7 + j) % len(words)] for j in range(9))}."
                                            for i in range(600)) + "\n")
    results = args.results or (out / "results.md" if args.smoke else ROOT / "docs" / "results.md")
    teacher = args.teacher or out / "teacher"
    ar, student = out / "ar", out / "student"
    started = time.perf_counter()

    wall_file = out / "wall_clock.json"
    wall = json.loads(wall_file.read_text()) if wall_file.exists() else {}
    for stage, run in (("teacher", lambda: None if args.teacher else train_stage("mdlm", teacher, scale, data,
                                                                                 args.device, args.seed)),
                       ("ar", lambda: None if scale.evaluator else train_stage("ar", ar, scale, data, args.device,
                                                                               args.seed)),
                       ("student", lambda: distill_stage(teacher, student, scale, args.device, args.seed))):
        seconds = run()
        if seconds is not None or stage not in wall:
            wall[stage] = seconds
        wall_file.write_text(json.dumps(wall))  # stages done in an earlier, interrupted run keep their time
    evaluator = scale.evaluator or str(ar)
    names = {str(teacher): "teacher", str(student): "student", str(ar): "AR"}
    ev = dict(out=out, scale=scale, evaluator=evaluator, device=args.device, seed=args.seed)
    # temperature 1 with every seed; the rest of the sweep with the first seed; the largest teacher budget and RGAS
    # at temperature 1 with one seed (CPU time); the data reference row comes with the AR (else the teacher) rows
    t1 = dict(seeds=scale.seeds, mauve=scale.mauve)
    sweep = dict(temperatures=[t for t in scale.temperatures if t != 1.0], mauve=scale.mauve)
    references = dict(references=True)
    reports = [eval_report("teacher", models=[teacher], nfe=scale.teacher_nfe[:-1], **ev, **t1,
                           **({} if not scale.evaluator else references))]
    reports.append(eval_report("teacher-top", models=[teacher], nfe=scale.teacher_nfe[-1:],
                               num_samples=scale.top_nfe_samples, mauve=scale.mauve, **ev))
    reports.append(eval_report("student", models=[student], nfe=scale.student_nfe, **ev, **t1))
    reports.append(eval_report("student-rgas", models=[student], nfe=scale.student_nfe, sampler="rgas",
                               num_samples=scale.rgas_samples, mauve=scale.mauve, **ev))
    if not scale.evaluator:
        reports.append(eval_report("ar", models=[ar], nfe=scale.student_nfe[:1], **ev, **t1, **references))
    if sweep["temperatures"]:
        for tag, model, nfe in (("teacher", teacher, scale.teacher_nfe[:-1]), ("student", student, scale.student_nfe),
                                *((("ar", ar, scale.student_nfe[:1]),) if not scale.evaluator else ())):
            reports.append(eval_report(f"{tag}-sweep", models=[model], nfe=nfe, **ev, **sweep))
    rows = [r for rep in reports for r in rep.rows]
    report = combined_report(reports, args, evaluator)

    prefix_tokens = scale.prefix_tokens if args.prefix_tokens is None else args.prefix_tokens
    conditional = []  # one evaluation per model, so that a retrained model does not re-evaluate the others
    for name, run in [("teacher", teacher), ("student", student)] + ([] if scale.evaluator else [("ar", ar)]):
        conditional += [] if not prefix_tokens else eval_rows(
            f"conditional-{name}", models=[run], nfe=scale.student_nfe, prefix_tokens=prefix_tokens,
            unconditional=False, **ev)

    ablation_rows = []
    if args.ablation:
        for i, (label, switches) in enumerate(ABLATION):
            run = out / f"ablation-{i}"
            if not switches:  # the full method is the main student
                run = student
            else:
                distill_stage(teacher, run, scale, args.device, args.seed, **switches)
            ablation_rows += [dataclasses.replace(r, model=label) for r in eval_rows(
                f"ablation-{i}", models=[run], nfe=scale.ablation_nfe, **ev)]

    plot_path = results.with_suffix(".png")
    plot_report(dataclasses.replace(report, rows=[r for r in rows if r.temperature in (1.0, None)]), plot_path)
    (out / "results.json").write_text(json.dumps({**report.to_json(), "ablation_rows": [r.to_json() for r in
                                                                                      ablation_rows],
                                                  "conditional_rows": [r.to_json() for r in conditional],
                                                  "wall_clock_s": wall}, indent=2, default=str))
    command = "python benchmarks/reproduce.py" + (" --smoke" if args.smoke else f" --scale {args.scale}") + (
        " --ablation" if args.ablation else "") + (
        "" if args.prefix_tokens is None else f" --prefix-tokens {args.prefix_tokens}")
    proteins = None if args.smoke else protein_table(ROOT / "docs" / "results_proteins.md")
    text = render(rows, ablation_rows, names, wall, scale, command, plot_path.name, time.perf_counter() - started,
                  data, proteins, report)
    text += conditional_section(conditional, names, prefix_tokens)
    results.write_text(text)
    print(text)
    return 0


def combined_report(reports: list[EvalReport], args, evaluator: str) -> EvalReport:
    """One report over every evaluation: the target entropy of the data row, the frontiers over all rows (the
    temperature 1 rows of one evaluation and the rest of the sweep of another make one curve)."""
    rows = [r for rep in reports for r in rep.rows]
    data = next((r for r in rows if r.kind == "data"), None)
    target = None if data is None else {"value": data.value("entropy"),
                                        "source": f"the entropy of the {data.model} row"}
    meta = next((rep.meta for rep in reports if rep.meta.get("heldout")), reports[0].meta)
    meta = {**meta, "scale": args.scale, "smoke": args.smoke,
            "evaluations": [rep.meta.get("config") for rep in reports]}
    frontiers = compute_frontiers(rows, None if target is None else target["value"])
    return EvalReport(rows=rows, meta=meta, target_entropy=target if frontiers else None, frontiers=frontiers)


def render(rows, ablation_rows, names, wall, scale, command, plot_name, seconds, data, proteins=None,
           report=None) -> str:
    report = report or EvalReport(rows=rows, meta={})
    rows_all, rows = rows, [r for r in rows if r.temperature in (1.0, None)]
    student_rows = [r for r in rows if names.get(r.source) == "student"]
    teacher_rows = {r.nfe: r for r in rows if names.get(r.source) == "teacher"}
    lines = [
        "# Reproduced results", "",
        f"Command: `{command}` — {date.today().isoformat()}; this invocation took {seconds / 60:.1f} min (stages "
        "finished by an earlier, interrupted invocation are reused; their training times are below).  ",
        f"Machine: {machine()}.  ",
        f"Scale: {scale.preset} DiT/GPT, sequence length {scale.seq_len}, "
        f"corpus `{Path(data).name if Path(data).exists() else data}`, "
        f"teacher {scale.teacher_steps} steps, AR {scale.ar_steps} steps, DiDi-Instruct {scale.distill_steps} "
        f"iterations ({json.dumps(scale.distill)}); gen-PPL under "
        f"{scale.evaluator or 'the AR model trained here on the same corpus'}.", "",
        "## Generation quality and speed", "",
        results_table(rows, names, report), "",
        *_table_notes(rows, names, scale, report), "",
        f"![gen-PPL and entropy against NFE at T = 1; gen-PPL against entropy over the temperature sweeps]"
        f"({plot_name})", "",
    ]
    if report.frontiers:
        lines += ["## Temperature sweeps", "",
                  "Every model x NFE sampled at each temperature (the first seed away from T = 1, the mean over seeds "
                  "at T = 1); the matched value interpolates log gen-PPL linearly in entropy between the two "
                  "temperatures that bracket the target entropy" + (f" ({report.target_entropy['value']:.3f} nats, "
                                                                    f"{report.target_entropy['source']})"
                                                                    if report.target_entropy else "") +
                  "; 'not reached': no two temperatures bracket it, nothing is extrapolated.", "",
                  sweep_table(rows_all, names, report), ""]
    lines += [
        "## Training cost", "",
        "| stage | wall-clock |", "|---|---|",
    ]
    for stage, secs in wall.items():
        lines.append(f"| {stage} | {'given' if secs is None else f'{secs / 60:.1f} min'} |")
    if wall.get("teacher") and wall.get("student"):
        lines += ["", f"Distillation took {wall['student'] / wall['teacher']:.2f}× the teacher's training time."]
    if ablation_rows:
        lines += ["", "## Cumulative ablation (gen-PPL by NFE, ancestral sampler)", "",
                  "Each row adds one technique to the row above (paper notes §6.3), same iterations and seed; the "
                  "last row samples the full student with RGAS.", "",
                  "| configuration | " + " | ".join(str(n) for n in scale.ablation_nfe) + " |",
                  "|---|" + "---|" * len(scale.ablation_nfe)]
        by_run: dict[str, dict[int, EvalRow]] = {"Teacher, no distillation (reference)": teacher_rows}
        for r in ablation_rows:
            by_run.setdefault(r.model, {})[r.nfe] = r
        rgas = {r.nfe: r for r in rows if names.get(r.source) == "student" and r.sampler == "rgas"}
        by_run["+ Guided inference (RGAS)"] = rgas
        for label, cells in by_run.items():
            lines.append(f"| {label} | " + " | ".join(
                _cell(cells[n].value("gen_ppl") if n in cells else None, ".1f")
                for n in scale.ablation_nfe) + " |")
    if student_rows and teacher_rows:
        lines += ["", "## Reading", "", _reading(student_rows, teacher_rows, rows, names, report)]
    if proteins is not None:
        lines += ["", "## Proteins", "", "From the separate benchmark `python benchmarks/proteins.py` (teacher vs "
                  "DiDi-Instruct student at 8/16/32 NFE on the built-in UniProt corpus); its command lines, "
                  "settings and reading are in [results_proteins.md](results_proteins.md).", "", proteins]
    return "\n".join(lines) + "\n"


def _table_notes(rows: list[EvalRow], names: dict[str, str], scale: Scale, report: EvalReport) -> list[str]:
    """What every column of the results table measures, and the sample counts of every row."""
    meta = report.meta
    seeds = ", ".join(map(str, scale.seeds))
    top = max((r for r in rows if names.get(r.source) == "teacher"), key=lambda r: r.nfe or 0, default=None)
    notes = [
        f"- gen-PPL and entropy (T = 1, no truncation): mean ± standard deviation over seeds {seeds}, "
        f"{scale.num_samples} samples per seed; rows with one seed show a bootstrap 95% interval over samples in "
        "brackets. entropy: mean unigram entropy (nats) of each sample's token ids.",
    ]
    if top is not None and top.seeds and len(top.seeds) < len(scale.seeds):
        why = f"one batch of {max(top.batch_sizes)} takes {top.latency_s:.3g} s here" if top.latency_s else "CPU time"
        notes.append(f"- teacher @ {top.nfe} NFE: {top.num_samples} samples, seed {top.seeds[0]} only, T = 1 only "
                     f"({why}); it is timed at the same batch size as every other row.")
    rgas = [r for r in rows if r.sampler == "rgas"]
    if rgas:
        notes.append(f"- student (rgas): {rgas[0].num_samples} samples, seed {rgas[0].seeds[0] if rgas[0].seeds else 0}"
                     " only, T = 1 only (RGAS also runs the discriminator).")
    data = next((r for r in rows if r.kind == "data"), None)
    if data is not None:
        notes.append(f"- data: {data.source}, decoded and scored like samples (what a perfect model would reach); "
                     "its entropy is the target of the matched-entropy column.")
    if meta.get("mauve"):
        notes.append(f"- MAUVE (mauve-text defaults) against {meta['mauve']['reference']}, on features of "
                     f"{meta['mauve']['features']}.")
    notes += [
        "- latency / sample: the median latency of a row's full batches divided by the batch size, all measured in "
        "this run on this machine (each model's likelihood pass runs first and warms it up); speed-ups are ratios of "
        "per-sample latencies at the batch size in the header. The AR row samples token by token with a KV cache.",
        "- calls made: real network calls per batch (the cache skips steps where no token changed); disc. calls: "
        "RGAS's extra discriminator calls per batch.",
    ]
    return notes


def conditional_section(rows: list[EvalRow], names: dict[str, str], prefix_tokens: int) -> str:
    """The conditional-evaluation rows (``didi eval --prefix-tokens``) as a Markdown section ("" without rows)."""
    if not rows:
        return ""
    lines = ["", f"## Conditional generation ({prefix_tokens}-token prefixes)", "",
             f"Every model continues the same {rows[0].num_samples} held-out prefixes ([BOS] and the first "
             f"{prefix_tokens} tokens of evenly spaced validation blocks) to {rows[0].seq_len} tokens; gen-PPL scores "
             "the continuation given its prefix under the same evaluator, entropy is that of the continuation "
             "(`didi eval --prefix-tokens`, docs/conditioning.md).", "",
             "| model | sampler | NFE | calls made | gen-PPL given prefix ↓ | entropy | latency / batch (s) |",
             "|" + "---|" * 7]
    for r in rows:
        lines.append(" | ".join([f"| {names.get(r.source, r.model)}", r.sampler, "—" if r.nfe is None else str(r.nfe),
                                 _cell(r.nfe_made, ".0f"), _cell(r.gen_ppl.ppl if r.gen_ppl else None, ".1f"),
                                 _cell(r.entropy, ".3f"), _cell(r.latency_s, ".3f") + " |"]))
    return "\n".join(lines) + "\n"


def protein_table(page: Path) -> str | None:
    """The first Markdown table under the "## Results" heading of the protein benchmark's page."""
    if not page.exists():
        return None
    text = page.read_text()
    if "## Results" not in text:
        return None
    body = text.split("## Results", 1)[1].splitlines()
    start = next((i for i, line in enumerate(body) if line.startswith("|")), None)
    if start is None:
        return None
    end = next((i for i in range(start, len(body)) if not body[i].startswith("|")), len(body))
    return "\n".join(body[start:end])


def _halfwidth(row: EvalRow, metric: str) -> float:
    """Half the spread of a row's value: its std over seeds, else half its bootstrap interval, else 0."""
    spread = row.spread.get(metric, {})
    if spread.get("std") is not None:
        return spread["std"]
    return (spread["high"] - spread["low"]) / 2 if spread.get("low") is not None else 0.0


def _reading(student_rows, teacher_rows, rows, names, report=None) -> str:
    """One factual sentence per student budget: gen-PPL against the teacher at the same NFE (a difference smaller
    than the two spreads together is called a tie), at the matched entropy, and against the teacher at max NFE."""
    report = report or EvalReport(rows=rows, meta={})
    top = teacher_rows[max(teacher_rows)]
    ar = next((r for r in rows if r.kind == "ar"), None)
    out = []
    for r in student_rows:
        teacher = teacher_rows.get(r.nfe)
        if r.value("gen_ppl") is None or teacher is None or teacher.value("gen_ppl") is None:
            continue
        mine, same = r.value("gen_ppl"), teacher.value("gen_ppl")
        if abs(mine - same) <= _halfwidth(r, "gen_ppl") + _halfwidth(teacher, "gen_ppl"):
            verdict = "is within the spreads of"
        else:
            verdict = "beats" if mine < same else "trails"
        text = f"- student ({r.sampler}) @ {r.nfe}: gen-PPL {mine:.1f} {verdict} the teacher @ {r.nfe} ({same:.1f})"
        matched, matched_teacher = frontier_of(report, r), frontier_of(report, teacher)
        if matched and matched_teacher and matched["gen_ppl"] and matched_teacher["gen_ppl"]:
            text += (f"; at entropy {matched['target_entropy']:.3f}: {matched['gen_ppl']:.1f} vs "
                     f"{matched_teacher['gen_ppl']:.1f}")
        if top.value("gen_ppl") is not None:
            text += f"; teacher @ {top.nfe}: {top.value('gen_ppl'):.1f}"
        if ar is not None and ar.value("gen_ppl") is not None:
            text += f"; AR: {ar.value('gen_ppl'):.1f}"
        if r.sampler == "rgas":
            plain = next((x for x in student_rows if x.sampler != "rgas" and x.nfe == r.nfe and x.gen_ppl), None)
            if plain is not None:
                text += f"; the same student with the ancestral sampler: {plain.value('gen_ppl'):.1f}"
        out.append(text + f"; entropy {r.value('entropy'):.2f} vs teacher {teacher.value('entropy'):.2f}.")
    return "\n".join(out)


if __name__ == "__main__":
    sys.exit(main())
