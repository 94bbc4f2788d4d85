"""Training and sampling throughput of the DiT presets on the current device, eager vs ``torch.compile``, fp32 vs bf16.

All variants of a preset are measured in the same run on the same model, their timed iterations interleaved (one
step of each in turn), so a change in machine load hits them alike and the ratios compare like with like; the
baseline of each preset is plain eager fp32 (``compile`` off, no autocast).

* training tokens/s: one ``didi train`` step (MDLM NELBO with antithetic times, bf16 autocast where asked,
  backward, gradient clipping, AdamW), ``--batch-size`` x ``--seq-len`` tokens per step, one process;
* sampling tokens/s: ``didi sample``'s ancestral sampler (cache on) from all-mask, ``--sample-batch`` sequences of
  ``--seq-len`` tokens in ``--nfe`` steps, divided by the wall time of the whole call;
* ``compile s``: the first (warm-up) iterations of a compiled variant, dominated by compilation.

Usage::

    python benchmarks/throughput.py --quick                  # CPU: short sequences, a few steps (minutes)
    python benchmarks/throughput.py --device cuda            # GPU: seq 1024, batch 16, 20 timed steps

Prints a Markdown table (``--json PATH`` also saves the numbers).
"""
from __future__ import annotations

import argparse
import datetime
import functools
import json
import os
import platform
import sys
import time
from dataclasses import asdict, dataclass

import torch

from didi.config import DiffusionConfig, ModelConfig
from didi.diffusion.process import LogLinearSchedule
from didi.diffusion.sampling import ancestral_sample
from didi.models.dit import DiT
from didi.recipes.train import draw_noise, mdlm_objective
from didi.runtime.devices import autocast, pick_device, synchronize

VOCAB = 50258  # GPT-2's 50257 tokens + [MASK], the paper's setting


@dataclass
class Result:
    preset: str
    variant: str
    params_m: float
    train_tokens_per_s: float
    sample_tokens_per_s: float
    nfe: int
    compile_s: float


def variants(device: torch.device) -> list[tuple[str, bool, torch.dtype | None]]:
    """(name, compile, autocast dtype); bf16 only where autocast supports it."""
    bf16 = device.type == "cpu" or (device.type == "cuda" and torch.cuda.is_bf16_supported())
    out = [("eager fp32", False, None), ("compile fp32", True, None)]
    if bf16:
        out += [("eager bf16", False, torch.bfloat16), ("compile bf16", True, torch.bfloat16)]
    return out


def timed(fn, device: torch.device) -> float:
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - start


def measure(preset: str, args: argparse.Namespace, device: torch.device) -> list[Result]:
    """All variants of one preset on one model (the weights do not affect speed). After a warm-up per variant
    (compilation), timed iterations alternate between the variants, so a change in machine load hits all alike."""
    torch.manual_seed(0)
    config = ModelConfig.from_preset(preset, vocab_size=VOCAB, max_seq_len=args.seq_len, dropout=0.0)
    model = DiT(config).to(device)
    compiled = torch.compile(model)
    diffusion = DiffusionConfig(mask_index=VOCAB - 1)
    schedule = LogLinearSchedule(diffusion.eps)
    objective = mdlm_objective(schedule, diffusion)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.randint(0, VOCAB - 1, (args.batch_size, args.seq_len), device=device)
    runs = variants(device)
    warm = {name: 0.0 for name, _, _ in runs}
    train_s = dict.fromkeys(warm, 0.0)
    sample_s = dict.fromkeys(warm, 0.0)
    nfe = dict.fromkeys(warm, 0)

    def train_step(network: torch.nn.Module, dtype: torch.dtype | None) -> None:
        noise = draw_noise("mdlm", diffusion, 0, 0, args.batch_size, args.seq_len, device)
        with autocast(device, dtype):
            loss = objective(network, x, noise) / x.numel()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def sample(name: str, network: torch.nn.Module, dtype: torch.dtype | None) -> None:
        def denoiser(z: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
            with autocast(device, dtype):
                return network(z, sigma)
        result = ancestral_sample(denoiser, batch_size=args.sample_batch, seq_len=args.seq_len,
                                  mask_index=diffusion.mask_index, schedule=schedule,
                                  num_steps=args.nfe,
                                  generator=torch.Generator(device=device).manual_seed(0), device=device)
        nfe[name] = result.nfe

    model.train()
    for name, use_compile, dtype in runs:
        network = compiled if use_compile else model
        for _ in range(args.warmup):
            warm[name] += timed(functools.partial(train_step, network, dtype), device)
    for _ in range(args.steps):
        for name, use_compile, dtype in runs:
            network = compiled if use_compile else model
            train_s[name] += timed(functools.partial(train_step, network, dtype), device)
    model.eval()
    for name, use_compile, dtype in runs:
        network = compiled if use_compile else model
        warm[name] += timed(functools.partial(sample, name, network, dtype), device)
    for _ in range(args.sample_repeats):
        for name, use_compile, dtype in runs:
            network = compiled if use_compile else model
            sample_s[name] += timed(functools.partial(sample, name, network, dtype), device)
    params_m = sum(p.numel() for p in model.parameters()) / 1e6
    return [Result(preset=preset, variant=name, params_m=params_m,
                   train_tokens_per_s=args.steps * args.batch_size * args.seq_len / train_s[name],
                   sample_tokens_per_s=args.sample_repeats * args.sample_batch * args.seq_len / sample_s[name],
                   nfe=nfe[name], compile_s=warm[name] if use_compile else 0.0)
            for name, use_compile, _ in runs]


def machine(device: torch.device) -> str:
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = platform.processor() or platform.machine()
        try:
            with open("/proc/cpuinfo") as fh:
                name = next(line.split(":", 1)[1].strip() for line in fh if line.startswith("model name"))
        except (OSError, StopIteration):
            pass
    load = f", load average {os.getloadavg()[0]:.1f}" if hasattr(os, "getloadavg") else ""
    return (f"{name}; {os.cpu_count()} CPU cores, {torch.get_num_threads()} torch threads{load}; "
            f"torch {torch.__version__}; {platform.python_implementation()} {platform.python_version()}")


def table(results: list[Result]) -> str:
    lines = ["| preset | variant | train tokens/s | x eager fp32 | sample tokens/s (nfe) | x eager fp32 | compile s |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for r in results:
        base = next(b for b in results if b.preset == r.preset and b.variant == "eager fp32")
        compile_s = f"{r.compile_s:.0f}" if r.compile_s else "-"
        lines.append(f"| {r.preset} ({r.params_m:.0f}M) | {r.variant} | {r.train_tokens_per_s:,.0f} | "
                     f"{r.train_tokens_per_s / base.train_tokens_per_s:.2f} | {r.sample_tokens_per_s:,.0f} ({r.nfe}) | "
                     f"{r.sample_tokens_per_s / base.sample_tokens_per_s:.2f} | {compile_s} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--presets", default="tiny,small", help="comma-separated presets (default tiny,small)")
    parser.add_argument("--device", default="auto", help="auto (cuda > mps > cpu), cpu, cuda, ...")
    parser.add_argument("--quick", action="store_true",
                        help="CPU-sized: --seq-len 64 --batch-size 4 --steps 3 --warmup 1 --nfe 8 --sample-batch 4 "
                             "--sample-repeats 2")
    parser.add_argument("--seq-len", type=int, default=None, help="tokens per sequence (default 1024)")
    parser.add_argument("--batch-size", type=int, default=None, help="training sequences per step (default 16)")
    parser.add_argument("--steps", type=int, default=None, help="timed training steps per variant (default 20)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed training steps per variant first (default 3)")
    parser.add_argument("--nfe", type=int, default=None, help="sampling steps (default 128)")
    parser.add_argument("--sample-batch", type=int, default=None, help="sequences per sampling call (default 16)")
    parser.add_argument("--sample-repeats", type=int, default=None, help="timed sampling calls per variant (default 3)")
    parser.add_argument("--json", default=None, help="also write the results to this JSON file")
    args = parser.parse_args(argv)
    defaults = (dict(seq_len=64, batch_size=4, steps=3, warmup=1, nfe=8, sample_batch=4, sample_repeats=2)
                if args.quick else
                dict(seq_len=1024, batch_size=16, steps=20, warmup=3, nfe=128, sample_batch=16, sample_repeats=3))
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    device = pick_device(args.device)
    command = " ".join(["python", "benchmarks/throughput.py", *(argv if argv is not None else sys.argv[1:])])
    print(f"# {command}\n# {datetime.date.today()}  device {device}: {machine(device)}", flush=True)
    results = []
    for preset in args.presets.split(","):
        results += measure(preset, args, device)
        print(table([r for r in results if r.preset == preset]), flush=True)
    print(table(results))
    if hasattr(os, "getloadavg"):
        print(f"# load average at the end: {os.getloadavg()[0]:.1f}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"command": command, "date": str(datetime.date.today()), "device": str(device),
                       "machine": machine(device), "settings": vars(args), "results": [asdict(r) for r in results]},
                      fh, indent=2)


if __name__ == "__main__":
    main()
