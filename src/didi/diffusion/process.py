"""Masked (absorbing-state) diffusion: schedule, forward process, SUBS, NELBO and the ancestral posterior.

Notation (MDLM, Sahoo et al. 2024; DiDi-Instruct §1):

* forward process, independently per token: ``q(z_t | x) = Cat(z_t; alpha_t x + (1 - alpha_t) m)``;
* log-linear schedule: ``alpha_t = 1 - (1 - eps) t``, ``alpha'_t = -(1 - eps)``, ``sigma_t = -log alpha_t``;
* SUBS parameterisation: the denoiser ``x_hat(z_t)`` never predicts ``m`` and copies unmasked tokens;
* continuous-time NELBO::

      -log p(x) <= E_{t ~ U[0,1]} [ -alpha'_t / (1 - alpha_t) * sum_{i: z_t^i = m} -log x_hat(z_t)^i[x^i] ]

  which for the log-linear schedule is ``E_t[(1/t) * sum_masked -log x_hat]``;
* ancestral step ``t -> s < t``: a masked token becomes ``v`` with probability
  ``(alpha_s - alpha_t)/(1 - alpha_t) * x_hat_v`` and stays masked with ``(1 - alpha_s)/(1 - alpha_t)``;
  unmasked tokens are carried over.

Everything here is a pure function of tensors; the network is passed in as a callable.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

# A finite "minus infinity": keeps 0 * log(0) terms at exactly 0 (entropies, KLs) while exp() underflows to 0.
NEG_INF = -1.0e6

Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""``denoiser(z, sigma) -> logits (B, L, V)``: any network with the DiT call signature."""


@dataclass(frozen=True)
class LogLinearSchedule:
    """``alpha_t = 1 - (1 - eps) t``: alpha_0 = 1 (clean), alpha_1 = eps (almost all masked)."""

    eps: float = 1e-3

    def alpha(self, t: torch.Tensor) -> torch.Tensor:
        return 1.0 - (1.0 - self.eps) * t

    def dalpha(self, t: torch.Tensor) -> torch.Tensor:
        return torch.full_like(t, -(1.0 - self.eps))

    def sigma(self, t: torch.Tensor) -> torch.Tensor:
        """Noise level fed to the network: ``sigma_t = -log alpha_t``."""
        return -torch.log(self.alpha(t))

    def weight(self, t: torch.Tensor) -> torch.Tensor:
        """NELBO weight ``-alpha'_t / (1 - alpha_t)`` (= 1/t for this schedule)."""
        return -self.dalpha(t) / (1.0 - self.alpha(t))


def sample_times(n: int, generator: torch.Generator | None = None, *, sampling_eps: float = 1e-3,
                 antithetic: bool = True, device: torch.device | str = "cpu") -> torch.Tensor:
    """Training times in ``[sampling_eps, 1]``; antithetic = one uniform offset, stratified over ``n`` slots."""
    if antithetic:
        u = torch.rand(1, generator=generator, device=device, dtype=torch.float64)
        t = (u / n + torch.arange(n, device=device, dtype=torch.float64) / n) % 1.0
    else:
        t = torch.rand(n, generator=generator, device=device, dtype=torch.float64)
    return ((1.0 - sampling_eps) * t + sampling_eps).float()


def forward_mask(x0: torch.Tensor, alpha_t: torch.Tensor, mask_index: int, uniforms: torch.Tensor) -> torch.Tensor:
    """Sample ``z_t ~ q(. | x0)``: each token is replaced by ``mask_index`` with probability ``1 - alpha_t``.

    ``alpha_t`` broadcasts against ``x0`` (shape (B, 1) or (B, L)); ``uniforms`` are U[0,1) draws shaped like x0.
    """
    return torch.where(uniforms < (1.0 - alpha_t), torch.full_like(x0, mask_index), x0)


def subs_log_probs(logits: torch.Tensor, z: torch.Tensor, mask_index: int) -> torch.Tensor:
    """SUBS parameterisation: ``log x_hat(z)``.

    The [MASK] logit is removed, the rest is log-normalised; at unmasked positions the distribution is a point
    mass on the observed token (carry-over). Computed in float32 (or float64 if the logits are float64).
    """
    logits = logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits
    logits = logits.clone()
    logits[..., mask_index] = NEG_INF
    log_probs = torch.log_softmax(logits, dim=-1)
    unmasked = (z != mask_index).unsqueeze(-1)
    if unmasked.any():
        carry = torch.full_like(log_probs, NEG_INF)
        carry.scatter_(-1, z.unsqueeze(-1), 0.0)
        log_probs = torch.where(unmasked, carry, log_probs)
    return log_probs


def sigma_input(schedule: LogLinearSchedule, t: torch.Tensor, time_conditioning: bool) -> torch.Tensor:
    """What the network is given as noise level: ``sigma_t`` if time-conditioned, else zeros (MDLM)."""
    t = torch.as_tensor(t, dtype=torch.float32)
    return schedule.sigma(t) if time_conditioning else torch.zeros_like(t)


def mdlm_token_losses(denoiser: Denoiser, x0: torch.Tensor, t: torch.Tensor, mask_uniforms: torch.Tensor, *,
                      schedule: LogLinearSchedule, mask_index: int, time_conditioning: bool = False
                      ) -> torch.Tensor:
    """Per-token continuous-time NELBO terms (B, L): ``w(t) * -log x_hat(z_t)[x0]`` at masked positions, 0 elsewhere.

    Their mean over tokens is the MDLM training loss; their sum over a sequence is one Monte-Carlo draw of the
    sequence NELBO (nats). ``t`` has shape (B,), ``mask_uniforms`` the shape of ``x0``.
    """
    t = t.to(x0.device)
    alpha_t = schedule.alpha(t)[:, None]
    zt = forward_mask(x0, alpha_t, mask_index, mask_uniforms.to(x0.device))
    logits = denoiser(zt, sigma_input(schedule, t, time_conditioning).to(x0.device))
    log_probs = subs_log_probs(logits, zt, mask_index)
    log_p_x0 = log_probs.gather(-1, x0.unsqueeze(-1)).squeeze(-1)
    return -log_p_x0 * schedule.weight(t)[:, None] * (zt == mask_index)


def posterior_probs(p_x0: torch.Tensor, alpha_t: torch.Tensor, alpha_s: torch.Tensor, mask_index: int
                    ) -> torch.Tensor:
    """Ancestral transition ``q(z_s | z_t, x_hat)`` for a masked position (normalised), shape like ``p_x0``.

    ``p_x0`` is the SUBS denoiser distribution (mask column 0); ``alpha_t``/``alpha_s`` broadcast as (B, 1, 1).
    Unmasked positions must be carried over by the caller.
    """
    q = p_x0 * ((alpha_s - alpha_t) / (1.0 - alpha_t))
    q[..., mask_index] = ((1.0 - alpha_s) / (1.0 - alpha_t)).squeeze(-1).expand(q.shape[:-1])
    return q
