"""Reward-guided ancestral sampling (``didi.diffusion.rgas``): reduction to the ancestral sampler, tilting and
re-ranking against exact expectations, exact call counts, and the ``didi sample`` / ``didi eval`` command lines."""
import itertools
import json

import numpy as np
import pytest
import torch
from scipy import stats

from conftest import randomize_output_layer
from didi.cli import main
from didi.config import DiffusionConfig, ModelConfig
from didi.data.tokenizer import ProteinTokenizer
from didi.diffusion.rgas import RGASConfig, guidance_scale, rerank_start, rgas_sample
from didi.diffusion.sampling import ancestral_sample
from didi.errors import ConfigError, DidiError
from didi.interop.sample_files import read_samples
from didi.models.discriminator import build_discriminator
from didi.models.dit import DiT
from didi.pipelines.diffusion import DiffusionPipeline
from didi.runtime.checkpoint import RunConfig, save_tensors, write_run_config

TOKENIZER = ProteinTokenizer()
MASK = TOKENIZER.diffusion_mask_id
VOCAB = TOKENIZER.model_vocab_size
SEQ_LEN = 12
TOKEN = 10  # the token the synthetic discriminator prefers


def model_config() -> ModelConfig:
    return ModelConfig(vocab_size=VOCAB, hidden_size=32, n_blocks=2, n_heads=2, cond_dim=16, max_seq_len=SEQ_LEN,
                       dropout=0.0)


def run_config(kind: str = "didi") -> RunConfig:
    return RunConfig(kind=kind, model=model_config(), tokenizer=TOKENIZER.save(None),
                     diffusion=DiffusionConfig(mask_index=MASK), training={"seq_len": SEQ_LEN},
                     extra={"discriminator": {"time_blocks": 1, "trainable_blocks": 1}} if kind == "didi" else {})


def random_student(seed: int = 0) -> DiT:
    torch.manual_seed(seed)
    network = DiT(model_config())
    randomize_output_layer(network, seed=seed)
    return network.eval()


def make_pipeline(network, discriminator) -> DiffusionPipeline:
    return DiffusionPipeline(config=run_config(), network=network, tokenizer=TOKENIZER, device=torch.device("cpu"),
                             discriminator=discriminator)


class Factorised(torch.nn.Module):
    """A student whose prediction at position i is ``softmax(logits[i])`` whatever the input (a product
    distribution)."""

    def __init__(self, logits: torch.Tensor):
        super().__init__()
        self.register_buffer("logits", logits)

    def forward(self, z, sigma):
        return self.logits.expand(z.shape[0], -1, -1)


class PrefersToken(torch.nn.Module):
    """A discriminator whose logit at every position is ``scale`` x the share of positions holding ``token`` (a soft
    input counts its softmax mass): one sequence-level score, as the optimal discriminator's log-ratio."""

    def __init__(self, scale: float, token: int = TOKEN):
        super().__init__()
        self.scale, self.token = scale, token

    def forward(self, x, sigma):
        share = torch.softmax(x.float(), -1)[..., self.token] if x.is_floating_point() else (x == self.token).float()
        return self.scale * share.mean(-1, keepdim=True).expand_as(share)


class Counting(torch.nn.Module):
    """Forward to a network, counting forward calls (and their rows) and backward passes through its output."""

    def __init__(self, network):
        super().__init__()
        self.network, self.rows, self.backward_calls = network, [], 0

    def forward(self, x, sigma):
        self.rows.append(x.shape[0])
        out = self.network(x, sigma)
        if out.requires_grad:
            out.register_hook(self._count_backward)
        return out

    def _count_backward(self, grad):
        self.backward_calls += 1


def subs_probs(logits: torch.Tensor) -> torch.Tensor:
    logits = logits.double().clone()
    logits[..., MASK] = -torch.inf
    return torch.softmax(logits, -1)


def token_table(length: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    logits = 1.5 * torch.randn(length, VOCAB, generator=g)
    logits[:, TOKEN] += 3.0  # a common enough token that its frequency is measured well
    return logits


def sample(pipe, n, length, steps, config, seed=0, **kwargs):
    return rgas_sample(pipe.denoiser, pipe.discriminate, batch_size=n, seq_len=length, num_steps=steps,
                       mask_index=pipe.mask_index, schedule=pipe.schedule, config=config,
                       generator=torch.Generator().manual_seed(seed), device=pipe.device, **kwargs)


# --------------------------------------------------------------------------------------- reduction to ancestral

@pytest.mark.parametrize("steps", [1, 3, 8, 40])
@pytest.mark.parametrize("use_cache", [True, False])
def test_no_guidance_and_one_candidate_is_the_ancestral_sampler(steps, use_cache):
    """h = 0 and M = 1: token-identical to ``ancestral_sample`` under the same seed, with the same student calls and
    no discriminator call."""
    student = Counting(random_student())
    disc = Counting(build_discriminator(student.network, 1).eval())
    pipe = make_pipeline(student, disc)
    config = RGASConfig(h_start=0.0, h_end=0.0, num_candidates=1)
    result = sample(pipe, 6, SEQ_LEN, steps, config, use_cache=use_cache)
    assert result.nfe == len(student.rows)
    reference = ancestral_sample(pipe.denoiser, batch_size=6, seq_len=SEQ_LEN, mask_index=MASK, schedule=pipe.schedule,
                                 num_steps=steps, use_cache=use_cache,
                                 generator=torch.Generator().manual_seed(0))
    assert torch.equal(result.tokens, reference.tokens) and not (result.tokens == MASK).any()
    assert result.nfe == reference.nfe
    assert result.extra_calls == {"discriminator": 0, "discriminator_backward": 0} and disc.rows == []
    assert result.sampler == "rgas" and result.num_steps == steps


def test_pipeline_sample_dispatches_options_and_needs_a_discriminator():
    student = random_student()
    pipe = make_pipeline(student, build_discriminator(student, 1).eval())
    [plain] = pipe.sample(4, 8, seed=3)
    [same] = pipe.sample(4, 8, seed=3, sampler="rgas", h_start=0.0, h_end=0.0, num_candidates=1)
    assert torch.equal(plain.tokens, same.tokens)
    [guided] = pipe.sample(4, 8, seed=3, sampler="rgas", num_candidates=2)
    assert guided.extra_calls["discriminator_backward"] == 4 and guided.info["rgas"]["num_candidates"] == 2
    pipe.discriminator, pipe.path = None, "runs/teacher"
    with pytest.raises(DidiError, match="rgas needs a DiDi-Instruct student with a discriminator; runs/teacher has "
                                        "none"):
        pipe.sample(4, 8, sampler="rgas")


# ----------------------------------------------------------------------------------------------------- tilting

def test_tilting_matches_the_exact_tilted_distribution():
    """One tilting step from all-mask, reward ``sum``: ``J = sum_j d_j = a sum_i pi_i[v*]``, so
    ``dJ/dl_iv = a pi_iv* (1[v = v*] - pi_iv)``; the samples follow ``softmax(l + h clip(g))`` without [MASK]."""
    length, n, scale, h, clip = 4, 30_000, 3.0, 2.0, 0.3
    logits = token_table(length)
    pipe = make_pipeline(Factorised(logits), PrefersToken(scale))
    config = RGASConfig(h_start=h, h_end=h, rerank_ratio=0.0, grad_clip=clip, reward="sum")
    tokens = sample(pipe, n, length, 1, config).tokens

    pi = subs_probs(logits)
    grad = scale * pi[:, TOKEN:TOKEN + 1] * (torch.nn.functional.one_hot(torch.tensor(TOKEN), VOCAB) - pi)
    grad[:, MASK] = 0.0
    assert (grad.abs() > clip).any() and (grad.abs() < clip).any()  # the clip binds on some entries only
    tilted = subs_probs(logits + h * grad.clamp(-clip, clip))
    for i in range(length):
        counts = torch.bincount(tokens[:, i], minlength=VOCAB).double()
        keep = tilted[i] > 0
        assert counts[~keep].sum() == 0
        assert stats.chisquare(counts[keep], tilted[i][keep] * n).pvalue > 1e-4
    assert (tilted[:, TOKEN] > pi[:, TOKEN]).all() and tilted[:, TOKEN].sum() > pi[:, TOKEN].sum() + 0.2


def test_default_tilting_raises_the_preferred_token_over_several_steps():
    """The default reward (masked mean of log-odds) and h ramp, 4 tilting steps: the preferred token's frequency
    rises far above its untilted rate, which h = 0 reproduces."""
    length, n = 8, 4000
    logits = token_table(length, seed=1)
    base = float(subs_probs(logits)[:, TOKEN].mean())
    rates = {}
    for h in (0.0, 30.0):
        pipe = make_pipeline(Factorised(logits), PrefersToken(2.0))
        config = RGASConfig(h_start=h, h_end=h + 10 * (h > 0), rerank_ratio=0.0)
        rates[h] = float((sample(pipe, n, length, 4, config).tokens == TOKEN).double().mean())
    assert abs(rates[0.0] - base) < 4 * np.sqrt(base * (1 - base) / (n * length))
    assert rates[30.0] > base + 0.1


# -------------------------------------------------------------------------------------------------- re-ranking

def poisson_binomial(p: torch.Tensor) -> torch.Tensor:
    """P(C = c), c = 0..len(p), for C a sum of independent Bernoulli(p_i)."""
    dist = torch.ones(1, dtype=torch.float64)
    for q in p.tolist():
        dist = torch.cat([dist * (1 - q), torch.zeros(1, dtype=torch.float64)]) + torch.cat(
            [torch.zeros(1, dtype=torch.float64), dist * q])
    return dist


def selected_count_distribution(p_count: torch.Tensor, weights: torch.Tensor, m: int) -> torch.Tensor:
    """Law of the count of the candidate kept by softmax selection among m i.i.d. candidates (enumerated)."""
    out = torch.zeros_like(p_count)
    for counts in itertools.product(range(len(p_count)), repeat=m):
        prob = torch.prod(p_count[list(counts)])
        w = weights[list(counts)]
        for c, wc in zip(counts, w):
            out[c] += prob * wc / w.sum()
    return out


def test_reranking_matches_the_exact_softmax_selection():
    """One re-ranking step from all-mask, reward ``sum``: ``r = a C`` with C the preferred token's count; the kept
    candidate's count follows the enumerated law of softmax(r / T) selection among M = 4 i.i.d. candidates, which
    is neither uniform selection nor the argmax."""
    length, n, m, scale, temperature = 4, 30_000, 4, 1.0, 0.8
    logits = token_table(length, seed=2)
    disc = Counting(PrefersToken(scale))
    pipe = make_pipeline(Factorised(logits), disc)
    config = RGASConfig(rerank_ratio=1.0, num_candidates=m, rerank_temperature=temperature, reward="sum")
    result = sample(pipe, n, length, 1, config)
    assert disc.rows == [n * m] and result.extra_calls == {"discriminator": 1, "discriminator_backward": 0}

    p_count = poisson_binomial(subs_probs(logits)[:, TOKEN])
    weights = torch.exp(scale * torch.arange(length + 1, dtype=torch.float64) / temperature)
    exact = selected_count_distribution(p_count, weights, m)
    observed = torch.bincount((result.tokens == TOKEN).sum(-1), minlength=length + 1).double()
    assert stats.chisquare(observed, exact * n).pvalue > 1e-4
    counts = torch.arange(length + 1, dtype=torch.float64)
    cdf = p_count.cumsum(0)
    p_max = cdf ** m - torch.cat([torch.zeros(1, dtype=torch.float64), cdf[:-1]]) ** m
    mean, uniform, argmax = float(observed @ counts) / n, float(p_count @ counts), float(p_max @ counts)
    assert uniform + 0.2 < mean < argmax - 0.2


def test_default_reranking_prefers_high_reward_candidates():
    """Masked-mean reward at an intermediate step (the candidates still hold masks): re-ranking M = 4 candidates
    raises the preferred token's frequency over M = 1 (plain ancestral)."""
    length, n = 8, 8000
    logits = token_table(length, seed=3)
    rates = {}
    for m in (1, 4):
        disc = Counting(PrefersToken(8.0))
        result = sample(make_pipeline(Factorised(logits), disc), n, length, 3, RGASConfig(rerank_ratio=1.0,
                                                                                      num_candidates=m))
        rates[m] = float((result.tokens == TOKEN).double().mean())
        assert disc.rows == ([n * m] * 2 if m > 1 else [])  # the final step (alpha_s = 1) is not re-ranked
    assert rates[4] > rates[1] + 0.03  # standard error of the difference: about 0.003


# ------------------------------------------------------------------------------------------------- call counts

@pytest.mark.parametrize("options, tilt, rerank", [
    ({}, 4, 3),  # masked_mean: steps 0-3 tilt, 4-6 re-rank, the final step is plain
    ({"reward": "sum"}, 4, 4),  # the released reward also re-ranks the final step
    ({"h_start": 0.0}, 3, 3),  # h_0 = 0 needs no gradient
    ({"num_candidates": 1}, 4, 0),
    ({"rerank_ratio": 0.25}, 6, 1),
])
def test_call_counts_are_exact(options, tilt, rerank):
    """Student calls = nfe; one discriminator forward + backward per tilting step (B rows), one forward per
    re-ranking step over all B * M candidates."""
    b, m = 4, 4
    student = Counting(random_student())
    disc = Counting(build_discriminator(student.network, 1).eval())
    config = RGASConfig(**{"num_candidates": m, **options})
    result = sample(make_pipeline(student, disc), b, SEQ_LEN, 8, config)
    assert not (result.tokens == MASK).any()
    assert result.nfe == len(student.rows) and result.nfe <= 8
    assert result.extra_calls == {"discriminator": len(disc.rows), "discriminator_backward": disc.backward_calls}
    assert disc.backward_calls == tilt and len(disc.rows) == tilt + rerank
    assert disc.rows == [b] * tilt + [b * config.num_candidates] * rerank
    assert result.info["rerank_start"] == 8 - round(8 * config.rerank_ratio)


def test_no_call_after_the_last_mask_and_the_cache_is_honoured():
    """More steps than positions: the student is called only after a change, nothing runs once every position is
    filled, and re-ranking steps whose candidates are all identical skip the discriminator."""
    student = Counting(random_student())
    disc = Counting(build_discriminator(student.network, 1).eval())
    result = sample(make_pipeline(student, disc), 1, 4, 64, RGASConfig(rerank_ratio=1.0, num_candidates=3))
    assert not (result.tokens == MASK).any()
    assert result.nfe == len(student.rows) <= 4  # one row of 4 positions changes at most 4 times
    assert 1 <= len(disc.rows) < 20 and result.extra_calls["discriminator"] == len(disc.rows)


def test_config_validation_and_schedules():
    for option, value in [("h_start", -1.0), ("h_end", float("nan")), ("rerank_ratio", 1.5), ("num_candidates", 0),
                          ("num_candidates", 2.0), ("grad_clip", 0.0), ("rerank_temperature", 0.0), ("reward", "max"),
                          ("reward_clip", -1.0)]:
        with pytest.raises(ConfigError, match=f"^--{option.replace('_', '-')}: "):
            RGASConfig(**{option: value})
    assert [rerank_start(k, 0.5) for k in (1, 2, 8, 9)] == [0, 1, 4, 4]
    assert rerank_start(10, 0.9) == 1 and rerank_start(10, 0.0) == 10 and rerank_start(10, 1.0) == 0
    config = RGASConfig()
    assert [guidance_scale(n, 4, config) for n in range(4)] == pytest.approx([30, 100 / 3, 110 / 3, 40])
    assert guidance_scale(0, 1, config) == 30.0


# ------------------------------------------------------------------------------------------------ command line

def write_run(path, kind: str, seed: int = 0):
    student = random_student(seed)
    write_run_config(path, run_config(kind))
    save_tensors(path / "model.safetensors", student.state_dict())
    if kind == "didi":
        ema = random_student(seed + 1)
        save_tensors(path / "ema.safetensors", ema.state_dict())
        save_tensors(path / "discriminator.safetensors", build_discriminator(ema, 1).state_dict())
    return path


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("rgas-runs")
    return write_run(root / "student", "didi"), write_run(root / "teacher", "mdlm")


def test_cli_sample_with_rgas(runs, tmp_path):
    student, _ = runs
    out = tmp_path / "samples.jsonl"
    assert main(["sample", "--model", str(student), "--sampler", "rgas", "--nfe", "4", "--num-samples", "3",
                 "--device", "cpu", "--num-candidates", "2", "--reward", "sum", "--out", str(out), "--quiet"]) == 0
    records = read_samples(out)
    assert len(records) == 3 and all(r["sampler"] == "rgas" for r in records)
    assert records[0]["extra_calls"] == {"discriminator": 4, "discriminator_backward": 2}
    assert all(len(r["tokens"]) == SEQ_LEN and MASK not in r["tokens"] for r in records)
    [expected] = DiffusionPipeline.from_pretrained(student, device="cpu").sample(3, 4, sampler="rgas",
                                                                                  num_candidates=2, reward="sum")
    assert [r["tokens"] for r in records] == expected.tokens.tolist()


def one_error_line(capsys) -> str:
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("didi: error:")]
    assert len(errors) == 1
    return errors[0]


@pytest.mark.parametrize("args, message", [
    (["--model", "{teacher}", "--sampler", "rgas"], "--sampler: rgas needs a DiDi-Instruct student with a "
                                                    "discriminator; {teacher} has none"),
    (["--model", "{student}", "--sampler", "rgas", "--num-candidates", "0"], "--num-candidates: must be an integer"),
    (["--model", "{student}", "--sampler", "rgas", "--rerank-ratio", "2"], "--rerank-ratio: must be in [0, 1]"),
    (["--model", "{student}", "--sampler", "rgas", "--rerank-temperature", "0"],
     "--rerank-temperature: must be a finite number"),
    (["--model", "{student}", "--sampler", "rgas", "--reward", "max"], "--reward: must be one of masked_mean, sum"),
    (["--model", "{student}", "--h-start", "5"], "--h-start: is an RGAS option: it needs --sampler rgas"),
])
def test_cli_sample_errors_exit_2(runs, capsys, args, message):
    student, teacher = runs
    paths = dict(student=student, teacher=teacher)
    argv = ["sample", "--nfe", "4", "--num-samples", "2", "--device", "cpu", "--quiet"]
    assert main(argv + [a.format(**paths) for a in args]) == 2
    assert message.format(**paths) in one_error_line(capsys)


def test_cli_eval_with_rgas_lists_discriminator_calls(runs, tmp_path, capsys):
    student, _ = runs
    out = tmp_path / "eval.json"
    assert main(["eval", "--model", str(student), "--sampler", "rgas", "--nfe", "4", "--num-samples", "2",
                 "--no-likelihood", "--warmup", "0", "--repeats", "1", "--device", "cpu", "--num-candidates", "3",
                 "--json", str(out)]) == 0
    stdout = capsys.readouterr().out
    header = [cell.strip() for cell in stdout.splitlines()[0].strip("|").split("|")]  # the table comes first
    assert "discriminator calls" in header and "discriminator_backward calls" in header
    assert "- discriminator calls: RGAS discriminator forward passes" in stdout
    report = json.loads(out.read_text())
    [row] = report["rows"]
    assert row["sampler"] == "rgas" and report["meta"]["config"]["rgas"]["num_candidates"] == 3
    assert row["extra_calls"] == {"discriminator": [3], "discriminator_backward": [2]}


def test_cli_eval_with_rgas_refuses_a_teacher_before_any_work(runs, capsys):
    student, teacher = runs
    assert main(["eval", "--model", str(student), "--model", str(teacher), "--sampler", "rgas", "--nfe", "4",
                 "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert f"didi: error: --sampler: rgas needs a DiDi-Instruct student with a discriminator; {teacher} has none" in err
    assert "sampling" not in err and "likelihood" not in err
