"""Conditional evaluation, ``didi eval --prefix-tokens P``: every model continues the same held-out prefixes.

* Prefixes (:func:`held_out_prefixes`): ``[BOS]`` and the first ``P`` tokens of ``num_samples`` validation blocks
  of the model's corpus, evenly spaced over the split (the same text for models sharing corpus, tokenizer and
  length). A diffusion model keeps them fixed and fills the other ``L - 1 - P`` positions at every budget
  (:mod:`didi.diffusion.conditioning`); an AR model continues them token by token (``L - 1 - P`` calls).
* gen-PPL of the continuations *given their prefixes* (:func:`continuation_perplexity`): prefix text and
  continuation text are re-tokenised separately by the evaluator and concatenated; only continuation tokens are
  scored (``exp(sum NLL / #scored)`` over all samples, the EOS rule of
  :func:`~.metrics.gen_ppl_scored_tokens` applied to the continuation).
* entropy: unigram entropy of each continuation's own token ids, mean over samples.

The rows are ordinary :class:`~.report.EvalRow` objects with ``prefix_tokens`` set; the report prints them in their
own table (:func:`~.report.conditional_table`).
"""
from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from ...errors import option_error, require
from ...interop.sample_files import decode_as_sampled
from ...runtime.checkpoint import RunConfig
from ...runtime.devices import synchronize
from .metrics import (
    Evaluator,
    Likelihood,
    Model,
    Perplexity,
    UnencodableText,
    chunk_perplexity,
    gen_ppl_scored_tokens,
)
from .quality import CopyIndex
from .report import EvalRow
from .scoring import Scoring


def held_out_prefixes(blocks: Any, num_samples: int, prefix_tokens: int) -> torch.Tensor:
    """(num_samples, 1 + P): the first ``1 + P`` tokens (``[BOS]`` and ``P`` text tokens) of ``num_samples`` blocks
    of a :class:`didi.data.corpora.TokenBlocks`, at evenly spaced indices (cycling when there are fewer blocks)."""
    require(len(blocks) > 0, "data", "the corpus has no validation blocks to take prefixes from")
    require(prefix_tokens + 1 < blocks.seq_len, "prefix_tokens", f"{prefix_tokens} leaves nothing to continue in "
            f"{blocks.seq_len}-token validation blocks")
    if len(blocks) >= num_samples:
        indices = np.linspace(0, len(blocks) - 1, num_samples).round().astype(np.int64)
    else:
        indices = np.arange(num_samples) % len(blocks)
    return blocks.batch(indices)[:, :1 + prefix_tokens]


@torch.no_grad()
def continuation_perplexity(prefixes: list[str], continuations: list[str], evaluator: Evaluator, *,
                            batch_size: int = 8) -> Perplexity:
    """gen-PPL of each continuation given its prefix: ``exp(sum_i NLL(c_i | p_i, c_<i) / #scored)`` over all pairs.

    ``p`` and ``c`` are encoded separately. Beyond the evaluator's context the prefix is cut from the left (at
    least its last token is kept) and a longer continuation is chunked as in :func:`~.metrics.generative_perplexity`
    (the first token of every later chunk is context only).
    """
    require(len(prefixes) == len(continuations) > 0, "samples", "no continuations to evaluate")
    context = evaluator.context_len
    chunks: list[tuple[list[int], list[bool], int]] = []
    for i, (prefix, continuation) in enumerate(zip(prefixes, continuations)):
        try:
            p, c = evaluator.encode(prefix), evaluator.encode(continuation)
        except UnencodableText as exc:
            raise option_error("evaluator", f"{evaluator.name} cannot encode sample {i}: {exc}") from None
        keep = min(len(p), max(1, context - len(c)))
        ids = p[len(p) - keep:] + c
        scored = [False] * keep + gen_ppl_scored_tokens(c, evaluator.eos_id)
        for start in range(0, len(ids), context):
            chunks.append((ids[start:start + context], scored[start + 1:start + context], i))
    return chunk_perplexity(chunks, len(prefixes), evaluator, batch_size,
                            empty="samples: no continuation token to score")


def check_prefix_tokens(config: Any, runs: Sequence[RunConfig]) -> None:
    """Fail before any work when ``--prefix-tokens`` leaves nothing to continue in some model's samples."""
    for path, run in zip(config.models, runs):
        length = config.seq_len or int(run.training.get("seq_len", run.model.max_seq_len))
        require(config.prefix_tokens + 1 < length, "prefix_tokens", f"{config.prefix_tokens} leaves nothing to "
                f"continue in {path}'s {length}-token samples")


def conditional_rows(model: Model, label: str, source: str, blocks: Any, config: Any, scoring: Scoring,
                     likelihood: Likelihood | None, copy: CopyIndex | None = None) -> list[EvalRow]:
    """The conditional rows of one loaded model (``source``: its run directory as given; ``blocks``: its validation
    :class:`~didi.data.corpora.TokenBlocks`): one per budget (one for an AR model), scored by ``scoring`` on the
    continuations (gen-PPL given the prefix under each evaluator; entropy, repetition, diversity and the copy rate
    against ``copy`` of the continuations alone).

    ``config`` is the :class:`~.runner.EvalConfig` (its ``prefix_tokens``, ``num_samples``, ``batch_size``,
    ``seq_len``, ``nfe``, ``sampler``, ``rgas``, ``confidence``, ``temperature``, ``top_k``, ``top_p``, ``greedy_tail``,
    ``use_cache``, ``seed_list``, ``warmup``, ``eval_batch_size``); batch ``i`` of a row uses seed ``seed + i``,
    ``seed`` the first of the sampling seeds. A temperature sweep (``temperatures``) leaves these rows at
    ``temperature``.
    """
    is_ar = model.kind == "ar"
    p = config.prefix_tokens
    length = config.seq_len or model.seq_len
    require(p + 1 < length, "prefix_tokens", f"{p} leaves nothing to continue in {label}'s {length}-token samples")
    prefixes = held_out_prefixes(blocks, config.num_samples, p)
    batch_size = min(config.batch_size or config.num_samples, config.num_samples)
    sampler = "ancestral" if is_ar else config.sampler
    sampler_options = config.sampler_options if sampler == config.sampler else {}
    prefix_texts = decode_as_sampled(model, prefixes[:, 1:])
    seed = config.seed_list[0]
    rows = []
    for nfe in [None] if is_ar else config.nfe:
        results, latencies = [], []
        for i, start in enumerate(range(0, len(prefixes), batch_size)):
            ids = torch.zeros((len(prefixes[start:start + batch_size]), length), dtype=torch.long)
            ids[:, :p + 1] = prefixes[start:start + batch_size]
            fixed = torch.zeros_like(ids, dtype=torch.bool)
            fixed[:, :p + 1] = True
            options = dict(nfe=nfe, batch_size=len(ids), sampler=sampler, prefix=ids, fixed=fixed,
                           use_cache=config.use_cache, temperature=config.temperature, top_k=config.top_k,
                           top_p=config.top_p, greedy_tail=config.greedy_tail, **sampler_options)
            for _ in range(config.warmup if i == 0 else 0):
                model.sample(len(ids), seed=seed, **options)
            synchronize(model.device)
            started = time.perf_counter()
            results.append(model.sample(len(ids), seed=seed + i, **options)[0])
            synchronize(model.device)
            latencies.append(time.perf_counter() - started)
        tokens = torch.cat([r.tokens.cpu() for r in results])
        continuations = tokens[:, p + 1:]
        keys = sorted({k for r in results for k in r.extra_calls})
        row = EvalRow(model=label, kind=model.kind, sampler=results[0].sampler, nfe=nfe, source=source,
                      num_samples=len(tokens), seq_len=length, generated_tokens=length - 1 - p,
                      nfe_per_batch=[r.nfe for r in results],
                      extra_calls={k: [int(r.extra_calls.get(k, 0)) for r in results] for k in keys},
                      batch_sizes=[r.tokens.shape[0] for r in results], latencies_s=latencies,
                      timing=f"measured here: {len(results)} timed batch(es) after {config.warmup} warm-up",
                      likelihood=likelihood, prefix_tokens=p, temperature=config.temperature)
        texts, ids = decode_as_sampled(model, continuations), continuations.tolist()
        perplexities = {e.name: continuation_perplexity(prefix_texts, texts, e, batch_size=config.eval_batch_size)
                        for e in scoring.evaluators}
        scoring.fill(row, [scoring.seed_metrics(texts, ids, seed, protein=False, mauve=False, copy=copy,
                                                perplexities=perplexities)], protein=False)
        rows.append(row)
    return rows
