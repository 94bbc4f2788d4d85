"""``didi export``: a diffusion run directory in the Hugging Face layout (what the DiDi-Instruct release uses), and
its upload to the Hub."""
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


def hf_config(config: RunConfig, tokenizer_spec: dict[str, Any], weights: str) -> dict[str, Any]:
    """The ``config.json`` of an export: model size and diffusion settings under mdlm-owt style names."""
    sections = {"model": to_dict(config.model), "diffusion": to_dict(config.diffusion)}
    out: dict[str, Any] = {"didi_kind": config.kind, "didi_version": __version__, "weights": weights}
    out.update({name: sections[section][key] for name, (section, key) in HF_CONFIG_FIELDS.items()})
    out["tokenizer"] = tokenizer_spec
    return out


def _model_card(config: RunConfig) -> str:
    what = "DiDi-Instruct student" if config.kind == "didi" else "masked diffusion (MDLM) language model"
    return (f"---\ntags: [didi, masked-diffusion]\n---\n\n# {what}\n\n"
            f"Exported by didi {__version__}: `model.safetensors` (DiT weights, bare keys)"
            + (", `discriminator.safetensors`" if config.kind == "didi" else "")
            + ", `config.json`, tokenizer files.\n\n"
            "```bash\ndidi convert THIS_REPO_OR_DIR run/\ndidi sample --model run/ --nfe 16\n```\n")


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
        write_json(tmp / CONFIG, hf_config(config, spec, weights=paths["model"].stem))
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
