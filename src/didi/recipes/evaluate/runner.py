"""``didi eval``: :func:`evaluate` runs the metrics of :mod:`.metrics` over models x NFE budgets (or over sample
files) into an :class:`~.report.EvalReport`, printed by :func:`~.report.format_table`, saved by
:func:`~.report.write_report` and drawn by :func:`~.report.plot_report`.

Per model: its validation likelihood (:func:`model_likelihood` on :func:`validation_blocks`), then per budget
timed sampling, entropy and gen-PPL. Proteins (models with the amino-acid tokenizer):
:func:`didi.data.protein.protein_metrics` of the decoded sequences (residue entropy, composition divergence from
the natural sequences of :func:`protein_reference`, distinct and low-complexity fractions, lengths), optionally
ESMFold pLDDT, and a row scoring those natural sequences alike.
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

from ...ar import ARPipeline
from ...config import helpfield, parse_int_list
from ...data.protein import SWISSPROT_COMPOSITION, amino_acid_composition, esmfold_scorer, protein_metrics
from ...data.tokenizer import Tokenizer, load_tokenizer
from ...diffusion.rgas import RGASConfig
from ...diffusion.sampling import SampleResult
from ...errors import option_error, require
from ...pipeline import load
from ...runtime.checkpoint import RunConfig, read_run_config
from ...runtime.utils import pick_device
from ...samples import read_samples
from ...version import __version__
from .conditional import check_prefix_tokens, conditional_rows
from .metrics import (
    Evaluator,
    Likelihood,
    Model,
    ar_nll,
    diffusion_nelbo,
    generative_perplexity,
    is_didi_run,
    load_evaluator,
    mean_sample_entropy,
    timed_sampling,
)
from .report import EvalReport, EvalRow

SAMPLERS = ("ancestral", "rgas")
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
    top_p: float = helpfield(1.0, "nucleus sampling mass (1.0 = off)")
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
    json: str | None = helpfield(None, "write the report (every row, per-batch timings, settings) as JSON here")
    plot: str | None = helpfield(None, "draw gen-PPL and entropy against NFE into this image "
                                       f"({', '.join(PLOT_FORMATS)})")
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
        require(0.0 < self.top_p <= 1.0, "top_p", f"must be in (0, 1] (got {self.top_p})")
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

    def reference_row(self, num_samples: int, config: EvalConfig, evaluator: Evaluator | None) -> EvalRow | None:
        """The first ``num_samples`` natural sequences (a seeded random choice) scored like a sampled row."""
        texts = self.reference.sequences[:num_samples]
        if not texts:
            return None
        row = EvalRow(model=self.reference.name, kind="data", sampler="n/a", nfe=None, source=self.reference.source,
                      num_samples=len(texts), seq_len=None, generated_tokens=0, nfe_per_batch=[], extra_calls={},
                      batch_sizes=[], latencies_s=[], timing="not sampled")
        self.score(row, texts)
        if evaluator is not None:
            row.gen_ppl = generative_perplexity(texts, evaluator, batch_size=config.eval_batch_size)
        return row


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
    candidates = models + [Path(m) for m in recorded if m and is_didi_run(m)]
    reference = protein_reference(candidates[0] if candidates else None, config.data)
    if config.plddt:
        _log("loading ESMFold for pLDDT")
    return ProteinScoring(reference=reference, plddt=esmfold_scorer(device) if config.plddt else None)


# ------------------------------------------------------------------------------------------------------- didi eval

def _evaluate_model(path: str, label: str, config: EvalConfig, device: torch.device,
                    evaluator: Evaluator | None, proteins: ProteinScoring | None) -> list[EvalRow]:
    """Likelihood once, then one row per budget (one row for an AR model): sample, time, score."""
    baseline = torch.cuda.memory_allocated(device) if device.type == "cuda" else 0
    model = load(path, device=str(device), weights=config.weights, precision=config.precision)
    likelihood = None
    if config.likelihood:
        _log(f"{label}: validation likelihood ({config.eval_blocks} blocks at most)")
        likelihood = model_likelihood(model, data=config.data, max_blocks=config.eval_blocks,
                                      batch_size=config.eval_batch_size, seed=config.seed)
    is_ar = model.kind == "ar"
    seq_len = config.seq_len or model.seq_len
    batch_size = min(config.batch_size or config.num_samples, config.num_samples)
    sampler = "ancestral" if is_ar else config.sampler
    sampler_options = dataclasses.asdict(config.rgas) if sampler == "rgas" else {}
    rows = []
    for nfe in ([None] if is_ar else config.nfe) if config.unconditional else []:
        _log(f"{label}: sampling {config.num_samples} x {seq_len} tokens" + ("" if is_ar else f" at {nfe} NFE"))
        timed = timed_sampling(model, num_samples=config.num_samples, batch_size=batch_size, nfe=nfe,
                               seed=config.seed, warmup=config.warmup, repeats=config.repeats,
                               memory_baseline=baseline, seq_len=seq_len, sampler=sampler,
                               use_cache=config.use_cache, top_p=config.top_p, **sampler_options)
        tokens = timed.samples
        row = EvalRow(model=label, kind=model.kind, sampler=timed.results[0].sampler, nfe=nfe, source=str(path),
                      num_samples=config.num_samples, seq_len=seq_len,
                      generated_tokens=seq_len - 1 if is_ar else seq_len,
                      nfe_per_batch=[r.nfe for r in timed.results], extra_calls=_extra_calls(timed.results),
                      batch_sizes=[r.tokens.shape[0] for r in timed.results], latencies_s=timed.latencies,
                      timing=f"measured here: {len(timed.results)} timed batch(es) after {config.warmup} warm-up",
                      entropy=mean_sample_entropy(tokens), likelihood=likelihood,
                      peak_memory_mib=timed.peak_memory_mib)
        texts = model.decode(tokens)
        if evaluator is not None:
            row.gen_ppl = generative_perplexity(texts, evaluator, batch_size=config.eval_batch_size)
        if model.tokenizer.kind == "protein":
            proteins.score(row, texts)
        rows.append(row)
    if config.prefix_tokens:
        _log(f"{label}: continuing {config.num_samples} held-out {config.prefix_tokens}-token prefixes")
        rows += conditional_rows(model, label, str(path), validation_blocks(model, config.data), config, evaluator,
                                likelihood)
    del model
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return rows


def _evaluate_file(path: Path, records: list[dict[str, Any]], config: EvalConfig, evaluator: Evaluator | None,
                   proteins: ProteinScoring | None) -> EvalRow:
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
                  entropy=mean_sample_entropy(tokens) if tokens else None)
    if texts is None:
        _log(f"{path}: records without 'text': generative perplexity and protein metrics are not computed")
        return row
    if evaluator is not None:
        row.gen_ppl = generative_perplexity(texts, evaluator, batch_size=config.eval_batch_size)
    if first.get("tokenizer") == "protein":
        proteins.score(row, texts)
    return row


def _row_name(row: EvalRow) -> str:
    return row.model if row.nfe is None else f"{row.model} @ {row.nfe} NFE"


def _set_speedups(rows: list[EvalRow]) -> str | None:
    """Speed-up = tokens/s relative to the AR row (the paper's comparison), else to the first model at its
    largest budget (teacher@1024 in the paper's 64x). Returns the reference's name."""
    timed = [r for r in rows if r.tokens_per_s]
    if not timed:
        return None
    ar = [r for r in timed if r.kind == "ar"]
    reference = ar[0] if ar else max((r for r in timed if r.model == timed[0].model), key=lambda r: r.nfe or 0)
    for r in timed:
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


def evaluate(config: EvalConfig) -> EvalReport:
    """Run ``didi eval``: every ``--model`` at every budget, then every ``--samples`` file, into a report; with
    protein models or samples, a last row scores natural sequences alike (:meth:`ProteinScoring.reference_row`).

    The evaluator (and ESMFold) is loaded once, before sampling, so a bad ``--evaluator`` fails before any work.
    """
    device = pick_device(config.device)
    runs = [read_run_config(Path(p)) for p in config.models]  # a bad run directory or sample file fails here, early
    files = [(Path(path), read_samples(Path(path))) for path in config.samples]
    kinds = [run.kind for run in runs]
    if config.prefix_tokens:
        check_prefix_tokens(config, runs)
    for path, kind in zip(config.models, kinds):
        if config.sampler == "rgas" and kind != "ar" and not (Path(path) / "discriminator.safetensors").is_file():
            raise option_error("sampler", f"rgas needs a DiDi-Instruct student with a discriminator; {path} has none")
    evaluator_name = config.evaluator or next((p for p, k in zip(config.models, kinds) if k == "ar"), None)
    evaluator = None
    if evaluator_name:
        _log(f"loading evaluator {evaluator_name}")
        evaluator = load_evaluator(evaluator_name, device)
    else:
        _log("no --evaluator and no AR --model: generative perplexity is not computed")
    proteins = _protein_scoring(config, runs, files, device)
    rows: list[EvalRow] = []
    for path, label in zip(config.models, _labels(config.models)):
        rows += _evaluate_model(path, label, config, device, evaluator, proteins)
    for path, records in files:
        rows.append(_evaluate_file(path, records, config, evaluator, proteins))
    natural = None if proteins is None else \
        proteins.reference_row(max(r.num_samples for r in rows), config, evaluator)
    if natural is not None:
        rows.append(natural)
    reference = _set_speedups([r for r in rows if r.prefix_tokens is None])
    meta = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "didi_version": __version__, "torch_version": torch.__version__, "device": _describe_device(device),
        "evaluator": None if evaluator is None else {"name": evaluator.name, "context_len": evaluator.context_len},
        "protein_reference": None if proteins is None else {"name": proteins.reference.name,
                                                            "source": proteins.reference.source},
        "process_peak_rss_mib": _peak_rss_mib(), "config": dataclasses.asdict(config),
    }
    return EvalReport(rows=rows, meta=meta, reference=reference)
