"""Exactly enumerable toy problems for masked diffusion (vocabulary of V tokens + [MASK], length L).

Every quantity the distillation tests need is computed by brute force over the (V+1)^L states: the K-step
ancestral sampler's output distribution, the infinite-step distribution, forward marginals q(z, t).
"""
from __future__ import annotations

import itertools

import torch

from didi.config import ModelConfig
from didi.diffusion.process import LogLinearSchedule, mdlm_token_losses, sample_times, subs_log_probs
from didi.models.dit import DiT

V, L = 3, 3
MASK = V
STATES = torch.tensor(list(itertools.product(range(V + 1), repeat=L)))  # all (V+1)^L partially masked states
CLEAN = torch.tensor(list(itertools.product(range(V), repeat=L)))  # the V^L clean sequences


def state_index(z: torch.Tensor) -> torch.Tensor:
    """Index of each row of z in STATES."""
    weights = (V + 1) ** torch.arange(L - 1, -1, -1)
    return (z * weights).sum(-1)


def clean_index(x: torch.Tensor) -> torch.Tensor:
    weights = V ** torch.arange(L - 1, -1, -1)
    return (x * weights).sum(-1)


def tiny_dit(seed: int = 0) -> DiT:
    torch.manual_seed(seed)
    return DiT(ModelConfig(vocab_size=V + 1, hidden_size=32, n_blocks=2, n_heads=2, cond_dim=16, max_seq_len=L,
                           dropout=0.0))


def target_distribution(seed: int = 0) -> torch.Tensor:
    """A correlated joint over the V^L clean sequences (float64)."""
    g = torch.Generator().manual_seed(seed)
    logits = 2.5 * torch.randn(len(CLEAN), generator=g, dtype=torch.float64)
    return torch.softmax(logits, 0)


def denoiser_table(net, differentiable: bool = False) -> torch.Tensor:
    """x_hat(z) for every state: (S, L, V+1) float64 probabilities (SUBS)."""
    ctx = torch.enable_grad() if differentiable else torch.no_grad()
    with ctx:
        logits = net(STATES, torch.zeros(len(STATES)))
        return subs_log_probs(logits.double(), STATES, MASK).exp()


def step_matrix(table: torch.Tensor, alpha_t: float, alpha_s: float) -> torch.Tensor:
    """Transition matrix P[z_t, z_s] of one ancestral step (S x S), differentiable in ``table``."""
    stay = (1 - alpha_s) / (1 - alpha_t)
    move = (alpha_s - alpha_t) / (1 - alpha_t)
    S = len(STATES)
    # per position: probability of going from z_t^i to z_s^i
    src = STATES[:, None, :]  # (S, 1, L)
    dst = STATES[None, :, :]  # (1, S, L)
    masked = src == MASK
    tok = dst.clamp_max(V - 1).expand(S, S, L)
    p_tok = table.gather(-1, dst.clamp_max(V).expand(S, S, L).permute(0, 2, 1)).permute(0, 2, 1)  # x_hat(z_t)[dst]
    per_pos = torch.where(
        masked,
        torch.where(dst == MASK, torch.full_like(p_tok, stay), move * p_tok),
        (src == dst).double(),
    )
    del tok
    return per_pos.prod(-1)


def k_step_distribution(table: torch.Tensor, k: int, schedule: LogLinearSchedule = LogLinearSchedule()) -> torch.Tensor:
    """Output distribution over CLEAN of the K-step uniform-grid ancestral sampler (last step to alpha=1)."""
    grid = torch.linspace(1.0, 0.0, k + 1, dtype=torch.float64)
    p = torch.zeros(len(STATES), dtype=torch.float64)
    p[state_index(torch.full((1, L), MASK))] = 1.0
    for i in range(k):
        p = p @ step_matrix(table, float(schedule.alpha(grid[i])), float(schedule.alpha(grid[i + 1])))
    return p[state_index(CLEAN)]


def two_step_distribution(table: torch.Tensor, tau: float, t0: float = 0.0,
                          schedule: LogLinearSchedule = LogLinearSchedule()) -> torch.Tensor:
    """Distribution of the student's training rollout 1 -> tau -> t0 (remaining masks filled)."""
    p = torch.zeros(len(STATES), dtype=torch.float64)
    p[state_index(torch.full((1, L), MASK))] = 1.0
    a1, at, a0 = (float(schedule.alpha(torch.tensor(v, dtype=torch.float64))) for v in (1.0, tau, t0))
    p = p @ step_matrix(table, a1, at)
    p = p @ step_matrix(table, at, 1.0)  # fill: t0 -> alpha = 1 for all remaining masks
    return p[state_index(CLEAN)]


def infinite_step_distribution(table: torch.Tensor) -> torch.Tensor:
    """Limit of infinitely many steps: tokens are revealed one at a time in a uniformly random order."""
    out = torch.zeros(len(CLEAN), dtype=torch.float64)
    orders = list(itertools.permutations(range(L)))
    for order in orders:
        for j, x in enumerate(CLEAN):
            z = torch.full((L,), MASK)
            prob = 1.0
            for pos in order:
                prob = prob * table[state_index(z[None])[0], pos, x[pos]]
                z[pos] = x[pos]
            out[j] += prob / len(orders)
    return out


def forward_marginal(p_clean: torch.Tensor, alpha: float) -> torch.Tensor:
    """q(z, t) = sum_x p(x) Q_t(z | x) over all STATES, differentiable in p_clean."""
    masked = STATES[None, :, :] == MASK  # (1, S, L)
    agree = STATES[None, :, :] == CLEAN[:, None, :]  # (X, S, L)
    per_pos = torch.where(masked, torch.full(masked.shape, 1 - alpha, dtype=torch.float64),
                          agree.double() * alpha)
    return p_clean @ per_pos.prod(-1)


def kl(p: torch.Tensor, q: torch.Tensor) -> float:
    keep = p > 0
    return float((p[keep] * (p[keep] / q[keep]).log()).sum())


def train_teacher(p_target: torch.Tensor, steps: int = 400, seed: int = 0) -> DiT:
    """Fit a tiny DiT to p_target with the MDLM loss (a good but imperfect teacher)."""
    net = tiny_dit(seed)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(seed)
    sched = LogLinearSchedule()
    for _ in range(steps):
        x = CLEAN[torch.multinomial(p_target, 256, replacement=True, generator=g)]
        t = sample_times(256, g)
        loss = mdlm_token_losses(net, x, t, torch.rand(256, L, generator=g), schedule=sched, mask_index=MASK).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return net.eval()
