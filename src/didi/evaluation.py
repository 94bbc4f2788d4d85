"""Evaluation as in the paper: generative perplexity, sample entropy, likelihood and speed (``didi eval``).

Metrics, each a plain function:

* :func:`generative_perplexity` — the published protocol (MDLM/DUO/DiDi-Instruct ``metrics.py``): decoded samples
  are re-tokenised by an evaluator causal LM (a didi AR run, or a Hugging Face model such as ``gpt2-large``)
  and scored as one corpus, ``gen-PPL = exp(sum NLL / sum scored tokens)``. The published code's defects are
  fixed: the evaluator is loaded once, no remainder batch is dropped, text beyond the context is chunked rather
  than truncated, and padding is never scored;
* :func:`sample_entropy` — unigram entropy ``H = -sum_v p_v ln p_v`` of a sample's own token ids, averaged over
  samples (:func:`mean_sample_entropy`); reported next to every perplexity, since low entropy (repetition)
  fakes low perplexity;
* :func:`diffusion_nelbo` / :func:`ar_nll` — validation likelihood over packed blocks: the MDLM NELBO (an upper
  bound on the perplexity) or the AR cross-entropy;
* :func:`timed_sampling` — latency per batch, generated tokens per second, exact NFE, peak memory;
* proteins (models with the amino-acid tokenizer): :func:`didi.protein.protein_metrics` of the decoded sequences
  (residue entropy, composition divergence from the natural sequences of :func:`protein_reference`, distinct and
  low-complexity fractions, lengths), optionally ESMFold pLDDT, and a row scoring those natural sequences alike.

:func:`evaluate` runs them over models x NFE budgets (or over sample files) into an :class:`EvalReport`, printed
by :func:`format_table`, saved by :func:`write_report` and drawn by :func:`plot_report`.
"""
from __future__ import annotations

import contextlib
import dataclasses
import datetime
import json
import math
import platform
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from . import __version__
from .ar import ARPipeline, next_token_nll
from .checkpoint import RunConfig, atomic_write, read_run_config, write_json
from .cli import parse_int_list
from .config import DiffusionConfig, helpfield
from .diffusion import Denoiser, LogLinearSchedule, mdlm_token_losses, sample_times
from .errors import DataError, DidiError, option_error, require
from .pipeline import DiffusionPipeline, load
from .protein import SWISSPROT_COMPOSITION, amino_acid_composition, esmfold_scorer, protein_metrics
from .rgas import RGASConfig
from .samples import read_samples
from .sampling import SampleResult
from .tokenizer import Tokenizer, load_tokenizer
from .utils import pick_device, synchronize

Model = DiffusionPipeline | ARPipeline


class UnencodableText(DidiError):
    """The evaluator's tokenizer cannot represent a sample's text."""


# ------------------------------------------------------------------------------------------------ entropy

def sample_entropy(tokens: Sequence[int] | torch.Tensor) -> float:
    """Unigram entropy (nats) of one sample: ``H = -sum_v p_v ln p_v`` with ``p_v`` = frequency of id ``v``."""
    ids = torch.as_tensor(tokens).flatten()
    require(ids.numel() > 0, "samples", "cannot take the entropy of an empty sample")
    p = torch.unique(ids, return_counts=True)[1].double() / ids.numel()
    return float((p * (1.0 / p).log()).sum())


def mean_sample_entropy(samples: Sequence[Sequence[int]] | torch.Tensor) -> float:
    """Unweighted mean of :func:`sample_entropy` over samples (rows), as the paper reports it."""
    require(len(samples) > 0, "samples", "no samples to take the entropy of")
    return float(np.mean([sample_entropy(s) for s in samples]))


# ------------------------------------------------------------------------------------- generative perplexity

@dataclass
class Evaluator:
    """A causal LM that scores text. ``encode(text) -> ids`` raises :class:`UnencodableText`;
    ``score(ids, attention_mask) -> (nll, mask)`` gives ``-log p(ids[:, i+1] | ids[:, :i+1])`` (B, L-1) and which
    of those targets are real tokens."""

    name: str
    context_len: int
    eos_id: int | None
    encode: Callable[[str], list[int]]
    score: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def is_didi_run(path: str | Path) -> bool:
    """A directory whose ``config.json`` is a didi :class:`~didi.checkpoint.RunConfig` (has ``kind``)."""
    config = Path(path) / "config.json"
    if not config.is_file():
        return False
    try:
        return "kind" in json.loads(config.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        return False


def load_evaluator(name_or_path: str, device: str | torch.device = "auto") -> Evaluator:
    """A didi AR run directory, else a Hugging Face causal LM (name or path) whose files are available locally."""
    device = pick_device(str(device)) if not isinstance(device, torch.device) else device
    if is_didi_run(name_or_path):
        return _didi_evaluator(Path(name_or_path), device)
    return _hf_evaluator(name_or_path, device)


def _didi_evaluator(path: Path, device: torch.device) -> Evaluator:
    kind = read_run_config(path).kind
    if kind != "ar":
        raise option_error("evaluator", f"{path} is a {kind!r} model; the evaluator must be an autoregressive run "
                                        "(kind 'ar', from `didi train-ar`) or a Hugging Face causal LM")
    model = ARPipeline.from_pretrained(path, device=device, precision="fp32")
    tokenizer = model.tokenizer

    def encode(text: str) -> list[int]:
        try:
            ids = tokenizer.encode(text)
        except (DidiError, ValueError, KeyError) as exc:
            raise UnencodableText(str(exc)) from None
        if tokenizer.decode(ids) != text:
            raise UnencodableText("its tokenizer does not reproduce the text (characters outside its vocabulary)")
        return ids

    return Evaluator(name=str(path), context_len=model.seq_len, eos_id=tokenizer.eos_id, encode=encode,
                     score=model.token_nll)


def _hf_evaluator(name: str, device: torch.device) -> Evaluator:
    try:
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError:
        raise option_error("evaluator", f"{name!r} is not a didi AR run; Hugging Face evaluators need "
                                        "`pip install transformers`") from None
    try:
        tokenizer = AutoTokenizer.from_pretrained(name, local_files_only=True)
        network = AutoModelForCausalLM.from_pretrained(name, local_files_only=True)
    except Exception as exc:  # noqa: BLE001 - transformers raises OSError, ValueError, KeyError, ... here
        raise option_error("evaluator", f"{name!r} is neither a didi AR run directory nor a Hugging Face causal LM "
                                        f"available locally (download it first, e.g. `hf download {name}`; "
                                        f"{type(exc).__name__})") from None
    network = network.float().to(device).eval()  # the protocol scores in fp32
    config = network.config
    context = getattr(config, "n_positions", None) or getattr(config, "max_position_embeddings", None)
    require(bool(context), "evaluator", f"{name!r}: its config gives no context length")
    unk = tokenizer.unk_token_id
    if unk in (tokenizer.eos_token_id, tokenizer.bos_token_id):
        unk = None  # GPT-2 names <|endoftext|> as its unk token; a byte-level BPE never needs one

    def encode(text: str) -> list[int]:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        if unk is not None and unk in ids:
            raise UnencodableText(f"its tokenizer maps characters to the unknown token "
                                  f"{tokenizer.unk_token!r} (first at token {ids.index(unk)})")
        return ids

    @torch.no_grad()
    def score(ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        ids, attention_mask = ids.to(device), attention_mask.to(device)
        logits = network(input_ids=ids, attention_mask=attention_mask).logits
        nll = F.cross_entropy(logits[:, :-1].float().transpose(1, 2), ids[:, 1:], reduction="none")
        return nll, attention_mask[:, 1:].bool()

    return Evaluator(name=name, context_len=int(context), eos_id=tokenizer.eos_token_id, encode=encode, score=score)


def scored_positions(ids: Sequence[int], eos_id: int | None) -> list[bool]:
    """The protocol's token filter: every non-EOS token plus the first EOS of the sample.

    Packed samples hold several documents; the first EOS closes a document and is scored, later ones are treated
    like the published code treats them (not scored). Tokens after an interior EOS are scored.
    """
    if eos_id is None:
        return [True] * len(ids)
    first = ids.index(eos_id) if eos_id in ids else -1
    return [t != eos_id or i == first for i, t in enumerate(ids)]


@dataclass
class Perplexity:
    """Corpus perplexity ``exp(nll)`` with ``nll`` = mean NLL (nats) over ``tokens`` scored tokens."""

    ppl: float
    nll: float
    tokens: int
    samples: int
    chunks: int


@torch.no_grad()
def generative_perplexity(texts: Sequence[str], evaluator: Evaluator, *, batch_size: int = 8) -> Perplexity:
    """Token-weighted perplexity of ``texts`` under ``evaluator``: ``exp(sum_i NLL_i / #scored tokens)``.

    Each text is re-encoded by the evaluator's tokenizer (no BOS added) and cut into chunks of the evaluator's
    context length; the first token of every chunk is context only. Scored targets follow
    :func:`scored_positions`. Chunks are scored in right-padded batches of ``batch_size``; padding is masked.
    """
    require(len(texts) > 0, "samples", "no samples to evaluate")
    require(batch_size >= 1, "eval_batch_size", f"must be >= 1 (got {batch_size})")
    chunks: list[tuple[list[int], list[bool]]] = []
    for i, text in enumerate(texts):
        try:
            ids = evaluator.encode(text)
        except UnencodableText as exc:
            raise option_error("evaluator", f"{evaluator.name} cannot encode sample {i}: {exc}") from None
        scored = scored_positions(ids, evaluator.eos_id)
        for start in range(0, len(ids), evaluator.context_len):
            end = start + evaluator.context_len
            chunks.append((ids[start:end], scored[start + 1:end]))
    pad = evaluator.eos_id if evaluator.eos_id is not None else 0
    nll_sum, count = 0.0, 0
    for start in range(0, len(chunks), batch_size):
        batch = chunks[start:start + batch_size]
        width = max(len(ids) for ids, _ in batch)
        if width < 2:
            continue
        ids = torch.full((len(batch), width), pad, dtype=torch.long)
        attention = torch.zeros((len(batch), width), dtype=torch.long)
        weight = torch.zeros((len(batch), width - 1), dtype=torch.bool)
        for row, (chunk, scored) in enumerate(batch):
            ids[row, :len(chunk)] = torch.tensor(chunk)
            attention[row, :len(chunk)] = 1
            weight[row, :len(scored)] = torch.tensor(scored, dtype=torch.bool)
        nll, real = evaluator.score(ids, attention)
        weight &= real.cpu()
        nll_sum += float((nll.double().cpu() * weight).sum())
        count += int(weight.sum())
    if count == 0:
        raise DataError("samples: no token to score (every re-tokenised sample is shorter than 2 tokens)")
    return Perplexity(ppl=math.exp(nll_sum / count), nll=nll_sum / count, tokens=count, samples=len(texts),
                      chunks=len(chunks))


# ------------------------------------------------------------------------------------------------ likelihood

@dataclass
class Likelihood:
    """Mean NLL (nats/token) over held-out blocks, ``ppl = exp(nll)``; ``bound``: a NELBO (diffusion), so
    ``ppl`` is an upper bound on the true perplexity."""

    nll: float
    ppl: float
    tokens: int
    sequences: int
    bound: bool

    @classmethod
    def from_sums(cls, nll_sum: float, tokens: int, sequences: int, bound: bool) -> "Likelihood":
        require(tokens > 0, "data", "no validation blocks to evaluate the likelihood on")
        return cls(nll=nll_sum / tokens, ppl=math.exp(nll_sum / tokens), tokens=tokens, sequences=sequences,
                   bound=bound)


def _batches(blocks: Any, batch_size: int, max_blocks: int | None) -> Iterator[torch.Tensor]:
    """Consecutive batches of a :class:`didi.data.TokenBlocks` (or an (N, L) tensor), at most ``max_blocks`` rows."""
    n = len(blocks) if max_blocks is None else min(len(blocks), max_blocks)
    for start in range(0, n, batch_size):
        rows = list(range(start, min(n, start + batch_size)))
        yield blocks[rows] if isinstance(blocks, torch.Tensor) else blocks.batch(rows)


def _device_of(fn: Any) -> torch.device:
    """Where a network's parameters live (CPU for other callables)."""
    if isinstance(fn, torch.nn.Module):
        return next(fn.parameters()).device
    return torch.device("cpu")


@contextlib.contextmanager
def _eval_mode(fn: Any) -> Iterator[None]:
    """Put an ``nn.Module`` in eval mode (no dropout) for the duration; other callables are left alone."""
    was_training = isinstance(fn, torch.nn.Module) and fn.training
    if was_training:
        fn.eval()
    try:
        yield
    finally:
        if was_training:
            fn.train()


@torch.no_grad()
def diffusion_nelbo(model: DiffusionPipeline | Denoiser, blocks: Any, *, diffusion: DiffusionConfig | None = None,
                    batch_size: int = 16, max_blocks: int | None = None, seed: int = 0,
                    device: torch.device | str | None = None) -> Likelihood:
    """Validation NELBO of a masked-diffusion model, one Monte-Carlo time per block (as MDLM's ``val/ppl``)::

        NELBO/token = sum_blocks w(t) sum_{i: z_t^i = m} -log x_hat(z_t)^i[x^i] / #tokens,   w(t) = 1/t

    with antithetic times per batch (:func:`didi.diffusion.sample_times`) drawn from one CPU generator seeded
    with ``seed`` (the same numbers on every device). ``model`` is a :class:`DiffusionPipeline` or any
    ``denoiser(z, sigma) -> logits``, e.g. a training DiT (then pass ``diffusion``; autocast is the caller's; a
    module is put in eval mode for the duration and ``device`` defaults to its parameters').
    """
    if isinstance(model, DiffusionPipeline):
        denoiser, diffusion, device = model.denoiser, model.config.diffusion, device or model.device
    else:
        denoiser = model
        require(diffusion is not None, "diffusion", "a DiffusionConfig is needed with a bare denoiser")
    device = torch.device(device or _device_of(denoiser))
    schedule = LogLinearSchedule(diffusion.eps)
    generator = torch.Generator().manual_seed(seed)
    total, tokens, sequences = 0.0, 0, 0
    with _eval_mode(denoiser):
        for x in _batches(blocks, batch_size, max_blocks):
            t = sample_times(x.shape[0], generator, sampling_eps=diffusion.sampling_eps,
                             antithetic=diffusion.antithetic)
            u = torch.rand(x.shape, generator=generator)
            losses = mdlm_token_losses(denoiser, x.to(device), t, u, schedule=schedule,
                                       mask_index=diffusion.mask_index, time_conditioning=diffusion.time_conditioning)
            total += float(losses.double().sum())
            tokens += x.numel()
            sequences += x.shape[0]
    return Likelihood.from_sums(total, tokens, sequences, bound=True)


@torch.no_grad()
def ar_nll(model: ARPipeline | Callable[[torch.Tensor], torch.Tensor], blocks: Any, *, batch_size: int = 16,
           max_blocks: int | None = None, device: torch.device | str | None = None) -> Likelihood:
    """Validation cross-entropy of an AR model: every block predicts ``x[1:]`` from ``x[:-1]``.

    ``NLL/token = sum -log p(x_{i+1} | x_{<=i}) / (N (L - 1))``. ``model`` is an :class:`ARPipeline` or any
    ``network(idx) -> logits``, e.g. a training GPT (eval mode for the duration, ``device`` from its parameters).
    """
    network = model.logits if isinstance(model, ARPipeline) else model
    device = torch.device(device or (model.device if isinstance(model, ARPipeline) else _device_of(network)))
    total, tokens, sequences = 0.0, 0, 0
    with _eval_mode(network):
        for x in _batches(blocks, batch_size, max_blocks):
            nll = next_token_nll(network, x.to(device))
            total += float(nll.double().sum())
            tokens += nll.numel()
            sequences += x.shape[0]
    return Likelihood.from_sums(total, tokens, sequences, bound=False)


def _validation_split(config: RunConfig, tokenizer: Tokenizer, seq_len: int, data: str | None) -> tuple[str, Any]:
    """``(corpus, blocks)``: the validation blocks of a run's training corpus (or of ``data``), packed with its
    tokenizer and packing at ``seq_len``; ``corpus`` is ``""`` and ``blocks`` ``None`` if the run records none."""
    from .data import DataConfig, prepare_data

    settings = {k: v for k, v in config.data.items() if k in DataConfig.__dataclass_fields__}
    if data:
        settings["data"] = data
    if "data" not in settings:
        return "", None
    settings["seq_len"] = seq_len
    return settings["data"], prepare_data(DataConfig(**settings), tokenizer=tokenizer).valid


def validation_blocks(model: Model, data: str | None = None) -> Any:
    """The validation split (:class:`didi.data.TokenBlocks`) of the model's training corpus, or of ``data``,
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


# ----------------------------------------------------------------------------------------------------- speed

@dataclass
class TimedSamples:
    """Timed sampling batches of one (model, budget): ``results[:num_batches]`` hold the requested samples, any
    later ones were run only to reach the number of timing repeats."""

    results: list[SampleResult]
    latencies: list[float]
    num_batches: int
    peak_memory_mib: float | None

    @property
    def samples(self) -> torch.Tensor:
        return torch.cat([r.tokens.cpu() for r in self.results[:self.num_batches]])


def timed_sampling(model: Model, *, num_samples: int, batch_size: int, nfe: int | None, seed: int = 0,
                   warmup: int = 1, repeats: int = 1, memory_baseline: int = 0, **sample_options: Any
                   ) -> TimedSamples:
    """Sample ``num_samples`` sequences batch by batch (batch ``i`` uses seed ``seed + i``), timing every batch.

    ``warmup`` untimed batches run first; extra full batches follow if fewer than ``repeats`` were timed. Every
    timing is synchronised (CUDA/MPS). Peak memory, on CUDA only (other devices have no per-call peak counter):
    ``max_memory_allocated`` over the timed batches minus ``memory_baseline`` (bytes allocated before the model
    was loaded), i.e. weights plus sampling activations.
    """
    device = model.device

    def run(n: int, batch_seed: int) -> tuple[SampleResult, float]:
        synchronize(device)
        start = time.perf_counter()
        [result] = model.sample(n, nfe, seed=batch_seed, batch_size=n, **sample_options)
        synchronize(device)
        return result, time.perf_counter() - start

    for _ in range(warmup):
        run(min(batch_size, num_samples), seed)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    sizes = [min(batch_size, num_samples - start) for start in range(0, num_samples, batch_size)]
    sizes += [batch_size] * max(0, repeats - sizes.count(batch_size))
    timed = [run(size, seed + i) for i, size in enumerate(sizes)]
    peak = (torch.cuda.max_memory_allocated(device) - memory_baseline) / 2**20 if device.type == "cuda" else None
    return TimedSamples(results=[r for r, _ in timed], latencies=[s for _, s in timed],
                        num_batches=-(-num_samples // batch_size), peak_memory_mib=peak)


# ------------------------------------------------------------------------------------------------ didi eval

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


@dataclass
class EvalRow:
    """One line of the report: a model (or a sample file) at one sampling budget."""

    model: str
    kind: str
    sampler: str
    nfe: int | None  # requested budget; None for AR models (always seq_len - 1 calls)
    source: str  # run directory or sample file
    num_samples: int
    seq_len: int | None
    generated_tokens: int  # positions the sampler fills per sample (AR: seq_len - 1, BOS is given)
    nfe_per_batch: list[int]  # network calls counted by the sampler, per timed batch
    extra_calls: dict[str, list[int]]  # other networks' calls per timed batch (RGAS: discriminator)
    batch_sizes: list[int]  # of the timed batches
    latencies_s: list[float]  # wall-clock seconds of the timed batches
    timing: str  # how the latencies were obtained
    entropy: float | None = None
    gen_ppl: Perplexity | None = None
    likelihood: Likelihood | None = None
    peak_memory_mib: float | None = None
    speedup: float | None = None
    protein: dict[str, float] | None = None  # didi.protein.protein_metrics (+ plddt) of protein rows

    @property
    def nfe_made(self) -> float | None:
        return float(np.mean(self.nfe_per_batch)) if self.nfe_per_batch else None

    @property
    def latency_s(self) -> float | None:
        """Median latency of the full-size batches (a smaller remainder batch is not comparable)."""
        if not self.latencies_s:
            return None
        full = max(self.batch_sizes)
        return statistics.median(s for s, b in zip(self.latencies_s, self.batch_sizes) if b == full)

    @property
    def tokens_per_s(self) -> float | None:
        latency = self.latency_s
        if not latency or not self.generated_tokens:
            return None
        return max(self.batch_sizes) * self.generated_tokens / latency

    def to_json(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "nfe_made": self.nfe_made, "latency_s": self.latency_s,
                "tokens_per_s": self.tokens_per_s}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "EvalRow":
        """Inverse of :meth:`to_json` (derived fields are recomputed, not read)."""
        names = {f.name for f in dataclasses.fields(cls)}
        row = cls(**{k: v for k, v in data.items() if k in names})
        row.gen_ppl = Perplexity(**row.gen_ppl) if isinstance(row.gen_ppl, dict) else row.gen_ppl
        row.likelihood = Likelihood(**row.likelihood) if isinstance(row.likelihood, dict) else row.likelihood
        return row


@dataclass
class EvalReport:
    rows: list[EvalRow]
    meta: dict[str, Any]
    reference: str | None = None  # the row speed-ups are relative to

    def to_json(self) -> dict[str, Any]:
        return {"meta": self.meta, "reference": self.reference, "rows": [r.to_json() for r in self.rows]}


def _log(message: str) -> None:
    print(f"[didi eval] {message}", file=sys.stderr, flush=True)


def _labels(paths: Sequence[str]) -> list[str]:
    """Run directory names, or full paths where two names collide."""
    names = [Path(p).name or str(p) for p in paths]
    return [name if names.count(name) == 1 else str(path) for name, path in zip(names, paths)]


def _extra_calls(results: Sequence[SampleResult]) -> dict[str, list[int]]:
    keys = sorted({k for r in results for k in r.extra_calls})
    return {k: [int(r.extra_calls.get(k, 0)) for r in results] for k in keys}


# ------------------------------------------------------------------------------------------------ proteins

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
        """Set ``row.protein`` (:func:`didi.protein.protein_metrics`, plus the mean ``plddt`` over the non-empty
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
    for nfe in [None] if is_ar else config.nfe:
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
    reference = _set_speedups(rows)
    meta = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "didi_version": __version__, "torch_version": torch.__version__, "device": _describe_device(device),
        "evaluator": None if evaluator is None else {"name": evaluator.name, "context_len": evaluator.context_len},
        "protein_reference": None if proteins is None else {"name": proteins.reference.name,
                                                            "source": proteins.reference.source},
        "process_peak_rss_mib": _peak_rss_mib(), "config": dataclasses.asdict(config),
    }
    return EvalReport(rows=rows, meta=meta, reference=reference)


# ---------------------------------------------------------------------------------------------- reporting

def _fmt(value: float | None, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def _fmt_calls(calls: Sequence[int]) -> str:
    """Calls per batch: the exact count when every batch made the same number, else the mean."""
    if not calls:
        return "n/a"
    return str(calls[0]) if len(set(calls)) == 1 else f"{np.mean(calls):.1f}"


def _protein_cells(row: EvalRow, plddt: bool) -> list[str]:
    """length (mean ± std), AA-comp JS, distinct, low-complexity (and pLDDT) of a protein row."""
    m = row.protein
    if m is None:
        return ["n/a"] * (5 if plddt else 4)
    cells = [f"{m['length_mean']:.1f} ± {m['length_std']:.1f}", _fmt(m["composition_js"], ".4f"),
             f"{m['distinct_fraction']:.2f}", f"{m['low_complexity_fraction']:.2f}"]
    return cells + ([_fmt(m.get("plddt"), ".1f")] if plddt else [])


def format_table(report: EvalReport) -> str:
    """The report as a Markdown table followed by notes saying exactly what every column measures."""
    rows = report.rows
    extra_keys = sorted({k for r in rows for k in r.extra_calls})
    protein = any(r.protein for r in rows)
    plddt = any(r.protein and "plddt" in r.protein for r in rows)
    protein_header = ["length", "AA-comp JS", "distinct", "low-complexity", *(["pLDDT"] if plddt else [])]
    header = ["model", "kind", "sampler", "NFE", "NFE made", *(f"{k} calls" for k in extra_keys), "gen-PPL",
              "entropy", *(protein_header if protein else []), "likelihood", "latency/batch (s)", "tokens/s",
              "speed-up", "peak mem (MiB)"]
    lines = ["| " + " | ".join(header) + " |",
             "|" + "|".join("---" if i < 3 else "---:" for i in range(len(header))) + "|"]
    for r in rows:
        likelihood = "n/a" if r.likelihood is None else ("≤ " if r.likelihood.bound else "") + \
            f"{r.likelihood.ppl:.2f}"
        cells = [r.model, r.kind, r.sampler, "—" if r.nfe is None else str(r.nfe), _fmt_calls(r.nfe_per_batch),
                 *(_fmt_calls(r.extra_calls.get(k, [])) for k in extra_keys),
                 _fmt(r.gen_ppl.ppl if r.gen_ppl else None, ".2f"), _fmt(r.entropy, ".3f"),
                 *(_protein_cells(r, plddt) if protein else []), likelihood,
                 _fmt(r.latency_s, ".3f"), _fmt(r.tokens_per_s, ",.1f"),
                 _fmt(r.speedup, ".2f") + ("×" if r.speedup is not None else ""), _fmt(r.peak_memory_mib, ",.0f")]
        lines.append("| " + " | ".join(cells) + " |")
    meta, cfg = report.meta, report.meta["config"]
    evaluator = meta["evaluator"]
    lines.append("")
    if evaluator:
        lines.append(f"- gen-PPL: exp(Σ NLL / Σ scored tokens) over all samples of a row under {evaluator['name']} "
                     f"(fp32, context {evaluator['context_len']}), decoded text re-tokenised by its tokenizer; "
                     "scored: every non-EOS token and the first EOS of a sample, not the first token of a chunk.")
    else:
        lines.append("- gen-PPL: not computed (no --evaluator and no AR --model).")
    lines.append("- entropy: mean over samples of the unigram entropy (nats) of each sample's own token ids"
                 + ("; protein rows: of its residues (special tokens such as PAD excluded; at most ln 20 = 3.00)."
                    if protein else "."))
    if protein:
        natural = meta["protein_reference"]
        lines.append("- protein rows score the decoded sequences: the first run of residues of each sample (a sample "
                     "ends at its first EOS/PAD). length: residues, mean ± std; AA-comp JS: Jensen-Shannon "
                     "divergence (nats) between the pooled composition of the 20 standard residues and that of "
                     f"{natural['source']}; distinct: share of distinct sequences; low-complexity: share of "
                     "sequences more than half covered by SEG-style windows (12 residues, entropy <= 2.2 bits).")
        if natural["name"]:
            lines.append(f"- {natural['name']}: the first validation sequences (a seeded random choice, as many as "
                         "the largest row has samples), scored like samples: what a perfect model would reach.")
        if plddt:
            lines.append("- pLDDT: ESMFold's mean per-residue confidence (0-100), averaged over non-empty sequences.")
    if cfg["likelihood"] and cfg["models"]:
        lines.append(f"- likelihood: validation perplexity (AR) or its NELBO upper bound '≤' (diffusion, one "
                     f"antithetic time per block), over at most {cfg['eval_blocks']} validation blocks"
                     + (" (protein blocks: per position, PAD included)." if protein else "."))
    lines.append("- NFE made: network calls counted by the sampler per batch (the diffusion cache skips calls while "
                 "no token changed; AR: one call per generated token).")
    if "discriminator" in extra_keys:
        lines.append("- discriminator calls: RGAS discriminator forward passes per batch (one re-ranking pass over "
                     "all batch x candidates rows counts once); discriminator_backward: its gradient-tilting "
                     "backward passes. Neither is included in NFE.")
    if cfg["models"]:
        batch = min(cfg["batch_size"] or cfg["num_samples"], cfg["num_samples"])
        lines.append(f"- speed on {meta['device']}: latency = median over >= {cfg['repeats']} full batches of "
                     f"{batch} after {cfg['warmup']} warm-up batch(es), synchronised; tokens/s = generated tokens "
                     "per batch / latency; peak mem: CUDA only (weights + activations).")
    if report.reference:
        lines.append(f"- speed-up: tokens/s relative to {report.reference}.")
    if cfg["samples"]:
        lines.append("- rows from --samples files: timings as recorded by `didi sample` (no warm-up).")
    if cfg["models"]:
        lines.append(f"- {cfg['num_samples']} samples per sampled row, seed {cfg['seed']} (batch i: seed + i).")
    return "\n".join(lines)


def write_report(report: EvalReport, path: Path) -> None:
    write_json(Path(path), report.to_json())


def plot_report(report: EvalReport, path: Path) -> None:
    """gen-PPL (log scale) and entropy against the NFE budget (log2 axis): one curve per diffusion model (and
    sampler), each AR model a dashed horizontal reference line."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import LogFormatter, NullFormatter, ScalarFormatter

    curves: dict[str, list[EvalRow]] = {}
    references = [r for r in report.rows if r.nfe is None]  # AR models and the natural protein sequences
    samplers = {r.sampler for r in report.rows if r.nfe is not None}
    for r in report.rows:
        if r.nfe is not None:
            curves.setdefault(r.model if len(samplers) == 1 else f"{r.model} ({r.sampler})", []).append(r)
    fig = Figure(figsize=(11, 4.2), layout="constrained")
    ax_ppl, ax_ent = fig.subplots(1, 2)
    colors = iter(f"C{i % 10}" for i in range(len(curves) + len(references)))
    metrics = ((ax_ppl, lambda r: r.gen_ppl.ppl if r.gen_ppl else None), (ax_ent, lambda r: r.entropy))
    for label, rows in curves.items():
        color, rows = next(colors), sorted(rows, key=lambda r: r.nfe)
        for ax, metric in metrics:
            points = [(r.nfe, metric(r)) for r in rows if metric(r) is not None]
            if points:
                ax.plot(*zip(*points), "o-", color=color, label=label)
    for r in references:
        color = next(colors)
        for ax, metric in metrics:
            if metric(r) is not None:
                label = f"{r.model} (AR, {_fmt_calls(r.nfe_per_batch)} NFE)" if r.kind == "ar" else r.model
                ax.axhline(metric(r), linestyle="--", color=color, label=label)
    budgets = sorted({r.nfe for rows in curves.values() for r in rows})
    evaluator = report.meta.get("evaluator")
    for ax, ylabel in ((ax_ppl, f"gen-PPL ({Path(evaluator['name']).name if evaluator else 'no evaluator'})"),
                       (ax_ent, "sample entropy (nats)")):
        ax.set_xscale("log", base=2)
        if budgets:
            ax.set_xticks(budgets)
            ax.xaxis.set_major_formatter(ScalarFormatter())
            ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("NFE (sampling steps)")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    ax_ppl.set_yscale("log")
    ax_ppl.yaxis.set_major_formatter(LogFormatter(labelOnlyBase=False))
    ax_ppl.yaxis.set_minor_formatter(LogFormatter(labelOnlyBase=False, minor_thresholds=(1, 0.5)))
    fmt = Path(path).suffix.lstrip(".").lower()
    atomic_write(Path(path), lambda p: fig.savefig(p, format=fmt, dpi=120))
