"""Confidence-ordered samplers (MaskGIT, LLaDA's low-confidence remasking, Fast-dLLM's threshold): call counts,
reveal schedules, the threshold rule on a hand-made logit table, fixed positions, and the CLI."""
import math

import pytest
import torch

from didi.cli import main
from didi.diffusion.confidence import ConfidenceConfig, confidence_sample, masked_fraction, reveal_counts
from didi.diffusion.process import LogLinearSchedule
from didi.diffusion.sampling import SamplingControls
from didi.errors import ConfigError
from didi.interop.sample_files import read_samples

V, MASK = 8, 8  # 8 tokens + [MASK]


class TableDenoiser:
    """Fixed logits per position (L, V+1), whatever the input; records how many positions were masked per call."""

    def __init__(self, logits: torch.Tensor):
        self.logits = logits
        self.masked_per_call: list[list[int]] = []

    def __call__(self, z: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        self.masked_per_call.append((z == MASK).sum(-1).tolist())
        return self.logits.expand(z.shape[0], -1, -1).clone()


def flat(length: int) -> torch.Tensor:
    return torch.zeros(length, V + 1)


def sample(denoiser, length, steps, order, batch=3, seed=0, **options):
    return confidence_sample(denoiser, batch_size=batch, seq_len=length, num_steps=steps, mask_index=MASK,
                             schedule=LogLinearSchedule(), generator=torch.Generator().manual_seed(seed),
                             config=ConfidenceConfig(order=order, **options))


@pytest.mark.parametrize("order, schedule, masked", [
    ("low-confidence", "linear", [16, 12, 8, 4]),    # 4 reveals per step
    ("maskgit", "cosine", [16, 14, 11, 6]),          # floor(16 cos(πk/8)) after step k
    ("maskgit", "linear", [16, 12, 8, 4]),
])
def test_reveal_schedule_and_exact_call_count(order, schedule, masked):
    denoiser = TableDenoiser(flat(16))
    result = sample(denoiser, 16, 4, order, reveal_schedule=schedule)
    assert result.nfe == 4 and result.info["calls_per_row"] == [4, 4, 4]
    assert [calls[0] for calls in denoiser.masked_per_call] == masked  # the masked count at each call's input
    assert not (result.tokens == MASK).any()
    assert [int(x) for x in reveal_counts(torch.tensor([16]), torch.tensor([16]), 0, 4, "cosine")] == [2]
    assert masked_fraction(0.5, "cosine") == pytest.approx(math.cos(math.pi / 4))


def test_more_steps_than_positions_stop_when_nothing_is_masked():
    result = sample(TableDenoiser(flat(5)), 5, 12, "low-confidence")
    assert result.nfe == 5  # one reveal per step at least: 5 calls, then nothing is left


def test_low_confidence_keeps_the_most_confident_draws():
    logits = flat(6)
    for position, peak in ((1, 9.0), (4, 6.0), (2, 3.0)):  # confidences 1 > 4 > 2 > the flat ones
        logits[position, 0] = peak
    denoiser = TableDenoiser(logits)
    result = sample(denoiser, 6, 3, "low-confidence", batch=1, reveal_schedule="linear")
    first = denoiser.masked_per_call[1][0]
    assert first == 4  # 2 revealed at step 1
    # the two most likely draws are the peaked positions 1 and 4 (p 0.9991 and 0.9822): revealed first, as token 0
    assert result.tokens[0, 1] == 0 and result.tokens[0, 4] == 0


def test_threshold_rule_on_a_hand_made_table():
    """Positions 0-2 are (numerically) certain: all three are kept at the first step; the flat ones (p = 1/8 < 0.9)
    then go one per step, the most confident (ties: the lowest position) each time, until the cap keeps them all."""
    logits = flat(8)
    logits[:3, 5] = 80.0
    denoiser = TableDenoiser(logits)
    result = sample(denoiser, 8, 20, "threshold", batch=2, threshold=0.9)
    assert [calls[0] for calls in denoiser.masked_per_call] == [8, 5, 4, 3, 2, 1]
    assert result.nfe == 6 and result.info["calls_per_row"] == [6, 6]
    assert (result.tokens[:, :3] == 5).all()
    capped = TableDenoiser(logits)
    result = sample(capped, 8, 3, "threshold", batch=2, threshold=0.9)
    assert [calls[0] for calls in capped.masked_per_call] == [8, 5, 4] and result.nfe == 3
    assert not (result.tokens == MASK).any()  # the last allowed step keeps every draw


def test_rows_finish_after_their_own_number_of_steps():
    """A row whose free positions are all certain finishes in one step; the batch keeps calling for the others."""
    logits = flat(4)
    logits[:, 2] = 80.0
    prefix = torch.tensor([[MASK, MASK, MASK, MASK], [MASK, 1, 1, 1]])
    denoiser = TableDenoiser(logits)
    result = confidence_sample(denoiser, batch_size=2, seq_len=4, num_steps=8, mask_index=MASK,
                               schedule=LogLinearSchedule(), prefix=prefix, config=ConfidenceConfig(order="threshold"),
                               generator=torch.Generator().manual_seed(0))
    assert result.info["calls_per_row"] == [1, 1] and result.nfe == 1
    denoiser = TableDenoiser(flat(4))
    result = confidence_sample(denoiser, batch_size=2, seq_len=4, num_steps=8, mask_index=MASK,
                               schedule=LogLinearSchedule(), prefix=prefix, config=ConfidenceConfig(order="threshold"),
                               generator=torch.Generator().manual_seed(0))
    assert result.info["calls_per_row"] == [4, 1] and result.nfe == 4


@pytest.mark.parametrize("order", ["maskgit", "low-confidence", "threshold"])
def test_fixed_positions_are_kept(order):
    prefix = torch.tensor([[3, MASK, 4, MASK, MASK, 7]] * 4)
    fixed = prefix != MASK
    result = confidence_sample(TableDenoiser(flat(6)), batch_size=4, seq_len=6, num_steps=3, mask_index=MASK,
                               schedule=LogLinearSchedule(), prefix=prefix, fixed=fixed,
                               config=ConfidenceConfig(order=order), generator=torch.Generator().manual_seed(1))
    assert torch.equal(result.tokens[fixed], prefix[fixed]) and torch.equal(result.fixed, fixed)
    assert not (result.tokens == MASK).any()


def test_maskgit_without_noise_is_low_confidence_with_the_cosine_schedule():
    logits = torch.randn(10, V + 1, generator=torch.Generator().manual_seed(3))
    a = sample(TableDenoiser(logits), 10, 4, "maskgit", gumbel_noise=0.0)
    b = sample(TableDenoiser(logits), 10, 4, "low-confidence", reveal_schedule="cosine")
    assert torch.equal(a.tokens, b.tokens)
    c = sample(TableDenoiser(logits), 10, 4, "maskgit")  # noise: other positions chosen, same counts
    assert not torch.equal(a.tokens, c.tokens)


def test_controls_shape_the_draws():
    logits = torch.randn(6, V + 1, generator=torch.Generator().manual_seed(4))
    greedy = confidence_sample(TableDenoiser(logits), batch_size=3, seq_len=6, num_steps=1, mask_index=MASK,
                               schedule=LogLinearSchedule(), controls=SamplingControls(greedy_tail=True),
                               config=ConfidenceConfig(order="low-confidence"))
    assert torch.equal(greedy.tokens, logits[:, :V].argmax(-1).expand(3, -1))


def test_bad_options():
    with pytest.raises(ConfigError, match="--threshold"):
        ConfidenceConfig(order="threshold", threshold=1.5)
    with pytest.raises(ConfigError, match="--reveal-schedule"):
        ConfidenceConfig(reveal_schedule="exponential")
    with pytest.raises(ConfigError, match="--order"):
        ConfidenceConfig(order="random")


def test_cli_samples_with_every_confidence_sampler(tmp_path, teacher_run, capsys):
    for sampler, extra in (("maskgit", []), ("low-confidence", ["--reveal-schedule", "cosine"]),
                           ("threshold", ["--threshold", "0.5"])):
        out = tmp_path / f"{sampler}.jsonl"
        assert main(["sample", "--model", str(teacher_run), "--nfe", "4", "--num-samples", "3", "--sampler", sampler,
                     "--out", str(out), "--quiet", "--prompt", "KING.", *extra]) == 0
        records = read_samples(out)
        assert len(records) == 3 and records[0]["sampler"] == sampler and records[0]["nfe"] <= 4
        assert all(r["text"].startswith("KING.") for r in records)
    assert main(["sample", "--model", str(teacher_run), "--threshold", "0.5", "--quiet"]) == 2
    assert "--threshold: is a confidence-ordered sampler's option" in capsys.readouterr().err


def test_eval_rows_of_a_confidence_sampler(tmp_path, teacher_run):
    """`didi eval --sampler threshold` samples with the given options; its rows carry the calls made."""
    from didi.recipes.evaluate.runner import EvalConfig, evaluate

    report = evaluate(EvalConfig(models=[str(teacher_run)], nfe=[4], sampler="threshold", num_samples=4,
                                 likelihood=False, references=False, device="cpu",
                                 confidence=ConfidenceConfig(threshold=0.5)))
    [row] = report.rows
    assert row.sampler == "threshold" and row.nfe == 4 and all(1 <= n <= 4 for n in row.nfe_per_batch)
    assert report.meta["config"]["confidence"] == {"order": "threshold", "reveal_schedule": None,
                                                   "gumbel_noise": 4.5, "threshold": 0.5}
    with pytest.raises(ConfigError, match="--sampler"):
        EvalConfig(models=["x"], sampler="ancestral", confidence=ConfidenceConfig())


def test_confidence_samplers_write_past_the_model_length(teacher_run, tmp_path):
    """Semi-autoregressive windows work with any sampler: a 48-token sample of a 32-token model, each window sampled
    by MaskGIT, its calls summed over the windows."""
    out = tmp_path / "long.jsonl"
    assert main(["sample", "--model", str(teacher_run), "--nfe", "4", "--num-samples", "2", "--sampler", "maskgit",
                 "--length", "48", "--out", str(out), "--quiet"]) == 0
    [a, b] = read_samples(out)
    assert len(a["tokens"]) == 48 and len(a["windows"]) >= 2
    assert a["nfe"] == sum(w["nfe"] for w in a["windows"]) and all(w["nfe"] <= 4 for w in a["windows"])
