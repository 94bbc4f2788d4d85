"""DiDi-Instruct on a language whose probabilities are known: exact diagnostics of the reward and of the student.

On the ``markov`` corpus (``didi train --data markov``; docs/method.md) every sample's invalid transitions are
countable, so the distillation can be watched without a learned evaluator:

``distill``: the DiDi-Instruct loop (``didi.recipes.didi_instruct.DiDiInstruct.step``, the code ``didi distill``
runs) for one or several seeds, logging every ``--log-every`` iterations the exact invalid-transition share of the
student's training rollouts, and, once the student updates, two diagnostics of the discriminator's per-token reward: its
AUC at telling tokens that touch an invalid transition from the others, and the correlation of a row's mean
reward with minus its invalid-transition count (during a discriminator warm-up: its logits on the clean rollout
at τ = tau_min, every ``--log-every`` iterations). ``--reward oracle`` replaces the discriminator's reward by the
exact one (minus the invalid transitions each token takes part in, per token): does the policy gradient follow a
reward that is right? The EMA and raw student weights of each seed are saved as safetensors.

``frontier``: the teacher over NFEs and a temperature sweep against the saved students, each row with the
invalid-transition share (mean ± std over sampling seeds) and the empirical conditional entropy H(X'|X), so a
student is compared with the teacher at its own entropy.

    python benchmarks/markov_diagnostics.py distill --teacher runs/markov-teacher --out runs/markov-diag \
        --seeds 0,1,2 --steps 700 --option credit=local --option disc_warmup_steps=400
    python benchmarks/markov_diagnostics.py distill --teacher runs/markov-teacher --out runs/markov-oracle \
        --reward oracle --steps 300 --option credit=local --option credit_window=0
    python benchmarks/markov_diagnostics.py frontier --teacher runs/markov-teacher --students runs/markov-diag
    python benchmarks/markov_diagnostics.py compare --teacher-json T.json --students-json S.json --nfe 8

``compare``: each student seed against the teacher's temperature curve at the seed's own H(X'|X) (``--model``: the
rows of another model, e.g. the teacher cooled only at masked positions with a masked neighbour, ``frontier
--neighbour-temperatures``).

``chain-frontier``: the language's exact posterior as the denoiser (a perfect teacher) through the same ancestral
sampler: its temperature curve (the factorisation error alone) against a *coupled* denoiser whose neighbours agree
by construction. Is the temperature curve the best a factorised few-step sampler can do? (docs/method.md)

    python benchmarks/markov_diagnostics.py chain-frontier --language runs/markov-teacher/markov.json
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from didi.data.corpora import BatchSchedule, DataConfig, prepare_data
from didi.data.markov import MarkovLanguage, markov_metrics
from didi.data.tokenizer import load_tokenizer
from didi.diffusion.process import LogLinearSchedule
from didi.diffusion.sampling import ancestral_sample
from didi.recipes.didi_instruct import DiDiInstruct, InstructConfig
from didi.recipes.distill import load_teacher
from didi.recipes.evaluate.markov import markov_rows
from didi.recipes.quickstart import MARKOV_DISTILL
from didi.runtime.distributed import rank_seed
from didi.runtime.randomness import step_generator

# The regime's settings (steps is --steps here); --option KEY=VALUE overrides any of them.
MARKOV_SETTINGS = {k: v for k, v in MARKOV_DISTILL.items() if k != "steps"}


class TokenTransitions:
    """Invalid transitions of token sequences, for any tokenizer: each token id's letters (special tokens and
    non-letters carry none and break a run), its first and last letter, and the invalid transitions inside it."""

    def __init__(self, language: MarkovLanguage, tokenizer, vocab_size: int):
        lookup = {c: i for i, c in enumerate(language.letters)}
        valid = language.transitions > 0
        first = np.full(vocab_size, -1)
        last = np.full(vocab_size, -1)
        internal = np.zeros(vocab_size)
        letters = np.zeros(vocab_size)
        for i in range(min(vocab_size, tokenizer.vocab_size)):
            codes = [lookup.get(ch, -1) for ch in tokenizer.decode([i])]
            if codes and min(codes) >= 0:
                first[i], last[i], letters[i] = codes[0], codes[-1], len(codes)
                internal[i] = sum(not valid[a, b] for a, b in zip(codes[:-1], codes[1:]))
        self.first, self.last = torch.tensor(first), torch.tensor(last)
        self.internal, self.letters = torch.tensor(internal), torch.tensor(letters)
        self.valid = torch.tensor(valid)

    def incoming(self, x: torch.Tensor) -> torch.Tensor:
        """(N, L): invalid transitions that end in token j (from token j-1, or inside token j)."""
        a, b = self.last[x[:, :-1]], self.first[x[:, 1:]]
        bad = (a >= 0) & (b >= 0) & ~self.valid[a.clamp(min=0), b.clamp(min=0)]
        return torch.cat([torch.zeros(len(x), 1, dtype=torch.float64), bad.double()], 1) + self.internal[x]

    def touching(self, x: torch.Tensor) -> torch.Tensor:
        """(N, L) float: invalid transitions token j takes part in, half credit for each side of a boundary."""
        inc = self.incoming(x)
        return 0.5 * (inc + torch.cat([inc[:, 1:], torch.zeros(len(x), 1, dtype=torch.float64)], 1))

    def rate(self, x: torch.Tensor) -> float:
        """Invalid transitions / transitions (letters minus one per row, as if rows had no breaks)."""
        return float(self.incoming(x).sum()) / max(1.0, float(self.letters[x].sum()) - len(x))


def load_setup(teacher_dir: str, language_path: str | None, cfg: InstructConfig):
    device = torch.device("cpu")
    teacher_config, teacher = load_teacher(Path(teacher_dir), device)
    tokenizer = load_tokenizer(Path(teacher_dir), teacher_config.tokenizer)
    language = MarkovLanguage.load(Path(language_path or Path(teacher_dir) / "markov.json"))
    data = prepare_data(DataConfig(**teacher_config.data), tokenizer=tokenizer, progress=False)
    torch.manual_seed(cfg.seed)  # as didi distill: the discriminator's head is drawn right after this
    models = DiDiInstruct.from_teacher(teacher, cfg, teacher_config.diffusion.mask_index,
                                       teacher_config.diffusion.eps, device)
    return teacher_config, tokenizer, language, data, models


def parse_options(pairs: list[str]) -> dict:
    defaults = InstructConfig()
    out = {}
    for pair in pairs:
        key, _, value = pair.partition("=")
        current = getattr(defaults, key)
        out[key] = value.lower() in ("1", "true", "yes") if isinstance(current, bool) else type(current)(value)
    return out


def masked_neighbour(z: torch.Tensor, mask_index: int) -> torch.Tensor:
    """(B, L) bool: masked positions with at least one masked neighbour (the ones an ancestral step can reveal
    together with a neighbour, drawing both independently)."""
    masked = z == mask_index
    left = torch.zeros_like(masked)
    left[:, 1:] = masked[:, :-1]
    right = torch.zeros_like(masked)
    right[:, :-1] = masked[:, 1:]
    return masked & (left | right)


def tempered(net: torch.nn.Module, temperature: float, mask_index: int, where: str = "all"):
    """The denoiser ``logits / T``: at every position (``all``, the usual temperature) or only at masked positions
    with a masked neighbour (``masked-neighbour``; T = 1 elsewhere)."""
    if where == "all":
        return lambda z, s: net(z, s) / temperature
    return lambda z, s: net(z, s) / torch.where(masked_neighbour(z, mask_index), temperature, 1.0)[..., None]


def sample_metrics(net: torch.nn.Module, tokenizer, language: MarkovLanguage, *, mask_index: int, schedule, nfe: int,
                   seq_len: int, n: int, seed: int, temperature: float = 1.0, where: str = "all") -> dict[str, float]:
    generator = torch.Generator().manual_seed(seed)
    net.eval()
    with torch.no_grad():
        out = ancestral_sample(tempered(net, temperature, mask_index, where), batch_size=n, seq_len=seq_len,
                               mask_index=mask_index, schedule=schedule, num_steps=nfe,
                               generator=generator)
    return markov_metrics(language, markov_rows(tokenizer, out.tokens.tolist()))


def token_auc(rewards: torch.Tensor, bad: torch.Tensor) -> float:
    """P(reward of a clean token > reward of a token touching an invalid transition)."""
    pos, neg = rewards[bad], rewards[~bad]
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    return float((neg[:, None] > pos[None, :]).float().mean())


def run_distill(args: argparse.Namespace) -> None:
    settings = {**MARKOV_SETTINGS, **parse_options(args.option)}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    summary = {seed: distill_seed(args, settings, seed, out) for seed in [int(s) for s in args.seeds.split(",")]}
    (out / "settings.json").write_text(json.dumps({"teacher": args.teacher, "reward": args.reward,
                                                    "steps": args.steps, "settings": settings}, indent=1))
    print(json.dumps(summary))


def distill_seed(args: argparse.Namespace, settings: dict, seed: int, out: Path) -> dict:
    """One seed of the monitored loop; returns the last logged row."""
    cfg = InstructConfig(teacher=args.teacher, out=str(out), steps=args.steps, seed=seed, progress=False, **settings)
    torch.manual_seed(seed)
    teacher_config, tokenizer, language, data, models = load_setup(args.teacher, args.language, cfg)
    table = TokenTransitions(language, tokenizer, teacher_config.model.vocab_size)
    seen: dict[str, torch.Tensor] = {}

    def oracle(x: torch.Tensor) -> torch.Tensor:
        return -table.touching(x).float()

    batches = BatchSchedule(len(data.train), cfg.batch_size, seed=seed)
    last, window = {}, {"invalid": [], "auc": [], "corr": []}
    started = time.perf_counter()
    with (out / f"seed{seed}.jsonl").open("w") as log:
        for step in range(args.stop_after or cfg.steps):
            seen.clear()
            if args.streams != "loop":  # the global RNG (dropout) reseeded every step, as didi distill does
                torch.manual_seed(rank_seed(seed, step, 0, 3))
            generator = step_generator(seed, step, 2) if args.streams != "distill" else \
                torch.Generator().manual_seed(rank_seed(seed, step, 0, 2))  # didi distill's step generator
            metrics = models.step(data.train.batch(batches.indices(step)), step, generator,
                                  reward_fn=oracle if args.reward == "oracle" else None)
            x = models.last_rollout
            if models.last_token_rewards is not None:
                seen["r"] = models.last_token_rewards
            window["invalid"].append(table.rate(x))
            if "r" not in seen and (step + 1) % args.log_every == 0:  # no reward yet: probe the clean rollout
                with torch.no_grad():
                    sigma = models.schedule.sigma(torch.full((len(x),), cfg.tau_min, dtype=torch.float64))
                    seen["r"] = models.disc_logits(x, sigma.float())
            if "r" in seen:
                window["auc"].append(token_auc(seen["r"], table.touching(x) > 0))
                bad_rows = table.incoming(x).sum(-1)
                if bad_rows.std() > 0:
                    window["corr"].append(float(np.corrcoef(seen["r"].mean(-1).numpy(), -bad_rows.numpy())[0, 1]))
            if (step + 1) % args.log_every == 0 or step + 1 == cfg.steps:
                last = {"seed": seed, "step": step + 1, "seconds": round(time.perf_counter() - started),
                        "rollout_invalid": float(np.mean(window["invalid"])),
                        "token_auc": float(np.nanmean(window["auc"])) if window["auc"] else None,
                        "row_corr": float(np.mean(window["corr"])) if window["corr"] else None,
                        **{k: metrics[k] for k in ("disc_loss", "entropy", "kl", "grad_norm") if k in metrics}}
                window = {"invalid": [], "auc": [], "corr": []}
                log.write(json.dumps(last) + "\n")
                log.flush()
                print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in last.items()}),
                      flush=True)
    disc = models.discriminator  # not a student: kept out of frontier's seed*-* files
    save_file({k: v.contiguous() for k, v in disc.state_dict().items()},
              str(out / f"discriminator-seed{seed}.safetensors"))
    for name, net in (("ema", models.ema), ("raw", models.student)):
        save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(out / f"seed{seed}-{name}.safetensors"))
    return last


class ChainDenoiser:
    """The exact denoiser of the Markov language itself: for byte sequences of letters, the posterior
    ``p(x_i = a | revealed letters)`` of every position under the chain (started from its stationary distribution),
    by forward-backward, as log-probabilities over the byte vocabulary (invalid transitions get probability 1e-9, so
    that letters already revealed as an invalid pair leave a defined posterior). A perfect teacher: its few-step samples
    err only because an ancestral step draws the positions it reveals independently.

    ``coupled_below`` (a masked share, 0 = never): in rows with at most this share of positions masked, masked
    positions at even index (anchors) put all mass on their posterior argmax, and the other masked positions take
    their posterior given the revealed letters *and* every masked anchor at its argmax (still one function of
    ``z``: one NFE). Neighbours are always an anchor and a non-anchor, and a non-anchor revealed with its anchor
    follows the anchor's letter: a factorised step that trades the anchors' entropy for validity instead of cooling
    every position. Two anchors' separate argmaxes can still leave no valid letter between them, so some invalid
    transitions remain."""

    def __init__(self, language: MarkovLanguage, vocab_size: int, mask_index: int, coupled_below: float = 0.0):
        t = torch.tensor(language.transitions, dtype=torch.float64) + 1e-9  # revealed invalid pairs stay possible
        self.t = t / t.sum(-1, keepdim=True)
        self.start = torch.tensor(language.stationary(), dtype=torch.float64).clamp(min=0)
        self.codes = torch.tensor([ord(c) for c in language.letters])
        self.letter_of = torch.full((vocab_size + 1,), -1, dtype=torch.long)
        self.letter_of[self.codes] = torch.arange(len(self.codes))
        self.vocab_size, self.mask_index, self.coupled_below = vocab_size, mask_index, coupled_below

    def posterior(self, evidence: torch.Tensor) -> torch.Tensor:
        """(B, L, S) evidence (1 where a letter is allowed) -> (B, L, S) posterior marginals."""
        n = evidence.shape[1]
        fwd = torch.empty_like(evidence)
        bwd = torch.ones_like(evidence)
        f = self.start * evidence[:, 0]
        fwd[:, 0] = f / f.sum(-1, keepdim=True)
        for i in range(1, n):
            f = (fwd[:, i - 1] @ self.t) * evidence[:, i]
            fwd[:, i] = f / f.sum(-1, keepdim=True)
        for i in range(n - 2, -1, -1):
            b = (evidence[:, i + 1] * bwd[:, i + 1]) @ self.t.T
            bwd[:, i] = b / b.sum(-1, keepdim=True)
        post = fwd * bwd
        return post / post.sum(-1, keepdim=True)

    def __call__(self, z: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        masked = z == self.mask_index
        letters = self.letter_of[z.clamp(max=self.vocab_size)]
        if bool((~masked & (letters < 0)).any()):
            raise ValueError("ChainDenoiser: a revealed token is not a letter of the language")
        num_letters = len(self.codes)
        evidence = torch.where(masked[..., None], 1.0, torch.nn.functional.one_hot(letters.clamp(min=0),
                                                                                   num_letters).double())
        post = self.posterior(evidence)
        coupled = (masked.double().mean(1, keepdim=True) <= self.coupled_below) & (self.coupled_below > 0)
        if bool(coupled.any()):
            anchors = masked & coupled & (torch.arange(z.shape[1]) % 2 == 0)
            best = torch.nn.functional.one_hot(post.argmax(-1), num_letters).double()
            post = torch.where(anchors[..., None], best, self.posterior(torch.where(anchors[..., None], best,
                                                                                    evidence)))
        logits = torch.full((*z.shape, self.vocab_size + 1), -torch.inf, dtype=torch.float64)
        logits[..., self.codes] = post.log()
        return logits


def run_chain_frontier(args: argparse.Namespace) -> None:
    """The exact chain as a few-step denoiser: its plain temperature curve against the coupled denoiser (coupled
    once at most each ``--coupled-below`` share of the positions is masked)."""
    language = MarkovLanguage.load(Path(args.language))
    config = dict(batch_size=args.samples, seq_len=args.seq_len, mask_index=args.vocab_size,
                  schedule=LogLinearSchedule(), num_steps=args.nfe)
    rows = []
    seeds = [int(s) for s in args.sample_seeds.split(",")]
    policies = ([("chain", float(t), 0.0) for t in args.temperatures.split(",") if t]
                + [("chain-coupled", 1.0, float(c)) for c in args.coupled_below.split(",") if c])
    for name, temperature, below in policies:
        denoiser = ChainDenoiser(language, args.vocab_size, args.vocab_size, coupled_below=below)
        results, tempered_denoiser = [], tempered(denoiser, temperature, args.vocab_size)
        for seed in seeds:
            out = ancestral_sample(tempered_denoiser,
                                   generator=torch.Generator().manual_seed(seed), **config)
            text = ["".join(chr(c) for c in row) for row in out.tokens.tolist()]
            results.append(markov_metrics(language, text))
        invalid = np.array([r["invalid_rate"] for r in results]) * 100
        entropy = np.array([r["conditional_entropy"] for r in results])
        rows.append({"model": name, "nfe": args.nfe, "temperature": temperature, "coupled_below": below,
                     "invalid_pct": float(invalid.mean()),
                     "invalid_pct_std": spread(invalid), "conditional_entropy": float(entropy.mean())})
        print(f"{name:14s} NFE {args.nfe:3d} T {temperature:4.2f} coupled below {below:4.2f}  invalid "
              f"{invalid.mean():6.2f} ± {spread(invalid):.2f} %  H(X'|X) {entropy.mean():.3f}", flush=True)
    curve = sorted((r["conditional_entropy"], r["invalid_pct"]) for r in rows if r["model"] == "chain")
    for r in rows:
        if r["model"] == "chain-coupled" and len(curve) > 1 and curve[0][0] <= r["conditional_entropy"] <= curve[-1][0]:
            r["curve_minus_invalid_pct"] = float(np.interp(r["conditional_entropy"], *zip(*curve))) - r["invalid_pct"]
            print(f"coupled below {r['coupled_below']:4.2f}: below the chain's temperature curve at the same "
                  f"H(X'|X) by {r['curve_minus_invalid_pct']:.2f} points")
    print(f"chain entropy rate {language.entropy_rate():.3f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "chain_entropy_rate": language.entropy_rate()}, indent=1))


def run_frontier(args: argparse.Namespace) -> None:
    cfg = InstructConfig(teacher=args.teacher, out="-", progress=False)  # only the teacher and schedule are used
    teacher_config, tokenizer, language, _, models = load_setup(args.teacher, args.language, cfg)
    net, seq_len = models.teacher, teacher_config.model.max_seq_len
    seq_len = args.seq_len or seq_len
    common = dict(mask_index=teacher_config.diffusion.mask_index, schedule=models.schedule, seq_len=seq_len,
                  n=args.samples)
    seeds = [int(s) for s in args.sample_seeds.split(",")]

    def row(name: str, nfe: int, temperature: float, where: str = "all") -> dict:
        results = [sample_metrics(net, tokenizer, language, nfe=nfe, seed=s, temperature=temperature, where=where,
                                  **common) for s in seeds]
        invalid = np.array([r["invalid_rate"] for r in results]) * 100
        entropy = np.array([r["conditional_entropy"] for r in results])
        out = {"model": name, "nfe": nfe, "temperature": temperature, "invalid_pct": float(invalid.mean()),
               "invalid_pct_std": float(invalid.std()), "conditional_entropy": float(entropy.mean()),
               "nll_per_transition": float(np.mean([r["nll_per_transition"] for r in results]))}
        print(f"{name:28s} NFE {nfe:4d} T {temperature:4.2f}  invalid {out['invalid_pct']:6.2f} ± "
              f"{out['invalid_pct_std']:.2f} %  H(X'|X) {out['conditional_entropy']:.3f}", flush=True)
        return out

    rows = []
    original = {k: v.clone() for k, v in net.state_dict().items()}
    for nfe in [int(s) for s in args.teacher_nfe.split(",") if s]:
        rows.append(row("teacher", nfe, 1.0))
    for temperature in [float(s) for s in args.temperatures.split(",") if s]:
        rows.append(row("teacher", args.nfe, temperature))
    for temperature in [float(s) for s in args.neighbour_temperatures.split(",") if s]:
        rows.append(row("teacher-masked-neighbour", args.nfe, temperature, "masked-neighbour"))
    for directory in args.students:
        for weights in sorted(Path(directory).glob("seed*-*.safetensors")):
            net.load_state_dict(load_file(str(weights)))
            rows.append(row(f"{Path(directory).name}/{weights.stem}", args.nfe, 1.0))
    net.load_state_dict(original)
    print(f"chain entropy rate {language.entropy_rate():.3f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "chain_entropy_rate": language.entropy_rate()}, indent=1))


def spread(values: np.ndarray) -> float:
    """Sample standard deviation (ddof 1); 0 for a single value."""
    return float(values.std(ddof=1)) if len(values) > 1 else 0.0


def run_compare(args: argparse.Namespace) -> None:
    """Students against the teacher's temperature curve at the same NFE: each seed's invalid share is compared with
    the curve (linear in H(X'|X) between its points) at that seed's own conditional entropy; mean ± std (ddof 1)
    over the seeds, for the EMA and the raw weights (or over the rows of ``--model``)."""
    teacher = [r for r in json.loads(Path(args.teacher_json).read_text())["rows"]
               if r["nfe"] == args.nfe and r["model"] == "teacher"]
    curve = sorted((r["conditional_entropy"], r["invalid_pct"]) for r in teacher)
    entropies, invalid = [c[0] for c in curve], [c[1] for c in curve]
    students = [r for r in json.loads(Path(args.students_json).read_text())["rows"] if r["nfe"] == args.nfe]
    groups = {args.model: lambda name: name == args.model} if args.model else {
        weights: lambda name, w=weights: name.endswith(f"-{w}") for weights in ("ema", "raw")}
    for weights, chosen in groups.items():
        rows = [r for r in students if chosen(r["model"])]
        if not rows:
            continue
        inv = np.array([r["invalid_pct"] for r in rows])
        ent = np.array([r["conditional_entropy"] for r in rows])
        below = np.array([np.interp(h, entropies, invalid) - i for h, i in zip(ent, inv)])
        inside = (ent >= entropies[0]) & (ent <= entropies[-1])
        outside = int((~inside).sum())
        if args.per_model:
            for r, b, h, within in zip(rows, below, ent, inside):
                where = (f"below the teacher's curve by {b:.2f} points" if within
                         else "outside the curve's entropy range")
                print(f"{r['model']} (T {r.get('temperature', 1.0):.2f}): invalid {r['invalid_pct']:.2f} %, "
                      f"H(X'|X) {h:.3f}; {where}")
        unit = "rows" if args.model else "seeds"
        print(f"NFE {args.nfe} {weights}: {len(rows)} {unit}, invalid {inv.mean():.2f} ± {spread(inv):.2f} %, "
              f"H(X'|X) {ent.mean():.3f} ± {spread(ent):.3f}; below the teacher's temperature curve at the same "
              f"H(X'|X) by {below.mean():.2f} ± {spread(below):.2f} points"
              + (f" ({outside} {unit} outside the curve's entropy range)" if outside else ""))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    d = sub.add_parser("distill", help="distil with exact monitoring (discriminator or oracle reward)")
    d.add_argument("--teacher", required=True)
    d.add_argument("--language", default=None, help="markov.json (default: the teacher run's)")
    d.add_argument("--out", required=True)
    d.add_argument("--reward", choices=["disc", "oracle"], default="disc")
    d.add_argument("--seeds", default="0")
    d.add_argument("--steps", type=int, default=700)
    d.add_argument("--log-every", type=int, default=50)
    d.add_argument("--stop-after", type=int, default=0, help="stop after this many iterations (the schedules still "
                   "run over --steps; e.g. the discriminator warm-up alone of a full-length run)")
    d.add_argument("--streams", choices=["loop", "loop-reseeded", "distill"], default="loop", help="random "
                   "streams: this loop's (step_generator, one global stream); loop-reseeded: the same step generator "
                   "with the global RNG (dropout) reseeded every step from (seed, step) as didi distill does; "
                   "distill: exactly didi distill's (its step generator too), so that both runs can be compared "
                   "weight for weight")
    d.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                   help="override a setting of MARKOV_SETTINGS / any InstructConfig field")
    f = sub.add_parser("frontier", help="teacher NFE and temperature sweep against saved students")
    f.add_argument("--teacher", required=True)
    f.add_argument("--language", default=None)
    f.add_argument("--students", nargs="*", default=[])
    f.add_argument("--nfe", type=int, default=8)
    f.add_argument("--teacher-nfe", default="8,16,32,128", help="teacher rows at temperature 1 ('' for none)")
    f.add_argument("--temperatures", default="0.9,0.8,0.7,0.6,0.5,0.4,0.3",
                   help="teacher rows at --nfe ('' for none)")
    f.add_argument("--neighbour-temperatures", default="", help="teacher rows at --nfe with the temperature applied "
                   "only to masked positions that have a masked neighbour ('' for none): does a reshaping that "
                   "cools only where two neighbours can be drawn together beat the plain temperature curve?")
    f.add_argument("--samples", type=int, default=256)
    f.add_argument("--sample-seeds", default="0,1")
    f.add_argument("--seq-len", type=int, default=0)
    f.add_argument("--json", default=None)
    o = sub.add_parser("chain-frontier", help="the exact chain as a few-step denoiser: temperature curve against "
                       "the coupled denoiser (is the temperature curve a bound for factorised steps?)")
    o.add_argument("--language", required=True, help="markov.json (e.g. a teacher run's)")
    o.add_argument("--nfe", type=int, default=8)
    o.add_argument("--temperatures", default="1.0,0.8,0.6,0.5,0.4,0.3,0.2,0.1")
    o.add_argument("--coupled-below", default="1.0,0.75,0.5,0.25", help="coupled-denoiser rows: couple once at "
                   "most this share of a row's positions is masked (1.0: from the first step)")
    o.add_argument("--samples", type=int, default=256)
    o.add_argument("--sample-seeds", default="0,1,2")
    o.add_argument("--seq-len", type=int, default=64)
    o.add_argument("--vocab-size", type=int, default=257, help="byte vocabulary (the [MASK] id is this)")
    o.add_argument("--json", default=None)
    c = sub.add_parser("compare", help="students against the teacher's temperature curve (frontier JSON files)")
    c.add_argument("--teacher-json", required=True, help="frontier --json of the teacher's temperature sweep")
    c.add_argument("--students-json", required=True, help="frontier --json of the students")
    c.add_argument("--nfe", type=int, default=8)
    c.add_argument("--per-model", action="store_true", help="also one line per student weight file")
    c.add_argument("--model", default=None, help="compare the rows of this model name instead of the students' EMA "
                   "and raw weights (e.g. teacher-masked-neighbour, one row per temperature)")
    args = parser.parse_args(argv)
    {"distill": run_distill, "frontier": run_frontier, "compare": run_compare,
     "chain-frontier": run_chain_frontier}[args.command](args)


if __name__ == "__main__":
    main()
