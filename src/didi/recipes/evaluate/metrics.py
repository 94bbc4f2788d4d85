"""The metrics of ``didi eval``, each a plain function (the paper's protocol):

* :func:`generative_perplexity` — the published protocol (MDLM/DUO/DiDi-Instruct ``metrics.py``): decoded samples
  are re-tokenised by an evaluator causal LM (:func:`load_evaluator`: a didi AR run, or a Hugging Face model such as
  ``gpt2-large``) and scored as one corpus, ``gen-PPL = exp(sum NLL / sum scored tokens)``. The published code's
  defects are fixed: the evaluator is loaded once, no remainder batch is dropped, text beyond the context is chunked
  rather than truncated, and padding is never scored;
* :func:`sample_entropy` — unigram entropy ``H = -sum_v p_v ln p_v`` of a sample's own token ids, averaged over
  samples (:func:`mean_sample_entropy`); reported next to every perplexity, since low entropy (repetition)
  fakes low perplexity;
* :func:`diffusion_nelbo` / :func:`ar_nll` — validation likelihood over packed blocks: the MDLM NELBO (an upper
  bound on the perplexity) or the AR cross-entropy;
* :func:`timed_sampling` — latency per batch, generated tokens per second, exact NFE, peak memory;
* :func:`interpolate_at` — a metric at a matched value of another (gen-PPL at a target entropy) along a sweep;
* :func:`bootstrap_interval` — a 95% interval over samples; :func:`mean_std` — the spread over seeds;
* :func:`mauve_score` — MAUVE (the ``mauve-text`` package) between two feature sets, on features from
  :func:`load_mauve_features` (GPT-2 Large when available locally, else the evaluator's mean-pooled last hidden
  state).

The exact metrics of Markov-language runs are in :mod:`.markov`, repetition, diversity and copying in
:mod:`.quality`, protein metrics in :func:`didi.data.protein.protein_metrics`; :mod:`.runner` applies all of them
to models and sample files.
"""
from __future__ import annotations

import contextlib
import math
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ...config import DiffusionConfig
from ...diffusion.process import Denoiser, LogLinearSchedule, mdlm_token_losses, sample_times
from ...diffusion.sampling import SampleResult
from ...errors import DataError, DidiError, option_error, require
from ...models.gpt import next_token_nll
from ...pipelines.ar import ARPipeline
from ...pipelines.diffusion import DiffusionPipeline
from ...runtime.checkpoint import is_run_dir, read_run_config
from ...runtime.devices import pick_device, synchronize

Model = DiffusionPipeline | ARPipeline


class UnencodableText(DidiError):
    """The evaluator's tokenizer cannot represent a sample's text."""


def log(message: str) -> None:
    """A progress line of ``didi eval`` on stderr."""
    print(f"[didi eval] {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------------------- entropy

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


# ------------------------------------------------------------------------------------------- generative perplexity

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
    hidden: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None  # last hidden state (B, L, D)


def load_evaluator(name_or_path: str, device: str | torch.device = "auto") -> Evaluator:
    """A didi AR run directory, else a Hugging Face causal LM (name or path) whose files are available locally."""
    device = pick_device(str(device)) if not isinstance(device, torch.device) else device
    if is_run_dir(name_or_path):
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
                     score=model.token_nll, hidden=lambda ids, mask: model.hidden_states(ids))


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

    @torch.no_grad()
    def hidden(ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        out = network(input_ids=ids.to(device), attention_mask=attention_mask.to(device), output_hidden_states=True)
        return out.hidden_states[-1].float()

    return Evaluator(name=name, context_len=int(context), eos_id=tokenizer.eos_token_id, encode=encode, score=score,
                     hidden=hidden)


def gen_ppl_scored_tokens(ids: Sequence[int], eos_id: int | None) -> list[bool]:
    """Which tokens of a sample (re-encoded by the evaluator) gen-PPL scores, the protocol's filter: every non-EOS
    token plus the first EOS of the sample. (Not :func:`didi.diffusion.instruct.scored_positions`, the positions the
    DiDi-Instruct discriminator scores.)

    Packed samples hold several documents; the first EOS closes a document and is scored, later ones are treated
    like the published code treats them (not scored). Tokens after an interior EOS are scored.
    """
    if eos_id is None:
        return [True] * len(ids)
    first = ids.index(eos_id) if eos_id in ids else -1
    return [t != eos_id or i == first for i, t in enumerate(ids)]


@dataclass
class Perplexity:
    """Corpus perplexity ``exp(nll)`` with ``nll`` = mean NLL (nats) over ``tokens`` scored tokens;
    ``sample_nll``/``sample_tokens``: each sample's summed NLL and scored tokens (for intervals over samples)."""

    ppl: float
    nll: float
    tokens: int
    samples: int
    chunks: int
    sample_nll: list[float] = field(default_factory=list)
    sample_tokens: list[int] = field(default_factory=list)

    @classmethod
    def pooled(cls, parts: Sequence[Perplexity]) -> Perplexity:
        """The perplexity of the union of the parts' samples (e.g. of several seeds)."""
        tokens = sum(p.tokens for p in parts)
        nll = sum(p.nll * p.tokens for p in parts) / tokens
        return cls(ppl=math.exp(nll), nll=nll, tokens=tokens, samples=sum(p.samples for p in parts),
                   chunks=sum(p.chunks for p in parts), sample_nll=[x for p in parts for x in p.sample_nll],
                   sample_tokens=[x for p in parts for x in p.sample_tokens])


@torch.no_grad()
def generative_perplexity(texts: Sequence[str], evaluator: Evaluator, *, batch_size: int = 8) -> Perplexity:
    """Token-weighted perplexity of ``texts`` under ``evaluator``: ``exp(sum_i NLL_i / #scored tokens)``.

    Each text is re-encoded by the evaluator's tokenizer (no BOS added) and cut into chunks of the evaluator's
    context length; the first token of every chunk is context only. Scored targets follow
    :func:`gen_ppl_scored_tokens`. Chunks are scored in right-padded batches of ``batch_size``; padding is masked.
    """
    require(len(texts) > 0, "samples", "no samples to evaluate")
    require(batch_size >= 1, "eval_batch_size", f"must be >= 1 (got {batch_size})")
    chunks: list[tuple[list[int], list[bool], int]] = []
    for i, text in enumerate(texts):
        try:
            ids = evaluator.encode(text)
        except UnencodableText as exc:
            raise option_error("evaluator", f"{evaluator.name} cannot encode sample {i}: {exc}") from None
        scored = gen_ppl_scored_tokens(ids, evaluator.eos_id)
        for start in range(0, len(ids), evaluator.context_len):
            end = start + evaluator.context_len
            chunks.append((ids[start:end], scored[start + 1:end], i))
    return chunk_perplexity(chunks, len(texts), evaluator, batch_size,
                            empty="samples: no token to score (every re-tokenised sample is shorter than 2 tokens)")


def chunk_perplexity(chunks: Sequence[tuple[list[int], list[bool], int]], num_samples: int, evaluator: Evaluator,
                     batch_size: int, *, empty: str) -> Perplexity:
    """:class:`Perplexity` of the scored targets of ``chunks`` (see :func:`score_chunks`); ``empty`` is the
    DataError message when no target is scored."""
    sample_nll, sample_tokens = score_chunks(chunks, num_samples, evaluator, batch_size)
    count = sum(sample_tokens)
    if count == 0:
        raise DataError(empty)
    nll_sum = math.fsum(sample_nll)
    return Perplexity(ppl=math.exp(nll_sum / count), nll=nll_sum / count, tokens=count, samples=num_samples,
                      chunks=len(chunks), sample_nll=sample_nll, sample_tokens=sample_tokens)


@torch.no_grad()
def score_chunks(chunks: Sequence[tuple[list[int], list[bool], int]], num_samples: int, evaluator: Evaluator,
                 batch_size: int) -> tuple[list[float], list[int]]:
    """Per sample, ``(sum NLL, #scored)`` over ``chunks`` of evaluator ids with, per chunk, which targets
    ``ids[1:]`` count and the index of its sample (``< num_samples``); scored in right-padded batches of
    ``batch_size`` (padding masked)."""
    pad = evaluator.eos_id if evaluator.eos_id is not None else 0
    sample_nll, sample_tokens = [0.0] * num_samples, [0] * num_samples
    for start in range(0, len(chunks), batch_size):
        batch = chunks[start:start + batch_size]
        width = max(len(ids) for ids, _, _ in batch)
        if width < 2:
            continue
        ids = torch.full((len(batch), width), pad, dtype=torch.long)
        attention = torch.zeros((len(batch), width), dtype=torch.long)
        weight = torch.zeros((len(batch), width - 1), dtype=torch.bool)
        for row, (chunk, scored, _) in enumerate(batch):
            ids[row, :len(chunk)] = torch.tensor(chunk)
            attention[row, :len(chunk)] = 1
            weight[row, :len(scored)] = torch.tensor(scored, dtype=torch.bool)
        nll, real = evaluator.score(ids, attention)
        weight &= real.cpu()
        row_nll = (nll.double().cpu() * weight).sum(-1).tolist()
        for (_, _, sample), value, count in zip(batch, row_nll, weight.sum(-1).tolist()):
            sample_nll[sample] += value
            sample_tokens[sample] += int(count)
    return sample_nll, sample_tokens


# ------------------------------------------------------------------------------------------------------ likelihood

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
    def from_sums(cls, nll_sum: float, tokens: int, sequences: int, bound: bool) -> Likelihood:
        require(tokens > 0, "data", "no validation blocks to evaluate the likelihood on")
        return cls(nll=nll_sum / tokens, ppl=math.exp(nll_sum / tokens), tokens=tokens, sequences=sequences,
                   bound=bound)


def _batches(blocks: Any, batch_size: int, max_blocks: int | None) -> Iterator[torch.Tensor]:
    """Consecutive batches of a :class:`didi.data.corpora.TokenBlocks` (or an (N, L) tensor), at most
    ``max_blocks`` rows."""
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

    with antithetic times per batch (:func:`didi.diffusion.process.sample_times`) drawn from one CPU generator seeded
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


# ----------------------------------------------------------------------------------------------------------- speed

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
                   warmup: int = 1, repeats: int = 1, memory_baseline: int = 0, seed_stride: int = 1,
                   **sample_options: Any) -> TimedSamples:
    """Sample ``num_samples`` sequences batch by batch (batch ``i`` uses seed ``seed + i * seed_stride``), timing
    every batch.

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
    timed = [run(size, seed + i * seed_stride) for i, size in enumerate(sizes)]
    peak = (torch.cuda.max_memory_allocated(device) - memory_baseline) / 2**20 if device.type == "cuda" else None
    return TimedSamples(results=[r for r, _ in timed], latencies=[s for _, s in timed],
                        num_batches=-(-num_samples // batch_size), peak_memory_mib=peak)


# ------------------------------------------------------------------------------------------ frontiers and spreads

def interpolate_at(xs: Sequence[float], ys: Sequence[float], target: float, *, log_y: bool = True
                   ) -> tuple[float, int] | None:
    """``y`` at ``x = target`` along a sweep of points ``(x_i, y_i)`` given in sweep order (e.g. by temperature).

    The first consecutive pair whose ``x`` brackets the target (``min <= target <= max``) is interpolated linearly
    in ``x``, on ``log y`` when ``log_y`` (gen-PPL at a matched entropy: ``log PPL`` linear in entropy between the
    two bracketing temperatures). Returns ``(y, i)`` with ``i`` the pair's first index, or ``None`` when no pair
    brackets the target: the sweep does not reach it and nothing is extrapolated.
    """
    if len(xs) != len(ys):
        raise ValueError(f"xs and ys differ in length ({len(xs)} != {len(ys)})")
    for i in range(len(xs) - 1):
        (x0, y0), (x1, y1) = (xs[i], ys[i]), (xs[i + 1], ys[i + 1])
        if not min(x0, x1) <= target <= max(x0, x1):
            continue
        if x0 == x1:  # then x0 == target
            return y0, i
        w = (target - x0) / (x1 - x0)
        if log_y:
            return math.exp((1 - w) * math.log(y0) + w * math.log(y1)), i
        return (1 - w) * y0 + w * y1, i
    if len(xs) == 1 and xs[0] == target:
        return ys[0], 0
    return None


def mean_std(values: Sequence[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (``ddof = 1``; ``None`` for a single value)."""
    values = np.asarray(values, dtype=np.float64)
    return float(values.mean()), (float(values.std(ddof=1)) if len(values) > 1 else None)


def bootstrap_interval(numerators: Sequence[float], denominators: Sequence[float] | None = None, *,
                       transform: Callable[[np.ndarray], np.ndarray] | None = None, resamples: int = 1000,
                       seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval over samples of ``transform(sum num / sum den)``.

    Each resample draws ``n`` samples with replacement. Mean entropy: ``numerators`` = per-sample entropies, no
    denominators; gen-PPL: per-sample summed NLL over per-sample scored tokens, ``transform = np.exp``.
    """
    num = np.asarray(numerators, dtype=np.float64)
    den = np.ones_like(num) if denominators is None else np.asarray(denominators, dtype=np.float64)
    require(len(num) > 0 and len(num) == len(den), "samples", "bootstrap needs one denominator per sample")
    idx = np.random.default_rng(seed).integers(0, len(num), size=(resamples, len(num)))
    stats = num[idx].sum(1) / den[idx].sum(1)
    if transform is not None:
        stats = transform(stats)
    low, high = np.quantile(stats, [(1 - level) / 2, (1 + level) / 2])
    return float(low), float(high)


# ------------------------------------------------------------------------------------------------------------ MAUVE

MIN_MAUVE_SAMPLES = 16
RELIABLE_MAUVE_SAMPLES = 128
"""Below this many samples per side MAUVE is computed, with a warning: its k-means histograms over so few points
vary a lot from one set of samples to the next."""


@dataclass
class Featurizer:
    """Text -> feature vectors (N, D) for MAUVE; ``name`` says which features (reported next to the number)."""

    name: str
    features: Callable[[Sequence[str]], np.ndarray]


@torch.no_grad()
def evaluator_features(texts: Sequence[str], evaluator: Evaluator, *, batch_size: int = 8) -> np.ndarray:
    """Mean over real tokens of the evaluator's last hidden state, each text re-encoded by its tokenizer and cut
    to its context length: (N, D) float32."""
    require(evaluator.hidden is not None, "mauve_features", f"{evaluator.name} exposes no hidden states")
    encoded = []
    for i, text in enumerate(texts):
        try:
            ids = evaluator.encode(text)[:evaluator.context_len]
        except UnencodableText as exc:
            raise option_error("evaluator", f"{evaluator.name} cannot encode sample {i}: {exc}") from None
        encoded.append(ids or [evaluator.eos_id if evaluator.eos_id is not None else 0])
    pad = evaluator.eos_id if evaluator.eos_id is not None else 0
    out = []
    for start in range(0, len(encoded), batch_size):
        batch = encoded[start:start + batch_size]
        width = max(len(ids) for ids in batch)
        ids = torch.full((len(batch), width), pad, dtype=torch.long)
        attention = torch.zeros((len(batch), width), dtype=torch.long)
        for row, chunk in enumerate(batch):
            ids[row, :len(chunk)] = torch.tensor(chunk)
            attention[row, :len(chunk)] = 1
        hidden = evaluator.hidden(ids, attention).float().cpu()
        weight = attention[..., None].float()
        out.append((hidden * weight).sum(1) / weight.sum(1))
    return torch.cat(out).numpy()


def _gpt2_large_featurizer(name: str, device: torch.device) -> Featurizer | None:
    """MAUVE's reference features (the last token's last hidden state of GPT-2 Large, texts cut to 1024 tokens),
    if the model is available locally; ``None`` otherwise."""
    try:
        from transformers import AutoModel, AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(name, local_files_only=True)
        network = AutoModel.from_pretrained(name, local_files_only=True).float().to(device).eval()
    except Exception:  # noqa: BLE001 - not installed or not downloaded: the caller falls back
        return None

    @torch.no_grad()
    def features(texts: Sequence[str]) -> np.ndarray:
        out = []
        for text in texts:
            ids = tokenizer(text, return_tensors="pt", truncation=True, max_length=1024)["input_ids"].to(device)
            out.append(network(input_ids=ids).last_hidden_state[0, -1].float().cpu())
        return torch.stack(out).numpy()

    return Featurizer(name=f"{name} (last token's last hidden state, as mauve-text)", features=features)


def load_mauve_features(spec: str, evaluator: Evaluator | None, device: torch.device, *,
                        batch_size: int = 8) -> Featurizer:
    """``auto``: GPT-2 Large when available locally, else the evaluator; ``evaluator``: the evaluator's mean-pooled
    last hidden state; any other value: a Hugging Face model name/path available locally."""
    if spec != "evaluator":
        featurizer = _gpt2_large_featurizer("gpt2-large" if spec == "auto" else spec, device)
        if featurizer is not None:
            return featurizer
        require(spec == "auto", "mauve_features", f"{spec!r} is not a Hugging Face model available locally")
    require(evaluator is not None, "mauve_features", "evaluator features need an --evaluator (or an AR --model)")
    require(evaluator.hidden is not None, "mauve_features", f"{evaluator.name} exposes no hidden states")
    return Featurizer(name=f"{evaluator.name} (evaluator: mean-pooled last hidden state)",
                      features=lambda texts: evaluator_features(texts, evaluator, batch_size=batch_size))


def mauve_score(p_features: np.ndarray, q_features: np.ndarray, *, seed: int = 25) -> float:
    """MAUVE (Pillutla et al. 2021, the ``mauve-text`` package with its defaults: PCA to 90% variance, k-means
    with ``max(2, n/10)`` buckets, scaling 5) between model features ``p`` and reference features ``q``."""
    for side, features in (("samples", p_features), ("reference", q_features)):
        require(len(features) >= MIN_MAUVE_SAMPLES, "mauve", f"needs at least {MIN_MAUVE_SAMPLES} samples per side "
                f"(got {len(features)} {side})")
    try:
        import mauve
    except ImportError:
        raise option_error("mauve", "needs the mauve-text package: pip install 'didi[eval]'") from None
    with _native_stderr_silenced():  # faiss warns from C++ whenever there are < 39 points per k-means bucket
        out = mauve.compute_mauve(p_features=np.asarray(p_features, dtype=np.float64),
                                  q_features=np.asarray(q_features, dtype=np.float64), seed=seed, verbose=False)
    return float(out.mauve)


@contextlib.contextmanager
def _native_stderr_silenced() -> Iterator[None]:
    """Send what native code writes to file descriptor 2 to /dev/null for the duration (Python's own stderr is
    untouched when it is not that descriptor, e.g. under pytest's capture)."""
    try:
        fd = sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):
        yield
        return
    sys.stderr.flush()
    saved = os.dup(fd)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), fd)
            yield
    finally:
        os.dup2(saved, fd)
        os.close(saved)
