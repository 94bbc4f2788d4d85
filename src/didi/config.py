"""Typed configurations shared by every component: the network size and the diffusion process (and
:func:`parse_int_list` for list-valued options such as ``--nfe 8,16``).

Task configurations (training, sampling, distillation, evaluation) live next to the code that uses them; they
all follow the same pattern: a dataclass whose fields carry their ``--help`` text in ``metadata["help"]`` and a
``validate()`` that raises :class:`didi.errors.ConfigError` naming the offending option.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, TypeVar

from .errors import ConfigError, option_error, require

T = TypeVar("T")


def helpfield(default: Any, help: str, **kwargs: Any) -> Any:
    """A dataclass field with ``--help`` text (used by the CLI to build options)."""
    if isinstance(default, (list, dict, set)):
        return field(default_factory=lambda: type(default)(default), metadata={"help": help, **kwargs})
    return field(default=default, metadata={"help": help, **kwargs})


def to_dict(config: Any) -> dict[str, Any]:
    return dataclasses.asdict(config)


def from_dict(cls: type[T], data: dict[str, Any], *, strict: bool = False) -> T:
    """Build a dataclass from a dict, ignoring unknown keys unless ``strict`` (forward compatibility)."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - names
    if strict and unknown:
        raise ConfigError(f"unknown {cls.__name__} keys: {sorted(unknown)}")
    return cls(**{k: v for k, v in data.items() if k in names})


def parse_int_list(option: str, text: str) -> list[int]:
    """``"8,16,32"`` -> ``[8, 16, 32]``; every value must be an integer >= 1."""
    values = []
    for piece in str(text).split(","):
        piece = piece.strip()
        if not piece:
            continue
        try:
            value = int(piece)
        except ValueError:
            raise option_error(option, f"expected comma-separated integers, got {piece!r}") from None
        if value < 1:
            raise option_error(option, f"values must be >= 1 (got {value})")
        values.append(value)
    if not values:
        raise option_error(option, "expected at least one value")
    return values


SHORT_RUN_WARMUP = 0.1
"""Fraction of the run a warm-up is scaled to when it would cover more than half of it (:func:`fit_warmups`)."""


def fit_warmups(config: T, *names: str, span: str = "steps") -> tuple[T, dict[str, dict[str, int]], str | None]:
    """``config`` with its warm-ups ``names`` fitted to a short run, what was changed, and the line that says so.

    A warm-up (a field counted in steps) that covers more than half of ``config.<span>`` (the run's ``steps``, or
    e.g. the length of one round) becomes ``round(SHORT_RUN_WARMUP * span)``: a 1000-step learning-rate warm-up in
    a 5-step run would keep the rate near 0 throughout, a discriminator warm-up as long as the run would never
    train the student. The record maps each changed field to ``{"requested": ..., "used": ...}`` (runs keep it in
    ``config.json``)::

        fit_warmups(InstructConfig(steps=5), "warmup_steps", "disc_warmup_steps")
        -> (... warmup_steps=0 ..., {"warmup_steps": {"requested": 1000, "used": 0}},
            "--warmup-steps 1000 is more than half of --steps 5: using 0 (10% of the run)")
    """
    steps = getattr(config, span)
    fitted = {name: {"requested": getattr(config, name), "used": round(SHORT_RUN_WARMUP * steps)}
              for name in names if getattr(config, name) > steps / 2}
    if not fitted:
        return config, {}, None
    changes = ", ".join(f"--{name.replace('_', '-')} {change['requested']}" for name, change in fitted.items())
    used = ", ".join(str(change["used"]) for change in fitted.values())
    note = (f"{changes} {'is' if len(fitted) == 1 else 'are'} more than half of --{span.replace('_', '-')} {steps}: "
            f"using {used} ({SHORT_RUN_WARMUP:.0%} of the {'run' if span == 'steps' else span.replace('_', ' ')})")
    return dataclasses.replace(config, **{name: change["used"] for name, change in fitted.items()}), fitted, note


# Network sizes. ``small`` is the 169M DiT of MDLM/DUO/DiDi-Instruct (hidden 768, 12 blocks, 12 heads).
PRESETS: dict[str, dict[str, int]] = {
    "tiny": dict(hidden_size=256, n_blocks=4, n_heads=4, cond_dim=128),
    "small": dict(hidden_size=768, n_blocks=12, n_heads=12, cond_dim=128),
    "medium": dict(hidden_size=1024, n_blocks=24, n_heads=16, cond_dim=128),
    "large": dict(hidden_size=1280, n_blocks=36, n_heads=20, cond_dim=128),
}


@dataclass
class ModelConfig:
    """Transformer size. ``arch='dit'`` is the MDLM diffusion transformer, ``arch='gpt'`` the causal AR model."""

    vocab_size: int = helpfield(50258, "number of token ids the network embeds/predicts, mask token included")
    hidden_size: int = helpfield(768, "model width")
    n_blocks: int = helpfield(12, "number of transformer blocks")
    n_heads: int = helpfield(12, "attention heads (hidden_size must be divisible by it)")
    cond_dim: int = helpfield(128, "width of the noise-level conditioning vector (DiT adaLN)")
    max_seq_len: int = helpfield(1024, "longest sequence the model is trained/sampled at")
    dropout: float = helpfield(0.1, "dropout probability inside the blocks")
    mlp_ratio: int = helpfield(4, "MLP hidden width = mlp_ratio * hidden_size")
    rotary_base: float = helpfield(10_000.0, "rotary embedding base")
    arch: str = helpfield("dit", "dit (bidirectional diffusion transformer) or gpt (causal AR transformer)")

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        require(self.arch in ("dit", "gpt"), "arch", f"must be dit or gpt (got {self.arch!r})")
        require(self.vocab_size >= 2, "vocab_size", f"must be >= 2 (got {self.vocab_size})")
        require(self.hidden_size >= 1 and self.n_blocks >= 1, "preset", "hidden_size and n_blocks must be >= 1")
        require(self.n_heads >= 1 and self.hidden_size % self.n_heads == 0, "n_heads",
                f"hidden_size {self.hidden_size} is not divisible by n_heads {self.n_heads}")
        require((self.hidden_size // self.n_heads) % 2 == 0, "n_heads", "head dimension must be even (rotary)")
        require(self.max_seq_len >= 1, "seq_len", f"must be >= 1 (got {self.max_seq_len})")
        require(0.0 <= self.dropout < 1.0, "dropout", f"must be in [0, 1) (got {self.dropout})")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.n_heads

    @classmethod
    def from_preset(cls, preset: str, **overrides: Any) -> ModelConfig:
        require(preset in PRESETS, "preset", f"must be one of {', '.join(PRESETS)} (got {preset!r})")
        values = {**PRESETS[preset], **{k: v for k, v in overrides.items() if v is not None}}
        return cls(**values)


@dataclass
class DiffusionConfig:
    """Masked (absorbing-state) diffusion with the log-linear schedule ``alpha_t = 1 - (1 - eps) t``."""

    mask_index: int = helpfield(50257, "token id of [MASK]")
    eps: float = helpfield(1e-3, "schedule floor: alpha_1 = eps")
    sampling_eps: float = helpfield(1e-3, "training times are drawn from [sampling_eps, 1]")
    time_conditioning: bool = helpfield(False, "feed sigma_t to the network (MDLM: False, the network sees 0)")
    antithetic: bool = helpfield(True, "stratified (antithetic) time sampling over the global batch")

    def __post_init__(self) -> None:
        require(0.0 < self.eps < 1.0, "eps", f"must be in (0, 1) (got {self.eps})")
        require(0.0 <= self.sampling_eps < 1.0, "sampling_eps", f"must be in [0, 1) (got {self.sampling_eps})")
        require(self.mask_index >= 0, "mask_index", f"must be >= 0 (got {self.mask_index})")
