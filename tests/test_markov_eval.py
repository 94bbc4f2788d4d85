"""`didi eval` on a run trained with --data markov: the exact metrics of the language (invalid-transition rate, NLL
per transition, H(X'|X)) for every sampled row, seed and temperature, the held-out data row and sample files, and
the temperature frontiers read on H(X'|X)."""
from __future__ import annotations

import json
import re

import numpy as np
import pytest

from didi.cli import main
from didi.data.markov import MarkovLanguage, markov_metrics
from didi.data.tokenizer import ByteTokenizer
from didi.interop.sample_files import read_samples
from didi.pipelines.load import load
from didi.recipes.evaluate.markov import MARKOV_METRICS, markov_bootstrap, markov_rows, markov_scores
from didi.recipes.evaluate.metrics import interpolate_at
from didi.recipes.evaluate.references import heldout_data
from didi.recipes.evaluate.report import EvalReport, compute_frontiers
from didi.recipes.evaluate.runner import EvalConfig, evaluate
from didi.recipes.evaluate.tables import format_table
from didi.runtime.checkpoint import read_run_config
from test_ar import make_run, tiny_tokenizer

SEQ_LEN, N = 32, 6
FAST = ["--device", "cpu", "--warmup", "0", "--repeats", "1", "--no-likelihood"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A tiny teacher trained for a few steps on 8 documents of the Markov corpus (it writes markov.json)."""
    out = tmp_path_factory.mktemp("markov") / "teacher"
    assert main(["train", "--data", "markov", "--max-documents", "8", "--seq-len", str(SEQ_LEN), "--preset", "tiny",
                 "--hidden-size", "32", "--n-blocks", "2", "--n-heads", "2", "--cond-dim", "16", "--steps", "40",
                 "--lr", "3e-3", "--global-batch-size", "8", "--eval-every", "40", "--device", "cpu", "--out",
                 str(out), "--progress", "false"]) == 0
    assert (out / "markov.json").is_file()
    return out


def table_rows(stdout: str) -> list[list[str]]:
    """The cells of the first table's lines (an escaped pipe, as in H(X'\\|X), stays inside its cell)."""
    return [[cell.strip() for cell in re.split(r"(?<!\\)\|", line.strip("|"))] for line in stdout.splitlines()
            if line.startswith("| ")]


def test_markov_rows_break_at_special_tokens():
    tok = ByteTokenizer()
    ids = [ord(c) for c in "ab"] + [tok.eos_id] + [ord(c) for c in "cd"] + [tok.diffusion_mask_id, ord("e")]
    assert markov_rows(tok, [ids]) == ["ab\ncd\ne"]  # not "ab<|endoftext|>cd[MASK]e": no letters in between
    language = MarkovLanguage.build(seed=0)
    scores = markov_scores(language, markov_rows(tok, [ids, ids[:2]]))
    assert scores.metrics == markov_metrics(language, [ids, ids[:2]]) and scores.counts.shape == (2, 48, 48)
    (low, high) = markov_bootstrap(language, scores.counts, resamples=200)["invalid_rate"]
    assert 0.0 <= low <= scores.metrics["invalid_rate"] <= high <= 1.0


def test_eval_reports_the_exact_markov_metrics(run, tmp_path, capsys):
    out_json, out_png = tmp_path / "eval.json", tmp_path / "eval.png"
    assert main(["eval", "--model", str(run), "--nfe", "4", "--num-samples", str(N), "--seeds", "0,1", *FAST,
                 "--json", str(out_json), "--plot", str(out_png)]) == 0
    stdout = capsys.readouterr().out
    header, *rows = table_rows(stdout)
    assert header[header.index("entropy") + 1:header.index("entropy") + 4] == ["invalid %", "NLL/transition",
                                                                               "H(X'\\|X)"]
    language = MarkovLanguage.load(run / "markov.json")
    assert f"The chain's entropy rate is {language.entropy_rate():.4f} nats" in stdout
    assert [r[0] for r in rows] == ["teacher", "data (markov validation)"]
    assert " ± " in rows[0][header.index("invalid %")]  # two seeds: mean ± std
    assert rows[1][header.index("invalid %")] == "0.000 [0.000, 0.000]"  # one set of held-out blocks: bootstrap
    assert out_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    report = json.loads(out_json.read_text())
    sampled, data = report["rows"]
    # the data row: held-out text of the chain itself, the end-of-text token between documents breaks transitions
    assert data["markov"]["invalid_rate"] == 0.0 and data["spread"]["invalid_rate"]["high"] == 0.0
    assert data["markov"]["transitions"] > 0 and "low" not in data["spread"]["conditional_entropy"]
    config = EvalConfig(models=[str(run)], num_samples=N)
    heldout = heldout_data(config, [read_run_config(run)], [], None, N)
    direct = markov_metrics(language, heldout.tokens)
    assert {k: data["markov"][k] for k in direct} == direct

    # every seed's numbers are markov_metrics of that seed's samples, drawn again here with the same seed
    model = load(str(run), device="cpu")
    for record in sampled["per_seed"]:
        [result] = model.sample(N, 4, seed=record["seed"], batch_size=N)
        direct = markov_metrics(language, result.tokens.tolist())
        assert {k: record[k] for k in (*MARKOV_METRICS, "transitions")} == \
            {k: direct[k] for k in (*MARKOV_METRICS, "transitions")}
    for metric in MARKOV_METRICS:
        values = [s[metric] for s in sampled["per_seed"]]
        assert sampled["markov"][metric] == pytest.approx(np.mean(values))
        assert sampled["spread"][metric]["std"] == pytest.approx(np.std(values, ddof=1))
    assert sampled["markov"]["chain_entropy_rate"] == pytest.approx(language.entropy_rate())
    again = EvalReport.from_json(report)  # the JSON regenerates the table
    assert format_table(again).splitlines()[0] == stdout.splitlines()[0]


def test_sample_files_of_a_markov_run_are_scored_exactly(run, tmp_path, capsys):
    samples = tmp_path / "samples.jsonl"
    assert main(["sample", "--model", str(run), "--nfe", "4", "--num-samples", "4", "--device", "cpu", "--out",
                 str(samples), "--quiet"]) == 0
    out_json = tmp_path / "eval.json"
    assert main(["eval", "--samples", str(samples), "--device", "cpu", "--json", str(out_json),
                 "--no-references"]) == 0
    [row] = json.loads(out_json.read_text())["rows"]
    language = MarkovLanguage.load(run / "markov.json")
    direct = markov_metrics(language, [r["tokens"] for r in read_samples(samples)])
    assert {k: row["markov"][k] for k in direct} == direct


def test_frontier_on_the_conditional_entropy(run, tmp_path, capsys):
    common = dict(models=[str(run)], nfe=[4], num_samples=N, likelihood=False, warmup=0, repeats=1, device="cpu",
                  bootstrap=200)
    report = evaluate(EvalConfig(**common, temperatures=[0.3, 3.0], frontier_entropy="conditional"))
    cold, hot, data = report.rows
    assert (cold.temperature, hot.temperature, data.kind) == (0.3, 3.0, "data")
    assert all(r.markov is not None for r in report.rows)
    assert report.target_entropy["source"] == "the H(X'|X) of the data (markov validation) row"
    assert report.target_entropy["value"] == data.value("conditional_entropy")
    xs = [cold.value("conditional_entropy"), hot.value("conditional_entropy")]
    assert xs[0] != xs[1]
    target = sum(xs) / 2
    [frontier] = compute_frontiers(report.rows, target, axis="conditional_entropy")
    assert frontier["axis"] == "conditional_entropy" and frontier["bracket"] == [0.3, 3.0]
    assert frontier["gen_ppl"] is None  # no evaluator: the invalid rate is what is read at the target
    expected = interpolate_at(xs, [cold.value("invalid_rate"), hot.value("invalid_rate")], target, log_y=False)
    assert frontier["invalid_rate"] == pytest.approx(expected[0])
    assert [p["conditional_entropy"] for p in frontier["points"]] == xs

    # the command line: the target inside the sweep, the table and JSON read the invalid rate there
    out_json = tmp_path / "eval.json"
    assert main(["eval", "--model", str(run), "--nfe", "4", "--num-samples", str(N), *FAST, "--temperatures",
                 "0.3,3", "--frontier-entropy", "conditional", "--target-entropy", str(target), "--bootstrap", "200",
                 "--json", str(out_json)]) == 0
    stdout = capsys.readouterr().out
    assert f"| invalid % @ H(X'\\|X) {target:.3f} |" in stdout and "| H(X'\\|X) over the sweep |" in stdout
    [saved] = json.loads(out_json.read_text())["frontiers"]
    assert saved["axis"] == "conditional_entropy" and saved["invalid_rate"] == pytest.approx(expected[0])


def test_conditional_frontier_needs_a_markov_run(tmp_path, capsys):
    make_run(tmp_path / "bpe", "mdlm", tiny_tokenizer())
    assert main(["eval", "--model", str(tmp_path / "bpe"), "--nfe", "4", "--num-samples", "2", *FAST,
                 "--temperatures", "0.5,1", "--frontier-entropy", "conditional"]) == 2
    assert "--frontier-entropy: conditional needs a Markov-language run" in capsys.readouterr().err


def _markov_diagnostics():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "markov_diagnostics.py"
    spec = importlib.util.spec_from_file_location("markov_diagnostics", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_markov_diagnostics_counts_exactly_and_runs(run, tmp_path, capsys):
    """benchmarks/markov_diagnostics.py: its per-token invalid counts agree with markov_metrics, the oracle reward
    is minus those counts, and `distill` / `frontier` run end to end on a tiny teacher."""
    import torch

    md = _markov_diagnostics()
    language = MarkovLanguage.load(run / "markov.json")
    table = md.TokenTransitions(language, ByteTokenizer(), 258)
    rng = np.random.default_rng(0)
    letters = np.frombuffer(language.letters.encode(), dtype=np.uint8)
    rows = torch.tensor(letters[rng.integers(0, len(letters), size=(5, 40))].astype(np.int64))
    assert table.rate(rows) == pytest.approx(markov_metrics(language, rows.tolist())["invalid_rate"])
    assert float(table.touching(rows).sum()) == pytest.approx(float(table.incoming(rows).sum()))
    out = tmp_path / "diag"
    md.main(["distill", "--teacher", str(run), "--out", str(out), "--steps", "2", "--log-every", "1",
             "--reward", "oracle", "--option", "disc_blocks=2", "--option", "disc_warmup_steps=0",
             "--option", "student_steps=2"])
    logged = [json.loads(line) for line in (out / "seed0.jsonl").read_text().splitlines()]
    assert [row["step"] for row in logged] == [1, 2] and 0.0 <= logged[-1]["rollout_invalid"] <= 1.0
    assert (out / "seed0-ema.safetensors").is_file() and (out / "seed0-raw.safetensors").is_file()
    md.main(["frontier", "--teacher", str(run), "--students", str(out), "--teacher-nfe", "4", "--temperatures",
             "0.5", "--neighbour-temperatures", "0.5", "--nfe", "4", "--samples", "4", "--sample-seeds", "0",
             "--json", str(tmp_path / "f.json")])
    names = [row["model"] for row in json.loads((tmp_path / "f.json").read_text())["rows"]]
    assert names == ["teacher", "teacher", "teacher-masked-neighbour", "diag/seed0-ema", "diag/seed0-raw"]
    capsys.readouterr()
    md.main(["compare", "--teacher-json", str(tmp_path / "f.json"), "--students-json", str(tmp_path / "f.json"),
             "--nfe", "4", "--per-model"])
    printed = capsys.readouterr().out
    assert "NFE 4 ema: 1 seeds" in printed and "NFE 4 raw: 1 seeds" in printed
    ema = next(r for r in json.loads((tmp_path / "f.json").read_text())["rows"] if r["model"] == "diag/seed0-ema")
    assert f"diag/seed0-ema (T 1.00): invalid {ema['invalid_pct']:.2f} %" in printed


def test_markov_diagnostics_compare_reads_a_named_model_against_the_teachers_curve(tmp_path, capsys):
    """`compare --model NAME`: each row of that model against the teacher's temperature curve, linear in H(X'|X);
    a row outside the curve's entropy range is said to be, and not read off a clamped curve."""
    md = _markov_diagnostics()
    rows = [{"model": "teacher", "nfe": 8, "temperature": 1.0, "invalid_pct": 20.0, "conditional_entropy": 2.0},
            {"model": "teacher", "nfe": 8, "temperature": 0.5, "invalid_pct": 10.0, "conditional_entropy": 1.0},
            {"model": "cooled", "nfe": 8, "temperature": 0.7, "invalid_pct": 12.0, "conditional_entropy": 1.5},
            {"model": "cooled", "nfe": 8, "temperature": 0.2, "invalid_pct": 5.0, "conditional_entropy": 0.5},
            {"model": "other", "nfe": 8, "temperature": 1.0, "invalid_pct": 1.0, "conditional_entropy": 1.5}]
    (tmp_path / "f.json").write_text(json.dumps({"rows": rows}))
    md.main(["compare", "--teacher-json", str(tmp_path / "f.json"), "--students-json", str(tmp_path / "f.json"),
             "--nfe", "8", "--model", "cooled", "--per-model"])
    printed = capsys.readouterr().out
    assert "cooled (T 0.70): invalid 12.00 %, H(X'|X) 1.500; below the teacher's curve by 3.00 points" in printed
    assert "cooled (T 0.20): invalid 5.00 %, H(X'|X) 0.500; outside the curve's entropy range" in printed
    assert "NFE 8 cooled: 2 rows" in printed and "(1 rows outside the curve's entropy range)" in printed
    assert "other" not in printed


def test_markov_diagnostics_loop_with_distill_streams_is_didi_distill(run, tmp_path):
    """`markov_diagnostics.py distill --streams distill` runs the very updates of `didi distill` (same step
    generator, same global reseed, same initialisation): weight for weight equal after 3 iterations without
    warm-ups (the loop's probe of the discriminator during a warm-up runs its spectral-norm power iteration, so
    with warm-ups the two differ)."""
    import torch
    from safetensors.torch import load_file

    from didi.recipes.didi_instruct import InstructConfig
    from didi.recipes.distill import distill
    from didi.recipes.quickstart import MARKOV_DISTILL

    settings = {**MARKOV_DISTILL, "disc_blocks": 2, "student_steps": 2, "disc_warmup_steps": 0, "warmup_steps": 0}
    distill(InstructConfig(teacher=str(run), out=str(tmp_path / "a"), seed=1, progress=False,
                           **{**settings, "steps": 3}))
    md = _markov_diagnostics()
    md.main(["distill", "--teacher", str(run), "--out", str(tmp_path / "b"), "--steps", "3", "--seeds", "1",
             "--streams", "distill", "--option", "disc_blocks=2", "--option", "student_steps=2",
             "--option", "disc_warmup_steps=0", "--option", "warmup_steps=0"])
    for mine, theirs in (("model", "seed1-raw"), ("ema", "seed1-ema"), ("discriminator", "discriminator-seed1")):
        a = load_file(str(tmp_path / "a" / f"{mine}.safetensors"))
        b = load_file(str(tmp_path / "b" / f"{theirs}.safetensors"))
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a), mine
    start = load_file(str(run / "ema.safetensors"))
    moved = load_file(str(tmp_path / "a" / "model.safetensors"))
    assert any(not torch.equal(start[k], moved[k]) for k in start)  # the student did update


def test_markov_diagnostics_stop_after_is_the_start_of_the_full_length_run(run, tmp_path):
    """`--stop-after N` runs the first N iterations of a `--steps` run (its learning-rate schedules span all of
    them): with didi distill's streams, the weights equal didi distill's snapshot at N of the same-length run, and
    differ from a run that is N iterations long."""
    import torch
    from safetensors.torch import load_file

    from didi.recipes.didi_instruct import InstructConfig
    from didi.recipes.distill import distill
    from didi.recipes.quickstart import MARKOV_DISTILL

    settings = {**MARKOV_DISTILL, "disc_blocks": 2, "student_steps": 2, "disc_warmup_steps": 0, "warmup_steps": 0}
    distill(InstructConfig(teacher=str(run), out=str(tmp_path / "a"), seed=1, progress=False, save_every=2,
                           **{**settings, "steps": 4}))
    md = _markov_diagnostics()
    options = ["--option", "disc_blocks=2", "--option", "student_steps=2", "--option", "disc_warmup_steps=0",
               "--option", "warmup_steps=0", "--seeds", "1", "--streams", "distill", "--log-every", "1"]
    md.main(["distill", "--teacher", str(run), "--out", str(tmp_path / "b"), "--steps", "4", "--stop-after", "2",
             *options])
    md.main(["distill", "--teacher", str(run), "--out", str(tmp_path / "c"), "--steps", "2", *options])
    logged = [json.loads(line)["step"] for line in (tmp_path / "b" / "seed1.jsonl").read_text().splitlines()]
    assert logged == [1, 2]
    snapshot = load_file(str(tmp_path / "a" / "checkpoints" / "step-00000002" / "model.safetensors"))
    stopped = load_file(str(tmp_path / "b" / "seed1-raw.safetensors"))
    short = load_file(str(tmp_path / "c" / "seed1-raw.safetensors"))
    assert all(torch.equal(snapshot[k], stopped[k]) for k in snapshot)
    assert any(not torch.equal(snapshot[k], short[k]) for k in snapshot)


def test_chain_denoiser_is_the_exact_posterior_and_its_coupling_keeps_neighbours_valid(tmp_path):
    """markov_diagnostics.ChainDenoiser: its per-position posterior equals brute-force enumeration of every letter
    sequence of a small chain consistent with the revealed letters; the coupled denoiser makes anchors (even
    positions) deterministic and gives their odd neighbours only letters that follow and precede them validly; the
    masked-neighbour temperature cools exactly the masked positions with a masked neighbour; `chain-frontier` in one
    step gives the invalid share of independent stationary draws."""
    import itertools

    import torch

    md = _markov_diagnostics()
    language = MarkovLanguage.build(seed=3, num_states=4, num_successors=2)
    mask, length = 257, 5
    denoiser = md.ChainDenoiser(language, vocab_size=257, mask_index=mask)
    codes = [ord(c) for c in language.letters]
    z = torch.full((2, length), mask)
    z[0, 1], z[1, 3], z[1, 4] = codes[2], codes[0], codes[1]
    logits = denoiser(z, torch.zeros(2))
    smoothed = language.transitions + 1e-9  # the documented smoothing: row 1 reveals an invalid pair
    t, start = smoothed / smoothed.sum(1, keepdims=True), language.stationary()
    for row in range(2):
        weights = np.zeros((length, 4))
        for seq in itertools.product(range(4), repeat=length):
            if any(z[row, i] != mask and codes[seq[i]] != z[row, i] for i in range(length)):
                continue
            p = start[seq[0]] * np.prod([t[a, b] for a, b in zip(seq[:-1], seq[1:])])
            weights[np.arange(length), seq] += p
        expected = weights / weights.sum(1, keepdims=True)
        got = logits[row][:, codes].exp().numpy()
        masked = (z[row] == mask).numpy()
        np.testing.assert_allclose(got[masked], expected[masked], rtol=1e-6, atol=1e-8)
        assert torch.isinf(logits[row][:, [c for c in range(258) if c not in codes]]).all()

    coupled = md.ChainDenoiser(language, vocab_size=257, mask_index=mask, coupled_below=1.0)
    z = torch.full((3, 6), mask)
    z[1, 5] = codes[1]
    probs = coupled(z, torch.zeros(3))[:, :, codes].exp()
    valid = torch.tensor(language.transitions > 0)
    for row in range(3):
        for i in range(0, 6, 2):
            anchor = int(probs[row, i].argmax())
            assert probs[row, i, anchor] == 1.0
            for j in (i - 1, i + 1):
                if 0 <= j < 6 and z[row, j] == mask:
                    support = probs[row, j] > 1e-6
                    ok = valid[anchor] if j > i else valid[:, anchor]
                    assert bool(support.any()) and bool(ok[support].all())
    never = md.ChainDenoiser(language, vocab_size=257, mask_index=mask, coupled_below=0.0)
    assert not bool((never(z, torch.zeros(3))[:, 0::2, codes].exp().amax(-1) == 1.0).any())

    # end to end: in one step every letter is an independent draw from the stationary distribution, so the invalid
    # share is 1 - Σ π(a) π(b) [T(a, b) > 0]; with many steps the exact denoiser hardly errs
    language.save(tmp_path / "markov.json")
    invalid = {}
    for nfe in (1, 64):
        md.main(["chain-frontier", "--language", str(tmp_path / "markov.json"), "--nfe", str(nfe), "--temperatures",
                 "1.0", "--coupled-below", "", "--samples", "400", "--sample-seeds", "0", "--seq-len", "8",
                 "--json", str(tmp_path / "chain.json")])
        invalid[nfe] = json.loads((tmp_path / "chain.json").read_text())["rows"][0]["invalid_pct"] / 100
    pi = language.stationary()
    expected = 1 - float(pi @ (language.transitions > 0) @ pi)
    assert abs(invalid[1] - expected) < 4 * np.sqrt(expected * (1 - expected) / (400 * 7))
    assert invalid[64] < 0.25 * expected

    z = torch.tensor([[mask, mask, 7, mask, 8, mask, mask]])
    assert md.masked_neighbour(z, mask).tolist() == [[True, True, False, False, False, True, True]]
    net = lambda z, s: torch.zeros(*z.shape, 258)  # noqa: E731
    net_logits = torch.ones(1, 7, 258)
    cooled = md.tempered(lambda z, s: net_logits, 0.5, mask, "masked-neighbour")(z, None)
    assert cooled[0, :, 0].tolist() == [2.0, 2.0, 1.0, 1.0, 1.0, 2.0, 2.0]
    assert torch.equal(md.tempered(net, 0.5, mask)(z, None), torch.zeros(1, 7, 258))
