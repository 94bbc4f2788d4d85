"""The diffusion transformer (DiT) of MDLM / DUO / DiDi-Instruct.

``DiT(config)(x, sigma) -> logits`` with ``x`` either token ids ``(B, L)`` or soft inputs ``(B, L, V)`` (logits
whose softmax weights the embedding rows; used by RGAS gradient tilting). Parameter names and shapes follow the
published MDLM/DUO ``small`` model exactly (``vocab_embed.embedding``, ``sigma_map.mlp.*``, ``rotary_emb.inv_freq``,
``blocks.N.{norm1,attn_qkv,attn_out,norm2,mlp.0,mlp.2,adaLN_modulation}``, ``output_layer.*``), so released
checkpoints load without renaming.

Block (pre-LN, adaLN-zero, Peebles & Xie 2023)::

    shift1, scale1, gate1, shift2, scale2, gate2 = adaLN(c)
    x = x + gate1 * Attn(LN(x) * (1 + scale1) + shift1)          # bidirectional, rotary q/k
    x = x + gate2 * MLP(LN(x) * (1 + scale2) + shift2)

with ``c = SiLU(TimestepEmbedder(sigma))``. LayerNorms have no bias and run in float32.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint

from ..config import ModelConfig


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale) + shift


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """GPT-NeoX rotary convention: pair the first and second halves of the head dimension."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate ``x`` of shape (B, H, L, D) with cos/sin of shape (L, D), computed in float32."""
    dtype = x.dtype
    x = x.float()
    return (x * cos + rotate_half(x) * sin).to(dtype)


class LayerNorm(nn.Module):
    """LayerNorm without bias, computed in float32 (``F.layer_norm(x.float()) * weight``)."""

    def __init__(self, dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.dim = dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=x.device.type, enabled=False):
            out = F.layer_norm(x.float(), [self.dim])
        return out * self.weight[None, None, :]


class Rotary(nn.Module):
    """Rotary position embedding; ``inv_freq`` is a persistent buffer (it is part of the published state dict)."""

    def __init__(self, head_dim: int, base: float = 10_000.0):
        super().__init__()
        inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2).float() / head_dim))
        self.register_buffer("inv_freq", inv_freq)
        self._cache: tuple[int, torch.device, torch.Tensor, torch.Tensor] | None = None

    def forward(self, seq_len: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        cache = self._cache
        if cache is None or cache[0] != seq_len or cache[1] != device:
            t = torch.arange(seq_len, device=device, dtype=torch.float32)
            freqs = torch.outer(t, self.inv_freq.to(device=device, dtype=torch.float32))
            emb = torch.cat((freqs, freqs), dim=-1)
            cache = (seq_len, device, emb.cos(), emb.sin())
            self._cache = cache
        return cache[2], cache[3]


class TimestepEmbedder(nn.Module):
    """Sinusoidal embedding of the noise level (cos first), then Linear-SiLU-Linear."""

    def __init__(self, hidden_size: int, frequency_embedding_size: int = 256):
        super().__init__()
        self.frequency_embedding_size = frequency_embedding_size
        self.mlp = nn.Sequential(
            nn.Linear(frequency_embedding_size, hidden_size, bias=True),
            nn.SiLU(),
            nn.Linear(hidden_size, hidden_size, bias=True),
        )

    @staticmethod
    def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10_000.0) -> torch.Tensor:
        half = dim // 2
        freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
        args = t[:, None].float() * freqs[None]
        embedding = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
        if dim % 2:
            embedding = torch.cat([embedding, torch.zeros_like(embedding[:, :1])], dim=-1)
        return embedding

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.timestep_embedding(t, self.frequency_embedding_size))


class EmbeddingLayer(nn.Module):
    """Token embedding as a raw parameter ``embedding`` (V, D).

    Integer input: row lookup (``F.embedding``: its CPU backward sums each row's gradient in a fixed order with any
    number of threads, where indexing ``embedding[x]`` accumulates in a thread-dependent order, so multi-threaded
    CPU training was not reproducible; both give the same values in one thread). Float input (B, L, V):
    ``softmax(x) @ embedding`` (differentiable soft tokens).
    """

    def __init__(self, dim: int, vocab_size: int):
        super().__init__()
        self.embedding = nn.Parameter(torch.empty((vocab_size, dim)))
        nn.init.kaiming_uniform_(self.embedding, a=math.sqrt(5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.is_floating_point():
            probs = torch.softmax(x.float(), dim=-1)
            return probs @ self.embedding.float()
        return F.embedding(x, self.embedding)


class DDiTBlock(nn.Module):
    """Bidirectional transformer block with adaLN-zero conditioning."""

    def __init__(self, dim: int, n_heads: int, cond_dim: int, mlp_ratio: int = 4, dropout: float = 0.1):
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
        self.adaLN_modulation = nn.Linear(cond_dim, 6 * dim, bias=True)
        nn.init.zeros_(self.adaLN_modulation.weight)
        nn.init.zeros_(self.adaLN_modulation.bias)

    def forward(self, x: torch.Tensor, c: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        """``attn_mask`` (L, L) bool, True = may attend (default: every position sees every position)."""
        b, length, dim = x.shape
        p = self.dropout if self.training else 0.0
        shift1, scale1, gate1, shift2, scale2, gate2 = self.adaLN_modulation(c)[:, None].chunk(6, dim=2)

        h = modulate(self.norm1(x), shift1, scale1)
        qkv = self.attn_qkv(h).view(b, length, 3, self.n_heads, dim // self.n_heads)
        q, k, v = (qkv[:, :, i].transpose(1, 2) for i in range(3))  # (B, H, L, D)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        attn = F.scaled_dot_product_attention(q, k, v.to(q.dtype), attn_mask=attn_mask, is_causal=False)
        attn = attn.transpose(1, 2).reshape(b, length, dim)
        x = x + gate1 * F.dropout(self.attn_out(attn), p=p, training=self.training)

        h = modulate(self.norm2(x), shift2, scale2)
        x = x + gate2 * F.dropout(self.mlp(h), p=p, training=self.training)
        return x


class DDiTFinalLayer(nn.Module):
    """adaLN-modulated LayerNorm then a zero-initialised linear map to vocabulary logits."""

    def __init__(self, hidden_size: int, out_channels: int, cond_dim: int):
        super().__init__()
        self.norm_final = LayerNorm(hidden_size)
        self.linear = nn.Linear(hidden_size, out_channels)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)
        self.adaLN_modulation = nn.Linear(cond_dim, 2 * hidden_size, bias=True)
        nn.init.zeros_(self.adaLN_modulation.weight)
        nn.init.zeros_(self.adaLN_modulation.bias)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN_modulation(c)[:, None].chunk(2, dim=2)
        return self.linear(modulate(self.norm_final(x), shift, scale))


class DiT(nn.Module):
    """Diffusion transformer: ``forward(x, sigma) -> logits (B, L, vocab_size)``.

    ``sigma`` has shape (B,) (or is broadcast from a scalar). The logits are raw; the diffusion process applies
    the SUBS parameterisation (:func:`didi.diffusion.process.subs_log_probs`).
    """

    def __init__(self, config: ModelConfig):
        super().__init__()
        if config.arch != "dit":
            raise ValueError(f"DiT needs arch='dit', got {config.arch!r}")
        self.config = config
        self.gradient_checkpointing = False
        self.vocab_embed = EmbeddingLayer(config.hidden_size, config.vocab_size)
        self.sigma_map = TimestepEmbedder(config.cond_dim)
        self.rotary_emb = Rotary(config.head_dim, config.rotary_base)
        self.blocks = nn.ModuleList(
            DDiTBlock(config.hidden_size, config.n_heads, config.cond_dim, config.mlp_ratio, config.dropout)
            for _ in range(config.n_blocks)
        )
        self.output_layer: nn.Module = DDiTFinalLayer(config.hidden_size, config.vocab_size, config.cond_dim)

    def condition(self, sigma: torch.Tensor | float, batch_size: int, device: torch.device) -> torch.Tensor:
        sigma = torch.as_tensor(sigma, dtype=torch.float32, device=device)
        if sigma.ndim == 0:
            sigma = sigma.expand(batch_size)
        sigma = sigma.reshape(batch_size, -1).mean(-1)
        return F.silu(self.sigma_map(sigma))

    def forward(self, x: torch.Tensor, sigma: torch.Tensor | float) -> torch.Tensor:
        h = self.vocab_embed(x)
        c = self.condition(sigma, h.shape[0], h.device)
        cos, sin = self.rotary_emb(h.shape[1], h.device)
        for block in self.blocks:
            if self.gradient_checkpointing and self.training:
                h = torch.utils.checkpoint.checkpoint(block, h, c, cos, sin, use_reentrant=False)
            else:
                h = block(h, c, cos, sin)
        return self.output_layer(h, c)
