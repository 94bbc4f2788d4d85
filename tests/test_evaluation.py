"""Evaluation like the paper: gen-PPL, entropy, likelihood, exact NFE, `didi eval` (``didi.recipes.evaluate``)."""
import json
import math
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from didi.cli import main
from didi.data.corpora import TokenBlocks
from didi.data.tokenizer import ProteinTokenizer
from didi.diffusion.process import LogLinearSchedule, mdlm_token_losses, sample_times
from didi.errors import ConfigError
from didi.interop.sample_files import read_samples
from didi.pipelines.ar import ARPipeline
from didi.pipelines.load import load
from didi.recipes.evaluate.metrics import (
    Perplexity,
    ar_nll,
    bootstrap_interval,
    diffusion_nelbo,
    evaluator_features,
    gen_ppl_scored_tokens,
    generative_perplexity,
    interpolate_at,
    load_evaluator,
    load_mauve_features,
    mauve_score,
    mean_sample_entropy,
    mean_std,
    sample_entropy,
    timed_sampling,
)
from didi.recipes.evaluate.report import EvalReport, EvalRow, compute_frontiers
from didi.recipes.evaluate.runner import EvalConfig, _set_speedups, evaluate
from didi.recipes.evaluate.tables import format_table
from test_ar import CORPUS, Counting, corpus_runs, make_run, tiny_tokenizer

SEQ_LEN = 16
EOT = "<|endoftext|>"


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tok):
    """A tiny diffusion run and a tiny AR run trained on nothing, with a local corpus for the likelihood."""
    root = tmp_path_factory.mktemp("runs")
    networks = corpus_runs(root, tok, seq_len=SEQ_LEN)
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
    assert gen_ppl_scored_tokens([5, 0, 4, 0, 0, 3], eos_id=0) == [True, True, True, False, False, True]

    texts = [CORPUS[0] + EOT + CORPUS[1] + EOT + CORPUS[2], CORPUS[3], short]
    total, count, chunks = 0.0, 0, 0
    for text in texts:
        ids = tok.encode(text)
        scored = gen_ppl_scored_tokens(ids, tok.eos_id)
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
    with torch.no_grad():  # MAUVE features: the mean of the last hidden state over the text's tokens
        hidden = network(torch.tensor([ids]), output_hidden_states=True).hidden_states[-1][0].mean(0)
    assert torch.allclose(torch.from_numpy(evaluator_features([text, "To be"], evaluator)[0]), hidden, atol=1e-5)

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
    assert "speed-up (tokens/s, batch 2)" in header and "T" not in header  # every row at T = 1
    assert [(r[0], r[1], r[3]) for r in rows] == [("mdlm", "mdlm", "4"), ("mdlm", "mdlm", "8"), ("ar", "ar", "—"),
                                                  ("data (corpus.txt validation)", "data", "—")]
    assert rows[2][4] == str(SEQ_LEN - 1)
    likelihood = header.index("likelihood")
    assert rows[0][likelihood].startswith("≤ ") and not rows[2][likelihood].startswith("≤")
    assert re.fullmatch(r"[\d.]+ \[[\d.]+, [\d.]+\]", rows[0][header.index("gen-PPL")])  # one seed: bootstrap

    report = json.loads(out_json.read_text())
    assert report["reference"] == "ar" and report["meta"]["evaluator"]["context_len"] == SEQ_LEN
    *sampled, data = report["rows"]
    assert data["kind"] == "data" and data["latencies_s"] == [] and data["temperature"] is None
    assert data["num_samples"] == 3 and data["gen_ppl"]["samples"] == 3 and 0 < data["entropy"] <= math.log(SEQ_LEN)
    for row in sampled:
        assert 1.0 < row["gen_ppl"]["ppl"] < float("inf") and row["gen_ppl"]["samples"] == 3
        assert 0.0 < row["entropy"] <= math.log(SEQ_LEN)
        assert row["likelihood"]["tokens"] > 0 and len(row["latencies_s"]) == 4 and row["tokens_per_s"] > 0
        assert row["batch_sizes"] == [2, 1, 2, 2]  # 3 samples, then full batches up to 3 timing repeats
        assert row["temperature"] == 1.0 and row["seeds"] == [0] and row["per_seed"][0]["seed"] == 0
        low, high = row["spread"]["gen_ppl"]["low"], row["spread"]["gen_ppl"]["high"]
        assert low <= row["gen_ppl"]["ppl"] <= high and row["spread"]["gen_ppl"]["std"] is None
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
                 "--device", "cpu", "--json", str(out_json), "--no-references"]) == 0
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
    (["--model", "{mdlm}", "--temperature", "0"], "--temperature: must be a finite number > 0 (got 0.0)"),
    (["--model", "{mdlm}", "--temperatures", "0.5,-1"], "--temperatures: must be finite numbers > 0 (got -1.0)"),
    (["--model", "{mdlm}", "--temperatures", "0.5,x"], "--temperatures: expected comma-separated numbers, got 'x'"),
    (["--model", "{mdlm}", "--temperatures", "0.5,1", "--temperature", "0.7"],
     "--temperature: give --temperature or a --temperatures sweep, not both"),
    (["--model", "{mdlm}", "--top-p", "0"], "--top-p: must be in (0, 1] (got 0.0)"),
    (["--model", "{mdlm}", "--top-p", "1.01"], "--top-p: must be in (0, 1] (got 1.01)"),
    (["--model", "{mdlm}", "--top-k", "0"], "--top-k: must be an integer >= 1 (got 0)"),
    (["--model", "{mdlm}", "--target-entropy", "2"],
     "--target-entropy: needs a sweep of at least two --temperatures to interpolate in"),
    (["--model", "{mdlm}", "--temperatures", "0.5,1", "--target-entropy", "-1"],
     "--target-entropy: must be a finite number > 0 (got -1.0)"),
    (["--model", "{mdlm}", "--seeds", "0,0"], "--seeds: must be distinct (got [0, 0])"),
    (["--model", "{mdlm}", "--mauve"], "--mauve: needs at least 16 samples per side (got --num-samples 2)"),
    (["--samples", "{two}", "--evaluator", "{ar}", "--mauve"], "--mauve: needs at least 16 samples per side (got 2 "
                                                               "in {two})"),
    (["--model", "{mdlm}", "--num-samples", "16", "--mauve", "--data", "{fasta}"],
     "--mauve: needs at least 16 samples per side (got 4 held-out sequences"),
])
def test_cli_eval_bad_input_is_one_line_and_exit_2(runs, tmp_path, capsys, args, message):
    root, _ = runs
    (tmp_path / "empty.jsonl").write_text("")
    (tmp_path / "two.jsonl").write_text('{"text": "To be", "model": ""}\n{"text": "or not", "model": ""}\n')
    (tmp_path / "small.txt").write_text("\n".join(CORPUS[:40]) + "\n")
    paths = dict(mdlm=root / "mdlm", ar=root / "ar", protein=root / "protein-ar", root=root,
                 empty=tmp_path / "empty.jsonl", two=tmp_path / "two.jsonl", fasta=tmp_path / "small.txt")
    argv = ["eval", "--device", "cpu", "--no-likelihood", "--num-samples", "2", "--nfe", "2", "--json",
            str(tmp_path / "report.json")]
    assert main(argv + [a.format(**paths) for a in args]) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("didi: error:")]
    assert len(errors) == 1 and message.format(**paths) in errors[0]
    assert not (tmp_path / "report.json").exists()
    assert "sampling" not in err or "cannot encode" in message  # options fail before any work


def test_eval_options_are_generated_from_eval_config():
    """Every option of `didi eval` comes from an EvalConfig field, in the spellings the command always had."""
    from didi.cli import build_parser, config_from_args

    parser = build_parser("eval")
    argv = ["eval", "--model", "a", "--model", "b", "--samples", "s.jsonl", "--nfe", "8,16", "--seeds", "0,1,2",
            "--temperatures", "0.8,1", "--no-likelihood", "--no-references", "--no-cache", "--mauve", "--greedy-tail",
            "--plddt", "--evaluator", "e1", "--evaluator", "e2", "--unconditional", "false", "--prefix-tokens", "2",
            "--num-samples", "16", "--copy-window", "4"]
    config = config_from_args(EvalConfig, parser.parse_args(argv))
    assert config == EvalConfig(models=["a", "b"], samples=["s.jsonl"], nfe=[8, 16], seeds=[0, 1, 2],
                                temperatures=[0.8, 1.0], likelihood=False, references=False, use_cache=False,
                                mauve=True, greedy_tail=True, plddt=True, evaluator=["e1", "e2"], unconditional=False,
                                prefix_tokens=2, num_samples=16, copy_window=4)
    assert config.evaluator_names == ["e1", "e2"]
    assert config_from_args(EvalConfig, parser.parse_args(["eval", "--model", "a"])) == EvalConfig(models=["a"])
    again = config_from_args(EvalConfig, parser.parse_args(["eval", "--model", "a", "--likelihood", "--references",
                                                            "--evaluator", "e1"]))
    assert again.likelihood and again.references and again.evaluator == "e1"  # one evaluator stays a string
    text = " ".join(parser._subparsers._group_actions[0].choices["eval"].format_help().split())
    for shown in ("--nfe N[,N...]", "(default: 8,16,32,64,128,1024)", "--likelihood, --no-likelihood",
                  "--references, --no-references", "--no-cache disable the samplers' caches", "--seeds S[,S...]",
                  "--temperatures T[,T...]", "--model RUN", "--samples FILE", "--greedy-tail the samplers'"):
        assert shown in text, shown


def test_eval_config_validates():
    assert EvalConfig(models=["x"], nfe="16, 8,16").nfe == [8, 16]
    with pytest.raises(ConfigError, match="--nfe: must be integers >= 1"):
        EvalConfig(models=["x"], nfe=[8, 2.5])
    with pytest.raises(ConfigError, match="--eval-blocks"):
        EvalConfig(models=["x"], eval_blocks=0)


# ------------------------------------------------------------------------------- frontiers, spreads, MAUVE

def test_interpolate_at_on_synthetic_points():
    entropies, ppls = [3.0, 4.0, 5.0], [50.0, 200.0, 800.0]  # log PPL linear in entropy: 4x per nat
    assert interpolate_at(entropies, ppls, 3.5)[0] == pytest.approx(100.0)
    value, i = interpolate_at(entropies, ppls, 4.5)
    assert value == pytest.approx(400.0) and i == 1
    assert interpolate_at(entropies, ppls, 3.0) == (pytest.approx(50.0), 0)
    assert interpolate_at(entropies, ppls, 5.0)[0] == pytest.approx(800.0)
    assert interpolate_at(entropies, ppls, 2.99) is None and interpolate_at(entropies, ppls, 5.01) is None
    assert interpolate_at([3.0, 5.0, 4.0], ppls, 4.5)[0] == pytest.approx(50 * 4 ** 0.75)  # the first bracketing pair
    assert interpolate_at([4.0, 3.0], [200.0, 50.0], 3.25)[0] == pytest.approx(50 * 4 ** 0.25)  # either direction
    assert interpolate_at([3.0, 5.0], [10.0, 30.0], 4.0, log_y=False)[0] == pytest.approx(20.0)
    assert interpolate_at([4.2], [7.0], 4.2) == (7.0, 0) and interpolate_at([4.2], [7.0], 4.3) is None
    assert interpolate_at([], [], 1.0) is None


def synthetic_row(model: str, temperature: float, entropy: float, ppl: float, nfe: int | None = 8) -> EvalRow:
    return EvalRow(model=model, kind="mdlm", sampler="ancestral", nfe=nfe, source=model, num_samples=4, seq_len=8,
                   generated_tokens=8, nfe_per_batch=[nfe or 7], extra_calls={}, batch_sizes=[4], latencies_s=[0.5],
                   timing="", entropy=entropy, temperature=temperature,
                   gen_ppl=Perplexity(ppl=ppl, nll=math.log(ppl), tokens=32, samples=4, chunks=4))


def test_compute_frontiers_per_model_and_nfe():
    rows = [synthetic_row("a", 1.0, 4.0, 200.0), synthetic_row("a", 0.8, 3.0, 50.0),
            synthetic_row("a", 0.8, 3.5, 60.0, nfe=16), synthetic_row("a", 1.0, 3.8, 70.0, nfe=16),
            synthetic_row("b", 1.0, 4.0, 10.0)]  # one temperature: no frontier
    frontiers = compute_frontiers(rows, 3.5)
    assert [(f["model"], f["nfe"]) for f in frontiers] == [("a", 8), ("a", 16)]
    eight, sixteen = frontiers
    assert [p["temperature"] for p in eight["points"]] == [0.8, 1.0]
    assert eight["gen_ppl"] == pytest.approx(100.0) and eight["bracket"] == [0.8, 1.0]
    assert sixteen["gen_ppl"] == pytest.approx(60.0)  # the target is the T = 0.8 point itself
    assert compute_frontiers(rows, 4.5)[0]["gen_ppl"] is None and compute_frontiers(rows, None)[0]["gen_ppl"] is None


def test_bootstrap_interval_and_spread_over_seeds():
    rng = np.random.default_rng(0)
    values = rng.normal(2.0, 0.5, size=400)
    low, high = bootstrap_interval(values, resamples=2000, seed=1)
    assert low < values.mean() < high and high - low == pytest.approx(2 * 1.96 * 0.5 / 20, rel=0.15)
    assert bootstrap_interval(values, resamples=2000, seed=1) == (low, high)  # seeded
    assert bootstrap_interval([3.0] * 10, resamples=100) == (pytest.approx(3.0), pytest.approx(3.0))
    nll, tokens = rng.uniform(10, 30, 50), rng.integers(5, 15, 50)
    low, high = bootstrap_interval(nll, tokens, transform=np.exp, resamples=500)
    assert low < math.exp(nll.sum() / tokens.sum()) < high
    assert mean_std([1.0, 2.0, 3.0]) == (2.0, 1.0) and mean_std([5.0]) == (5.0, None)


def test_mauve_is_one_against_itself_and_low_against_shuffled_tokens(runs, tok):
    root, _ = runs
    evaluator = load_evaluator(str(root / "ar"), "cpu")
    texts = CORPUS[:32]
    rng = np.random.default_rng(0)
    pool = rng.permutation([i for text in texts for i in tok.encode(text)]).tolist()
    shuffled, start = [], 0
    for text in texts:  # the same tokens, shuffled across the whole set
        n = len(tok.encode(text))
        shuffled.append(tok.decode(pool[start:start + n]))
        start += n
    features = evaluator_features(texts, evaluator)
    assert features.shape == (32, 32)
    assert mauve_score(features, features) > 0.99
    assert mauve_score(evaluator_features(shuffled, evaluator), features) < 0.2
    centres = rng.normal(size=(4, 8)) * 3  # two draws of one mixture vs a different mixture
    draw = [centres[rng.integers(0, 4, 64)] + rng.normal(size=(64, 8)) for _ in range(2)]
    assert mauve_score(draw[0], draw[1]) > 0.9 and mauve_score(draw[0], draw[1][:, ::-1].copy()) < 0.2
    with pytest.raises(ConfigError, match="^--mauve: needs at least 16 samples per side"):
        mauve_score(features[:15], features)


def test_features_are_the_mean_pooled_last_hidden_state(runs, tok):
    root, networks = runs
    evaluator = load_evaluator(str(root / "ar"), "cpu")
    text = CORPUS[5]
    ids = torch.tensor([tok.encode(text)[:SEQ_LEN]])
    with torch.no_grad():
        expected = networks["ar"].hidden(ids)[0].mean(0)
    assert torch.allclose(torch.from_numpy(evaluator_features([text, CORPUS[6] * 3], evaluator)[0]), expected,
                          atol=1e-5)
    featurizer = load_mauve_features("auto", evaluator, torch.device("cpu"))  # no GPT-2 Large here: the evaluator
    assert featurizer.name.endswith("(evaluator: mean-pooled last hidden state)")
    with pytest.raises(ConfigError, match="--mauve-features: 'no-such-model' is not a Hugging Face model"):
        load_mauve_features("no-such-model", evaluator, torch.device("cpu"))


def test_speedups_only_between_rows_timed_at_one_batch_size():
    rows = [synthetic_row("teacher", 1.0, 4.0, 10.0, nfe=1024), synthetic_row("teacher", 1.0, 4.0, 10.0, nfe=8),
            synthetic_row("student", 1.0, 4.0, 10.0, nfe=8)]
    rows[0].latencies_s = [64.0]
    rows[2].batch_sizes, rows[2].latencies_s = [8], [0.5]  # twice the batch in the same time
    assert _set_speedups(rows) == "teacher @ 1024 NFE"
    assert rows[0].speedup == 1.0 and rows[1].speedup == pytest.approx(128.0) and rows[2].speedup is None


def test_eval_sweep_seeds_mauve_references_and_matched_entropy(runs, tmp_path, capsys):
    root, _ = runs
    common = dict(models=[str(root / "mdlm")], nfe=[4], evaluator=str(root / "ar"), num_samples=16,
                  likelihood=False, warmup=0, repeats=1, device="cpu", bootstrap=200)
    report = evaluate(EvalConfig(**common, temperatures=[0.25, 4.0], seeds=[0, 1], mauve=True))
    rows = report.rows
    assert [(r.model, r.kind, r.temperature) for r in rows] == [
        ("mdlm", "mdlm", 0.25), ("mdlm", "mdlm", 4.0), ("ar (evaluator)", "ar", 0.25), ("ar (evaluator)", "ar", 4.0),
        ("data (corpus.txt validation)", "data", None)]
    for row in rows[:4]:
        assert row.seeds == [0, 1] and len(row.batch_sizes) == 2 and row.gen_ppl.samples == 32
        per_seed = [m["gen_ppl"] for m in row.per_seed]
        assert row.spread["gen_ppl"]["mean"] == pytest.approx(np.mean(per_seed))
        assert row.spread["gen_ppl"]["std"] == pytest.approx(np.std(per_seed, ddof=1))
        assert 0.0 <= row.mauve <= 1.0 and len(row.sample_entropy) == 32
    assert rows[0].per_seed[0]["entropy"] != rows[0].per_seed[1]["entropy"]  # two seeds, two sample sets
    assert rows[0].value("entropy") < rows[1].value("entropy")  # the temperature works
    data = rows[-1]
    assert report.target_entropy["value"] == data.entropy and "data (corpus.txt validation)" in \
        report.target_entropy["source"]
    assert report.meta["mauve"]["features"].endswith("(evaluator: mean-pooled last hidden state)")
    assert data.mauve is None and not report.meta["heldout"]["disjoint"]  # 22 validation blocks < 2 x 16
    [mdlm, _] = report.frontiers
    expected = interpolate_at([rows[0].value("entropy"), rows[1].value("entropy")],
                              [rows[0].value("gen_ppl"), rows[1].value("gen_ppl")], data.entropy)
    assert mdlm["gen_ppl"] == (None if expected is None else pytest.approx(expected[0]))
    again = EvalReport.from_json(json.loads(json.dumps(report.to_json())))  # everything regenerates from the JSON
    assert format_table(again) == format_table(report) and again.frontiers == report.frontiers

    # the command line: a target inside the mdlm sweep is matched; JSON and plot carry the frontier
    target = (rows[0].value("entropy") + rows[1].value("entropy")) / 2
    out_json, out_png = tmp_path / "eval.json", tmp_path / "eval.png"
    argv = ["eval", "--model", str(root / "mdlm"), "--nfe", "4", "--evaluator", str(root / "ar"), "--num-samples",
            "16", "--no-likelihood", "--warmup", "0", "--repeats", "1", "--device", "cpu", "--temperatures",
            "4,0.25", "--seeds", "0,1", "--json", str(out_json), "--plot", str(out_png)]
    capsys.readouterr()
    assert main([*argv, "--target-entropy", str(target)]) == 0
    stdout = capsys.readouterr().out
    header = table_rows(stdout)[0]
    assert "T" in header and "MAUVE" not in header and f"| gen-PPL @ entropy {target:.3f} |" in stdout
    saved = json.loads(out_json.read_text())
    assert saved["target_entropy"]["source"] == "--target-entropy" and saved["frontiers"][0]["gen_ppl"] > 1
    assert saved["frontiers"][0]["bracket"] == [0.25, 4.0] and saved["meta"]["config"]["seeds"] == [0, 1]
    assert out_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # a target no sweep brackets: "not reached" in the table, one warning line, and the report and plot written
    out_json.unlink()
    out_png.unlink()
    assert main([*argv, "--target-entropy", "50"]) == 0
    captured = capsys.readouterr()
    warnings = [line for line in captured.err.splitlines() if line.startswith("[didi] warning:")]
    assert len(warnings) == 1 and warnings[0].startswith("[didi] warning: --target-entropy 50.000 nats")
    assert "bracketed by no model x NFE" in warnings[0] and "| gen-PPL @ entropy 50.000 |" in captured.out
    assert "didi: error" not in captured.err and "| not reached |" in captured.out
    saved = json.loads(out_json.read_text())
    assert saved["frontiers"][0]["bracket"] is None and saved["frontiers"][0]["gen_ppl"] is None
    assert out_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "[didi eval] mdlm: sampling" not in captured.err  # every row was taken from eval.rows.jsonl


def test_eval_warns_when_the_evaluator_trained_on_the_held_out_text(tmp_path, corpus_file, capsys):
    """A single text file is split by its tail: an evaluator that held out less of it than the model trained on part
    of the model's validation text, and `didi eval` says so; with the same split it does not."""
    from conftest import TINY_TRAIN_ARGS

    common = ["--data", str(corpus_file), "--steps", "1", *TINY_TRAIN_ARGS]
    assert main(["train", "--out", str(tmp_path / "t"), "--valid-fraction", "0.05", *common]) == 0
    for name, fraction in (("same", "0.05"), ("less", "0.02")):
        assert main(["train-ar", "--out", str(tmp_path / name), "--valid-fraction", fraction, *common]) == 0
    capsys.readouterr()
    for name, warned in (("same", False), ("less", True)):
        assert main(["eval", "--model", str(tmp_path / "t"), "--evaluator", str(tmp_path / name), "--nfe", "2",
                     "--num-samples", "2", "--no-likelihood", "--no-references", "--progress", "false"]) == 0
        assert ("may have seen" in capsys.readouterr().err) is warned
