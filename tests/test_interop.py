"""didi convert / export / load on tiny checkpoints built in every published layout (reference-formats §1)."""
from __future__ import annotations

import json
from collections import OrderedDict
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import didi
from didi.cli import main
from didi.config import ModelConfig
from didi.data.tokenizer import train_bpe
from didi.errors import ConfigError
from didi.interop.convert import convert
from didi.interop.export import export
from didi.models.discriminator import empty_discriminator
from didi.models.dit import DiT
from didi.pipelines.diffusion import DiffusionPipeline
from didi.runtime.checkpoint import CheckpointError, read_run_config

TEXTS = ["the quick brown fox jumps over the lazy dog", "a masked diffusion model denoises all tokens at once",
         "distillation turns many sampling steps into a few", "the dog sleeps while the fox runs"] * 8
GPT2_VOCAB = 50258


class FakeDictConfig:
    """Stands for the omegaconf config Lightning pickles into ``hyper_parameters`` (must not be executed)."""

    def __init__(self, content):
        self._content = content

    def __setstate__(self, state):
        raise AssertionError("the converter must not run pickled code")


@pytest.fixture(scope="module")
def bpe(tmp_path_factory):
    """A tiny trained BPE saved as tokenizer.json; the tiny models embed its ids plus [MASK]."""
    tok = train_bpe(TEXTS, vocab_size=300)
    directory = tmp_path_factory.mktemp("tokenizer")
    tok.save(directory)
    return tok, directory / "tokenizer.json"


def tiny_config(vocab_size: int) -> ModelConfig:
    return ModelConfig(vocab_size=vocab_size, hidden_size=32, n_blocks=2, n_heads=2, cond_dim=16, max_seq_len=16)


def randomized(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Random values for every parameter (DiT output layers start at zero, which would hide mapping errors)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return module.eval()


def dit(config: ModelConfig, seed: int) -> DiT:
    return randomized(DiT(config), seed)


def discriminator(config: ModelConfig, seed: int) -> DiT:
    return randomized(empty_discriminator(config), seed)


def prefixed(prefix: str, module: torch.nn.Module) -> OrderedDict:
    return OrderedDict((prefix + k, v.clone()) for k, v in module.state_dict().items())


def inputs(vocab_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.randint(0, vocab_size, (2, 16), generator=torch.Generator().manual_seed(1))
    x[:, ::3] = vocab_size - 1  # some [MASK] positions
    return x, torch.tensor([0.0, 0.7])


def assert_same_logits(network: torch.nn.Module, reference: torch.nn.Module) -> None:
    x, sigma = inputs(reference.config.vocab_size)
    with torch.no_grad():
        assert torch.equal(network(x, sigma), reference(x, sigma))


def assert_same_discriminator(network: torch.nn.Module, reference: torch.nn.Module) -> None:
    x, sigma = inputs(reference.config.vocab_size)
    with torch.no_grad():
        assert torch.equal(network(x, sigma), reference(x, sigma))


def lightning_extras() -> dict:
    return {"epoch": 3, "global_step": 1200, "pytorch-lightning_version": "2.2.1",
            "loops": {"fit_loop": {"state_dict": {}, "epoch_loop.state_dict": {"_batches_that_stepped": 1200}}},
            "callbacks": {"ModelCheckpoint": {"best_model_score": None}},
            "optimizer_states": [{"state": {}, "param_groups": [{"lr": 3e-4}]}], "lr_schedulers": [],
            "sampler": {"random_state": None},
            "hyper_parameters": {"config": FakeDictConfig({"model": {"hidden_size": 32}})}}


def mdlm_ckpt(path: Path, raw: DiT, ema: DiT, edit=None) -> Path:
    """MDLM/DUO Lightning layout: ``state_dict['backbone.*']`` + top-level ``ema.shadow_params`` list.

    ``edit(ckpt)`` damages the checkpoint dict before it is saved.
    """
    state = prefixed("backbone.", raw)
    state["metrics.train_nlls.mean_value"] = torch.tensor(0.0)
    state["metrics.train_nlls.weight"] = torch.tensor(0.0)
    shadow = [p.detach().clone() for p in ema.parameters()]
    ckpt = {**lightning_extras(), "state_dict": state,
            "ema": {"decay": 0.9999, "num_updates": 1200, "shadow_params": shadow}}
    if edit is not None:
        edit(ckpt)
    torch.save(ckpt, path)
    return path


def didi_ckpt(path: Path, student_ema: DiT, disc: DiT, raw: DiT | None = None) -> Path:
    """DiDi-Instruct Lightning layout; without ``raw`` it is what the published hf_to_ckpt.py writes."""
    state = prefixed("student_ema.", student_ema)
    state.update(prefixed("discriminator.", disc))
    extras = {"epoch": 0, "global_step": 0, "pytorch-lightning_version": "2.5.3"}
    if raw is not None:
        state.update(prefixed("backbone.", raw))
        state.update(prefixed("teacher.", raw))
        state["reward_baseline"] = torch.tensor(0.25)
        extras = {**lightning_extras(), "ema": {"decay": 0.9999, "num_updates": 7,
                                                "shadow_params": [p.detach().clone() for p in raw.parameters()]}}
    torch.save({**extras, "state_dict": state}, path)
    return path


def hf_release(directory: Path, student: DiT, disc: DiT | None) -> Path:
    """DiDi-Instruct release layout: bare DiT keys in model.safetensors, the discriminator beside it."""
    directory.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in student.state_dict().items()}, directory / "model.safetensors")
    if disc is not None:
        save_file({k: v.contiguous() for k, v in disc.state_dict().items()}, directory / "discriminator.safetensors")
    return directory


def mdlm_owt_dir(directory: Path, model: DiT) -> Path:
    """kuleshov-group/mdlm-owt layout: the DiT nested under ``backbone.`` plus an HF config.json."""
    directory.mkdir(parents=True, exist_ok=True)
    save_file(dict(prefixed("backbone.", model)), directory / "model.safetensors")
    c = model.config
    (directory / "config.json").write_text(json.dumps({
        "architectures": ["MDLM"], "model_type": "mdlm", "auto_map": {"AutoModelForMaskedLM": "modeling_mdlm.MDLM"},
        "vocab_size": c.vocab_size, "hidden_dim": c.hidden_size, "cond_dim": c.cond_dim, "n_blocks": c.n_blocks,
        "n_heads": c.n_heads, "model_length": c.max_seq_len, "dropout": 0.1, "time_conditioning": False,
        "return_dict": False}))
    return directory


def load_run(run_dir: Path, weights: str = "ema") -> DiffusionPipeline:
    return DiffusionPipeline.from_pretrained(run_dir, device="cpu", weights=weights)


def assert_nothing_written(dst: Path) -> None:
    assert not dst.exists()
    assert not [p.name for p in dst.parent.iterdir() if p.name.startswith(f".{dst.name}.")]


# ------------------------------------------------------------------------------------------ conversions

def test_lightning_mdlm_ckpt_maps_backbone_and_ema(tmp_path, bpe):
    tok, tok_file = bpe
    config = tiny_config(tok.model_vocab_size)
    raw, ema = dit(config, seed=1), dit(config, seed=2)
    src = mdlm_ckpt(tmp_path / "mdlm.ckpt", raw, ema)

    conversion = convert(src, tmp_path / "run", tokenizer=tok_file, seq_len=16)

    run = read_run_config(tmp_path / "run")
    assert run.kind == "mdlm" and run.model == config and run.tokenizer["type"] == "bpe"
    assert run.diffusion.mask_index == tok.vocab_size == config.vocab_size - 1
    assert not run.diffusion.time_conditioning
    assert_same_logits(load_run(tmp_path / "run").network, ema)  # default: the EMA shadow params
    assert_same_logits(load_run(tmp_path / "run", weights="model").network, raw)
    x, sigma = inputs(config.vocab_size)
    assert not torch.allclose(raw(x, sigma), ema(x, sigma))
    summary = "\n".join(conversion.describe())
    assert "state_dict['backbone.*'] -> model.safetensors (31 tensors)" in summary
    assert "ema['shadow_params'] + buffers of state_dict['backbone.*'] -> ema.safetensors (31 tensors)" in summary
    assert "state_dict['metrics.*'] (2 keys): torchmetrics state" in summary
    assert "epoch, global_step, hyper_parameters, loops" in summary
    every_key = "\n".join(conversion.describe(verbose=True))
    assert "state_dict['backbone.blocks.1.attn_qkv.weight'] -> model.safetensors['blocks.1.attn_qkv.weight']" \
        in every_key
    assert "ema['shadow_params'][0] -> ema.safetensors['vocab_embed.embedding']" in every_key
    assert "state_dict['backbone.rotary_emb.inv_freq'] -> ema.safetensors['rotary_emb.inv_freq']" in every_key


def test_didi_training_ckpt_keeps_raw_student_ema_and_discriminator(tmp_path, bpe):
    tok, tok_file = bpe
    config = tiny_config(tok.model_vocab_size)
    student_ema, disc, raw = dit(config, 3), discriminator(config, 4), dit(config, 5)
    src = didi_ckpt(tmp_path / "didi.ckpt", student_ema, disc, raw=raw)

    conversion = convert(src, tmp_path / "run", tokenizer=tok_file, seq_len=16)

    assert conversion.config.kind == "didi" and conversion.source.layout == "lightning-didi"
    assert_same_logits(load_run(tmp_path / "run").network, student_ema)
    assert_same_logits(load_run(tmp_path / "run", weights="model").network, raw)
    summary = "\n".join(conversion.describe())
    assert "state_dict['teacher.*'] (31 keys)" in summary and "state_dict['reward_baseline*'] (1 keys)" in summary
    assert "ema: Lightning EMA of the raw student" in summary

    model = didi.load(tmp_path / "run", device="cpu")
    assert_same_discriminator(model.discriminator, disc)
    [result] = model.sample(num_samples=2, nfe=4)
    assert result.tokens.shape == (2, 16) and 1 <= result.nfe <= 4
    assert ((result.tokens >= 0) & (result.tokens < tok.vocab_size)).all()  # no [MASK] left


def test_published_hf_to_ckpt_output_uses_student_ema_as_the_model(tmp_path, bpe):
    tok, tok_file = bpe
    config = tiny_config(tok.model_vocab_size)
    student, disc = dit(config, 6), discriminator(config, 7)
    convert(didi_ckpt(tmp_path / "didi.ckpt", student, disc), tmp_path / "run", tokenizer=tok_file)

    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == [
        "config.json", "discriminator.safetensors", "model.safetensors", "tokenizer.json"]
    model = load_run(tmp_path / "run")
    assert_same_logits(model.network, student)
    assert_same_discriminator(model.discriminator, disc)


def test_didi_instruct_release_converts_and_samples_with_nothing_else(tmp_path, capsys):
    """The README story: the published model.safetensors + discriminator.safetensors, GPT-2 vocabulary."""
    config = tiny_config(GPT2_VOCAB)
    student, disc = dit(config, 8), discriminator(config, 9)
    src = hf_release(tmp_path / "didi-instruct-small", student, disc)

    assert main(["convert", str(src), str(tmp_path / "run")]) == 0
    out = capsys.readouterr().out
    assert "model.safetensors['*'] -> model.safetensors (31 tensors)" in out
    assert "discriminator.safetensors['*'] -> discriminator.safetensors (34 tensors)" in out
    run = read_run_config(tmp_path / "run")
    assert (run.kind, run.tokenizer["type"], run.diffusion.mask_index, run.model.max_seq_len) == \
        ("didi", "gpt2", 50257, 1024)
    assert (tmp_path / "run" / "tokenizer.json").is_file()
    model = load_run(tmp_path / "run")
    assert_same_logits(model.network, student)
    assert_same_discriminator(model.discriminator, disc)
    assert main(["sample", "--model", str(tmp_path / "run"), "--nfe", "16", "--num-samples", "2",
                 "--seq-len", "16", "--device", "cpu"]) == 0
    assert "--- sample 1" in capsys.readouterr().out


def test_mdlm_owt_directory_with_backbone_nested_keys(tmp_path, bpe):
    tok, tok_file = bpe
    config = tiny_config(tok.model_vocab_size)
    model = dit(config, 10)
    conversion = convert(mdlm_owt_dir(tmp_path / "mdlm-owt", model), tmp_path / "run", tokenizer=tok_file)

    assert conversion.source.layout == "hf-mdlm" and conversion.config.kind == "mdlm"
    assert conversion.config.model.max_seq_len == 16  # from model_length in config.json
    assert_same_logits(load_run(tmp_path / "run").network, model)
    assert "model.safetensors['backbone.*'] -> model.safetensors (31 tensors)" in "\n".join(conversion.describe())


def test_heads_come_from_presets_or_n_heads_when_the_rotary_buffer_is_absent(tmp_path, bpe):
    tok, tok_file = bpe
    config = tiny_config(tok.model_vocab_size)
    student = dit(config, 11)
    src = hf_release(tmp_path / "release", student, None)
    state = load_file(src / "model.safetensors")
    del state["rotary_emb.inv_freq"]
    save_file(state, src / "model.safetensors")

    with pytest.raises(ConfigError, match="--n-heads: cannot infer the attention heads .* pass --n-heads"):
        convert(src, tmp_path / "run", tokenizer=tok_file)
    assert_nothing_written(tmp_path / "run")
    conversion = convert(src, tmp_path / "run", tokenizer=tok_file, n_heads=2)
    assert_same_logits(load_run(tmp_path / "run").network, student)
    assert "(computed: head dim 16, base 10000) -> model.safetensors['rotary_emb.inv_freq']" in \
        "\n".join(conversion.describe(verbose=True))
    with pytest.raises(ConfigError, match="--n-heads: 4 disagrees"):
        convert(tmp_path / "run", tmp_path / "again", n_heads=4)


# ---------------------------------------------------------------------------------- didi.load and the Hub

def test_load_converts_foreign_checkpoints_once_into_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DIDI_CACHE", str(tmp_path / "cache"))
    config = tiny_config(GPT2_VOCAB)
    student, disc = dit(config, 12), discriminator(config, 13)
    src = hf_release(tmp_path / "release", student, disc)

    model = didi.load(src, device="cpu")
    assert model.kind == "didi" and model.path.parent == tmp_path / "cache" / "converted"
    assert_same_logits(model.network, student)
    assert len(model.sample(num_samples=2, nfe=4, seq_len=8)) == 1
    assert didi.load(src, device="cpu").path == model.path  # cached
    assert len(list((tmp_path / "cache" / "converted").iterdir())) == 1


def test_hub_repo_id_is_downloaded_then_converted(tmp_path, monkeypatch):
    import huggingface_hub

    monkeypatch.setenv("DIDI_CACHE", str(tmp_path / "cache"))
    config = tiny_config(GPT2_VOCAB)
    student = dit(config, 14)
    snapshot = hf_release(tmp_path / "hub-snapshot", student, discriminator(config, 15))
    calls = []

    def fake_snapshot_download(repo_id, allow_patterns):
        calls.append((repo_id, allow_patterns))
        return str(snapshot)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    model = didi.load("haoyangzheng/didi-instruct-small", device="cpu")
    assert calls == [("haoyangzheng/didi-instruct-small", ["*.safetensors", "*.json"])]
    assert_same_logits(model.network, student)


def test_unreachable_hub_gives_one_clear_offline_error(tmp_path, monkeypatch, capsys):
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.chdir(tmp_path)
    dst = tmp_path / "run"
    with pytest.raises(CheckpointError, match=r"^kuleshov-group/mdlm-owt: not a local path, and the Hugging Face "
                                              r"Hub is unreachable \(offline, not cached\)"):
        convert("kuleshov-group/mdlm-owt", dst)
    assert_nothing_written(dst)
    with pytest.raises(CheckpointError, match="Hugging Face Hub is unreachable"):
        didi.load("haoyangzheng/didi-instruct-small")
    assert main(["convert", "haoyangzheng/didi-instruct-small", str(dst)]) == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("didi: error: haoyangzheng/didi-instruct-small: not a local path")


# -------------------------------------------------------------------------------------------- export

def test_export_then_convert_round_trips_bit_exactly(tmp_path, bpe):
    tok, tok_file = bpe
    config = tiny_config(tok.model_vocab_size)
    student_ema, disc, raw = dit(config, 16), discriminator(config, 17), dit(config, 18)
    convert(didi_ckpt(tmp_path / "didi.ckpt", student_ema, disc, raw=raw), tmp_path / "run", tokenizer=tok_file,
            seq_len=16)

    assert main(["export", str(tmp_path / "run"), str(tmp_path / "hf")]) == 0
    assert sorted(p.name for p in (tmp_path / "hf").iterdir()) == [
        "README.md", "config.json", "configuration_didi.py", "discriminator.safetensors", "model.safetensors",
        "modeling_didi.py", "tokenizer.json", "tokenizer_config.json"]  # Transformers: test_export_transformers.py
    hf = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert (hf["didi_kind"], hf["weights"], hf["hidden_dim"], hf["n_heads"], hf["n_blocks"], hf["model_length"],
            hf["mask_index"], hf["tokenizer"]["type"]) == ("didi", "ema", 32, 2, 2, 16, tok.vocab_size, "bpe")
    exported = load_file(tmp_path / "hf" / "model.safetensors")
    assert "output_layer.main.0.weight_orig" in load_file(tmp_path / "hf" / "discriminator.safetensors")

    convert(tmp_path / "hf", tmp_path / "back")  # tokenizer and size come from the export itself
    for name, reference in [("model", tmp_path / "run" / "ema.safetensors"),
                            ("discriminator", tmp_path / "run" / "discriminator.safetensors")]:
        original, back = load_file(reference), load_file(tmp_path / "back" / f"{name}.safetensors")
        assert original.keys() == back.keys()
        for key in original:
            assert original[key].dtype == back[key].dtype and torch.equal(original[key], back[key]), key
    assert exported.keys() == load_file(tmp_path / "back" / "model.safetensors").keys()
    run, back = read_run_config(tmp_path / "run"), read_run_config(tmp_path / "back")
    assert (back.kind, back.model, back.diffusion, back.tokenizer) == (run.kind, run.model, run.diffusion,
                                                                         run.tokenizer)
    assert_same_logits(load_run(tmp_path / "back").network, student_ema)

    export(tmp_path / "run", tmp_path / "hf-raw", weights="model")
    raw_back = load_file(tmp_path / "hf-raw" / "model.safetensors")
    assert all(torch.equal(raw_back[k], v) for k, v in raw.state_dict().items())


# -------------------------------------------------------------------------------------------- refusals

def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


BROKEN = {
    "missing key": (lambda c: c["state_dict"].pop("backbone.blocks.1.attn_out.weight"),
                    r"state_dict\['backbone\.\*'\]: weights do not match the model "
                    r"\(1 missing key\(s\) e\.g\. 'blocks\.1\.attn_out\.weight'\)"),
    "wrong shape": (lambda c: c["state_dict"].update({"backbone.blocks.0.mlp.2.bias": torch.zeros(33)}),
                    r"1 shape mismatch\(es\) e\.g\. 'blocks\.0\.mlp\.2\.bias' \(33,\) vs model \(32,\)"),
    "unexpected key": (lambda c: c["state_dict"].update({"backbone.blocks.0.lora_A.weight": torch.zeros(4, 32)}),
                       r"1 unexpected key\(s\) e\.g\. 'blocks\.0\.lora_A\.weight'"),
    "unknown prefix": (lambda c: c["state_dict"].update({"ema_model.weight": torch.ones(1)}),
                       r"1 unknown key\(s\) in state_dict e\.g\. 'ema_model\.weight' \(expected backbone\.\*\); "
                       r"refusing a partial conversion"),
    "ema count": (lambda c: c["ema"]["shadow_params"].pop(),
                  r"ema\['shadow_params'\] has 29 tensors but the model has 30 parameters"),
}


@pytest.mark.parametrize("problem", list(BROKEN))
def test_broken_lightning_checkpoints_are_refused_and_write_nothing(tmp_path, bpe, problem):
    tok, tok_file = bpe
    config = tiny_config(tok.model_vocab_size)
    edit, message = BROKEN[problem]
    src = mdlm_ckpt(tmp_path / "mdlm.ckpt", dit(config, 19), dit(config, 20), edit=edit)
    with pytest.raises(CheckpointError, match=message):
        convert(src, tmp_path / "run", tokenizer=tok_file)
    assert_nothing_written(tmp_path / "run")


def test_truncated_checkpoint_is_refused(tmp_path, bpe):
    tok, tok_file = bpe
    config = tiny_config(tok.model_vocab_size)
    src = mdlm_ckpt(tmp_path / "mdlm.ckpt", dit(config, 19), dit(config, 20))
    _truncate(src)
    with pytest.raises(CheckpointError, match=r"mdlm\.ckpt: not a readable PyTorch checkpoint \(truncated or corrupt"):
        convert(src, tmp_path / "run", tokenizer=tok_file)
    assert_nothing_written(tmp_path / "run")


def test_broken_release_files_are_refused(tmp_path, bpe):
    tok, tok_file = bpe
    config = tiny_config(tok.model_vocab_size)
    src = hf_release(tmp_path / "release", dit(config, 21), discriminator(config, 22))
    disc = load_file(src / "discriminator.safetensors")
    del disc["output_layer.main.0.weight_u"]
    save_file(disc, src / "discriminator.safetensors")
    with pytest.raises(CheckpointError, match=r"discriminator\.safetensors\['\*'\]: weights do not match the model "
                                              r"\(1 missing key\(s\) e\.g\. 'output_layer\.main\.0\.weight_u'\)"):
        convert(src, tmp_path / "run", tokenizer=tok_file)
    _truncate(src / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"model\.safetensors: not a readable safetensors file"):
        convert(src, tmp_path / "run", tokenizer=tok_file)
    assert_nothing_written(tmp_path / "run")


def test_tokenizer_is_required_for_other_vocabularies_and_must_match(tmp_path, bpe):
    tok, tok_file = bpe
    src = hf_release(tmp_path / "release", dit(tiny_config(tok.model_vocab_size), 23), None)
    with pytest.raises(ConfigError, match=f"--tokenizer: .* embeds {tok.model_vocab_size} ids, not GPT-2's 50258"):
        convert(src, tmp_path / "run")
    other = train_bpe(TEXTS[:2], vocab_size=270)
    other.save(tmp_path / "other")
    with pytest.raises(ConfigError, match=f"--tokenizer: bpe tokenizer, {other.vocab_size} tokens needs "
                                          f"{other.model_vocab_size} embedding rows .* wrong tokenizer"):
        convert(src, tmp_path / "run", tokenizer=tmp_path / "other" / "tokenizer.json")
    assert_nothing_written(tmp_path / "run")


def test_destination_is_never_overwritten_without_force(tmp_path, bpe):
    tok, tok_file = bpe
    config = tiny_config(tok.model_vocab_size)
    model = dit(config, 24)
    src = hf_release(tmp_path / "release", model, None)
    dst = tmp_path / "run"
    dst.mkdir()
    (dst / "notes.txt").write_text("keep me")
    with pytest.raises(CheckpointError, match="already exists and is not empty \\(pass --force"):
        convert(src, dst, tokenizer=tok_file)
    assert (dst / "notes.txt").read_text() == "keep me"
    convert(src, dst, tokenizer=tok_file, force=True)
    assert not (dst / "notes.txt").exists()
    assert_same_logits(load_run(dst).network, model)


def test_cli_reports_errors_in_one_line_with_status_2(tmp_path, bpe, capsys):
    tok, tok_file = bpe
    config = tiny_config(tok.model_vocab_size)
    src = mdlm_ckpt(tmp_path / "mdlm.ckpt", dit(config, 25), dit(config, 26),
                    edit=lambda c: c["state_dict"].pop("backbone.sigma_map.mlp.2.bias"))
    assert main(["convert", str(src), str(tmp_path / "run"), "--tokenizer", str(tok_file)]) == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("didi: error: ") and "missing key(s) e.g. 'sigma_map.mlp.2.bias'" in line
    assert_nothing_written(tmp_path / "run")
    assert main(["export", str(tmp_path / "missing"), str(tmp_path / "hf")]) == 2
    assert "run directory not found" in capsys.readouterr().err


@pytest.mark.parametrize("preset", ["small", "medium", "large"])
@pytest.mark.parametrize("with_rotary", [True, False])
def test_published_sizes_are_inferred_from_shapes(preset, with_rotary):
    """Only shapes are read, so meta tensors of the real sizes suffice (GPT-2 vocabulary, 1024 tokens)."""
    from didi.interop.formats import INV_FREQ, Source, Weights, infer_model_config

    expected = ModelConfig.from_preset(preset, vocab_size=GPT2_VOCAB)
    with torch.device("meta"):
        state = DiT(expected).state_dict()
    if not with_rotary:
        del state[INV_FREQ]
    source = Source(Path("release"), "hf", "didi", {"model": Weights("model.safetensors['*']", state)})
    assert infer_model_config(source) == expected


def test_gpt2_tokenizer_is_referenced_when_its_files_are_unavailable(tmp_path, monkeypatch):
    import didi.interop.formats
    from didi.errors import DataError

    def offline():
        raise DataError("the GPT-2 tokenizer is not available offline")

    monkeypatch.setattr(didi.interop.formats, "gpt2_tokenizer", offline)
    config = tiny_config(GPT2_VOCAB)
    conversion = convert(hf_release(tmp_path / "release", dit(config, 27), None), tmp_path / "run", seq_len=16)
    assert conversion.config.tokenizer == {"type": "gpt2", "vocab_size": 50257, "eot": "<|endoftext|>"}
    assert not (tmp_path / "run" / "tokenizer.json").exists()
    assert "by reference" in conversion.describe()[1]
    assert load_run(tmp_path / "run").tokenizer.vocab_size == 50257  # resolved again at load time
