"""``didi eval``: :func:`evaluate` runs the metrics of :mod:`.metrics` over models x NFE budgets (or over sample
files) into an :class:`~.report.EvalReport`, printed by :func:`~.report.format_table`, saved by
:func:`~.report.write_report` and drawn by :func:`~.report.plot_report`.

Per model: its validation likelihood (:func:`model_likelihood` on :func:`validation_blocks`), then per budget
timed sampling, entropy and gen-PPL. Proteins (models with the amino-acid tokenizer):
:func:`didi.data.protein.protein_metrics` of the decoded sequences (residue entropy, composition divergence from
the natural sequences of :func:`protein_reference`, distinct and low-complexity fractions, lengths), optionally
ESMFold pLDDT, and a row scoring those natural sequences alike. Markov-language runs (``markov.json`` in the run
directory, written by ``--data markov``): the exact metrics of :func:`~.metrics.markov_scores` for every row of the
run, for sample files it wrote and for the held-out data row of its corpus; ``--frontier-entropy conditional`` reads
the temperature frontiers on their conditional entropy ``H(X'|X)``.
"""
from __future__ import annotations

import dataclasses
import datetime
import math
import platform
import statistics
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ...config import helpfield, parse_int_list
from ...data.markov import MarkovLanguage
from ...data.protein import (
    SWISSPROT_COMPOSITION,
    amino_acid_composition,
    esmfold_scorer,
    protein_metrics,
    sequence_entropy,
)
from ...data.tokenizer import Tokenizer, load_tokenizer
from ...diffusion.rgas import RGASConfig
from ...diffusion.sampling import SampleResult, SamplingControls
from ...errors import option_error, require
from ...interop.sample_files import read_samples
from ...models.load import DISCRIMINATOR_FILE
from ...pipelines.ar import ARPipeline
from ...pipelines.diffusion import SAMPLERS, require_discriminator
from ...pipelines.load import load
from ...runtime.checkpoint import RunConfig, is_run_dir, read_run_config
from ...runtime.devices import pick_device
from ...version import __version__
from .conditional import check_prefix_tokens, conditional_rows
from .metrics import (
    MARKOV_METRICS,
    MIN_MAUVE_SAMPLES,
    Evaluator,
    Featurizer,
    Likelihood,
    Model,
    Perplexity,
    ar_nll,
    bootstrap_interval,
    diffusion_nelbo,
    generative_perplexity,
    load_evaluator,
    load_mauve_features,
    markov_bootstrap,
    markov_language,
    markov_rows,
    markov_scores,
    mauve_score,
    mean_sample_entropy,
    mean_std,
    sample_entropy,
    timed_sampling,
)
from .report import EvalReport, EvalRow, compute_frontiers, frontier_axis

FRONTIER_ENTROPIES = {"sample": "entropy", "conditional": "conditional_entropy"}  # --frontier-entropy -> row metric
PLOT_FORMATS = ("png", "pdf", "svg", "jpg", "jpeg")


@dataclass
class EvalConfig:
    """Options of ``didi eval``: which models (or sample files), which budgets, how to score and time them."""

    models: list[str] = helpfield([], "run directories to sample and evaluate side by side")
    samples: list[str] = helpfield([], "JSON-lines files from `didi sample --out` to evaluate without a model")
    nfe: list[int] = helpfield([8, 16, 32, 64, 128, 1024], "sampling budgets (network calls) of diffusion models; "
                                                          "an AR model is one row of seq_len - 1 calls")
    evaluator: str | None = helpfield(None, "gen-PPL evaluator: an AR run directory or a Hugging Face causal LM "
                                            "name/path available locally, e.g. gpt2-large (default: the first AR "
                                            "--model; without any, gen-PPL is not computed)")
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
                                              "plot (replaces --temperature)")
    target_entropy: float | None = helpfield(None, "entropy (nats) at which the sweeps are compared (default: the "
                                                   "held-out data's, measured like the samples')")
    frontier_entropy: str = helpfield("sample", "the entropy axis of the sweeps: sample (each sample's unigram "
                                                "entropy) or conditional (Markov-language runs: the samples' "
                                                "empirical H(X'|X); the invalid rate is read there too)",
                                      choices=tuple(FRONTIER_ENTROPIES))
    greedy_tail: bool = helpfield(False, "the samplers' last step takes the argmax (DUO's greedy tail; AR: the "
                                         "last token)")
    seeds: list[int] = helpfield([], "repeat sampling with each seed, e.g. 0,1,2: the table shows mean ± std over "
                                     "seeds (default: --seed alone, with bootstrap 95%% intervals over samples)")
    bootstrap: int = helpfield(1000, "bootstrap resamples behind the 95%% intervals of a single seed")
    mauve: bool = helpfield(False, f"MAUVE of every row against held-out text (mauve-text; at least "
                                   f"{MIN_MAUVE_SAMPLES} samples per side)")
    mauve_features: str = helpfield("auto", "MAUVE features: auto (GPT-2 Large if available locally, else the "
                                            "evaluator), evaluator (its mean-pooled last hidden state) or a Hugging "
                                            "Face model name/path available locally")
    references: bool = helpfield(True, "reference rows: the held-out data (validation blocks scored like samples) "
                                       "and, with no AR --model, the AR evaluator's own samples")
    use_cache: bool = helpfield(True, "sampler caches: diffusion skips calls while no token changed; AR KV cache")
    likelihood: bool = helpfield(True, "validation NELBO bound (diffusion) or perplexity (AR) of every model")
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
                                       "and the settings; tables and plots can be regenerated from it")
    plot: str | None = helpfield(None, "draw gen-PPL and entropy against NFE (and, with --temperatures, gen-PPL "
                                       f"against entropy) into this image ({', '.join(PLOT_FORMATS)})")
    rgas: RGASConfig | None = helpfield(None, "RGAS settings with --sampler rgas (default: RGASConfig())")
    plddt: bool = helpfield(False, "protein rows: also report ESMFold's mean pLDDT of the samples (needs ESMFold "
                                   "and its weights; slow without a GPU)")

    def __post_init__(self) -> None:
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

    @property
    def sweep(self) -> list[float]:
        """The sampling temperatures: the sweep, else ``[temperature]``."""
        return self.temperatures or [self.temperature]

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


def _log(message: str) -> None:
    print(f"[didi eval] {message}", file=sys.stderr, flush=True)


def _labels(paths: Sequence[str]) -> list[str]:
    """Run directory names, or full paths where two names collide."""
    names = [Path(p).name or str(p) for p in paths]
    return [name if names.count(name) == 1 else str(path) for name, path in zip(names, paths)]


def _extra_calls(results: Sequence[SampleResult]) -> dict[str, list[int]]:
    keys = sorted({k for r in results for k in r.extra_calls})
    return {k: [int(r.extra_calls.get(k, 0)) for r in results] for k in keys}


# ------------------------------------------------------------------------------------------------------ likelihood

def _validation_split(config: RunConfig, tokenizer: Tokenizer, seq_len: int, data: str | None) -> tuple[str, Any]:
    """``(corpus, blocks)``: the validation blocks of a run's training corpus (or of ``data``), packed with its
    tokenizer and packing at ``seq_len``; ``corpus`` is ``""`` and ``blocks`` ``None`` if the run records none."""
    from ...data.corpora import DataConfig, prepare_data

    settings = {k: v for k, v in config.data.items() if k in DataConfig.__dataclass_fields__}
    if data:
        settings["data"] = data
    if "data" not in settings:
        return "", None
    settings["seq_len"] = seq_len
    return settings["data"], prepare_data(DataConfig(**settings), tokenizer=tokenizer).valid


def validation_blocks(model: Model, data: str | None = None) -> Any:
    """The validation split (:class:`didi.data.corpora.TokenBlocks`) of the model's training corpus, or of ``data``,
    packed with the model's tokenizer at its training length."""
    corpus, valid = _validation_split(model.config, model.tokenizer, model.seq_len, data)
    require(valid is not None, "data", f"{model.path} does not record its training corpus; pass --data")
    require(len(valid) > 0, "data", f"{corpus}: the corpus has no validation blocks")
    return valid


def model_likelihood(model: Model, *, data: str | None = None, max_blocks: int = 64, batch_size: int = 8,
                     seed: int = 0) -> Likelihood:
    """Validation NELBO bound (diffusion) or validation perplexity (AR) of a loaded model."""
    blocks = validation_blocks(model, data)
    if isinstance(model, ARPipeline):
        return ar_nll(model, blocks, batch_size=batch_size, max_blocks=max_blocks)
    return diffusion_nelbo(model, blocks, batch_size=batch_size, max_blocks=max_blocks, seed=seed)


# -------------------------------------------------------------------------------------------------------- proteins

@dataclass
class ProteinReference:
    """The natural sequences protein samples are compared with.

    ``sequences``: the validation blocks of a protein model's corpus, decoded like samples (packed and cropped as
    the model was trained, so a perfect model matches their lengths too); ``composition``: their pooled residue
    composition, or the built-in UniProtKB/Swiss-Prot table when there is no validation data (no ``sequences``).
    """

    name: str
    source: str
    composition: dict[str, float]
    sequences: list[str]


def protein_reference(run_dir: Path | None, data: str | None = None) -> ProteinReference:
    """The :class:`ProteinReference` of a protein run: its training corpus (or ``data``) at its training length;
    the built-in composition if there is no run, or it records no corpus, or the corpus has no validation split."""
    corpus, blocks, seq_len, tokenizer = "", None, 0, None
    if run_dir is not None:
        config = read_run_config(run_dir)
        tokenizer = load_tokenizer(run_dir, config.tokenizer)
        seq_len = int(config.training.get("seq_len", config.model.max_seq_len))
        corpus, blocks = _validation_split(config, tokenizer, seq_len, data)
    if blocks is None or len(blocks) == 0:
        why = "no protein run" if run_dir is None else \
            f"{run_dir} records no corpus" if blocks is None else f"{corpus} has no validation split"
        _log(f"{why}: amino-acid composition is compared with the built-in UniProtKB/Swiss-Prot table")
        return ProteinReference(name="", source="UniProtKB/Swiss-Prot composition (built-in table)",
                                composition=SWISSPROT_COMPOSITION, sequences=[])
    sequences = [tokenizer.decode(row) for row in np.asarray(blocks.array).tolist()]
    return ProteinReference(name=f"{Path(corpus).name} (validation)",
                            source=f"the {len(sequences)} validation sequences of {corpus} "
                                   f"({seq_len}-token blocks, as trained)",
                            composition=amino_acid_composition(sequences), sequences=sequences)


@dataclass
class ProteinScoring:
    """The protein metrics of ``didi eval``: against ``reference``, with ESMFold pLDDT when ``plddt`` is given."""

    reference: ProteinReference
    plddt: Callable[[Sequence[str]], list[float]] | None = None

    def score(self, row: EvalRow, texts: Sequence[str]) -> None:
        """Set ``row.protein`` (:func:`didi.data.protein.protein_metrics`, plus the mean ``plddt`` over the non-empty
        sequences) and make ``row.entropy`` the residue entropy (special tokens such as PAD excluded)."""
        metrics = protein_metrics(texts, self.reference.composition)
        if self.plddt is not None:
            folded = [t for t in texts if t]
            metrics["plddt"] = statistics.fmean(self.plddt(folded)) if folded else math.nan
        row.protein = metrics
        row.entropy = metrics["entropy"]


def _protein_scoring(config: EvalConfig, runs: Sequence[RunConfig], files: Sequence[tuple[Path, list[dict[str, Any]]]],
                     device: torch.device) -> ProteinScoring | None:
    """Protein scoring if the report has protein models or protein sample files, else ``None``. The reference
    comes from the first protein model, else from the run recorded in the first protein sample file."""
    models = [Path(p) for p, run in zip(config.models, runs) if run.tokenizer.get("type") == "protein"]
    recorded = [str(records[0].get("model") or "") for _, records in files
                if records[0].get("tokenizer") == "protein"]
    if not models and not recorded:
        require(not config.plddt, "plddt", "pLDDT scores proteins: no --model or --samples here is a protein model")
        return None
    candidates = models + [Path(m) for m in recorded if m and is_run_dir(m)]
    reference = protein_reference(candidates[0] if candidates else None, config.data)
    if config.plddt:
        _log("loading ESMFold for pLDDT")
    return ProteinScoring(reference=reference, plddt=esmfold_scorer(device) if config.plddt else None)


# ------------------------------------------------------------------------------------------------ held-out data

@dataclass
class HeldOut:
    """Held-out text the samples are compared with: ``texts`` (and their ``tokens``, ``None`` for proteins, whose
    entropy is over residues) make the data reference row; ``reference`` is the MAUVE reference set, disjoint from
    ``texts`` when the split holds enough sequences (``disjoint``); ``markov``: the language of a Markov corpus and
    ``texts`` decoded for it (:func:`~.metrics.markov_rows`)."""

    name: str
    source: str
    texts: list[str]
    tokens: list[list[int]] | None
    reference: list[str]
    disjoint: bool
    markov: tuple[MarkovLanguage, list[str]] | None = None


def _split_heldout(name: str, source: str, texts: list[str], tokens: list[list[int]] | None, n: int) -> HeldOut:
    """The first ``n`` sequences make the data row, the next ``n`` the MAUVE reference (the same ones if the split
    is too small for two sets)."""
    disjoint = len(texts) >= 2 * n
    reference = texts[n:2 * n] if disjoint else texts[:n]
    return HeldOut(name=name, source=source, texts=texts[:n], tokens=None if tokens is None else tokens[:n],
                   reference=reference, disjoint=disjoint)


def _describe_heldout(heldout: HeldOut, texts: Sequence[str]) -> str:
    return f"{len(texts)} sequences of {heldout.source}"


def heldout_data(config: EvalConfig, runs: Sequence[RunConfig], files: Sequence[tuple[Path, list[dict[str, Any]]]],
                 proteins: ProteinScoring | None, n: int) -> HeldOut | None:
    """The validation blocks of the first model's training corpus (diffusion models first; or of ``--data``),
    packed with its tokenizer at the sample length, in a seeded random order; proteins: the natural sequences of
    :func:`protein_reference`. ``None`` when no run records a corpus."""
    if proteins is not None:
        ref = proteins.reference
        if not ref.sequences:
            return None
        return _split_heldout(ref.name, ref.source.removeprefix("the "), list(ref.sequences), None, n)
    candidates = sorted(((Path(p), run) for p, run in zip(config.models, runs)), key=lambda c: c[1].kind == "ar")
    candidates += [(Path(m), read_run_config(Path(m))) for m in
                   (str(records[0].get("model") or "") for _, records in files) if m and is_run_dir(m)]
    for path, run in candidates:
        tokenizer = load_tokenizer(path, run.tokenizer)
        seq_len = config.seq_len or int(run.training.get("seq_len", run.model.max_seq_len))
        corpus, blocks = _validation_split(run, tokenizer, seq_len, config.data)
        if blocks is None or len(blocks) == 0:
            continue
        order = np.random.default_rng(config.seed).permutation(len(blocks))[:2 * n]
        tokens = np.asarray(blocks.array)[order].tolist()
        texts = [tokenizer.decode(row) for row in tokens]
        heldout = _split_heldout(f"data ({Path(corpus).name} validation)",
                                 f"the {len(blocks)} validation blocks ({seq_len} tokens) of {corpus}, in a seeded "
                                 "random order", texts, tokens, n)
        language = markov_language(path) if config.data in (None, run.data.get("data")) else None
        if language is not None:  # the run's own corpus: the language of its markov.json
            heldout.markov = (language, markov_rows(tokenizer, heldout.tokens))
        return heldout
    _log("no run records a corpus with validation data (pass --data): no held-out reference row")
    return None


# ---------------------------------------------------------------------------------------------------- scoring

@dataclass
class Scoring:
    """Everything that scores a set of samples: gen-PPL under the evaluator, entropies, protein metrics, MAUVE
    against the held-out reference, and the spread over seeds (or a bootstrap interval over samples)."""

    evaluator: Evaluator | None
    proteins: ProteinScoring | None
    featurizer: Featurizer | None
    reference_features: np.ndarray | None
    eval_batch_size: int
    bootstrap: int
    seed: int

    def seed_metrics(self, texts: Sequence[str], tokens: Sequence[Sequence[int]] | None, seed: int | None, *,
                     protein: bool, mauve: bool = True, markov: tuple[MarkovLanguage, Sequence[str]] | None = None
                     ) -> dict[str, Any]:
        """Metrics of one seed's samples: ``perplexity`` (:class:`Perplexity`), per-sample ``entropies``, ``mauve``,
        and with ``markov`` = (language, the samples decoded by :func:`~.metrics.markov_rows`) the exact metrics
        (:class:`~.metrics.MarkovScores`)."""
        out: dict[str, Any] = {"seed": seed, "texts": list(texts), "perplexity": None, "mauve": None,
                               "markov": None if markov is None else markov_scores(*markov)}
        if self.evaluator is not None:
            out["perplexity"] = generative_perplexity(texts, self.evaluator, batch_size=self.eval_batch_size)
        if protein:
            out["entropies"] = [sequence_entropy(t) for t in texts]  # residues, as protein_metrics
        elif tokens is not None:
            out["entropies"] = [sample_entropy(t) for t in tokens]
        else:
            out["entropies"] = []
        if mauve and self.featurizer is not None:
            out["mauve"] = mauve_score(self.featurizer.features(texts), self.reference_features)
        return out

    def fill(self, row: EvalRow, per_seed: list[dict[str, Any]], *, protein: bool) -> None:
        """Set the row's metrics from its seeds: pooled gen-PPL, mean entropy, MAUVE, the Markov metrics (means over
        seeds), and their spreads."""
        row.seeds = [m["seed"] for m in per_seed if m["seed"] is not None]
        ppls = [m["perplexity"] for m in per_seed if m["perplexity"] is not None]
        if ppls:
            row.gen_ppl = Perplexity.pooled(ppls)
        row.sample_entropy = [e for m in per_seed for e in m["entropies"]]
        if protein:
            self.proteins.score(row, [t for m in per_seed for t in m["texts"]])
        elif row.sample_entropy:
            row.entropy = float(np.mean(row.sample_entropy))
        row.per_seed = [{"seed": m["seed"], "gen_ppl": m["perplexity"].ppl if m["perplexity"] else None,
                         "entropy": float(np.mean(m["entropies"])) if m["entropies"] else None,
                         "mauve": m["mauve"], **_markov_fields(m.get("markov"))} for m in per_seed]
        markov = [m["markov"] for m in per_seed if m.get("markov") is not None]
        row.spread = {}
        for metric in ("gen_ppl", "entropy", "mauve", *MARKOV_METRICS):
            values = [m[metric] for m in row.per_seed if m.get(metric) is not None]
            if not values:
                continue
            mean, std = mean_std(values)
            spread: dict[str, Any] = {"mean": mean, "std": std, "n_seeds": len(values)}
            if len(values) == 1 and metric not in ("mauve", "conditional_entropy"):
                if metric == "gen_ppl":
                    low, high = bootstrap_interval(row.gen_ppl.sample_nll, row.gen_ppl.sample_tokens,
                                                   transform=np.exp, resamples=self.bootstrap, seed=self.seed)
                elif metric in MARKOV_METRICS:
                    scores = next(m for m in markov if m.metrics["transitions"] > 0)
                    low, high = markov_bootstrap(scores.language, scores.counts, resamples=self.bootstrap,
                                                 seed=self.seed)[metric]
                else:
                    low, high = bootstrap_interval(row.sample_entropy, resamples=self.bootstrap, seed=self.seed)
                spread.update(low=low, high=high, method=f"bootstrap 95% over samples ({self.bootstrap} resamples)")
            else:
                spread["method"] = f"std over {len(values)} seeds" if len(values) > 1 else "one seed"
                if len(values) == 1 and metric == "conditional_entropy":
                    spread["method"] += " (no bootstrap interval: a plug-in entropy is biased under resampling)"
            row.spread[metric] = spread
        row.mauve = row.spread.get("mauve", {}).get("mean")
        if markov:
            row.markov = {metric: row.spread.get(metric, {}).get("mean") for metric in MARKOV_METRICS}
            row.markov.update(chain_entropy_rate=markov[0].metrics["chain_entropy_rate"],
                              transitions=float(sum(m.metrics["transitions"] for m in markov)))


def _markov_fields(scores: Any) -> dict[str, float | None]:
    """The per-seed record of the exact Markov metrics (nothing for other corpora; ``None`` for samples without a
    single letter-to-letter transition, which would otherwise score a perfect 0 % invalid)."""
    if scores is None:
        return {}
    measured = scores.metrics["transitions"] > 0
    return {**{k: scores.metrics[k] if measured else None for k in MARKOV_METRICS},
            "transitions": scores.metrics["transitions"]}


def _data_row(heldout: HeldOut, scoring: Scoring) -> EvalRow:
    """The held-out data scored like samples (no sampling, no timing)."""
    seq_len = len(heldout.tokens[0]) if heldout.tokens else None
    row = EvalRow(model=heldout.name, kind="data", sampler="n/a", nfe=None, source=heldout.source,
                  num_samples=len(heldout.texts), seq_len=seq_len, generated_tokens=0, nfe_per_batch=[],
                  extra_calls={}, batch_sizes=[], latencies_s=[], timing="not sampled", temperature=None)
    protein = heldout.tokens is None
    scoring.fill(row, [scoring.seed_metrics(heldout.texts, heldout.tokens, None, protein=protein,
                                            mauve=heldout.disjoint, markov=heldout.markov)], protein=protein)
    return row


# ------------------------------------------------------------------------------------------------------- didi eval

def _evaluate_model(path: str, label: str, config: EvalConfig, device: torch.device, scoring: Scoring, *,
                    conditional: bool = True) -> list[EvalRow]:
    """Likelihood once, then one row per budget (one for an AR model) and temperature: sample with every seed,
    time, score; then, with ``--prefix-tokens`` and ``conditional`` (not for the evaluator's reference row), the
    conditional rows (:func:`~.conditional.conditional_rows`)."""
    baseline = torch.cuda.memory_allocated(device) if device.type == "cuda" else 0
    model = load(path, device=str(device), weights=config.weights, precision=config.precision)
    likelihood = None
    if config.likelihood:
        _log(f"{label}: validation likelihood ({config.eval_blocks} blocks at most)")
        likelihood = model_likelihood(model, data=config.data, max_blocks=config.eval_blocks,
                                      batch_size=config.eval_batch_size, seed=config.seed)
    is_ar = model.kind == "ar"
    protein = model.tokenizer.kind == "protein"
    language = markov_language(path)
    seq_len = config.seq_len or model.seq_len
    batch_size = min(config.batch_size or config.num_samples, config.num_samples)
    sampler = "ancestral" if is_ar else config.sampler
    sampler_options = dataclasses.asdict(config.rgas) if sampler == "rgas" else {}
    seeds = config.seed_list
    stride = max(seeds) - min(seeds) + 1  # batch i of seed s uses s + i * stride: no two batches share a seed
    rows = []
    for nfe in ([None] if is_ar else config.nfe) if config.unconditional else []:
        for temperature in config.sweep:
            results, latencies, peaks, per_seed = [], [], [], []
            for k, seed in enumerate(seeds):
                _log(f"{label}: sampling {config.num_samples} x {seq_len} tokens" + ("" if is_ar else f" at {nfe} NFE")
                     + (f", T {temperature:g}" if len(config.sweep) > 1 or temperature != 1 else "")
                     + (f", seed {seed}" if len(seeds) > 1 else ""))
                timed = timed_sampling(model, num_samples=config.num_samples, batch_size=batch_size, nfe=nfe,
                                       seed=seed, seed_stride=stride, warmup=config.warmup if k == 0 else 0,
                                       repeats=config.repeats if k == 0 else 0, memory_baseline=baseline,
                                       seq_len=seq_len, sampler=sampler, use_cache=config.use_cache,
                                       temperature=temperature, top_k=config.top_k, top_p=config.top_p,
                                       greedy_tail=config.greedy_tail, **sampler_options)
                results += timed.results
                latencies += timed.latencies
                peaks.append(timed.peak_memory_mib)
                tokens = timed.samples
                markov = None if language is None else (language, markov_rows(model.tokenizer, tokens.tolist()))
                per_seed.append(scoring.seed_metrics(model.decode(tokens), tokens.tolist(), seed, protein=protein,
                                                     markov=markov))
            row = EvalRow(model=label, kind=model.kind, sampler=results[0].sampler, nfe=nfe, source=str(path),
                          num_samples=config.num_samples, seq_len=seq_len,
                          generated_tokens=seq_len - 1 if is_ar else seq_len,
                          nfe_per_batch=[r.nfe for r in results], extra_calls=_extra_calls(results),
                          batch_sizes=[r.tokens.shape[0] for r in results], latencies_s=latencies,
                          timing=f"measured here: {len(results)} timed batch(es) after {config.warmup} warm-up",
                          likelihood=likelihood, peak_memory_mib=None if peaks[0] is None else max(peaks),
                          temperature=temperature)
            scoring.fill(row, per_seed, protein=protein)
            rows.append(row)
    if config.prefix_tokens and conditional:
        _log(f"{label}: continuing {config.num_samples} held-out {config.prefix_tokens}-token prefixes")
        rows += conditional_rows(model, label, str(path), validation_blocks(model, config.data), config,
                                scoring.evaluator, likelihood)
    del model
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return rows


def _evaluate_file(path: Path, records: list[dict[str, Any]], scoring: Scoring) -> EvalRow:
    """A row from the records of a `didi sample` file; its batches are consecutive runs of ``batch_size``."""
    first = records[0]
    kind = str(first.get("kind") or "?")
    batches, i = [], 0
    while i < len(records):
        size = max(1, int(records[i].get("batch_size", 1)))
        batches.append(records[i:i + size])
        i += size
    tokens = [r["tokens"] for r in records] if all("tokens" in r for r in records) else None
    texts = [r["text"] for r in records] if all("text" in r for r in records) else None
    seq_len = max(len(t) for t in tokens) if tokens else None
    timed = all("seconds" in b[0] for b in batches)
    extra_keys = sorted({k for b in batches for k in b[0].get("extra_calls", {})})
    row = EvalRow(model=Path(str(first.get("model") or path.stem)).name, kind=kind,
                  sampler=str(first.get("sampler", "n/a")),
                  nfe=None if kind == "ar" else first.get("num_steps"), source=str(path),
                  num_samples=len(records), seq_len=seq_len,
                  generated_tokens=0 if seq_len is None else seq_len - 1 if kind == "ar" else seq_len,
                  nfe_per_batch=[int(b[0]["nfe"]) for b in batches if "nfe" in b[0]],
                  extra_calls={k: [int(b[0].get("extra_calls", {}).get(k, 0)) for b in batches] for k in extra_keys},
                  batch_sizes=[len(b) for b in batches],
                  latencies_s=[float(b[0]["seconds"]) for b in batches] if timed else [],
                  timing="recorded by didi sample (no warm-up)" if timed else "not recorded",
                  entropy=mean_sample_entropy(tokens) if tokens else None,
                  temperature=float((first.get("controls") or {}).get("temperature", 1.0)))
    if texts is None:
        _log(f"{path}: records without 'text': generative perplexity and protein metrics are not computed")
        return row
    protein = first.get("tokenizer") == "protein"
    scoring.fill(row, [scoring.seed_metrics(texts, tokens, first.get("seed"), protein=protein,
                                            markov=_file_markov(first, tokens))], protein=protein)
    return row


def _file_markov(first: dict[str, Any], tokens: list[list[int]] | None) -> tuple[MarkovLanguage, list[str]] | None:
    """The Markov language of a sample file's model run (when it still exists and holds ``markov.json``) and the
    file's token ids decoded for it; ``None`` otherwise (text alone would put the letters of ``<|endoftext|>``
    between documents)."""
    model = str(first.get("model") or "")
    if not tokens or not model or not is_run_dir(model):
        return None
    language = markov_language(model)
    if language is None:
        return None
    tokenizer = load_tokenizer(Path(model), read_run_config(Path(model)).tokenizer)
    return language, markov_rows(tokenizer, tokens)


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
    kinds = [run.kind for run in runs]
    if config.prefix_tokens:
        check_prefix_tokens(config, runs)
    if config.frontier_entropy == "conditional":
        runs_with_files = [*config.models, *(str(records[0].get("model") or "") for _, records in files)]
        require(any(p and is_run_dir(p) and markov_language(p) is not None for p in runs_with_files),
                "frontier_entropy", "conditional needs a Markov-language run (markov.json in its directory, from "
                "--data markov): no --model, and no model of a --samples file, has one")
    for path, kind in zip(config.models, kinds):
        if config.sampler == "rgas" and kind != "ar":
            require_discriminator((Path(path) / DISCRIMINATOR_FILE).is_file(), path)
    evaluator_name = config.evaluator or next((p for p, k in zip(config.models, kinds) if k == "ar"), None)
    evaluator = None
    if evaluator_name:
        _log(f"loading evaluator {evaluator_name}")
        evaluator = load_evaluator(evaluator_name, device)
    else:
        _log("no --evaluator and no AR --model: generative perplexity is not computed")
    proteins = _protein_scoring(config, runs, files, device)
    n = max([config.num_samples if config.models else 0] + [len(records) for _, records in files])
    for path, records in files if config.mauve else []:
        require(len(records) >= MIN_MAUVE_SAMPLES, "mauve", f"needs at least {MIN_MAUVE_SAMPLES} samples per side "
                                                            f"(got {len(records)} in {path})")
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
        _log(f"MAUVE features: {featurizer.name}")
        reference_features = featurizer.features(heldout.reference)
        mauve_meta = {"features": featurizer.name, "reference": _describe_heldout(heldout, heldout.reference)
                      + ("" if heldout.disjoint else " (the data row's own)"),
                      "package": f"mauve-text {_package_version('mauve-text')}"}
    scoring = Scoring(evaluator=evaluator, proteins=proteins, featurizer=featurizer,
                      reference_features=reference_features, eval_batch_size=config.eval_batch_size,
                      bootstrap=config.bootstrap, seed=config.seed)
    models = list(zip(config.models, _labels(config.models)))
    ar_reference = _evaluator_as_model(config, kinds, evaluator_name)
    if ar_reference is not None:
        models.append((ar_reference, f"{Path(ar_reference).name} (evaluator)"))
    rows: list[EvalRow] = []
    for path, label in models:
        rows += _evaluate_model(path, label, config, device, scoring, conditional=path != ar_reference)
    for path, records in files:
        rows.append(_evaluate_file(path, records, scoring))
    data_row = _data_row(heldout, scoring) if heldout is not None and references else None
    if data_row is not None:
        data_row.source = _describe_heldout(heldout, heldout.texts)
    if data_row is not None:
        rows.append(data_row)
    reference = _set_speedups([r for r in rows if r.prefix_tokens is None])
    axis = FRONTIER_ENTROPIES[config.frontier_entropy]
    target = None
    if config.target_entropy is not None:
        target = {"value": config.target_entropy, "source": "--target-entropy"}
    elif data_row is not None and data_row.value(axis) is not None:
        what = "entropy" if axis == "entropy" else "H(X'|X)"
        target = {"value": data_row.value(axis), "source": f"the {what} of the {data_row.model} row"}
    elif axis == "conditional_entropy" and any(r.markov for r in rows):
        rate = next(r.markov["chain_entropy_rate"] for r in rows if r.markov)
        target = {"value": rate, "source": "the Markov chain's entropy rate"}
    frontiers = compute_frontiers(rows, None if target is None else target["value"], axis=axis)
    meta = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "didi_version": __version__, "torch_version": torch.__version__, "device": _describe_device(device),
        "evaluator": None if evaluator is None else {"name": evaluator.name, "context_len": evaluator.context_len},
        "protein_reference": None if proteins is None else {"name": proteins.reference.name,
                                                            "source": proteins.reference.source},
        "heldout": None if heldout is None else {
            "name": heldout.name, "source": heldout.source, "disjoint": heldout.disjoint,
            "row": "the first " + _describe_heldout(heldout, heldout.texts)},
        "mauve": mauve_meta, "process_peak_rss_mib": _peak_rss_mib(), "config": dataclasses.asdict(config),
    }
    return EvalReport(rows=rows, meta=meta, reference=reference, target_entropy=target if frontiers else None,
                      frontiers=frontiers)


def check_frontiers(report: EvalReport) -> None:
    """Bad input after the fact: a sweep whose target entropy no model x NFE's temperatures bracket."""
    if not report.frontiers or report.target_entropy is None:
        return
    if any(f.get("bracket") is not None for f in report.frontiers):
        return
    axis = frontier_axis(report.frontiers[0])
    entropies = [p[axis] for f in report.frontiers for p in f["points"]]
    target = report.target_entropy
    what = "entropies" if axis == "entropy" else "H(X'|X)"
    raise option_error("target_entropy", f"{target['value']:.3f} nats ({target['source']}) is bracketed by no "
                                         f"model x NFE: their {what} span {min(entropies):.3f}-{max(entropies):.3f} "
                                         "over --temperatures; widen the sweep")


def _package_version(name: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return "?"
