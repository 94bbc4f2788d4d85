"""The diffusion pipeline: a masked-diffusion network (teacher or distilled student) ready to sample.

:class:`DiffusionPipeline` wraps the network with its schedule, tokenizer and, for DiDi-Instruct students, the
discriminator used by RGAS; ``.sample()`` generates with any sampler of :mod:`didi.diffusion`, ``.generate()``
completes prompts and templates, ``.decode()`` detokenizes. ``from_pretrained`` reads a run directory
(:mod:`didi.runtime.checkpoint`); ``didi.load`` (:mod:`.load`) picks the pipeline of any run.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..data.prompts import Prompt, PromptBatch, as_prompts, prompt_batches
from ..data.tokenizer import Tokenizer, check_tokenizer_matches, load_tokenizer
from ..diffusion.conditioning import semi_autoregressive_sample
from ..diffusion.confidence import ORDERS, ConfidenceConfig, confidence_sample
from ..diffusion.process import LogLinearSchedule
from ..diffusion.sampling import SampleResult, SamplingControls, ancestral_sample, check_num_steps
from ..errors import CheckpointError, option_error, require
from ..interop.sample_files import sample_records
from ..models.dit import DiT
from ..models.load import load_discriminator, load_network
from ..runtime.checkpoint import RunConfig, read_run_config
from ..runtime.devices import autocast, pick_device, resolve_precision

SAMPLERS = ("ancestral", "rgas", *ORDERS)
"""The samplers of a diffusion pipeline (``didi sample/eval --sampler``): the ancestral sampler, RGAS (students with
a discriminator) and the confidence-ordered samplers of :mod:`didi.diffusion.confidence`."""


def require_discriminator(has_one: bool, path: Path | str | None) -> None:
    """``--sampler rgas`` needs a DiDi-Instruct student with a discriminator (one clear error otherwise)."""
    if not has_one:
        raise option_error("sampler", f"rgas needs a DiDi-Instruct student with a discriminator; "
                                      f"{path or 'this model'} has none")


@dataclass
class DiffusionPipeline:
    """A masked-diffusion LM ready to sample: network + schedule + tokenizer (+ discriminator for students)."""

    config: RunConfig
    network: DiT
    tokenizer: Tokenizer
    device: torch.device
    discriminator: DiT | None = None
    path: Path | None = None
    precision: torch.dtype | None = None

    @property
    def kind(self) -> str:
        return self.config.kind

    @property
    def schedule(self) -> LogLinearSchedule:
        return LogLinearSchedule(self.config.diffusion.eps)

    @property
    def mask_index(self) -> int:
        return self.config.diffusion.mask_index

    @property
    def seq_len(self) -> int:
        return int(self.config.training.get("seq_len", self.config.model.max_seq_len))

    @classmethod
    def from_pretrained(cls, run_dir: str | Path, device: str | torch.device = "auto", weights: str = "ema",
                        precision: str = "auto") -> DiffusionPipeline:
        run_dir = Path(run_dir)
        config = read_run_config(run_dir)
        if config.kind not in ("mdlm", "didi") or config.diffusion is None:
            raise CheckpointError(f"{run_dir}: is a {config.kind!r} model, not a masked-diffusion model")
        device = pick_device(str(device)) if not isinstance(device, torch.device) else device
        tokenizer = load_tokenizer(run_dir, config.tokenizer)
        check_tokenizer_matches(tokenizer, config, str(run_dir))
        return cls(config=config, network=load_network(run_dir, config, weights, device), tokenizer=tokenizer,
                   device=device, discriminator=load_discriminator(run_dir, config, device), path=run_dir,
                   precision=resolve_precision(precision, device))

    def denoiser(self, z: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        with autocast(self.device, self.precision):
            return self.network(z, sigma)

    def discriminate(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """Discriminator logits (B, L) in float32 for ids (B, L) or soft inputs (B, L, V), under the pipeline's
        autocast (the discriminator function of :func:`didi.diffusion.rgas.rgas_sample`)."""
        with autocast(self.device, self.precision):
            return self.discriminator(x, sigma).float()

    @torch.no_grad()
    def sample(self, num_samples: int, nfe: int, *, seed: int = 0, batch_size: int | None = None,
               seq_len: int | None = None, sampler: str = "ancestral", use_cache: bool = True, top_p: float = 1.0,
               progress: bool = False, temperature: float = 1.0, top_k: int | None = None,
               greedy_tail: bool = False, prompt: str | Prompt | Sequence[str | Prompt] | None = None,
               infill: str | Sequence[str] | None = None, prefix: torch.Tensor | None = None,
               fixed: torch.Tensor | None = None, stride: int | None = None,
               on_step: Callable[[int, torch.Tensor], None] | None = None,
               **sampler_options: Any) -> list[SampleResult]:
        """Generate ``num_samples`` sequences in batches; one :class:`SampleResult` per batch.

        ``sampler``: ``ancestral`` (MDLM ancestral with the cache trick), ``rgas`` (students only, see
        :mod:`didi.diffusion.rgas`; ``sampler_options`` are :class:`didi.diffusion.rgas.RGASConfig` fields, e.g.
        ``num_candidates=8``) or a confidence-ordered sampler, ``maskgit``, ``low-confidence`` or ``threshold``
        (:mod:`didi.diffusion.confidence`; ``sampler_options`` are
        :class:`~didi.diffusion.confidence.ConfidenceConfig` fields, e.g. ``threshold=0.8``). ``temperature``,
        ``top_k``, ``top_p`` and ``greedy_tail`` (the last step takes the argmax) shape every draw of every sampler
        (:class:`didi.diffusion.sampling.SamplingControls`).

        Conditioning (docs/conditioning.md), with ``num_samples`` rows per text: ``prompt`` (a text, a
        :class:`~didi.data.prompts.Prompt` or a list; continued up to ``seq_len``) or ``infill`` (a template or a
        list; ``[MASK:n]`` spans filled, the length is the template's); or, token by token, ``prefix`` and its
        ``fixed`` positions, (num_samples, L) tensors. A result's ``fixed`` holds the kept positions and
        ``info["conditioning"]`` each row's text and generated spans (:meth:`generate` decodes them).

        ``seq_len`` above the model's maximum length samples semi-autoregressively
        (:func:`didi.diffusion.conditioning.semi_autoregressive_sample`) in windows of the training length framed by
        [BOS] ... [EOS], ``stride`` new tokens per window (default: half a window); ``nfe`` is then the budget of
        each window and a result's ``nfe`` counts every call of every window.

        ``on_step(i, z)`` sees the state (B, L) of the batch being sampled after each step ``i`` (of each window).
        """
        controls = SamplingControls(temperature=temperature, top_k=top_k, top_p=top_p, greedy_tail=greedy_tail)
        require(num_samples >= 1, "num_samples", f"must be >= 1 (got {num_samples})")
        require(seq_len is None or seq_len >= 1, "seq_len", f"must be >= 1 (got {seq_len})")
        batch_size = min(batch_size or num_samples, num_samples)
        batches = self._batches(num_samples, batch_size, seq_len, as_prompts(self.tokenizer, prompt, infill),
                                prefix, fixed)
        max_len = self.config.model.max_seq_len
        long = any(batch.length > max_len for batch in batches)
        require(stride is None or long, "stride", f"applies to samples longer than the model's {max_len} tokens "
                                                  "(semi-autoregressive generation; raise --length)")
        frame = self._window_frame() if long else ((), ())
        generator = torch.Generator(device=self.device).manual_seed(seed)
        draw = self._draw(nfe, sampler, use_cache, controls, progress, sampler_options, generator, on_step)
        window = self.seq_len - len(frame[0]) - len(frame[1])
        if long:
            require(stride is None or 1 <= stride < window, "stride",
                    f"must be in [1, {window - 1}]: below the window of {window} tokens (the model's {self.seq_len} "
                    f"minus [BOS] and [EOS]) (got {stride})")
        results = []
        for batch in batches:
            if batch.length <= max_len:
                result = draw(batch.size, batch.length, batch.ids, batch.fixed)
            else:
                result = self._long_sample(draw, batch, frame, stride or max(1, window // 2), progress)
            result.info["controls"] = dataclasses.asdict(controls)
            if batch.rows:
                result.info["conditioning"] = batch.rows
            results.append(result)
        return results

    def _batches(self, num_samples: int, batch_size: int, seq_len: int | None, prompts: list[Prompt],
                 prefix: torch.Tensor | None, fixed: torch.Tensor | None) -> list[PromptBatch]:
        """The batches to sample: conditioned rows (texts or tensors), or unconditional ones (``ids`` None)."""
        if prompts:
            require(prefix is None and fixed is None, "prefix", "give texts (prompt, infill) or tensors, not both")
            return prompt_batches(prompts, num_samples=num_samples, length=seq_len, default_length=self.seq_len,
                                  batch_size=batch_size)
        if prefix is None:
            require(fixed is None, "fixed", "needs the tokens of the fixed positions (prefix)")
            length = seq_len or self.seq_len
            return [PromptBatch(size=min(batch_size, num_samples - start), length=length)
                    for start in range(0, num_samples, batch_size)]
        prefix = prefix.expand(num_samples, -1) if prefix.dim() == 1 else prefix
        require(prefix.shape[0] == num_samples and (seq_len is None or seq_len == prefix.shape[1]), "prefix",
                f"must have shape ({num_samples}, {seq_len or 'L'}) (got {tuple(prefix.shape)})")
        fixed = prefix != self.mask_index if fixed is None else fixed.expand_as(prefix)
        return [PromptBatch(size=min(batch_size, num_samples - start), length=prefix.shape[1],
                            ids=prefix[start:start + batch_size], fixed=fixed[start:start + batch_size])
                for start in range(0, num_samples, batch_size)]

    def _long_sample(self, draw: Callable[..., SampleResult], batch: PromptBatch,
                     frame: tuple[tuple[int, ...], tuple[int, ...]], stride: int, progress: bool) -> SampleResult:
        """A batch longer than the model: ``[BOS]`` (fixed) and the rest in framed windows, ``[BOS] window [EOS]``,
        the frame's [BOS] standing for the sequence's own in the first window. Window spans are reported in
        sequence positions."""
        bos = self.tokenizer.bos_id
        ids = torch.full((batch.size, batch.length), bos, dtype=torch.long) if batch.ids is None else batch.ids
        fixed = torch.zeros_like(ids, dtype=torch.bool) if batch.fixed is None else batch.fixed
        fixed = fixed.clone()
        require(bool((ids[:, 0] == bos).all() and (batch.fixed is None or fixed[:, 0].all())), "prefix",
                "a sequence longer than the model starts with its fixed [BOS] (windows are framed by [BOS] ... [EOS])")
        fixed[:, 0] = True
        ids, fixed = ids.to(self.device), fixed.to(self.device)
        result = semi_autoregressive_sample(
            lambda z, f: draw(batch.size, self.seq_len, z, f), batch_size=batch.size, seq_len=batch.length - 1,
            window=self.seq_len, stride=stride, mask_index=self.mask_index, prefix=ids[:, 1:], fixed=fixed[:, 1:],
            head=frame[0], tail=frame[1], device=self.device, progress=progress)
        for window in result.info["windows"]:
            window["start"] += 1
            window["end"] += 1
        result.tokens = torch.cat([ids[:, :1], result.tokens], 1)
        result.fixed = fixed
        return result

    def _window_frame(self) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """``([BOS], [EOS])``: a wrap-packed model was trained on ``[BOS] chunk [EOS]`` blocks. A crop-packed model
        (one document per block, e.g. proteins) never saw a window inside a document: refused."""
        from ..data.corpora import resolve_packing

        packing = resolve_packing(str(self.config.data.get("packing", "auto")), self.tokenizer)
        require(packing == "wrap", "length", f"above the model's {self.config.model.max_seq_len} tokens needs a "
                                             f"wrap-packed model; this one was trained on {packing}-packed blocks "
                                             "(one document per block, never a window inside one)")
        return (self.tokenizer.bos_id,), (self.tokenizer.eos_id,)

    def _draw(self, nfe: int, sampler: str, use_cache: bool, controls: SamplingControls, progress: bool,
              sampler_options: dict[str, Any], generator: torch.Generator,
              on_step: Callable[[int, torch.Tensor], None] | None = None
              ) -> Callable[[int, int, torch.Tensor | None, torch.Tensor | None], SampleResult]:
        """``draw(batch_size, seq_len, prefix, fixed) -> SampleResult`` with the chosen sampler (options checked
        here, before any sampling)."""
        check_num_steps(nfe)
        options = dict(num_steps=nfe, mask_index=self.mask_index, schedule=self.schedule, controls=controls,
                       use_cache=use_cache, time_conditioning=self.config.diffusion.time_conditioning,
                       generator=generator, device=self.device, progress=progress, on_step=on_step)
        if sampler == "ancestral":
            return lambda b, length, prefix, fixed: ancestral_sample(self.denoiser, batch_size=b, seq_len=length,
                                                                     prefix=prefix, fixed=fixed, **options)
        if sampler == "rgas":
            from ..diffusion.rgas import RGASConfig, rgas_sample

            rgas_config = RGASConfig(**sampler_options)
            require_discriminator(self.discriminator is not None, self.path)
            return lambda b, length, prefix, fixed: rgas_sample(self.denoiser, self.discriminate, batch_size=b,
                                                                seq_len=length, prefix=prefix, fixed=fixed,
                                                                config=rgas_config, **options)
        if sampler in ORDERS:
            confidence = ConfidenceConfig(order=sampler, **sampler_options)
            return lambda b, length, prefix, fixed: confidence_sample(self.denoiser, batch_size=b, seq_len=length,
                                                                      prefix=prefix, fixed=fixed, config=confidence,
                                                                      **options)
        raise option_error("sampler", f"unknown sampler {sampler!r} (expected one of {', '.join(SAMPLERS)})")

    def generate(self, prompt: str | Sequence[str] | None = None, *, infill: str | Sequence[str] | None = None,
                 num_samples: int = 1, nfe: int = 16, **options: Any) -> list[Completion]:
        """Complete prompts or fill templates: ``num_samples`` :class:`Completion` per text, in order.

        ``model.generate("ROMEO:", nfe=16)[0].text`` is the prompt and its continuation; ``.generated`` the generated
        span(s) alone. ``options`` are those of :meth:`sample` (``seq_len``, ``sampler``, ``seed``, ...).
        """
        require(prompt is not None or infill is not None, "prompt", "give a prompt or an infill template")
        return [Completion.from_record(r) for r in
                sample_records(self, self.sample(num_samples, nfe, prompt=prompt, infill=infill, **options))]

    def decode(self, tokens: torch.Tensor) -> list[str]:
        return [self.tokenizer.decode(row.tolist()) for row in tokens.cpu()]


@dataclass
class Completion:
    """A completed prompt or template (:meth:`DiffusionPipeline.generate`): ``text`` in full (without the [BOS] the
    prompt added), ``generated`` the text of each generated span, ``prompt`` the text given, ``nfe`` the network
    calls of its batch."""

    text: str
    generated: list[str]
    prompt: str
    tokens: list[int]
    nfe: int

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> Completion:
        return cls(text=record["text"], generated=record["generated"],
                   prompt=record.get("prompt", record.get("infill", "")), tokens=record["tokens"], nfe=record["nfe"])
