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
from didi.recipes.evaluate.report import EvalReport, EvalRow, plot_report
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
    prefix_tokens: int = 32  # conditional rows: held-out prefix length (--prefix-tokens overrides, 0 = none)


# "cpu" uses the quickstart's sizes and its distillation settings (didi.recipes.quickstart.TINY_DISTILL).
SCALES = {
    "cpu": Scale(data="shakespeare", seq_len=128, preset="tiny", teacher_steps=600, ar_steps=400, distill_steps=300,
                 global_batch_size=32, teacher_lr=1e-3, distill=TINY_DISTILL,
                 teacher_nfe=[8, 16, 32, 64, 128, 1024], student_nfe=[8, 16, 32, 64, 128], num_samples=128,
                 batch_size=64, top_nfe_samples=32, rgas_samples=64),
    "paper": Scale(data="openwebtext", seq_len=1024, preset="small", teacher_steps=1_000_000, ar_steps=1_000_000,
                   distill_steps=10_000, global_batch_size=512, teacher_lr=3e-4, distill={},
                   teacher_nfe=[8, 16, 32, 64, 128, 1024], student_nfe=[8, 16, 32, 64, 128], num_samples=64,
                   evaluator="gpt2-large", vocab_size=50257, train_extra={"warmup_steps": 2500}, eval_blocks=256),
    "smoke": Scale(data="", seq_len=32, preset="tiny", teacher_steps=4, ar_steps=4, distill_steps=3,
                   global_batch_size=8, teacher_lr=3e-3,
                   distill=dict(batch_size=2, group_size=2, lr=1e-4, disc_lr=1e-3, warmup_steps=1),
                   teacher_nfe=[4, 8], student_nfe=[4], num_samples=2, vocab_size=300, eval_blocks=2, repeats=1,
                   ablation_nfe=[4], prefix_tokens=8,
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


def eval_rows(tag: str, out: Path, models: list[Path], nfe: list[int], scale: Scale, evaluator: str, device: str,
              seed: int, sampler: str = "ancestral", num_samples: int = 0, **options) -> list[EvalRow]:
    """Evaluate ``models`` at ``nfe``, saved as OUT/eval/TAG.json and reused while the models' weights and the
    settings are unchanged (a re-run only adds what is new; a retrained model is evaluated again)."""
    saved = out / "eval" / f"{tag}.json"
    n = num_samples or scale.num_samples
    config = EvalConfig(models=[str(m) for m in models], nfe=nfe, evaluator=evaluator, num_samples=n,
                        batch_size=min(n, scale.batch_size or n), warmup=0, repeats=scale.repeats, seed=seed,
                        sampler=sampler, eval_blocks=scale.eval_blocks, device=device,
                        rgas=RGASConfig() if sampler == "rgas" else None, **options)
    key = {"weights": [os.stat(Path(m) / "model.safetensors").st_mtime_ns for m in models], "config": repr(config)}
    if saved.exists():
        cached = json.loads(saved.read_text())
        if isinstance(cached, dict) and cached.get("key") == key:
            return [EvalRow.from_json(row) for row in cached["rows"]]
    rows = evaluate(config).rows
    saved.parent.mkdir(parents=True, exist_ok=True)
    saved.write_text(json.dumps({"key": key, "rows": [row.to_json() for row in rows]}, default=str))
    return rows


def _cell(value, spec: str) -> str:
    return "—" if value is None else format(value, spec)


def results_table(rows: list[EvalRow], names: dict[str, str]) -> str:
    """Markdown table with speed-ups relative to the teacher at 1024 NFE and to the AR baseline."""
    def latency(match):
        row = next((r for r in rows if match(r)), None)
        return row.latency_s if row else None

    teacher_1024 = latency(lambda r: names.get(r.source) == "teacher" and r.nfe == max(
        x.nfe for x in rows if names.get(x.source) == "teacher"))
    ar = latency(lambda r: r.kind == "ar")
    lines = ["| model | sampler | NFE | calls made | disc. calls | gen-PPL ↓ | entropy | latency / batch (s) | "
             "tokens/s | speed-up vs teacher@max | speed-up vs AR |", "|" + "---|" * 11]
    for r in rows:
        disc = r.extra_calls.get("discriminator")
        lines.append(" | ".join([
            f"| {names.get(r.source, r.model)}", r.sampler, "—" if r.nfe is None else str(r.nfe),
            _cell(r.nfe_made, ".0f"), "—" if not disc else f"{sum(disc) / len(disc):.0f}",
            _cell(r.gen_ppl.ppl if r.gen_ppl else None, ".1f"), _cell(r.entropy, ".3f"), _cell(r.latency_s, ".3f"),
            _cell(r.tokens_per_s, ".0f"),
            _cell(teacher_1024 / r.latency_s if teacher_1024 and r.latency_s else None, ".1f") + "×",
            _cell(ar / r.latency_s if ar and r.latency_s else None, ".2f") + "× |"]))
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
    rows = eval_rows("teacher", models=[teacher], nfe=scale.teacher_nfe[:-1], **ev)
    rows += eval_rows("teacher-top", models=[teacher], nfe=scale.teacher_nfe[-1:], num_samples=scale.top_nfe_samples,
                      **ev)
    rows += eval_rows("student", models=[student], nfe=scale.student_nfe, **ev)
    rows += eval_rows("student-rgas", models=[student], nfe=scale.student_nfe, sampler="rgas",
                      num_samples=scale.rgas_samples, **ev)
    if not scale.evaluator:
        rows += eval_rows("ar", models=[ar], nfe=scale.student_nfe[:1], **ev)

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

    report = EvalReport(rows=rows, meta={"scale": args.scale, "smoke": args.smoke, "evaluator": {"name": evaluator}})
    plot_path = results.with_suffix(".png")
    plot_report(report, plot_path)
    (out / "results.json").write_text(json.dumps({"rows": [r.to_json() for r in rows + ablation_rows + conditional],
                                                  "wall_clock_s": wall}, indent=2, default=str))
    command = "python benchmarks/reproduce.py" + (" --smoke" if args.smoke else f" --scale {args.scale}") + (
        " --ablation" if args.ablation else "") + (
        "" if args.prefix_tokens is None else f" --prefix-tokens {args.prefix_tokens}")
    proteins = None if args.smoke else protein_table(ROOT / "docs" / "results_proteins.md")
    text = render(rows, ablation_rows, names, wall, scale, command, plot_path.name, time.perf_counter() - started,
                  data, proteins)
    text += conditional_section(conditional, names, prefix_tokens)
    results.write_text(text)
    print(text)
    return 0


def render(rows, ablation_rows, names, wall, scale, command, plot_name, seconds, data, proteins=None) -> str:
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
        f"iterations ({json.dumps(scale.distill)}); {scale.num_samples} samples per row "
        f"({scale.top_nfe_samples or scale.num_samples} for the teacher at {scale.teacher_nfe[-1]} NFE, "
        f"{scale.rgas_samples or scale.num_samples} per RGAS row); gen-PPL under "
        f"{scale.evaluator or 'the AR model trained here on the same corpus'}.", "",
        "## Generation quality and speed", "",
        results_table(rows, names), "",
        f"![gen-PPL and entropy against NFE]({plot_name})", "",
        "Latencies are medians over the timed batches of a row (each model's likelihood pass runs first and warms "
        "it up), all measured in this run on this machine; speed-ups are latency ratios. The AR row samples token "
        "by token with a KV cache. `calls made` counts real network calls (the cache skips steps where no token "
        "changed); `disc. calls` are RGAS's extra discriminator calls per batch.", "",
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
                _cell(cells[n].gen_ppl.ppl if n in cells and cells[n].gen_ppl else None, ".1f")
                for n in scale.ablation_nfe) + " |")
    if student_rows and teacher_rows:
        lines += ["", "## Reading", "", _reading(student_rows, teacher_rows, rows, names)]
    if proteins is not None:
        lines += ["", "## Proteins", "", "From the separate benchmark `python benchmarks/proteins.py` (teacher vs "
                  "DiDi-Instruct student at 8/16/32 NFE on the built-in UniProt corpus); its command lines, "
                  "settings and reading are in [results_proteins.md](results_proteins.md).", "", proteins]
    return "\n".join(lines) + "\n"


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


def _reading(student_rows, teacher_rows, rows, names) -> str:
    """One factual sentence per student budget: better or worse than the teacher at the same and at max NFE."""
    top = teacher_rows[max(teacher_rows)]
    ar = next((r for r in rows if r.kind == "ar"), None)
    out = []
    for r in student_rows:
        if not r.gen_ppl or r.nfe not in teacher_rows or not teacher_rows[r.nfe].gen_ppl:
            continue
        same = teacher_rows[r.nfe].gen_ppl.ppl
        verdict = "beats" if r.gen_ppl.ppl < same else "trails" if r.gen_ppl.ppl > same else "matches"
        text = (f"- student ({r.sampler}) @ {r.nfe}: gen-PPL {r.gen_ppl.ppl:.1f} {verdict} the teacher @ {r.nfe} "
                f"({same:.1f}); teacher @ {top.nfe}: {top.gen_ppl.ppl:.1f}" if top.gen_ppl else "")
        if ar is not None and ar.gen_ppl:
            text += f"; AR: {ar.gen_ppl.ppl:.1f}"
        if r.sampler == "rgas":
            plain = next((x for x in student_rows if x.sampler != "rgas" and x.nfe == r.nfe and x.gen_ppl), None)
            if plain is not None:
                text += f"; the same student with the ancestral sampler: {plain.gen_ppl.ppl:.1f}"
        out.append(text + f"; entropy {r.entropy:.2f} vs teacher {teacher_rows[r.nfe].entropy:.2f}.")
    return "\n".join(out)


if __name__ == "__main__":
    sys.exit(main())
