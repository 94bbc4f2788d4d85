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
* :func:`timed_sampling` — latency per batch, generated tokens per second, exact NFE, peak memory.

Protein metrics are :func:`didi.data.protein.protein_metrics`; :mod:`.runner` applies all of them to models and
sample files.
"""
from __future__ import annotations

import contextlib
import json
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ...ar import ARPipeline
from ...config import DiffusionConfig
from ...diffusion.process import Denoiser, LogLinearSchedule, mdlm_token_losses, sample_times
from ...diffusion.sampling import SampleResult
from ...errors import DataError, DidiError, option_error, require
from ...models.gpt import next_token_nll
from ...pipeline import DiffusionPipeline
from ...runtime.checkpoint import read_run_config
from ...runtime.utils import pick_device, synchronize

Model = DiffusionPipeline | ARPipeline


class UnencodableText(DidiError):
    """The evaluator's tokenizer cannot represent a sample's text."""


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


def is_didi_run(path: str | Path) -> bool:
    """A directory whose ``config.json`` is a didi :class:`~didi.runtime.checkpoint.RunConfig` (has ``kind``)."""
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
    nll_sum, count = score_chunks(chunks, evaluator, batch_size)
    if count == 0:
        raise DataError("samples: no token to score (every re-tokenised sample is shorter than 2 tokens)")
    return Perplexity(ppl=math.exp(nll_sum / count), nll=nll_sum / count, tokens=count, samples=len(texts),
                      chunks=len(chunks))


@torch.no_grad()
def score_chunks(chunks: Sequence[tuple[list[int], list[bool]]], evaluator: Evaluator, batch_size: int
                 ) -> tuple[float, int]:
    """``(sum NLL, #scored)`` over ``chunks`` of evaluator ids with, per chunk, which targets ``ids[1:]`` count;
    scored in right-padded batches of ``batch_size`` (padding masked)."""
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
    return nll_sum, count


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
