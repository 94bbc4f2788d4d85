"""Where does DiDi-Instruct's reward signal come from at small scale? Three diagnostics on a trained teacher.

``probe``: freeze the student at its initialisation (the teacher), draw a fixed pool of its 2-step rollouts
(1 → τ → t0, τ ~ the distillation's Beta) and of real rows, and train only the discriminator on them, as
``didi distill`` would (coupled corruption at τ, smoothed BCE). Every ``--eval-every`` steps it prints, on
held-out pairs, the BCE, the AUC of the sequence reward (real vs student rows) and the spread of the reward over
student rows; at the end, the AUC per τ quarter. ``--disc-positions masked`` is the released trainer,
``all`` scores every position. ``--student-steps K`` (K > 2) fills the pool with the teacher's K-step samples
instead, i.e. what the sampler deployed at K NFE draws: can the discriminator tell *those* from data?

``correlate``: on the teacher's 2-step rollouts at fixed τ, the correlation between a trained discriminator's
reward (a student run's ``discriminator.safetensors``) and the AR evaluator's mean log-likelihood.

``oracle``: run the distillation loop with the discriminator's reward replaced by the AR evaluator's mean
log-likelihood of each student sample (``DiDiInstruct.step(..., reward_fn=...)``): does the policy gradient follow a
reward that is known to be informative?

    python benchmarks/reward_diagnostics.py probe --teacher runs/reproduce/teacher --disc-positions all
    python benchmarks/reward_diagnostics.py probe --teacher runs/reproduce/teacher --disc-positions all \
        --student-steps 16 --steps 600 --eval-every 100
    python benchmarks/reward_diagnostics.py correlate --teacher runs/reproduce/teacher --student STUDENT \
        --evaluator runs/reproduce/ar
    python benchmarks/reward_diagnostics.py oracle --teacher runs/reproduce/teacher --evaluator runs/reproduce/ar
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from didi.data.corpora import BatchSchedule, DataConfig, prepare_data
from didi.data.tokenizer import load_tokenizer
from didi.diffusion.instruct import discriminator_loss, sample_tau, scored_positions, sequence_rewards
from didi.diffusion.process import forward_mask
from didi.models.discriminator import empty_discriminator
from didi.pipelines.ar import ARPipeline
from didi.recipes.didi_instruct import DiDiInstruct, InstructConfig
from didi.recipes.distill import load_teacher
from didi.runtime.checkpoint import load_state_dict_strict, load_tensors, read_run_config
from didi.runtime.randomness import step_generator


def setup(teacher_dir: str, cfg: InstructConfig):
    device = torch.device("cpu")
    teacher_config, teacher = load_teacher(Path(teacher_dir), device)
    tokenizer = load_tokenizer(Path(teacher_dir), teacher_config.tokenizer)
    data = prepare_data(DataConfig(**teacher_config.data), tokenizer=tokenizer, progress=False)
    models = DiDiInstruct.from_teacher(teacher, cfg, teacher_config.diffusion.mask_index,
                                       teacher_config.diffusion.eps, device)
    return teacher_config, data, models


def parse_options(pairs: list[str]) -> dict:
    """``KEY=VALUE`` pairs (``--option sigma_mode=zero``) as InstructConfig overrides, typed like the field."""
    out = {}
    for pair in pairs:
        key, _, value = pair.partition("=")
        kind = type(getattr(InstructConfig(), key))
        out[key] = value.lower() in ("1", "true", "yes") if kind is bool else kind(value)
    return out


def auc(real: torch.Tensor, fake: torch.Tensor) -> float:
    """P(reward of a real row > reward of a student row)."""
    return float((real[:, None] > fake[None, :]).float().mean())


def probe(args: argparse.Namespace) -> None:
    cfg = InstructConfig(teacher=args.teacher, out="-", disc_lr=args.disc_lr, disc_blocks=args.disc_blocks,
                         disc_positions=args.disc_positions, student_steps=args.student_steps, progress=False,
                         **parse_options(args.option))
    teacher_config, data, models = setup(args.teacher, cfg)
    mask, schedule, seq_len = models.mask_index, models.schedule, teacher_config.data["seq_len"]
    g = torch.Generator().manual_seed(args.seed)
    n = args.pool + args.held_out
    tau, _ = sample_tau(n, generator=g, device=models.device, **cfg.tau_distribution)
    models.student.eval()
    with torch.no_grad():
        fake = torch.cat([models.rollout(len(chunk), seq_len, chunk, g).x_fake for chunk in tau.split(64)])
    real = data.train.batch(torch.randperm(len(data.train), generator=g)[:n])

    def corrupt(x, t):
        return forward_mask(x, schedule.alpha(t.double())[:, None], mask,
                            torch.rand(x.shape, generator=g, dtype=torch.float64))

    def logits(z, t):
        return models.disc_logits(z, schedule.sigma(t.double()).float())

    held = slice(args.pool, n)
    z_real_ev, z_fake_ev = corrupt(real[held], tau[held]), corrupt(fake[held], tau[held])
    pos_real_ev, pos_fake_ev = scored_positions(z_real_ev, z_fake_ev, fake[held], mask, args.disc_positions)

    def evaluate():
        models.discriminator.eval()
        with torch.no_grad():
            lr_, lf_ = logits(z_real_ev, tau[held]), logits(z_fake_ev, tau[held])
            loss = float(discriminator_loss(lr_, pos_real_ev, lf_, pos_fake_ev, 0.0))
            r_real = sequence_rewards(lr_, pos_real_ev, clip=8.0, eps=1e-6)
            r_fake = sequence_rewards(lf_, pos_fake_ev, clip=8.0, eps=1e-6)
        models.discriminator.train()
        return loss, r_real, r_fake

    start = time.time()
    for step in range(1, args.steps + 1):
        j = torch.randint(0, args.pool, (args.batch_size,), generator=g)
        zr, zf = corrupt(real[j], tau[j]), corrupt(fake[j], tau[j])
        pr, pf = scored_positions(zr, zf, fake[j], mask, args.disc_positions)
        loss = discriminator_loss(logits(zr, tau[j]), pr, logits(zf, tau[j]), pf, cfg.label_smoothing)
        models.opt_disc.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for p in models.discriminator.parameters() if p.requires_grad], 1.0)
        models.opt_disc.step()
        if step % args.eval_every == 0 or step == args.steps:
            bce, r_real, r_fake = evaluate()
            print(f"step {step}: held-out BCE {bce:.4f}  AUC {auc(r_real, r_fake):.3f}  "
                  f"student reward std {float(r_fake.std()):.3f}  ({time.time() - start:.0f} s)", flush=True)
    _, r_real, r_fake = evaluate()
    t = tau[held]
    for lo, hi in [(0.0, 0.25), (0.25, 0.5), (0.5, 0.75), (0.75, 1.0)]:
        sel = (t >= lo) & (t < hi)
        print(f"τ in [{lo:.2f}, {hi:.2f}): {int(sel.sum())} pairs, AUC {auc(r_real[sel], r_fake[sel]):.3f}, "
              f"student reward std {float(r_fake[sel].std()):.3f}")


def oracle(args: argparse.Namespace) -> None:
    cfg = InstructConfig(teacher=args.teacher, out="-", steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                         disc_lr=1e-3, disc_blocks=2, warmup_steps=20, tau_per="group", rollout_dropout=False,
                         progress=False)
    _, data, models = setup(args.teacher, cfg)
    evaluator = ARPipeline.from_pretrained(args.evaluator, device="cpu")

    def log_likelihood(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return -evaluator.token_nll(x)[0].mean(-1)

    batches = BatchSchedule(len(data.train), cfg.batch_size, seed=args.seed)
    for step in range(args.steps):
        metrics = models.step(data.train.batch(batches.indices(step)), step, step_generator(args.seed, step, 2),
                              reward_fn=log_likelihood)
        if step % args.eval_every == 0 or step == args.steps - 1:
            print(f"step {step}: AR log-likelihood per token {metrics['reward']:.3f}  "
                  f"student x̂ entropy {metrics['entropy']:.3f}", flush=True)


def correlate(args: argparse.Namespace) -> None:
    """Does a trained discriminator's reward rank the teacher's 2-step rollouts like the AR evaluator does?"""
    cfg = InstructConfig(teacher=args.teacher, out="-", progress=False)
    teacher_config, _, models = setup(args.teacher, cfg)
    student = Path(args.student)
    disc = empty_discriminator(teacher_config.model,
                               read_run_config(student).extra["discriminator"]["time_blocks"])
    load_state_dict_strict(disc, load_tensors(student / "discriminator.safetensors"), str(student))
    disc.eval()
    evaluator = ARPipeline.from_pretrained(args.evaluator, device="cpu")
    mask, schedule, seq_len = models.mask_index, models.schedule, teacher_config.data["seq_len"]
    models.student.eval()
    g = torch.Generator().manual_seed(args.seed)
    for tau_value in args.tau:
        tau = torch.full((args.samples,), tau_value, dtype=torch.float64)
        with torch.no_grad():
            x = models.rollout(args.samples, seq_len, tau, g).x_fake
            z = forward_mask(x, schedule.alpha(tau)[:, None], mask,
                             torch.rand(x.shape, generator=g, dtype=torch.float64))
            reward = sequence_rewards(disc(z, schedule.sigma(tau).float()), z == mask, clip=8.0, eps=1e-6)
            log_likelihood = -evaluator.token_nll(x)[0].mean(-1)
        corr = float(torch.corrcoef(torch.stack([reward.double(), log_likelihood.double()]))[0, 1])
        print(f"τ = {tau_value}: corr(discriminator reward, AR log-likelihood) = {corr:.3f} "
              f"over {args.samples} rollouts", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("probe", help="train the discriminator alone on a fixed pool; AUC of its reward")
    p.add_argument("--teacher", required=True)
    p.add_argument("--disc-positions", default="masked", choices=["masked", "all"])
    p.add_argument("--disc-lr", type=float, default=1e-3)
    p.add_argument("--student-steps", type=int, default=2,
                   help="steps of the teacher rollouts in the pool (2: 1 → τ → t0; K > 2: the K-step sampler)")
    p.add_argument("--disc-blocks", type=int, default=2)
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--batch-size", type=int, default=16, help="real and student rows per step")
    p.add_argument("--pool", type=int, default=1024, help="training pairs")
    p.add_argument("--held-out", type=int, default=256, help="evaluation pairs")
    p.add_argument("--eval-every", type=int, default=50)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                   help="any other InstructConfig field, e.g. --option sigma_mode=zero --option disc_window=3")
    p.set_defaults(run=probe)
    o = sub.add_parser("oracle", help="policy gradient with the AR evaluator's log-likelihood as the reward")
    o.add_argument("--teacher", required=True)
    o.add_argument("--evaluator", required=True, help="AR run directory (same tokenizer as the teacher)")
    o.add_argument("--steps", type=int, default=60)
    o.add_argument("--batch-size", type=int, default=4)
    o.add_argument("--lr", type=float, default=1e-4)
    o.add_argument("--eval-every", type=int, default=20)
    o.add_argument("--seed", type=int, default=0)
    o.set_defaults(run=oracle)
    c = sub.add_parser("correlate", help="correlation of a trained discriminator's reward with the AR likelihood")
    c.add_argument("--teacher", required=True)
    c.add_argument("--student", required=True, help="student run directory holding discriminator.safetensors")
    c.add_argument("--evaluator", required=True, help="AR run directory (same tokenizer as the teacher)")
    c.add_argument("--tau", type=float, nargs="+", default=[0.2, 0.5, 0.8])
    c.add_argument("--samples", type=int, default=128)
    c.add_argument("--seed", type=int, default=1)
    c.set_defaults(run=correlate)
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    args.run(args)


if __name__ == "__main__":
    main()
