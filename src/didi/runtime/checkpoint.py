"""Run directories: the on-disk format of every model ``didi`` trains, converts or loads.

Layout::

    RUN_DIR/
      config.json              RunConfig: kind, model, diffusion, tokenizer spec, training settings
      tokenizer.json           tokenizer files (see didi.data.tokenizer)
      model.safetensors        latest weights        } hard links to the newest complete snapshot
      ema.safetensors          latest EMA weights    } (copies where hard links are unsupported)
      trainer_state.pt         optimiser, step, RNG  }
      metrics.jsonl            one JSON record per logged step
      .didi-lock               the writer's lock and its record (pid, host, command, start time)
      checkpoints/step-00000200/   complete snapshots (+ manifest.json), newest ``keep`` kept; used by --resume

Atomicity: a snapshot is written into ``checkpoints/.tmp-step-N-<pid>`` and renamed into place in one
``os.replace``; a directory without the ``.tmp`` prefix is therefore always complete, and a crash mid-save
leaves the previous snapshot (and the top-level files) untouched. Single files are written as temp + fsync +
rename. Safetensors files carry ``{"step": ..., "format": "pt"}`` metadata; each snapshot has a ``manifest.json``
of its files' sizes and digests, checked on resume (:func:`resume_snapshot` falls back to the newest intact one).

One writer: the recipes take a run directory with :func:`claim_new_run` / :func:`claim_run`, which hold its
:class:`~didi.runtime.lock.RunLock` (``.didi-lock``) for the run's life; ``config.json`` is the last file a new
run writes before training, so a folder with one and no snapshot resumes from step 0.

Also here, for every loader and recipe: :func:`is_run_dir` (is a folder a run directory), :func:`weights_file`
(which weights of a run to load) and :func:`config_section` (a config dataclass from a saved file, with one-line
errors naming the field).
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import shutil
import sys
import time
import types
import typing
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ..config import DiffusionConfig, ModelConfig, from_dict
from ..errors import CheckpointError, ConfigError, require
from ..version import __version__
from .integrity import check_file, file_record
from .lock import LOCK_FILE, RunLock

T = TypeVar("T")

CONFIG = "config.json"
SNAPSHOT_DIR = "checkpoints"
TRAINER_STATE = "trainer_state.pt"
MANIFEST = "manifest.json"
"""In every snapshot: the step and the size and digest of each file (:mod:`didi.runtime.integrity`)."""
METRICS = "metrics.jsonl"
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
        """Read a ``config.json``; a missing field, a value of the wrong type or out of range is one
        :class:`CheckpointError` naming the field (``config.json: model.hidden_size must be int (got '32')``)."""
        if not isinstance(data, dict):
            raise CheckpointError(f"{source}: must hold a JSON object (got {type(data).__name__})")
        for name in ("kind", "model", "tokenizer"):
            if name not in data:
                raise CheckpointError(f"{source}: missing field {name!r}")
        kind = data["kind"]
        if kind not in KINDS:
            raise CheckpointError(f"{source}: unknown model kind {kind!r} (expected one of {', '.join(KINDS)})")
        sections = {}
        for name in ("tokenizer", "training", "data", "extra"):
            value = data.get(name, {})
            if not isinstance(value, dict):
                raise CheckpointError(f"{source}: {name} must be a JSON object (got {type(value).__name__})")
            sections[name] = dict(value)
        model = config_section(ModelConfig, data["model"], "model", source)
        diffusion = config_section(DiffusionConfig, data["diffusion"], "diffusion", source) \
            if data.get("diffusion") else None
        if diffusion is not None and not diffusion.mask_index < model.vocab_size:
            raise CheckpointError(f"{source}: diffusion.mask_index {diffusion.mask_index} is not a token of the model "
                                  f"(model.vocab_size {model.vocab_size})")
        return cls(kind=kind, model=model, diffusion=diffusion, didi_version=str(data.get("didi_version", "unknown")),
                   **sections)


def _accepts(hint: Any, value: Any) -> bool:
    """Whether a JSON ``value`` fits a dataclass field annotated ``hint`` (int, float, bool, str, X | None)."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return any(_accepts(h, value) for h in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint in (bool, str):
        return isinstance(value, hint)
    return True


def config_section(cls: type[T], data: Any, section: str, source: str) -> T:
    """The config dataclass ``cls`` from the ``section`` object of a saved file (unknown keys ignored); a wrong
    type or an invalid value is one :class:`CheckpointError` naming ``section.field``."""
    if not isinstance(data, dict):
        raise CheckpointError(f"{source}: {section} must be a JSON object (got {type(data).__name__})")
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name in data and not _accepts(hints[f.name], data[f.name]):
            expected = getattr(hints[f.name], "__name__", str(hints[f.name]))
            raise CheckpointError(f"{source}: {section}.{f.name} must be {expected} (got {data[f.name]!r})")
    try:
        return from_dict(cls, data)
    except ConfigError as exc:
        raise CheckpointError(f"{source}: {section}: {exc}") from None


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
    """Refuse to replace a non-empty folder (or a file) ``dst`` unless ``force`` (``didi convert``/``export``), and
    a run folder that a training or distillation is writing, even with ``force``."""
    if dst.exists() and not dst.is_dir():
        raise CheckpointError(f"{dst}: exists and is not a directory")
    if dst.exists() and any(dst.iterdir()) and not force:
        raise CheckpointError(f"{dst}: already exists and is not empty (pass --force to replace it)")
    if (dst / LOCK_FILE).exists():
        with RunLock(dst) as lock:
            lock.acquire(create=False)  # raises, naming the writer, while a run is being written there


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


def check_new_run_dir(run_dir: Path, force: bool = False, lock: RunLock | None = None) -> None:
    """Refuse to start a new run in ``run_dir`` when it holds a run with a complete snapshot (continue that with
    ``--resume``) or, unless ``force``, anything else: other files (the rule of ``didi convert``/``export``: never
    write among the user's files) or a run whose start was interrupted before its first snapshot (``--force``
    restarts it, ``--resume`` continues it from step 0). The run's lock file alone does not count. With ``lock``,
    a folder with a lock file or a run is first locked, so that a run another process is writing is refused as
    such, also in the moment between its lock and its config.json (a writer takes the lock before any write)."""
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise CheckpointError(f"{run_dir}: exists and is not a directory")
    if lock is not None and ((run_dir / LOCK_FILE).exists() or (run_dir / CONFIG).exists()
                             or latest_snapshot(run_dir) is not None):
        lock.acquire(create=False)
    if latest_snapshot(run_dir) is not None:
        raise CheckpointError(f"{run_dir}: already holds a run; continue it with --resume or choose another --out")
    if force:
        return
    if (run_dir / CONFIG).exists():
        raise CheckpointError(f"{run_dir}: holds a run that stopped before its first snapshot: continue it from step 0 "
                              "with --resume, or start it again with --force")
    if run_dir.is_dir() and any(p.name != LOCK_FILE for p in run_dir.iterdir()):
        raise CheckpointError(f"{run_dir}: already exists and is not empty (pass --force to write the run into it)")


def claim_new_run(run_dir: Path, lock: RunLock, force: bool = False) -> None:
    """Take ``run_dir`` for a new run: the write lock (refused while another process writes there), the checks of
    :func:`check_new_run_dir` under it (another run may have started since they were first made), and the leftovers
    of an interrupted start (its ``metrics.jsonl``, partial snapshots) removed. Call it before the first write."""
    lock.acquire(create=True)
    check_new_run_dir(run_dir, force)
    if is_run_dir(run_dir) and (run_dir / METRICS).exists():
        (run_dir / METRICS).unlink()
    clean_stale_tmp(run_dir)
    lock.report_takeover()


def claim_run(run_dir: Path, lock: RunLock) -> None:
    """Take the existing run ``run_dir`` to continue it (``--resume``): it must be a run directory, and no other
    process may be writing it."""
    lock.acquire(create=False)
    if not (Path(run_dir) / CONFIG).exists():
        raise CheckpointError(f"{run_dir / CONFIG}: not found (is {run_dir} a didi run directory?)")
    lock.report_takeover()


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


def _publish_snapshot(run_dir: Path, snapshot: Path) -> None:
    """Show ``snapshot``'s files at the top level of the run directory (its manifest stays inside)."""
    for f in sorted(snapshot.iterdir()):
        if f.name != MANIFEST:
            _publish(f, run_dir / f.name)
    _fsync_dir(run_dir)


def save_snapshot(run_dir: Path, step: int, tensors: dict[str, dict[str, torch.Tensor]], state: dict[str, Any],
                  *, keep: int = 2) -> Path:
    """Write a complete snapshot and publish it at the top level of the run directory.

    ``tensors`` maps a file stem (``model``, ``ema``, ``discriminator``, ...) to a state dict; ``state`` is the
    trainer state (optimisers, step, RNG) saved as ``trainer_state.pt``; ``manifest.json`` records every file's
    size and digest (:func:`verify_snapshot`). Older snapshots beyond ``keep`` are removed only after the new one
    is in place.
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
        write_json(tmp / MANIFEST, {"step": step, "files": {f.name: file_record(f) for f in sorted(tmp.iterdir())}})
        _fsync_dir(tmp)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        _fsync_dir(root)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    _publish_snapshot(run_dir, final)
    for old in list_snapshots(run_dir)[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def verify_snapshot(snapshot: Path) -> str | None:
    """Why ``snapshot`` cannot be resumed from (a short phrase), or ``None``. With a manifest: every file it lists
    has its recorded size and digest. Snapshots written before manifests: the safetensors headers and the trainer
    state's archive directory are readable."""
    snapshot = Path(snapshot)
    manifest_path = snapshot / MANIFEST
    if manifest_path.exists():
        try:
            files = json.loads(manifest_path.read_text())["files"]
            records = [(name, dict(record)) for name, record in files.items()]
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return f"{MANIFEST} is unreadable"
        for name, record in records:
            problem = check_file(snapshot / name, record)
            if problem:
                return problem
        return None
    if not (snapshot / TRAINER_STATE).is_file() or not zipfile.is_zipfile(snapshot / TRAINER_STATE):
        return f"{TRAINER_STATE} is missing or not a torch archive"
    for weights in sorted(snapshot.glob("*.safetensors")):
        try:
            tensors_metadata(weights)
        except CheckpointError:
            return f"{weights.name} is not a readable safetensors file"
    return None


def resume_snapshot(run_dir: Path) -> Path | None:
    """The snapshot a resume starts from: the newest one that :func:`verify_snapshot` accepts. Newer, damaged ones
    are moved aside to ``checkpoints/damaged-step-N-TIME`` (kept for inspection, never listed again) with a warning,
    and the intact one is published at the top level again. ``None``: the run has no snapshot (its start was
    interrupted; it resumes from step 0). Only the writer (rank 0, holding the lock) calls this."""
    run_dir = Path(run_dir)
    damaged = []
    for snapshot in reversed(list_snapshots(run_dir)):
        problem = verify_snapshot(snapshot)
        if problem is None:
            if damaged:
                _publish_snapshot(run_dir, snapshot)
            return snapshot
        aside = snapshot.with_name(f"damaged-{snapshot.name}-{time.strftime('%Y%m%d-%H%M%S')}")
        os.replace(snapshot, aside)
        print(f"[didi] warning: snapshot {snapshot} is damaged ({problem}); moved aside to {aside.name}, falling back "
              "to the previous snapshot", file=sys.stderr)
        damaged.append(snapshot.name)
    if damaged:
        raise CheckpointError(f"{run_dir}: no intact snapshot to resume from (damaged ones moved aside: "
                              f"{', '.join(damaged)}); start the run again with --force")
    return None


def trim_metrics(run_dir: Path, step: int) -> None:
    """Keep the records of ``metrics.jsonl`` up to ``step`` (where a resume starts): the lines a stopped run wrote
    after its last snapshot, and a line cut by a crash, go, so that the resumed run's file reads like an
    uninterrupted run's."""
    path = Path(run_dir) / METRICS
    if not path.exists():
        return
    lines = path.read_text(errors="replace").splitlines()
    kept = []
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and isinstance(record.get("step"), int) and record["step"] <= step:
            kept.append(line)
    if kept != lines:
        atomic_write(path, lambda p: p.write_text("".join(f"{line}\n" for line in kept)))


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
