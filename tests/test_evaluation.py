"""Evaluation like the paper: gen-PPL, entropy, likelihood, exact NFE, `didi eval` (``didi.recipes.evaluate``)."""
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from didi.ar import ARPipeline
from didi.cli import main
from didi.data.corpora import TokenBlocks
from didi.data.tokenizer import ProteinTokenizer
from didi.diffusion.process import LogLinearSchedule, mdlm_token_losses, sample_times
from didi.errors import ConfigError
from didi.pipeline import load
from didi.recipes.evaluate.metrics import (
    Perplexity,
    ar_nll,
    diffusion_nelbo,
    generative_perplexity,
    load_evaluator,
    mean_sample_entropy,
    sample_entropy,
    scored_positions,
    timed_sampling,
)
from didi.recipes.evaluate.report import EvalRow
from didi.recipes.evaluate.runner import EvalConfig
from didi.samples import read_samples
from test_ar import CORPUS, Counting, make_run, tiny_tokenizer

SEQ_LEN = 16
EOT = "<|endoftext|>"


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tok):
    """A tiny diffusion run and a tiny AR run trained on nothing, with a local corpus for the likelihood."""
    root = tmp_path_factory.mktemp("runs")
    corpus = root / "corpus.txt"
    corpus.write_text("\n".join(CORPUS) + "\n")
    data = {"data": str(corpus), "seq_len": SEQ_LEN, "cache_dir": str(root / "cache")}
    networks = {kind: make_run(root / kind, kind, tok, seq_len=SEQ_LEN, data=data) for kind in ("mdlm", "ar")}
    protein = ProteinTokenizer()
    make_run(root / "protein-ar", "ar", protein, seq_len=SEQ_LEN)
    return root, networks


def by_hand_nll(network, ids):
    """-log p(ids[i+1] | ids[:i+1]) for one sequence, straight from the network's logits."""
    ids = torch.tensor(ids)
    with torch.no_grad():
        logits = network(ids[None])[0, :-1]
    return F.cross_entropy(logits, ids[1:], reduction="none")


# ------------------------------------------------------------------------------------------------ entropy

def test_entropy_of_constant_and_uniform_sequences():
    assert sample_entropy([7] * 50) == 0.0
    assert sample_entropy(torch.arange(11).repeat(3)) == pytest.approx(math.log(11), abs=1e-12)
    assert sample_entropy([0, 0, 0, 1]) == pytest.approx(-(0.75 * math.log(0.75) + 0.25 * math.log(0.25)))
    samples = torch.stack([torch.zeros(8, dtype=torch.long), torch.arange(8)])
    assert mean_sample_entropy(samples) == pytest.approx(math.log(8) / 2)
    with pytest.raises(ConfigError):
        mean_sample_entropy([])


# ------------------------------------------------------------------------------------- generative perplexity

def test_gen_ppl_of_a_fixed_text_equals_exp_mean_nll(runs, tok):
    root, networks = runs
    evaluator = load_evaluator(str(root / "ar"), "cpu")
    text = "To be, or not to be, that is question"
    ids = tok.encode(text)
    assert 3 <= len(ids) <= SEQ_LEN and tok.eos_id not in ids
    result = generative_perplexity([text], evaluator)
    expected = math.exp(by_hand_nll(networks["ar"], ids).mean().item())
    assert result.ppl == pytest.approx(expected, rel=1e-5)
    assert result.tokens == len(ids) - 1 and result.chunks == 1


def test_gen_ppl_protocol_eos_rule_chunks_and_no_dropped_batch(runs, tok):
    """Non-EOS tokens + the first EOS are scored; long texts are chunked at the context; every batch counts."""
    root, networks = runs
    evaluator = load_evaluator(str(root / "ar"), "cpu")
    short = f"To be{EOT}or not{EOT} to be"
    ids = tok.encode(short)
    assert ids.count(tok.eos_id) == 2 and len(ids) <= SEQ_LEN
    assert generative_perplexity([short], evaluator).tokens == len(ids) - 2  # first token and second EOS unscored
    assert scored_positions([5, 0, 4, 0, 0, 3], eos_id=0) == [True, True, True, False, False, True]

    texts = [CORPUS[0] + EOT + CORPUS[1] + EOT + CORPUS[2], CORPUS[3], short]
    total, count, chunks = 0.0, 0, 0
    for text in texts:
        ids = tok.encode(text)
        scored = scored_positions(ids, tok.eos_id)
        for start in range(0, len(ids), SEQ_LEN):
            chunk, weight = ids[start:start + SEQ_LEN], torch.tensor(scored[start + 1:start + SEQ_LEN])
            chunks += 1
            if len(chunk) >= 2:
                total += float((by_hand_nll(networks["ar"], chunk) * weight).sum())
                count += int(weight.sum())
    assert chunks > len(texts) + 2  # the long text really is chunked
    for batch_size in (1, 2, 8):
        result = generative_perplexity(texts, evaluator, batch_size=batch_size)
        assert result.tokens == count and result.chunks == chunks
        assert result.ppl == pytest.approx(math.exp(total / count), rel=1e-5)


def test_evaluator_that_cannot_encode_the_text_is_a_clear_error(runs):
    root, _ = runs
    evaluator = load_evaluator(str(root / "protein-ar"), "cpu")
    assert generative_perplexity(["MKVLAAGIVGLLLA"], evaluator).tokens == 13
    with pytest.raises(ConfigError, match=r"--evaluator: .*protein-ar cannot encode sample 1: .*invalid character"):
        generative_perplexity(["MKV", "To be, or not"], evaluator)


def test_huggingface_evaluator_matches_its_model(tmp_path, tok):
    transformers = pytest.importorskip("transformers")
    hf_tok = transformers.PreTrainedTokenizerFast(tokenizer_object=tok.backend, eos_token=EOT, bos_token=EOT,
                                                  unk_token=EOT)
    hf_tok.save_pretrained(tmp_path)
    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=tok.vocab_size, n_positions=SEQ_LEN, n_embd=32, n_layer=1,
                                     n_head=2, bos_token_id=tok.eos_id, eos_token_id=tok.eos_id)
    network = transformers.GPT2LMHeadModel(config).eval()
    network.save_pretrained(tmp_path)

    evaluator = load_evaluator(str(tmp_path), "cpu")
    assert evaluator.context_len == SEQ_LEN and evaluator.eos_id == tok.eos_id
    text = f"To be, or{EOT} not to be"
    ids = tok.encode(text)
    assert len(ids) <= SEQ_LEN
    with torch.no_grad():
        nll = F.cross_entropy(network(torch.tensor([ids])).logits[0, :-1], torch.tensor(ids[1:]))
    result = generative_perplexity([text], evaluator)
    assert result.ppl == pytest.approx(math.exp(nll.item()), rel=1e-5) and result.tokens == len(ids) - 1

    with pytest.raises(ConfigError, match="--evaluator: 'no-such-org/no-such-model' is neither a didi AR run"):
        load_evaluator("no-such-org/no-such-model", "cpu")


# ----------------------------------------------------------------------------------------------- NFE counts

def test_nfe_counters_are_exact(runs):
    root, _ = runs
    diffusion = load(root / "mdlm", device="cpu")
    counted = diffusion.network = Counting(diffusion.network)
    made = {}
    for use_cache in (False, True):
        counted.calls = 0
        timed = timed_sampling(diffusion, num_samples=3, batch_size=1, nfe=32, seed=0, warmup=0,
                               use_cache=use_cache)
        made[use_cache] = [r.nfe for r in timed.results]
        assert sum(made[use_cache]) == counted.calls
        assert len(timed.latencies) == 3 and timed.peak_memory_mib is None
    assert all(n <= SEQ_LEN for n in made[True])  # a call only after a change: at most one per position
    assert all(n > SEQ_LEN for n in made[False])  # every step until the last mask is filled

    ar = ARPipeline.from_pretrained(root / "ar", device="cpu")
    counted = ar.network = Counting(ar.network)
    for use_cache in (False, True):
        counted.calls = 0
        timed = timed_sampling(ar, num_samples=3, batch_size=2, nfe=None, warmup=1, use_cache=use_cache)
        assert [r.nfe for r in timed.results] == [SEQ_LEN - 1] * 2
        assert counted.calls == 3 * (SEQ_LEN - 1)  # warm-up batch + 2 timed batches


# ----------------------------------------------------------------------------------------------- likelihood

def test_diffusion_nelbo_is_the_mdlm_bound_over_all_blocks(runs, tok):
    root, _ = runs
    model = load(root / "mdlm", device="cpu")
    blocks = torch.randint(0, tok.vocab_size, (5, SEQ_LEN))
    result = diffusion_nelbo(model, blocks, batch_size=2, seed=3)
    d = model.config.diffusion
    g = torch.Generator().manual_seed(3)
    total = 0.0
    for x in (blocks[0:2], blocks[2:4], blocks[4:5]):  # the remainder block counts too
        t = sample_times(len(x), g, sampling_eps=d.sampling_eps, antithetic=True)
        u = torch.rand(x.shape, generator=g)
        with torch.no_grad():
            total += float(mdlm_token_losses(model.network, x, t, u, schedule=LogLinearSchedule(d.eps),
                                             mask_index=d.mask_index).sum())
    assert result.bound and result.tokens == 5 * SEQ_LEN and result.sequences == 5
    assert result.nll == pytest.approx(total / (5 * SEQ_LEN), rel=1e-6)
    assert result.ppl == pytest.approx(math.exp(result.nll))
    bare = diffusion_nelbo(model.network, TokenBlocks(blocks.numpy()), diffusion=d, batch_size=2, seed=3)
    assert bare.nll == pytest.approx(result.nll, rel=1e-6)
    assert diffusion_nelbo(model, blocks, max_blocks=2, batch_size=8).tokens == 2 * SEQ_LEN


def test_ar_nll_is_the_token_weighted_cross_entropy(runs, tok):
    root, networks = runs
    model = ARPipeline.from_pretrained(root / "ar", device="cpu")
    blocks = np.random.default_rng(0).integers(0, tok.vocab_size, (3, SEQ_LEN))
    result = ar_nll(model, TokenBlocks(blocks), batch_size=2)
    expected = torch.cat([by_hand_nll(networks["ar"], row.tolist()) for row in blocks]).mean().item()
    assert not result.bound and result.tokens == 3 * (SEQ_LEN - 1)
    assert result.nll == pytest.approx(expected, rel=1e-5)
    assert ar_nll(networks["ar"], torch.from_numpy(blocks), batch_size=3).nll == pytest.approx(expected, rel=1e-5)


# ------------------------------------------------------------------------------------------------ didi eval

def table_rows(stdout: str) -> list[list[str]]:
    lines = [line for line in stdout.splitlines() if line.startswith("| ")]
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in lines]


def test_cli_eval_end_to_end(runs, tmp_path, capsys):
    root, _ = runs
    out_json, out_png = tmp_path / "eval.json", tmp_path / "eval.png"
    argv = ["eval", "--model", str(root / "mdlm"), "--model", str(root / "ar"), "--nfe", "8,4",
            "--evaluator", str(root / "ar"), "--num-samples", "3", "--batch-size", "2", "--eval-blocks", "4",
            "--device", "cpu", "--json", str(out_json), "--plot", str(out_png)]
    assert main(argv) == 0
    header, *rows = table_rows(capsys.readouterr().out)
    assert header[:5] == ["model", "kind", "sampler", "NFE", "NFE made"] and "gen-PPL" in header
    assert [(r[0], r[1], r[3]) for r in rows] == [("mdlm", "mdlm", "4"), ("mdlm", "mdlm", "8"), ("ar", "ar", "—")]
    assert rows[2][4] == str(SEQ_LEN - 1)
    likelihood = header.index("likelihood")
    assert rows[0][likelihood].startswith("≤ ") and not rows[2][likelihood].startswith("≤")

    report = json.loads(out_json.read_text())
    assert report["reference"] == "ar" and report["meta"]["evaluator"]["context_len"] == SEQ_LEN
    for row in report["rows"]:
        assert 1.0 < row["gen_ppl"]["ppl"] < float("inf") and row["gen_ppl"]["samples"] == 3
        assert 0.0 < row["entropy"] <= math.log(SEQ_LEN)
        assert row["likelihood"]["tokens"] > 0 and len(row["latencies_s"]) == 4 and row["tokens_per_s"] > 0
        assert row["batch_sizes"] == [2, 1, 2, 2]  # 3 samples, then full batches up to 3 timing repeats
    assert report["rows"][2]["nfe_per_batch"] == [SEQ_LEN - 1] * 4 and report["rows"][2]["speedup"] == 1.0
    assert all(n <= 4 for n in report["rows"][0]["nfe_per_batch"])
    assert out_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out_png.stat().st_size > 10_000
    for row in report["rows"]:  # the JSON round-trips into rows (benchmarks reuse saved evaluations)
        again = EvalRow.from_json(row)
        assert again.to_json() == row and isinstance(again.gen_ppl, Perplexity)


def test_cli_eval_of_sample_files(runs, tmp_path, capsys):
    """`didi sample --out` files of a diffusion and an AR model, evaluated later without the models."""
    root, _ = runs
    samples, ar_samples = tmp_path / "samples.jsonl", tmp_path / "ar.jsonl"
    for model, out in (("mdlm", samples), ("ar", ar_samples)):
        assert main(["sample", "--model", str(root / model), "--nfe", "4", "--num-samples", "3", "--batch-size", "2",
                     "--device", "cpu", "--out", str(out), "--quiet"]) == 0
    out_json = tmp_path / "eval.json"
    assert main(["eval", "--samples", str(samples), "--samples", str(ar_samples), "--evaluator", str(root / "ar"),
                 "--device", "cpu", "--json", str(out_json)]) == 0
    assert len(table_rows(capsys.readouterr().out)) == 3
    row, ar_row = json.loads(out_json.read_text())["rows"]
    assert ar_row["kind"] == "ar" and ar_row["nfe"] is None and ar_row["nfe_per_batch"] == [SEQ_LEN - 1] * 2
    assert ar_row["generated_tokens"] == SEQ_LEN - 1 and ar_row["gen_ppl"]["samples"] == 3
    records = read_samples(samples)
    assert row["model"] == "mdlm" and row["nfe"] == 4 and row["batch_sizes"] == [2, 1]
    assert row["nfe_per_batch"] == [records[0]["nfe"], records[2]["nfe"]]
    assert row["entropy"] == pytest.approx(mean_sample_entropy([r["tokens"] for r in records]))
    expected = generative_perplexity([r["text"] for r in records], load_evaluator(str(root / "ar"), "cpu"))
    assert row["gen_ppl"]["ppl"] == pytest.approx(expected.ppl)


@pytest.mark.parametrize("args, message", [
    (["--model", "{mdlm}", "--nfe", "8,x"], "--nfe: expected comma-separated integers, got 'x'"),
    (["--model", "{mdlm}", "--nfe", "0,8"], "--nfe: values must be >= 1 (got 0)"),
    (["--model", "{mdlm}", "--evaluator", "{mdlm}"], "is a 'mdlm' model; the evaluator must be an autoregressive"),
    (["--model", "{mdlm}", "--evaluator", "{protein}"], "protein-ar cannot encode sample 0"),
    (["--samples", "{empty}", "--evaluator", "{ar}"], "empty.jsonl: no samples in file"),
    (["--model", "{root}/missing"], "missing: run directory not found"),
    (["--evaluator", "{ar}"], "--model: give at least one --model RUN or --samples FILE"),
    (["--model", "{ar}", "--plot", "out.txt"], "--plot: out.txt: the file name must end in one of .png"),
])
def test_cli_eval_bad_input_is_one_line_and_exit_2(runs, tmp_path, capsys, args, message):
    root, _ = runs
    (tmp_path / "empty.jsonl").write_text("")
    paths = dict(mdlm=root / "mdlm", ar=root / "ar", protein=root / "protein-ar", root=root,
                 empty=tmp_path / "empty.jsonl")
    argv = ["eval", "--device", "cpu", "--no-likelihood", "--num-samples", "2", "--nfe", "2"]
    assert main(argv + [a.format(**paths) for a in args]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("didi: error:")]
    assert len(errors) == 1 and message in errors[0]


def test_eval_config_validates():
    assert EvalConfig(models=["x"], nfe="16, 8,16").nfe == [8, 16]
    with pytest.raises(ConfigError, match="--nfe: must be integers >= 1"):
        EvalConfig(models=["x"], nfe=[8, 2.5])
    with pytest.raises(ConfigError, match="--eval-blocks"):
        EvalConfig(models=["x"], eval_blocks=0)
