"""The checkpoint layouts ``didi convert`` reads: key tables, readers, and the model size inferred from the tensors.

Source layouts (key names of the MDLM/DUO and DiDi-Instruct code, ``reference-formats.md`` §1) and the
run-directory files they become:

* ``lightning-mdlm``: MDLM/DUO ``.ckpt``. ``state_dict['backbone.*']`` -> ``model``; the top-level
  ``ema['shadow_params']`` (a list in ``backbone.parameters()`` order, buffers excluded) -> ``ema``.
* ``lightning-didi``: DiDi-Instruct ``.ckpt``. ``state_dict['student_ema.*']`` -> ``ema`` (or ``model`` when the
  checkpoint has no raw student), ``['backbone.*']`` -> ``model``, ``['discriminator.*']`` -> ``discriminator``.
* ``hf``: a directory with ``model.safetensors`` (bare DiT keys) -> ``model`` and optionally
  ``discriminator.safetensors`` -> ``discriminator``: the DiDi-Instruct release and ``didi export`` output.
* ``hf-mdlm``: a directory whose ``model.safetensors`` nests the DiT under ``backbone.`` (``kuleshov-group/mdlm-owt``).
* ``didi-run``: a didi run directory; its top-level weights files are re-checked and copied.

Every tensor is routed by an explicit prefix table; keys no rule accounts for, missing keys and shape mismatches
stop the conversion with one line before anything is written. The model size is read from the tensor shapes
(the number of heads from the rotary buffer ``rotary_emb.inv_freq``, which holds ``head_dim / 2`` values).
"""
from __future__ import annotations

import json
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..config import PRESETS, ModelConfig, to_dict
from ..data.tokenizer import EOT, Tokenizer, gpt2_tokenizer, load_tokenizer
from ..errors import CheckpointError, DidiError, option_error
from ..models.dit import DiT, Rotary
from ..runtime.checkpoint import CONFIG, is_run_dir, load_tensors, read_run_config

# --------------------------------------------------------------------------------------------- key tables

# Lightning ``state_dict`` prefix -> run-directory file.
MDLM_PREFIXES = {"backbone.": "model"}
DIDI_PREFIXES = {"backbone.": "model", "student_ema.": "ema", "discriminator.": "discriminator"}

# Lightning ``state_dict`` entries that are dropped on purpose, with the reason reported to the user.
IGNORED_PREFIXES = {
    "teacher.": "frozen teacher copy (DUO distillation / DiDi-Instruct)",
    "metrics.": "torchmetrics state",
    "reward_baseline": "DiDi-Instruct reward baseline buffer (training only)",
}

# Fields of a Hugging Face style config.json -> (section, didi field). Names follow kuleshov-group/mdlm-owt where
# it has the field; ``didi export`` writes the same names so that export -> convert round-trips.
HF_CONFIG_FIELDS = {
    "vocab_size": ("model", "vocab_size"),
    "hidden_dim": ("model", "hidden_size"),
    "n_blocks": ("model", "n_blocks"),
    "n_heads": ("model", "n_heads"),
    "cond_dim": ("model", "cond_dim"),
    "model_length": ("model", "max_seq_len"),
    "mlp_ratio": ("model", "mlp_ratio"),
    "rotary_base": ("model", "rotary_base"),
    "dropout": ("model", "dropout"),
    "mask_index": ("diffusion", "mask_index"),
    "noise_eps": ("diffusion", "eps"),
    "sampling_eps": ("diffusion", "sampling_eps"),
    "time_conditioning": ("diffusion", "time_conditioning"),
}

WEIGHT_FILES = ("model", "ema", "discriminator")
GPT2_MODEL_VOCAB = 50258  # 50257 GPT-2 tokens + the diffusion [MASK]
GPT2_SPEC = {"type": "gpt2", "vocab_size": GPT2_MODEL_VOCAB - 1, "eot": EOT}
INV_FREQ = "rotary_emb.inv_freq"
HUB_PATTERNS = ["*.safetensors", "*.json"]
REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


@dataclass
class Weights:
    """One run-directory weights file being assembled: target key -> tensor, and the source of each tensor."""

    origin: str  # where the tensors come from, e.g. "state_dict['backbone.*']"
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    sources: dict[str, str] = field(default_factory=dict)

    def add(self, key: str, tensor: torch.Tensor, source: str) -> None:
        self.tensors[key] = tensor
        self.sources[key] = source


@dataclass
class Source:
    """What a reader found: weights per run-directory file, dropped entries and configuration hints."""

    path: Path
    layout: str
    kind: str
    files: dict[str, Weights]
    ignored: list[str] = field(default_factory=list)
    model_hints: dict[str, Any] = field(default_factory=dict)  # ModelConfig fields from a config file
    diffusion_hints: dict[str, Any] = field(default_factory=dict)  # DiffusionConfig fields
    hints_file: str = ""
    tokenizer_spec: dict[str, Any] | None = None  # a tokenizer shipped in ``path`` (didi runs and exports)
    run_fields: dict[str, Any] = field(default_factory=dict)  # training/data/extra carried over from a run dir
    shadow_params: list[torch.Tensor] | None = None  # Lightning EMA, mapped once the model size is known


# ------------------------------------------------------------------------------------------------ reading

class _Inert:
    """Stands in for a pickled Python object that is not a tensor (Lightning hyper-parameters, tokenizers)."""

    def __new__(cls, *args: Any, **kwargs: Any) -> _Inert:
        return super().__new__(cls)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        pass


def reason(exc: BaseException) -> str:
    """The first sentence of an exception message, to keep errors on one line."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text.split(". ")[0]


def load_lightning_checkpoint(path: Path) -> dict[str, Any]:
    """``torch.load`` a Lightning checkpoint without running pickled code.

    Tensors are restored as usual; other pickled objects (omegaconf configs, tokenizers in ``hyper_parameters``)
    become inert placeholders instead of being imported and executed.
    """
    try:
        names = torch.serialization.get_unsafe_globals_in_checkpoint(path) if zipfile.is_zipfile(path) else []
        inert = [(type(n.rpartition(".")[2], (_Inert,), {"__module__": n.rpartition(".")[0]}), n) for n in names]
        with torch.serialization.safe_globals(inert):
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises many types for corrupt archives and pickles
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint (truncated or corrupt: {reason(exc)})") \
            from exc
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("state_dict"), dict):
        raise CheckpointError(f"{path}: not a Lightning checkpoint (no 'state_dict' dictionary)")
    return ckpt


def _route(path: Path, container: str, state: dict[str, Any], prefixes: dict[str, str],
           ignored: dict[str, str]) -> tuple[dict[str, Weights], list[str]]:
    """Send every key of ``state`` to a run-directory file by prefix; refuse keys that no rule accounts for."""
    files: dict[str, Weights] = {}
    dropped: dict[str, int] = {}
    unknown = []
    for key, tensor in state.items():
        prefix = next((p for p in prefixes if key.startswith(p)), None)
        rule = next((p for p in ignored if key.startswith(p)), None)
        if prefix is not None and isinstance(tensor, torch.Tensor):
            weights = files.setdefault(prefixes[prefix], Weights(f"{container}['{prefix}*']"))
            weights.add(key[len(prefix):], tensor, f"{container}['{key}']")
        elif rule is not None:
            dropped[rule] = dropped.get(rule, 0) + 1
        else:
            unknown.append(key)
    if unknown:
        expected = ", ".join(f"{p}*" if p else "bare DiT keys" for p in prefixes)
        raise CheckpointError(f"{path}: {len(unknown)} unknown key(s) in {container} e.g. {unknown[0]!r} "
                              f"(expected {expected}); refusing a partial conversion")
    notes = [f"{container}['{p}*'] ({n} keys): {ignored[p]}" for p, n in dropped.items()]
    return files, notes


def read_lightning(path: Path) -> Source:
    """An MDLM/DUO or DiDi-Instruct Lightning ``.ckpt``."""
    ckpt = load_lightning_checkpoint(path)
    state = ckpt["state_dict"]
    student = any(k.startswith(("student_ema.", "discriminator.")) for k in state)
    files, ignored = _route(path, "state_dict", state, DIDI_PREFIXES if student else MDLM_PREFIXES,
                            IGNORED_PREFIXES)
    source = Source(path, "lightning-didi" if student else "lightning-mdlm", "didi" if student else "mdlm", files,
                    ignored)
    ema = ckpt.get("ema")
    if ema is not None and student:
        source.ignored.append("ema: Lightning EMA of the raw student (DiDi-Instruct samples with student_ema)")
    elif ema is not None:
        shadow = ema.get("shadow_params") if isinstance(ema, dict) else None
        if not isinstance(shadow, (list, tuple)) or not all(isinstance(t, torch.Tensor) for t in shadow):
            raise CheckpointError(f"{path}: 'ema' has no 'shadow_params' list of tensors")
        source.shadow_params = list(shadow)
    metadata = sorted(k for k in ckpt if k not in ("state_dict", "ema"))
    if metadata:
        source.ignored.append(f"{', '.join(metadata)}: Lightning training state (not weights)")
    if student and "model" not in files and "ema" in files:
        files["model"] = files.pop("ema")  # the released student is its EMA; there are no raw weights
    if "model" not in files:
        raise CheckpointError(f"{path}: no model weights (no 'backbone.*' or 'student_ema.*' keys in state_dict)")
    return source


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path}: invalid JSON ({reason(exc)})") from exc
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a JSON object")
    return data


def read_hf_directory(path: Path) -> Source:
    """A Hugging Face style directory: ``model.safetensors`` (bare or ``backbone.``-nested keys), optional
    ``discriminator.safetensors`` (bare keys) and ``config.json``."""
    model_path = path / "model.safetensors"
    if not model_path.is_file():
        raise CheckpointError(f"{path}: no model.safetensors (expected a DiDi-Instruct/MDLM Hugging Face "
                              "directory, a `didi export` or a didi run directory)")
    state = load_tensors(model_path)
    nested = any(k.startswith("backbone.") for k in state)
    files, ignored = _route(path, "model.safetensors", state, {"backbone." if nested else "": "model"}, {})
    disc_path = path / "discriminator.safetensors"
    if disc_path.is_file():
        disc, _ = _route(path, "discriminator.safetensors", load_tensors(disc_path), {"": "discriminator"}, {})
        files.update(disc)
    source = Source(path, "hf-mdlm" if nested else "hf", "didi" if disc_path.is_file() else "mdlm", files, ignored)
    config_path = path / CONFIG
    if config_path.is_file():
        config = _read_json(config_path)
        source.hints_file = str(config_path)
        for name, (section, key) in HF_CONFIG_FIELDS.items():
            if name in config:
                hints = source.model_hints if section == "model" else source.diffusion_hints
                hints[key] = config[name]
        if "didi_kind" in config:  # written by `didi export`
            if config["didi_kind"] not in ("mdlm", "didi"):
                raise CheckpointError(f"{config_path}: unknown didi_kind {config['didi_kind']!r} "
                                      "(expected mdlm or didi)")
            source.kind = config["didi_kind"]
            source.tokenizer_spec = config.get("tokenizer")
    return source


def read_run_directory(path: Path) -> Source:
    """A didi run directory: its top-level weights files, config and tokenizer."""
    config = read_run_config(path)
    if config.kind not in ("mdlm", "didi") or config.diffusion is None:
        raise CheckpointError(f"{path}: is a {config.kind!r} run; convert handles masked-diffusion models")
    files = {}
    for stem in WEIGHT_FILES:
        file = path / f"{stem}.safetensors"
        if file.is_file():
            files.update(_route(path, file.name, load_tensors(file), {"": stem}, {})[0])
    if "model" not in files:
        raise CheckpointError(f"{path / 'model.safetensors'}: file not found")
    return Source(path, "didi-run", config.kind, files, model_hints=to_dict(config.model),
                  diffusion_hints=to_dict(config.diffusion), hints_file=str(path / CONFIG),
                  tokenizer_spec=config.tokenizer,
                  run_fields={"training": config.training, "data": config.data, "extra": config.extra})


def read_source(path: Path) -> Source:
    """Detect the layout of a local file or directory and read it."""
    if path.is_file():
        if path.suffix == ".safetensors":
            raise CheckpointError(f"{path}: pass the directory that holds the safetensors files, not the file")
        return read_lightning(path)
    if is_run_dir(path):
        return read_run_directory(path)
    return read_hf_directory(path)


# ------------------------------------------------------------------------------------------ configuration

def _shape(state: dict[str, torch.Tensor], key: str, ndim: int, origin: str) -> tuple[int, ...]:
    if key not in state:
        raise CheckpointError(f"{origin}: weights do not match the model (missing key {key!r})")
    shape = tuple(state[key].shape)
    if len(shape) != ndim:
        raise CheckpointError(f"{origin}: weights do not match the model ({key!r} has shape {shape})")
    return shape


def _n_heads(source: Source, hidden: int, n_heads: int | None, origin: str) -> int:
    """Heads from the rotary buffer (head_dim = 2 * len(inv_freq)), else --n-heads, the config file or the preset."""
    state = source.files["model"].tensors
    if INV_FREQ in state:
        head_dim = 2 * _shape(state, INV_FREQ, 1, origin)[0]
        if hidden % head_dim:
            raise CheckpointError(f"{origin}: {INV_FREQ} gives head dim {head_dim}, which does not divide hidden "
                                  f"size {hidden}")
        inferred = hidden // head_dim
        if n_heads is not None and n_heads != inferred:
            raise option_error("n-heads", f"{n_heads} disagrees with {origin} ({INV_FREQ} gives {inferred} heads)")
        return inferred
    if n_heads is not None:
        return n_heads
    if "n_heads" in source.model_hints:
        return source.model_hints["n_heads"]
    presets = {p["n_heads"] for p in PRESETS.values() if p["hidden_size"] == hidden}
    if len(presets) != 1:
        raise option_error("n-heads", f"cannot infer the attention heads of {origin} (no {INV_FREQ}, hidden size "
                                      f"{hidden} is not a preset width): pass --n-heads")
    return presets.pop()


def infer_model_config(source: Source, n_heads: int | None = None, seq_len: int | None = None) -> ModelConfig:
    """The DiT size from the tensor shapes; config-file hints must agree, options override free fields."""
    origin = f"{source.path} {source.files['model'].origin}"
    state = source.files["model"].tensors
    vocab, hidden = _shape(state, "vocab_embed.embedding", 2, origin)
    cond_dim = _shape(state, "sigma_map.mlp.0.weight", 2, origin)[0]
    mlp_hidden = _shape(state, "blocks.0.mlp.0.weight", 2, origin)[0]
    n_blocks = 1 + max(int(k.split(".")[1]) for k in state if re.match(r"blocks\.\d+\.", k))
    shapes = dict(vocab_size=vocab, hidden_size=hidden, cond_dim=cond_dim, n_blocks=n_blocks,
                  mlp_ratio=mlp_hidden // hidden, n_heads=_n_heads(source, hidden, n_heads, origin))
    for name, value in shapes.items():
        if name in source.model_hints and source.model_hints[name] != value:
            raise CheckpointError(f"{source.hints_file}: {name} is {source.model_hints[name]} but the weights "
                                  f"have {value}")
    values = {k: v for k, v in source.model_hints.items() if k != "arch"}
    values.update(shapes, max_seq_len=seq_len if seq_len is not None else values.get("max_seq_len", 1024))
    try:
        return ModelConfig(**values)
    except TypeError as exc:
        raise CheckpointError(f"{source.hints_file}: invalid model settings ({exc})") from exc


def map_shadow_params(source: Source, config: ModelConfig) -> Weights:
    """Lightning EMA ``shadow_params`` (``backbone.parameters()`` order) -> named tensors, plus the model's
    buffers, which the EMA does not track."""
    with torch.device("meta"):
        reference = DiT(config)
    names = [(name, tuple(p.shape)) for name, p in reference.named_parameters()]
    shadow = source.shadow_params
    if len(shadow) != len(names):
        raise CheckpointError(f"{source.path}: ema['shadow_params'] has {len(shadow)} tensors but the model has "
                              f"{len(names)} parameters")
    model = source.files["model"]
    ema = Weights(f"ema['shadow_params'] + buffers of {model.origin}")
    for i, ((name, shape), tensor) in enumerate(zip(names, shadow, strict=True)):
        if tuple(tensor.shape) != shape:
            raise CheckpointError(f"{source.path}: ema['shadow_params'][{i}] ({name}) has shape "
                                  f"{tuple(tensor.shape)} vs model {shape}")
        ema.add(name, tensor, f"ema['shadow_params'][{i}]")
    for name, _ in reference.named_buffers():
        if name in model.tensors:
            ema.add(name, model.tensors[name], model.sources[name])
    return ema


def fill_rotary(files: dict[str, Weights], config: ModelConfig) -> None:
    """``rotary_emb.inv_freq`` is a function of the head dim; recompute it where a file omits it (reported)."""
    for weights in files.values():
        if INV_FREQ not in weights.tensors:
            inv_freq = Rotary(config.head_dim, config.rotary_base).inv_freq
            weights.add(INV_FREQ, inv_freq, f"(computed: head dim {config.head_dim}, base {config.rotary_base:g})")


def read_tokenizer(path: Path) -> Tokenizer:
    """A tokenizer given with ``--tokenizer``: a ``tokenizer.json`` file or a didi run directory."""
    path = Path(path)
    if path.is_dir():
        return load_tokenizer(path, read_run_config(path).tokenizer)
    if not path.is_file():
        raise option_error("tokenizer", f"{path}: not found")
    return load_tokenizer(path.parent, {"type": "bpe", "file": path.name})


def resolve_tokenizer(source: Source, vocab_size: int, tokenizer: Path | None) -> Tokenizer | None:
    """The tokenizer of the converted model; ``None`` means "GPT-2 by reference" (files not available here)."""
    if tokenizer is not None:
        tok = read_tokenizer(tokenizer)
    elif source.tokenizer_spec is not None:
        tok = load_tokenizer(source.path, source.tokenizer_spec)
    elif vocab_size == GPT2_MODEL_VOCAB:
        try:
            tok = gpt2_tokenizer()
        except DidiError:
            return None
    else:
        raise option_error("tokenizer", f"{source.path} embeds {vocab_size} ids, not GPT-2's {GPT2_MODEL_VOCAB}: "
                                        "pass the tokenizer it was trained with (a tokenizer.json or a run directory)")
    if tok.model_vocab_size != vocab_size:
        raise option_error("tokenizer", f"{tok.describe()} needs {tok.model_vocab_size} embedding rows (tokens + "
                                        f"[MASK]) but {source.path} has {vocab_size}: wrong tokenizer")
    return tok
