"""Configuration of a didi masked-diffusion transformer (DiT) for 🤗 Transformers, written by ``didi export``.

Field names follow ``kuleshov-group/mdlm-owt`` (``hidden_dim``, ``n_blocks``, ``model_length``, ...), which is what
``didi convert`` reads back; ``attribute_map`` gives them their usual Transformers names too.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from transformers import PretrainedConfig


@dataclass(frozen=True)
class ModelConfig:
    """The fields of didi's ``ModelConfig`` that its DiT reads (``DiT(config)``)."""

    vocab_size: int
    hidden_size: int
    n_blocks: int
    n_heads: int
    cond_dim: int
    max_seq_len: int
    mlp_ratio: int
    rotary_base: float
    dropout: float
    arch: str = "dit"

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.n_heads


class DiDiConfig(PretrainedConfig):
    """Size of the DiT and settings of the masked diffusion process (MDLM log-linear schedule).

    ``mask_index`` is the id of the absorbing [MASK] token; ``noise_eps`` the schedule's ``eps``
    (``alpha_t = 1 - (1 - eps) t``); ``time_conditioning`` whether the network sees the noise level (MDLM: no).
    """

    model_type = "didi"
    attribute_map = {"hidden_size": "hidden_dim", "num_hidden_layers": "n_blocks",
                     "num_attention_heads": "n_heads", "max_position_embeddings": "model_length"}

    def __init__(self, vocab_size: int = 50258, hidden_dim: int = 768, n_blocks: int = 12, n_heads: int = 12,
                 cond_dim: int = 128, model_length: int = 1024, mlp_ratio: int = 4, rotary_base: float = 10_000.0,
                 dropout: float = 0.1, mask_index: int = 50257, noise_eps: float = 1e-3, sampling_eps: float = 1e-3,
                 time_conditioning: bool = False, **kwargs: Any) -> None:
        self.vocab_size, self.hidden_dim, self.n_blocks, self.n_heads = vocab_size, hidden_dim, n_blocks, n_heads
        self.cond_dim, self.model_length, self.mlp_ratio = cond_dim, model_length, mlp_ratio
        self.rotary_base, self.dropout = rotary_base, dropout
        self.mask_index, self.noise_eps, self.sampling_eps = mask_index, noise_eps, sampling_eps
        self.time_conditioning = time_conditioning
        super().__init__(**kwargs)

    def model_config(self) -> ModelConfig:
        return ModelConfig(vocab_size=self.vocab_size, hidden_size=self.hidden_dim, n_blocks=self.n_blocks,
                           n_heads=self.n_heads, cond_dim=self.cond_dim, max_seq_len=self.model_length,
                           mlp_ratio=self.mlp_ratio, rotary_base=self.rotary_base, dropout=self.dropout)
