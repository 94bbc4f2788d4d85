"""``didi quickstart``: the whole pipeline on the embedded Shakespeare corpus, sized for a laptop CPU.

1. train a tiny MDLM teacher;
2. sample it at 1024 and 16 NFE;
3. distill a student with DiDi-Instruct and sample it at 16 NFE;
4. train a small AR model on the same corpus and evaluate everything with it (generative perplexity, entropy,
   speed), printing the table ``didi eval`` prints.

Every stage writes a normal run directory under ``--out`` and is skipped when its directory is already complete,
so an interrupted quickstart resumes where it stopped.
"""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path

from ..config import helpfield
from ..data.corpora import DataConfig
from ..errors import require
from ..runtime.checkpoint import completed_steps, latest_snapshot

TINY_DISTILL = dict(batch_size=4, lr=1e-4, disc_lr=1e-3, disc_blocks=2, warmup_steps=20, disc_warmup_steps=50)
"""DiDi-Instruct settings for a tiny teacher distilled for a few hundred iterations on a CPU. The published ones
(student lr 1e-6, discriminator lr 1e-5, 1000 warm-up steps) are for a 169M model over 10k iterations; here the
rates are larger, the warm-ups shorter, and half of the 4 blocks train in the discriminator (with 1 block at
lr 1e-4 the discriminator's loss stays at log 2 and the reward carries no signal)."""

MARKOV_DISTILL = dict(batch_size=4, group_size=4, lr=3e-5, disc_lr=1e-3, disc_blocks=4, warmup_steps=20,
                      tau_per="group", rollout_dropout=False, disc_positions="all", student_steps=8, ema_decay=0.99,
                      disc_normalize=True, disc_window=1, credit="local", credit_window=1, disc_warmup_steps=400,
                      tau_a=1.0, tau_b=20.0, tau_max=0.3, steps=800)
"""DiDi-Instruct settings of the ``markov`` regime (docs/method.md, "The markov regime"): the deployed 8-step
sampler as the rollout, a discriminator that is local in every block (all 4 blocks of the tiny teacher train, each
attending to its neighbours only) with local credit, small corruption times, a long discriminator warm-up.
``steps`` is the number of iterations (``benchmarks/reproduce.py --regime markov``)."""


@dataclass
class QuickstartConfig:
    """Sizes of the quickstart runs (defaults: about 25 minutes on 2 CPU cores)."""

    out: str = helpfield("runs/quickstart", "directory for the teacher, student and evaluator runs")
    data: str = helpfield("shakespeare", "corpus (default: the embedded Gutenberg Shakespeare)")
    seq_len: int = helpfield(128, "sequence length")
    vocab_size: int = helpfield(4096, "BPE vocabulary trained on the corpus")
    teacher_steps: int = helpfield(600, "teacher training steps")
    distill_steps: int = helpfield(300, "DiDi-Instruct iterations")
    ar_steps: int = helpfield(400, "steps of the AR evaluator (0 = skip the evaluation table)")
    num_samples: int = helpfield(2, "samples printed per model")
    eval_samples: int = helpfield(16, "samples per row of the evaluation table")
    seed: int = helpfield(0, "random seed")
    device: str = helpfield("auto", "auto (cuda > mps > cpu), cpu, cuda, ...")

    def __post_init__(self) -> None:
        require(self.teacher_steps >= 1, "teacher_steps", f"must be >= 1 (got {self.teacher_steps})")
        require(self.distill_steps >= 1, "distill_steps", f"must be >= 1 (got {self.distill_steps})")
        require(self.ar_steps >= 0, "ar_steps", f"must be >= 0 (got {self.ar_steps})")
        require(self.num_samples >= 1, "num_samples", f"must be >= 1 (got {self.num_samples})")


def _say(message: str) -> None:
    print(f"\n=== {message}", flush=True)


def _train(kind: str, run_dir: Path, cfg: QuickstartConfig, steps: int) -> None:
    from .train import TrainConfig, resume_config, train

    if completed_steps(run_dir) >= steps:
        print(f"[didi] {run_dir} is complete, reusing it")
        return
    if latest_snapshot(run_dir) is not None:
        train(resume_config(run_dir, steps=steps), DataConfig(), kind=kind, resume=True)
        return
    train_cfg = TrainConfig(out=str(run_dir), preset="tiny", steps=steps, lr=1e-3, warmup_steps=50,
                            global_batch_size=32, eval_every=max(1, steps // 3), save_every=max(1, steps // 3),
                            seed=cfg.seed, device=cfg.device)
    data_cfg = DataConfig(data=cfg.data, seq_len=cfg.seq_len, vocab_size=cfg.vocab_size, seed=cfg.seed)
    train(train_cfg, data_cfg, kind=kind)


def _distill(teacher: Path, student: Path, cfg: QuickstartConfig) -> None:
    from .distill import DistillConfig, distill

    if completed_steps(student) >= cfg.distill_steps:
        print(f"[didi] {student} is complete, reusing it")
        return
    resume = latest_snapshot(student) is not None
    distill_cfg = DistillConfig(teacher=str(teacher), out=str(student), steps=cfg.distill_steps,
                                save_every=max(1, cfg.distill_steps // 3), seed=cfg.seed, device=cfg.device,
                                **TINY_DISTILL)
    distill(distill_cfg, resume=resume)


def _show(label: str, run_dir: Path, nfe: int, cfg: QuickstartConfig) -> None:
    from ..pipeline import load

    model = load(run_dir, device=cfg.device)
    [result] = model.sample(cfg.num_samples, nfe, seed=cfg.seed)
    _say(f"{label} @ {nfe} NFE: {result.nfe} network calls, {result.seconds:.2f} s for {cfg.num_samples} samples")
    for i, text in enumerate(model.decode(result.tokens)):
        print(f"--- sample {i} ---\n{text.strip()}")


def quickstart(cfg: QuickstartConfig) -> Path:
    out = Path(cfg.out)
    teacher, student, evaluator = out / "teacher", out / "student", out / "ar"
    start = time.perf_counter()

    _say(f"1/4 training a tiny MDLM teacher on {cfg.data} ({cfg.teacher_steps} steps) -> {teacher}")
    _train("mdlm", teacher, cfg, cfg.teacher_steps)
    _show("teacher", teacher, 1024, cfg)
    _show("teacher", teacher, 16, cfg)

    _say(f"2/4 distilling a few-step student with DiDi-Instruct ({cfg.distill_steps} iterations) -> {student}")
    _distill(teacher, student, cfg)
    _show("student", student, 16, cfg)

    if cfg.ar_steps > 0:
        from .evaluate.report import format_table, plot_report, write_report
        from .evaluate.runner import EvalConfig, evaluate

        _say(f"3/4 training an AR evaluator on the same corpus ({cfg.ar_steps} steps) -> {evaluator}")
        _train("ar", evaluator, cfg, cfg.ar_steps)
        _say("4/4 evaluating: generative perplexity under the AR model, entropy, speed")
        # one timed batch per row, no separate warm-up: each model's likelihood pass runs first and warms it up
        report = evaluate(EvalConfig(models=[str(teacher), str(student), str(evaluator)], nfe=[16, 1024],
                                     evaluator=str(evaluator), num_samples=cfg.eval_samples, seed=cfg.seed,
                                     eval_blocks=32, warmup=0, repeats=1, device=cfg.device))
        print(format_table(report))
        write_report(report, out / "eval.json")
        plot_report(report, out / "eval.png")
        print(f"[didi] report: {out / 'eval.json'}, plot: {out / 'eval.png'}")
    print(f"\n[didi] quickstart finished in {(time.perf_counter() - start) / 60:.1f} min; runs in {out}",
          file=sys.stderr)
    return out

