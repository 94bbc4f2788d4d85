"""The controls and the scaling study of the bytes regime (``benchmarks/reproduce.py --regime bytes --controls``).

Is DiDi-Instruct's gain distillation, and is it a better use of the compute than more pre-training?

* **pure distillation**: the same distillation, but the discriminator's real rows are the teacher's own samples (a
  pool of ``InstructConfig.teacher_pool`` rows at ``teacher_nfe`` steps, sampled once and shared by the seeds) instead
  of corpus text: a student that learns only what the teacher knows (OUT/control-pure-sN);
* **more teacher training**: the teacher's recipe (same model, batch, learning rate, cosine schedule) trained from
  scratch for its steps plus the steps that cost as much as one distillation, by FLOPs and by wall-clock
  (``benchmarks/compute_cost.py``, saved in OUT/compute_cost.json): OUT/control-teacher-flops and
  OUT/control-teacher-wall;
  When the two budgets differ by less than :data:`SAME_BUDGET` (relative), one teacher (the FLOPs one) stands for
  both;
* **the teacher-training curve**: teachers trained for :data:`SCALING_FACTORS` times the main teacher's steps
  (OUT/scaling-teacher-B), sampled like the rest;
* **scaling** (``--scaling``): each of those teachers distilled with every distillation seed
  (OUT/scaling-student-B-sN): does the student still beat a better teacher? The 256-byte rows come from the
  ``bytes-256`` regime (its own run folder and page).

Every row is evaluated like the main rows (8 and 16 NFE, temperature 1, every sampling seed, MAUVE, the quality
metrics, both evaluators) and read against the main teacher's temperature curve at its own entropy.
"""
from __future__ import annotations

import dataclasses
import json
import math
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

SCALING_FACTORS = (0.5, 1, 4)
"""Teacher training budgets of the scaling study, as multiples of the main teacher's steps (cpu: 1500, 3000 and
12000 steps; 1: the main teacher)."""


def budgets(scale) -> list[int]:
    return [round(f * scale.teacher_steps) for f in SCALING_FACTORS]


@dataclass
class Variant:
    """A family of distillations: one run per distillation seed, from ``teacher``, with ``switches`` on the
    regime's settings."""

    key: str
    label: str
    teacher: Path
    runs: str  # run directory pattern under OUT, with {seed}
    switches: dict = field(default_factory=dict)

    def run(self, out: Path, seed: int) -> Path:
        return out / self.runs.format(seed=seed)


def teacher_dir(out: Path, budget: int, scale) -> Path:
    return out / "teacher" if budget == scale.teacher_steps else out / f"scaling-teacher-{budget}"


COOLED = (0.7, 0.8, 0.9)
"""Temperatures at which the pure-distillation students are also sampled: at T = 1 they sample above the entropy
range of the teacher's temperature curve (0.6-1.1), where no reading against it exists; cooled, they fall inside."""

SAME_BUDGET = 0.05
"""Relative difference under which the FLOPs- and the wall-clock-matched teacher budgets are one teacher."""


def scaling_budgets(scale, chosen: list[int] | None) -> list[int]:
    """The teacher budgets whose students ``--scaling`` distils: ``chosen`` (``--scaling 12000``), every budget of
    :data:`SCALING_FACTORS` but the main teacher's when empty (``--scaling``), none when None."""
    if chosen is None:
        return []
    others = [b for b in budgets(scale) if b != scale.teacher_steps]
    return [b for b in others if not chosen or b in chosen]


def variants(out: Path, scale, scaling: list[int] = ()) -> list[Variant]:
    """Every distillation family of the controls, and the students of the teachers of ``scaling`` steps."""
    found = [Variant("pure", "Pure distillation (teacher samples as the real rows)", out / "teacher",
                     "control-pure-s{seed}", {"real_source": "teacher"})]
    for budget in scaling:
        if budget != scale.teacher_steps:
            found.append(Variant(f"scaling-{budget}", f"Student of the {budget}-step teacher",
                                 teacher_dir(out, budget, scale), f"scaling-student-{budget}-s{{seed}}"))
    return found


# ----------------------------------------------------------------------------------------------- the compute

def compute_cost(out: Path, teacher: Path, scale, pool: bool = True) -> dict:
    """The exchange rate between a distillation with ``scale``'s settings and teacher-training steps
    (``benchmarks/compute_cost.py``), measured once and kept in OUT/compute_cost.json. ``pool``: with the teacher
    pool's cost (the pure-distillation control; sampling it is most of the measurement's time, an hour for the bpe
    teacher on one thread), measured again if a file without it is there."""
    from compute_cost import POOL_ENTRY  # the script's own module (torch, didi): imported only when needed

    path = out / "compute_cost.json"
    kept = json.loads(path.read_text()) if path.exists() else None
    if kept is None or (pool and POOL_ENTRY not in kept["methods"]):
        settings = json.dumps({**scale.distill, "steps": scale.distill_iterations})
        command = [sys.executable, str(Path(__file__).with_name("compute_cost.py")), "--teacher", str(teacher),
                   "--settings", settings, "--json", str(path), "--repeats", str(max(2, scale.repeats))]
        if not pool:
            command += ["--pool", "0"]
        elif not scale.data:  # the smoke scale: a pool as small as its runs
            command += ["--pool", "8"]
        print(f"measuring the compute of a distillation: {' '.join(command[1:])}", flush=True)
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
        kept = json.loads(path.read_text())
    return kept


def control_teachers(out: Path, base_steps: int, cost: dict) -> dict[str, tuple[Path, int]]:
    """The more-training controls: name -> (run directory, training steps); "flops" only when the wall-clock budget
    is within :data:`SAME_BUDGET` of it."""
    extra = cost["methods"]["didi-instruct"]
    flops, wall = (base_steps + round(extra["teacher_steps_equivalent_flops"]),
                   base_steps + round(extra["teacher_steps_equivalent_wall"]))
    found = {"flops": (out / "control-teacher-flops", flops)}
    if abs(wall - flops) > SAME_BUDGET * flops:
        found["wall"] = (out / "control-teacher-wall", wall)
    return found


def training_stages(R, out: Path, scale, data: str, device: str, seed: int) -> list[tuple[str, object]]:
    """The teachers the controls and the scaling need (``R``: the reproduce module): (stage name, callable)."""
    stages = []
    for budget in budgets(scale):
        if budget != scale.teacher_steps:
            stages.append((f"scaling-teacher-{budget}", lambda b=budget: R.train_stage(
                "mdlm", teacher_dir(out, b, scale), dataclasses.replace(scale, teacher_steps=b), data, device, seed)))

    def control(name: str) -> float | None:
        cost = compute_cost(out, out / "teacher", scale)
        found = control_teachers(out, scale.teacher_steps, cost)
        if name not in found:  # the wall-clock budget is the FLOPs one
            return None
        run, steps = found[name]
        return R.train_stage("mdlm", run, dataclasses.replace(scale, teacher_steps=steps), data, device, seed)
    names = ["flops", "wall"]
    if (out / "compute_cost.json").exists():  # measured: the wall-clock teacher only where it is another teacher
        names = list(control_teachers(out, scale.teacher_steps, compute_cost(out, out / "teacher", scale)))
    stages += [(f"control-teacher-{name}", lambda name=name: control(name)) for name in names]
    return stages


# ---------------------------------------------------------------------------------------------- evaluation

def reports(R, out: Path, scale, ev: dict, seeds: list[int], scaling: list[int]) -> dict[str, list]:
    """The rows of the controls and (``scaling``) the scaling study (temperature 1, every sampling seed, the students'
    NFEs): name -> rows (students: the mean over their distillation seeds)."""
    t1 = dict(seeds=scale.seeds, mauve=scale.mauve)
    nfe = scale.student_nfe
    rows, per_student = {}, {}
    for v in variants(out, scale, scaling):
        per_student[v.key] = [R.eval_report(f"{v.runs.format(seed=s)}", models=[v.run(out, s)], nfe=nfe, **ev,
                                            **t1).rows for s in seeds]
        rows[v.key] = R.mean_over_students(per_student[v.key], seeds)
    cooled = dict(temperatures=list(COOLED), seeds=scale.seeds, mauve=scale.mauve)
    parts = [R.eval_report(f"control-pure-s{s}-cooled", models=[out / f"control-pure-s{s}"], nfe=nfe, **ev,
                           **cooled).rows for s in seeds]
    rows["pure-cooled"] = R.mean_over_students(parts, seeds)
    for i, s in enumerate(seeds):  # per distillation seed: the main student (as evaluated by the main rows) and pure
        rows[f"seed-{s}-data"] = R.eval_report(f"student-s{s}", models=[out / f"student-s{s}"], nfe=nfe, **ev,
                                               **t1).rows
        rows[f"seed-{s}-pure"] = [*per_student["pure"][i], *parts[i]]
        for budget in scaling:
            rows[f"seed-{s}-scaling-{budget}"] = per_student[f"scaling-{budget}"][i]
    cost = compute_cost(out, out / "teacher", scale)
    for name, (run, _) in control_teachers(out, scale.teacher_steps, cost).items():
        rows[f"teacher-{name}"] = R.eval_report(f"control-teacher-{name}", models=[run], nfe=nfe, **ev, **t1).rows
    for budget in budgets(scale):
        if budget != scale.teacher_steps:
            rows[f"scaling-teacher-{budget}"] = R.eval_report(f"scaling-teacher-{budget}",
                                                              models=[teacher_dir(out, budget, scale)], nfe=nfe,
                                                              **ev, **t1).rows
    return rows


def _cell(R, row, metric: str, spec: str, evaluator: str | None = None) -> str:
    if row is None or row.value(metric, evaluator=evaluator) is None:
        return "—"
    if evaluator is None:
        return R.fmt_spread(row, metric, spec)
    spread = row.evaluators[evaluator]["spread"][metric]
    std = spread.get("std")
    return format(spread["mean"], spec) + ("" if std is None else f" ± {format(std, spec)}")


def _quality(row) -> str:
    def fmt(metrics: list[str], scale: float = 1.0, spec: str = ".2f") -> str:
        values = [row.value(m) for m in metrics]
        return "/".join("—" if v is None else format(v * scale, spec) for v in values)
    return " | ".join([fmt(["rep_tokens_2", "rep_tokens_4"]), fmt(["distinct_2", "distinct_4"]),
                       fmt(["copy_rate"], 100.0, ".1f")])


def controls_section(R, rows: dict, main_rows: list, names: dict, report, out: Path, scale, evaluators: list[str],
                     cost: dict) -> str:
    """The controls table and its reading (Markdown)."""
    from compute_cost import POOL_ENTRY

    teacher = {r.nfe: r for r in main_rows if names.get(r.source) == "teacher" and r.temperature in (1.0, None)
               and r.sampler == "ancestral" and r.prefix_tokens is None and r.nfe in scale.student_nfe}
    student = {r.nfe: r for r in main_rows if names.get(r.source) == "student" and r.temperature in (1.0, None)
               and r.sampler == "ancestral" and r.prefix_tokens is None}
    teachers = control_teachers(out, scale.teacher_steps, cost)
    extra = cost["methods"]["didi-instruct"]
    families = [(f"teacher ({scale.teacher_steps} steps)", teacher),
                ("DiDi-Instruct student (data as real)", student),
                ("pure distillation (teacher pool as real)", {r.nfe: r for r in rows["pure"]})]
    for t in sorted(COOLED, reverse=True):
        families.append((f"pure distillation, T {t:g}",
                         {r.nfe: r for r in rows["pure-cooled"] if r.temperature == t}))
    for name, (_, steps) in teachers.items():
        what = ("one distillation's FLOPs" + (" and wall-clock" if "wall" not in teachers else "") if name == "flops"
                else "one distillation's wall-clock")
        families.append((f"teacher, {steps} steps (+ {what})", {r.nfe: r for r in rows[f"teacher-{name}"]}))
    for budget in budgets(scale):
        if budget != scale.teacher_steps:
            families.append((f"teacher, {budget} steps", {r.nfe: r for r in rows[f"scaling-teacher-{budget}"]}))
    second = evaluators[1] if len(evaluators) > 1 else None
    header = ["row", "NFE", "gen-PPL ↓", *([f"gen-PPL ({Path(second).name}) ↓"] if second else []),
              "median / trimmed", "entropy", "vs teacher's curve @ own entropy", "MAUVE ↑",
              "rep-2/rep-4", "distinct-2/4", "copy %"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for label, by_nfe in families:
        for nfe in sorted(by_nfe):
            r = by_nfe[nfe]
            gap = R.curve_gap(r, teacher[nfe], report, "gen_ppl") if nfe in teacher else None
            reading = "—" if gap is None else (f"{gap[0]:+.1f} (spread {gap[1]:.1f})")
            cells = [label, str(nfe), _cell(R, r, "gen_ppl", ".1f"),
                     *([_cell(R, r, "gen_ppl", ".1f", evaluator=second)] if second else []),
                     f"{_cell(R, r, 'gen_ppl_median', '.1f')} / {_cell(R, r, 'gen_ppl_trimmed', '.1f')}",
                     _cell(R, r, "entropy", ".3f"), reading, _cell(R, r, "mauve", ".3f"), _quality(r)]
            lines.append("| " + " | ".join(cells) + " |")
    seeds = len(rows["pure"][0].spread.get("gen_ppl", {}).get("distill_seeds", [])) if rows["pure"] else 0
    curve = ", ".join(str(b) for b in budgets(scale) if b != scale.teacher_steps)
    notes = [
        "", f"- Compute (`python benchmarks/compute_cost.py --teacher {out / 'teacher'}` with this page's "
        f"distillation settings, saved in {out / 'compute_cost.json'}; one thread): one "
        f"distillation of {extra['iterations']} iterations costs {extra['teacher_steps_equivalent_flops']:.0f} "
        f"teacher-training steps in FLOPs and {extra['teacher_steps_equivalent_wall']:.0f} in wall-clock; the pure "
        f"distillation adds its teacher pool "
        f"({cost['methods'][POOL_ENTRY]['teacher_steps_equivalent_flops']:.0f} steps in "
        "FLOPs in all), paid once for every seed. The longer-trained teachers are trained from scratch with the "
        "main teacher's recipe (same model, batch, learning rate, cosine schedule) for that many more steps"
        + ("" if "wall" in teachers else f"; the FLOPs and wall-clock budgets differ by less than "
           f"{SAME_BUDGET:.0%}, so one teacher stands for both") + f"; the teachers of {curve} steps "
        "place them on the teacher's training curve.",
        " ".join([f"- Students: mean ± std over {seeds} distillation seeds (each its mean over the sampling",
                  "seeds); teachers: over the sampling seeds. 'vs teacher's curve': the row's gen-PPL minus the main",
                  "teacher's temperature curve at the same NFE, read at the row's own entropy (negative: better",
                  "than cooling the teacher), with its spread; a difference within 3× its spread is no difference;",
                  "'—': the row's entropy lies outside the curve's range (nothing is extrapolated), which is why the",
                  f"pure-distillation students are also sampled at T = {', '.join(f'{t:g}' for t in COOLED)}."]),
        "- median / trimmed: of per-sample gen-PPL (10 % trimmed mean); rep-n: share of a sample's n-grams that repeat "
        "one of the same sample; distinct-n: unique n-grams over all n-grams of a row's samples; copy %: share of "
        "bytes inside a 32-byte window found verbatim in the training split.",
    ]
    return "\n".join(["", "## Controls: is it distillation, and is it worth its compute?", "", *lines, *notes,
                      *per_seed_table(R, rows, teacher, report, scale), ""])


def per_seed_table(R, rows: dict, teacher: dict, report, scale) -> list[str]:
    """Each distillation seed's data-run and pure-distillation student (every temperature sampled) read against the
    teacher's curve: a mean over seeds hides a seed that collapsed."""
    seeds = sorted(int(k.split("-")[1]) for k in rows if k.startswith("seed-") and k.endswith("-pure"))
    if not seeds:
        return []
    nfes = scale.student_nfe
    lines = ["", "Per distillation seed (gen-PPL / entropy / vs the teacher's curve at the row's own entropy, mean ± "
             "std over the sampling seeds):", "",
             "| seed | real rows | T | " + " | ".join(f"{n} NFE" for n in nfes) + " |", "|---|---|---|"
             + "---|" * len(nfes)]
    for s in seeds:
        for label, key in (("data", f"seed-{s}-data"), ("teacher pool", f"seed-{s}-pure")):
            temps = sorted({r.temperature for r in rows[key]}, reverse=True)
            for t in temps:
                cells = []
                for n in nfes:
                    r = next((r for r in rows[key] if r.nfe == n and r.temperature == t), None)
                    if r is None:
                        cells.append("—")
                        continue
                    gap = R.curve_gap(r, teacher[n], report, "gen_ppl") if n in teacher else None
                    cells.append(f"{r.value('gen_ppl'):.1f} / {r.value('entropy'):.3f} / "
                                 + ("—" if gap is None else f"{gap[0]:+.1f} ({gap[1]:.1f})"))
                lines.append(f"| {s} | {label} | {t:g} | " + " | ".join(cells) + " |")
    return lines


def scaling_section(R, rows: dict, main_rows: list, names: dict, out: Path, scale, plot: Path,
                    long_text: dict | None) -> str:
    """The scaling table and plot: the student/teacher gen-PPL ratio at each NFE against the teacher's validation
    bound."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    families = []
    for budget in [b for b in budgets(scale) if b == scale.teacher_steps or f"scaling-{b}" in rows]:
        if budget == scale.teacher_steps:
            t_rows = [r for r in main_rows if names.get(r.source) == "teacher"]
            s_rows = [r for r in main_rows if names.get(r.source) == "student"]
        else:
            t_rows, s_rows = rows[f"scaling-teacher-{budget}"], rows[f"scaling-{budget}"]
        families.append((f"{scale.seq_len} bytes, {budget} steps", t_rows, s_rows))
    if long_text:
        families.append((f"256 bytes, {long_text['steps']} steps", long_text["teacher"], long_text["student"]))
    lines = ["| teacher | validation bound (nats/byte) | NFE | teacher gen-PPL | student gen-PPL | student / teacher | "
             "entropies (teacher / student) | MAUVE (teacher / student) |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    points = {}
    for label, t_rows, s_rows in families:
        bound = next((r.likelihood.nll for r in t_rows if r.likelihood is not None), None)
        for nfe in scale.student_nfe:
            t, s = _t1_ancestral(t_rows, nfe), _t1_ancestral(s_rows, nfe)
            if t is None or s is None:
                continue
            ratio = s.value("gen_ppl") / t.value("gen_ppl")
            spread = ratio * math.hypot(R._sigma(s, "gen_ppl") / s.value("gen_ppl"),
                                        R._sigma(t, "gen_ppl") / t.value("gen_ppl"))
            lines.append(f"| {label} | {'—' if bound is None else f'{bound:.3f}'} | {nfe} | "
                         f"{R.fmt_spread(t, 'gen_ppl', '.1f')} | {R.fmt_spread(s, 'gen_ppl', '.1f')} | "
                         f"{ratio:.3f} ± {spread:.3f} | {t.value('entropy'):.3f} / {s.value('entropy'):.3f} | "
                         f"{R._spread_cell(t, 'mauve', '.2f')} / {R._spread_cell(s, 'mauve', '.2f')} |")
            if bound is not None:
                points.setdefault((label.split(",")[0], nfe), []).append((bound, ratio, spread))
    fig, ax = plt.subplots(figsize=(6, 4))
    for (length, nfe), pts in sorted(points.items()):
        pts.sort()
        ax.errorbar([p[0] for p in pts], [p[1] for p in pts], yerr=[p[2] for p in pts], marker="o", capsize=3,
                    label=f"{length} @ {nfe} NFE")
    ax.axhline(1.0, color="grey", lw=0.8, ls="--")
    ax.set_xlabel("teacher's validation bound (nats per byte; lower = better teacher)")
    ax.set_ylabel("student gen-PPL / teacher gen-PPL")
    ax.invert_xaxis()
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(plot, dpi=120)
    plt.close(fig)
    notes = ["", f"![student/teacher gen-PPL against the teacher's validation bound]({plot.name})", "",
             "- Ratio below 1: the student beats its own teacher at the same NFE (both at temperature 1); its spread "
             "combines the two rows' relative spreads. The validation bound is the teacher's NELBO on held-out blocks "
             "(an upper bound on its negative log-likelihood, nats per byte)."]
    return "\n".join(["", "## A better teacher, longer text", "", *lines, *notes,
                      *scaling_seed_table(rows, scale), ""])


def _t1_ancestral(rows: list, nfe: int):
    """The unconditional ancestral row at temperature 1 and ``nfe`` of ``rows``, or None."""
    return next((r for r in rows if r.nfe == nfe and r.temperature in (1.0, None) and r.sampler == "ancestral"
                 and r.prefix_tokens is None), None)


def scaling_seed_table(rows: dict, scale) -> list[str]:
    """Each distillation seed's student of each teacher, ancestral at T = 1 (gen-PPL / entropy / MAUVE, means over
    the sampling seeds): a student that degenerated shows here before it moves a mean."""
    others = [b for b in budgets(scale) if b != scale.teacher_steps and f"scaling-{b}" in rows]
    seeds = sorted(int(k.split("-")[1]) for k in rows if k.startswith("seed-") and k.endswith("-data"))
    if not others:
        return []
    nfes = scale.student_nfe
    lines = ["", "Per distillation seed (gen-PPL / entropy / MAUVE at T = 1, means over the sampling seeds):", "",
             "| teacher | seed | " + " | ".join(f"{n} NFE" for n in nfes) + " |", "|---|---|" + "---|" * len(nfes)]
    for budget in [scale.teacher_steps, *others]:
        for s in seeds:
            key = f"seed-{s}-data" if budget == scale.teacher_steps else f"seed-{s}-scaling-{budget}"
            cells = []
            for n in nfes:
                r = _t1_ancestral(rows.get(key, []), n)
                mauve = None if r is None else r.value("mauve")
                cells.append("—" if r is None else f"{r.value('gen_ppl'):.1f} / {r.value('entropy'):.3f} / "
                             + ("—" if mauve is None else f"{mauve:.2f}"))
            lines.append(f"| {budget} steps | {s} | " + " | ".join(cells) + " |")
    return lines


def long_text_rows(R, root: Path) -> dict | None:
    """The teacher and student rows of the ``bytes-256`` regime (its saved evaluations), or None before it ran."""
    from didi.recipes.evaluate.report import EvalReport
    from didi.runtime.checkpoint import read_run_config

    folder = root / "eval"
    teacher = folder / "teacher.json"
    students = sorted(p for p in folder.glob("student-s*.json") if p.stem.removeprefix("student-s").isdigit())
    if not teacher.exists() or not students:
        return None

    def rows(path: Path) -> list:
        return EvalReport.from_json(json.loads(path.read_text())["report"]).rows
    seeds = [int(p.stem.removeprefix("student-s")) for p in students]
    return {"teacher": rows(teacher), "student": R.mean_over_students([rows(p) for p in students], seeds),
            "steps": read_run_config(root / "teacher").training["steps"]}
