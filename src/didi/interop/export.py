"""``didi export``: a diffusion run directory in the Hugging Face layout (what the DiDi-Instruct release uses), which
plain ``transformers`` also loads (``trust_remote_code=True``, without didi), and its upload to the Hub.

The folder: ``model.safetensors`` (bare DiT keys; ``discriminator.safetensors`` for a student), ``config.json``
(the mdlm-owt style fields ``didi convert`` reads, plus ``model_type``, ``auto_map`` and the special token ids that
Transformers reads), ``configuration_didi.py`` and ``modeling_didi.py`` (:mod:`.remote_code`), the tokenizer as
``tokenizer.json`` + ``tokenizer_config.json`` (:mod:`.hf_tokenizer`) and a model card.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from ..config import to_dict
from ..data.tokenizer import load_tokenizer
from ..errors import CheckpointError, option_error
from ..models.load import build_network, discriminator_for
from ..runtime.checkpoint import (
    CONFIG,
    RunConfig,
    check_destination,
    load_state_dict_strict,
    load_tensors,
    read_run_config,
    save_tensors,
    staged_directory,
    weights_file,
    write_json,
)
from ..version import __version__
from .formats import HF_CONFIG_FIELDS, reason
from .hf_tokenizer import write_hf_tokenizer
from .remote_code import write_remote_code

MODEL_TYPE = "didi"
AUTO_MAP = {"AutoConfig": "configuration_didi.DiDiConfig", "AutoModel": "modeling_didi.DiDiForMaskedLM",
            "AutoModelForMaskedLM": "modeling_didi.DiDiForMaskedLM"}


def hf_config(config: RunConfig, tokenizer_spec: dict[str, Any], weights: str,
              special_ids: dict[str, int] | None = None) -> dict[str, Any]:
    """The ``config.json`` of an export: model size and diffusion settings under mdlm-owt style names, and what
    Transformers needs (``model_type``, ``architectures``, ``auto_map``, special token ids)."""
    sections = {"model": to_dict(config.model), "diffusion": to_dict(config.diffusion)}
    out: dict[str, Any] = {"model_type": MODEL_TYPE, "architectures": ["DiDiForMaskedLM"], "auto_map": AUTO_MAP,
                           "didi_kind": config.kind, "didi_version": __version__, "weights": weights}
    out.update({name: sections[section][key] for name, (section, key) in HF_CONFIG_FIELDS.items()})
    out.update(special_ids or {})
    out["tokenizer"] = tokenizer_spec
    return out


def _model_card(config: RunConfig) -> str:
    what = "DiDi-Instruct student" if config.kind == "didi" else "masked diffusion (MDLM) language model"
    nfe = 8 if config.kind == "didi" else 128
    return (f"---\ntags: [didi, masked-diffusion]\nlibrary_name: transformers\n---\n\n# {what}\n\n"
            f"Exported by didi {__version__}: `model.safetensors` (DiT weights, bare keys)"
            + (", `discriminator.safetensors` (for didi's RGAS sampler)" if config.kind == "didi" else "")
            + ", `config.json`, the tokenizer (`tokenizer.json`, `tokenizer_config.json`) and the model's code "
            "(`configuration_didi.py`, `modeling_didi.py`: didi's own network and ancestral sampler).\n\n"
            "With Transformers alone:\n\n```python\n"
            "from transformers import AutoModelForMaskedLM, AutoTokenizer\n\n"
            "model = AutoModelForMaskedLM.from_pretrained(THIS_REPO_OR_DIR, trust_remote_code=True)\n"
            "tok = AutoTokenizer.from_pretrained(THIS_REPO_OR_DIR, trust_remote_code=True)\n"
            f"out = model.sample(4, num_steps={nfe}, seed=0)  # out.tokens, out.nfe; prompt_ids=tok(text).input_ids\n"
            "print(tok.batch_decode(out.tokens, skip_special_tokens=True))\n```\n\n"
            "With didi:\n\n"
            f"```bash\ndidi convert THIS_REPO_OR_DIR run/\ndidi sample --model run/ --nfe {nfe}\n```\n")


def export(run_dir: str | Path, dst: str | Path, *, weights: str = "ema", force: bool = False) -> list[Path]:
    """Write ``run_dir`` in the Hugging Face layout (what the DiDi-Instruct release uses); return the files."""
    run_dir, dst = Path(run_dir), Path(dst)
    config = read_run_config(run_dir)
    if config.kind not in ("mdlm", "didi") or config.diffusion is None:
        raise CheckpointError(f"{run_dir}: is a {config.kind!r} run; export handles masked-diffusion models")
    check_destination(dst, force)
    paths = {"model": weights_file(run_dir, weights)}
    if (run_dir / "discriminator.safetensors").is_file():
        paths["discriminator"] = run_dir / "discriminator.safetensors"
    tensors = {stem: load_tensors(path) for stem, path in paths.items()}
    for stem, state in tensors.items():
        module = discriminator_for(config) if stem == "discriminator" else build_network(config.model)
        load_state_dict_strict(module, state, str(paths[stem]))
    tokenizer = load_tokenizer(run_dir, config.tokenizer)
    with staged_directory(dst) as tmp:
        for stem, state in tensors.items():
            save_tensors(tmp / f"{stem}.safetensors", state, {"didi_kind": config.kind})
        spec = tokenizer.save(tmp)
        special_ids = write_hf_tokenizer(tokenizer, tmp, mask_id=config.diffusion.mask_index,
                                         model_length=config.model.max_seq_len)
        write_json(tmp / CONFIG, hf_config(config, spec, weights=paths["model"].stem, special_ids=special_ids))
        write_remote_code(tmp)
        (tmp / "README.md").write_text(_model_card(config))
    return sorted(dst.iterdir())


def push_to_hub(folder: str | Path, repo_id: str, *, private: bool = False) -> str:
    """Upload an exported folder to a Hub model repo, creating it if needed; return the repo URL."""
    try:
        from huggingface_hub import HfApi
        from huggingface_hub.errors import HfHubHTTPError, HFValidationError
    except ImportError as exc:
        raise option_error("push-to-hub", "needs huggingface_hub (pip install 'didi[hf]')") from exc
    api = HfApi()
    try:
        url = api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
        api.upload_folder(repo_id=repo_id, folder_path=str(folder), repo_type="model",
                          commit_message=f"Upload model exported by didi {__version__}")
    except (OSError, HfHubHTTPError, HFValidationError) as exc:
        raise option_error("push-to-hub", f"upload to {repo_id} failed ({type(exc).__name__}: {reason(exc)})") \
            from exc
    return str(url)
