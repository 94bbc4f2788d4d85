"""Metrics beyond perplexity (``didi.recipes.evaluate.quality``): rep-n, distinct-n, the copy rate against the
training split, robust gen-PPL summaries, and several evaluators side by side in `didi eval`."""
import json
import math
import random

import numpy as np
import pytest
from scipy.stats import trim_mean

from didi.cli import main
from didi.data.corpora import DataConfig, prepare_data
from didi.data.tokenizer import load_tokenizer
from didi.interop.sample_files import read_samples
from didi.recipes.evaluate.metrics import generative_perplexity, load_evaluator
from didi.recipes.evaluate.quality import (
    CopyIndex,
    distinct_n,
    mean_repetition,
    ppl_summary,
    repetition,
    trimmed_mean,
    window_hashes,
    words,
)
from didi.recipes.evaluate.references import special_ids
from didi.recipes.evaluate.report import EvalReport
from didi.recipes.evaluate.tables import format_table
from didi.runtime.checkpoint import read_run_config
from test_ar import corpus_runs, make_run, tiny_tokenizer

SEQ_LEN = 16


# ------------------------------------------------------------------------------------------ repetition, diversity

def test_repetition_of_hand_made_samples():
    assert repetition("a b a b".split(), 1) == 0.5  # a, b, a, b: 2 unique of 4
    assert repetition("a b a b".split(), 2) == pytest.approx(1 / 3)  # ab, ba, ab
    assert repetition("a b a b".split(), 3) == 0.0 and repetition("a b a b".split(), 4) == 0.0
    assert repetition("a b".split(), 3) is None  # no trigram at all
    assert repetition([7] * 5, 1) == pytest.approx(4 / 5) and repetition([7] * 5, 4) == 0.5
    means = mean_repetition([[1, 2, 1, 2], [3, 3], [5]])
    assert means[1] == pytest.approx((0.5 + 0.5 + 0.0) / 3)
    assert means[2] == pytest.approx((1 / 3 + 0.0) / 2)  # [5] has no bigram: left out
    assert means[4] == 0.0  # only [1, 2, 1, 2] has a 4-gram
    assert mean_repetition([words("the cat the cat sat")], ns=(1, 2)) == {1: pytest.approx(2 / 5),
                                                                          2: pytest.approx(1 / 4)}


def test_distinct_n_pools_the_samples_of_a_row():
    samples = ["a b a b".split(), "a b c".split()]
    assert distinct_n(samples, 2) == pytest.approx(3 / 5)  # ab ba ab | ab bc
    assert distinct_n(samples, 3) == pytest.approx(3 / 3)  # aba bab | abc
    assert distinct_n([[1, 2, 3]] * 4, 2) == pytest.approx(2 / 8)  # four copies of one sample
    assert distinct_n([[1]], 2) is None


# ------------------------------------------------------------------------------------------------------ copy rate

def brute_force_copy(train: list[int], samples: list[list[int]], k: int, specials: set[int]) -> float:
    """The copy rate by definition: every k-window of the training stream without a special token as a tuple."""
    grams = {tuple(train[i:i + k]) for i in range(len(train) - k + 1) if not set(train[i:i + k]) & specials}
    shares = []
    for sample in samples:
        covered = {j for i in range(len(sample) - k + 1) if tuple(sample[i:i + k]) in grams for j in range(i, i + k)}
        countable = sum(t not in specials for t in sample)
        if countable:
            shares.append(len(covered) / countable)
    return float(np.mean(shares))


def test_copy_rate_of_hand_made_samples():
    train = list(range(1, 21)) + [0] + [30, 31, 32, 33]  # 0 is special: no window across it
    index = CopyIndex.build(np.array(train), 4, [0], source="hand-made")
    assert index.covered([1, 2, 3, 4, 9, 9, 9, 15, 16, 17, 18, 19]) == (9, 12)  # 1-4 and 15-19 copied
    assert index.covered([19, 20, 0, 30, 31]) == (0, 4)  # 20 0 30 31 crosses the special token
    assert index.covered([30, 31, 32, 33]) == (4, 4) and index.covered([1, 2, 3]) == (0, 3)  # shorter than k
    assert index.rate([[30, 31, 32, 33], [1, 2, 3], [0]]) == pytest.approx(0.5)  # [0]: nothing countable
    hashes, valid = window_hashes(np.array([5, 6, 7, 5, 6, 7]), 3)
    assert hashes[0] == hashes[3] and len(set(hashes.tolist())) == 3 and valid.all()


def test_copy_rate_matches_brute_force_on_random_streams():
    rng = random.Random(0)
    for trial in range(20):
        alphabet = rng.randint(2, 6)  # small alphabets: many windows match
        train = [rng.randrange(alphabet) for _ in range(rng.randint(0, 300))]
        samples = [[rng.randrange(alphabet) for _ in range(rng.randint(1, 40))] for _ in range(8)]
        k = rng.randint(1, 8)
        index = CopyIndex.build(np.array(train, dtype=np.int64), k, [0], source="random", chunk=rng.randint(1, 64))
        assert index.rate(samples) == pytest.approx(brute_force_copy(train, samples, k, {0})), trial
    truncated = CopyIndex.build(np.arange(100), 4, [], source="x", max_tokens=10)
    assert truncated.truncated and truncated.tokens == 10 and len(truncated.hashes) == 7


# ---------------------------------------------------------------------------------------------- gen-PPL summaries

def test_median_and_trimmed_mean_of_per_sample_gen_ppl():
    values = [1.0, 2.0, 3.0, 4.0, 100.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0, -50.0]
    assert trimmed_mean(values) == pytest.approx(trim_mean(values, 0.1))  # int(1.2) = 1 cut at each end
    assert trimmed_mean(list(range(20))) == pytest.approx(trim_mean(list(range(20)), 0.1))
    nll, tokens = [math.log(2) * 4, math.log(8) * 2, 3.0, math.log(4) * 5], [4, 2, 0, 5]  # sample 3 is unscored
    summary = ppl_summary(nll, tokens)
    assert summary["median"] == pytest.approx(4.0) and summary["trimmed"] == pytest.approx((2 + 8 + 4) / 3)
    assert ppl_summary([1.0], [0]) == {"median": None, "trimmed": None}


# --------------------------------------------------------------------------------------------------- didi eval

@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    tok = tiny_tokenizer()
    corpus_runs(root, tok, seq_len=SEQ_LEN)
    make_run(root / "ar-b", "ar", tok, seq_len=SEQ_LEN, seed=1)  # a second evaluator, other weights
    return root


def table_rows(stdout: str) -> list[list[str]]:
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in stdout.splitlines()
            if line.startswith("| ")]


def test_eval_reports_quality_metrics_and_two_evaluators(runs, tmp_path, capsys):
    samples, out = tmp_path / "samples.jsonl", tmp_path / "eval.json"
    assert main(["sample", "--model", str(runs / "mdlm"), "--nfe", "4", "--num-samples", "6", "--device", "cpu",
                 "--out", str(samples), "--quiet"]) == 0
    capsys.readouterr()
    assert main(["eval", "--samples", str(samples), "--evaluator", str(runs / "ar"), "--evaluator",
                 str(runs / "ar-b"), "--device", "cpu", "--json", str(out)]) == 0
    stdout = capsys.readouterr().out
    header, *rows = table_rows(stdout)
    for column in ("gen-PPL", "gen-PPL median / trimmed", "gen-PPL (ar-b)", "median / trimmed (ar-b)",
                   "rep-n tokens (1/2/3/4)", "rep-n words (1/2/3/4)", "distinct-n (2/3/4)", "copy %"):
        assert column in header, column
    assert header.index("gen-PPL (ar-b)") < header.index("entropy") < header.index("likelihood") < \
        header.index("copy %") < header.index("latency/batch (s)")
    assert "- copy %: mean over samples" in stdout and "k = 8 tokens against the" in stdout

    report = json.loads(out.read_text())
    [row] = [r for r in report["rows"] if r["source"] == str(samples)]  # beside it: the first evaluator's own
    data = report["rows"][-1]  # samples, and the held-out data
    records = read_samples(samples)
    tokens, texts = [r["tokens"] for r in records], [r["text"] for r in records]
    rep, rep_words = mean_repetition(tokens), mean_repetition([words(t) for t in texts])
    for n in (1, 2, 3, 4):
        assert row["spread"][f"rep_tokens_{n}"]["mean"] == pytest.approx(rep[n])
        assert row["per_seed"][0][f"rep_words_{n}"] == (None if rep_words[n] is None else pytest.approx(rep_words[n]))
    for n in (2, 3, 4):
        assert row["spread"][f"distinct_{n}"]["mean"] == pytest.approx(distinct_n(tokens, n))
    cells = rows[report["rows"].index(row)][header.index("rep-n tokens (1/2/3/4)")].split("/")
    assert [float(c) for c in cells] == [pytest.approx(rep[n], abs=5e-4) for n in (1, 2, 3, 4)]

    # each evaluator's gen-PPL, median and trimmed mean, kept by name; the first is the row's own
    assert list(row["evaluators"]) == [str(runs / "ar"), str(runs / "ar-b")]
    assert [e["name"] for e in report["meta"]["evaluators"]] == list(row["evaluators"])
    for name, scores in row["evaluators"].items():
        direct = generative_perplexity(texts, load_evaluator(name, "cpu"))
        assert scores["gen_ppl"]["ppl"] == pytest.approx(direct.ppl)
        summary = ppl_summary(direct.sample_nll, direct.sample_tokens)
        assert scores["spread"]["gen_ppl_median"]["mean"] == pytest.approx(summary["median"])
        assert scores["spread"]["gen_ppl_trimmed"]["mean"] == pytest.approx(summary["trimmed"])
    assert row["gen_ppl"]["ppl"] == row["evaluators"][str(runs / "ar")]["gen_ppl"]["ppl"] != \
        row["evaluators"][str(runs / "ar-b")]["gen_ppl"]["ppl"]
    assert row["spread"]["gen_ppl_median"]["mean"] == row["evaluators"][str(runs / "ar")]["spread"][
        "gen_ppl_median"]["mean"]

    # the copy rate of the samples and of the held-out data, against the training blocks the model was trained on
    run = read_run_config(runs / "mdlm")
    tokenizer = load_tokenizer(runs / "mdlm", run.tokenizer)
    train = prepare_data(DataConfig(**run.data), tokenizer=tokenizer).train.array[:, 1:-1].ravel().tolist()
    specials = set(special_ids(tokenizer))
    assert row["spread"]["copy_rate"]["mean"] == pytest.approx(brute_force_copy(train, tokens, 8, specials))
    valid = prepare_data(DataConfig(**run.data), tokenizer=tokenizer).valid.array
    held_out = np.asarray(valid)[np.random.default_rng(0).permutation(len(valid))[:6]].tolist()
    assert data["kind"] == "data" and data["spread"]["copy_rate"]["mean"] == \
        pytest.approx(brute_force_copy(train, held_out, 8, specials))
    assert row["spread"]["copy_rate"]["index"] == data["spread"]["copy_rate"]["index"] == {
        "window": 8, "source": f"the {len(train) // (SEQ_LEN - 2)} training blocks ({SEQ_LEN} tokens) of "
                              f"{runs / 'corpus.txt'}", "tokens": len(train), "truncated": False}

    again = EvalReport.from_json(report)  # everything regenerates from the JSON
    assert format_table(again) == format_table(EvalReport.from_json(json.loads(json.dumps(report))))
    assert format_table(again).splitlines()[:4] == stdout.splitlines()[:4]
    assert main(["eval", "--samples", str(samples), "--evaluator", str(runs / "ar"), "--device", "cpu",
                 "--copy-window", "4", "--json", str(out), "--no-references"]) == 0
    [row4] = json.loads(out.read_text())["rows"]
    assert "evaluators" not in row4["per_seed"][0] and row4["evaluators"] == {}  # one evaluator: no duplicate
    assert row4["spread"]["copy_rate"]["mean"] == pytest.approx(brute_force_copy(train, tokens, 4, specials))


def test_conditional_rows_score_their_continuations_alike(runs, tmp_path, capsys):
    out = tmp_path / "eval.json"
    assert main(["eval", "--model", str(runs / "mdlm"), "--nfe", "2", "--num-samples", "3", "--prefix-tokens", "4",
                 "--unconditional", "false", "--no-likelihood", "--warmup", "0", "--evaluator", str(runs / "ar"),
                 "--evaluator", str(runs / "ar-b"), "--device", "cpu", "--json", str(out)]) == 0
    stdout = capsys.readouterr().out
    header = table_rows(stdout)[0]
    assert header[5:8] == ["gen-PPL given prefix", "median / trimmed", "given prefix (ar-b)"]
    assert "copy %" in header and "- rep-n (n = 1/2/3/4): share of a sample's n-grams" in stdout
    [row] = json.loads(out.read_text())["rows"]
    assert row["prefix_tokens"] == 4 and set(row["evaluators"]) == {str(runs / "ar"), str(runs / "ar-b")}
    assert row["gen_ppl"]["tokens"] > 0 and row["gen_ppl"]["ppl"] == row["spread"]["gen_ppl"]["mean"]
    for metric in ("rep_tokens_1", "distinct_2", "copy_rate", "gen_ppl_median"):
        assert 0.0 <= row["spread"][metric]["mean"] < float("inf"), metric
    assert row["spread"]["distinct_2"]["mean"] <= 1.0 and row["spread"]["copy_rate"]["mean"] <= 1.0
