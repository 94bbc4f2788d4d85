"""Run directories: the on-disk format of every model ``didi`` trains, converts or loads.

Layout::

    RUN_DIR/
      config.json              RunConfig: kind, model, diffusion, tokenizer spec, training settings
      tokenizer.json           tokenizer files (see didi.data.tokenizer)
      model.safetensors        latest weights        } hard links to the newest complete snapshot
      ema.safetensors          latest EMA weights    } (copies where hard links are unsupported)
      trainer_state.pt         optimiser, step, RNG  }
      checkpoints/step-00000200/   complete snapshots, newest ``keep`` kept; used by --resume

Atomicity: a snapshot is written into ``checkpoints/.tmp-step-N-<pid>`` and renamed into place in one
``os.replace``; a directory without the ``.tmp`` prefix is therefore always complete, and a crash mid-save
leaves the previous snapshot (and the top-level files) untouched. Single files are written as temp + fsync +
rename. Safetensors files carry ``{"step": ..., "format": "pt"}`` metadata.

Also here, for every loader and recipe: :func:`is_run_dir` (is a folder a run directory) and :func:`weights_file`
(which weights of a run to load).
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ..config import DiffusionConfig, ModelConfig, from_dict
from ..errors import CheckpointError, ConfigError, require
from ..version import __version__

CONFIG = "config.json"
SNAPSHOT_DIR = "checkpoints"
TRAINER_STATE = "trainer_state.pt"
_SNAPSHOT_RE = re.compile(r"^step-(\d{8,})$")

KINDS = ("mdlm", "ar", "didi")
"""``mdlm``: a masked-diffusion teacher; ``ar``: an autoregressive model; ``didi``: a DiDi-Instruct student."""


@dataclass
class RunConfig:
    """Everything needed to rebuild a model from its run directory (stored as ``config.json``)."""

    kind: str
    model: ModelConfig
    tokenizer: dict[str, Any]
    diffusion: DiffusionConfig | None = None
    training: dict[str, Any] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    didi_version: str = __version__

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any], source: str = CONFIG) -> RunConfig:
        try:
            kind = data["kind"]
            if kind not in KINDS:
                raise CheckpointError(f"{source}: unknown model kind {kind!r} (expected one of {', '.join(KINDS)})")
            diffusion = data.get("diffusion")
            return cls(kind=kind, model=from_dict(ModelConfig, data["model"]), tokenizer=dict(data["tokenizer"]),
                       diffusion=from_dict(DiffusionConfig, diffusion) if diffusion else None,
                       training=dict(data.get("training", {})), data=dict(data.get("data", {})),
                       extra=dict(data.get("extra", {})), didi_version=data.get("didi_version", "unknown"))
        except KeyError as exc:
            raise CheckpointError(f"{source}: missing field {exc.args[0]!r}") from exc
        except (TypeError, ValueError) as exc:
            raise CheckpointError(f"{source}: invalid configuration ({exc})") from exc


# ----------------------------------------------------------------------------------------------- atomic files

def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Call ``write(tmp_path)`` then fsync and rename ``tmp_path`` over ``path`` (all or nothing)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write(tmp)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    _fsync_dir(path.parent)


def check_destination(dst: Path, force: bool) -> None:
    """Refuse to replace a non-empty folder (or a file) ``dst`` unless ``force`` (``didi convert``/``export``)."""
    if dst.exists() and not dst.is_dir():
        raise CheckpointError(f"{dst}: exists and is not a directory")
    if dst.exists() and any(dst.iterdir()) and not force:
        raise CheckpointError(f"{dst}: already exists and is not empty (pass --force to replace it)")


@contextlib.contextmanager
def staged_directory(dst: Path) -> Iterator[Path]:
    """Yield an empty temporary directory that replaces ``dst`` in one rename once the block succeeds."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.parent / f".{dst.name}.tmp-{os.getpid()}"
    old = dst.parent / f".{dst.name}.old-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
        if dst.exists():
            os.replace(dst, old)
            os.replace(tmp, dst)
            shutil.rmtree(old)
        else:
            os.replace(tmp, dst)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_run_files(run_dir: Path, files: dict[str, str]) -> None:
    """Write extra text files beside a run's weights (e.g. ``markov.json``, the corpus' exact language)."""
    for name, text in files.items():
        atomic_write(Path(run_dir) / name, lambda tmp, text=text: Path(tmp).write_text(text))


def write_json(path: Path, data: Any) -> None:
    atomic_write(path, lambda p: p.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n"))


def _file_mode() -> int:
    """The mode ``open()`` gives a new file: 0o666 less the process umask (0o644 with the usual 022)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def save_tensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, Any] | None = None) -> None:
    """Atomically write a safetensors file (tensors made contiguous; shared storage is cloned). ``safetensors``
    creates its files with mode 0600; they get the mode of every other file didi writes (0644 under umask 022)."""
    clean = {k: v.detach().contiguous().clone().cpu() for k, v in tensors.items()}
    meta = {"format": "pt", **{k: str(v) for k, v in (metadata or {}).items()}}

    def write(tmp: Path) -> None:
        save_file(clean, str(tmp), metadata=meta)
        os.chmod(tmp, _file_mode())

    atomic_write(path, write)


def load_tensors(path: Path, device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    """Read a safetensors file; a missing or truncated file gives a one-line :class:`CheckpointError`."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: file not found")
    try:
        return load_file(str(path), device=str(device))
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{path}: not a readable safetensors file (truncated or corrupt: {exc})") from exc


def tensors_metadata(path: Path) -> dict[str, str]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as fh:
            return dict(fh.metadata() or {})
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"{path}: not a readable safetensors file ({exc})") from exc


def load_state_dict_strict(module: torch.nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Load ``state`` into ``module`` requiring identical key sets and shapes; explain any difference in one line."""
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = sorted(k for k in set(own) & set(state) if tuple(own[k].shape) != tuple(state[k].shape))
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing key(s) e.g. {missing[0]!r}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected key(s) e.g. {unexpected[0]!r}")
    if wrong:
        k = wrong[0]
        problems.append(f"{len(wrong)} shape mismatch(es) e.g. {k!r} {tuple(state[k].shape)} vs model "
                        f"{tuple(own[k].shape)}")
    if problems:
        raise CheckpointError(f"{source}: weights do not match the model ({'; '.join(problems)})")
    module.load_state_dict(state, strict=True)


# ------------------------------------------------------------------------------------------------ run config

def write_run_config(run_dir: Path, config: RunConfig) -> None:
    write_json(Path(run_dir) / CONFIG, config.to_json())


def resumed_options(saved: dict[str, Any], overrides: dict[str, Any], resumable: tuple[str, ...],
                    fields: Any, ignore: tuple[str, ...] = ("out",)) -> dict[str, Any]:
    """The saved options of a run (restricted to ``fields``) with ``overrides`` applied; only names in
    ``resumable`` may differ from the saved value (one clear error otherwise), ``None`` and ``ignore`` are skipped."""
    options = {k: v for k, v in saved.items() if k in fields}
    for key, value in overrides.items():
        if value is None or key in ignore:
            continue
        if key not in resumable and options.get(key) != value:
            raise ConfigError(f"--{key.replace('_', '-')}: cannot change when resuming (saved: {options.get(key)!r})")
        options[key] = value
    return options


def is_run_dir(path: str | Path) -> bool:
    """A didi run directory: a ``config.json`` that is a :class:`RunConfig` (has ``kind``; exports and Hugging Face
    configs have none)."""
    config = Path(path) / CONFIG
    try:
        data = json.loads(config.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and "kind" in data


def read_run_config(run_dir: Path) -> RunConfig:
    run_dir = Path(run_dir)
    path = run_dir / CONFIG
    if not run_dir.is_dir():
        raise CheckpointError(f"{run_dir}: run directory not found")
    if not path.exists():
        raise CheckpointError(f"{path}: not found (is {run_dir} a didi run directory?)")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path}: invalid JSON ({exc})") from exc
    return RunConfig.from_json(data, source=str(path))


# ------------------------------------------------------------------------------------------------- snapshots

def weights_file(run_dir: Path, weights: str) -> Path:
    """``ema`` (default, falls back to ``model`` if the run has no EMA) or ``model``."""
    require(weights in ("ema", "model"), "weights", f"must be ema or model (got {weights!r})")
    ema = run_dir / "ema.safetensors"
    if weights == "ema" and ema.exists():
        return ema
    return run_dir / "model.safetensors"


def snapshot_name(step: int) -> str:
    return f"step-{step:08d}"


def list_snapshots(run_dir: Path) -> list[Path]:
    """Complete snapshots of a run, oldest first (in-progress ``.tmp`` directories are ignored)."""
    root = Path(run_dir) / SNAPSHOT_DIR
    if not root.is_dir():
        return []
    snaps = [p for p in root.iterdir() if p.is_dir() and _SNAPSHOT_RE.match(p.name)]
    return sorted(snaps, key=lambda p: int(_SNAPSHOT_RE.match(p.name).group(1)))


def latest_snapshot(run_dir: Path) -> Path | None:
    snaps = list_snapshots(run_dir)
    return snaps[-1] if snaps else None


def check_new_run_dir(run_dir: Path, force: bool = False) -> None:
    """Refuse to start a new run in ``run_dir`` when it already holds a run (continue that with ``--resume``) or,
    unless ``force``, other files (the rule of ``didi convert``/``export``: never write among the user's files)."""
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise CheckpointError(f"{run_dir}: exists and is not a directory")
    if (run_dir / CONFIG).exists() or latest_snapshot(run_dir) is not None:
        raise CheckpointError(f"{run_dir}: already holds a run; continue it with --resume or choose another --out")
    if run_dir.is_dir() and not force and any(run_dir.iterdir()):
        raise CheckpointError(f"{run_dir}: already exists and is not empty (pass --force to write the run into it)")


def completed_steps(run_dir: Path) -> int:
    """The step of the run's latest complete snapshot (0 when it has none)."""
    snapshot = latest_snapshot(run_dir)
    return int(_SNAPSHOT_RE.match(snapshot.name).group(1)) if snapshot is not None else 0


def _publish(src: Path, dst: Path) -> None:
    """Make ``dst`` show ``src`` atomically: a hard link renamed over ``dst`` (a copy if links are unsupported)."""
    tmp = dst.with_name(f".{dst.name}.tmp-{os.getpid()}")
    if tmp.exists():
        tmp.unlink()
    try:
        os.link(src, tmp)
    except OSError:
        shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


def save_snapshot(run_dir: Path, step: int, tensors: dict[str, dict[str, torch.Tensor]], state: dict[str, Any],
                  *, keep: int = 2) -> Path:
    """Write a complete snapshot and publish it at the top level of the run directory.

    ``tensors`` maps a file stem (``model``, ``ema``, ``discriminator``, ...) to a state dict; ``state`` is the
    trainer state (optimisers, step, RNG) saved as ``trainer_state.pt``. Older snapshots beyond ``keep`` are
    removed only after the new one is in place.
    """
    run_dir = Path(run_dir)
    root = run_dir / SNAPSHOT_DIR
    root.mkdir(parents=True, exist_ok=True)
    final = root / snapshot_name(step)
    tmp = root / f".tmp-{snapshot_name(step)}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        for stem, sd in tensors.items():
            save_tensors(tmp / f"{stem}.safetensors", sd, {"step": step})
        atomic_write(tmp / TRAINER_STATE, lambda p: torch.save({**state, "step": step}, p))
        _fsync_dir(tmp)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        _fsync_dir(root)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    for f in sorted(final.iterdir()):
        _publish(f, run_dir / f.name)
    _fsync_dir(run_dir)
    for old in list_snapshots(run_dir)[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def load_trainer_state(snapshot: Path) -> dict[str, Any]:
    path = Path(snapshot) / TRAINER_STATE
    if not path.exists():
        raise CheckpointError(f"{path}: not found")
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # noqa: BLE001 - torch raises many types for corrupt pickles
        raise CheckpointError(f"{path}: cannot read trainer state (truncated or corrupt: {exc})") from exc


def clean_stale_tmp(run_dir: Path) -> None:
    """Remove leftovers of interrupted saves (never touches complete snapshots)."""
    root = Path(run_dir) / SNAPSHOT_DIR
    if root.is_dir():
        for p in root.iterdir():
            if p.name.startswith(".tmp-"):
                shutil.rmtree(p, ignore_errors=True)
