"""The GPT baseline/evaluator: causality, KV cache, generation, run directories (``didi.models.gpt``, ``didi.ar``)."""
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import stats

import didi
from didi.config import DiffusionConfig, ModelConfig
from didi.data.tokenizer import Tokenizer, train_bpe
from didi.diffusion.sampling import SamplingControls
from didi.errors import CheckpointError, ConfigError
from didi.models.dit import DiT
from didi.models.gpt import GPT, KVCache, next_token_nll
from didi.pipelines.ar import ARPipeline, generate
from didi.runtime.checkpoint import RunConfig, save_tensors, write_run_config

CORPUS = [f"To be, or not to be, that is question {i}: whether 'tis nobler in the mind {i % 7} to suffer."
          for i in range(200)]


def tiny_config(vocab_size: int, arch: str = "gpt", seq_len: int = 16) -> ModelConfig:
    return ModelConfig(vocab_size=vocab_size, hidden_size=32, n_blocks=2, n_heads=2, cond_dim=16,
                       max_seq_len=seq_len, dropout=0.0, arch=arch)


def tiny_tokenizer() -> Tokenizer:
    return train_bpe(CORPUS, vocab_size=300)


def make_run(path: Path, kind: str, tokenizer: Tokenizer, *, seq_len: int = 16, seed: int = 0,
             data: dict | None = None) -> torch.nn.Module:
    """A run directory with random weights (what `didi train`/`train-ar` would write, minus training)."""
    ar = kind == "ar"
    config = tiny_config(tokenizer.vocab_size if ar else tokenizer.model_vocab_size, "gpt" if ar else "dit", seq_len)
    torch.manual_seed(seed)
    network = GPT(config) if ar else DiT(config)
    if not ar:  # the DiT's zero-initialised output layer would predict uniformly
        with torch.no_grad():
            for p in network.parameters():
                if p.abs().sum() == 0:
                    p.normal_(0.0, 0.5)
    spec = tokenizer.save(path)
    diffusion = None if ar else DiffusionConfig(mask_index=tokenizer.diffusion_mask_id)
    write_run_config(path, RunConfig(kind=kind, model=config, tokenizer=spec, diffusion=diffusion,
                                     training={"seq_len": seq_len}, data=data or {}))
    save_tensors(path / "model.safetensors", network.state_dict())
    return network.eval()


def corpus_runs(root: Path, tokenizer: Tokenizer, *, seq_len: int = 16) -> dict[str, torch.nn.Module]:
    """``root/corpus.txt`` (``CORPUS``) and a diffusion and an AR run with random weights on it (``root/mdlm``,
    ``root/ar``); returns their networks by kind."""
    corpus = root / "corpus.txt"
    corpus.write_text("\n".join(CORPUS) + "\n")
    data = {"data": str(corpus), "seq_len": seq_len, "cache_dir": str(root / "cache")}
    return {kind: make_run(root / kind, kind, tokenizer, seq_len=seq_len, data=data) for kind in ("mdlm", "ar")}


class Counting(torch.nn.Module):
    """Forward to a network and count the calls."""

    def __init__(self, network):
        super().__init__()
        self.network, self.calls = network, 0

    def forward(self, *args, **kwargs):
        self.calls += 1
        return self.network(*args, **kwargs)


@pytest.fixture
def gpt() -> GPT:
    torch.manual_seed(0)
    return GPT(tiny_config(50)).eval()


def test_forward_is_causal(gpt):
    x = torch.randint(0, 50, (2, 16))
    y = x.clone()
    y[:, 9] = (y[:, 9] + 1) % 50
    a, b = gpt(x), gpt(y)
    assert torch.allclose(a[:, :9], b[:, :9], atol=1e-6)
    assert not torch.allclose(a[:, 9:], b[:, 9:], atol=1e-4)


def test_kv_cache_forward_matches_full_forward(gpt):
    """Prefill of 5, a chunk of 4, then single tokens: the logits equal one full forward pass."""
    x = torch.randint(0, 50, (3, 16))
    cache = KVCache(16)
    pieces = [gpt(x[:, :5], cache=cache), gpt(x[:, 5:9], cache=cache)]
    pieces += [gpt(x[:, i:i + 1], cache=cache) for i in range(9, 16)]
    assert cache.length == 16
    assert torch.allclose(torch.cat(pieces, dim=1), gpt(x), atol=1e-5)
    with pytest.raises(ValueError, match="KV cache holds 16"):
        gpt(x[:, :1], cache=cache)


def test_gradient_checkpointing_gives_the_same_gradients(gpt):
    x = torch.randint(0, 50, (2, 16))
    grads = []
    for checkpointing in (False, True):
        gpt.zero_grad()
        gpt.train()
        gpt.gradient_checkpointing = checkpointing
        next_token_nll(gpt, x).mean().backward()
        grads.append(torch.cat([p.grad.flatten() for p in gpt.parameters()]))
    assert torch.allclose(grads[0], grads[1], atol=1e-6)


def test_generate_with_and_without_cache_is_token_identical_and_counts_calls(gpt):
    counted = Counting(gpt)
    results = {}
    for use_cache in (True, False):
        counted.calls = 0
        g = torch.Generator().manual_seed(7)
        results[use_cache] = generate(counted, batch_size=4, seq_len=16, bos_id=3, generator=g, use_cache=use_cache)
        assert results[use_cache].nfe == counted.calls == 15
    assert torch.equal(results[True].tokens, results[False].tokens)
    assert (results[True].tokens[:, 0] == 3).all()
    assert len(set(results[True].tokens.flatten().tolist())) > 5  # random weights: not degenerate


def test_generate_tiny_top_p_is_greedy(gpt):
    result = generate(gpt, batch_size=2, seq_len=12, bos_id=0, controls=SamplingControls(top_p=1e-9),
                      generator=torch.Generator().manual_seed(0))
    greedy = torch.zeros(2, 1, dtype=torch.long)
    for _ in range(11):
        greedy = torch.cat([greedy, gpt(greedy)[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(result.tokens, greedy)


def test_generate_draws_from_the_model_distribution():
    """A context-free model with known next-token probabilities: position frequencies pass a chi-square test."""
    probs = torch.tensor([0.5, 0.25, 0.15, 0.07, 0.03])

    def model(idx, cache=None):
        return probs.log().expand(idx.shape[0], idx.shape[1], -1)

    result = generate(model, batch_size=4000, seq_len=4, bos_id=0, generator=torch.Generator().manual_seed(1))
    counts = torch.bincount(result.tokens[:, 1:].flatten(), minlength=5).numpy()
    assert stats.chisquare(counts, probs.numpy() * counts.sum()).pvalue > 1e-3
    assert result.nfe == 3


def test_pipeline_loads_ema_strictly_and_samples(tmp_path):
    tok = tiny_tokenizer()
    network = make_run(tmp_path / "ar", "ar", tok)
    ema = {k: v + 0.01 for k, v in network.state_dict().items()}
    save_tensors(tmp_path / "ar" / "ema.safetensors", ema)

    model = didi.load(tmp_path / "ar", device="cpu")
    assert isinstance(model, ARPipeline) and model.kind == "ar" and model.seq_len == 16
    assert torch.equal(model.network.output_layer.weight, ema["output_layer.weight"])
    raw = ARPipeline.from_pretrained(tmp_path / "ar", device="cpu", weights="model")
    assert torch.equal(raw.network.output_layer.weight, network.output_layer.weight)

    results = model.sample(5, 999, seed=0, batch_size=2)
    assert [r.tokens.shape for r in results] == [(2, 16), (2, 16), (1, 16)]
    assert all(r.nfe == 15 and r.num_steps == 15 for r in results)
    assert (torch.cat([r.tokens for r in results])[:, 0] == tok.bos_id).all()
    assert model.decode(results[0].tokens, keep_special=True)[0].startswith("<|endoftext|>")
    assert model.decode(results[0].tokens) == [tok.decode(row[1:]) for row in results[0].tokens.tolist()]
    assert model.sample(2, 1, seed=3, seq_len=8)[0].tokens.shape == (2, 8)
    with pytest.raises(ConfigError, match="--sampler: 'rgas' is not available for an autoregressive model"):
        model.sample(2, 16, sampler="rgas")
    with pytest.raises(ConfigError, match="--seq-len"):
        model.sample(2, 16, seq_len=17)


def test_generate_continues_prompts_like_sample_and_decode_drops_the_start_token(tmp_path):
    """`ARPipeline.generate` is `sample(prompt=...)` decoded as the diffusion pipeline's Completions: the prompt and
    its continuation, the continuation alone, the same tokens; templates are refused as by `sample`."""
    tok = tiny_tokenizer()
    make_run(tmp_path / "ar", "ar", tok)
    model = didi.load(tmp_path / "ar", device="cpu")
    completions = model.generate(["To be", "or not"], num_samples=2, seed=5, seq_len=12, temperature=0.9)
    results = model.sample(2, seed=5, seq_len=12, temperature=0.9, prompt=["To be", "or not"])  # a batch each
    rows = [row for r in results for row in r.tokens.tolist()]
    assert len(completions) == len(rows) == 4 and [c.tokens for c in completions] == rows
    for i, (completion, row) in enumerate(zip(completions, rows)):
        prompt = ["To be", "or not"][i // 2]
        n = 1 + len(tok.encode(prompt))
        assert completion.prompt == prompt and completion.nfe == results[i // 2].nfe == 12 - n
        assert completion.text == tok.decode(row[1:]) == model.decode(torch.tensor([row]))[0]
        assert completion.text.startswith(prompt) and completion.generated == [tok.decode(row[n:])]
    with pytest.raises(ConfigError, match="--infill: an autoregressive model continues prompts only"):
        model.generate(infill="To be [MASK:2]")
    with pytest.raises(ConfigError, match="--prompt: give a prompt"):
        model.generate()


def test_token_nll_masks_padding(tmp_path):
    tok = tiny_tokenizer()
    network = make_run(tmp_path / "ar", "ar", tok)
    model = ARPipeline.from_pretrained(tmp_path / "ar", device="cpu")
    ids = torch.randint(0, tok.vocab_size, (2, 10))
    attention = torch.ones_like(ids)
    attention[1, 6:] = 0
    nll, mask = model.token_nll(ids, attention)
    expected = torch.nn.functional.cross_entropy(network(ids)[:, :-1].transpose(1, 2), ids[:, 1:], reduction="none")
    assert torch.allclose(nll, expected, atol=1e-5)
    assert mask.sum(1).tolist() == [9, 5]


def test_wrong_kind_and_wrong_weights_are_one_line_errors(tmp_path):
    tok = tiny_tokenizer()
    make_run(tmp_path / "mdlm", "mdlm", tok)
    with pytest.raises(CheckpointError, match="is a 'mdlm' model, not an autoregressive"):
        ARPipeline.from_pretrained(tmp_path / "mdlm", device="cpu")
    make_run(tmp_path / "ar", "ar", tok)
    dit = DiT(tiny_config(tok.model_vocab_size, "dit"))
    save_tensors(tmp_path / "ar" / "model.safetensors", dit.state_dict())
    with pytest.raises(CheckpointError, match="weights do not match the model"):
        ARPipeline.from_pretrained(tmp_path / "ar", device="cpu")


def test_gpt_overfits_a_batch():
    """Next-token training on one repeated block: the loss falls far below log V."""
    torch.manual_seed(0)
    model = GPT(tiny_config(50))
    x = torch.randint(0, 50, (4, 16))
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(60):
        loss = next_token_nll(model, x).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[0] > 0.9 * np.log(50)
    assert losses[-1] < 0.3 * losses[0]
