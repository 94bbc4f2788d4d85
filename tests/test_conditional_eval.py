"""Conditional evaluation, ``didi eval --prefix-tokens`` (``didi.recipes.evaluate.conditional``): held-out prefixes,
gen-PPL of the continuation given its prefix checked by hand, and the rows joining the report."""
import json

import pytest
import torch

from didi.cli import main
from didi.errors import ConfigError
from didi.recipes.evaluate.conditional import continuation_perplexity, held_out_prefixes
from didi.recipes.evaluate.metrics import load_evaluator
from test_ar import corpus_runs, tiny_tokenizer

SEQ_LEN = 16


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tok):
    """Diffusion and AR runs with random weights on a local corpus (length 16)."""
    root = tmp_path_factory.mktemp("conditional-eval")
    corpus_runs(root, tok, seq_len=SEQ_LEN)
    return root


def one_error_line(capsys) -> str:
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("didi: error:")]
    assert len(errors) == 1
    return errors[0]


def test_continuation_perplexity_scores_the_continuation_given_its_prefix(runs, tok):
    evaluator = load_evaluator(str(runs / "ar"), "cpu")
    prefixes, continuations = ["To be, or", "whether"], [" not to be", " 'tis nobler"]
    ppl = continuation_perplexity(prefixes, continuations, evaluator)
    nll, count = 0.0, 0
    for p, c in zip(prefixes, continuations):
        ids = torch.tensor([tok.encode(p) + tok.encode(c)])
        token_nll, _ = evaluator.score(ids, torch.ones_like(ids))
        nll += float(token_nll[0, len(tok.encode(p)) - 1:].sum())
        count += len(tok.encode(c))
    assert ppl.tokens == count and ppl.nll == pytest.approx(nll / count, rel=1e-5)


def test_held_out_prefixes_are_bos_and_the_first_tokens_of_spread_blocks():
    class Blocks:
        seq_len = 6

        def __init__(self):
            self.array = torch.arange(60).view(10, 6)

        def __len__(self):
            return 10

        def batch(self, rows):
            return self.array[torch.as_tensor(rows)]

    prefixes = held_out_prefixes(Blocks(), 4, 2)
    assert prefixes.tolist() == [[0, 1, 2], [18, 19, 20], [36, 37, 38], [54, 55, 56]]  # blocks 0, 3, 6, 9
    assert held_out_prefixes(Blocks(), 12, 2)[10].tolist() == [0, 1, 2]  # fewer blocks than samples: cycle
    with pytest.raises(ConfigError, match="--prefix-tokens: 5 leaves nothing to continue"):
        held_out_prefixes(Blocks(), 2, 5)


def test_cli_eval_prefix_tokens_adds_conditional_rows_to_the_report(runs, tmp_path, capsys):
    out = tmp_path / "eval.json"
    argv = ["eval", "--model", str(runs / "mdlm"), "--model", str(runs / "ar"), "--nfe", "2,4", "--num-samples", "3",
            "--batch-size", "2", "--eval-blocks", "2", "--warmup", "0", "--repeats", "1", "--device", "cpu",
            "--prefix-tokens", "4", "--json", str(out)]
    assert main(argv) == 0
    stdout = capsys.readouterr().out
    main_table, conditional = stdout.split("Conditional generation: continuations of 4-token held-out prefixes")
    assert len([line for line in main_table.splitlines() if line.startswith("| ")]) == 1 + 3 + 1  # + the data row
    header, *rows = [line.split(" | ") for line in conditional.splitlines() if line.startswith("| ")]
    assert "gen-PPL given prefix" in header and all(len(r) == len(header) for r in rows)
    assert [(r[0].strip("| "), r[3]) for r in rows] == [("mdlm", "2"), ("mdlm", "4"), ("ar", "—")]
    assert "- gen-PPL given prefix: exp(Σ NLL / Σ scored tokens) of the continuations" in conditional
    report = json.loads(out.read_text())
    cond = [r for r in report["rows"] if r["prefix_tokens"] == 4]
    assert len(cond) == 3 and all(r["generated_tokens"] == SEQ_LEN - 5 for r in cond)
    assert cond[2]["nfe_per_batch"] == [SEQ_LEN - 5] * 2 and cond[2]["kind"] == "ar"
    assert all(r["gen_ppl"]["samples"] == 3 and r["entropy"] > 0 and r["speedup"] is None for r in cond)
    assert report["reference"] == "ar"  # speed-ups come from the unconditional rows

    assert main(argv[:-2] + ["--unconditional", "false", "--no-likelihood"]) == 0
    assert capsys.readouterr().out.startswith("Conditional generation")
    assert main(argv[:-2] + ["--unconditional", "false", "--prefix-tokens", "0"]) == 2
    assert "--unconditional: false leaves no row" in one_error_line(capsys)
    assert main(argv[:-2] + ["--prefix-tokens", "15"]) == 2
    assert "--prefix-tokens: 15 leaves nothing to continue" in one_error_line(capsys)
