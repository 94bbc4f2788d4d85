"""Few-step rivals on one teacher (``benchmarks/reproduce.py --regime R --rivals``): docs/results-rivals.md.

For a regime's teacher, evaluator, seeds and compute, side by side at the students' NFEs (8 and 16):

* the teacher with every sampler: ancestral (the baseline), and the training-free confidence-ordered samplers of
  :mod:`didi.diffusion.confidence` (MaskGIT, LLaDA's low-confidence remasking, Fast-dLLM's threshold at the calls it
  made);
* the DiDi-Instruct students (the regime's main students) with the same samplers, and with RGAS;
* SDTT students (:mod:`didi.recipes.sdtt`), one per distillation seed (OUT/rival-sdtt-sN), 128 -> 8 steps in 4
  rounds, their iterations set so that a student costs the FLOPs of a DiDi-Instruct student
  (``benchmarks/compute_cost.py``);
* the teacher trained from scratch for its steps plus one distillation's FLOPs (OUT/control-teacher-flops, shared
  with the controls of the bytes regime);

every row with the regime's metrics (gen-PPL and entropy, the quality metrics, MAUVE; the Markov regime's exact
metrics) and read against the teacher's temperature curve at its own entropy. Speed and training cost are in
``benchmarks/speed.py`` and OUT/compute_cost.json.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import controls

CONFIDENCE_SAMPLERS = ("maskgit", "low-confidence", "threshold")
SDTT_SEEDS = (0, 1, 2)


def sdtt_switches(out: Path, teacher: Path, scale) -> dict:
    """The SDTT settings of ``regime``: ``compute_cost.SDTT_SETTINGS`` with the round length that makes one SDTT
    student cost the FLOPs of one DiDi-Instruct student of the regime."""
    import compute_cost

    cost = controls.compute_cost(out, teacher, scale, pool=False)
    return {**compute_cost.SDTT_SETTINGS, "round_steps": sdtt_round_steps(cost)}


def sdtt_round_steps(cost: dict) -> int:
    """Steps per SDTT round so that its rounds cost one DiDi-Instruct distillation's FLOPs (at least one)."""
    import compute_cost

    di_iterations = cost["methods"]["didi-instruct"]["iterations"]
    per_iteration = cost["sdtt_iteration_in_didi_instruct_iterations"]["flops"]
    return max(1, round(di_iterations / per_iteration / compute_cost.SDTT_SETTINGS["rounds"]))


def variants(out: Path, teacher: Path, scale) -> list[controls.Variant]:
    return [controls.Variant("sdtt", "SDTT (128 -> 8 steps in 4 rounds, DiDi-Instruct's FLOPs)", teacher,
                             "rival-sdtt-s{seed}", sdtt_switches(out, teacher, scale))]


def training_stages(R, out: Path, teacher: Path, scale, data: str, device: str, seed: int) -> list:
    """The compute-matched teacher (FLOPs) of this regime."""
    def stage() -> float | None:
        cost = controls.compute_cost(out, teacher, scale, pool=False)
        run, steps = controls.control_teachers(out, scale.teacher_steps, cost)["flops"]
        return R.train_stage("mdlm", run, dataclasses.replace(scale, teacher_steps=steps), data, device, seed)
    return [("control-teacher-flops", stage)]


# ---------------------------------------------------------------------------------------------- evaluation

def reports(R, out: Path, teacher: Path, students: list[Path], distill_seeds: list[int], scale,
            ev: dict) -> dict[str, list]:
    """name -> rows of every rival at the students' NFEs, temperature 1, every sampling seed."""
    t1 = dict(seeds=scale.seeds, mauve=scale.mauve)
    nfe = scale.student_nfe
    rows = {}
    for sampler in CONFIDENCE_SAMPLERS:
        rows[f"teacher-{sampler}"] = R.eval_report(f"rival-teacher-{sampler}", models=[teacher], nfe=nfe,
                                                   sampler=sampler, **ev, **t1).rows
        parts = [R.eval_report(f"rival-student-{sampler}-s{s}", models=[st], nfe=nfe, sampler=sampler, **ev,
                               **t1).rows for s, st in zip(distill_seeds, students)]
        rows[f"student-{sampler}"] = R.mean_over_students(parts, distill_seeds)
    sdtt = variants(out, teacher, scale)[0]
    parts = [R.eval_report(sdtt.runs.format(seed=s), models=[sdtt.run(out, s)], nfe=nfe, **ev, **t1).rows
             for s in SDTT_SEEDS]
    rows["sdtt"] = R.mean_over_students(parts, list(SDTT_SEEDS))
    cost = controls.compute_cost(out, teacher, scale, pool=False)
    run, _ = controls.control_teachers(out, scale.teacher_steps, cost)["flops"]
    rows["teacher-flops"] = R.eval_report("control-teacher-flops", models=[run], nfe=nfe, **ev, **t1).rows
    return rows


def _pick(rows, nfe: int):
    return next((r for r in rows if r.nfe == nfe and r.temperature in (1.0, None) and r.prefix_tokens is None), None)


def section(R, regime: str, rows: dict, main_rows: list, names: dict, report, scale, cost: dict,
            markov: bool, plot: Path | None = None) -> str:
    """The regime's table of rivals and its reading (Markdown), and with ``plot`` their frontier plot
    (:func:`frontier_plot`)."""
    def main(name: str, sampler: str) -> list:
        return [r for r in main_rows if names.get(r.source) == name and r.sampler == sampler]
    teacher_rows = main("teacher", "ancestral")
    families = [("teacher", "ancestral", teacher_rows)]
    families += [("teacher", s, rows[f"teacher-{s}"]) for s in CONFIDENCE_SAMPLERS]
    families += [("DiDi-Instruct student", "ancestral", main("student", "ancestral"))]
    families += [("DiDi-Instruct student", s, rows[f"student-{s}"]) for s in CONFIDENCE_SAMPLERS]
    if main("student", "rgas"):
        families += [("DiDi-Instruct student", "rgas", main("student", "rgas"))]
    longer = controls.control_teachers(Path("."), scale.teacher_steps, cost)["flops"][1]
    families += [("SDTT student", "ancestral", rows["sdtt"]),
                 (f"teacher + one distillation's FLOPs ({longer} steps)", "ancestral", rows["teacher-flops"])]
    compute = training_compute(scale, cost)
    metric, spec, k = ("invalid_rate", ".2f", 100.0) if markov else ("gen_ppl", ".1f", 1.0)
    axis = "conditional_entropy" if markov else "entropy"
    quality = [] if markov else ["rep-2/rep-4", "distinct-2/4", "copy %"]
    header = ["model", "sampler", "NFE", "calls made", "invalid % ↓" if markov else "gen-PPL ↓",
              "H(X'|X)" if markov else "entropy", "vs teacher's curve @ own entropy",
              *([] if markov else ["MAUVE ↑"]), *quality, "training: teacher steps of equal FLOPs / wall-clock"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    readings = []
    for model, sampler, family in families:
        for nfe in scale.student_nfe:
            r = _pick(family, nfe)
            t = _pick(teacher_rows, nfe)
            if r is None:
                continue
            gap = R.curve_gap(r, t, report, metric) if t is not None else None
            against = "—" if gap is None else f"{k * gap[0]:+{spec}} (spread {k * gap[1]:{spec}})"
            if gap is not None and not (model == "teacher" and sampler == "ancestral"):
                verdict = ("no different from" if abs(gap[0]) <= 3 * gap[1] else
                           "below" if gap[0] < 0 else "above")
                readings.append(f"{model}, {sampler} @ {nfe}: {verdict} the teacher's curve")
            cells = [model, sampler, str(nfe), f"{r.nfe_made:.1f}" if r.nfe_made is not None else "—",
                     R._spread_cell(r, metric, spec, k), R._spread_cell(r, axis, ".3f"), against]
            if not markov:
                cells.append(R._spread_cell(r, "mauve", ".3f"))
            if quality:
                cells.append(controls._quality(r))
            cells.append("{:,.0f} / {:,.0f}".format(*compute[model.split(" (")[0]]))
            lines.append("| " + " | ".join(cells) + " |")
    notes = [
        "", " ".join(["- Every row at temperature 1 with the regime's sampling seeds; students: mean ± std over",
                      "their distillation seeds. 'vs teacher's curve': the row minus the teacher's ancestral",
                      "temperature curve at the same NFE, read at the row's own entropy" + (" (H(X'|X))" if markov
                                                                                            else "") + ",",
                      "with its spread (within 3× the spread: no different). Threshold sampler: calls made per batch,",
                      "its NFE column is the cap. Training: the compute behind the row in teacher-training steps of",
                      "equal FLOPs and of equal single-thread wall-clock (OUT/compute_cost.json, measured side by",
                      "side; the samplers are training-free, so a sampler costs what its model cost)."]),
        "- Readings: " + "; ".join(readings) + "."]
    if plot is not None:
        frontier_plot(R, plot, families, teacher_rows, report, scale.student_nfe, metric, axis, k)
        notes += ["", f"![every rival against the teacher's temperature curve]({plot.name})"]
    title = {"bytes": "Shakespeare as bytes", "markov": "the Markov language", "bpe": "Shakespeare, 4096 BPE"}
    return "\n".join([f"## {title.get(regime, regime)}", "", *lines, *notes, ""])


def frontier_plot(R, path: Path, families: list, teacher_rows: list, report, nfes: list[int], metric: str,
                  axis: str, scale_factor: float) -> None:
    """One column per NFE: the teacher's ancestral temperature curve (``metric`` against ``axis``, each point
    labelled by its temperature) and every rival at temperature 1 as a point with its std in both directions (over
    sampling seeds, or over distillation seeds for students): a rival below the curve beats cooling the teacher. The
    top row shows every rival, the bottom row zooms on the curve's entropy range (a collapsed sampler far to the
    left squeezes the rest)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import ScalarFormatter

    fig, axes = plt.subplots(2, len(nfes), figsize=(max(9.0, 5.5 * len(nfes)), 9), squeeze=False)
    markers = "osD^v<>Ph*X"
    for column, nfe in enumerate(nfes):
        t = _pick(teacher_rows, nfe)
        curve = R.frontier_of(report, t) if t is not None else None
        x_of = R.frontier_axis(curve) if curve else axis
        points = sorted(curve["points"], key=lambda p: p[x_of]) if curve else []
        picked = [(i, model, sampler, r) for i, (model, sampler, family) in enumerate(families)
                  if (r := _pick(family, nfe)) is not None and r.value(metric) is not None
                  and r.value(x_of) is not None]
        shown = [(p[x_of], scale_factor * p[metric]) for p in points]
        shown += [(r.value(x_of), scale_factor * r.value(metric)) for *_, r in picked]
        for zoom, ax in enumerate(axes[:, column]):
            ax.plot([p[x_of] for p in points], [scale_factor * p[metric] for p in points], color="black", lw=1,
                    label="teacher, ancestral, T sweep")
            for p in points:
                ax.annotate(f"T={p['temperature']:g}", (p[x_of], scale_factor * p[metric]), fontsize=7,
                            xytext=(3, 3), textcoords="offset points")
            for i, model, sampler, r in picked:
                ax.errorbar(r.value(x_of), scale_factor * r.value(metric), xerr=R._sigma(r, x_of),
                            yerr=scale_factor * R._sigma(r, metric), marker=markers[i % len(markers)], ls="none",
                            capsize=3, color=plt.cm.tab20(i % 20), label=f"{model.split(' (')[0]}, {sampler}")
            if metric == "gen_ppl":
                ax.set_yscale("log")
                ax.yaxis.set_major_formatter(ScalarFormatter())
                ax.yaxis.set_minor_formatter(ScalarFormatter())
            if zoom and points:
                low, high = points[0][x_of], points[-1][x_of]
                margin = max(0.1, 0.5 * (high - low))
                inside = [y for x, y in shown if low - margin <= x <= high + margin]
                ax.set_xlim(low - margin, high + margin)
                ax.set_ylim(min(inside) * 0.9, max(inside) * 1.1)
            ax.set_title(f"{nfe} NFE" + (", the curve's range" if zoom else ""))
            ax.set_xlabel("H(X'|X) (nats)" if x_of == "conditional_entropy" else "per-sample unigram entropy (nats)")
            ax.set_ylabel("invalid transitions (%)" if metric == "invalid_rate" else "gen-PPL")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=7, loc="lower center", ncol=3)
    fig.tight_layout(rect=(0, 0.09, 1, 1))
    fig.savefig(path, dpi=120)
    plt.close(fig)


def training_compute(scale, cost: dict) -> dict[str, tuple[float, float]]:
    """Model family -> its training compute in teacher-training steps of equal FLOPs and of equal wall-clock (one
    thread, measured side by side by ``compute_cost.py``): the teacher's steps, plus one distillation for a student
    (SDTT: its round-steps at their measured cost), or the longer teacher's steps."""
    import compute_cost

    flops, seconds = cost["flops"], cost["seconds_median"]
    di = cost["methods"]["didi-instruct"]
    sdtt_steps = compute_cost.SDTT_SETTINGS["rounds"] * sdtt_round_steps(cost)  # what the SDTT students ran
    longer = controls.control_teachers(Path("."), scale.teacher_steps, cost)["flops"][1]
    base = scale.teacher_steps
    return {"teacher": (base, base),
            "DiDi-Instruct student": (base + di["teacher_steps_equivalent_flops"],
                                      base + di["teacher_steps_equivalent_wall"]),
            "SDTT student": (base + sdtt_steps * flops["sdtt (per round-step)"] / flops["teacher step"],
                             base + sdtt_steps * seconds["sdtt (per round-step)"] / seconds["teacher step"]),
            "teacher + one distillation's FLOPs": (longer, longer)}


def write_page(path: Path, sections: dict[str, str], speed: str | None) -> None:
    """docs/results-rivals.md from every regime's section (kept in results.json, so each regime's run adds its own)."""
    order = [r for r in ("bytes", "markov", "bpe") if r in sections]
    text = ["# Few-step rivals on one teacher", "",
            "Every method of a regime shares its teacher, evaluator, sampling seeds and compute "
            "(`python benchmarks/reproduce.py --regime R --scale cpu --rivals`, one command per regime; SDTT students "
            "cost a DiDi-Instruct student's FLOPs; the longer-trained teacher adds one distillation's FLOPs to the "
            "teacher's). A rival that wins is said to win.", ""]
    for regime in order:
        text.append(sections[regime])
    if speed:
        text += ["## Speed", "", speed, ""]
    path.write_text("\n".join(text))

