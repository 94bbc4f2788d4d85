"""``didi quickstart``: the whole pipeline on the embedded Shakespeare corpus, sized for a laptop CPU.

1. train a tiny MDLM teacher (the default regime ``bytes``: on UTF-8 bytes);
2. sample it at many and at few NFE (bytes and markov: 128 and 8; ``--regime bpe``: 1024 and 16);
3. distill a student with DiDi-Instruct and sample it at the few NFE;
4. train a small AR model on the same corpus (bytes, bpe) and evaluate everything, printing the table
   ``didi eval`` prints: generative perplexity under the AR model, entropy, speed; in the markov regime the exact
   metrics against the chain (invalid transitions, NLL per transition, H(X'|X)) instead of an AR model.

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
from ..runtime.checkpoint import completed_steps, is_run_dir

TINY_DISTILL = dict(batch_size=4, lr=1e-4, disc_lr=1e-3, disc_blocks=2, warmup_steps=20, disc_warmup_steps=50)
"""DiDi-Instruct settings for a tiny teacher distilled for a few hundred iterations on a CPU. The published ones
(student lr 1e-6, discriminator lr 1e-5, 1000 warm-up steps) are for a 169M model over 10k iterations; here the
rates are larger, the warm-ups shorter, and half of the 4 blocks train in the discriminator (with 1 block at
lr 1e-4 the discriminator's loss stays at log 2 and the reward carries no signal)."""

MARKOV_DISTILL = dict(batch_size=4, group_size=4, lr=3e-5, disc_lr=3e-4, disc_blocks=4, warmup_steps=20,
                      tau_per="group", rollout_dropout=False, disc_positions="all", student_steps=8, ema_decay=0.99,
                      disc_normalize=True, disc_window=1, credit="local", credit_window=1, disc_warmup_steps=400,
                      tau_a=1.0, tau_b=20.0, tau_max=0.3, steps=1200)
"""DiDi-Instruct settings of the ``markov`` regime (docs/method.md, "The markov regime"): the deployed 8-step
sampler as the rollout, a discriminator that is local in every block (all 4 blocks of the tiny teacher train, each
attending to its neighbours only) with local credit, small corruption times, a long discriminator warm-up at
lr 3e-4 (at 1e-3 its warm-up reached a lower token AUC in each of 4 seeds; docs/method.md, 2026-12-04).
``steps`` is the number of iterations (``benchmarks/reproduce.py --regime markov``)."""

BYTES_DISTILL = dict(MARKOV_DISTILL)
"""DiDi-Instruct settings of the ``bytes`` regime: the markov regime's, unchanged (chosen before any bytes run: the
error few-step decoding makes is the same, neighbours revealed in one step and drawn independently, and a local
discriminator with local credit is what made the markov student beat its teacher; docs/method.md)."""


REGIMES = {
    "bpe": dict(data="shakespeare", tokenizer="auto", seq_len=128, teacher_steps=600, distill_steps=300, ar_steps=400,
                eval_samples=16, few_nfe=16, many_nfe=1024, hidden_size=None, distill=TINY_DISTILL),
    "bytes": dict(data="shakespeare", tokenizer="byte", seq_len=64, teacher_steps=3000,
                  distill_steps=BYTES_DISTILL["steps"], ar_steps=1500, eval_samples=128, few_nfe=8, many_nfe=128,
                  hidden_size=128, distill=BYTES_DISTILL),
    "markov": dict(data="markov", tokenizer="auto", seq_len=64, teacher_steps=3000,
                   distill_steps=MARKOV_DISTILL["steps"], ar_steps=0, eval_samples=256, few_nfe=8, many_nfe=128,
                   hidden_size=128, distill=MARKOV_DISTILL),
}
"""Per-regime defaults of :class:`QuickstartConfig`. ``bpe``: the embedded Shakespeare under a BPE, gen-PPL under
an AR evaluator trained here (about 25 min on 2 cores). ``markov``: the synthetic Markov language of
``--data markov`` (byte tokenizer), the teacher and distillation of ``benchmarks/reproduce.py --regime markov``
(one distillation seed), scored exactly against the chain; no AR evaluator (docs/results-markov.md). ``bytes``: the
embedded Shakespeare as UTF-8 bytes, the teacher, AR evaluator and distillation of ``benchmarks/reproduce.py
--regime bytes`` (one distillation seed; docs/results-bytes.md)."""


@dataclass
class QuickstartConfig:
    """Sizes of the quickstart runs (empty fields take the regime's defaults, :data:`REGIMES`)."""

    out: str = helpfield("runs/quickstart", "directory for the teacher, student and evaluator runs (bytes, markov: "
                                            "runs/quickstart-REGIME)")
    regime: str = helpfield("bytes", "bytes: Shakespeare as UTF-8 bytes, where the 8-step student beats its teacher "
                                     "(about 30 min on 2 cores); bpe: Shakespeare under a 4096 BPE, where it does "
                                     "not yet (about 25 min); markov: the synthetic Markov language, where few-step "
                                     "decoding breaks the language countably and the chain scores it exactly",
                            choices=list(REGIMES))
    data: str | None = helpfield(None, "corpus (bpe, bytes: the embedded Gutenberg Shakespeare; markov: markov)")
    seq_len: int | None = helpfield(None, "sequence length (bpe 128, bytes and markov 64)")
    vocab_size: int = helpfield(4096, "BPE vocabulary trained on the corpus (bpe)")
    teacher_steps: int | None = helpfield(None, "teacher training steps (bpe 600, bytes and markov 3000)")
    distill_steps: int | None = helpfield(None, "DiDi-Instruct iterations (bpe 300, bytes and markov 1200)")
    ar_steps: int | None = helpfield(None, "steps of the AR evaluator (bpe 400, bytes 1500, markov 0; 0 = no AR "
                                           "evaluator: bpe and bytes then print no table)")
    num_samples: int = helpfield(2, "samples printed per model")
    eval_samples: int | None = helpfield(None, "samples per row of the evaluation table (bpe 16, bytes 128, "
                                               "markov 256)")
    seed: int = helpfield(0, "random seed")
    device: str = helpfield("auto", "auto (cuda > mps > cpu), cpu, cuda, ...")
    progress: bool = helpfield(True, "progress bars on a terminal (false, or off a terminal: plain lines, e.g. one "
                                     "per 10 training steps)")

    def __post_init__(self) -> None:
        require(self.regime in REGIMES, "regime", f"must be one of {', '.join(REGIMES)} (got {self.regime!r})")
        defaults = REGIMES[self.regime]
        for name in ("data", "seq_len", "teacher_steps", "distill_steps", "ar_steps", "eval_samples"):
            if getattr(self, name) is None:
                setattr(self, name, defaults[name])
        if self.regime != "bpe" and self.out == "runs/quickstart":
            self.out = f"runs/quickstart-{self.regime}"
        require(self.teacher_steps >= 1, "teacher_steps", f"must be >= 1 (got {self.teacher_steps})")
        require(self.distill_steps >= 1, "distill_steps", f"must be >= 1 (got {self.distill_steps})")
        require(self.ar_steps >= 0, "ar_steps", f"must be >= 0 (got {self.ar_steps})")
        require(self.num_samples >= 1, "num_samples", f"must be >= 1 (got {self.num_samples})")
        require(self.eval_samples >= 1, "eval_samples", f"must be >= 1 (got {self.eval_samples})")


def _say(message: str) -> None:
    print(f"\n=== {message}", flush=True)


def _train(kind: str, run_dir: Path, cfg: QuickstartConfig, steps: int) -> None:
    from .train import TrainConfig, resume_config, train

    if completed_steps(run_dir) >= steps:
        print(f"[didi] {run_dir} is complete, reusing it")
        return
    if is_run_dir(run_dir):  # a run folder, even one killed before its first snapshot, resumes
        train(resume_config(run_dir, steps=steps, progress=cfg.progress), DataConfig(), kind=kind, resume=True)
        return
    hidden = REGIMES[cfg.regime]["hidden_size"]
    train_cfg = TrainConfig(out=str(run_dir), preset="tiny", steps=steps, lr=1e-3, warmup_steps=50,
                            global_batch_size=32, eval_every=max(1, steps // 3), save_every=max(1, steps // 3),
                            seed=cfg.seed, device=cfg.device, progress=cfg.progress,
                            **({"hidden_size": hidden} if hidden else {}))
    data_cfg = DataConfig(data=cfg.data, seq_len=cfg.seq_len, vocab_size=cfg.vocab_size, seed=cfg.seed,
                          tokenizer=REGIMES[cfg.regime]["tokenizer"])
    train(train_cfg, data_cfg, kind=kind)


def _distill(teacher: Path, student: Path, cfg: QuickstartConfig) -> None:
    from .didi_instruct import InstructConfig
    from .distill import distill

    if completed_steps(student) >= cfg.distill_steps:
        print(f"[didi] {student} is complete, reusing it")
        return
    resume = is_run_dir(student)
    distill_cfg = InstructConfig(teacher=str(teacher), out=str(student), save_every=max(1, cfg.distill_steps // 3),
                                 seed=cfg.seed, device=cfg.device, progress=cfg.progress,
                                 **{**REGIMES[cfg.regime]["distill"], "steps": cfg.distill_steps})
    distill(distill_cfg, resume=resume)


def _show(label: str, run_dir: Path, nfe: int, cfg: QuickstartConfig) -> None:
    from ..pipelines.load import load

    model = load(run_dir, device=cfg.device)
    [result] = model.sample(cfg.num_samples, nfe, seed=cfg.seed, progress=cfg.progress)
    _say(f"{label} @ {nfe} NFE: {result.nfe} network calls, {result.seconds:.2f} s for {cfg.num_samples} samples")
    for i, text in enumerate(model.decode(result.tokens)):
        print(f"--- sample {i} ---\n{text.strip()}")


def quickstart(cfg: QuickstartConfig) -> Path:
    out = Path(cfg.out)
    teacher, student, evaluator = out / "teacher", out / "student", out / "ar"
    few, many = REGIMES[cfg.regime]["few_nfe"], REGIMES[cfg.regime]["many_nfe"]
    evaluate_with_ar = cfg.ar_steps > 0
    exact = cfg.data == "markov"  # the chain is the evaluator
    stages = 4 if evaluate_with_ar else 3 if exact else 2
    start = time.perf_counter()

    _say(f"1/{stages} training a tiny MDLM teacher on {cfg.data} ({cfg.teacher_steps} steps) -> {teacher}")
    _train("mdlm", teacher, cfg, cfg.teacher_steps)
    _show("teacher", teacher, many, cfg)
    _show("teacher", teacher, few, cfg)

    _say(f"2/{stages} distilling a few-step student with DiDi-Instruct ({cfg.distill_steps} iterations) -> {student}")
    _distill(teacher, student, cfg)
    _show("student", student, few, cfg)

    if evaluate_with_ar or exact:
        _evaluate(teacher, student, evaluator, cfg, stages, evaluate_with_ar, few, many)
    print(f"\n[didi] quickstart finished in {(time.perf_counter() - start) / 60:.1f} min; runs in {out}",
          file=sys.stderr)
    return out


def _evaluate(teacher: Path, student: Path, evaluator: Path, cfg: QuickstartConfig, stages: int,
              evaluate_with_ar: bool, few: int, many: int) -> None:
    from .evaluate.plots import plot_report
    from .evaluate.report import write_report
    from .evaluate.runner import EvalConfig, evaluate
    from .evaluate.tables import format_table

    out = Path(cfg.out)
    if evaluate_with_ar:
        _say(f"3/{stages} training an AR evaluator on the same corpus ({cfg.ar_steps} steps) -> {evaluator}")
        _train("ar", evaluator, cfg, cfg.ar_steps)
        _say(f"4/{stages} evaluating: generative perplexity under the AR model, entropy, speed")
    else:
        _say(f"3/{stages} evaluating against the chain: invalid transitions, NLL per transition, H(X'|X), speed")
    # one timed batch per row, no separate warm-up: each model's likelihood pass runs first and warms it up
    models = [teacher, student, *([evaluator] if evaluate_with_ar else [])]
    report = evaluate(EvalConfig(models=[str(m) for m in models], nfe=[few, many],
                                 evaluator=str(evaluator) if evaluate_with_ar else None,
                                 num_samples=cfg.eval_samples, batch_size=min(cfg.eval_samples, 64), seed=cfg.seed,
                                 eval_blocks=32, warmup=0, repeats=1, device=cfg.device, progress=cfg.progress))
    print(format_table(report))
    write_report(report, out / "eval.json")
    plot_report(report, out / "eval.png")
    print(f"[didi] report: {out / 'eval.json'}, plot: {out / 'eval.png'}")
