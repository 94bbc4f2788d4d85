"""``didi convert`` and ``didi.load`` of foreign checkpoints: a file, a directory or a Hub repo id becomes a run
directory (:mod:`.formats` reads it), written whole in one rename or not at all; converted copies are cached.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from ..config import DiffusionConfig
from ..errors import CheckpointError
from ..models.discriminator import empty_discriminator
from ..models.dit import DiT
from ..runtime.cache import announce, cache_root
from ..runtime.checkpoint import (
    RunConfig,
    check_destination,
    is_run_dir,
    load_state_dict_strict,
    save_tensors,
    staged_directory,
    write_run_config,
)
from ..version import __version__
from .formats import (
    GPT2_MODEL_VOCAB,
    GPT2_SPEC,
    HUB_PATTERNS,
    REPO_ID,
    Source,
    fill_rotary,
    infer_model_config,
    map_shadow_params,
    read_source,
    reason,
    resolve_tokenizer,
)


@dataclass
class Conversion:
    """A finished conversion: where it came from, what was written and how every key was mapped."""

    source: Source
    config: RunConfig
    destination: Path

    def describe(self, verbose: bool = False) -> list[str]:
        m, d, tok = self.config.model, self.config.diffusion, self.config.tokenizer
        lines = [f"converted {self.source.path} ({self.source.layout}) -> {self.destination}",
                 f"  kind {self.config.kind}: hidden {m.hidden_size}, {m.n_blocks} blocks, {m.n_heads} heads, "
                 f"cond {m.cond_dim}, vocab {m.vocab_size}, max length {m.max_seq_len}, mask id {d.mask_index}, "
                 f"tokenizer {tok.get('type')} ({tok.get('vocab_size')} tokens"
                 + ("" if "file" in tok else ", by reference: its files are not available here") + ")"]
        for stem, weights in self.source.files.items():
            lines.append(f"  {weights.origin} -> {stem}.safetensors ({len(weights.tensors)} tensors)")
            if verbose:
                lines += [f"    {src} -> {stem}.safetensors['{key}']" for key, src in weights.sources.items()]
        lines += [f"  ignored: {note}" for note in self.source.ignored]
        if not verbose:
            lines.append("  (--verbose lists every key)")
        return lines


def convert(src: str | Path, dst: str | Path, *, tokenizer: str | Path | None = None, n_heads: int | None = None,
            seq_len: int | None = None, force: bool = False) -> Conversion:
    """Convert ``src`` (a checkpoint file, a directory or a Hub repo id) into the run directory ``dst``.

    Everything is read and checked (strict key sets and shapes against the inferred model) before ``dst`` is
    written; ``dst`` appears complete in one rename or not at all.
    """
    dst = Path(dst)
    check_destination(dst, force)
    source = read_source(locate(src))
    model = infer_model_config(source, n_heads=n_heads, seq_len=seq_len)
    if source.shadow_params is not None:
        source.files["ema"] = map_shadow_params(source, model)
    fill_rotary(source.files, model)
    for stem, weights in source.files.items():
        module = empty_discriminator(model) if stem == "discriminator" else DiT(model)
        load_state_dict_strict(module, weights.tensors, f"{source.path} {weights.origin}")
    tok = resolve_tokenizer(source, model.vocab_size, Path(tokenizer) if tokenizer is not None else None)
    mask_index = tok.diffusion_mask_id if tok is not None else GPT2_MODEL_VOCAB - 1
    if source.diffusion_hints.get("mask_index", mask_index) != mask_index:
        raise CheckpointError(f"{source.hints_file}: mask_index is {source.diffusion_hints['mask_index']} but the "
                              f"tokenizer's [MASK] id is {mask_index}")
    diffusion = DiffusionConfig(**{**source.diffusion_hints, "mask_index": mask_index})
    extra = {**source.run_fields.get("extra", {}), "converted_from": str(source.path), "source_layout": source.layout}
    with staged_directory(dst) as tmp:
        spec = tok.save(tmp) if tok is not None else dict(GPT2_SPEC)
        config = RunConfig(kind=source.kind, model=model, tokenizer=spec, diffusion=diffusion,
                           training=source.run_fields.get("training", {}), data=source.run_fields.get("data", {}),
                           extra=extra)
        for stem, weights in source.files.items():
            save_tensors(tmp / f"{stem}.safetensors", weights.tensors, {"source_layout": source.layout})
        write_run_config(tmp, config)
    return Conversion(source, config, dst)


# ------------------------------------------------------------------------------------ Hub, cache, didi.load

def download(repo_id: str) -> Path:
    """Fetch the safetensors and JSON files of a Hub model repo (``huggingface_hub.snapshot_download``)."""
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import HfHubHTTPError, HFValidationError, LocalEntryNotFoundError
    except ImportError as exc:
        raise CheckpointError(f"{repo_id}: not a local path, and downloading from the Hugging Face Hub needs "
                              "huggingface_hub (pip install 'didi[hf]')") from exc
    try:
        return Path(snapshot_download(repo_id, allow_patterns=HUB_PATTERNS))
    except LocalEntryNotFoundError as exc:
        raise CheckpointError(f"{repo_id}: not a local path, and the Hugging Face Hub is unreachable (offline, not "
                              "cached); download the repository files and pass their directory") from exc
    except (OSError, HfHubHTTPError, HFValidationError) as exc:
        raise CheckpointError(f"{repo_id}: not a local path, and the Hub download failed ({type(exc).__name__}: "
                              f"{reason(exc)})") from exc


def locate(src: str | Path) -> Path:
    """A local path as is; ``owner/name`` that is not a local path is downloaded from the Hub, unless its first
    part is a local directory (``runs/typo``): that is a mistyped path, not a repo id."""
    path = Path(src)
    if path.exists():
        return path
    if REPO_ID.fullmatch(str(src)) and not path.parent.is_dir():
        return download(str(src))
    raise CheckpointError(f"{path}: no such file or directory")


def cache_dir() -> Path:
    """The didi cache root (:func:`didi.runtime.cache.cache_root`)."""
    return cache_root()


def _fingerprint(path: Path) -> str:
    """Identify a source by its resolved path and the names, sizes and mtimes of its files."""
    digest = hashlib.sha256(f"didi {__version__}\n{path.resolve()}\n".encode())
    for file in sorted(path.iterdir()) if path.is_dir() else [path]:
        if file.is_file():
            stat = file.stat()
            digest.update(f"{file.name} {stat.st_size} {stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


def as_run_dir(path_or_repo: str | Path) -> Path:
    """``path_or_repo`` itself when it is a run directory, else its conversion, made once under the cache."""
    path = Path(path_or_repo)
    if is_run_dir(path):
        return path
    source = locate(path_or_repo)
    target = cache_dir() / "converted" / _fingerprint(source)
    if not is_run_dir(target):
        convert(source, target, force=True)
        announce(f"conversion of {source}", [target])
    return target
