"""Prompts, infilling and semi-autoregressive generation (``didi.diffusion.conditioning``, ``didi.data.prompts``):
fixed positions kept in every row and by every sampler, the filled positions drawn from the model's exact
conditional, exact call counts of windowed runs, the command line and the Python API (the conditional evaluation:
test_conditional_eval.py)."""
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import toy
from conftest import randomize_output_layer
from didi.cli import main
from didi.data.prompts import FREE, encode_prompt, parse_template
from didi.data.tokenizer import ProteinTokenizer
from didi.diffusion.conditioning import semi_autoregressive_sample, window_starts
from didi.diffusion.process import LogLinearSchedule
from didi.diffusion.rgas import RGASConfig, rerank
from didi.diffusion.sampling import ancestral_sample
from didi.errors import ConfigError
from didi.interop.sample_files import read_samples, sample_records
from didi.pipelines.ar import ARPipeline, generate
from didi.pipelines.load import load
from test_ar import CORPUS, corpus_runs, make_run, tiny_tokenizer
from test_ar import Counting as CountingAR
from test_distill import distill_args
from test_sampling import Counting, chi_square_pvalue

SEQ_LEN = 16


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tok):
    """Diffusion, AR and protein runs with random weights, and a student distilled (2 iterations) from the
    diffusion run, all of length 16 on a local corpus."""
    root = tmp_path_factory.mktemp("conditioning")
    corpus_runs(root, tok, seq_len=SEQ_LEN)
    make_run(root / "protein", "mdlm", ProteinTokenizer(), seq_len=SEQ_LEN)
    assert main(distill_args(root / "mdlm", root / "student", 2)) == 0
    return root


@pytest.fixture(scope="module")
def teacher(runs):
    return load(runs / "mdlm", device="cpu")


@pytest.fixture(scope="module")
def student(runs):
    return load(runs / "student", device="cpu")


def kept(tokens: torch.Tensor, ids, fixed) -> bool:
    """Every row holds ``ids`` at the ``fixed`` positions."""
    fixed = torch.as_tensor(fixed)
    return bool((tokens[:, fixed] == torch.as_tensor(ids)[fixed]).all())


# ------------------------------------------------------------------------------------------- templates and prompts

def test_templates_and_prompts_become_ids_fixed_positions_and_spans(tok):
    prompt = encode_prompt(tok, "To be")
    assert prompt.ids == (tok.bos_id, *tok.encode("To be")) and prompt.spans == ()
    ids, fixed, spans = prompt.layout(None, SEQ_LEN)
    n = len(prompt.ids)
    assert ids[n:] == [FREE] * (SEQ_LEN - n) and fixed == [True] * n + [False] * (SEQ_LEN - n)
    assert spans == [[n, SEQ_LEN]]

    template = parse_template(tok, "To be, [MASK:3] question[MASK:1]")
    head = [tok.bos_id, *tok.encode("To be, ")]
    middle = tok.encode(" question")
    assert template.ids == (*head, FREE, FREE, FREE, *middle, FREE)
    assert template.spans == ((len(head), len(head) + 3), (len(head) + 3 + len(middle), len(template.ids)))
    ids, fixed, spans = template.layout(None, SEQ_LEN)
    assert len(ids) == len(template.ids) and fixed == [i != FREE for i in template.ids]


# ------------------------------------------------------------------------------------- every row keeps the prompt

PIECES = st.text(alphabet="abTo, :'.", max_size=6)


@st.composite
def templates(draw):
    pieces = draw(st.lists(PIECES, min_size=2, max_size=4))
    spans = draw(st.lists(st.integers(1, 3), min_size=len(pieces) - 1, max_size=len(pieces) - 1))
    return pieces, spans


@settings(max_examples=20, deadline=None, derandomize=True)
@given(template=templates(), sampler=st.sampled_from(["ancestral", "rgas"]), nfe=st.integers(1, 4))
def test_prompt_tokens_are_identical_in_every_row_property(student, template, sampler, nfe):
    """Random templates (some longer than the model: windows) and both samplers of the distilled student: every
    output row holds the template's tokens at its fixed positions, and the completed text is the template with the
    generated spans in place of its [MASK:n]."""
    pieces, spans = template
    text = "".join(p + f"[MASK:{n}]" for p, n in zip(pieces, spans)) + pieces[-1]
    prompt = parse_template(student.tokenizer, text)
    [result] = student.sample(3, nfe, infill=text, sampler=sampler, seed=len(text))
    fixed = [i != FREE for i in prompt.ids]
    assert result.tokens.shape == (3, len(prompt.ids)) and kept(result.tokens, prompt.ids, fixed)
    assert result.fixed.tolist() == [fixed] * 3 and (result.tokens != student.mask_index).all()
    for record in sample_records(student, [result]):
        assert len(record["generated"]) == len(spans)
        assert record["text"] == "".join(p + g for p, g in zip(pieces, record["generated"])) + pieces[-1]
        assert record["infill"] == text and record["spans"] == [list(s) for s in prompt.spans]


@settings(max_examples=10, deadline=None, derandomize=True)
@given(text=PIECES.filter(bool), length=st.integers(12, 40))
def test_prompt_continuations_keep_the_prompt_property(teacher, text, length):
    prompt = encode_prompt(teacher.tokenizer, text)
    [result] = teacher.sample(2, 3, prompt=text, seq_len=length, seed=length)
    fixed = [True] * len(prompt.ids) + [False] * (length - len(prompt.ids))
    assert kept(result.tokens, list(prompt.ids) + [0] * (length - len(prompt.ids)), fixed)
    for record in sample_records(teacher, [result]):
        assert record["text"] == text + record["generated"][0] and record["prompt"] == text


# ------------------------------------------------------------------------------- the model's exact conditional

@pytest.mark.parametrize("pattern", [(None, 2, None), (1, None, None), (None, None, 0)])
def test_filled_positions_follow_the_samplers_exact_conditional_chi_square(pattern):
    """Toy DiT (3 tokens + [MASK], length 3): with some positions fixed, the filled positions of 20k samples of the
    2-step sampler pass a chi-square test against the enumerated 2-step chain started from the conditioned state."""
    net = toy.tiny_dit(seed=1)
    randomize_output_layer(net, scale=2.0, seed=1)
    table = toy.denoiser_table(net)
    start = torch.tensor([toy.MASK if v is None else v for v in pattern])
    fixed = start != toy.MASK
    schedule, k, n = LogLinearSchedule(), 2, 20_000
    grid = torch.linspace(1.0, 0.0, k + 1, dtype=torch.float64)
    p = torch.zeros(len(toy.STATES), dtype=torch.float64)
    p[toy.state_index(start[None])] = 1.0
    for i in range(k):
        p = p @ toy.step_matrix(table, float(schedule.alpha(grid[i])), float(schedule.alpha(grid[i + 1])))
    exact = p[toy.state_index(toy.CLEAN)]
    assert float(exact[~(toy.CLEAN[:, fixed] == start[fixed]).all(-1)].sum()) == 0.0  # the chain keeps them
    result = ancestral_sample(net, batch_size=n, seq_len=toy.L, mask_index=toy.MASK, schedule=schedule,
                              num_steps=k, generator=torch.Generator().manual_seed(0),
                              prefix=start.expand(n, -1).clone(), fixed=fixed.expand(n, -1))
    assert (result.tokens[:, fixed] == start[fixed]).all()
    counts = torch.bincount(toy.clean_index(result.tokens), minlength=len(toy.CLEAN)).numpy()
    assert chi_square_pvalue(counts, exact.numpy()) > 1e-3


def test_exact_denoiser_fills_from_the_joint_conditional():
    """A denoiser returning the true conditionals of a correlated joint over {0,1}^3: with x_0 = 1 fixed and many
    steps (both free tokens revealed in one step with probability 1/200) the filled pair follows
    p(x_1, x_2 | x_0 = 1), chi-square."""
    V, L, mask = 2, 3, 2
    joint = torch.tensor([0.30, 0.02, 0.05, 0.13, 0.01, 0.19, 0.25, 0.05])
    states = torch.tensor(list(np.ndindex(2, 2, 2)))

    onehot = torch.nn.functional.one_hot(states, V + 1).float()  # (8, L, V + 1)

    def fn(z, sigma):
        consistent = ((z[:, None, :] == states[None]) | (z[:, None, :] == mask)).all(-1).float() * joint
        return torch.log(torch.einsum("bs,slv->blv", consistent, onehot).clamp_min(1e-30))

    n = 20_000
    prefix = torch.tensor([1, mask, mask]).expand(n, -1).clone()
    result = ancestral_sample(fn, batch_size=n, seq_len=L, mask_index=mask, schedule=LogLinearSchedule(),
                              num_steps=200, generator=torch.Generator().manual_seed(2),
                              prefix=prefix)
    assert (result.tokens[:, 0] == 1).all()
    counts = torch.bincount(result.tokens[:, 1] * 2 + result.tokens[:, 2], minlength=4).numpy()
    assert chi_square_pvalue(counts, joint[4:].numpy()) > 1e-3


# ------------------------------------------------------------------------------------------ RGAS and the student

def test_rgas_sum_reward_leaves_fixed_positions_out():
    """Two candidates; the discriminator's logit at the fixed position 0 favours candidate 0 by 50, at the two free
    positions candidate 1 by 5 each. Summed over all positions candidate 0 would win; over the free ones, 1 does."""
    def discriminator(x, sigma):
        first = (x[:, 1] == 0).float()
        return torch.stack([50 * first, 5 * (1 - first), 5 * (1 - first)], dim=1)

    candidates = torch.tensor([[[7, 0, 0], [7, 1, 1]]]).expand(200, -1, -1)
    sigma, config = torch.zeros(200), RGASConfig(reward="sum")
    g = torch.Generator().manual_seed(0)
    assert (rerank(discriminator, candidates, sigma, config, g, 9)[:, 1] == 0).all()  # no fixed mask: all positions
    fixed = torch.tensor([True, False, False]).expand(200, -1)
    assert (rerank(discriminator, candidates, sigma, config, g, 9, fixed)[:, 1] == 1).all()


@pytest.mark.parametrize("reward", ["masked_mean", "sum"])
def test_distilled_student_keeps_fixed_positions_with_both_samplers(student, reward):
    prompt = encode_prompt(student.tokenizer, "To be")
    n = len(prompt.ids)
    for sampler, options in (("ancestral", {}), ("rgas", {"reward": reward, "h_start": 50.0, "h_end": 50.0,
                                                          "num_candidates": 4})):
        [result] = student.sample(6, 8, prompt="To be", sampler=sampler, seed=3, **options)
        assert kept(result.tokens, list(prompt.ids) + [0] * (SEQ_LEN - n), [True] * n + [False] * (SEQ_LEN - n))
        if sampler == "rgas":
            assert result.extra_calls["discriminator"] > 0 and result.extra_calls["discriminator_backward"] > 0


# -------------------------------------------------------------------------------------- semi-autoregressive windows

def test_window_starts_cover_the_sequence_as_documented():
    assert window_starts(10, 4, 2) == [0, 2, 4, 6]
    assert window_starts(11, 4, 3) == [0, 3, 6, 7]  # the last window ends the sequence: overlaps more
    assert window_starts(4, 4, 3) == [0]
    with pytest.raises(ConfigError, match="--stride: must be in \\[1, 3\\]"):
        window_starts(10, 4, 4)


def test_semi_autoregressive_run_of_twice_the_length_counts_calls_and_overlaps_as_documented(teacher):
    """Length 2L = 32: [BOS], then windows [BOS] w [EOS] of W = 14 positions, stride 7. Every call is counted;
    window k's first call sees the last W - S decided positions of the previous window (more for the last one) as
    context and [MASK] at every new position."""
    network, calls = teacher.network, []

    def recording(z, sigma):
        calls.append(z.clone())
        return network(z, sigma)

    teacher.network = recording
    try:
        [result] = teacher.sample(3, 5, seq_len=2 * SEQ_LEN, prompt="To be", seed=1)
    finally:
        teacher.network = network
    tokens, windows = result.tokens, result.info["windows"]
    bos, eos, mask = teacher.tokenizer.bos_id, teacher.tokenizer.eos_id, teacher.mask_index
    assert tokens.shape == (3, 2 * SEQ_LEN) and (tokens != mask).all() and (tokens[:, 0] == bos).all()
    assert result.nfe == len(calls) == sum(w["nfe"] for w in windows) and all(1 <= w["nfe"] <= 5 for w in windows)
    # body of 31 positions, windows of 14 with stride 7: starts 0, 7, 14, then 31 - 14 = 17 (shifted by the BOS)
    assert [(w["start"], w["end"]) for w in windows] == [(1, 15), (8, 22), (15, 29), (18, 32)]
    assert result.info["window"] == 14 and result.info["stride"] == 7
    # context: the prompt after its BOS (the frame's BOS stands for it), then W - S = 7, then 29 - 18 = 11
    prompt = len(encode_prompt(teacher.tokenizer, "To be").ids)
    decided_until, contexts = prompt, []
    for k, w in enumerate(windows):
        first = calls[sum(x["nfe"] for x in windows[:k])]
        assert first.shape == (3, SEQ_LEN) and (first[:, 0] == bos).all() and (first[:, -1] == eos).all()
        context = decided_until - w["start"]
        assert torch.equal(first[:, 1:1 + context], tokens[:, w["start"]:w["start"] + context])
        assert (first[:, 1 + context:-1] == mask).all()
        contexts.append(context)
        decided_until = w["end"]
    assert contexts == [prompt - 1, 7, 7, 11]


def test_semi_autoregressive_sample_is_a_function_of_a_window_sampler():
    """Without a frame: a factorised denoiser, counted calls, fixed positions kept across windows."""
    table = torch.tensor([[0.5, 0.3, 0.2]]).expand(6, -1)
    logits = torch.log(torch.cat([table, torch.zeros(6, 1)], -1).clamp_min(1e-30))
    counted = Counting(lambda z, s: logits.expand(z.shape[0], -1, -1))
    g = torch.Generator().manual_seed(0)

    def window(prefix, fixed):
        return ancestral_sample(counted, batch_size=2, seq_len=6, mask_index=3, schedule=LogLinearSchedule(),
                                num_steps=4, generator=g, prefix=prefix, fixed=fixed)

    prefix = torch.full((2, 20), 3)
    prefix[:, 9] = 1
    result = semi_autoregressive_sample(window, batch_size=2, seq_len=20, window=6, stride=4, mask_index=3,
                                        prefix=prefix)
    assert result.nfe == counted.calls and (result.tokens[:, 9] == 1).all() and (result.tokens != 3).all()
    assert [(w["start"], w["end"]) for w in result.info["windows"]] == [(0, 6), (4, 10), (8, 14), (12, 18),
                                                                        (14, 20)]


# ---------------------------------------------------------------------------------------------- autoregressive

def test_ar_continues_prompts_with_one_call_per_generated_token(runs):
    model = ARPipeline.from_pretrained(runs / "ar", device="cpu")
    prompt = encode_prompt(model.tokenizer, "To be, or")
    n = len(prompt.ids)
    results = {}
    for use_cache in (True, False):
        counted = CountingAR(model.network)
        ids = torch.tensor(list(prompt.ids) + [0] * (SEQ_LEN - n)).expand(3, -1)
        fixed = torch.arange(SEQ_LEN) < n
        results[use_cache] = generate(counted, batch_size=3, seq_len=SEQ_LEN, bos_id=model.tokenizer.bos_id,
                                      generator=torch.Generator().manual_seed(4), use_cache=use_cache, prefix=ids,
                                      fixed=fixed.expand(3, -1))
        assert results[use_cache].nfe == counted.calls == SEQ_LEN - n
        assert torch.equal(results[use_cache].tokens[:, :n], ids[:, :n])
    assert torch.equal(results[True].tokens, results[False].tokens)
    [via_pipeline] = model.sample(3, prompt="To be, or", seed=4)
    assert torch.equal(via_pipeline.tokens, results[True].tokens)
    with pytest.raises(ConfigError, match="--infill: an autoregressive model continues prompts only"):
        model.sample(2, infill="To [MASK:2] be")


# ------------------------------------------------------------------------------------- command line and Python API

def test_cli_sample_prompt_infill_prompts_file_and_length(runs, tok, tmp_path, capsys):
    out = tmp_path / "s.jsonl"
    base = ["sample", "--model", str(runs / "student"), "--nfe", "4", "--device", "cpu", "--out", str(out)]
    assert main(base + ["--prompt", "To be", "--num-samples", "2", "--sampler", "rgas"]) == 0
    printed = capsys.readouterr().out
    records = read_samples(out)
    assert [r["prompt"] for r in records] == ["To be"] * 2 and all(r["text"].startswith("To be") for r in records)
    assert printed.count(f"[generated {len(encode_prompt(tok, 'To be').ids)}:{SEQ_LEN}]") == 2

    assert main(base + ["--infill", "To be, or not to be: [MASK:4] question.", "--num-samples", "2", "--quiet"]) == 0
    records = read_samples(out)
    assert all(r["text"] == f"To be, or not to be: {r['generated'][0]} question." for r in records)

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"prompt": "To be"}\n\n{"infill": "[MASK:2] or not [MASK:3]", "id": 7}\n')
    assert main(base + ["--prompts", str(prompts), "--num-samples", "2", "--batch-size", "4", "--quiet"]) == 0
    records = read_samples(out)
    assert [("prompt" in r, "infill" in r) for r in records] == [(True, False)] * 2 + [(False, True)] * 2
    assert [r["batch_size"] for r in records] == [2, 2, 2, 2]  # rows of different lengths: separate batches

    assert main(base + ["--length", str(2 * SEQ_LEN), "--stride", "10", "--num-samples", "2", "--quiet"]) == 0
    [record, _] = read_samples(out)
    assert len(record["tokens"]) == 2 * SEQ_LEN and record["nfe"] == sum(w["nfe"] for w in record["windows"])
    assert [w["start"] for w in record["windows"]] == [1, 11, 18]  # body 31, windows of 14: 0, 10, then 31 - 14
    assert "nfe" in capsys.readouterr().err


def test_python_api_generate_returns_the_completed_text_and_spans(runs):
    model = load(runs / "mdlm", device="cpu")
    [a, b] = model.generate("To be", nfe=4, num_samples=2)
    assert a.text == "To be" + a.generated[0] and a.prompt == "To be" and a.nfe <= 4
    template = "To [MASK:2] be[MASK:1]"
    [c] = model.generate(infill=template, nfe=4)
    assert c.text == f"To {c.generated[0]} be{c.generated[1]}"
    assert len(c.tokens) == len(parse_template(model.tokenizer, template).ids)


def one_error_line(capsys) -> str:
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("didi: error:")]
    assert len(errors) == 1
    return errors[0]


@pytest.mark.parametrize("args, message", [
    (["--prompt", CORPUS[3] + CORPUS[4]], "--prompt: is "),
    (["--prompt", "To be", "--length", "3"], "--length: 3 leaves nothing to generate after the prompt's"),
    (["--infill", "To be, or not to be"], "--infill: the template has no [MASK:n] span to fill"),
    (["--infill", "To be [MASK:0] or"], "--infill: malformed span '[MASK:0]' at character 6"),
    (["--infill", "To be [MASK:x] or"], "--infill: malformed span '[MASK:x]'"),
    (["--infill", "To be [MASK:3"], "--infill: malformed span '[MASK:3'"),
    (["--infill", "To [MASK:2] be", "--length", "20"], "--length: a template sets the sample length itself"),
    (["--length", "40", "--stride", "14"], "--stride: must be in [1, 13]: below the window of 14 tokens"),
    (["--prompt", "To be", "--stride", "3"], "--stride: applies to samples longer than the model's 16 tokens"),
    (["--prompts", "{missing}"], "--prompts: {missing}: file not found"),
    (["--prompts", "{bad}"], "--prompts: {bad}:2: each row needs exactly one of a \"prompt\" or an \"infill\""),
    (["--prompt", ""], "--prompt: the prompt is empty"),
    (["--model", "{protein}", "--prompt", "mkv"], "--prompt: 'mkv' cannot be represented faithfully by the protein "
                                                  "tokenizer: it is tokenized as 3 tokens [14, 12, 21], which decode "
                                                  "to 'MKV'"),
    (["--model", "{protein}", "--length", "40"], "--length: above the model's 16 tokens needs a wrap-packed model"),
    (["--model", "{ar}", "--infill", "To [MASK:2] be"], "--infill: an autoregressive model continues prompts only"),
])
def test_cli_bad_input_is_one_line_exit_2_and_no_output(runs, tmp_path, capsys, args, message):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "To be"}\n{"text": "To be"}\n')
    paths = dict(missing=tmp_path / "none.jsonl", bad=bad, protein=runs / "protein", ar=runs / "ar")
    out = tmp_path / "out.jsonl"
    args = [a.format(**paths) for a in args]
    model = [] if "--model" in args else ["--model", str(runs / "mdlm")]
    assert main(["sample", *model, "--nfe", "2", "--num-samples", "2", "--device", "cpu", "--out", str(out),
                 *args]) == 2
    assert message.format(**paths) in one_error_line(capsys)
    assert not out.exists()


# ----------------------------------------------------------------------------- sampling controls meet conditioning

def test_sampling_controls_combine_with_prompts_rgas_windows_and_the_ar_model(runs, teacher, student, tmp_path):
    """Temperature, top-k, top-p and the greedy tail shape the free positions of prompted, infilled, RGAS and
    windowed samples; fixed tokens stay, the controls are recorded. top-k 1 with one step per window draws every
    free position as the argmax given the fixed ones: the same tokens for any seed."""
    prompt = encode_prompt(teacher.tokenizer, "To be")
    n = len(prompt.ids)
    ids, fixed = list(prompt.ids) + [0] * (SEQ_LEN - n), [True] * n + [False] * (SEQ_LEN - n)
    controls = {"temperature": 0.7, "top_k": 5, "top_p": 0.9, "greedy_tail": True}
    [result] = teacher.sample(4, 6, prompt="To be", seed=2, **controls)
    assert kept(result.tokens, ids, fixed) and (result.tokens != teacher.mask_index).all()
    assert result.info["controls"] == controls and result.info["conditioning"]
    [infilled] = teacher.sample(2, 4, infill="To [MASK:3] be", temperature=0.5, top_p=0.8, seed=2)
    template = parse_template(teacher.tokenizer, "To [MASK:3] be")
    assert kept(infilled.tokens, [0 if i == FREE else i for i in template.ids], [i != FREE for i in template.ids])
    argmax = [teacher.sample(3, 1, prompt="To be", top_k=1, seed=s)[0].tokens for s in (0, 1)]
    assert torch.equal(argmax[0], argmax[1]) and (argmax[0] == argmax[0][:1]).all()

    [guided] = student.sample(4, 6, prompt="To be", sampler="rgas", seed=3, temperature=0.8, top_p=0.9,
                              rerank_temperature=0.5, reward="sum", num_candidates=4)
    assert kept(guided.tokens, ids, fixed) and (guided.tokens != student.mask_index).all()
    assert guided.info["rgas"]["rerank_temperature"] == 0.5 and guided.info["controls"]["temperature"] == 0.8
    assert guided.extra_calls["discriminator"] > 0

    [long] = teacher.sample(2, 4, seq_len=2 * SEQ_LEN, prompt="To be", temperature=0.8, top_k=5, seed=1)
    assert torch.equal(long.tokens[:, :n], torch.tensor(prompt.ids).expand(2, -1))
    assert (long.tokens != teacher.mask_index).all()
    assert long.info["windows"] and long.info["controls"]["top_k"] == 5
    windowed = [teacher.sample(2, 1, seq_len=2 * SEQ_LEN, prompt="To be", top_k=1, seed=s)[0].tokens for s in (0, 1)]
    assert torch.equal(windowed[0], windowed[1])

    ar = ARPipeline.from_pretrained(runs / "ar", device="cpu")
    greedy = [ar.sample(2, prompt="To be", top_k=1, seed=s)[0] for s in (0, 1)]
    assert torch.equal(greedy[0].tokens, greedy[1].tokens) and kept(greedy[0].tokens, ids, fixed)
    assert greedy[0].info["controls"]["top_k"] == 1

    out = tmp_path / "s.jsonl"
    assert main(["sample", "--model", str(runs / "student"), "--nfe", "4", "--device", "cpu", "--out", str(out),
                 "--prompt", "To be", "--num-samples", "2", "--temperature", "0.7", "--top-p", "0.9", "--sampler",
                 "rgas", "--rerank-temperature", "0.5", "--quiet"]) == 0
    records = read_samples(out)
    assert all(r["text"].startswith("To be") and r["prompt"] == "To be" for r in records)
    assert all(r["controls"]["temperature"] == 0.7 and r["controls"]["top_p"] == 0.9 for r in records)
