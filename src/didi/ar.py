"""GPT-style causal transformer: the autoregressive baseline and the default offline evaluator.

Same widths and depths as the DiT (:data:`didi.config.PRESETS`) and the same pieces (bias-free float32
:class:`~didi.backbone.LayerNorm`, GPT-NeoX rotary q/k), without the noise conditioning. Pre-LN blocks::

    x = x + Attn(LN(x))          # causal, rotary q/k
    x = x + MLP(LN(x))
    logits = Linear(LN(x))       # untied output head, vocab_size = tokenizer.vocab_size (no [MASK])

It is trained with next-token cross-entropy on packed blocks ``[BOS] ... [EOS]``
(:func:`next_token_nll`) and generates left to right from ``[BOS]`` (:func:`generate`), drawing every token with
the float64 categorical of :mod:`didi.sampling`. With the KV cache each step feeds only the newest token.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint
from tqdm.auto import tqdm

from .backbone import EmbeddingLayer, LayerNorm, Rotary, apply_rotary
from .checkpoint import RunConfig, load_state_dict_strict, load_tensors, read_run_config
from .config import ModelConfig
from .errors import CheckpointError, option_error, require
from .pipeline import check_tokenizer_matches, weights_file
from .sampling import SampleResult, nucleus_filter, sample_categorical
from .tokenizer import Tokenizer, load_tokenizer
from .utils import autocast, pick_device, resolve_precision, synchronize


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
        return self.output_layer(self.norm_final(h))


def next_token_nll(network: Callable[[torch.Tensor], torch.Tensor], ids: torch.Tensor) -> torch.Tensor:
    """``-log p(x_{i+1} | x_{<=i})`` for every prefix of ``ids`` (B, L): shape (B, L-1), float32.

    The network reads ``ids[:, :-1]``; its mean is the AR training loss, its token-weighted ``exp`` the perplexity.
    """
    logits = network(ids[:, :-1])
    return F.cross_entropy(logits.float().transpose(1, 2), ids[:, 1:], reduction="none")


@torch.no_grad()
def generate(model: Callable[..., torch.Tensor], *, batch_size: int, seq_len: int, bos_id: int,
             generator: torch.Generator | None = None, use_cache: bool = True, top_p: float = 1.0,
             device: torch.device | str = "cpu", progress: bool = False) -> SampleResult:
    """Sample ``x_0 = [BOS]``, then ``x_i ~ p(. | x_<i)`` (float64, optional nucleus ``top_p``) for ``i < seq_len``.

    ``model(idx, cache=...) -> logits`` is a :class:`GPT` or a wrapper with its signature. With ``use_cache``
    every step feeds only the newest token (a :class:`KVCache` keeps the prefix); without it every step re-reads
    the whole prefix. Either way there is one network call per generated token: ``nfe = seq_len - 1``.
    """
    require(seq_len >= 1, "seq_len", f"must be >= 1 (got {seq_len})")
    require(0.0 < top_p <= 1.0, "top_p", f"must be in (0, 1] (got {top_p})")
    device = torch.device(device)
    start = time.perf_counter()
    tokens = torch.full((batch_size, seq_len), bos_id, dtype=torch.long, device=device)
    cache = KVCache(seq_len) if use_cache else None
    nfe = 0
    for i in tqdm(range(1, seq_len), desc="sampling", disable=not progress, leave=False):
        inputs = tokens[:, i - 1:i] if cache is not None else tokens[:, :i]
        logits = model(inputs, cache=cache)[:, -1]
        nfe += 1
        probs = nucleus_filter(torch.softmax(logits.double(), dim=-1), top_p)
        tokens[:, i] = sample_categorical(probs, generator)
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
                        precision: str = "auto") -> "ARPipeline":
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
               progress: bool = False, **_: Any) -> list[SampleResult]:
        """Generate ``num_samples`` sequences ``[BOS] x_1 .. x_{L-1}`` in batches; one result per batch.

        ``nfe`` is ignored: an AR model always makes ``seq_len - 1`` calls (the signature matches
        :meth:`didi.pipeline.DiffusionPipeline.sample`).
        """
        if sampler != "ancestral":
            raise option_error("sampler", f"{sampler!r} is not available for an autoregressive model: it samples "
                                          "token by token (ancestral); rgas needs a DiDi-Instruct student")
        require(num_samples >= 1, "num_samples", f"must be >= 1 (got {num_samples})")
        seq_len = seq_len or self.seq_len
        require(1 <= seq_len <= self.config.model.max_seq_len, "seq_len",
                f"must be in [1, {self.config.model.max_seq_len}] for this model (got {seq_len})")
        batch_size = min(batch_size or num_samples, num_samples)
        generator = torch.Generator(device=self.device).manual_seed(seed)
        return [generate(self.logits, batch_size=min(batch_size, num_samples - start), seq_len=seq_len,
                         bos_id=self.tokenizer.bos_id, generator=generator, use_cache=use_cache, top_p=top_p,
                         device=self.device, progress=progress)
                for start in range(0, num_samples, batch_size)]

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
