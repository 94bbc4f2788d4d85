"""The autoregressive model ready to use: :func:`generate` (left to right from ``[BOS]``, KV cache) and
:class:`ARPipeline` (run kind ``ar``: ``didi.load``, ``.sample()``, ``.generate()``, ``.decode()``, ``.token_nll()``),
the baseline and the default offline evaluator. The network itself is :class:`didi.models.gpt.GPT`; every token is
drawn with the float64 categorical of :mod:`didi.diffusion.sampling`.
"""
from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..data.prompts import Prompt, as_prompts, prompt_batches
from ..data.tokenizer import Tokenizer, check_tokenizer_matches, load_tokenizer
from ..diffusion.sampling import SampleResult, SamplingControls, apply_controls, sample_categorical
from ..errors import CheckpointError, option_error, require
from ..interop.sample_files import sample_records
from ..models.gpt import GPT, KVCache, next_token_nll
from ..models.load import load_network
from ..runtime.checkpoint import RunConfig, read_run_config
from ..runtime.devices import autocast, pick_device, resolve_precision, synchronize
from ..runtime.progress import track
from .diffusion import Completion


@torch.no_grad()
def generate(model: Callable[..., torch.Tensor], *, batch_size: int, seq_len: int, bos_id: int,
             generator: torch.Generator | None = None, use_cache: bool = True,
             controls: SamplingControls | None = None, device: torch.device | str = "cpu",
             progress: bool = False, prefix: torch.Tensor | None = None,
             fixed: torch.Tensor | None = None) -> SampleResult:
    """Sample ``x_0 = [BOS]``, then ``x_i ~ p(. | x_<i)`` (float64) for ``i < seq_len``, ``p`` shaped by ``controls``
    (:func:`didi.diffusion.sampling.apply_controls`: temperature, top-k, top-p); with ``controls.greedy_tail`` the
    last token is the argmax.

    ``model(idx, cache=...) -> logits`` is a :class:`GPT` or a wrapper with its signature. With ``use_cache``
    every step feeds only the newest token (a :class:`KVCache` keeps the prefix); without it every step re-reads
    the whole prefix. Either way there is one network call per generated token: ``nfe = seq_len - 1``.

    With ``prefix`` (B, L) and ``fixed`` (B, L), each row's fixed positions (a prefix: an autoregressive model cannot
    fill spans) keep their tokens: generation starts at ``P``, the first position free in some row, with one call
    on ``x_<P``; a row whose prompt is longer keeps its tokens up to its own end. ``nfe = seq_len - P``.
    """
    require(seq_len >= 1, "seq_len", f"must be >= 1 (got {seq_len})")
    controls = controls or SamplingControls()
    device = torch.device(device)
    start = time.perf_counter()
    tokens = torch.full((batch_size, seq_len), bos_id, dtype=torch.long, device=device)
    first = 1
    if prefix is not None:
        fixed = (torch.ones_like(prefix, dtype=torch.bool) if fixed is None else fixed).to(device)
        require(tuple(prefix.shape) == (batch_size, seq_len) and fixed.shape == prefix.shape, "prefix",
                f"must have shape ({batch_size}, {seq_len}) (got {tuple(prefix.shape)})")
        require(bool((fixed.long().cummin(-1).values.bool() == fixed).all()), "infill",
                "an autoregressive model continues prompts only: fill spans with a diffusion model")
        tokens = torch.where(fixed, prefix.to(device), tokens)
        free = (~fixed).any(0).nonzero()
        first = max(1, int(free[0])) if len(free) else seq_len
    cache = KVCache(seq_len) if use_cache else None
    nfe = 0
    for i in track(range(first, seq_len), "sampling", enabled=progress, unit="token"):
        inputs = tokens[:, :i] if cache is None or i == first else tokens[:, i - 1:i]
        logits = model(inputs, cache=cache)[:, -1]
        nfe += 1
        probs = apply_controls(logits, controls)
        greedy = controls.greedy_tail and i == seq_len - 1
        drawn = probs.argmax(-1) if greedy else sample_categorical(probs, generator)
        tokens[:, i] = drawn if prefix is None else torch.where(fixed[:, i], tokens[:, i], drawn)
    synchronize(device)
    return SampleResult(tokens=tokens, nfe=nfe, seconds=time.perf_counter() - start, num_steps=seq_len - 1,
                        sampler="autoregressive", fixed=fixed if prefix is not None else None)


@dataclass
class ARPipeline:
    """An autoregressive LM ready to sample and to score text: network + tokenizer (run kind ``ar``)."""

    config: RunConfig
    network: GPT
    tokenizer: Tokenizer
    device: torch.device
    path: Path | None = None
    precision: torch.dtype | None = None

    @property
    def kind(self) -> str:
        return self.config.kind

    @property
    def seq_len(self) -> int:
        """Training block length: the default sample length and the context used when scoring text."""
        return int(self.config.training.get("seq_len", self.config.model.max_seq_len))

    @classmethod
    def from_pretrained(cls, run_dir: str | Path, device: str | torch.device = "auto", weights: str = "ema",
                        precision: str = "auto") -> ARPipeline:
        """Load a run directory of kind ``ar`` (EMA weights unless ``weights='model'``, strict key check)."""
        run_dir = Path(run_dir)
        config = read_run_config(run_dir)
        if config.kind != "ar" or config.model.arch != "gpt":
            raise CheckpointError(f"{run_dir}: is a {config.kind!r} model, not an autoregressive (kind 'ar') model")
        device = pick_device(str(device)) if not isinstance(device, torch.device) else device
        tokenizer = load_tokenizer(run_dir, config.tokenizer)
        check_tokenizer_matches(tokenizer, config, str(run_dir))
        return cls(config=config, network=load_network(run_dir, config, weights, device), tokenizer=tokenizer,
                   device=device, path=run_dir, precision=resolve_precision(precision, device))

    def logits(self, idx: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        with autocast(self.device, self.precision):
            return self.network(idx, cache=cache)

    @torch.no_grad()
    def sample(self, num_samples: int, nfe: int | None = None, *, seed: int = 0, batch_size: int | None = None,
               seq_len: int | None = None, sampler: str = "ancestral", use_cache: bool = True, top_p: float = 1.0,
               progress: bool = False, temperature: float = 1.0, top_k: int | None = None,
               greedy_tail: bool = False, prompt: str | Prompt | Sequence[str | Prompt] | None = None,
               infill: str | Sequence[str] | None = None, prefix: torch.Tensor | None = None,
               fixed: torch.Tensor | None = None, stride: int | None = None, **_: Any) -> list[SampleResult]:
        """Generate ``num_samples`` sequences ``[BOS] x_1 .. x_{L-1}`` in batches; one result per batch.

        ``nfe`` is ignored: an AR model always makes ``seq_len - 1`` calls (the signature matches
        :meth:`didi.pipelines.diffusion.DiffusionPipeline.sample`). ``temperature``, ``top_k``, ``top_p`` and
        ``greedy_tail`` are :class:`didi.diffusion.sampling.SamplingControls`. ``prompt`` (``[BOS] prompt`` kept, the
        rest generated; ``seq_len - P`` calls) and ``prefix``/``fixed`` tensors condition as there; templates
        (``infill``) and lengths above the model's are refused.
        """
        controls = SamplingControls(temperature=temperature, top_k=top_k, top_p=top_p, greedy_tail=greedy_tail)
        if sampler != "ancestral":
            raise option_error("sampler", f"{sampler!r} is not available for an autoregressive model: it samples "
                                          "token by token (ancestral); rgas needs a DiDi-Instruct student")
        require(infill is None, "infill", "an autoregressive model continues prompts only: fill spans with a "
                                          "diffusion model")
        require(stride is None, "stride", "semi-autoregressive windows are for diffusion models")
        require(num_samples >= 1, "num_samples", f"must be >= 1 (got {num_samples})")
        max_len = self.config.model.max_seq_len
        require(seq_len is None or 1 <= seq_len <= max_len, "seq_len",
                f"must be in [1, {max_len}] for this model (got {seq_len})")
        batch_size = min(batch_size or num_samples, num_samples)
        generator = torch.Generator(device=self.device).manual_seed(seed)
        prompts = as_prompts(self.tokenizer, prompt)
        if prompts:
            batches = [(b.size, b.length, b.ids, b.fixed, b.rows) for b in prompt_batches(
                prompts, num_samples=num_samples, length=seq_len, default_length=self.seq_len, batch_size=batch_size)]
        else:
            prefix = prefix.expand(num_samples, -1) if prefix is not None and prefix.dim() == 1 else prefix
            fixed = fixed.expand_as(prefix) if fixed is not None and prefix is not None else fixed
            length = prefix.shape[1] if prefix is not None else seq_len or self.seq_len
            batches = [(min(batch_size, num_samples - start), length,
                        None if prefix is None else prefix[start:start + batch_size],
                        None if fixed is None else fixed[start:start + batch_size], [])
                       for start in range(0, num_samples, batch_size)]
        results = []
        for size, length, ids, kept, rows in batches:
            result = generate(self.logits, batch_size=size, seq_len=length, bos_id=self.tokenizer.bos_id,
                              generator=generator, use_cache=use_cache, controls=controls, device=self.device,
                              progress=progress, prefix=ids, fixed=kept)
            result.info["controls"] = dataclasses.asdict(controls)
            if rows:
                result.info["conditioning"] = rows
            results.append(result)
        return results

    @torch.no_grad()
    def hidden_states(self, ids: torch.Tensor) -> torch.Tensor:
        """The network's last hidden state (B, L, D) of ``ids`` (B, L), float32 (MAUVE features)."""
        with autocast(self.device, self.precision):
            return self.network.hidden(ids.to(self.device)).float()

    def generate(self, prompt: str | Sequence[str] | None = None, *, infill: str | Sequence[str] | None = None,
                 num_samples: int = 1, nfe: int | None = None, **options: Any) -> list[Completion]:
        """Continue prompts: ``num_samples`` :class:`~didi.pipelines.diffusion.Completion` per prompt, in order, as
        :meth:`DiffusionPipeline.generate <didi.pipelines.diffusion.DiffusionPipeline.generate>` (``text`` is the prompt
        and its continuation, ``generated`` the continuation). ``options`` are those of :meth:`sample`; ``nfe`` is
        ignored (one call per token) and templates (``infill``) are refused."""
        require(prompt is not None or infill is not None, "prompt", "give a prompt to continue")
        return [Completion.from_record(r) for r in
                sample_records(self, self.sample(num_samples, nfe, prompt=prompt, infill=infill, **options))]

    def decode(self, tokens: torch.Tensor, keep_special: bool = False) -> list[str]:
        """The text of each row of ``tokens`` (B, L), without the ``[BOS]`` start token that frames every sample
        (position 0) unless ``keep_special``; other tokens, end-of-text included, are decoded as they are."""
        bos = self.tokenizer.bos_id
        return [self.tokenizer.decode(row if keep_special or not row or row[0] != bos else row[1:])
                for row in tokens.cpu().tolist()]

    @torch.no_grad()
    def token_nll(self, ids: torch.Tensor, attention_mask: torch.Tensor | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-token NLL of ``ids`` (B, L) and which of them are real: both (B, L-1), predicting ``ids[:, 1:]``.

        ``attention_mask`` (B, L) marks real tokens of right-padded rows; causal attention keeps padding from
        influencing real positions, so only the returned mask needs it.
        """
        ids = ids.to(self.device)
        nll = next_token_nll(self.logits, ids)
        mask = torch.ones_like(nll, dtype=torch.bool) if attention_mask is None else \
            attention_mask[:, 1:].to(self.device).bool()
        return nll, mask
