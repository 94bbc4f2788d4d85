"""The masked-diffusion method: the noise process and its losses (:mod:`.process`), the ancestral sampler
(:mod:`.sampling`) and reward-guided sampling (:mod:`.rgas`). Samplers take a denoiser function and tensors,
never a pipeline or a recipe config."""
