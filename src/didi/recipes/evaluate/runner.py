"""``didi eval``: :func:`evaluate` runs the metrics of :mod:`.metrics` over models x NFE budgets (or over sample
files) into an :class:`~.report.EvalReport`, printed by :func:`~.report.format_table`, saved by
:func:`~.report.write_report` and drawn by :func:`~.plots.plot_report`.

Per model: its validation likelihood (:func:`~.references.model_likelihood`), then per budget timed sampling, scored
by :class:`~.scoring.Scoring` (entropy, gen-PPL, ...). Proteins (models with the amino-acid tokenizer):
:func:`didi.data.protein.protein_metrics` of the decoded sequences (residue entropy, composition divergence from
the natural sequences of :func:`~.references.protein_reference`, distinct and low-complexity fractions, lengths),
optionally ESMFold pLDDT, and a row scoring those natural sequences alike. Markov-language runs (``markov.json`` in
the run directory, written by ``--data markov``): the exact metrics of :func:`~.markov.markov_scores` for every row
of the run, for sample files it wrote and for the held-out data row of its corpus; ``--frontier-entropy
conditional`` reads the temperature frontiers on their conditional entropy ``H(X'|X)``.
"""
from __future__ import annotations

import dataclasses
import datetime
import math
import os
import platform
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ...config import helpfield, parse_int_list
from ...data.corpora import held_out_overlap
from ...diffusion.confidence import ORDERS, ConfidenceConfig
from ...diffusion.rgas import RGASConfig
from ...diffusion.sampling import SampleResult, SamplingControls
from ...errors import option_error, require
from ...interop.sample_files import decode_as_sampled, read_samples
from ...models.load import DISCRIMINATOR_FILE
from ...pipelines.diffusion import SAMPLERS, require_discriminator
from ...pipelines.load import load
from ...runtime.checkpoint import RunConfig, is_run_dir, read_run_config
from ...runtime.devices import pick_device
from ...version import __version__
from .conditional import check_prefix_tokens, conditional_rows
from .files import SampleFile, file_row, group_files
from .markov import markov_language, markov_rows
from .metrics import (
    MIN_MAUVE_SAMPLES,
    RELIABLE_MAUVE_SAMPLES,
    Likelihood,
    Model,
    load_evaluator,
    load_mauve_features,
    log,
    timed_sampling,
)
from .references import HeldOut, describe_heldout, heldout_data, model_likelihood, protein_scoring, validation_blocks
from .report import EvalReport, EvalRow, compute_frontiers, frontier_axis
from .resume import RowStore, fingerprint
from .scoring import Scoring
from .scoring import data_row as data_row_of

FRONTIER_ENTROPIES = {"sample": "entropy", "conditional": "conditional_entropy"}  # --frontier-entropy -> row metric
PLOT_FORMATS = ("png", "pdf", "svg", "jpg", "jpeg")


@dataclass
class EvalConfig:
    """Options of ``didi eval``: which models (or sample files), which budgets, how to score and time them."""

    models: list[str] = helpfield([], "run directory of a model to evaluate (repeat for several)", option="model",
                                  append=True, metavar="RUN")
    samples: list[str] = helpfield([], "evaluate a JSON-lines file from `didi sample --out` without its model "
                                       "(repeatable; files of one model and settings that differ only in their "
                                       "seed make one row, mean ± std over the seeds)", append=True, metavar="FILE")
    nfe: list[int] = helpfield([8, 16, 32, 64, 128, 1024], "comma-separated sampling budgets (network calls) of "
                               "diffusion models; an AR model is one row of seq_len - 1 calls", comma_list=True,
                               metavar="N")
    evaluator: str | list[str] | None = helpfield(
        None, "gen-PPL evaluator: an AR run directory or a Hugging Face causal LM name/path available locally, e.g. "
              "gpt2-large (default: the first AR --model; without any, gen-PPL is not computed); repeat it to score "
              "every row under several side by side (the first one is read by the frontiers)", append=True,
        metavar="STR")
    num_samples: int = helpfield(16, "samples per model and budget")
    batch_size: int = helpfield(0, "samples per sampling batch (0 = --num-samples)")
    seq_len: int = helpfield(0, "sample length (0 = each model's training length)")
    prefix_tokens: int = helpfield(0, "conditional rows too: every model continues [BOS] + this many tokens of "
                                      "held-out blocks; gen-PPL of the continuations given their prefixes (0 = off)")
    unconditional: bool = helpfield(True, "the unconditional rows (false: with --prefix-tokens, only the "
                                          "conditional ones)")
    seed: int = helpfield(0, "random seed; batch i of every row uses seed + i")
    sampler: str = helpfield("ancestral", "sampler of the diffusion models (AR models always sample token by "
                                          "token)", choices=SAMPLERS)
    top_p: float = helpfield(1.0, "nucleus sampling: keep the smallest set of tokens whose mass reaches p "
                                  "(1.0 = off)")
    top_k: int | None = helpfield(None, "keep only the k most likely tokens of every draw (default: all)")
    temperature: float = helpfield(1.0, "sampling temperature T of every model: draw from softmax(logits / T)")
    temperatures: list[float] = helpfield([], "a temperature sweep, e.g. 0.7,0.8,0.9,1.0: every model x NFE at "
                                              "each; adds each one's gen-PPL at a matched entropy and the frontier "
                                              "plot (replaces --temperature)", comma_list=True, metavar="T")
    target_entropy: float | None = helpfield(None, "entropy (nats) at which the sweeps are compared (default: the "
                                                   "held-out data's, measured like the samples')")
    frontier_entropy: str = helpfield("sample", "the entropy axis of the sweeps: sample (each sample's unigram "
                                                "entropy) or conditional (Markov-language runs: the samples' "
                                                "empirical H(X'|X); the invalid rate is read there too)",
                                      choices=tuple(FRONTIER_ENTROPIES))
    greedy_tail: bool = helpfield(False, "the samplers' last step takes the argmax (DUO's greedy tail; AR: the "
                                         "last token)", flag=True)
    seeds: list[int] = helpfield([], "repeat sampling with each seed, e.g. 0,1,2: the table shows mean ± std over "
                                     "seeds (default: --seed alone, with bootstrap 95%% intervals over samples)",
                                 comma_list=True, metavar="S")
    bootstrap: int = helpfield(1000, "bootstrap resamples behind the 95%% intervals of a single seed")
    mauve: bool = helpfield(False, f"MAUVE of every row against held-out text (mauve-text; at least "
                                   f"{MIN_MAUVE_SAMPLES} samples per side)", flag=True)
    mauve_features: str = helpfield("auto", "MAUVE features: auto (GPT-2 Large if available locally, else the "
                                            "evaluator), evaluator (its mean-pooled last hidden state) or a Hugging "
                                            "Face model name/path available locally")
    references: bool = helpfield(True, "reference rows: the held-out data (validation blocks scored like samples) "
                                       "and, with no AR --model, the AR evaluator's own samples", negatable=True)
    use_cache: bool = helpfield(True, "disable the samplers' caches (diffusion: call every step; AR: no KV cache)",
                                option="no-cache", flag=False)  # the option is --no-cache
    likelihood: bool = helpfield(True, "validation NELBO bound (diffusion) / perplexity (AR) of every model",
                                 negatable=True)
    data: str | None = helpfield(None, "corpus whose validation split scores the likelihood (default: each "
                                       "model's training corpus)")
    eval_blocks: int = helpfield(64, "validation blocks used for the likelihood")
    eval_batch_size: int = helpfield(8, "sequences per forward pass when scoring (gen-PPL chunks, likelihood)")
    warmup: int = helpfield(1, "untimed warm-up batches before every timed row")
    repeats: int = helpfield(3, "timed full batches per row at least (latency = their median); batches beyond "
                                "--num-samples are timed, not scored")
    weights: str = helpfield("ema", "which weights to sample from: ema or model (raw)", choices=("ema", "model"))
    device: str = helpfield("auto", "auto (cuda > mps > cpu), cpu, cuda, cuda:1, ...")
    precision: str = helpfield("auto", "sampling/likelihood precision: auto (bf16 autocast on CUDA), bf16 or fp32; "
                                       "the evaluator always runs in fp32")
    json: str | None = helpfield(None, "write the report as JSON here: every row (each temperature, each seed's "
                                       "metrics, spreads, MAUVE, per-batch timings), the matched-entropy values "
                                       "and the settings; tables and plots can be regenerated from it. Rows are "
                                       "also saved as they finish in JSON's name with .rows.jsonl (see --resume)")
    resume: bool = helpfield(True, "with --json: take the rows an earlier run with the same settings saved in its "
                                   ".rows.jsonl file (interrupted or finished) instead of computing them again; "
                                   "--no-resume recomputes them all", negatable=True)
    progress: bool = helpfield(True, "a progress bar over each batch's sampling steps on a terminal (off a terminal: "
                                     "a plain line every 30 s of a long batch); the row lines are printed either way")
    plot: str | None = helpfield(None, "draw gen-PPL and entropy against NFE (and, with --temperatures, gen-PPL "
                                       f"against entropy) into this image ({', '.join(PLOT_FORMATS)})")
    rgas: RGASConfig | None = helpfield(None, "RGAS settings with --sampler rgas (default: RGASConfig())")
    confidence: ConfidenceConfig | None = helpfield(None, "settings of the confidence-ordered samplers (--sampler "
                                                          "maskgit, low-confidence or threshold; default: "
                                                          "ConfidenceConfig(order=sampler))")
    plddt: bool = helpfield(False, "protein rows: also report ESMFold's mean pLDDT of the samples (needs ESMFold "
                                   "and its weights; slow without a GPU)", flag=True)
    copy_window: int = helpfield(0, "copy rate: windows of this many tokens found verbatim in the model's training "
                                    "split (0 = 32 for byte and protein tokenizers, 8 for subword ones: 25-32 "
                                    "characters either way)")

    def __post_init__(self) -> None:
        if isinstance(self.evaluator, (list, tuple)):  # one name stays a string (saved configs compare equal)
            names = list(dict.fromkeys(self.evaluator))
            self.evaluator = None if not names else names[0] if len(names) == 1 else names
        if isinstance(self.nfe, str):
            self.nfe = parse_int_list("nfe", self.nfe)
        require(len(self.nfe) > 0 and all(isinstance(n, int) and not isinstance(n, bool) and n >= 1
                                          for n in self.nfe), "nfe", f"must be integers >= 1 (got {self.nfe})")
        self.nfe = sorted(set(self.nfe))
        require(bool(self.models or self.samples), "model", "give at least one --model RUN or --samples FILE")
        require(self.num_samples >= 1, "num_samples", f"must be >= 1 (got {self.num_samples})")
        require(self.batch_size >= 0, "batch_size", f"must be >= 1, or 0 for --num-samples (got {self.batch_size})")
        require(self.seq_len == 0 or self.seq_len >= 2, "seq_len", f"must be >= 2, or 0 for the model's (got "
                f"{self.seq_len})")
        require(self.prefix_tokens >= 0, "prefix_tokens", f"must be >= 0 (got {self.prefix_tokens})")
        require(self.unconditional or self.prefix_tokens > 0, "unconditional", "false leaves no row: add "
                "--prefix-tokens N for the conditional rows")
        require(self.prefix_tokens == 0 or bool(self.models), "prefix_tokens", "needs a --model to continue the "
                "prefixes (sample files are evaluated unconditionally)")
        require(self.sampler in SAMPLERS, "sampler", f"must be one of {', '.join(SAMPLERS)} (got {self.sampler!r})")
        SamplingControls(temperature=self.temperature, top_k=self.top_k, top_p=self.top_p,
                         greedy_tail=self.greedy_tail)  # validates them
        if isinstance(self.temperatures, str):
            self.temperatures = _parse_list("temperatures", self.temperatures, float)
        for t in self.temperatures:
            require(isinstance(t, (int, float)) and math.isfinite(t) and t > 0, "temperatures",
                    f"must be finite numbers > 0 (got {t})")
        self.temperatures = sorted(set(self.temperatures))
        require(not (self.temperatures and self.temperature != 1.0), "temperature",
                "give --temperature or a --temperatures sweep, not both")
        t = self.target_entropy
        require(t is None or (math.isfinite(t) and t > 0), "target_entropy", f"must be a finite number > 0 (got {t})")
        require(t is None or len(self.temperatures) >= 2, "target_entropy",
                "needs a sweep of at least two --temperatures to interpolate in")
        require(self.frontier_entropy in FRONTIER_ENTROPIES, "frontier_entropy",
                f"must be one of {', '.join(FRONTIER_ENTROPIES)} (got {self.frontier_entropy!r})")
        if isinstance(self.seeds, str):
            self.seeds = _parse_list("seeds", self.seeds, int)
        require(all(isinstance(s, int) and s >= 0 for s in self.seeds), "seeds",
                f"must be integers >= 0 (got {self.seeds})")
        require(len(set(self.seeds)) == len(self.seeds), "seeds", f"must be distinct (got {self.seeds})")
        require(self.bootstrap >= 100, "bootstrap", f"must be >= 100 (got {self.bootstrap})")
        require(not (self.mauve and self.models) or self.num_samples >= MIN_MAUVE_SAMPLES, "mauve",
                f"needs at least {MIN_MAUVE_SAMPLES} samples per side (got --num-samples {self.num_samples})")
        require(bool(self.mauve_features), "mauve_features", "must not be empty")
        require(self.copy_window >= 0, "copy_window", f"must be >= 1, or 0 for the default (got {self.copy_window})")
        require(self.eval_blocks >= 1, "eval_blocks", f"must be >= 1 (got {self.eval_blocks})")
        require(self.eval_batch_size >= 1, "eval_batch_size", f"must be >= 1 (got {self.eval_batch_size})")
        require(self.warmup >= 0, "warmup", f"must be >= 0 (got {self.warmup})")
        require(self.repeats >= 1, "repeats", f"must be >= 1 (got {self.repeats})")
        require(self.weights in ("ema", "model"), "weights", f"must be ema or model (got {self.weights!r})")
        require(self.plot is None or Path(self.plot).suffix.lstrip(".").lower() in PLOT_FORMATS, "plot",
                f"{self.plot}: the file name must end in one of .{', .'.join(PLOT_FORMATS)}")
        require(self.rgas is None or self.sampler == "rgas", "sampler", "RGAS settings need --sampler rgas")
        if self.sampler == "rgas" and self.rgas is None:
            self.rgas = RGASConfig()
        require(self.confidence is None or self.sampler in ORDERS, "sampler",
                f"confidence-ordered sampler settings need --sampler {', '.join(ORDERS)}")
        if self.sampler in ORDERS:
            self.confidence = dataclasses.replace(self.confidence or ConfidenceConfig(), order=self.sampler)

    @property
    def sweep(self) -> list[float]:
        """The sampling temperatures: the sweep, else ``[temperature]``."""
        return self.temperatures or [self.temperature]

    @property
    def evaluator_names(self) -> list[str]:
        """The ``--evaluator`` names given (none: the default, the first AR ``--model``)."""
        return [] if self.evaluator is None else [self.evaluator] if isinstance(self.evaluator, str) else \
            list(self.evaluator)

    @property
    def sampler_options(self) -> dict:
        """The ``sampler_options`` of ``model.sample`` for ``sampler``: RGAS's or a confidence-ordered sampler's."""
        if self.sampler == "rgas":
            return dataclasses.asdict(self.rgas)
        if self.sampler in ORDERS:
            return {k: v for k, v in dataclasses.asdict(self.confidence).items() if k != "order"}
        return {}

    @property
    def seed_list(self) -> list[int]:
        """The sampling seeds: ``seeds``, else ``[seed]``."""
        return self.seeds or [self.seed]


def _parse_list(option: str, text: str, kind: type) -> list:
    """``"0.7, 0.8"`` -> ``[0.7, 0.8]`` (``kind`` float or int)."""
    values = []
    for piece in str(text).split(","):
        if piece.strip():
            try:
                values.append(kind(piece.strip()))
            except ValueError:
                raise option_error(option, f"expected comma-separated {'numbers' if kind is float else 'integers'}, "
                                           f"got {piece.strip()!r}") from None
    require(bool(values), option, "give at least one value")
    return values


def _labels(paths: Sequence[str]) -> list[str]:
    """Run directory names, or full paths where two names collide."""
    names = [Path(p).name or str(p) for p in paths]
    return [name if names.count(name) == 1 else str(path) for name, path in zip(names, paths)]


def _extra_calls(results: Sequence[SampleResult]) -> dict[str, list[int]]:
    keys = sorted({k for r in results for k in r.extra_calls})
    return {k: [int(r.extra_calls.get(k, 0)) for r in results] for k in keys}


# ------------------------------------------------------------------------------------------------------- didi eval

def _evaluate_model(path: str, label: str, config: EvalConfig, device: torch.device, scoring: Scoring,
                    store: RowStore, *, conditional: bool = True) -> list[EvalRow]:
    """One row per budget (one for an AR model) and temperature, then, with ``--prefix-tokens`` and ``conditional``
    (not for the evaluator's reference row), the conditional rows (:func:`~.conditional.conditional_rows`). Units
    saved by an earlier run are reused (:class:`~.resume.RowStore`); the model is loaded only for the others."""
    model_key = fingerprint(path)
    budgets = ([None] if read_run_config(Path(path)).kind == "ar" else config.nfe) if config.unconditional else []
    keys: dict[Any, dict[str, Any]] = {(nfe, t): store.key("rows", model=model_key, nfe=nfe, temperature=t)
                                       for nfe in budgets for t in config.sweep}
    if config.prefix_tokens and conditional:
        keys["conditional"] = store.key("conditional", model=model_key, nfe=config.nfe,
                                        prefix_tokens=config.prefix_tokens)
    units = {unit: store.get(key) for unit, key in keys.items()}
    missing = [unit for unit, saved in units.items() if saved is None]
    if len(missing) < len(units):
        log(f"{label}: {len(units) - len(missing)} of {len(units)} unit(s) of rows reused from {store.path}")
    computed = _compute_units(path, label, config, device, scoring, store, keys, missing) if missing else {}
    rows = []
    for unit, saved in units.items():
        for row in computed[unit] if saved is None else saved["rows"]:
            row.model, row.source = label, str(path)
            rows.append(row)
    return rows


def _compute_units(path: str, label: str, config: EvalConfig, device: torch.device, scoring: Scoring,
                   store: RowStore, keys: dict[Any, dict[str, Any]], units: list[Any]) -> dict[Any, list[EvalRow]]:
    """Load the model, its likelihood once, and compute ``units`` (``(nfe, temperature)`` or ``"conditional"``),
    each saved as soon as it is done."""
    baseline = torch.cuda.memory_allocated(device) if device.type == "cuda" else 0
    model = load(path, device=str(device), weights=config.weights, precision=config.precision)
    likelihood = None
    if config.likelihood:
        log(f"{label}: validation likelihood ({config.eval_blocks} blocks at most)")
        likelihood = model_likelihood(model, data=config.data, max_blocks=config.eval_blocks,
                                      batch_size=config.eval_batch_size, seed=config.seed)
    out = {}
    for unit in units:
        if unit == "conditional":
            log(f"{label}: continuing {config.num_samples} held-out {config.prefix_tokens}-token prefixes")
            out[unit] = conditional_rows(model, label, str(path), validation_blocks(model, config.data), config,
                                         scoring, likelihood, copy=scoring.copy_index(path))
        else:
            out[unit] = [sample_row(model, label, path, config, scoring, *unit, likelihood=likelihood,
                                    memory_baseline=baseline)]
        store.put(keys[unit], out[unit])
    del model
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return out


def sample_row(model: Model, label: str, path: str, config: EvalConfig, scoring: Scoring, nfe: int | None,
               temperature: float, *, likelihood: Likelihood | None, memory_baseline: int = 0) -> EvalRow:
    """One row: ``model`` sampled at ``nfe`` and ``temperature`` with every seed, timed and scored."""
    is_ar = model.kind == "ar"
    protein = model.tokenizer.kind == "protein"
    language = markov_language(path)
    seq_len = config.seq_len or model.seq_len
    batch_size = min(config.batch_size or config.num_samples, config.num_samples)
    sampler = "ancestral" if is_ar else config.sampler
    sampler_options = config.sampler_options if sampler == config.sampler else {}
    seeds = config.seed_list
    stride = max(seeds) - min(seeds) + 1  # batch i of seed s uses s + i * stride: no two batches share a seed
    results, latencies, peaks, per_seed = [], [], [], []
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    for k, seed in enumerate(seeds):
        log(f"{label}: sampling {config.num_samples} x {seq_len} tokens" + ("" if is_ar else f" at {nfe} NFE")
            + (f", T {temperature:g}" if len(config.sweep) > 1 or temperature != 1 else "")
            + (f", seed {seed}" if len(seeds) > 1 else ""))
        timed = timed_sampling(model, num_samples=config.num_samples, batch_size=batch_size, nfe=nfe, seed=seed,
                               seed_stride=stride, warmup=config.warmup if k == 0 else 0,
                               repeats=config.repeats if k == 0 else 0, memory_baseline=memory_baseline,
                               seq_len=seq_len, sampler=sampler, use_cache=config.use_cache, temperature=temperature,
                               top_k=config.top_k, top_p=config.top_p, greedy_tail=config.greedy_tail,
                               progress=config.progress, **sampler_options)
        results += timed.results
        latencies += timed.latencies
        peaks.append(timed.peak_memory_mib)
        tokens = timed.samples
        markov = None if language is None else (language, markov_rows(model.tokenizer, tokens.tolist()))
        per_seed.append(scoring.seed_metrics(decode_as_sampled(model, tokens), tokens.tolist(), seed, protein=protein,
                                             markov=markov, copy=scoring.copy_index(path)))
    row = EvalRow(model=label, kind=model.kind, sampler=results[0].sampler, nfe=nfe, source=str(path),
                  num_samples=config.num_samples, seq_len=seq_len, generated_tokens=seq_len - 1 if is_ar else seq_len,
                  nfe_per_batch=[r.nfe for r in results], extra_calls=_extra_calls(results),
                  batch_sizes=[r.tokens.shape[0] for r in results], latencies_s=latencies,
                  timing=f"measured here: {len(results)} timed batch(es) after {config.warmup} warm-up"
                  + ("" if load is None else f"; load average {load:.2f} when the row started"),
                  likelihood=likelihood, peak_memory_mib=None if peaks[0] is None else max(peaks),
                  temperature=temperature)
    scoring.fill(row, per_seed, protein=protein)
    return row


def _file_rows(files: Sequence[SampleFile], scoring: Scoring, store: RowStore) -> list[EvalRow]:
    """One row per group of sample files (:func:`~.files.group_files`), reused when saved."""
    rows = []
    for group in group_files(files):
        key = store.key("samples", files=[fingerprint(path) for path, _ in group])
        saved = store.get(key)
        if saved is None:
            saved = {"rows": [file_row(group, scoring)]}
            store.put(key, saved["rows"])
        rows += saved["rows"]
    return rows


def _row_name(row: EvalRow) -> str:
    return row.model if row.nfe is None else f"{row.model} @ {row.nfe} NFE"


def _set_speedups(rows: list[EvalRow]) -> str | None:
    """Speed-up = tokens/s relative to the AR row (the paper's comparison), else to the first model at its
    largest budget (teacher@1024 in the paper's 64x), at the temperature closest to 1. Only rows timed at the
    reference's full-batch size get one (tokens/s depends on the batch size). Returns the reference's name."""
    timed = [r for r in rows if r.tokens_per_s]
    if not timed:
        return None
    ar = [r for r in timed if r.kind == "ar"]
    candidates = ar or [r for r in timed if r.model == timed[0].model]
    reference = min(candidates, key=lambda r: (abs((r.temperature or 1.0) - 1.0), -(r.nfe or 0)))
    batch = max(reference.batch_sizes)
    for r in timed:
        if max(r.batch_sizes) == batch:
            r.speedup = r.tokens_per_s / reference.tokens_per_s
    return _row_name(reference)


def _describe_device(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} ({device})"
    return f"{device.type} ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def _peak_rss_mib() -> float | None:
    try:
        import resource
    except ImportError:
        return None
    scale = 1.0 if sys.platform == "darwin" else 1024.0  # ru_maxrss: bytes on macOS, KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**20


def _evaluator_as_model(config: EvalConfig, kinds: Sequence[str], evaluator_name: str | None) -> str | None:
    """The AR reference row of ``--references``: the evaluator's own samples, when it is a didi AR run and no AR
    ``--model`` is given (that one is the reference then), and unconditional rows are evaluated."""
    if (not config.references or not config.unconditional or not evaluator_name or "ar" in kinds
            or not is_run_dir(evaluator_name)):
        return None
    return evaluator_name if read_run_config(Path(evaluator_name)).kind == "ar" else None


def evaluate(config: EvalConfig) -> EvalReport:
    """Run ``didi eval``: every ``--model`` at every budget and temperature (with every seed), then every
    ``--samples`` file, into a report; with ``--references`` (default) the AR evaluator's own samples and a last
    row scoring held-out data alike; with temperature sweeps, each model x NFE's gen-PPL at the target entropy
    (:func:`~.report.compute_frontiers`).

    The evaluator, ESMFold, the held-out data and the MAUVE features are loaded before sampling, so bad options
    fail before any work.
    """
    device = pick_device(config.device)
    runs = [read_run_config(Path(p)) for p in config.models]  # a bad run directory or sample file fails here, early
    files = [(Path(path), read_samples(Path(path))) for path in config.samples]
    _check_inputs(config, runs, files)
    inputs = _load_scoring(config, runs, files, device)
    heldout = inputs.heldout
    store = RowStore.for_config(config, [e.name for e in inputs.scoring.evaluators],
                                heldout=None if heldout is None else [heldout.source, len(heldout.texts),
                                                                      len(heldout.reference)])
    try:
        rows, data_row = _rows(config, runs, files, device, inputs, store)
    except KeyboardInterrupt:
        if store.path is not None and store.units:
            log(f"interrupted: {len(store.units)} finished unit(s) of rows are kept in {store.path}; the same "
                "command resumes from them")
        raise
    reference = _set_speedups([r for r in rows if r.prefix_tokens is None])
    axis = FRONTIER_ENTROPIES[config.frontier_entropy]
    target = _target_entropy(config, rows, data_row, axis)
    frontiers = compute_frontiers(rows, None if target is None else target["value"], axis=axis)
    return EvalReport(rows=rows, meta=_meta(config, device, inputs), reference=reference,
                      target_entropy=target if frontiers else None, frontiers=frontiers)


def _rows(config: EvalConfig, runs: Sequence[RunConfig], files: Sequence[SampleFile], device: torch.device,
          inputs: _Inputs, store: RowStore) -> tuple[list[EvalRow], EvalRow | None]:
    """Every row, in the report's order (models, the evaluator's own samples, sample files, the data row), and the
    data row; each unit saved in ``store`` as it finishes, or taken from it."""
    models = list(zip(config.models, _labels(config.models)))
    ar_reference = _evaluator_as_model(config, [run.kind for run in runs], inputs.evaluator_name)
    if ar_reference is not None:
        models.append((ar_reference, f"{Path(ar_reference).name} (evaluator)"))
    rows: list[EvalRow] = []
    for path, label in models:
        rows += _evaluate_model(path, label, config, device, inputs.scoring, store, conditional=path != ar_reference)
    rows += _file_rows(files, inputs.scoring, store)
    heldout = inputs.heldout
    if heldout is None or not config.references or not config.unconditional:
        return rows, None
    key = store.key("data", run=None if heldout.run_dir is None else fingerprint(heldout.run_dir))
    saved = store.get(key)
    if saved is None:
        saved = {"rows": [data_row_of(heldout, inputs.scoring)]}
        saved["rows"][0].source = describe_heldout(heldout, heldout.texts)
        store.put(key, saved["rows"])
    return [*rows, *saved["rows"]], saved["rows"][0]


@dataclass
class _Inputs:
    """What scores every row, loaded before any sampling: the scoring, the held-out data, and what the meta
    records of them."""

    scoring: Scoring
    evaluator_name: str | None
    heldout: HeldOut | None
    mauve_meta: dict[str, Any] | None


def _check_inputs(config: EvalConfig, runs: Sequence[RunConfig], files: Sequence[tuple[Path, list[dict[str, Any]]]]
                  ) -> None:
    """The checks that need the run configurations and sample files (the others are :class:`EvalConfig`'s)."""
    if config.prefix_tokens:
        check_prefix_tokens(config, runs)
    if config.frontier_entropy == "conditional":
        runs_with_files = [*config.models, *(str(records[0].get("model") or "") for _, records in files)]
        require(any(p and is_run_dir(p) and markov_language(p) is not None for p in runs_with_files),
                "frontier_entropy", "conditional needs a Markov-language run (markov.json in its directory, from "
                "--data markov): no --model, and no model of a --samples file, has one")
    for path, run in zip(config.models, runs):
        if config.sampler == "rgas" and run.kind != "ar":
            require_discriminator((Path(path) / DISCRIMINATOR_FILE).is_file(), path)
    for path, records in files if config.mauve else []:
        require(len(records) >= MIN_MAUVE_SAMPLES, "mauve", f"needs at least {MIN_MAUVE_SAMPLES} samples per side "
                                                            f"(got {len(records)} in {path})")


def _load_scoring(config: EvalConfig, runs: Sequence[RunConfig], files: Sequence[tuple[Path, list[dict[str, Any]]]],
                  device: torch.device) -> _Inputs:
    """Load the evaluator, the protein reference (and ESMFold), the held-out data and the MAUVE features."""
    names = config.evaluator_names or [p for p, run in zip(config.models, runs) if run.kind == "ar"][:1]
    evaluators = []
    for name in names:
        log(f"loading evaluator {name}")
        evaluators.append(load_evaluator(name, device))
    if not names:
        log("no --evaluator and no AR --model: generative perplexity is not computed")
    for name in names:
        for path, run in zip(config.models, runs):
            reason = held_out_overlap(read_run_config(Path(name)), run) if is_run_dir(name) else None
            if reason:
                log(f"warning: the evaluator {name} may have seen {path}'s held-out text ({reason}): its data row "
                    "and gen-PPL of text near it are not held out")
    evaluator = evaluators[0] if evaluators else None
    proteins = protein_scoring(config, runs, files, device)
    n = max([config.num_samples if config.models else 0] + [len(records) for _, records in files])
    references = config.references and config.unconditional  # reference rows for the unconditional ones
    heldout = heldout_data(config, runs, files, proteins, n) if (references or config.mauve) else None
    featurizer, reference_features, mauve_meta = None, None, None
    if config.mauve:
        require(heldout is not None, "mauve", "needs held-out text: no --model or sample file records a corpus "
                                              "with validation data (pass --data)")
        require(len(heldout.reference) >= MIN_MAUVE_SAMPLES, "mauve",
                f"needs at least {MIN_MAUVE_SAMPLES} samples per side (got {len(heldout.reference)} held-out "
                f"sequences: {heldout.source})")
        spec = "evaluator" if proteins is not None and config.mauve_features == "auto" else config.mauve_features
        featurizer = load_mauve_features(spec, evaluator, device, batch_size=config.eval_batch_size)
        log(f"MAUVE features: {featurizer.name}")
        reference_features = featurizer.features(heldout.reference)
        mauve_meta = {"features": featurizer.name, "reference": describe_heldout(heldout, heldout.reference)
                      + ("" if heldout.disjoint else " (the data row's own)"),
                      "package": f"mauve-text {_package_version('mauve-text')}", "reference_size":
                      len(heldout.reference)}
        fewest = min([len(heldout.reference), *([config.num_samples] if config.models else []),
                      *(len(records) for _, records in files)])
        if fewest < RELIABLE_MAUVE_SAMPLES:
            log(f"warning: MAUVE on {fewest} samples per side (fewer than {RELIABLE_MAUVE_SAMPLES}) varies a lot "
                f"from one set of samples to the next; the table marks such values with *")
    scoring = Scoring(evaluators=evaluators, proteins=proteins, featurizer=featurizer,
                      reference_features=reference_features, eval_batch_size=config.eval_batch_size,
                      bootstrap=config.bootstrap, seed=config.seed, copy_window=config.copy_window)
    return _Inputs(scoring=scoring, evaluator_name=names[0] if names else None, heldout=heldout,
                   mauve_meta=mauve_meta)


def _target_entropy(config: EvalConfig, rows: Sequence[EvalRow], data_row: EvalRow | None, axis: str
                    ) -> dict[str, Any] | None:
    """Where the sweeps are compared: ``--target-entropy``, else the data row's entropy (or ``H(X'|X)``), else the
    Markov chain's entropy rate on the conditional axis."""
    if config.target_entropy is not None:
        return {"value": config.target_entropy, "source": "--target-entropy"}
    if data_row is not None and data_row.value(axis) is not None:
        what = "entropy" if axis == "entropy" else "H(X'|X)"
        return {"value": data_row.value(axis), "source": f"the {what} of the {data_row.model} row"}
    if axis == "conditional_entropy" and any(r.markov for r in rows):
        rate = next(r.markov["chain_entropy_rate"] for r in rows if r.markov)
        return {"value": rate, "source": "the Markov chain's entropy rate"}
    return None


def _meta(config: EvalConfig, device: torch.device, inputs: _Inputs) -> dict[str, Any]:
    """The report's settings and provenance: versions, device, evaluator, references, MAUVE, the config."""
    evaluator, proteins, heldout = inputs.scoring.evaluator, inputs.scoring.proteins, inputs.heldout
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "didi_version": __version__, "torch_version": torch.__version__, "device": _describe_device(device),
        "evaluator": None if evaluator is None else {"name": evaluator.name, "context_len": evaluator.context_len},
        "evaluators": [{"name": e.name, "context_len": e.context_len} for e in inputs.scoring.evaluators],
        "protein_reference": None if proteins is None else {"name": proteins.reference.name,
                                                            "source": proteins.reference.source},
        "heldout": None if heldout is None else {
            "name": heldout.name, "source": heldout.source, "disjoint": heldout.disjoint,
            "row": "the first " + describe_heldout(heldout, heldout.texts)},
        "mauve": inputs.mauve_meta, "process_peak_rss_mib": _peak_rss_mib(), "config": dataclasses.asdict(config),
    }


def frontier_warning(report: EvalReport) -> str | None:
    """The warning for a sweep whose target entropy no model x NFE's temperatures bracket (every matched value is
    "not reached"); ``None`` when some frontier reaches it, or there is none."""
    if not report.frontiers or report.target_entropy is None:
        return None
    if any(f.get("bracket") is not None for f in report.frontiers):
        return None
    axis = frontier_axis(report.frontiers[0])
    entropies = [p[axis] for f in report.frontiers for p in f["points"]]
    target = report.target_entropy
    what = "entropies" if axis == "entropy" else "H(X'|X)"
    return (f"--target-entropy {target['value']:.3f} nats ({target['source']}) is bracketed by no model x NFE: "
            f"their {what} span {min(entropies):.3f}-{max(entropies):.3f} over --temperatures, every matched value "
            "is 'not reached'; widen the sweep")


def _package_version(name: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return "?"
