import itertools
import math

import numpy as np
import torch

from conftest import randomize_output_layer
from didi.config import ModelConfig
from didi.diffusion.process import (
    LogLinearSchedule,
    forward_mask,
    mdlm_token_losses,
    posterior_probs,
    sample_times,
    subs_log_probs,
)
from didi.models.dit import DiT


def test_log_linear_schedule():
    s = LogLinearSchedule(eps=1e-3)
    t = torch.tensor([0.0, 0.25, 1.0], dtype=torch.float64)
    assert torch.allclose(s.alpha(t), torch.tensor([1.0, 1 - 0.999 * 0.25, 1e-3], dtype=torch.float64))
    assert torch.allclose(s.dalpha(t), torch.full((3,), -0.999, dtype=torch.float64))
    assert torch.allclose(s.sigma(t), -torch.log(s.alpha(t)))
    assert torch.allclose(s.weight(t[1:]), 1.0 / t[1:])  # -alpha'/(1-alpha) = 1/t for this schedule


def test_antithetic_times_are_stratified():
    g = torch.Generator().manual_seed(3)
    t = sample_times(8, g, sampling_eps=0.0)
    strata = torch.floor(t * 8).long().sort().values
    assert torch.equal(strata, torch.arange(8))


def test_forward_mask_rate():
    x0 = torch.zeros(200, 500, dtype=torch.long)
    alpha = torch.full((200, 1), 0.3)
    z = forward_mask(x0, alpha, mask_index=7, uniforms=torch.rand(200, 500))
    rate = (z == 7).float().mean().item()
    assert abs(rate - 0.7) < 0.01
    assert set(z.unique().tolist()) == {0, 7}


def test_subs_never_predicts_mask_and_carries_over():
    logits = torch.randn(2, 5, 6)
    z = torch.tensor([[5, 1, 5, 3, 5], [0, 5, 5, 5, 2]])
    logp = subs_log_probs(logits, z, mask_index=5)
    p = logp.exp()
    assert torch.allclose(p.sum(-1), torch.ones(2, 5), atol=1e-6)
    assert torch.all(p[..., 5] == 0)
    unmasked = z != 5
    assert torch.equal(p[unmasked].argmax(-1), z[unmasked])
    assert torch.allclose(p[unmasked].max(-1).values, torch.ones(int(unmasked.sum())))


def test_posterior_probs_normalised():
    p_x0 = torch.softmax(torch.randn(3, 4, 6, dtype=torch.float64), -1)
    p_x0[..., 5] = 0
    p_x0 = p_x0 / p_x0.sum(-1, keepdim=True)
    a_t = torch.full((3, 1, 1), 0.2, dtype=torch.float64)
    a_s = torch.full((3, 1, 1), 0.6, dtype=torch.float64)
    q = posterior_probs(p_x0, a_t, a_s, mask_index=5)
    assert torch.allclose(q.sum(-1), torch.ones(3, 4, dtype=torch.float64))
    assert torch.allclose(q[..., 5], torch.full((3, 4), 0.4 / 0.8, dtype=torch.float64))


def test_nelbo_matches_brute_force_enumeration():
    """Monte-Carlo MDLM NELBO == exact bound computed by enumerating every mask pattern (V=3, L=3)."""
    torch.manual_seed(0)
    V, L, mask = 3, 3, 3
    model = DiT(ModelConfig(vocab_size=V + 1, hidden_size=16, n_blocks=1, n_heads=2, cond_dim=8, max_seq_len=L,
                            dropout=0.0)).eval()
    randomize_output_layer(model, scale=2.0)
    schedule, sampling_eps = LogLinearSchedule(1e-3), 1e-3
    x = torch.tensor([0, 2, 1])

    # Exact: f(t) = w(t) * sum_patterns P(pattern | t) * sum_{i masked} -log x_hat(z)[x_i], t ~ U[sampling_eps, 1].
    patterns = list(itertools.product([0, 1], repeat=L))
    with torch.no_grad():
        z = torch.stack([torch.where(torch.tensor(m, dtype=torch.bool), torch.tensor(mask), x) for m in patterns])
        logp = subs_log_probs(model(z, torch.zeros(len(patterns))).double(), z, mask)
        nll = [-(logp[j, range(L), x] * torch.tensor(m)).sum().item() for j, m in enumerate(patterns)]
    nodes, weights = np.polynomial.legendre.leggauss(40)
    ts = 0.5 * (nodes + 1) * (1 - sampling_eps) + sampling_eps
    def f(t):
        a = 1 - (1 - schedule.eps) * t
        return (1 / t) * sum(((1 - a) ** sum(m)) * (a ** (L - sum(m))) * nll[j] for j, m in enumerate(patterns))
    exact = 0.5 * sum(w * f(t) for w, t in zip(weights, ts))  # = E_{t ~ U[eps_s, 1]} f(t)

    n = 200_000
    g = torch.Generator().manual_seed(1)
    t = sample_times(n, g, sampling_eps=sampling_eps)
    u = torch.rand(n, L, generator=g)
    with torch.no_grad():
        per_seq = mdlm_token_losses(model, x.expand(n, L), t, u, schedule=schedule, mask_index=mask).sum(-1).double()
    mc, se = per_seq.mean().item(), per_seq.std().item() / math.sqrt(n)
    assert abs(mc - exact) < 4 * se + 1e-3, (mc, exact, se)
    assert exact > 0


def test_nelbo_bounds_true_nll_of_a_factorised_model():
    """For a denoiser that ignores context (product model p), the NELBO equals -log p(x) in expectation."""
    V, L, mask = 4, 5, 4
    probs = torch.tensor([0.1, 0.2, 0.3, 0.4])
    def denoiser(z, sigma):
        logits = torch.log(torch.cat([probs, torch.tensor([1e-9])])).expand(z.shape[0], z.shape[1], V + 1)
        return logits.clone()
    x = torch.tensor([3, 0, 2, 2, 1])
    true_nll = -torch.log(probs[x]).sum().item()
    n = 400_000
    g = torch.Generator().manual_seed(2)
    t = sample_times(n, g, sampling_eps=1e-5)
    u = torch.rand(n, L, generator=g)
    per_seq = mdlm_token_losses(denoiser, x.expand(n, L), t, u, schedule=LogLinearSchedule(1e-5),
                                mask_index=mask).sum(-1).double()
    se = per_seq.std().item() / math.sqrt(n)
    assert abs(per_seq.mean().item() - true_nll) < 4 * se + 0.01
