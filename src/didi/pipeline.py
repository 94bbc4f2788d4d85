"""Ready-to-use model objects: ``didi.load(path)`` returns one, ``.sample()`` generates, ``.decode()`` detokenizes.

``DiffusionPipeline`` wraps a masked-diffusion network (teacher or DiDi-Instruct student) with its schedule,
tokenizer and, for students, the discriminator used by RGAS. ``from_pretrained``/``save_pretrained`` read and
write run directories (:mod:`didi.runtime.checkpoint`).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .data.tokenizer import Tokenizer, check_tokenizer_matches, load_tokenizer
from .diffusion.process import LogLinearSchedule
from .diffusion.sampling import AncestralConfig, SampleResult, SamplingControls, ancestral_sample
from .errors import CheckpointError, option_error, require
from .models.dit import DiT
from .runtime.checkpoint import RunConfig, load_state_dict_strict, load_tensors, read_run_config, weights_file
from .runtime.utils import autocast, pick_device, resolve_precision


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
        network = DiT(config.model)
        path = weights_file(run_dir, weights)
        load_state_dict_strict(network, load_tensors(path), str(path))
        network.to(device).eval()
        discriminator = None
        disc_path = run_dir / "discriminator.safetensors"
        if disc_path.exists():
            from .models.discriminator import empty_discriminator

            spec = config.extra.get("discriminator", {})
            discriminator = empty_discriminator(config.model, spec.get("time_blocks"), window=spec.get("window", 0),
                                                normalize=spec.get("normalize", False),
                                                trainable_blocks=spec.get("trainable_blocks"))
            load_state_dict_strict(discriminator, load_tensors(disc_path), str(disc_path))
            discriminator.to(device).eval()
        return cls(config=config, network=network, tokenizer=tokenizer, device=device, discriminator=discriminator,
                   path=run_dir, precision=resolve_precision(precision, device))

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
               greedy_tail: bool = False, **sampler_options: Any) -> list[SampleResult]:
        """Generate ``num_samples`` sequences in batches; one :class:`SampleResult` per batch.

        ``sampler``: ``ancestral`` (MDLM ancestral with the cache trick) or ``rgas`` (students only, see
        :mod:`didi.diffusion.rgas`; ``sampler_options`` are :class:`didi.diffusion.rgas.RGASConfig` fields, e.g.
        ``num_candidates=8``). ``temperature``, ``top_k``, ``top_p`` and ``greedy_tail`` (the last step takes the
        argmax) shape every draw of either sampler (:class:`didi.diffusion.sampling.SamplingControls`).
        """
        controls = SamplingControls(temperature=temperature, top_k=top_k, top_p=top_p, greedy_tail=greedy_tail)
        require(num_samples >= 1, "num_samples", f"must be >= 1 (got {num_samples})")
        seq_len = seq_len or self.seq_len
        require(1 <= seq_len <= self.config.model.max_seq_len, "seq_len",
                f"must be in [1, {self.config.model.max_seq_len}] for this model (got {seq_len})")
        batch_size = min(batch_size or num_samples, num_samples)
        config = AncestralConfig(num_steps=nfe, use_cache=use_cache, top_p=top_p, temperature=temperature,
                                 top_k=top_k, noise_removal="greedy" if greedy_tail else "ancestral")
        generator = torch.Generator(device=self.device).manual_seed(seed)
        results = []
        for start in range(0, num_samples, batch_size):
            b = min(batch_size, num_samples - start)
            if sampler == "ancestral":
                result = ancestral_sample(self.denoiser, batch_size=b, seq_len=seq_len, mask_index=self.mask_index,
                                          schedule=self.schedule, config=config,
                                          time_conditioning=self.config.diffusion.time_conditioning,
                                          generator=generator, device=self.device, progress=progress)
            elif sampler == "rgas":
                from .diffusion.rgas import RGASConfig, rgas_sample

                rgas_config = RGASConfig(**sampler_options)
                if self.discriminator is None:
                    raise option_error("sampler", f"rgas needs a DiDi-Instruct student with a discriminator; "
                                                  f"{self.path or 'this model'} has none")
                result = rgas_sample(self.denoiser, self.discriminate, batch_size=b, seq_len=seq_len, num_steps=nfe,
                                     mask_index=self.mask_index, schedule=self.schedule,
                                     time_conditioning=self.config.diffusion.time_conditioning, config=rgas_config,
                                     generator=generator, device=self.device, use_cache=use_cache,
                                     controls=controls, progress=progress)
            else:
                raise CheckpointError(f"--sampler: unknown sampler {sampler!r} (expected ancestral or rgas)")
            result.info["controls"] = dataclasses.asdict(controls)
            results.append(result)
        return results

    def decode(self, tokens: torch.Tensor) -> list[str]:
        return [self.tokenizer.decode(row.tolist()) for row in tokens.cpu()]


def load(path_or_repo: str | Path, device: str = "auto", weights: str = "ema", precision: str = "auto"):
    """Load a run directory (any kind) as a pipeline.

    A Lightning ``.ckpt``, a Hugging Face style directory or a Hub repo id is converted once into the cache
    (``$DIDI_CACHE``, see :func:`didi.interop.as_run_dir`) and loaded from there.
    """
    from .interop import as_run_dir

    path = as_run_dir(path_or_repo)
    config = read_run_config(path)
    if config.kind == "ar":
        from .ar import ARPipeline

        return ARPipeline.from_pretrained(path, device=device, weights=weights, precision=precision)
    return DiffusionPipeline.from_pretrained(path, device=device, weights=weights, precision=precision)

