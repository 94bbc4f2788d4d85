"""Sampling controls (``didi.diffusion.sampling.SamplingControls``): temperature, top-k, top-p and the greedy last
step against brute force on small vocabularies, on every sampler (ancestral, RGAS, AR), in the Python API and in
`didi sample`; the defaults reproduce the samplers as they were before the controls existed, token for token."""
import itertools
import math

import pytest
import torch

from didi.cli import main
from didi.diffusion.process import LogLinearSchedule
from didi.diffusion.rgas import RGASConfig, rgas_sample
from didi.diffusion.sampling import (
    SamplingControls,
    ancestral_sample,
    apply_controls,
    masked_token_probs,
    nucleus_filter,
    sample_categorical,
)
from didi.errors import ConfigError
from didi.interop.sample_files import read_samples
from didi.pipelines.ar import generate
from didi.pipelines.load import load
from test_ar import make_run, tiny_tokenizer

V, MASK, L = 8, 8, 10  # toy vocabulary: 8 tokens + [MASK]


# ---------------------------------------------------------------------------------------------- toy networks

def toy_tables(seed):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(V + 1, 12, generator=g, dtype=torch.float64),
            torch.randn(L, 12, generator=g, dtype=torch.float64),
            torch.randn(12, V + 1, generator=g, dtype=torch.float64) * 0.35)


def toy_denoiser(seed=0):
    """Context-dependent logits (B, L, V + 1) of the ids z, computed in float64 (no DiT: independent of its code)."""
    emb, pos, out = toy_tables(seed)

    def fn(z, sigma):
        h = emb[z] + pos[: z.shape[1]]
        return (torch.tanh(h + h.mean(1, keepdim=True)) @ out).float()
    return fn


def toy_discriminator(seed=1):
    """Logits (B, L) of ids (B, L) or of soft inputs (B, L, V + 1) (softmax @ embedding, as the DiT does)."""
    emb, pos, _ = toy_tables(seed)

    def fn(x, sigma):
        h = (torch.softmax(x.double(), -1) @ emb if x.is_floating_point() else emb[x]) + pos[: x.shape[1]]
        return (2.0 * torch.tanh(h + h.mean(1, keepdim=True)).sum(-1)).float()
    return fn


def toy_ar(seed=2):
    """Next-token logits (B, T, V) of a prefix: its embeddings plus their running mean."""
    emb, _, out = toy_tables(seed)

    def fn(idx, cache=None):
        h = emb[idx] + emb[idx].cumsum(1) / torch.arange(1, idx.shape[1] + 1, dtype=torch.float64)[:, None]
        return (torch.tanh(h) @ out[:, :V] * 3.0).float()
    return fn


def ancestral(steps, seed=11, batch=4, noise_removal="ancestral", **options):
    return ancestral_sample(toy_denoiser(), batch_size=batch, seq_len=L, mask_index=MASK, schedule=LogLinearSchedule(),
                            num_steps=steps,
                            controls=SamplingControls(**options, greedy_tail=noise_removal == "greedy"),
                            generator=torch.Generator().manual_seed(seed))


def rgas(reward, steps=6, seed=12, batch=4, **kwargs):
    return rgas_sample(toy_denoiser(), toy_discriminator(), batch_size=batch, seq_len=L, num_steps=steps,
                       mask_index=MASK, schedule=LogLinearSchedule(),
                       config=RGASConfig(reward=reward, h_start=3.0, h_end=4.0),
                       generator=torch.Generator().manual_seed(seed), **kwargs)


def ar(seed=13, batch=4, **kwargs):
    return generate(toy_ar(), batch_size=batch, seq_len=L, bos_id=0, generator=torch.Generator().manual_seed(seed),
                    use_cache=False, **kwargs)


# ---------------------------------------------------------------------- the defaults change nothing (goldens)

# Tokens drawn by the samplers of commit c4c8166 (before SamplingControls existed) from the toy networks above,
# with the same seeds: ancestral(steps, top_p), rgas(reward) (+ its discriminator calls) and ar().
BEFORE = {
    ("ancestral", 3, 1.0): [[6, 3, 3, 6, 6, 6, 5, 6, 3, 4], [6, 6, 6, 3, 4, 6, 1, 4, 7, 6],
                            [6, 4, 4, 6, 4, 6, 3, 6, 4, 6], [4, 0, 4, 0, 4, 6, 6, 6, 4, 2]],
    ("ancestral", 3, 0.9): [[6, 3, 3, 6, 6, 6, 6, 6, 3, 4], [6, 6, 6, 3, 4, 6, 1, 4, 1, 6],
                            [6, 4, 4, 6, 4, 6, 3, 6, 4, 6], [4, 0, 4, 0, 4, 6, 6, 6, 4, 2]],
    ("ancestral", 10, 1.0): [[6, 3, 1, 3, 4, 6, 6, 6, 5, 2], [6, 0, 1, 4, 4, 6, 6, 6, 6, 4],
                             [6, 6, 6, 3, 2, 6, 3, 4, 4, 6], [6, 3, 3, 4, 4, 4, 3, 3, 4, 6]],
    ("ancestral", 10, 0.9): [[6, 3, 1, 3, 4, 6, 6, 6, 3, 2], [6, 0, 1, 4, 4, 6, 6, 6, 6, 4],
                             [6, 6, 6, 3, 6, 6, 3, 4, 4, 6], [6, 3, 3, 4, 4, 4, 3, 3, 4, 6]],
    ("rgas", "masked_mean"): ([[6, 6, 4, 3, 3, 4, 3, 6, 3, 6], [4, 6, 3, 1, 3, 6, 6, 6, 4, 6],
                               [4, 1, 0, 0, 4, 4, 0, 3, 3, 6], [6, 4, 4, 4, 4, 6, 4, 3, 6, 6]],
                              {"discriminator": 5, "discriminator_backward": 3}),
    ("rgas", "sum"): ([[6, 4, 3, 3, 6, 6, 3, 6, 3, 0], [4, 4, 3, 3, 4, 6, 3, 6, 0, 3],
                       [4, 6, 3, 3, 4, 4, 6, 3, 3, 3], [4, 3, 4, 3, 4, 6, 6, 3, 6, 6]],
                      {"discriminator": 6, "discriminator_backward": 3}),
    ("ar",): [[0, 7, 3, 1, 1, 1, 1, 1, 1, 1], [0, 5, 5, 5, 1, 1, 1, 1, 5, 0], [0, 5, 1, 1, 1, 5, 1, 1, 1, 1],
              [0, 7, 3, 1, 1, 1, 1, 1, 1, 1]],
}


@pytest.mark.parametrize("explicit", [False, True])
def test_default_controls_reproduce_the_samplers_of_before_token_for_token(explicit):
    """Temperature 1 and no truncation (given explicitly or not) draw exactly what the samplers drew before."""
    controls = dict(temperature=1.0, top_k=None) if explicit else {}
    for steps, top_p in itertools.product((3, 10), (1.0, 0.9)):
        result = ancestral(steps, top_p=top_p, **controls)
        assert result.tokens.tolist() == BEFORE[("ancestral", steps, top_p)]
    given = {"controls": SamplingControls(temperature=1.0, top_k=None, top_p=1.0)} if explicit else {}
    for reward in ("masked_mean", "sum"):
        result = rgas(reward, **given)
        assert (result.tokens.tolist(), result.extra_calls) == BEFORE[("rgas", reward)]
    assert ar(**given).tokens.tolist() == BEFORE[("ar",)]


# ------------------------------------------------------------------------------------------------ temperature

def test_temperature_rescales_the_logits_and_tends_to_the_argmax():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(50, 7, generator=g, dtype=torch.float64) * 2
    for t in (0.3, 1.0, 2.5):
        expected = logits.softmax(-1) ** (1 / t)
        expected /= expected.sum(-1, keepdim=True)
        assert torch.allclose(apply_controls(logits, SamplingControls(temperature=t)), expected, atol=1e-12)
    one_hot = torch.nn.functional.one_hot(logits.argmax(-1), 7).double()
    assert torch.equal(apply_controls(logits, SamplingControls(temperature=1e-4)), one_hot)
    probs = apply_controls(logits.expand(200, 50, 7), SamplingControls(temperature=1e-3))
    assert torch.equal(sample_categorical(probs, g), logits.argmax(-1).expand(200, 50))
    assert apply_controls(logits).dtype == torch.float64
    assert torch.equal(apply_controls(logits), torch.softmax(logits, -1))  # the default is the softmax, bit for bit


def test_every_sampler_at_a_tiny_temperature_takes_the_argmax():
    cold = SamplingControls(temperature=1e-4)
    # one ancestral step from all-mask reveals every position from the all-mask prediction
    z0 = torch.full((3, L), MASK)
    argmax = masked_token_probs(toy_denoiser()(z0, None), MASK).argmax(-1)
    assert torch.equal(ancestral(1, batch=3, temperature=1e-4).tokens, argmax)
    assert torch.equal(rgas("masked_mean", steps=1, batch=3, controls=cold).tokens, argmax)
    # AR: the greedy continuation of [BOS]
    greedy = torch.zeros(2, 1, dtype=torch.long)
    for _ in range(L - 1):
        greedy = torch.cat([greedy, toy_ar()(greedy)[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(ar(batch=2, controls=cold).tokens, greedy)
    # a warm temperature really changes the samples
    assert ancestral(10, temperature=3.0).tokens.tolist() != BEFORE[("ancestral", 10, 1.0)]


# ---------------------------------------------------------------------------------------------- truncation

def brute_force_nucleus(p: list[float], top_p: float) -> set[int]:
    """The smallest set of tokens whose mass reaches top_p (of the total): among all subsets of the minimal size
    that reach it, the one of largest mass (the most likely tokens)."""
    total = math.fsum(p)
    for size in range(1, len(p) + 1):
        reaching = [s for s in itertools.combinations(range(len(p)), size)
                    if math.fsum(p[i] for i in s) >= top_p * total]
        if reaching:
            return set(max(reaching, key=lambda s: math.fsum(p[i] for i in s)))
    raise AssertionError("unreachable")


def test_top_p_keeps_exactly_the_smallest_set_reaching_p():
    g = torch.Generator().manual_seed(0)
    for trial in range(300):
        v = 2 + trial % 5
        p = torch.rand(v, generator=g, dtype=torch.float64) ** 3  # skewed, ties have probability 0
        top_p = float(torch.rand((), generator=g, dtype=torch.float64)) * 0.999 + 0.001
        kept = nucleus_filter(p[None], top_p)[0]
        assert {i for i in range(v) if kept[i] > 0} == brute_force_nucleus(p.tolist(), top_p)
        mask = kept > 0
        assert torch.allclose(kept[mask], p[mask] / p[mask].sum(), atol=1e-12)
    # exact ties with the mass: dyadic probabilities are summed exactly, the boundary token is not kept
    p = torch.tensor([[0.5, 0.25, 0.125, 0.125]], dtype=torch.float64)
    assert (nucleus_filter(p, 0.75)[0] > 0).tolist() == [True, True, False, False]
    assert (nucleus_filter(p, 0.5)[0] > 0).tolist() == [True, False, False, False]
    assert (nucleus_filter(p, 0.7500001)[0] > 0).sum() == 3
    assert torch.equal(nucleus_filter(p, 1.0), p)


def test_top_k_keeps_the_k_most_likely_and_composes_after_the_temperature():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(200, 6, generator=g, dtype=torch.float64)
    for k in range(1, 7):
        kept = apply_controls(logits, SamplingControls(top_k=k))
        for row, out in zip(logits, kept):
            top = set(torch.argsort(row, descending=True)[:k].tolist())
            assert {i for i in range(6) if out[i] > 0} == top
            assert torch.allclose(out[list(top)], row[list(top)].softmax(-1), atol=1e-12)
    # temperature, then top-k, then top-p, each renormalised
    controls = SamplingControls(temperature=0.7, top_k=4, top_p=0.8)
    for row, out in zip(logits, apply_controls(logits, controls)):
        p = (row / 0.7).softmax(-1)
        top = torch.argsort(p, descending=True)[:4]
        q = torch.zeros(6, dtype=torch.float64)
        q[top] = p[top] / p[top].sum()
        assert torch.allclose(out, nucleus_filter(q[None], 0.8)[0], atol=1e-12)


def test_truncated_draws_follow_the_truncated_distribution():
    """Ancestral draws at one step: the per-position token frequencies match apply_controls' probabilities."""
    controls = dict(temperature=0.8, top_k=5, top_p=0.9)
    result = ancestral(1, batch=20_000, seed=3, **controls)
    z0 = torch.full((1, L), MASK)
    expected = masked_token_probs(toy_denoiser()(z0, None), MASK, SamplingControls(**controls))[0]
    for i in range(L):
        freq = torch.bincount(result.tokens[:, i], minlength=V + 1).double() / 20_000
        assert (freq[expected[i] == 0] == 0).all()  # truncated tokens never appear
        assert (freq - expected[i]).abs().max() < 0.015


# --------------------------------------------------------------------------------------------- greedy tail

def test_greedy_tail_takes_the_argmax_at_the_last_step_only():
    # AR: the stream up to the last token is unchanged, the last token is the argmax given the prefix
    plain, tail = ar(), ar(controls=SamplingControls(greedy_tail=True))
    assert torch.equal(tail.tokens[:, :-1], plain.tokens[:, :-1])
    assert torch.equal(tail.tokens[:, -1], toy_ar()(tail.tokens[:, :-1])[:, -1].argmax(-1))
    # ancestral and RGAS with one step: that step is the last, every token the argmax
    z0 = torch.full((3, L), MASK)
    argmax = masked_token_probs(toy_denoiser()(z0, None), MASK).argmax(-1)
    assert torch.equal(ancestral(1, batch=3, noise_removal="greedy").tokens, argmax)
    result = rgas("sum", steps=1, batch=3, controls=SamplingControls(greedy_tail=True))
    assert torch.equal(result.tokens, argmax) and result.extra_calls["discriminator"] == 0  # one state: no rerank
    # with several steps the earlier steps still draw: samples differ between seeds
    a, b = (rgas("masked_mean", seed=s, controls=SamplingControls(greedy_tail=True)).tokens for s in (1, 2))
    assert not torch.equal(a, b)


# ---------------------------------------------------------------------------------------- validation, CLI, API

@pytest.mark.parametrize("options, message", [
    ({"temperature": 0.0}, "--temperature: must be a finite number > 0"),
    ({"temperature": -1.0}, "--temperature: must be a finite number > 0"),
    ({"temperature": float("inf")}, "--temperature: must be a finite number > 0"),
    ({"top_p": 0.0}, "--top-p: must be in (0, 1]"),
    ({"top_p": 1.5}, "--top-p: must be in (0, 1]"),
    ({"top_k": 0}, "--top-k: must be an integer >= 1"),
])
def test_bad_controls_are_one_line_errors(options, message):
    with pytest.raises(ConfigError, match=f"^{message}".replace("(", r"\(").replace("]", r"\]")):
        SamplingControls(**options)
    with pytest.raises(ConfigError, match=message.split(":")[0]):
        ancestral(1, **options)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("control-runs")
    tok = tiny_tokenizer()
    for kind in ("mdlm", "ar"):
        make_run(root / kind, kind, tok, seq_len=16)
    return root


def test_cli_sample_controls_match_the_python_api_and_are_recorded(runs, tmp_path):
    options = dict(temperature=0.7, top_k=5, top_p=0.95, greedy_tail=True)
    for kind in ("mdlm", "ar"):
        out = tmp_path / f"{kind}.jsonl"
        assert main(["sample", "--model", str(runs / kind), "--nfe", "4", "--num-samples", "3", "--device", "cpu",
                     "--temperature", "0.7", "--top-k", "5", "--top-p", "0.95", "--greedy-tail", "--quiet",
                     "--out", str(out)]) == 0
        records = read_samples(out)
        assert all(r["controls"] == options for r in records)
        model = load(runs / kind, device="cpu")
        [expected] = model.sample(3, 4, **options)
        assert [r["tokens"] for r in records] == expected.tokens.tolist()
        [plain] = model.sample(3, 4)
        assert plain.tokens.tolist() != expected.tokens.tolist()


@pytest.mark.parametrize("args, message", [
    (["--temperature", "0"], "--temperature: must be a finite number > 0 (got 0.0)"),
    (["--top-p", "1.5"], "--top-p: must be in (0, 1] (got 1.5)"),
    (["--top-k", "0"], "--top-k: must be an integer >= 1 (got 0)"),
])
def test_cli_sample_bad_controls_exit_2_without_output(runs, tmp_path, capsys, args, message):
    out = tmp_path / "s.jsonl"
    assert main(["sample", "--model", str(runs / "mdlm"), "--nfe", "2", "--device", "cpu", "--quiet",
                 "--out", str(out), *args]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("didi: error:")]
    assert errors == [f"didi: error: {message}"] and not out.exists()
