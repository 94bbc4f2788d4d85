"""GPT-style causal transformer: the autoregressive baseline and the default offline evaluator.

Same widths and depths as the DiT (:data:`didi.config.PRESETS`) and the same pieces (bias-free float32
:class:`~didi.models.dit.LayerNorm`, GPT-NeoX rotary q/k), without the noise conditioning. Pre-LN blocks::

    x = x + Attn(LN(x))          # causal, rotary q/k
    x = x + MLP(LN(x))
    logits = Linear(LN(x))       # untied output head, vocab_size = tokenizer.vocab_size (no [MASK])

It is trained with next-token cross-entropy on packed blocks ``[BOS] ... [EOS]`` (:func:`next_token_nll`) and
generates left to right from ``[BOS]`` (:func:`didi.pipelines.ar.generate`); with a :class:`KVCache` each step
feeds only the newest token.
"""
from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint

from ..config import ModelConfig
from .dit import EmbeddingLayer, LayerNorm, Rotary, apply_rotary


class KVCache:
    """Keys and values of every block for the positions processed so far (preallocated for ``max_len``).

    :meth:`GPT.forward` reads ``length`` as the position of its first input token, lets each block
    :meth:`update` its layer, then advances ``length``.
    """

    def __init__(self, max_len: int):
        self.max_len = max_len
        self.length = 0
        self.keys: list[torch.Tensor] = []
        self.values: list[torch.Tensor] = []

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store ``k``/``v`` (B, H, T, D) at positions ``[length, length + T)``; return all keys/values so far."""
        end = self.length + k.shape[2]
        if layer == len(self.keys):
            shape = (k.shape[0], k.shape[1], self.max_len, k.shape[3])
            self.keys.append(k.new_empty(shape))
            self.values.append(v.new_empty(shape))
        self.keys[layer][:, :, self.length:end] = k
        self.values[layer][:, :, self.length:end] = v
        return self.keys[layer][:, :, :end], self.values[layer][:, :, :end]


class CausalBlock(nn.Module):
    """Pre-LN transformer block with causal rotary self-attention."""

    def __init__(self, dim: int, n_heads: int, mlp_ratio: int = 4, dropout: float = 0.1):
        super().__init__()
        self.n_heads = n_heads
        self.dropout = dropout
        self.norm1 = LayerNorm(dim)
        self.attn_qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.attn_out = nn.Linear(dim, dim, bias=False)
        self.norm2 = LayerNorm(dim)
        self.mlp = nn.Sequential(
            nn.Linear(dim, mlp_ratio * dim, bias=True),
            nn.GELU(approximate="tanh"),
            nn.Linear(mlp_ratio * dim, dim, bias=True),
        )

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, cache: KVCache | None = None,
                layer: int = 0) -> torch.Tensor:
        b, length, dim = x.shape
        p = self.dropout if self.training else 0.0
        qkv = self.attn_qkv(self.norm1(x)).view(b, length, 3, self.n_heads, dim // self.n_heads)
        q, k, v = (qkv[:, :, i].transpose(1, 2) for i in range(3))  # (B, H, T, D)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        if cache is None:
            attn = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            start = cache.length
            k, v = cache.update(layer, k, v)
            # query i (absolute position start + i) sees keys 0 .. start + i; a single query sees them all
            mask = None if length == 1 else torch.ones(length, start + length, dtype=torch.bool,
                                                         device=x.device).tril(diagonal=start)
            attn = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        attn = attn.transpose(1, 2).reshape(b, length, dim)
        x = x + F.dropout(self.attn_out(attn), p=p, training=self.training)
        return x + F.dropout(self.mlp(self.norm2(x)), p=p, training=self.training)


class GPT(nn.Module):
    """Causal LM: ``forward(idx (B, T), cache=None) -> logits (B, T, vocab_size)``.

    Without a cache, ``idx`` holds positions ``0 .. T-1``. With a :class:`KVCache`, ``idx`` continues the
    cached prefix at positions ``cache.length ..`` and the cache is extended in place. Initialisation follows
    GPT-2 (normal(0, 0.02), residual projections scaled by ``1/sqrt(2 n_blocks)``).
    """

    def __init__(self, config: ModelConfig):
        super().__init__()
        if config.arch != "gpt":
            raise ValueError(f"GPT needs arch='gpt', got {config.arch!r}")
        self.config = config
        self.gradient_checkpointing = False
        self.vocab_embed = EmbeddingLayer(config.hidden_size, config.vocab_size)
        self.rotary_emb = Rotary(config.head_dim, config.rotary_base)
        self.blocks = nn.ModuleList(
            CausalBlock(config.hidden_size, config.n_heads, config.mlp_ratio, config.dropout)
            for _ in range(config.n_blocks)
        )
        self.norm_final = LayerNorm(config.hidden_size)
        self.output_layer = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        nn.init.normal_(self.vocab_embed.embedding, std=0.02)
        for block in self.blocks:
            for proj in (block.attn_out, block.mlp[2]):
                nn.init.normal_(proj.weight, std=0.02 / math.sqrt(2 * self.config.n_blocks))

    def forward(self, idx: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        return self.output_layer(self.hidden(idx, cache))

    def hidden(self, idx: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        """The last hidden state (B, T, hidden_size), after the final norm: what the output layer reads."""
        start, length = (cache.length if cache is not None else 0), idx.shape[1]
        if cache is not None and start + length > cache.max_len:
            raise ValueError(f"KV cache holds {cache.max_len} positions; cannot extend it to {start + length}")
        h = self.vocab_embed(idx)
        cos, sin = self.rotary_emb(cache.max_len if cache is not None else length, h.device)
        cos, sin = cos[start:start + length], sin[start:start + length]
        for i, block in enumerate(self.blocks):
            if self.gradient_checkpointing and self.training and cache is None:
                h = torch.utils.checkpoint.checkpoint(block, h, cos, sin, use_reentrant=False)
            else:
                h = block(h, cos, sin, cache, i)
        if cache is not None:
            cache.length += length
        return self.norm_final(h)


def next_token_nll(network: Callable[[torch.Tensor], torch.Tensor], ids: torch.Tensor) -> torch.Tensor:
    """``-log p(x_{i+1} | x_{<=i})`` for every prefix of ``ids`` (B, L): shape (B, L-1), float32.

    The network reads ``ids[:, :-1]``; its mean is the AR training loss, its token-weighted ``exp`` the perplexity.
    """
    logits = network(ids[:, :-1])
    return F.cross_entropy(logits.float().transpose(1, 2), ids[:, 1:], reduction="none")
