import itertools

import numpy as np
import pytest
import torch
from scipy import stats

from conftest import randomize_output_layer
from didi.diffusion.process import LogLinearSchedule
from didi.diffusion.sampling import SamplingControls, ancestral_sample, nucleus_filter, sample_categorical
from didi.errors import ConfigError
from didi.models.dit import DiT


class Counting:
    """Wrap a denoiser and count its calls."""

    def __init__(self, fn):
        self.fn, self.calls = fn, 0

    def __call__(self, z, sigma):
        self.calls += 1
        return self.fn(z, sigma)


def chi_square_pvalue(counts, probs):
    counts = np.asarray(counts, dtype=float)
    probs = np.asarray(probs, dtype=np.float64)
    expected = probs / probs.sum() * counts.sum()
    keep = expected > 0
    assert counts[~keep].sum() == 0
    observed, expected = counts[keep], expected[keep]
    return stats.chisquare(observed, expected * observed.sum() / expected.sum()).pvalue


def test_sample_categorical_matches_unnormalised_probs():
    g = torch.Generator().manual_seed(0)
    p = torch.tensor([2.0, 0.0, 1.0, 5.0, 0.5])
    draws = sample_categorical(p.expand(100_000, 5), g)
    counts = torch.bincount(draws, minlength=5)
    assert counts[1] == 0
    assert chi_square_pvalue(counts, p / p.sum()) > 1e-3


def test_sample_categorical_resolves_tiny_probabilities_in_float64():
    """A 1e-5 token must appear at its rate; float32 Gumbel noise is known to truncate such tails."""
    g = torch.Generator().manual_seed(0)
    p = torch.tensor([1.0 - 1e-5, 1e-5], dtype=torch.float64)
    draws = sample_categorical(p.expand(2_000_000, 2), g)
    hits = int(draws.sum())
    assert 5 <= hits <= 45  # expectation 20


def test_nucleus_filter():
    p = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    f = nucleus_filter(p, 0.8)
    assert torch.allclose(f, torch.tensor([[0.625, 0.375, 0.0, 0.0]]))
    assert torch.equal(nucleus_filter(p, 1.0), p)


def factorised_denoiser(table):
    """x_hat at position i is table[i] regardless of context (a known product distribution)."""
    logits = torch.log(torch.cat([table, torch.zeros(table.shape[0], 1)], dim=-1).clamp_min(1e-30))
    def fn(z, sigma):
        return logits.expand(z.shape[0], -1, -1).clone()
    return fn


def test_ancestral_reproduces_known_distribution_chi_square():
    """NFE = length, product model: the joint over V^L of 30k samples passes a chi-square test."""
    table = torch.tensor([[0.6, 0.3, 0.1], [0.2, 0.2, 0.6], [0.1, 0.5, 0.4]])
    V, L, mask = 3, 3, 3
    g = torch.Generator().manual_seed(0)
    res = ancestral_sample(factorised_denoiser(table), batch_size=30_000, seq_len=L, mask_index=mask,
                           schedule=LogLinearSchedule(), num_steps=L, generator=g)
    assert (res.tokens != mask).all()
    codes = (res.tokens * torch.tensor([V * V, V, 1])).sum(-1)
    counts = torch.bincount(codes, minlength=V ** L).numpy()
    probs = [float(table[0, a] * table[1, b] * table[2, c]) for a, b, c in itertools.product(range(V), repeat=3)]
    assert chi_square_pvalue(counts, probs) > 1e-3


def test_ancestral_with_exact_conditionals_recovers_a_joint_distribution():
    """A denoiser returning the true conditionals of a correlated joint; with many steps (one token revealed at a
    time, almost surely) the sampler reproduces the joint."""
    V, L, mask = 2, 3, 2
    joint = torch.tensor([0.30, 0.02, 0.05, 0.13, 0.01, 0.19, 0.25, 0.05])  # over {0,1}^3
    states = torch.tensor(list(itertools.product(range(V), repeat=L)))

    def fn(z, sigma):
        out = torch.zeros(z.shape[0], L, V + 1)
        consistent = ((z[:, None, :] == states[None]) | (z[:, None, :] == mask)).all(-1).float() * joint  # (B, 8)
        for i in range(L):
            for v in range(V):
                out[:, i, v] = (consistent * (states[:, i] == v)).sum(-1)
        return torch.log(out.clamp_min(1e-30))

    g = torch.Generator().manual_seed(1)
    res = ancestral_sample(fn, batch_size=20_000, seq_len=L, mask_index=mask, schedule=LogLinearSchedule(),
                           num_steps=2000, generator=g)
    codes = (res.tokens * torch.tensor([4, 2, 1])).sum(-1)
    freq = torch.bincount(codes, minlength=8).float() / 20_000
    assert (freq - joint).abs().sum() < 0.03


def test_cache_gives_identical_samples_with_fewer_calls(tiny_model_config):
    model = DiT(tiny_model_config).eval()
    randomize_output_layer(model)
    plain, cached = Counting(model), Counting(model)
    kwargs = dict(batch_size=3, seq_len=12, mask_index=10, schedule=LogLinearSchedule())
    a = ancestral_sample(plain, num_steps=64, use_cache=False,
                         generator=torch.Generator().manual_seed(5), **kwargs)
    b = ancestral_sample(cached, num_steps=64, use_cache=True,
                         generator=torch.Generator().manual_seed(5), **kwargs)
    assert torch.equal(a.tokens, b.tokens)
    assert (a.tokens != 10).all()
    assert a.nfe == plain.calls and b.nfe == cached.calls  # the reported NFE is the real number of calls
    assert b.nfe < a.nfe <= 64
    assert b.nfe <= 3 * 12  # at most one call per revealed token


def test_nfe_never_exceeds_budget_and_all_masks_are_filled(tiny_model_config):
    model = DiT(tiny_model_config).eval()
    randomize_output_layer(model)
    for steps in (1, 2, 5):
        counter = Counting(model)
        res = ancestral_sample(counter, batch_size=4, seq_len=16, mask_index=10, schedule=LogLinearSchedule(),
                               num_steps=steps, generator=torch.Generator().manual_seed(0))
        assert res.nfe == counter.calls <= steps
        assert (res.tokens != 10).all()


def test_greedy_noise_removal_takes_the_argmax():
    table = torch.tensor([[0.2, 0.5, 0.3]] * 4)
    res = ancestral_sample(factorised_denoiser(table), batch_size=50, seq_len=4, mask_index=3,
                           schedule=LogLinearSchedule(), num_steps=1, controls=SamplingControls(greedy_tail=True))
    assert (res.tokens == 1).all()


def test_invalid_nfe_is_a_clear_error():
    with pytest.raises(ConfigError, match="--nfe"):
        ancestral_sample(lambda z, sigma: None, batch_size=1, seq_len=1, num_steps=0, mask_index=0,
                         schedule=LogLinearSchedule())
