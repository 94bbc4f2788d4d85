"""What a distillation costs, in teacher-training steps: FLOPs counted exactly, and wall-clock measured side by side.

"Is distillation a better use of the compute than more pre-training?" needs the exchange rate between one
distillation iteration and one teacher-training step. For a teacher run and distillation settings, this script
measures in one process, on one thread:

* **FLOPs** of one teacher-training step (MDLM NELBO forward and backward on the teacher's global batch) and of one
  iteration of each distillation method (``torch.utils.flop_counter.FlopCounterMode``, which counts matmuls and
  attention exactly; elementwise work is not counted), and of the teacher-pool sampling of a pure-distillation run;
* **wall-clock** of the same: ``--repeats`` timed calls of each, interleaved (teacher step, method A, method B,
  teacher step, ...), so machine load hits them alike; the median of each.

It prints, per method, the teacher-training steps that cost as much as the whole distillation (its iterations,
plus the pool's sampling where there is one): ``teacher_steps_equivalent_flops`` and ``_wall``. The controls of
``benchmarks/reproduce.py --controls`` train a teacher for that many more steps.

    python benchmarks/compute_cost.py --teacher runs/reproduce/bytes/teacher --json cost.json
    python benchmarks/compute_cost.py --regime markov --teacher runs/reproduce/markov/teacher
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from didi.data.corpora import BatchSchedule, DataConfig, prepare_data
from didi.data.tokenizer import load_tokenizer
from didi.diffusion.process import LogLinearSchedule, mdlm_token_losses, sample_times
from didi.models.load import build_network
from didi.recipes.didi_instruct import InstructConfig
from didi.recipes.distill import METHODS, load_teacher
from didi.recipes.quickstart import BYTES_DISTILL, MARKOV_DISTILL, TINY_DISTILL
from didi.recipes.sdtt import SDTTConfig
from didi.runtime.checkpoint import read_run_config
from didi.runtime.randomness import step_generator

SDTT_SETTINGS = dict(method="sdtt", rounds=4, start_nfe=128, batch_size=32, lr=1e-4, warmup_steps=50,
                     lr_schedule="constant", ema_decay=0.99)
"""SDTT at CPU scale (``benchmarks/rivals.py``), chosen before any SDTT run: 128 -> 8 steps in 4 rounds (each
halves the steps), batch 32, AdamW 1e-4 after a 50-step warm-up in every round, an EMA over ~100 updates (the
release's 0.9999 averages over 10k updates per round, more than a CPU round lasts). The round length is set by
``rivals.py`` so that SDTT costs as much compute as the regime's DiDi-Instruct distillation."""

POOL_ENTRY = "pure distillation (teacher pool)"
"""The report's method entry of the pure-distillation control (present unless ``--pool 0``)."""

DISTILL_SETTINGS = {"bytes": BYTES_DISTILL, "markov": MARKOV_DISTILL, "bpe": dict(TINY_DISTILL, steps=300)}
"""The DiDi-Instruct settings of each regime of ``benchmarks/reproduce.py`` (``steps``: its iterations)."""


def flops_of(fn) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


def seconds_of(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def teacher_step(run: Path, device: torch.device):
    """One training step of the teacher's own recipe (a fresh copy of its network, its batch, AdamW)."""
    config = read_run_config(run)
    model = build_network(config.model).to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    batch = int(config.training["global_batch_size"])
    seq_len = int(config.training["seq_len"])
    schedule = LogLinearSchedule(config.diffusion.eps)
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, config.diffusion.mask_index, (batch, seq_len), generator=g)

    def step() -> None:
        t = sample_times(batch, g)
        loss = mdlm_token_losses(model, x, t, torch.rand(batch, seq_len, generator=g), schedule=schedule,
                                 mask_index=config.diffusion.mask_index).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return step, batch * seq_len


def method_step(run: Path, cfg, device: torch.device):
    """One iteration of a distillation method from the teacher in ``run`` (real rows from its corpus)."""
    config, teacher = load_teacher(run, device)
    tokenizer = load_tokenizer(run, config.tokenizer)
    data = prepare_data(DataConfig(**{k: v for k, v in config.data.items() if k in DataConfig.__dataclass_fields__}),
                        tokenizer=tokenizer, progress=False)
    method = METHODS[cfg.method][1].from_teacher(teacher, cfg, config.diffusion.mask_index, config.diffusion.eps,
                                                 device)
    batches = BatchSchedule(len(data.train), cfg.batch_size, seed=0)
    # past the discriminator's warm-up (DiDi-Instruct): the full iteration, every network updated
    counter = {"step": getattr(cfg, "disc_warmup_steps", 0)}

    def step() -> None:
        n = counter["step"]
        method.step(data.train.batch(batches.indices(n)), n, step_generator(0, n, 2))
        counter["step"] += 1
    return step, method


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teacher", type=Path, required=True, help="a teacher run directory")
    parser.add_argument("--regime", choices=list(DISTILL_SETTINGS), default="bytes",
                        help="whose DiDi-Instruct settings and iterations (default bytes: 1200 iterations)")
    parser.add_argument("--settings", default=None, help="the DiDi-Instruct settings as JSON, with its iterations as "
                        "'steps' (default: --regime's)")
    parser.add_argument("--pool", type=int, default=InstructConfig.teacher_pool, help="teacher-pool rows of the "
                        "pure-distillation control (0: no pool, no pure-distillation entry; sampling a pool batch "
                        "is most of this script's time)")
    parser.add_argument("--repeats", type=int, default=8, help="timed calls of each, interleaved")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    device = torch.device("cpu")
    teacher, tokens = teacher_step(args.teacher, device)
    settings = json.loads(args.settings) if args.settings else DISTILL_SETTINGS[args.regime]
    instruct = InstructConfig(teacher=str(args.teacher), out="-", progress=False, **settings)
    sdtt = SDTTConfig(teacher=str(args.teacher), out="-", progress=False, round_steps=100_000, **SDTT_SETTINGS)
    methods = {"didi-instruct": method_step(args.teacher, instruct, device),
               "sdtt (per round-step)": method_step(args.teacher, sdtt, device)}
    # the pool: one batch of (up to) 256 rows at --teacher-nfe, scaled to the pool's size
    pool_method = methods["didi-instruct"][1]
    seq_len = int(read_run_config(args.teacher).training["seq_len"])

    pool_rows = min(256, args.pool)

    def pool_batch() -> None:
        pool_method.teacher_samples(pool_rows, seq_len, torch.Generator().manual_seed(0))

    calls = {"teacher step": teacher, **{name: fn for name, (fn, _) in methods.items()},
             **({"pool batch": pool_batch} if args.pool > 0 else {})}
    for fn in calls.values():  # warm-up (and past the iterations' first-call allocations)
        fn()
    flops = {name: flops_of(fn) for name, fn in calls.items()}
    times: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(args.repeats):
        for name, fn in calls.items():
            times[name].append(seconds_of(fn))
    median = {name: statistics.median(v) for name, v in times.items()}
    source = {"regime": args.regime} if args.settings is None else {}  # --settings: no regime's, whatever --regime
    report = {"teacher": str(args.teacher), **source, "settings": settings, "threads": 1, "repeats": args.repeats,
              "flops": flops, "seconds_median": median, "teacher_step_tokens": tokens, "methods": {}}
    # a pure-distillation iteration is a DiDi-Instruct iteration whose real rows come from the pool: the same work
    iterations_of = instruct.steps
    entries = [("didi-instruct", iterations_of, 0.0)]
    if "pool batch" in calls:
        entries.append((POOL_ENTRY, iterations_of, args.pool / pool_rows))
    for name, iterations, pool in entries:
        key = "didi-instruct"
        total_flops = iterations * flops[key] + (pool * flops["pool batch"] if pool else 0)
        total_s = iterations * median[key] + (pool * median["pool batch"] if pool else 0.0)
        report["methods"][name] = {
            "iterations": iterations, "pool_batches": pool,
            "teacher_steps_equivalent_flops": total_flops / flops["teacher step"],
            "teacher_steps_equivalent_wall": total_s / median["teacher step"]}
    report["sdtt_iteration_in_didi_instruct_iterations"] = {
        "flops": flops["sdtt (per round-step)"] / flops["didi-instruct"],
        "wall": median["sdtt (per round-step)"] / median["didi-instruct"]}
    text = json.dumps(report, indent=1)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
