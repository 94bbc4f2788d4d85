"""Samplers for masked diffusion LMs, and the categorical draw shared by every sampler in the toolkit.

* :func:`sample_categorical` — Gumbel-max in float64 (exponential race on probabilities). Float32 Gumbel noise
  is a known bug: it truncates the tail of the noise, lowers sample entropy and fakes low perplexity.
* :func:`ancestral_sample` — the MDLM ancestral sampler on a uniform grid of ``num_steps`` steps from t=1 to t=0.
  The last step goes to ``alpha = 1`` and therefore fills every remaining mask: it *is* the noise-removal step
  and is counted inside the budget (the reference code adds one extra network call at t=1e-5 instead).
  With the cache trick (valid when the network ignores the time, as MDLM does) the network is called only when
  the sequence changed since the previous call and still contains masks, so ``nfe`` counts real calls and is
  ``<= num_steps``.
* :func:`conditioned_start` — the start of a conditioned sampler: ``prefix`` tokens kept at the ``fixed`` positions,
  [MASK] elsewhere (prompts, infilling and semi-autoregressive windows: :mod:`didi.diffusion.conditioning`).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import torch
from tqdm.auto import tqdm

from ..errors import require
from .process import Denoiser, LogLinearSchedule, sigma_input


def sample_categorical(probs: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Draw one index per row of ``probs`` (..., V), which may be unnormalised; computed in float64.

    ``argmax_v p_v / E_v`` with ``E_v ~ Exp(1)`` is distributed as ``Cat(p / sum p)`` (Gumbel-max trick in
    exponential-race form).
    """
    probs = probs.to(torch.float64)
    uniform = torch.rand(probs.shape, generator=generator, device=probs.device, dtype=torch.float64)
    exponential = -torch.log1p(-uniform)  # Exp(1); log1p(-u) keeps full float64 resolution near u = 0
    return (probs / exponential).argmax(dim=-1)


def nucleus_filter(probs: torch.Tensor, top_p: float) -> torch.Tensor:
    """Keep the smallest set of tokens whose mass reaches ``top_p`` (per row), renormalised; 1.0 = no-op."""
    if top_p >= 1.0:
        return probs
    sorted_probs, order = probs.sort(dim=-1, descending=True)
    cumulative = sorted_probs.cumsum(-1)
    remove = cumulative - sorted_probs > top_p * cumulative[..., -1:]
    sorted_probs = sorted_probs.masked_fill(remove, 0.0)
    filtered = torch.zeros_like(probs).scatter(-1, order, sorted_probs)
    return filtered / filtered.sum(-1, keepdim=True)


@dataclass
class SampleResult:
    """Samples plus honest accounting: ``nfe`` = network calls actually made (all rows batched together)."""

    tokens: torch.Tensor
    nfe: int
    seconds: float
    num_steps: int
    sampler: str = "ancestral"
    extra_calls: dict[str, int] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)
    fixed: torch.Tensor | None = None  # (B, L) positions given by the caller, not sampled (None: unconditional)


@dataclass
class AncestralConfig:
    """Options of :func:`ancestral_sample`."""

    num_steps: int = 1024
    use_cache: bool = True
    top_p: float = 1.0
    noise_removal: str = "ancestral"  # "ancestral": last step samples; "greedy": last step takes the argmax

    def __post_init__(self) -> None:
        require(isinstance(self.num_steps, int) and self.num_steps >= 1, "nfe",
                f"must be an integer >= 1 (got {self.num_steps!r})")
        require(0.0 < self.top_p <= 1.0, "top_p", f"must be in (0, 1] (got {self.top_p})")
        require(self.noise_removal in ("ancestral", "greedy"), "noise_removal",
                f"must be ancestral or greedy (got {self.noise_removal!r})")


def time_grid(num_steps: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """Uniform grid ``1 = t_0 > t_1 > ... > t_K = 0`` in float64."""
    return torch.linspace(1.0, 0.0, num_steps + 1, dtype=torch.float64, device=device)


def masked_token_probs(logits: torch.Tensor, mask_index: int, top_p: float = 1.0) -> torch.Tensor:
    """SUBS denoiser distribution at *masked* positions, in float64: softmax over the logits without [MASK].

    ``logits`` is (..., V) (log-probabilities work too); returns probabilities with the mask column exactly 0.
    """
    logits = logits.to(torch.float64).clone()
    logits[..., mask_index] = -torch.inf
    return nucleus_filter(torch.softmax(logits, dim=-1), top_p)


def sample_masked_tokens(logits: torch.Tensor, mask_index: int, generator: torch.Generator | None = None, *,
                         top_p: float = 1.0, greedy: bool = False, max_elements: int = 2**25) -> torch.Tensor:
    """Draw a token for each row of ``logits`` (N, V) from :func:`masked_token_probs` (float64 Gumbel-max).

    Rows are processed in chunks of at most ``max_elements`` float64 values so that large vocabularies and many
    revealed positions never materialise one huge float64 tensor (on CPU the random stream is identical to an
    unchunked draw).
    """
    rows = max(1, max_elements // max(1, logits.shape[-1]))
    out = []
    for chunk in logits.split(rows, dim=0):
        probs = masked_token_probs(chunk, mask_index, top_p)
        out.append(probs.argmax(-1) if greedy else sample_categorical(probs, generator))
    return torch.cat(out) if out else torch.empty(0, dtype=torch.long, device=logits.device)


def ancestral_transition(z: torch.Tensor, logits: torch.Tensor, alpha_t: torch.Tensor, alpha_s: torch.Tensor, *,
                         mask_index: int, generator: torch.Generator | None = None, top_p: float = 1.0,
                         greedy: bool = False) -> torch.Tensor:
    """One ancestral step ``z_t -> z_s`` from the network's logits (B, L, V) (or (1, L, V) shared by all rows).

    Sampled in two stages, which is the same distribution as the (V+1)-way posterior of
    :func:`didi.diffusion.process.posterior_probs` but touches only the positions that are revealed: a masked position
    is revealed with probability ``(alpha_s - alpha_t)/(1 - alpha_t)`` (all of them when ``alpha_s = 1``), and a
    revealed position draws its token from the float64 SUBS distribution. ``alpha_t``/``alpha_s`` are scalars or
    (B,) tensors.
    """
    batch = z.shape[0]
    alpha_t = torch.as_tensor(alpha_t, dtype=torch.float64, device=z.device).expand(batch)
    alpha_s = torch.as_tensor(alpha_s, dtype=torch.float64, device=z.device).expand(batch)
    reveal_prob = ((alpha_s - alpha_t) / (1.0 - alpha_t))[:, None]
    uniform = torch.rand(z.shape, generator=generator, device=z.device, dtype=torch.float64)
    reveal = (z == mask_index) & (uniform < reveal_prob)
    z_next = z.clone()
    if reveal.any():
        rows = logits.expand(batch, -1, -1)[reveal] if logits.shape[0] == 1 else logits[reveal]
        z_next[reveal] = sample_masked_tokens(rows, mask_index, generator, top_p=top_p, greedy=greedy)
    return z_next


def conditioned_start(batch_size: int, seq_len: int, mask_index: int, device: torch.device | str = "cpu",
                      prefix: torch.Tensor | None = None, fixed: torch.Tensor | None = None
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """The start state ``z = where(fixed, prefix, [MASK])`` (B, L) of a sampler and its ``fixed`` mask (B, L).

    No ``prefix``: all [MASK], nothing fixed. A ``prefix`` without ``fixed``: fixed where it is not [MASK].
    """
    device = torch.device(device)
    if prefix is None:
        require(fixed is None, "fixed", "needs the tokens of the fixed positions (prefix)")
        return (torch.full((batch_size, seq_len), mask_index, dtype=torch.long, device=device),
                torch.zeros((batch_size, seq_len), dtype=torch.bool, device=device))
    prefix = prefix.to(device=device, dtype=torch.long)
    shape = (batch_size, seq_len)
    require(tuple(prefix.shape) == shape, "prefix", f"must have shape {shape} (got {tuple(prefix.shape)})")
    if fixed is None:
        fixed = prefix != mask_index
    else:
        fixed = fixed.to(device=device, dtype=torch.bool)
        require(tuple(fixed.shape) == shape, "fixed", f"must have shape {shape} (got {tuple(fixed.shape)})")
        require(not bool((prefix[fixed] == mask_index).any()), "prefix", "a fixed position holds the [MASK] id")
    return torch.where(fixed, prefix, torch.full_like(prefix, mask_index)), fixed


@torch.no_grad()
def ancestral_sample(denoiser: Denoiser, *, batch_size: int, seq_len: int, mask_index: int,
                     schedule: LogLinearSchedule, config: AncestralConfig | None = None,
                     time_conditioning: bool = False, generator: torch.Generator | None = None,
                     device: torch.device | str = "cpu", prefix: torch.Tensor | None = None,
                     progress: bool = False, fixed: torch.Tensor | None = None) -> SampleResult:
    """Ancestral sampling from all-mask, or from ``prefix`` (B, L) with its ``fixed`` positions kept
    (:func:`conditioned_start`; without ``fixed``, a partially masked start whose non-[MASK] positions are kept).

    Per step ``t -> s``: the network's logits give the SUBS denoiser ``x_hat(z_t)``; see
    :func:`ancestral_transition`. With the cache, logits are reused while ``z`` is unchanged.
    """
    config = config or AncestralConfig()
    require(seq_len >= 1, "seq_len", f"must be >= 1 (got {seq_len})")
    device = torch.device(device)
    start = time.perf_counter()
    z, fixed = conditioned_start(batch_size, seq_len, mask_index, device, prefix, fixed)
    grid = time_grid(config.num_steps, device)
    cache_ok = config.use_cache and not time_conditioning
    logits: torch.Tensor | None = None
    nfe = 0
    for i in tqdm(range(config.num_steps), desc="sampling", disable=not progress, leave=False):
        if not (z == mask_index).any():
            break  # nothing left to fill: every further step is the identity
        t, s = grid[i], grid[i + 1]
        if logits is None or not cache_ok:
            sigma = sigma_input(schedule, t.expand(batch_size), time_conditioning).to(device)
            logits = denoiser(z, sigma)
            nfe += 1
        greedy = config.noise_removal == "greedy" and i == config.num_steps - 1
        z_next = ancestral_transition(z, logits, schedule.alpha(t), schedule.alpha(s), mask_index=mask_index,
                                      generator=generator, top_p=config.top_p, greedy=greedy)
        if not torch.equal(z_next, z):
            logits = None  # the input changed: the cached prediction is stale
        z = z_next
    return SampleResult(tokens=z, nfe=nfe, seconds=time.perf_counter() - start, num_steps=config.num_steps,
                        fixed=None if prefix is None else fixed)
