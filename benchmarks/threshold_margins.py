"""Margins of the tests whose verdict depends on a training trajectory, across seeds and CPU kernels.

A test that trains something (a student, a discriminator) and asserts a threshold on the result is only as good as
the margin between its threshold and what the training actually gives. A float rounding difference between CPU
kernels (AVX-512, AVX2, none) changes the trajectory of an adversarial game after a few hundred iterations, exactly
like a different seed does: the verdict must hold for both. This script measures each such quantity (with the
functions that tests/test_distill.py and tests/test_sdtt.py themselves call, with the tests' settings) over
``--seeds`` seeds in one child process per kernel (``ATEN_CPU_CAPABILITY``, single-threaded), and prints for each
check: the test's threshold, min / mean / std / max of the measured value, and the margin (min - threshold) in
standard deviations.

    python benchmarks/threshold_margins.py                 # every check, 8 seeds x 3 kernels (~1 h on 1 core)
    python benchmarks/threshold_margins.py --only kl       # the exact-KL distillation test alone (~25 min)
    python benchmarks/threshold_margins.py --json out.json
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
KERNELS = ("avx512", "avx2", "default")

# name -> (what is measured, the test's threshold, "above" or "below": which side of it passes)
CHECKS = {
    "kl": ("KL(teacher 2-step) / KL(student 2-step) after 1000 iterations "
           "(test_distillation_lowers_exact_kl_of_the_two_step_sampler)", 2.0, "above"),
    "reward": ("rise of the share of 0 tokens, sequence credit (test_policy_gradient_follows_a_given_reward)",
               0.25, "above"),
    "reward-local": ("rise of the share of 0 tokens, local credit (test_local_credit_follows_a_per_token_reward)",
                     0.25, "above"),
    "separable": ("mean loss of the last 30 steps minus the BCE floor, normalised head "
                  "(test_discriminator_separates_a_separable_toy[True])", 0.03, "below"),
    "separable-raw": ("the same, raw head (test_discriminator_separates_a_separable_toy[False])", 0.03, "below"),
    "log-ratio-corr": ("correlation of the discriminator's log-odds with the exact log ratio "
                       "(test_discriminator_log_odds_approximate_true_log_ratio)", 0.9, "above"),
    "log-ratio-mse": ("weighted MSE / variance of the exact log ratio (same test)", 0.25, "below"),
    "sdtt": ("KL(two-step target ‖ x̂) at all-mask, before / after one SDTT round "
             "(test_one_round_moves_the_student_to_the_teachers_two_steps)", 10.0, "above"),
}


def measure(only: list[str], seeds: int) -> None:
    """Child process: print one JSON line per (check, seed) under this process's kernel."""
    import torch

    sys.path.insert(0, str(ROOT / "tests"))
    import test_distill as t
    import test_sdtt

    kernel = torch.backends.cpu.get_cpu_capability()
    setup = t.potts_setup() if {"kl", "log-ratio-corr", "log-ratio-mse"} & set(only) else None
    for seed in range(seeds):
        values = {}
        if "kl" in only:
            before, after = t.two_step_kl_before_after(*setup, seed=seed)
            values["kl"] = before / after
        if "reward" in only:
            before, after = t.reward_following(seed)
            values["reward"] = after - before
        if "reward-local" in only:
            before, after = t.reward_following(seed, credit="local")
            values["reward-local"] = after - before
        if "separable" in only:
            loss, floor = t.separable_toy_loss(True, seed)
            values["separable"] = loss - floor
        if "separable-raw" in only:
            loss, floor = t.separable_toy_loss(False, seed)
            values["separable-raw"] = loss - floor
        if {"log-ratio-corr", "log-ratio-mse"} & set(only):
            corr, mse, variance = t.log_ratio_fit(*setup, seed=seed)
            values.update({"log-ratio-corr": corr, "log-ratio-mse": mse / variance})
        if "sdtt" in only:
            before, after = test_sdtt.one_round_gap(seed)
            values["sdtt"] = before / after
        for name, value in values.items():
            if name in only:
                print(json.dumps({"check": name, "seed": seed, "kernel": kernel, "value": value}), flush=True)


def summarise(rows: list[dict]) -> str:
    lines = ["| check | threshold | runs | min | mean | std | max | margin (std) |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name, (what, threshold, side) in CHECKS.items():
        values = [r["value"] for r in rows if r["check"] == name]
        if not values:
            continue
        sd = statistics.stdev(values) if len(values) > 1 else float("nan")
        worst = min(values) if side == "above" else max(values)
        gap = worst - threshold if side == "above" else threshold - worst
        margin = gap / sd if sd > 0 else float("inf") if gap > 0 else float("-inf")
        lines.append(f"| {name}: {what} | {'>' if side == 'above' else '<'} {threshold:g} | {len(values)} | "
                     f"{min(values):.3f} | {statistics.mean(values):.3f} | {sd:.3f} | {max(values):.3f} | "
                     f"{margin:.1f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default=",".join(CHECKS), help="comma-separated checks (default: all): "
                        + ", ".join(CHECKS))
    parser.add_argument("--seeds", type=int, default=8, help="seeds per kernel (default 8)")
    parser.add_argument("--kernels", default=",".join(KERNELS), help="ATEN_CPU_CAPABILITY values (default: all)")
    parser.add_argument("--json", type=Path, default=None, help="also write every measurement here")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    only = [c for c in args.only.split(",") if c]
    unknown = [c for c in only if c not in CHECKS]
    if unknown:
        parser.error(f"--only: unknown check(s) {', '.join(unknown)}")
    if args.child:
        measure(only, args.seeds)
        return 0
    rows = []
    for kernel in [k for k in args.kernels.split(",") if k]:
        env = {**os.environ, "ATEN_CPU_CAPABILITY": kernel, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        command = [sys.executable, __file__, "--child", "--only", ",".join(only), "--seeds", str(args.seeds)]
        print(f"kernel {kernel}: {' '.join(command[1:])}", file=sys.stderr, flush=True)
        child = subprocess.run(command, env=env, capture_output=True, text=True, cwd=ROOT)
        if child.returncode != 0:
            print(child.stderr, file=sys.stderr)
            return child.returncode
        for line in child.stdout.splitlines():
            row = {**json.loads(line), "requested_kernel": kernel}
            rows.append(row)
            print(json.dumps(row), file=sys.stderr, flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    print(summarise(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
