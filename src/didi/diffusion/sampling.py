"""Samplers for masked diffusion LMs, and the categorical draw shared by every sampler in the toolkit.

* :func:`sample_categorical` — Gumbel-max in float64 (exponential race on probabilities). Float32 Gumbel noise
  is a known bug: it truncates the tail of the noise, lowers sample entropy and fakes low perplexity.
* :class:`SamplingControls` / :func:`apply_controls` — temperature, top-k and top-p (nucleus) truncation, one
  function shared by every sampler (ancestral, RGAS, AR); the defaults (T = 1, no truncation) change nothing.
* :class:`CachedDenoiser` — the network as every sampler calls it: the cache trick (valid when the network ignores
  the time, as MDLM does: the network is called only when the sequence changed since the previous call) and the
  count of calls actually made, ``nfe``.
* :func:`ancestral_transition` / :func:`ancestral_sample` — the MDLM ancestral sampler on a uniform grid of
  ``num_steps`` steps from t=1 to t=0. The last step goes to ``alpha = 1`` and therefore fills every remaining mask:
  it *is* the noise-removal step and is counted inside the budget (the reference code adds one extra network call
  at t=1e-5 instead), so ``nfe <= num_steps``.
* :func:`conditioned_start` — the start of a conditioned sampler: ``prefix`` tokens kept at the ``fixed`` positions,
  [MASK] elsewhere (prompts, infilling and semi-autoregressive windows: :mod:`didi.diffusion.conditioning`).

Every sampler of the toolkit has the signature ``sampler(denoiser, *, batch_size, seq_len, num_steps, mask_index,
schedule, controls, use_cache, time_conditioning, generator, device, prefix, fixed, progress, ...)`` (plus its own
options) and returns a :class:`SampleResult`.
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from ..config import helpfield
from ..errors import require
from ..runtime.progress import track
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
    """Keep the smallest set of tokens whose mass reaches ``top_p`` (per row), renormalised; 1.0 = no-op.

    In descending order, token ``i`` is kept iff the mass before it is ``< top_p`` (of the row's total): the kept
    prefix is the shortest one whose mass is ``>= top_p``.
    """
    if top_p >= 1.0:
        return probs
    sorted_probs, order = probs.sort(dim=-1, descending=True)
    cumulative = sorted_probs.cumsum(-1)
    remove = cumulative - sorted_probs >= top_p * cumulative[..., -1:]
    sorted_probs = sorted_probs.masked_fill(remove, 0.0)
    filtered = torch.zeros_like(probs).scatter(-1, order, sorted_probs)
    return filtered / filtered.sum(-1, keepdim=True)


def top_k_filter(probs: torch.Tensor, top_k: int | None) -> torch.Tensor:
    """Keep the ``top_k`` most likely tokens of every row (ties at the k-th broken by ``torch.topk``), renormalised;
    ``None`` = no-op."""
    if top_k is None or top_k >= probs.shape[-1]:
        return probs
    kept = torch.zeros_like(probs).scatter(-1, probs.topk(top_k, dim=-1).indices, 1.0)
    filtered = probs * kept
    return filtered / filtered.sum(-1, keepdim=True)


@dataclass(frozen=True)
class SamplingControls:
    """How every categorical draw of a sampler is shaped (:func:`apply_controls`), and its final step.

    ``p ∝ softmax(logits / temperature)``, then the ``top_k`` most likely tokens, then the nucleus of mass
    ``top_p``. ``greedy_tail``: the sampler's last step takes the argmax instead of drawing (DUO's greedy tail;
    the ancestral sampler's ``noise_removal="greedy"``; AR: the last token). The defaults are the published
    samplers (T = 1, no truncation, no greedy step) and leave every draw unchanged.
    """

    temperature: float = helpfield(1.0, "sampling temperature T: draw from softmax(logits / T) (1 = the model; "
                                        "-> 0: the argmax)")
    top_k: int | None = helpfield(None, "keep only the k most likely tokens of every draw (default: all)")
    top_p: float = helpfield(1.0, "nucleus sampling: keep the smallest set of tokens whose mass reaches p "
                                  "(1.0 = off)")
    greedy_tail: bool = helpfield(False, "the sampler's last step takes the argmax instead of drawing (DUO's "
                                         "greedy tail; AR: the last token)")

    def __post_init__(self) -> None:
        t = self.temperature
        require(isinstance(t, (int, float)) and not isinstance(t, bool) and math.isfinite(t) and t > 0,
                "temperature", f"must be a finite number > 0 (got {t!r})")
        k = self.top_k
        require(k is None or (isinstance(k, int) and not isinstance(k, bool) and k >= 1), "top_k",
                f"must be an integer >= 1 (got {k!r})")
        require(isinstance(self.top_p, (int, float)) and 0.0 < self.top_p <= 1.0, "top_p",
                f"must be in (0, 1] (got {self.top_p})")


def apply_controls(logits: torch.Tensor, controls: SamplingControls | None = None) -> torch.Tensor:
    """Probabilities (float64, last axis) of ``softmax(logits / T)`` restricted to the top-k, then to the top-p
    nucleus, renormalised. ``logits`` may be log-probabilities (or ``probs.log()``); ``-inf`` entries stay at 0.

    The one place where temperature and truncation are applied: the ancestral sampler, RGAS and the AR generator
    call it before their float64 draw. With the default controls it is ``softmax(logits)``, bit for bit.
    """
    controls = controls or SamplingControls()
    logits = logits.to(torch.float64)
    if controls.temperature != 1.0:
        logits = logits / controls.temperature
    probs = top_k_filter(torch.softmax(logits, dim=-1), controls.top_k)
    return nucleus_filter(probs, controls.top_p)


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


def time_grid(num_steps: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """Uniform grid ``1 = t_0 > t_1 > ... > t_K = 0`` in float64."""
    return torch.linspace(1.0, 0.0, num_steps + 1, dtype=torch.float64, device=device)


def masked_token_probs(logits: torch.Tensor, mask_index: int, controls: SamplingControls | None = None
                       ) -> torch.Tensor:
    """SUBS denoiser distribution at *masked* positions, in float64: softmax over the logits without [MASK],
    shaped by ``controls`` (:func:`apply_controls`).

    ``logits`` is (..., V) (log-probabilities work too); returns probabilities with the mask column exactly 0.
    """
    logits = logits.to(torch.float64).clone()
    logits[..., mask_index] = -torch.inf
    return apply_controls(logits, controls)


def sample_masked_tokens(logits: torch.Tensor, mask_index: int, generator: torch.Generator | None = None, *,
                         controls: SamplingControls | None = None, greedy: bool = False,
                         max_elements: int = 2**25) -> torch.Tensor:
    """Draw a token for each row of ``logits`` (N, V) from :func:`masked_token_probs` (float64 Gumbel-max).

    Rows are processed in chunks of at most ``max_elements`` float64 values so that large vocabularies and many
    revealed positions never materialise one huge float64 tensor (on CPU the random stream is identical to an
    unchunked draw).
    """
    rows = max(1, max_elements // max(1, logits.shape[-1]))
    out = []
    for chunk in logits.split(rows, dim=0):
        probs = masked_token_probs(chunk, mask_index, controls)
        out.append(probs.argmax(-1) if greedy else sample_categorical(probs, generator))
    return torch.cat(out) if out else torch.empty(0, dtype=torch.long, device=logits.device)


def check_num_steps(num_steps: int) -> None:
    """The sampling budget of every sampler: an integer >= 1 (``--nfe``)."""
    require(isinstance(num_steps, int) and not isinstance(num_steps, bool) and num_steps >= 1, "nfe",
            f"must be an integer >= 1 (got {num_steps!r})")


class CachedDenoiser:
    """``logits = net(z, t)``: the denoiser as a sampler calls it, with the cache trick and an honest call count.

    MDLM's network ignores the time (``time_conditioning`` false): ``x_hat(z_t)`` depends on ``z_t`` alone, so while
    ``z`` is unchanged the previous logits are reused (``use_cache``) and no call is made. ``calls`` counts the
    network calls actually made (all rows in one batched call): the sampler's ``nfe``.
    """

    def __init__(self, denoiser: Denoiser, schedule: LogLinearSchedule, *, time_conditioning: bool = False,
                 use_cache: bool = True, device: torch.device | str = "cpu"):
        self.denoiser, self.schedule, self.device = denoiser, schedule, device
        self.time_conditioning = time_conditioning
        self.use_cache = use_cache and not time_conditioning
        self.calls = 0
        self._input: torch.Tensor | None = None
        self._logits: torch.Tensor | None = None

    def __call__(self, z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Logits (B, L, V) at ``z`` (B, L) and time ``t`` (a scalar tensor)."""
        if self.use_cache and self._logits is not None and torch.equal(z, self._input):
            return self._logits
        sigma = sigma_input(self.schedule, t.expand(z.shape[0]), self.time_conditioning).to(self.device)
        self._logits = self.denoiser(z, sigma)
        self._input = z.clone()
        self.calls += 1
        return self._logits


def ancestral_transition(z: torch.Tensor, logits: torch.Tensor, alpha_t: torch.Tensor, alpha_s: torch.Tensor, *,
                         mask_index: int, generator: torch.Generator | None = None,
                         controls: SamplingControls | None = None, greedy: bool = False,
                         fill: bool = False) -> torch.Tensor:
    """One ancestral step ``z_t -> z_s`` from the network's logits (B, L, V) (or (1, L, V) shared by all rows).

    Sampled in two stages, which is the same distribution as the (V+1)-way posterior of
    :func:`didi.diffusion.process.posterior_probs` but touches only the positions that are revealed: a masked position
    is revealed with probability ``(alpha_s - alpha_t)/(1 - alpha_t)`` (all of them when ``alpha_s = 1``), and a
    revealed position draws its token from the float64 SUBS distribution (shaped by ``controls``; its argmax if
    ``greedy``). ``alpha_t``/``alpha_s`` are scalars or (B,) tensors. ``fill`` reveals every masked position
    whatever ``alpha_s`` (a rollout that stops at ``t0 > 0``); the reveal draws are made all the same.
    """
    batch = z.shape[0]
    alpha_t = torch.as_tensor(alpha_t, dtype=torch.float64, device=z.device).expand(batch)
    alpha_s = torch.as_tensor(alpha_s, dtype=torch.float64, device=z.device).expand(batch)
    reveal_prob = ((alpha_s - alpha_t) / (1.0 - alpha_t))[:, None]
    uniform = torch.rand(z.shape, generator=generator, device=z.device, dtype=torch.float64)
    reveal = (z == mask_index) & ((uniform < reveal_prob) | fill)
    z_next = z.clone()
    if reveal.any():
        rows = logits.expand(batch, -1, -1)[reveal] if logits.shape[0] == 1 else logits[reveal]
        z_next[reveal] = sample_masked_tokens(rows, mask_index, generator, controls=controls, greedy=greedy)
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
def ancestral_sample(denoiser: Denoiser, *, batch_size: int, seq_len: int, num_steps: int, mask_index: int,
                     schedule: LogLinearSchedule, controls: SamplingControls | None = None, use_cache: bool = True,
                     time_conditioning: bool = False, generator: torch.Generator | None = None,
                     device: torch.device | str = "cpu", prefix: torch.Tensor | None = None,
                     fixed: torch.Tensor | None = None, progress: bool = False,
                     on_step: Callable[[int, torch.Tensor], None] | None = None) -> SampleResult:
    """Ancestral sampling in ``num_steps`` steps from all-mask, or from ``prefix`` (B, L) with its ``fixed`` positions
    kept (:func:`conditioned_start`; without ``fixed``, a partially masked start whose non-[MASK] positions are kept).
    ``on_step(i, z)``, if given, sees the state ``z`` (B, L) after step ``i`` (it must not modify it).

    Per step ``t -> s``: the network's logits give the SUBS denoiser ``x_hat(z_t)``; see
    :func:`ancestral_transition`. ``controls`` shape every draw; with ``controls.greedy_tail`` the last step takes the
    argmax. With the cache (:class:`CachedDenoiser`), logits are reused while ``z`` is unchanged.
    """
    check_num_steps(num_steps)
    require(seq_len >= 1, "seq_len", f"must be >= 1 (got {seq_len})")
    controls = controls or SamplingControls()
    device = torch.device(device)
    start = time.perf_counter()
    z, fixed = conditioned_start(batch_size, seq_len, mask_index, device, prefix, fixed)
    grid = time_grid(num_steps, device)
    net = CachedDenoiser(denoiser, schedule, time_conditioning=time_conditioning, use_cache=use_cache, device=device)
    for i in track(range(num_steps), "sampling", enabled=progress, unit="step"):
        if not (z == mask_index).any():
            break  # nothing left to fill: every further step is the identity
        t, s = grid[i], grid[i + 1]
        z = ancestral_transition(z, net(z, t), schedule.alpha(t), schedule.alpha(s), mask_index=mask_index,
                                 generator=generator, controls=controls,
                                 greedy=controls.greedy_tail and i == num_steps - 1)
        if on_step is not None:
            on_step(i, z)
    return SampleResult(tokens=z, nfe=net.calls, seconds=time.perf_counter() - start, num_steps=num_steps,
                        fixed=None if prefix is None else fixed)
