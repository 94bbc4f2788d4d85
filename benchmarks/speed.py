"""Few-step diffusion against autoregressive decoding, side by side: per-sample latency and the cost of a call.

For each sequence length (``--lengths``, default 64 and 256) and batch size (``--batches``, default 1 and 64), one
process measures, interleaved (one timed call of every variant in turn, ``--repeats`` times, the median kept):

* ``forward``: one bare forward pass of the DiT on a (batch, length) input, no sampler around it;
* the ancestral sampler (``didi.diffusion.sampling.ancestral_sample``, cache on) and MaskGIT
  (``didi.diffusion.confidence``) at each ``--nfe``: per-sample latency, network calls made, and the time per call
  against the bare forward pass (the physical limit is ``latency ∝ calls``: a ratio near 1 means the sampler adds
  little around the network);
* AR decoding with a KV cache (``didi.pipelines.ar.generate``): ``length - 1`` calls of one token each.

The networks have the bytes regime's shapes (``--hidden 128``, 4 blocks, 257 byte tokens + [MASK]), randomly
initialised (speed does not depend on the weights), or come from run directories (``--diffusion RUN --ar RUN``, at
their own length). One thread by default (``--threads``), so that a shared machine disturbs the ratios less.

    python benchmarks/speed.py                       # ~10 min on 1 core
    python benchmarks/speed.py --json speed.json --lengths 64 --batches 1,64
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

from didi.config import ModelConfig
from didi.diffusion.confidence import ConfidenceConfig, confidence_sample
from didi.diffusion.process import LogLinearSchedule
from didi.diffusion.sampling import ancestral_sample
from didi.models.dit import DiT
from didi.models.gpt import GPT
from didi.models.load import load_network
from didi.pipelines.ar import generate
from didi.runtime.checkpoint import read_run_config

VOCAB = 257  # bytes + <|endoftext|>; the DiT adds [MASK]


def networks(args: argparse.Namespace, length: int) -> tuple[torch.nn.Module, torch.nn.Module, int]:
    """(DiT, GPT, mask index) of the given runs, or random ones with the bytes regime's shapes."""
    if args.diffusion and args.ar:
        dit_run, ar_run = read_run_config(args.diffusion), read_run_config(args.ar)
        return (load_network(args.diffusion, dit_run), load_network(args.ar, ar_run),
                dit_run.diffusion.mask_index)
    torch.manual_seed(0)
    shape = dict(hidden_size=args.hidden, n_blocks=4, n_heads=4, cond_dim=128, max_seq_len=length, dropout=0.0)
    dit = DiT(ModelConfig(vocab_size=VOCAB + 1, **shape)).eval()
    gpt = GPT(ModelConfig(vocab_size=VOCAB, arch="gpt", **shape)).eval()
    return dit, gpt, VOCAB


def variants(dit, gpt, mask: int, batch: int, length: int, nfes: list[int]) -> dict:
    """name -> a call returning the number of network calls it made."""
    schedule = LogLinearSchedule()
    z = torch.full((batch, length), mask, dtype=torch.long)
    sigma = torch.zeros(batch)
    out = {}

    @torch.no_grad()
    def forward() -> int:
        dit(z, sigma)
        return 1
    out["forward"] = forward
    for nfe in nfes:
        out[f"ancestral @ {nfe}"] = lambda nfe=nfe: ancestral_sample(
            dit, batch_size=batch, seq_len=length, num_steps=nfe, mask_index=mask, schedule=schedule,
            generator=torch.Generator().manual_seed(0)).nfe
        out[f"maskgit @ {nfe}"] = lambda nfe=nfe: confidence_sample(
            dit, batch_size=batch, seq_len=length, num_steps=nfe, mask_index=mask, schedule=schedule,
            config=ConfidenceConfig(order="maskgit"), generator=torch.Generator().manual_seed(0)).nfe
    out["AR (KV cache)"] = lambda: generate(gpt, batch_size=batch, seq_len=length, bos_id=VOCAB - 1,
                                            generator=torch.Generator().manual_seed(0)).nfe
    return out


def measure(calls: dict, repeats: int) -> dict[str, dict[str, float]]:
    for fn in calls.values():  # warm-up
        fn()
    seconds: dict[str, list[float]] = {name: [] for name in calls}
    made: dict[str, int] = {}
    for _ in range(repeats):
        for name, fn in calls.items():
            start = time.perf_counter()
            made[name] = fn()
            seconds[name].append(time.perf_counter() - start)
    return {name: {"seconds": statistics.median(v), "calls": made[name]} for name, v in seconds.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", default="64,256")
    parser.add_argument("--batches", default="1,64")
    parser.add_argument("--nfe", default="8,16")
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--diffusion", type=Path, default=None, help="a diffusion run (with --ar: its own length)")
    parser.add_argument("--ar", type=Path, default=None)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    nfes = [int(n) for n in args.nfe.split(",")]
    rows = []
    for length in [int(x) for x in args.lengths.split(",")]:
        dit, gpt, mask = networks(args, length)
        for batch in [int(x) for x in args.batches.split(",")]:
            result = measure(variants(dit, gpt, mask, batch, length, nfes), args.repeats)
            forward = result["forward"]["seconds"]
            for name, r in result.items():
                rows.append({"length": length, "batch": batch, "variant": name, "calls": r["calls"],
                             "latency_per_sample_ms": 1000 * r["seconds"] / batch,
                             "ms_per_call": 1000 * r["seconds"] / max(1, r["calls"]),
                             "per_call_vs_forward": r["seconds"] / max(1, r["calls"]) / forward})
                print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    lines = ["| length | batch | variant | calls | latency / sample (ms) | ms / call | per call ÷ forward |",
             "|---:|---:|---|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['length']} | {r['batch']} | {r['variant']} | {r['calls']} | "
                     f"{r['latency_per_sample_ms']:.2f} | {r['ms_per_call']:.2f} | {r['per_call_vs_forward']:.2f} |")
    meta = {"threads": args.threads, "repeats": args.repeats, "torch": torch.__version__,
            "machine": platform.processor() or platform.machine(), "load_average": os.getloadavg()}
    print("\n".join(lines))
    print(f"\n{json.dumps(meta)}")
    if args.json:
        command = "python benchmarks/speed.py" + ("" if argv is None else " " + " ".join(argv))
        markdown = "\n".join([f"`{command}` ({args.threads} thread(s), median of {args.repeats} interleaved calls; "
                              f"load average at the end {meta['load_average'][0]:.2f}):", "", *lines])
        args.json.write_text(json.dumps({"rows": rows, "meta": meta, "markdown": markdown}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
