"""The autoregressive model ready to use: :func:`generate` (left to right from ``[BOS]``, KV cache) and
:class:`ARPipeline` (run kind ``ar``: ``didi.load``, ``.sample()``, ``.token_nll()``), the baseline and the default
offline evaluator. The network itself is :class:`didi.models.gpt.GPT`; every token is drawn with the float64
categorical of :mod:`didi.diffusion.sampling`.
"""
from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from .data.tokenizer import Tokenizer, check_tokenizer_matches, load_tokenizer
from .diffusion.sampling import SampleResult, SamplingControls, apply_controls, sample_categorical
from .errors import CheckpointError, option_error, require
from .models.gpt import GPT, KVCache, next_token_nll
from .runtime.checkpoint import RunConfig, load_state_dict_strict, load_tensors, read_run_config, weights_file
from .runtime.utils import autocast, pick_device, resolve_precision, synchronize


@torch.no_grad()
def generate(model: Callable[..., torch.Tensor], *, batch_size: int, seq_len: int, bos_id: int,
             generator: torch.Generator | None = None, use_cache: bool = True,
             controls: SamplingControls | None = None, device: torch.device | str = "cpu",
             progress: bool = False) -> SampleResult:
    """Sample ``x_0 = [BOS]``, then ``x_i ~ p(. | x_<i)`` (float64) for ``i < seq_len``, ``p`` shaped by ``controls``
    (:func:`didi.diffusion.sampling.apply_controls`: temperature, top-k, top-p); with ``controls.greedy_tail`` the
    last token is the argmax.

    ``model(idx, cache=...) -> logits`` is a :class:`GPT` or a wrapper with its signature. With ``use_cache``
    every step feeds only the newest token (a :class:`KVCache` keeps the prefix); without it every step re-reads
    the whole prefix. Either way there is one network call per generated token: ``nfe = seq_len - 1``.
    """
    require(seq_len >= 1, "seq_len", f"must be >= 1 (got {seq_len})")
    controls = controls or SamplingControls()
    device = torch.device(device)
    start = time.perf_counter()
    tokens = torch.full((batch_size, seq_len), bos_id, dtype=torch.long, device=device)
    cache = KVCache(seq_len) if use_cache else None
    nfe = 0
    for i in tqdm(range(1, seq_len), desc="sampling", disable=not progress, leave=False):
        inputs = tokens[:, i - 1:i] if cache is not None else tokens[:, :i]
        logits = model(inputs, cache=cache)[:, -1]
        nfe += 1
        probs = apply_controls(logits, controls)
        greedy = controls.greedy_tail and i == seq_len - 1
        tokens[:, i] = probs.argmax(-1) if greedy else sample_categorical(probs, generator)
    synchronize(device)
    return SampleResult(tokens=tokens, nfe=nfe, seconds=time.perf_counter() - start, num_steps=seq_len - 1,
                        sampler="autoregressive")


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
        network = GPT(config.model)
        path = weights_file(run_dir, weights)
        load_state_dict_strict(network, load_tensors(path), str(path))
        network.to(device).eval()
        return cls(config=config, network=network, tokenizer=tokenizer, device=device, path=run_dir,
                   precision=resolve_precision(precision, device))

    def logits(self, idx: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        with autocast(self.device, self.precision):
            return self.network(idx, cache=cache)

    @torch.no_grad()
    def sample(self, num_samples: int, nfe: int | None = None, *, seed: int = 0, batch_size: int | None = None,
               seq_len: int | None = None, sampler: str = "ancestral", use_cache: bool = True, top_p: float = 1.0,
               progress: bool = False, temperature: float = 1.0, top_k: int | None = None,
               greedy_tail: bool = False, **_: Any) -> list[SampleResult]:
        """Generate ``num_samples`` sequences ``[BOS] x_1 .. x_{L-1}`` in batches; one result per batch.

        ``nfe`` is ignored: an AR model always makes ``seq_len - 1`` calls (the signature matches
        :meth:`didi.pipeline.DiffusionPipeline.sample`). ``temperature``, ``top_k``, ``top_p`` and ``greedy_tail``
        are :class:`didi.diffusion.sampling.SamplingControls`.
        """
        controls = SamplingControls(temperature=temperature, top_k=top_k, top_p=top_p, greedy_tail=greedy_tail)
        if sampler != "ancestral":
            raise option_error("sampler", f"{sampler!r} is not available for an autoregressive model: it samples "
                                          "token by token (ancestral); rgas needs a DiDi-Instruct student")
        require(num_samples >= 1, "num_samples", f"must be >= 1 (got {num_samples})")
        seq_len = seq_len or self.seq_len
        require(1 <= seq_len <= self.config.model.max_seq_len, "seq_len",
                f"must be in [1, {self.config.model.max_seq_len}] for this model (got {seq_len})")
        batch_size = min(batch_size or num_samples, num_samples)
        generator = torch.Generator(device=self.device).manual_seed(seed)
        results = [generate(self.logits, batch_size=min(batch_size, num_samples - start), seq_len=seq_len,
                            bos_id=self.tokenizer.bos_id, generator=generator, use_cache=use_cache,
                            controls=controls, device=self.device, progress=progress)
                   for start in range(0, num_samples, batch_size)]
        for result in results:
            result.info["controls"] = dataclasses.asdict(controls)
        return results

    @torch.no_grad()
    def hidden_states(self, ids: torch.Tensor) -> torch.Tensor:
        """The network's last hidden state (B, L, D) of ``ids`` (B, L), float32 (MAUVE features)."""
        with autocast(self.device, self.precision):
            return self.network.hidden(ids.to(self.device)).float()

    def decode(self, tokens: torch.Tensor) -> list[str]:
        return [self.tokenizer.decode(row.tolist()) for row in tokens.cpu()]

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
