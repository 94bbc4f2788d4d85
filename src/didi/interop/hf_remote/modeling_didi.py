"""A didi masked-diffusion transformer (DiT: MDLM teacher or DiDi-Instruct student) for 🤗 Transformers, written
by ``didi export``::

    model = AutoModelForMaskedLM.from_pretrained(folder, trust_remote_code=True)
    tok = AutoTokenizer.from_pretrained(folder, trust_remote_code=True)
    out = model.sample(4, num_steps=8, prompt_ids=tok("ROMEO:")["input_ids"], seed=0)
    print(tok.batch_decode(out.tokens, skip_special_tokens=True))

The network and the sampler are didi's own code, copied verbatim below from the didi modules named in each section
(didi.models.dit, didi.diffusion.process and .sampling, ...): with the same seed, ``model.sample`` draws the same
tokens as ``didi sample``. Only the classes at the end are specific to Transformers.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from transformers import PreTrainedModel
from transformers.modeling_outputs import MaskedLMOutput

from ...diffusion.process import LogLinearSchedule
from ...diffusion.sampling import SampleResult, SamplingControls, ancestral_sample
from ...errors import require
from ...models.dit import DiT
from .configuration_didi import DiDiConfig, ModelConfig  # noqa: F401 (ModelConfig: the DiT's annotation)


class DiDiPreTrainedModel(PreTrainedModel):
    config_class = DiDiConfig
    base_model_prefix = "didi"
    main_input_name = "input_ids"
    supports_gradient_checkpointing = True
    _no_split_modules = ["DDiTBlock"]

    def _init_weights(self, module: torch.nn.Module) -> None:
        """Nothing: the DiT initialises its own modules (adaLN-zero) and a checkpoint provides every weight."""


class DiDiForMaskedLM(DiDiPreTrainedModel):
    """The DiT as a Transformers model: ``model(input_ids, sigma).logits`` (B, L, V) are didi's ``DiT(x, sigma)``
    (parameter names, hence ``model.safetensors``, are the DiT's), and :meth:`sample` is ``didi sample``."""

    def __init__(self, config: DiDiConfig) -> None:
        super().__init__(config)
        for name, module in DiT(config.model_config()).named_children():
            self.add_module(name, module)  # vocab_embed, sigma_map, rotary_emb, blocks, output_layer
        self.gradient_checkpointing = False
        self.post_init()

    condition = DiT.condition

    def forward(self, input_ids: torch.Tensor, sigma: torch.Tensor | float | None = None,
                **kwargs: object) -> MaskedLMOutput:
        """Raw logits at every position; ``sigma`` is the noise level (ignored by MDLM networks: default 0)."""
        return MaskedLMOutput(logits=DiT.forward(self, input_ids, 0.0 if sigma is None else sigma))

    @torch.no_grad()
    def sample(self, num_samples: int = 1, num_steps: int = 8, *, seq_len: int | None = None,
               prompt_ids: Sequence[int] | None = None, input_ids: torch.Tensor | None = None, seed: int = 0,
               temperature: float = 1.0, top_k: int | None = None, top_p: float = 1.0, greedy_tail: bool = False,
               use_cache: bool = True, on_step: Callable[[int, torch.Tensor], None] | None = None) -> SampleResult:
        """Ancestral sampling in ``num_steps`` steps (float64 Gumbel-max draws, the cache trick) from all-[MASK].

        ``prompt_ids``: token ids (without [BOS]) to continue: each row is ``[BOS] prompt`` then ``seq_len`` (default:
        the model's length) minus that many generated tokens, as ``didi sample --prompt``. ``input_ids`` (B, L):
        keep every token that is not [MASK] and fill the [MASK] positions (infilling). ``temperature``, ``top_k``,
        ``top_p`` shape every draw; ``greedy_tail`` takes the argmax at the last step. ``on_step(i, z)`` sees the
        state after each step. Returns ``tokens`` (B, L), ``nfe`` (network calls made) and ``seconds``.
        """
        config = self.config
        length = seq_len or config.model_length
        prefix = fixed = None
        if prompt_ids is not None:
            ids = [config.bos_token_id, *(int(i) for i in prompt_ids)]
            require(len(ids) < length, "prompt_ids", f"{len(ids)} tokens with [BOS] leave nothing to generate in "
                                                     f"{length}")
            prefix = torch.full((num_samples, length), config.mask_index, dtype=torch.long)
            prefix[:, :len(ids)] = torch.tensor(ids)
            fixed = torch.zeros_like(prefix, dtype=torch.bool)
            fixed[:, :len(ids)] = True
        elif input_ids is not None:
            prefix = torch.as_tensor(input_ids, dtype=torch.long)
            prefix = prefix.expand(num_samples, -1) if prefix.dim() == 1 else prefix
            num_samples, length = prefix.shape
        controls = SamplingControls(temperature=temperature, top_k=top_k, top_p=top_p, greedy_tail=greedy_tail)
        return ancestral_sample(lambda z, sigma: self(z, sigma).logits, batch_size=num_samples, seq_len=length,
                                num_steps=num_steps, mask_index=config.mask_index,
                                schedule=LogLinearSchedule(config.noise_eps), controls=controls, use_cache=use_cache,
                                time_conditioning=config.time_conditioning,
                                generator=torch.Generator(device=self.device).manual_seed(seed), device=self.device,
                                prefix=prefix, fixed=fixed, on_step=on_step)
