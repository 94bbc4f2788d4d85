"""Reproduce the DiDi-Instruct results table (paper-notes §6) at a chosen scale and write docs/results.md.

    python benchmarks/reproduce.py                  # CPU scale: embedded Shakespeare, tiny models (< 60 min, 2 cores)
    python benchmarks/reproduce.py --ablation       # + the ablation table (bpe: the paper's cumulative one, 4 more
                                                    # distillations; markov, bytes: 6 rows x 3 seeds, one choice each)
    python benchmarks/reproduce.py --scale paper --teacher runs/mdlm-owt   # 169M DiT, L=1024, OpenWebText,
                                                    # GPT-2 Large evaluator (GPU + network; teacher from
                                                    # `didi convert mdlm.ckpt runs/mdlm-owt`)
    python benchmarks/reproduce.py --scale gpu      # one H200, < 10 min (an estimate, see SCALES)
    python benchmarks/reproduce.py --regime markov  # the synthetic Markov language: exact metrics, no AR evaluator
    python benchmarks/reproduce.py --regime bytes   # Shakespeare as UTF-8 bytes, AR evaluator on the same bytes
    python benchmarks/reproduce.py --smoke --out /tmp/x   # seconds, used by the test suite (any --regime)

Regimes (``--regime``, :data:`REGIMES`: one :class:`Scale` per scale each):

* ``bpe`` (default): the embedded Shakespeare corpus under a byte-level BPE (4096 tokens), gen-PPL under an AR
  model trained here; writes docs/results.md;
* ``markov``: ``--data markov`` (byte tokenizer), a corpus whose distribution is known, so that the samples are
  scored exactly (invalid-transition rate, NLL per transition, ``H(X'|X)``; ``didi eval`` reads the run's
  markov.json) and no AR evaluator is trained; the temperature frontiers are read on ``H(X'|X)``; writes
  docs/results-markov.md;
* ``bytes``: Shakespeare with ``--tokenizer byte`` and an AR evaluator trained on the same bytes; writes
  docs/results-bytes.md.

Every invocation also writes its rows into docs/results.json (next to the Markdown) under ``"regimes"``, keeping the
other regimes already there: each row's regime, model, sampler, NFE, temperature, metric means and stds, sampling
seeds (and the distillation seeds of student rows). Runs of the ``markov`` and ``bytes`` regimes live in OUT/markov
and OUT/bytes. With ``Scale.distill_seeds`` the student is distilled once per seed (OUT/student-s0, ...), each one
evaluated alike; a student row is then the mean ± std over the distillation seeds of each student's own mean over
the sampling seeds.

Stages (each skipped when its run directory is complete, so an interrupted benchmark resumes):
teacher MDLM -> AR baseline/evaluator -> DiDi-Instruct student -> evaluation of the teacher at its budgets
(``Scale.teacher_nfe``; cpu: 8/16/32/64/128/1024 NFE), the student at ``Scale.student_nfe`` (cpu: 8/16/32) with the
ancestral sampler and with RGAS, and the AR baseline, all in one process so that every latency ratio is measured on
the same machine in the same run; then the conditional rows (teacher and student at the students' NFEs and the AR
baseline continue held-out 32-token prefixes, `didi eval --prefix-tokens`; `--prefix-tokens 0` skips them).

The evaluation (``Scale.seeds``, ``Scale.temperatures``, ``Scale.mauve``): every row at temperature 1 with each
seed (mean ± std), the rest of the temperature sweep with the first seed (the teacher's at the students' NFEs),
each model x NFE's gen-PPL at the
held-out data's entropy, MAUVE against held-out text, and the data and AR reference rows; the teacher's largest
budget and RGAS at temperature 1 with one seed (bootstrap intervals), for CPU time. Speed-ups are ratios of
per-sample latencies, every row timed at one batch size. results.json carries every row, seed and temperature,
the frontiers and the settings (the conditional rows under "conditional_rows").
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import re
import signal
import sys
import time
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

import torch

from didi.config import to_dict
from didi.data.corpora import DataConfig
from didi.diffusion.rgas import RGASConfig
from didi.errors import RunInterrupted
from didi.recipes.didi_instruct import InstructConfig
from didi.recipes.distill import distill, method_config
from didi.recipes.evaluate.markov import MARKOV_METRICS
from didi.recipes.evaluate.metrics import Perplexity, interpolate_at, mean_std
from didi.recipes.evaluate.plots import plot_report
from didi.recipes.evaluate.quality import PPL_METRICS, QUALITY_METRICS
from didi.recipes.evaluate.report import (
    COND_ENTROPY,
    EvalReport,
    EvalRow,
    compute_frontiers,
    curve_key,
    frontier_axis,
    frontier_of,
)
from didi.recipes.evaluate.resume import fingerprint
from didi.recipes.evaluate.runner import EvalConfig, evaluate
from didi.recipes.evaluate.tables import chain_rates, fmt_spread
from didi.recipes.method import RESUMABLE_OPTIONS, DistillConfig
from didi.recipes.quickstart import BYTES_DISTILL, MARKOV_DISTILL, TINY_DISTILL
from didi.recipes.train import TrainConfig, resume_config, train
from didi.runtime.checkpoint import atomic_write, completed_steps, is_run_dir, read_run_config
from didi.version import source_fingerprint

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
    repeats: int = 5  # timed full batches per row at least (after one warm-up batch)
    top_nfe_samples: int = 0  # samples for the teacher's largest budget (0: num_samples; 1024 NFE is slow on CPU)
    top_nfe_one_batch: bool = False  # the largest budget: seed 0 only, its one batch timed as it ran, no warm-up
    # (a batch of 64 at 1024 NFE took 11-17 min here: 3 seeds, a warm-up and 5 timed batches would take 1.5-2.3 h)
    rgas_samples: int = 0  # samples per RGAS row (0: num_samples; RGAS also runs the discriminator)
    ablation_nfe: list[int] = field(default_factory=lambda: [8, 16])
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])  # temperature 1 rows: mean ± std over these seeds
    temperatures: list[float] = field(default_factory=lambda: [0.7, 0.8, 0.9, 1.0])  # frontier sweep (first seed)
    mauve: bool = True  # MAUVE against held-out text (needs >= 16 samples per side)
    prefix_tokens: int = 32  # conditional rows: held-out prefix length (--prefix-tokens overrides, 0 = none)
    tokenizer: str = "auto"  # DataConfig.tokenizer ("auto": the corpus' default, or a BPE of vocab_size)
    data_extra: dict = field(default_factory=dict)  # more DataConfig fields (e.g. max_documents)
    ar: bool = True  # train an AR baseline/evaluator here (when no `evaluator` is given)
    rgas: bool = True  # also sample the student with RGAS
    distill_seeds: list[int] = field(default_factory=list)  # one student per seed (OUT/student-sN); [] = one
    # student distilled with --seed in OUT/student
    frontier_entropy: str = "sample"  # didi eval --frontier-entropy: sample or conditional (Markov metrics)
    second_ar: dict | None = None  # a second AR evaluator (OUT/ar2): its seed and model overrides, e.g. a wider one

    @property
    def distill_iterations(self) -> int:
        """DiDi-Instruct iterations: ``distill["steps"]`` when the settings name them, else ``distill_steps``."""
        return int(self.distill.get("steps", self.distill_steps))


GPU_MODEL = dict(hidden_size=512, n_blocks=8, n_heads=8)  # the bpe and bytes models of --scale gpu (~30M)
SMOKE_MODEL = dict(hidden_size=32, n_blocks=2, n_heads=2, cond_dim=16)

# "cpu" uses the bpe quickstart's sizes and its distillation settings (didi.recipes.quickstart.TINY_DISTILL). Its
# students (and the sweeps and conditional rows) stop at 32 NFE, the few-step regime the method is for: sampling
# costs about 1.7 s per NFE per 128 samples here, and 3 seeds + 3 temperatures + conditional rows at 64 and 128 NFE
# would add about an hour (measured 2026-12-01).
SCALES = {
    "cpu": Scale(data="shakespeare", seq_len=128, preset="tiny", teacher_steps=600, ar_steps=400, distill_steps=300,
                 global_batch_size=32, teacher_lr=1e-3, distill=TINY_DISTILL,
                 teacher_nfe=[8, 16, 32, 64, 128, 1024], student_nfe=[8, 16, 32], num_samples=128,
                 batch_size=64, top_nfe_samples=64, top_nfe_one_batch=True, rgas_samples=64,
                 distill_seeds=[0, 1, 2]),
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
    # one H200: teacher 3000 x 128 x 256 tokens and AR 3000 steps of a ~30M model in bf16 (~2 min each, estimated),
    # 500 distillation iterations (~2 min), evaluation with MAUVE and RGAS (~3 min): ~9 min in all, an estimate
    # (never measured). The embedded corpus is small for this model: the validation likelihood tells overfitting.
    "gpu": Scale(data="shakespeare", seq_len=256, preset="small", teacher_steps=3000, ar_steps=3000,
                 distill_steps=500, global_batch_size=128, teacher_lr=6e-4,
                 distill=dict(TINY_DISTILL, batch_size=32, disc_warmup_steps=100),
                 teacher_nfe=[8, 16, 32, 64, 128, 1024], student_nfe=[8, 16, 32, 64, 128], num_samples=128,
                 batch_size=128, eval_blocks=256, train_extra={"warmup_steps": 200, **GPU_MODEL}),
}

# The synthetic Markov language: the exact metrics are the evaluator (no AR stage, no gen-PPL, no MAUVE).
MARKOV_SCALES = {
    "cpu": Scale(data="markov", seq_len=64, preset="tiny", teacher_steps=3000, ar_steps=0, distill_steps=1200,
                 global_batch_size=32, teacher_lr=1e-3, distill=MARKOV_DISTILL, teacher_nfe=[8, 16, 32, 128],
                 student_nfe=[8, 16], num_samples=128, batch_size=64, train_extra=dict(hidden_size=128), ar=False,
                 mauve=False, prefix_tokens=0, distill_seeds=[0, 1, 2],
                 temperatures=[0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0], frontier_entropy="conditional"),
    # one H200, run with --jobs 3: teacher 5000 x 128 x 64 tokens of a ~6M model (~2 min, launch-bound), three
    # distillations of 1200 iterations side by side (~5 min), evaluation (~1 min): ~8 min, an estimate (never measured)
    "gpu": Scale(data="markov", seq_len=64, preset="tiny", teacher_steps=5000, ar_steps=0, distill_steps=1200,
                 global_batch_size=128, teacher_lr=1e-3, distill=dict(MARKOV_DISTILL, disc_blocks=6),
                 teacher_nfe=[8, 16, 32, 128], student_nfe=[8, 16], num_samples=256, batch_size=256, eval_blocks=256,
                 train_extra=dict(hidden_size=256, n_blocks=6, n_heads=4), ar=False, mauve=False, prefix_tokens=0,
                 distill_seeds=[0, 1, 2], temperatures=[0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0],
                 frontier_entropy="conditional"),
    "smoke": Scale(data="markov", seq_len=32, preset="tiny", teacher_steps=4, ar_steps=0, distill_steps=3,
                   global_batch_size=8, teacher_lr=3e-3,
                   distill=dict(MARKOV_DISTILL, batch_size=2, group_size=2, student_steps=2, warmup_steps=1, steps=3,
                                disc_blocks=2),
                   teacher_nfe=[4, 8], student_nfe=[4], num_samples=16, eval_blocks=2, repeats=1, ablation_nfe=[4],
                   seeds=[0, 1], temperatures=[0.5, 1.0], prefix_tokens=0, train_extra=SMOKE_MODEL, ar=False,
                   mauve=False, distill_seeds=[0, 1], data_extra=dict(max_documents=20),
                   frontier_entropy="conditional"),
}

# Shakespeare as UTF-8 bytes (257 tokens), gen-PPL under an AR model trained on the same bytes.
BYTES_SCALES = {
    # the markov regime's shapes (64 bytes, hidden 128, 3000 teacher steps: 10.2 min measured) and distillation
    # (three 1200-iteration students side by side with --jobs 3: 36.5 min each), an AR evaluator of the same size
    "cpu": Scale(data="shakespeare", tokenizer="byte", seq_len=64, preset="tiny", teacher_steps=3000, ar_steps=1500,
                 distill_steps=1200, global_batch_size=32, teacher_lr=1e-3, distill=BYTES_DISTILL,
                 teacher_nfe=[8, 16, 32, 128], student_nfe=[8, 16], num_samples=128, batch_size=64,
                 train_extra=dict(hidden_size=128), prefix_tokens=0, distill_seeds=[0, 1, 2],
                 temperatures=[0.6, 0.7, 0.8, 0.9, 1.0, 1.1], second_ar=dict(seed=1, hidden_size=256)),
    # one H200: as the bpe regime's gpu scale (the byte vocabulary makes the output layer cheaper): ~9 min, an
    # estimate (never measured)
    "gpu": Scale(data="shakespeare", tokenizer="byte", seq_len=256, preset="small", teacher_steps=3000,
                 ar_steps=3000, distill_steps=500, global_batch_size=128, teacher_lr=6e-4,
                 distill=dict(BYTES_DISTILL, batch_size=32, steps=500, disc_warmup_steps=150),
                 teacher_nfe=[8, 16, 32, 128], student_nfe=[8, 16], num_samples=128, batch_size=128, eval_blocks=256,
                 distill_seeds=[0, 1, 2],
                 train_extra={"warmup_steps": 200, **GPU_MODEL}),
    "smoke": Scale(data="", tokenizer="byte", seq_len=32, preset="tiny", teacher_steps=4, ar_steps=4,
                   distill_steps=3, global_batch_size=8, teacher_lr=3e-3,
                   distill=dict(batch_size=2, group_size=2, lr=1e-4, disc_lr=1e-3, warmup_steps=1),
                   teacher_nfe=[4, 8], student_nfe=[4], num_samples=16, eval_blocks=2, repeats=1, ablation_nfe=[4],
                   seeds=[0, 1], temperatures=[0.5, 1.0], prefix_tokens=8, train_extra=SMOKE_MODEL,
                   distill_seeds=[0, 1], second_ar=dict(seed=1)),
}

# Shakespeare as bytes in 256-byte rows: the bytes regime's recipe at 4x the length (the scaling study's longer text)
BYTES_256_SCALES = {
    "cpu": dataclasses.replace(BYTES_SCALES["cpu"], seq_len=256, teacher_nfe=[8, 16, 128], top_nfe_samples=64,
                               temperatures=[0.8, 0.9, 1.0], second_ar=None),
    "smoke": dataclasses.replace(BYTES_SCALES["smoke"], second_ar=None),
}

REGIMES = {"bpe": SCALES, "markov": MARKOV_SCALES, "bytes": BYTES_SCALES, "bytes-256": BYTES_256_SCALES}
"""The Scale of every regime at every scale (``--regime``, ``--scale``; ``--smoke`` = the "smoke" scale)."""

# The paper's cumulative ablation (notes §6.3) as distillation switches, each row adding one technique. The
# "+ π(t) weighting" row is absent: with the default proposal Beta(1, 1) it is the identity (see --tau-a/--tau-b).
ABLATION = [
    ("baseline", "Baseline (1-step policy gradient)", dict(student_steps=1, coupled_time=False, omega="constant",
                                                          regularize=False)),
    ("score-decomposition", "+ Score decomposition (2 steps)", dict(coupled_time=False, omega="constant",
                                                                    regularize=False)),
    ("coupled-time", "+ Coupled time", dict(omega="constant", regularize=False)),
    ("omega", "+ ω(t) correction", dict(regularize=False)),
    ("full", "+ Regularisation (full DiDi-Instruct)", dict()),
]

# The markov and bytes settings (MARKOV_DISTILL, BYTES_DISTILL) leave the paper's recipe in several places (issue 14,
# docs/method.md). Each row puts one group of them back to the published behaviour, all else unchanged: a
# leave-one-out ablation, distilled with every distillation seed. The key names the run directory
# (OUT/ablation-KEY-sN); the full setting is the main students.
LEAVE_ONE_OUT = [
    ("released-discriminator", "Discriminator and credit as released (1 trainable block on 3 frozen, global "
                               "attention, sequence credit, masked positions)",
     dict(disc_blocks=-1, disc_window=0, credit="sequence", disc_positions="masked")),
    ("released-rollouts", "Rollouts as released (dropout on, τ drawn per row)",
     dict(rollout_dropout=True, tau_per="row")),
    ("uniform-tau", "τ ~ U[0.02, 0.98] as released (not Beta(1, 20) clamped at 0.3)", dict(tau_b=1.0, tau_max=0.98)),
    ("two-step-rollout", "2-step rollout (intermediate-state matching) instead of the deployed 8-step sampler",
     dict(student_steps=2)),
]

# Where those settings keep the published behaviour of an issue-14 choice, its alternative: one row each, all else
# unchanged.
ALTERNATIVES = [
    ("unscaled-advantage", "Alternative: advantages centred per group only, not divided by the batch's std "
                           "(issue item 4)", dict(advantage="group-mean")),
    ("fresh-corruption", "Alternative: the reward on a fresh corruption of the rollout, not the one the "
                         "discriminator was just trained on (issue item 9)", dict(reward_corruption="fresh")),
]


def ablation_plan(regime: str) -> tuple[str, list[tuple[str, str, dict]]]:
    """The ablation of ``--ablation`` for ``regime``: its title and its rows (key, label, distillation switches;
    empty switches = the main students). bpe: the paper's cumulative ablation; markov and bytes: the full setting,
    then one row per choice put back to the published behaviour (leave one out), then one per alternative."""
    if regime == "bpe":
        return "Cumulative ablation", ABLATION
    return "Ablation of the setting", [("full", "Full setting (the students above)", {}), *LEAVE_ONE_OUT,
                                       *ALTERNATIVES]


def ablation_dir(out: Path, key: str, seed: int) -> Path:
    """The run directory of one ablation row's distillation seed."""
    return out / f"ablation-{key}-s{seed}"


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


RESUMED = "resumed_at"
"""wall_clock.json's entry {stage: step}: the stages that resumed from a snapshot after an interruption; their seconds
count only this run's part (the time before the interruption was lost with the process)."""
NOT_STAGES = ("parallel_jobs", RESUMED)
"""wall_clock.json's entries that are not stages."""


def record_stage(wall: dict, stage: str, seconds: float | None, resumed_from: int) -> None:
    """Keep a stage's wall-clock ``seconds`` in ``wall`` (None: nothing was run; an earlier measurement stays), and
    under :data:`RESUMED` the step it resumed from when that was not 0."""
    if seconds is None:
        wall.setdefault(stage, None)
        return
    wall[stage] = seconds
    resumed = wall.pop(RESUMED, {})
    resumed.pop(stage, None)
    if resumed_from:
        resumed[stage] = resumed_from
    if resumed:
        wall[RESUMED] = resumed


def train_stage(kind: str, run_dir: Path, scale: Scale, data: str, device: str, seed: int) -> float | None:
    """Train (or resume) a teacher/AR run; returns its wall-clock seconds (None when reused)."""
    steps = scale.teacher_steps if kind == "mdlm" else scale.ar_steps
    if completed_steps(run_dir) >= steps:
        return None
    if is_run_dir(run_dir):  # a run folder, with or without a snapshot (a killed start resumes from step 0)
        return _timed(lambda: train(resume_config(run_dir, steps=steps), DataConfig(), kind=kind, resume=True))
    cfg = TrainConfig(out=str(run_dir), preset=scale.preset, steps=steps, lr=scale.teacher_lr,
                      global_batch_size=scale.global_batch_size, eval_every=max(1, steps // 3),
                      save_every=max(1, steps // 3), seed=seed, device=device,
                      **{"warmup_steps": min(50, steps), **scale.train_extra})
    tokenizer = "gpt2" if scale.vocab_size == 50257 else scale.tokenizer
    data_cfg = DataConfig(data=data, seq_len=scale.seq_len, vocab_size=scale.vocab_size, seed=seed,
                          tokenizer=tokenizer, **scale.data_extra)
    return _timed(lambda: train(cfg, data_cfg, kind=kind))


RUN_ONLY_FIELDS = (set(RESUMABLE_OPTIONS) - {"steps"}) | {"teacher", "out"}
"""Distillation options that do not change what a distillation computes (left out of :func:`check_same_settings`):
those ``didi distill --resume`` may change, except ``steps`` (a longer schedule gives other figures), and the
paths."""


def check_same_settings(out: Path, cfg: DistillConfig) -> None:
    """Refuse to reuse or resume a student run in ``out`` that was made with other distillation settings (say, an
    older MARKOV_DISTILL): its figures would be reported under the new ones."""
    if not (out / "config.json").exists():
        return
    run = read_run_config(out)
    saved = run.extra.get("distill", {})
    wanted = json.loads(json.dumps(to_dict(cfg)))  # as config.json holds it
    skip = RUN_ONLY_FIELDS | set(run.extra.get("fitted_warmups", {}))
    differ = sorted(k for k in wanted if k not in skip and saved.get(k, wanted[k]) != wanted[k])
    if differ:
        raise SystemExit(f"{out}: made with other distillation settings ({', '.join(differ)}); move it away or "
                         f"give another --out")


def student_config(teacher: Path, out: Path, scale: Scale, device: str, seed: int, **switches) -> DistillConfig:
    """The settings of one distillation seed: the regime's DiDi-Instruct settings with ``switches`` (an ablation's or a
    control's overrides), or, when ``switches`` name another ``method``, that method's settings (``switches`` are
    then all of them)."""
    if switches.get("method", "didi-instruct") != "didi-instruct":
        cls = method_config(switches["method"])
        probe = cls(**{k: v for k, v in switches.items()})
        return cls(teacher=str(teacher), out=str(out), seed=seed, device=device,
                   save_every=max(1, probe.steps // 3), **switches)
    steps = scale.distill_iterations
    return InstructConfig(teacher=str(teacher), out=str(out), seed=seed, device=device,
                          save_every=max(1, steps // 3), **{**scale.distill, "steps": steps, **switches})


def distill_stage(teacher: Path, out: Path, scale: Scale, device: str, seed: int, **switches) -> float | None:
    cfg = student_config(teacher, out, scale, device, seed, **switches)
    check_same_settings(out, cfg)
    if completed_steps(out) >= cfg.steps:
        return None
    resume = is_run_dir(out)  # with or without a snapshot (a killed start resumes from step 0)
    return _timed(lambda: distill(cfg, resume=resume))


def companion(name: str):
    """A module of this folder (``controls``, ``rivals``, ``compute_cost``), importable however this file was loaded."""
    import importlib

    folder = str(Path(__file__).resolve().parent)
    if folder not in sys.path:
        sys.path.insert(0, folder)
    return importlib.import_module(name)


def variant_families(out: Path, teacher: Path, regime: str, scale: Scale, with_controls: bool,
                     with_rivals: bool, scaling: list[int] = ()) -> list:
    """The distillation families of ``--controls`` (:func:`controls.variants`; with ``--scaling`` the scaling
    students) and ``--rivals`` (SDTT)."""
    controls, rivals = companion("controls"), companion("rivals")
    return [*(controls.variants(out, scale, scaling) if with_controls else []),
            *(rivals.variants(out, teacher, scale) if with_rivals else [])]


def threads_per_job(jobs: int) -> int:
    """CPU threads of each of ``jobs`` parallel distillations (``--jobs``): the machine's cores shared out, at
    least 1."""
    return max(1, (os.cpu_count() or 1) // jobs)


def training_cost_section(wall: dict) -> list[str]:
    """The page's "Training cost" section from wall_clock.json: each stage's wall-clock (a resumed stage's marked as
    a part, and left out of the ratios), distillation against teacher training, and how the parallel jobs shared
    the cores."""
    lines = ["## Training cost", "", "| stage | wall-clock |", "|---|---|"]
    jobs, resumed = wall.get("parallel_jobs"), wall.get(RESUMED, {})
    for stage, secs in wall.items():
        if stage in NOT_STAGES:
            continue
        untimed = "not timed here (given, or run outside this benchmark)"
        part = (f" after resuming at step {resumed[stage]} (the time before the interruption is not counted)"
                if stage in resumed else "")
        lines.append(f"| {stage} | {untimed if secs is None else f'{secs / 60:.1f} min{part}'} |")
    whole = {k: v for k, v in wall.items() if k not in resumed}  # a resumed stage's seconds are a part: no ratio
    if whole.get("teacher") and whole.get("student"):
        lines += ["", f"Distillation took {wall['student'] / wall['teacher']:.2f}× the teacher's training time."]
    distillations = [v for k, v in whole.items() if k.startswith("student-s") and v]
    if whole.get("teacher") and distillations:
        lines += ["", f"A distillation took {sum(distillations) / len(distillations) / wall['teacher']:.2f}× the "
                      f"teacher's training time (mean over {len(distillations)} distillation seeds)."]
    if jobs:
        lines += ["", f"The distillations ran {jobs} at a time (`--jobs {jobs}`), each process with "
                      f"{threads_per_job(jobs)} thread(s) sharing the machine's cores: each one's "
                      "wall-clock is its own, the stages overlap."]
    return lines


def parallel_distill_stages(argv: list[str] | None, runs: list[tuple[Path, list[str], int]], scale: Scale, jobs: int,
                            wall: dict) -> None:
    """Run each unfinished distillation of ``runs`` (its directory, the child's extra arguments, e.g.
    ``--distill-seed 1``, and its iterations) as a child process, ``jobs`` at a time, each with
    :func:`threads_per_job` threads, its stdout in RUN.log and its progress in RUN.err; records each run's own
    wall-clock seconds (they overlap: the page says they ran in parallel) under ``wall[RUN]`` and
    ``wall["parallel_jobs"]``."""
    import subprocess
    from concurrent.futures import ThreadPoolExecutor

    todo = [(d, extra) for d, extra, steps in runs if completed_steps(d) < steps]
    threads = str(threads_per_job(jobs))
    env = {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}
    base = [sys.executable, str(Path(__file__).resolve()), *(sys.argv[1:] if argv is None else argv)]

    def run(student: Path, extra: list[str]) -> tuple[str, str] | None:
        """One run's child; its seconds into ``wall``, or ("interrupted" | "failed", which and why)."""
        student.mkdir(parents=True, exist_ok=True)
        log = student.with_suffix(".log")
        print(f"distilling {student.name} in the background (log: {log.with_suffix('.err')})", flush=True)
        resumed_from = completed_steps(student)
        with open(log, "w") as stdout, open(log.with_suffix(".err"), "w") as stderr:
            code = subprocess.run([*base, *extra], env=env, stdout=stdout, stderr=stderr).returncode
        lines = log.read_text().strip().splitlines()
        if code in (130, 143):  # 128 + SIGINT / SIGTERM: the child wrote its snapshot (RunInterrupted)
            return "interrupted", f"{student.name} at step {completed_steps(student)}"
        if code != 0 or not lines:
            return "failed", f"{student.name} (exit {code}; see {log.with_suffix('.err')})"
        record_stage(wall, student.name, json.loads(lines[-1])["seconds"], resumed_from)
        return None

    with ThreadPoolExecutor(max_workers=jobs) as pool:
        ended = [e for e in pool.map(lambda item: run(*item), todo) if e]
    failed = [why for kind, why in ended if kind == "failed"]
    interrupted = [which for kind, which in ended if kind == "interrupted"]
    if failed:
        raise SystemExit("distillation failed: " + "; ".join(failed))
    if interrupted:
        print(f"reproduce: interrupted: {', '.join(interrupted)} (snapshots written); rerun the same command to "
              "resume", file=sys.stderr)
        raise SystemExit(130)
    wall["parallel_jobs"] = jobs if todo else wall.get("parallel_jobs")


def eval_report(tag: str, out: Path, models: list[Path], nfe: list[int], scale: Scale, evaluator: str | None,
                device: str, seed: int, sampler: str = "ancestral", num_samples: int = 0, **options) -> EvalReport:
    """Evaluate ``models`` at ``nfe`` (``options``: more :class:`EvalConfig` fields, e.g. ``seeds``), saved as
    OUT/eval/TAG.json and reused whole while its key holds: the settings, the models' and the evaluator's files
    (:func:`didi.recipes.evaluate.resume.fingerprint`: config.json, every weights file, markov.json) and a fingerprint
    of didi's source code. Otherwise ``didi eval``'s own resume (OUT/eval/TAG.rows.jsonl) recomputes only the rows
    whose key changed. Every row is timed after one warm-up batch, over at least ``scale.repeats`` full batches,
    with the machine's load recorded."""
    saved = out / "eval" / f"{tag}.json"
    saved.parent.mkdir(parents=True, exist_ok=True)
    n = num_samples or scale.num_samples
    config = EvalConfig(models=[str(m) for m in models], nfe=nfe, evaluator=evaluator, num_samples=n,
                        batch_size=min(n, scale.batch_size or n), seed=seed,
                        sampler=sampler, eval_blocks=scale.eval_blocks, device=device,
                        rgas=RGASConfig() if sampler == "rgas" else None, frontier_entropy=scale.frontier_entropy,
                        json=str(saved), resume=True,
                        **{"references": False, "warmup": 1, "repeats": scale.repeats, **options})
    key = {"config": repr(dataclasses.replace(config, json=None)), "code": source_fingerprint(),
           "files": [fingerprint(m) for m in [*models, *config.evaluator_names]]}
    if saved.exists():
        cached = json.loads(saved.read_text())
        if isinstance(cached, dict) and cached.get("key") == json.loads(json.dumps(key)) and "report" in cached:
            return EvalReport.from_json(cached["report"])
    report = evaluate(config)
    atomic_write(saved, lambda tmp: tmp.write_text(json.dumps({"key": key, "report": report.to_json()},
                                                              default=str)))
    return report


def eval_rows(*args, **kwargs) -> list[EvalRow]:
    """The rows of :func:`eval_report`."""
    return eval_report(*args, **kwargs).rows


def _cell(value, spec: str) -> str:
    return "—" if value is None else format(value, spec)


def _spread_cell(row: EvalRow | None, metric: str, spec: str, scale: float = 1.0) -> str:
    return "—" if row is None or row.value(metric) is None else fmt_spread(row, metric, spec, scale)


def _per_sample(row: EvalRow) -> float | None:
    return row.latency_per_sample_s


def results_table(rows: list[EvalRow], names: dict[str, str], report: EvalReport) -> str:
    """Markdown table of the temperature-1 rows and the data row: gen-PPL with its spread, gen-PPL at the matched
    entropy, MAUVE, and speed-ups from per-sample latencies relative to the teacher at its largest budget and to
    the AR baseline (every row's batch size is stated in the header)."""
    main = [r for r in rows if r.temperature in (1.0, None)]
    main = [r for r in main if r.kind != "data"] + [r for r in main if r.kind == "data"]  # the reference row last
    timed = [r for r in main if r.latency_s]
    teacher = [r for r in timed if names.get(r.source) == "teacher"]
    top = max(teacher, key=lambda r: r.nfe) if teacher else None
    ar = next((r for r in timed if r.kind == "ar"), None)
    batches = sorted({max(r.batch_sizes) for r in timed})
    batch = f"batch {batches[0]}" if len(batches) == 1 else f"batch sizes differ: {', '.join(map(str, batches))}"
    target = report.target_entropy
    markov = any(r.markov for r in main)
    if markov:  # the exact metrics of the Markov regime (gen-PPL only if an evaluator scored the rows)
        at = f"{_axis_label(report)} {target['value']:.3f}" if target else "matched entropy"
        ppl = any(r.value("gen_ppl") is not None for r in main)
        quality = ["invalid % (T = 1) ↓", "NLL/transition (T = 1)", f"{COND_ENTROPY} (T = 1)", "entropy (T = 1)",
                   f"invalid % @ {at} ↓", *(["gen-PPL (T = 1) ↓"] if ppl else [])]
    else:
        matched_header = f"gen-PPL @ entropy {target['value']:.3f} ↓" if target else "gen-PPL @ matched entropy ↓"
        quality = ["gen-PPL (T = 1) ↓", "entropy (T = 1)", matched_header, "MAUVE ↑"]
    vs_ar = ar is not None or not markov
    header = ["model", "sampler", "NFE", "calls made", "disc. calls", *quality, "latency / sample (ms)", "tokens/s",
              f"speed-up vs teacher@{top.nfe if top else 'max'} (per-sample latency, {batch})",
              *([f"speed-up vs AR (per-sample latency, {batch})"] if vs_ar else [])]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in main:
        disc = r.extra_calls.get("discriminator")
        frontier = frontier_of(report, r)
        if markov:
            cells = [_spread_cell(r, "invalid_rate", ".2f", 100.0), _spread_cell(r, "nll_per_transition", ".4f"),
                     _spread_cell(r, "conditional_entropy", ".4f"), _spread_cell(r, "entropy", ".3f"),
                     _matched(frontier, "invalid_rate", ".2f", 100.0),
                     *([_spread_cell(r, "gen_ppl", ".1f")] if ppl else [])]
        else:
            matched = "—" if frontier is None else "not reached" if frontier["gen_ppl"] is None else \
                f"{frontier['gen_ppl']:.1f} (T {frontier['bracket'][0]:g}–{frontier['bracket'][1]:g})"
            cells = [_spread_cell(r, "gen_ppl", ".1f"), _spread_cell(r, "entropy", ".3f"), matched,
                     _spread_cell(r, "mauve", ".3f")]
        per_sample = _per_sample(r)
        lines.append(" | ".join([
            f"| {names.get(r.source, 'data' if r.kind == 'data' else r.model)}", r.sampler,
            "—" if r.nfe is None else str(r.nfe), _cell(r.nfe_made, ".0f"),
            "—" if not disc else f"{sum(disc) / len(disc):.0f}", *cells,
            _cell(per_sample * 1000 if per_sample else None, ".1f"), _cell(r.tokens_per_s, ".0f"),
            _cell(_per_sample(top) / per_sample if top and per_sample else None, ".1f") + ("×" if per_sample else ""),
            *([_cell(_per_sample(ar) / per_sample if ar and per_sample else None, ".2f") + ("×" if per_sample else "")]
              if vs_ar else [])]) + " |")
    return "\n".join(lines)


def _axis_label(report: EvalReport) -> str:
    """The frontiers' entropy axis as a table header."""
    return COND_ENTROPY if report.frontiers and frontier_axis(report.frontiers[0]) == "conditional_entropy" else \
        "entropy"


def _matched(frontier: dict | None, metric: str, spec: str, scale: float = 1.0) -> str:
    """A frontier's value at the target entropy and the temperatures it lies between."""
    if frontier is None:
        return "—"
    if frontier.get("bracket") is None or frontier.get(metric) is None:
        return "not reached"
    return f"{format(frontier[metric] * scale, spec)} (T {frontier['bracket'][0]:g}–{frontier['bracket'][1]:g})"


def sweep_table(rows: list[EvalRow], names: dict[str, str], report: EvalReport) -> str:
    """gen-PPL / entropy (the Markov regime: invalid % / H(X'|X)) of every model x NFE at every temperature of the
    sweep, and the matched value."""
    temps = sorted({p["temperature"] for f in report.frontiers for p in f["points"]})
    markov = any("invalid_rate" in f for f in report.frontiers)
    if markov:
        axis = frontier_axis(report.frontiers[0])
        what, last = f"invalid % / {COND_ENTROPY if axis == 'conditional_entropy' else 'entropy'}", "invalid % @ target"
    else:
        what, last = "gen-PPL / entropy", "gen-PPL @ target"
    lines = ["| model | sampler | NFE | " + " | ".join(f"T = {t:g}: {what}" for t in temps)
             + f" | {last} |", "|" + "---|" * (len(temps) + 4)]
    for f in report.frontiers:
        by_t = {p["temperature"]: p for p in f["points"]}
        source = next((r.source for r in rows if (r.model, r.kind, r.sampler, r.nfe) ==
                       (f["model"], f["kind"], f["sampler"], f["nfe"])), f["model"])
        if markov:
            cells = [f"{100 * by_t[t]['invalid_rate']:.2f} / {by_t[t][axis]:.3f}" if t in by_t else "—" for t in temps]
            matched = "not reached" if f.get("bracket") is None else f"{100 * f['invalid_rate']:.2f}"
        else:
            cells = [f"{by_t[t]['gen_ppl']:.1f} / {by_t[t]['entropy']:.3f}" if t in by_t else "—" for t in temps]
            matched = "not reached" if f["gen_ppl"] is None else f"{f['gen_ppl']:.1f}"
        lines.append(f"| {names.get(source, f['model'])} | {f['sampler']} | {'—' if f['nfe'] is None else f['nfe']} | "
                     + " | ".join(cells) + f" | {matched} |")
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
    parser.add_argument("--regime", choices=list(REGIMES), default="bpe", help="corpus and tokenizer: bpe "
                        "(Shakespeare, BPE; docs/results.md), markov (the synthetic Markov language, exact metrics; "
                        "docs/results-markov.md) or bytes (Shakespeare as bytes; docs/results-bytes.md); default bpe")
    parser.add_argument("--scale", choices=["cpu", "gpu", "paper"], default="cpu", help="experiment size: cpu "
                        "(2 cores), gpu (one H200, < 10 min estimated) or paper (bpe only); default cpu")
    parser.add_argument("--smoke", action="store_true", help="a seconds-long run on a synthetic corpus (tests)")
    parser.add_argument("--ablation", action="store_true", help="also distill and evaluate the ablation rows")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "reproduce", help="run directories (the markov "
                        "and bytes regimes: OUT/markov, OUT/bytes)")
    parser.add_argument("--teacher", type=Path, default=None, help="use this teacher run instead of training one")
    parser.add_argument("--results", type=Path, default=None, help="Markdown output (default docs/results.md, "
                        "docs/results-REGIME.md for markov and bytes; with --smoke: in OUT); results.json is "
                        "written beside it")
    parser.add_argument("--data", default=None, help="override the corpus of the scale")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--jobs", type=int, default=1, help="distil the seeds of Scale.distill_seeds in this many "
                        "processes at once, each with cores/jobs threads (on 2 cores, 3 single-thread tiny "
                        "distillations finish sooner than 3 two-thread ones in a row); default 1")
    parser.add_argument("--distill-seed", type=int, default=None, help=argparse.SUPPRESS)  # one seed (a --jobs child)
    parser.add_argument("--ablation-key", default=None, help=argparse.SUPPRESS)  # with --distill-seed: an ablation row
    parser.add_argument("--variant", default=None, help=argparse.SUPPRESS)  # with --distill-seed: a control or rival
    parser.add_argument("--controls", action="store_true", help="bytes: the controls (pure distillation, a teacher "
                        "trained with the distillation's compute, teachers of 1500 and 12000 steps), on this page "
                        "(benchmarks/controls.py)")
    parser.add_argument("--scaling", type=int, nargs="*", default=None, metavar="STEPS", help="with --controls: "
                        "also distil the teachers of 1500 and 12000 steps (or only those of the STEPS given), every "
                        "distillation seed, and plot the student/teacher ratio against the teacher's validation "
                        "bound, with the bytes-256 regime's rows when it ran")
    parser.add_argument("--rivals", action="store_true", help="the few-step rivals on this regime's teacher "
                        "(confidence-ordered samplers, SDTT, a compute-matched teacher): docs/results-rivals.md "
                        "(benchmarks/rivals.py)")
    parser.add_argument("--train-only", action="store_true", help="run the training stages only (no evaluation, no "
                        "page): e.g. to train everything first and evaluate later in a quiet moment")
    parser.add_argument("--prefix-tokens", type=int, default=None, help="conditional rows: teacher, student and AR "
                        "continue held-out prefixes of this many tokens (default: the scale's, 32; 8 with --smoke; "
                        "none for markov; 0: none)")
    args = parser.parse_args(argv)

    if args.jobs < 1:
        parser.error(f"--jobs must be >= 1 (got {args.jobs})")
    if args.scaling is not None and not args.controls:
        parser.error("--scaling comes with --controls")
    controls, rivals = companion("controls"), companion("rivals")
    regime = args.regime
    scale_name = "smoke" if args.smoke else args.scale
    if scale_name not in REGIMES[regime]:
        parser.error(f"--scale {scale_name}: the {regime} regime has the scales {', '.join(REGIMES[regime])}")
    scale = REGIMES[regime][scale_name]
    others = controls.scaling_budgets(scale, [])
    if args.scaling and any(b not in others for b in args.scaling):
        parser.error(f"--scaling: the teachers of this scale have {', '.join(map(str, others))} steps "
                     f"(got {' '.join(map(str, args.scaling))})")
    out: Path = args.out if regime == "bpe" else args.out / regime
    out.mkdir(parents=True, exist_ok=True)
    data = args.data or scale.data
    if args.smoke and not data:
        data = str(args.out / "corpus.txt")
        if not Path(data).exists():
            words = "the king queen lord night day love sword crown heart fair sweet good speak come go".split()
            Path(data).write_text("\n".join(f"KING. {' '.join(words[(i * 7 + j) % len(words)] for j in range(9))}."
                                            for i in range(600)) + "\n")
    page = "results.md" if regime == "bpe" else f"results-{regime}.md"
    results = args.results or (args.out / page if args.smoke else ROOT / "docs" / page)
    teacher = args.teacher or out / "teacher"
    ar = out / "ar"
    has_ar = scale.ar and not scale.evaluator  # an AR baseline trained here is the evaluator
    distill_seeds = scale.distill_seeds or [args.seed]
    students = [out / f"student-s{s}" for s in scale.distill_seeds] or [out / "student"]
    started = time.perf_counter()

    wall_file = out / "wall_clock.json"
    wall = json.loads(wall_file.read_text()) if wall_file.exists() else {}
    if args.teacher:
        wall["teacher"] = None  # a given teacher's training is not timed by this benchmark
    stages = [("teacher", lambda: None if args.teacher else train_stage("mdlm", teacher, scale, data, args.device,
                                                                       args.seed))]
    if has_ar:
        stages.append(("ar", lambda: train_stage("ar", ar, scale, data, args.device, args.seed)))
    if has_ar and scale.second_ar:
        second = {k: v for k, v in scale.second_ar.items() if k != "seed"}
        stages.append(("ar2", lambda: train_stage(
            "ar", out / "ar2", dataclasses.replace(scale, train_extra={**scale.train_extra, **second}), data,
            args.device, scale.second_ar.get("seed", args.seed))))
    if args.controls:
        stages += controls.training_stages(sys.modules[__name__], out, scale, data, args.device, args.seed)
    if args.rivals and not args.controls:  # --controls trains the same compute-matched teacher
        stages += rivals.training_stages(sys.modules[__name__], out, teacher, scale, data, args.device, args.seed)
    for seed, student in zip(distill_seeds, students):
        stages.append((student.name, lambda seed=seed, student=student: distill_stage(teacher, student, scale,
                                                                                      args.device, seed)))
    for seed, student in zip(distill_seeds, students):  # before any stage: a stale student stops the run early
        check_same_settings(student, student_config(teacher, student, scale, args.device, seed))
    _, plan = ablation_plan(regime)
    ablation_runs = [(key, seed, ablation_dir(out, key, seed), switches) for key, _, switches in plan if switches
                     for seed in distill_seeds] if args.ablation else []  # every distillation of the ablated rows
    for _, seed, run, switches in ablation_runs:
        check_same_settings(run, student_config(teacher, run, scale, args.device, seed, **switches))
    if args.distill_seed is not None:  # a child of --jobs: this seed's distillation only, its seconds on stdout
        switches = {key: sw for key, _, sw in plan}[args.ablation_key] if args.ablation_key else {}
        run = (ablation_dir(out, args.ablation_key, args.distill_seed) if args.ablation_key
               else out / f"student-s{args.distill_seed}")
        source = teacher
        if args.variant:
            v = next(v for v in variant_families(out, teacher, regime, scale, True, True,
                                                 controls.scaling_budgets(scale, []))
                     if v.key == args.variant)
            source, run, switches = v.teacher, v.run(out, args.distill_seed), v.switches
        seconds = distill_stage(source, run, scale, args.device, args.distill_seed, **switches)
        print(json.dumps({"seconds": seconds}))
        return 0
    parallel = args.jobs > 1 and len(students) > 1
    if parallel:  # the distillation stages run side by side below
        stages = stages[:-len(students)]
    elif ablation_runs:
        stages += [(run.name, lambda seed=seed, run=run, switches=switches: distill_stage(
            teacher, run, scale, args.device, seed, **switches)) for _, seed, run, switches in ablation_runs]
    for stage, run in stages:  # each stage's run directory is OUT/STAGE
        resumed_from = completed_steps(out / stage)
        record_stage(wall, stage, run(), resumed_from)
        wall_file.write_text(json.dumps(wall))  # stages done in an earlier, interrupted run keep their time
    scaling = controls.scaling_budgets(scale, args.scaling)
    families = variant_families(out, teacher, regime, scale, args.controls, args.rivals, scaling)
    variant_runs = [(v, seed, v.run(out, seed)) for v in families
                    for seed in (rivals.SDTT_SEEDS if v.key == "sdtt" else distill_seeds)]
    for v, seed, run in variant_runs:
        check_same_settings(run, student_config(v.teacher, run, scale, args.device, seed, **v.switches))
    if parallel:
        iterations = scale.distill_iterations
        children = [(student, ["--distill-seed", str(seed)], iterations) for seed, student in zip(distill_seeds,
                                                                                                   students)]
        children += [(run, ["--distill-seed", str(seed), "--ablation-key", key], iterations)
                     for key, seed, run, _ in ablation_runs]
        children += [(run, ["--distill-seed", str(seed), "--variant", v.key],
                      student_config(v.teacher, run, scale, args.device, seed, **v.switches).steps)
                     for v, seed, run in variant_runs]
        try:
            parallel_distill_stages(argv, children, scale, args.jobs, wall)
        finally:  # the students that finished keep their time when another one failed or was interrupted
            wall_file.write_text(json.dumps(wall))
    else:
        for v, seed, run in variant_runs:
            resumed_from = completed_steps(run)
            record_stage(wall, run.name, distill_stage(v.teacher, run, scale, args.device, seed, **v.switches),
                         resumed_from)
            wall_file.write_text(json.dumps(wall))
    if args.train_only:
        print(f"training stages done: {', '.join(sorted(k for k in wall if k not in NOT_STAGES))}")
        return 0
    evaluator = scale.evaluator or (str(ar) if has_ar else None)
    evaluators = [evaluator] if evaluator else []
    if has_ar and scale.second_ar:
        evaluators.append(str(out / "ar2"))
        evaluator = evaluators  # every row scored by both; the first drives the frontiers
    names = {str(teacher): "teacher", **{str(s): "student" for s in students}, str(ar): "AR"}
    ev = dict(out=out, scale=scale, evaluator=evaluator, device=args.device, seed=args.seed)

    def student_report(tag: str, **options) -> EvalReport:
        """One evaluation of every student (tag-sN per distillation seed), as one report of rows averaged over the
        distillation seeds (:func:`mean_over_students`)."""
        if len(students) == 1:
            return eval_report(tag, models=students, **ev, **options)
        parts = [eval_report(f"{tag}-s{seed}", models=[student], **ev, **options)
                 for seed, student in zip(distill_seeds, students)]
        return EvalReport(rows=mean_over_students([p.rows for p in parts], distill_seeds), meta=parts[0].meta)

    # every temperature with every seed (a temperature curve of one set of seeds); RGAS at temperature 1 with one
    # seed (CPU time); the data reference row comes with the AR (else the teacher) rows
    t1 = dict(seeds=scale.seeds, mauve=scale.mauve)
    sweep = dict(temperatures=[t for t in scale.temperatures if t != 1.0], seeds=scale.seeds, mauve=scale.mauve)
    references = dict(references=True)
    reports = [eval_report("teacher", models=[teacher], nfe=scale.teacher_nfe[:-1], **ev, **t1,
                           **({} if has_ar else references))]
    top = {**t1, "seeds": scale.seeds[:1], "warmup": 0, "repeats": 1} if scale.top_nfe_one_batch else t1
    reports.append(eval_report("teacher-top", models=[teacher], nfe=scale.teacher_nfe[-1:],
                               num_samples=scale.top_nfe_samples, **ev, **top))
    reports.append(student_report("student", nfe=scale.student_nfe, **t1))
    if scale.rgas:
        reports.append(student_report("student-rgas", nfe=scale.student_nfe, sampler="rgas",
                                      num_samples=scale.rgas_samples, mauve=scale.mauve))
    if has_ar:
        reports.append(eval_report("ar", models=[ar], nfe=scale.student_nfe[:1], **ev, **t1, **references))
    if sweep["temperatures"]:
        # the teacher's sweep at the students' budgets: the matched-entropy comparison is at equal NFE
        sweep_nfe = [n for n in scale.teacher_nfe[:-1] if n in scale.student_nfe]
        reports.append(eval_report("teacher-sweep", models=[teacher], nfe=sweep_nfe, **ev, **sweep))
        reports.append(student_report("student-sweep", nfe=scale.student_nfe, **sweep))
        if has_ar:
            reports.append(eval_report("ar-sweep", models=[ar], nfe=scale.student_nfe[:1], **ev, **sweep))
    rows = [r for rep in reports for r in rep.rows]
    report = combined_report(reports, args, evaluator, scale)

    prefix_tokens = scale.prefix_tokens if args.prefix_tokens is None else args.prefix_tokens
    conditional = []  # one evaluation per model, so that a retrained model does not re-evaluate the others
    if prefix_tokens:
        conditional += eval_rows("conditional-teacher", models=[teacher], nfe=scale.student_nfe,
                                 prefix_tokens=prefix_tokens, unconditional=False, **ev)
        conditional += student_report("conditional-student", nfe=scale.student_nfe, prefix_tokens=prefix_tokens,
                                      unconditional=False).rows
        if has_ar:
            conditional += eval_rows("conditional-ar", models=[ar], nfe=scale.student_nfe,
                                     prefix_tokens=prefix_tokens, unconditional=False, **ev)

    ablation_rows = []  # one row per (ablation row, NFE): the mean ± std over its distillation seeds
    for key, label, switches in plan if args.ablation else []:
        if not switches:  # the full setting: the main students, as evaluated above
            ablation_rows += [dataclasses.replace(r, model=label) for r in rows if names.get(r.source) == "student"
                              and r.sampler == "ancestral" and r.temperature in (1.0, None)
                              and r.prefix_tokens is None and r.nfe in scale.ablation_nfe]
            continue
        parts = [eval_rows(f"ablation-{key}-s{seed}", models=[ablation_dir(out, key, seed)], nfe=scale.ablation_nfe,
                           seeds=scale.seeds, **ev) for seed in distill_seeds]
        ablation_rows += [dataclasses.replace(r, model=label) for r in mean_over_students(parts, distill_seeds)]

    plot_path = results.with_suffix(".png")
    plot_report(dataclasses.replace(report, rows=[r for r in rows if r.temperature in (1.0, None)]), plot_path)
    full = {**report.to_json(), "ablation_rows": [r.to_json() for r in ablation_rows],
            "conditional_rows": [r.to_json() for r in conditional], "wall_clock_s": wall}
    command = "python benchmarks/reproduce.py" + ("" if regime == "bpe" else f" --regime {regime}") + (
        " --smoke" if args.smoke else f" --scale {args.scale}") + (" --ablation" if args.ablation else "") + (
        " --controls" if args.controls else "") + ("" if args.scaling is None else " ".join(
        ["", "--scaling", *map(str, args.scaling)])) + (
        " --rivals" if args.rivals else "") + (
        "" if args.prefix_tokens is None else f" --prefix-tokens {args.prefix_tokens}") + (
        f" --teacher {args.teacher}" if args.teacher else "") + (f" --jobs {args.jobs}" if args.jobs > 1 else "")
    proteins = None if args.smoke or regime != "bpe" else protein_table(ROOT / "docs" / "results_proteins.md")
    text = conditional_section(conditional, names, prefix_tokens)  # the page's head comes last: it says how long
    this = sys.modules[__name__]                                    # the invocation took, controls and rivals too
    extra_summary = {}
    if args.controls:
        cost = controls.compute_cost(out, teacher, scale)
        control_rows = controls.reports(this, out, scale, ev, distill_seeds, scaling)
        text += controls.controls_section(this, control_rows, rows, names, report, out, scale, evaluators, cost)
        if scaling:
            text += controls.scaling_section(this, control_rows, rows, names, out, scale,
                                             results.with_name(results.stem + "-scaling.png"),
                                             controls.long_text_rows(this, args.out / "bytes-256"))
        full["controls_rows"] = {k: [r.to_json() for r in v] for k, v in control_rows.items()}
        extra_summary["controls"] = {k: regime_rows(regime, v, names, report, distill_seeds)
                                     for k, v in control_rows.items()}
        extra_summary["compute_cost"] = cost
    if args.rivals:
        cost = controls.compute_cost(out, teacher, scale, pool=args.controls)
        rival_rows = rivals.reports(this, out, teacher, students, distill_seeds, scale, ev)
        section = rivals.section(this, regime, rival_rows, rows, names, report, scale, cost,
                                 markov=scale.frontier_entropy == "conditional",
                                 plot=results.with_name(f"results-rivals-{regime}.png"))
        full["rival_rows"] = {k: [r.to_json() for r in v] for k, v in rival_rows.items()}
        extra_summary["rivals"] = {"section": section, "compute_cost": cost,
                                   "rows": {k: regime_rows(regime, v, names, report, distill_seeds)
                                            for k, v in rival_rows.items()}}
        page_json = load_json(results.with_name("results.json"))
        sections = {r: v["rivals"]["section"] for r, v in page_json.get("regimes", {}).items() if "rivals" in v}
        sections[regime] = section
        speed = load_json(results.with_name("speed.json")).get("markdown")
        rivals.write_page(results.with_name("results-rivals.md"), sections, speed)
    if regime == "bpe":
        text += other_regimes_section(results.parent)
    text = render(rows, ablation_rows, names, wall, scale, command, plot_path.name, time.perf_counter() - started,
                  data, proteins, report, regime=regime, distill_seeds=distill_seeds,
                  given_teacher=str(args.teacher) if args.teacher else None) + text
    results.write_text(text)
    summary = {**extra_summary, "regime": regime, "scale": scale_name, "command": command,
               "date": date.today().isoformat(), "machine": machine(), "page": results.name,
               "settings": dataclasses.asdict(scale),
               "frontier_axis": frontier_axis(report.frontiers[0]) if report.frontiers else None,
               "target_entropy": report.target_entropy,
               "rows": regime_rows(regime, rows, names, report, distill_seeds),
               "conditional_rows": regime_rows(regime, conditional, names, report, distill_seeds),
               "wall_clock_s": wall}
    write_results_json(out / "results.json", results.with_name("results.json"), regime, summary, full)
    print(text)
    return 0


def load_json(path: Path) -> dict:
    """A JSON object from ``path``; {} when it is missing, unreadable or not an object."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def write_results_json(run_json: Path, page_json: Path, regime: str, summary: dict, full: dict) -> None:
    """The whole report into OUT/results.json (run_json) and the regime's rows into page_json's ``"regimes"``, both
    keeping the other regimes already there (with --smoke both are OUT/results.json for the bpe regime)."""
    kept = load_json(run_json).get("regimes", {})
    run_json.write_text(json.dumps({**full, **({"regimes": kept} if kept else {})}, indent=2, default=str))
    page = load_json(page_json)
    page["regimes"] = {**page.get("regimes", {}), regime: summary}
    page_json.parent.mkdir(parents=True, exist_ok=True)
    page_json.write_text(json.dumps(page, indent=2, default=str))


ROW_METRICS = ("gen_ppl", "entropy", "mauve", *PPL_METRICS[1:], *QUALITY_METRICS, *MARKOV_METRICS)
"""Every per-row metric a table or results.json shows (means over seeds)."""


def _spread_over_students(values: list[float], seeds: list[int]) -> dict:
    mean, std = mean_std(values)
    return {"mean": mean, "std": std, "n_seeds": len(values), "distill_seeds": list(seeds),
            "method": f"std over the students of distillation seeds {', '.join(map(str, seeds))}, each its mean over "
                      "the sampling seeds"}


def mean_over_students(per_student: list[list[EvalRow]], seeds: list[int]) -> list[EvalRow]:
    """The rows of the students distilled with ``seeds`` (the same evaluation of each, so the same rows in the same
    order) as one row each: every metric (:data:`ROW_METRICS`, under every evaluator) the mean ± std over the
    students of each student's own value (its mean over the sampling seeds); the pooled gen-PPL object covers every
    student's samples; ``per_seed`` holds every student's sampling seeds, marked with ``distill_seed``."""
    out = []
    for group in zip(*per_student):
        base = group[0]
        keys = {(r.sampler, r.nfe, r.temperature, r.prefix_tokens) for r in group}
        assert len(keys) == 1, f"the students' evaluations differ: {keys}"
        spread = {}
        for metric in ROW_METRICS:
            values = [r.value(metric) for r in group]
            if all(v is not None for v in values):
                spread[metric] = _spread_over_students(values, seeds)
        evaluators = {}
        for name in base.evaluators:
            parts = [r.evaluators.get(name, {}) for r in group]
            ppl = [p["gen_ppl"] for p in parts if p.get("gen_ppl") is not None]
            evaluators[name] = {
                **base.evaluators[name], "gen_ppl": Perplexity.pooled(ppl) if len(ppl) == len(group) else None,
                "spread": {m: _spread_over_students([r.value(m, evaluator=name) for r in group], seeds)
                           for m in PPL_METRICS if all(r.value(m, evaluator=name) is not None for r in group)}}
        markov = None
        if all(r.markov for r in group):
            markov = {**{m: spread.get(m, {}).get("mean") for m in MARKOV_METRICS},
                      "chain_entropy_rate": base.markov["chain_entropy_rate"],
                      "transitions": float(sum(r.markov["transitions"] for r in group))}
        pooled = [r.gen_ppl for r in group if r.gen_ppl is not None]
        out.append(dataclasses.replace(
            base, model=re.sub(r"-s\d+$", "", base.model), spread=spread, markov=markov, evaluators=evaluators,
            gen_ppl=Perplexity.pooled(pooled) if len(pooled) == len(group) else None,
            entropy=spread.get("entropy", {}).get("mean", base.entropy),
            mauve=spread.get("mauve", {}).get("mean"), sample_entropy=[e for r in group for e in r.sample_entropy],
            per_seed=[{**p, "distill_seed": s} for s, r in zip(seeds, group) for p in r.per_seed],
            nfe_per_batch=[n for r in group for n in r.nfe_per_batch],
            batch_sizes=[n for r in group for n in r.batch_sizes],
            latencies_s=[t for r in group for t in r.latencies_s],
            timing=f"{base.timing} (every student's batches)"))
    return out


def regime_rows(regime: str, rows: list[EvalRow], names: dict[str, str], report: EvalReport,
                distill_seeds: list[int]) -> list[dict]:
    """The rows of docs/results.json's ``regimes``: regime, model, sampler, NFE, temperature, sampling seeds (and the
    distillation seeds of student rows), every metric's mean and std (``_interval``: the bootstrap 95% interval of a
    single seed), the entropy, speed and the values at the matched entropy."""
    out = []
    for r in rows:
        name = names.get(r.source, "data" if r.kind == "data" else r.model)
        entry = {"regime": regime, "model": name, "kind": r.kind, "sampler": r.sampler, "nfe": r.nfe,
                 "temperature": r.temperature, "prefix_tokens": r.prefix_tokens, "num_samples": r.num_samples,
                 "seeds": r.seeds, "distill_seeds": list(distill_seeds) if name == "student" else None,
                 "entropy": r.value("entropy")}
        for metric in ROW_METRICS:
            value = r.value(metric)
            if value is None:
                continue
            spread = r.spread.get(metric, {})
            entry[f"{metric}_mean"], entry[f"{metric}_std"] = value, spread.get("std")
            if spread.get("low") is not None:
                entry[f"{metric}_interval"] = [spread["low"], spread["high"]]
        if r.markov:
            entry["chain_entropy_rate"] = r.markov["chain_entropy_rate"]
        frontier = frontier_of(report, r) if r.prefix_tokens is None else None
        if frontier is not None:
            entry["matched"] = {k: frontier.get(k) for k in ("axis", "target_entropy", "bracket", "gen_ppl",
                                                               "invalid_rate", "nll_per_transition") if k in frontier}
        entry.update(nfe_made=r.nfe_made, latency_per_sample_s=r.latency_per_sample_s, tokens_per_s=r.tokens_per_s)
        out.append(entry)
    return out


def other_regimes_section(page_dir: Path) -> str:
    """Links from docs/results.md to the pages of the other regimes (said plainly where one was not generated)."""
    def link(regime: str) -> str:
        page = f"results-{regime}.md"
        return f"[{regime}]({page})" if (page_dir / page).exists() else \
            f"{regime} (no {page} yet when this page was written)"
    return "\n".join([
        "", "## Other regimes", "",
        "The same pipeline on other corpora and tokenizers (`--regime`); every invocation also stores its rows in "
        "results.json under `regimes`:", "",
        f"- {link('markov')}: the synthetic Markov language of `--data markov` (byte tokenizer), scored "
        "exactly against the chain (invalid-transition rate, NLL per transition, H(X'|X)); "
        "`python benchmarks/reproduce.py --regime markov`.",
        f"- {link('bytes')}: the embedded Shakespeare as UTF-8 bytes, gen-PPL under an AR model trained on "
        "the same bytes; `python benchmarks/reproduce.py --regime bytes`.",
        f"- {link('bytes-256')}: the bytes regime on 256-byte rows instead of 64 (its teacher and students join "
        "the bytes page's scaling plot); `python benchmarks/reproduce.py --regime bytes-256`.", ""])


def combined_report(reports: list[EvalReport], args, evaluator: str | None, scale: Scale | None = None
                    ) -> EvalReport:
    """One report over every evaluation: the target entropy of the data row (on the scale's frontier axis: the
    sample entropy, or H(X'|X) of the Markov regime), the frontiers over all rows (the temperature 1 rows of one
    evaluation and the rest of the sweep of another make one curve)."""
    rows = [r for rep in reports for r in rep.rows]
    axis = "conditional_entropy" if scale is not None and scale.frontier_entropy == "conditional" else "entropy"
    data = next((r for r in rows if r.kind == "data"), None)
    target = None
    if data is not None and data.value(axis) is not None:
        what = "entropy" if axis == "entropy" else "H(X'|X)"
        target = {"value": data.value(axis), "source": f"the {what} of the {data.model} row"}
    elif axis == "conditional_entropy" and chain_rates(rows):
        target = {"value": chain_rates(rows)[0], "source": "the Markov chain's entropy rate"}
    meta = next((rep.meta for rep in reports if rep.meta.get("heldout")), reports[0].meta)
    meta = {**meta, "scale": args.scale, "smoke": args.smoke, "regime": getattr(args, "regime", "bpe"),
            "evaluations": [rep.meta.get("config") for rep in reports]}
    frontiers = compute_frontiers(rows, None if target is None else target["value"], axis=axis)
    return EvalReport(rows=rows, meta=meta, target_entropy=target if frontiers else None, frontiers=frontiers)


def render(rows, ablation_rows, names, wall, scale, command, plot_name, seconds, data, proteins=None,
           report=None, regime: str = "bpe", distill_seeds: list[int] | None = None,
           given_teacher: str | None = None) -> str:
    report = report or EvalReport(rows=rows, meta={})
    rows_all, rows = rows, [r for r in rows if r.temperature in (1.0, None)]
    student_rows = [r for r in rows if names.get(r.source) == "student"]
    teacher_rows = {r.nfe: r for r in rows if names.get(r.source) == "teacher"}
    markov = any(r.markov for r in rows_all)
    distill_seeds = distill_seeds or []
    corpus = f"corpus `{Path(data).name if Path(data).exists() else data}`"
    if scale.tokenizer != "auto" or markov:
        corpus += f" ({'byte' if markov and scale.tokenizer == 'auto' else scale.tokenizer} tokenizer)"
    if markov:
        scored = (f"samples scored exactly against the Markov chain (entropy rate "
                  f"{' / '.join(f'{x:.4f}' for x in chain_rates(rows_all))} nats), no AR evaluator")
        model = f"{scale.preset} DiT" + (f" ({_model_overrides(scale)})" if _model_overrides(scale) else "")
        stages = f"teacher {scale.teacher_steps} steps"
    else:
        scored = f"gen-PPL under {scale.evaluator or 'the AR model trained here on the same corpus'}"
        model = f"{scale.preset} DiT/GPT" + (f" ({_model_overrides(scale)})" if regime != "bpe" and
                                            _model_overrides(scale) else "")
        stages = f"teacher {scale.teacher_steps} steps, AR {scale.ar_steps} steps"
    if given_teacher:  # trained elsewhere: its config.json, not this scale, says how
        stages = stages.replace(f"teacher {scale.teacher_steps} steps", f"teacher given (`{given_teacher}`, trained "
                                "as its config.json says)")
    seeds_text = "" if len(distill_seeds) < 2 else \
        f" per student, one student per distillation seed ({', '.join(map(str, distill_seeds))})"
    title = "# Reproduced results" + ("" if regime == "bpe" else f": the {regime} regime")
    figure = ("invalid-transition rate and entropy against NFE at T = 1; the invalid rate against H(X'|X) over the "
              "temperature sweeps" if markov else
              "gen-PPL and entropy against NFE at T = 1; gen-PPL against entropy over the temperature sweeps")
    lines = [
        title, "",
        f"Command: `{command}` — {date.today().isoformat()}; this invocation took {seconds / 60:.1f} min (trained "
        "models and evaluations saved by an earlier invocation are reused; the training times are below).  ",
        f"Machine: {machine()}.  ",
        f"Scale: {model}, sequence length {scale.seq_len}, {corpus}, {stages}, DiDi-Instruct "
        f"{scale.distill_iterations} iterations{seeds_text} ({json.dumps(scale.distill)}); {scored}.", "",
        "## Generation quality and speed", "",
        results_table(rows, names, report), "",
        *_table_notes(rows, names, scale, report, distill_seeds), "",
        f"![{figure}]({plot_name})", "",
    ]
    if report.frontiers:
        axis = frontier_axis(report.frontiers[0])
        what = "log gen-PPL linearly in entropy" if not markov else \
            f"the invalid rate (and {'log gen-PPL, ' if any(f.get('gen_ppl') for f in report.frontiers) else ''}" \
            f"NLL/transition) linearly in {'entropy' if axis == 'entropy' else COND_ENTROPY}"
        swept = {tuple(r.seeds or ()) for r in rows_all if r.temperature not in (1.0, None)}
        seeds = (f"with sampling seeds {', '.join(map(str, next(iter(swept))))} (each cell: the mean over them)"
                 if len(swept) == 1 else "(each cell: the mean over its row's sampling seeds, results.json)")
        lines += ["## Temperature sweeps", "",
                  f"Every model x NFE sampled at each temperature {seeds}; the matched value interpolates {what} "
                  "between the two "
                  "temperatures that bracket the target entropy" + (f" ({report.target_entropy['value']:.3f} nats, "
                                                                    f"{report.target_entropy['source']})"
                                                                    if report.target_entropy else "") +
                  "; 'not reached': no two temperatures bracket it, nothing is extrapolated.", "",
                  sweep_table(rows_all, names, report), ""]
    lines += training_cost_section(wall)
    if ablation_rows:
        title, plan = ablation_plan(regime)
        lines += ["", *ablation_section(ablation_rows, teacher_rows, rows, names, scale, report, title,
                                        distill_seeds, markov, cumulative=plan is ABLATION)]
    if student_rows and teacher_rows:
        reading = _markov_reading if markov else _reading
        lines += ["", "## Reading", "", reading(student_rows, teacher_rows, rows, names, report)]
    if proteins is not None:
        lines += ["", "## Proteins", "", "From the separate benchmark `python benchmarks/proteins.py` (teacher vs "
                  "DiDi-Instruct student at 8/16/32 NFE on the built-in UniProt corpus); its command lines, "
                  "settings and reading are in [results_proteins.md](results_proteins.md).", "", proteins]
    return "\n".join(lines) + "\n"


def _model_overrides(scale: Scale) -> str:
    """The model sizes a scale sets beyond its preset (e.g. ``hidden 128``)."""
    keys = (("hidden_size", "hidden"), ("n_blocks", "blocks"), ("n_heads", "heads"))
    return ", ".join(f"{label} {scale.train_extra[k]}" for k, label in keys if k in scale.train_extra)


def ablation_section(ablation_rows, teacher_rows, rows, names, scale, report, title, distill_seeds, markov, *,
                     cumulative: bool) -> list[str]:
    """The ablation table: per row and NFE (ancestral sampler, T = 1) the metric's mean ± std over the distillation
    seeds, the entropy it is read at, and where it lies against the teacher's temperature curve at that entropy
    (:func:`curve_gap`). A cumulative ablation (bpe) ends with the full student sampled with RGAS."""
    metric, name, spec, k = (("invalid_rate", "invalid %", ".2f", 100.0) if markov else
                             ("gen_ppl", "gen-PPL", ".1f", 1.0))
    entropy, axis = (COND_ENTROPY, "conditional_entropy") if markov else ("entropy", "entropy")
    seeds = ", ".join(map(str, distill_seeds)) or "one"
    how = ("Each row adds one technique to the row above (paper notes §6.3)" if cumulative else
           "Each row puts one group of the setting's choices back to the published behaviour, or (\"Alternative\") "
           "switches a choice the setting keeps at the published behaviour to its alternative, all else unchanged "
           "(docs/method.md, issue 14)")
    lines = [f"## {title} ({name} by NFE, ancestral sampler, T = 1)", "",
             f"{how}; every row is distilled with each distillation seed ({seeds}), the same iterations, and reads "
             f"mean ± std over those students, each its mean over sampling seeds {', '.join(map(str, scale.seeds))}. "
             f"\"vs curve\": the student minus the teacher's temperature curve at the same NFE, read at the row's own "
             f"{entropy} (negative: below the curve, better than a cooled teacher); within 3× the spread (the row's "
             "std and the curve's, in quadrature) it is no difference (≈)." + (
                 " The last row samples the full student with RGAS." if cumulative else ""), "",
             "| configuration | " + " | ".join(f"{name} @ {n} | {entropy} @ {n} | vs curve @ {n}"
                                             for n in scale.ablation_nfe) + " |",
             "|---|" + "---:|---:|---:|" * len(scale.ablation_nfe)]
    by_run: dict[str, dict[int, EvalRow]] = {"Teacher, no distillation (reference)": teacher_rows}
    for r in ablation_rows:
        by_run.setdefault(r.model, {})[r.nfe] = r
    if cumulative:
        by_run["+ Guided inference (RGAS)"] = {r.nfe: r for r in rows if names.get(r.source) == "student"
                                               and r.sampler == "rgas"}
    for label, cells in by_run.items():
        parts = []
        for n in scale.ablation_nfe:
            row, teacher = cells.get(n), teacher_rows.get(n)
            gap = None if row is None or teacher is None or cells is teacher_rows else curve_gap(
                row, teacher, report, metric)
            if gap is None:
                vs = "—"
            else:
                diff, spread = gap
                vs = f"{'≈ ' if abs(diff) <= 3 * spread else ''}{format(k * diff, '+' + spec)}"
            parts.append(f"{_spread_cell(row, metric, spec, k)} | {_spread_cell(row, axis, '.3f')} | {vs}")
        lines.append(f"| {label} | " + " | ".join(parts) + " |")
    return lines


def _table_notes(rows: list[EvalRow], names: dict[str, str], scale: Scale, report: EvalReport,
                 distill_seeds: list[int] | None = None) -> list[str]:
    """What every column of the results table measures, and the sample counts of every row."""
    meta = report.meta
    seeds = ", ".join(map(str, scale.seeds))
    top = max((r for r in rows if names.get(r.source) == "teacher"), key=lambda r: r.nfe or 0, default=None)
    if any(r.markov for r in rows):
        rates = " / ".join(f"{x:.4f}" for x in chain_rates(rows))
        notes = [
            f"- invalid %, NLL/transition, {COND_ENTROPY} and entropy (T = 1, no truncation): mean ± standard "
            f"deviation over seeds {seeds}, {scale.num_samples} samples per seed; rows with one seed show a bootstrap "
            "95% interval over samples in brackets (none for H(X'|X): a plug-in entropy is biased under "
            "resampling). They are exact: the letter-to-letter transitions of the decoded samples (end-of-text and "
            "other non-letters break a sample into runs) under the chain of markov.json. invalid %: transitions "
            "of probability 0; NLL/transition: mean -log T(a, b) over the valid ones (nats); H(X'|X): the empirical "
            f"conditional entropy of a seed's pooled transition counts (nats). The chain's entropy rate is {rates} "
            "nats; entropy: mean unigram entropy (nats) of each sample's token ids.",
        ]
    else:
        notes = [
            f"- gen-PPL and entropy (T = 1, no truncation): mean ± standard deviation over seeds {seeds}, "
            f"{scale.num_samples} samples per seed; rows with one seed show a bootstrap 95% interval over samples in "
            "brackets. entropy: mean unigram entropy (nats) of each sample's token ids.",
        ]
    if distill_seeds and len(distill_seeds) > 1:
        notes.append(f"- student rows: the mean ± standard deviation over {len(distill_seeds)} students, distilled "
                     f"from the same teacher with seeds {', '.join(map(str, distill_seeds))}, of each student's own "
                     "value (its mean over the sampling seeds, or its single seed's value); speed is that of the "
                     "first student.")
    if top is not None and top.seeds and len(top.seeds) < len(scale.seeds):
        why = f"one batch of {max(top.batch_sizes)} takes {top.latency_s:.3g} s here" if top.latency_s else "CPU time"
        notes.append(f"- teacher @ {top.nfe} NFE: {top.num_samples} samples, seed {top.seeds[0]} only, T = 1 only "
                     f"({why}); it is timed at the same batch size as every other row"
                     + (", on that one batch (no warm-up, no further batches)." if scale.top_nfe_one_batch else "."))
    rgas = [r for r in rows if r.sampler == "rgas"]
    if rgas:
        notes.append(f"- student (rgas): {rgas[0].num_samples} samples, seed {rgas[0].seeds[0] if rgas[0].seeds else 0}"
                     " only, T = 1 only (RGAS also runs the discriminator).")
    data = next((r for r in rows if r.kind == "data"), None)
    if data is not None:
        axis = frontier_axis(report.frontiers[0]) if report.frontiers else "entropy"
        notes.append(f"- data: {data.source}, decoded and scored like samples (what a perfect model would reach); "
                     f"its {'entropy' if axis == 'entropy' else COND_ENTROPY} is the target of the matched-entropy "
                     "column.")
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
                                 _cell(r.nfe_made, ".0f"), _spread_cell(r, "gen_ppl", ".1f"),
                                 _spread_cell(r, "entropy", ".3f"), _cell(r.latency_s, ".3f") + " |"]))
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


def _against_curve(student: EvalRow, teacher: EvalRow, report: EvalReport, metric: str, percent: bool = False
                   ) -> str:
    """Where a student lies against the teacher's temperature curve at the same NFE, read at the student's *own*
    entropy (the frontiers' axis): a gain that cooling the teacher would also give is no gain (issue 14). The curve
    is interpolated between its two bracketing temperatures (log scale for gen-PPL); its spread is the larger of the
    two bracketing rows' (one standard deviation), added in quadrature to the student's spread over seeds."""
    curve = frontier_of(report, teacher)
    if not curve or student.value(metric) is None:
        return ""
    axis = frontier_axis(curve)
    label = COND_ENTROPY if axis == "conditional_entropy" else "entropy"
    own, xs = student.value(axis), [p[axis] for p in curve["points"]]
    gap = curve_gap(student, teacher, report, metric)
    if gap is None:
        return (f"; its own {label} {own:.3f} lies outside the teacher's @ {teacher.nfe} temperature curve "
                f"({min(xs):.3f}-{max(xs):.3f}): not compared")
    diff, spread = gap
    value = student.value(metric) - diff
    k, unit, spec = (100, " points", ".2f") if percent else (1, "", ".1f")
    head = (f"; at its own {label} {own:.3f} the teacher's @ {teacher.nfe} temperature curve reads "
            f"{format(k * value, spec)}: the student is ")
    if abs(diff) <= 3 * spread:
        return head + (f"no different from it ({format(k * abs(diff), spec)}{unit} apart, within 3× the spread "
                       f"{format(k * spread, spec)})")
    return head + (f"{format(k * abs(diff), spec)}{unit} {'below' if diff < 0 else 'above'} it (spread "
                   f"{format(k * spread, spec)})")


def curve_gap(student: EvalRow, teacher: EvalRow, report: EvalReport, metric: str) -> tuple[float, float] | None:
    """The student's ``metric`` minus the teacher's temperature curve at the same NFE, read at the student's own
    entropy, and the spread of that difference (one std: the student's, and the larger of the two bracketing curve
    rows', in quadrature); None without a curve or outside its entropy range. The curve is interpolated between its
    two bracketing temperatures (log scale for gen-PPL)."""
    curve = frontier_of(report, teacher)
    if not curve or student.value(metric) is None:
        return None
    axis, points = frontier_axis(curve), curve["points"]
    at = interpolate_at([p[axis] for p in points], [p[metric] for p in points], student.value(axis),
                        log_y=metric == "gen_ppl")
    if at is None:
        return None
    value, i = at
    bracket = {points[i]["temperature"], points[i + 1]["temperature"]}
    curve_rows = [r for r in report.rows if curve_key(r) == curve_key(teacher) and r.temperature in bracket]
    spread = math.hypot(_sigma(student, metric), max((_sigma(r, metric) for r in curve_rows), default=0.0))
    return student.value(metric) - value, spread


def _markov_reading(student_rows, teacher_rows, rows, names, report=None) -> str:
    """The Markov regime's reading: one factual sentence per student budget, its invalid rate against the teacher
    at the same NFE (within 3x the spread: no difference), at the matched H(X'|X), against the teacher's
    temperature curve at its own H(X'|X), against the teacher at max NFE (the share of the gap closed), and its
    NLL/transition and H(X'|X) against the chain's rate and the data."""
    report = report or EvalReport(rows=rows, meta={})
    top = teacher_rows[max(teacher_rows)]
    data = next((r for r in rows if r.kind == "data"), None)
    out = []
    for r in student_rows:
        teacher = teacher_rows.get(r.nfe)
        if r.value("invalid_rate") is None or teacher is None or teacher.value("invalid_rate") is None:
            continue
        mine, same = r.value("invalid_rate"), teacher.value("invalid_rate")
        verdict = _verdict(r, teacher, "invalid_rate")
        text = (f"- student ({r.sampler}) @ {r.nfe}: invalid {100 * mine:.2f} % {verdict} the teacher @ {r.nfe} "
                f"({100 * same:.2f} %)")
        matched, matched_teacher = frontier_of(report, r), frontier_of(report, teacher)
        if matched and matched_teacher and matched.get("bracket") and matched_teacher.get("bracket"):
            text += (f"; at {frontier_axis(matched).replace('conditional_entropy', COND_ENTROPY)} "
                     f"{matched['target_entropy']:.3f}: {100 * matched['invalid_rate']:.2f} % vs "
                     f"{100 * matched_teacher['invalid_rate']:.2f} %")
        text += _against_curve(r, teacher, report, "invalid_rate", percent=True)
        if top.value("invalid_rate") is not None:
            text += f"; teacher @ {top.nfe}: {100 * top.value('invalid_rate'):.2f} %"
            if top is not teacher and same > top.value("invalid_rate"):
                text += f" (the student closes {100 * (same - mine) / (same - top.value('invalid_rate')):.1f} % of " \
                        f"the gap between the teacher @ {r.nfe} and @ {top.nfe})"
        text += (f"; NLL/transition {r.value('nll_per_transition'):.3f} vs teacher "
                 f"{teacher.value('nll_per_transition'):.3f} (chain rate {r.markov['chain_entropy_rate']:.3f})")
        text += (f"; {COND_ENTROPY} {r.value('conditional_entropy'):.3f} vs teacher "
                 f"{teacher.value('conditional_entropy'):.3f}" +
                 (f", data {data.value('conditional_entropy'):.3f}" if data is not None and
                  data.value("conditional_entropy") is not None else ""))
        out.append(text + ".")
    return "\n".join(out)


def _sigma(row: EvalRow, metric: str) -> float:
    """The spread of a row's value as one standard deviation: its std over seeds, else its bootstrap 95% interval's
    half-width / 1.96, else 0."""
    spread = row.spread.get(metric, {})
    if spread.get("std") is not None:
        return spread["std"]
    return (spread["high"] - spread["low"]) / (2 * 1.96) if spread.get("low") is not None else 0.0


def _verdict(student: EvalRow, teacher: EvalRow, metric: str) -> str:
    """How a student's value of a lower-is-better ``metric`` compares with the teacher's. A difference within 3x its
    spread (the two rows' standard deviations added in quadrature) is no difference."""
    mine, same = student.value(metric), teacher.value(metric)
    spread = math.hypot(_sigma(student, metric), _sigma(teacher, metric))
    if abs(mine - same) <= 3 * spread:
        return "is no different (within 3× the spread) from"
    return "beats" if mine < same else "trails"


def _reading(student_rows, teacher_rows, rows, names, report=None) -> str:
    """One factual sentence per student budget: gen-PPL against the teacher at the same NFE (within 3x the spread:
    no difference), at the matched entropy, against the teacher's temperature curve at its own entropy, and against
    the teacher at max NFE; its entropy against the teacher's at the same and at max NFE (issue 14's bytes criterion
    asks for at least 0.97× the latter)."""
    report = report or EvalReport(rows=rows, meta={})
    top = teacher_rows[max(teacher_rows)]
    ar = next((r for r in rows if r.kind == "ar"), None)
    out = []
    for r in student_rows:
        teacher = teacher_rows.get(r.nfe)
        if r.value("gen_ppl") is None or teacher is None or teacher.value("gen_ppl") is None:
            continue
        mine, same = r.value("gen_ppl"), teacher.value("gen_ppl")
        verdict = _verdict(r, teacher, "gen_ppl")
        text = f"- student ({r.sampler}) @ {r.nfe}: gen-PPL {mine:.1f} {verdict} the teacher @ {r.nfe} ({same:.1f})"
        matched, matched_teacher = frontier_of(report, r), frontier_of(report, teacher)
        if matched and matched_teacher and matched["gen_ppl"] and matched_teacher["gen_ppl"]:
            text += (f"; at entropy {matched['target_entropy']:.3f}: {matched['gen_ppl']:.1f} vs "
                     f"{matched_teacher['gen_ppl']:.1f}")
        text += _against_curve(r, teacher, report, "gen_ppl")
        if top.value("gen_ppl") is not None:
            text += f"; teacher @ {top.nfe}: {top.value('gen_ppl'):.1f}"
        if ar is not None and ar.value("gen_ppl") is not None:
            text += f"; AR: {ar.value('gen_ppl'):.1f}"
        if r.sampler == "rgas":
            plain = next((x for x in student_rows if x.sampler != "rgas" and x.nfe == r.nfe and x.gen_ppl), None)
            if plain is not None:
                text += f"; the same student with the ancestral sampler: {plain.value('gen_ppl'):.1f}"
        text += f"; entropy {r.value('entropy'):.3f} vs teacher {teacher.value('entropy'):.3f}"
        if top is not teacher and top.value("entropy"):
            text += (f" and teacher @ {top.nfe} {top.value('entropy'):.3f} (the student's is "
                     f"{r.value('entropy') / top.value('entropy'):.3f}× that)")
        out.append(text + ".")
    return "\n".join(out)


def cli() -> int:
    """:func:`main` for the command line: a run stopped by SIGINT/SIGTERM (its snapshot written; in a ``--jobs``
    child or in this process) ends with one line and 128 + the signal, and the same command resumes it."""
    try:
        return main()
    except RunInterrupted as exc:
        print(f"reproduce: interrupted at step {exc.step} of {exc.steps} ({signal.Signals(exc.signum).name}): "
              "snapshot written; rerun the "
              "same command to resume", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("reproduce: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(cli())
