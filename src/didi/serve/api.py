"""What ``didi serve`` does with one request: validate it (:class:`GenerateRequest`), sample with a served model
(:class:`ServedModel`), and describe the intermediate states and the result as JSON-ready dictionaries.

A request is ``{"model", "prompt" | "infill", "nfe", "sampler", "temperature", "top_k", "top_p", "seed",
"num_samples", "seq_len"}`` (every field optional); the answer holds the samples (as ``didi sample --out`` records
them), the network calls made and the latency.
"""
from __future__ import annotations

import dataclasses
import time
import typing
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..config import helpfield
from ..errors import ConfigError, option_error, require
from ..interop.sample_files import sample_records

MAX_SAMPLES = 16
MAX_NFE = 4096
DEFAULT_NFE = {"didi": 8, "mdlm": 128}
"""A student samples in 8 steps by default, a teacher in 128 (the comparison the page shows)."""
MASKED = "░"
"""How the page's intermediate states show a position still masked."""


@dataclass(frozen=True)
class GenerateRequest:
    """A request of ``POST /api/generate`` or ``/api/stream``; :meth:`from_json` checks types and unknown keys, the
    sampler checks the rest with the same one-line errors as ``didi sample``."""

    model: str | None = helpfield(None, "name of a served model (GET /api/models; default: the first)")
    prompt: str | None = helpfield(None, "text to continue")
    infill: str | None = helpfield(None, "template whose [MASK:n] spans are filled")
    nfe: int | None = helpfield(None, "sampling steps (default: 8 for a student, 128 for a teacher)")
    sampler: str = helpfield("ancestral", "ancestral or rgas (students)")
    temperature: float = helpfield(1.0, "sampling temperature")
    top_k: int | None = helpfield(None, "keep the k most likely tokens of every draw")
    top_p: float = helpfield(1.0, "nucleus mass")
    seed: int = helpfield(0, "random seed")
    num_samples: int = helpfield(1, f"samples per request (at most {MAX_SAMPLES})")
    seq_len: int | None = helpfield(None, "tokens per sample (default: the model's length)")

    def __post_init__(self) -> None:
        require(self.prompt is None or self.infill is None, "infill", "give a prompt or a template, not both")
        require(1 <= self.num_samples <= MAX_SAMPLES, "num_samples", f"must be in [1, {MAX_SAMPLES}] "
                                                                     f"(got {self.num_samples})")
        require(self.nfe is None or 1 <= self.nfe <= MAX_NFE, "nfe", f"must be in [1, {MAX_NFE}] (got {self.nfe})")

    @classmethod
    def from_json(cls, data: Any) -> GenerateRequest:
        """Build from a decoded JSON body; a wrong type or an unknown key is a :class:`ConfigError`."""
        if not isinstance(data, dict):
            raise ConfigError("the request body must be a JSON object")
        hints = typing.get_type_hints(cls)
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(data) - set(names))
        if unknown:
            raise option_error(unknown[0], f"unknown field (expected {', '.join(names)})")
        for name, value in data.items():
            allowed = typing.get_args(hints[name]) or (hints[name],)  # e.g. (str, NoneType) or (float,)
            numbers = (int, float) if float in allowed else ()
            if isinstance(value, bool) or not isinstance(value, allowed + numbers):
                wanted = " or ".join(json_type(t) for t in allowed)
                raise option_error(name, f"must be {wanted} (got {json_type(type(value))})")
        return cls(**data)


def json_type(kind: type) -> str:
    """How a JSON value of Python type ``kind`` is called in an error message."""
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "an array",
            dict: "an object", type(None): "null"}.get(kind, kind.__name__)


@dataclass
class ServedModel:
    """A loaded pipeline under a name, with its default number of steps and the path it was given as."""

    name: str
    pipeline: Any
    nfe: int | None = None
    source: str = ""

    @property
    def default_nfe(self) -> int:
        return self.nfe or DEFAULT_NFE.get(self.pipeline.kind, 16)

    def describe(self) -> dict[str, Any]:
        p = self.pipeline
        return {"name": self.name, "path": self.source or str(p.path), "kind": p.kind, "tokenizer": p.tokenizer.kind,
                "seq_len": p.seq_len, "max_seq_len": p.config.model.max_seq_len,
                "nfe": None if p.kind == "ar" else self.default_nfe,
                "samplers": ["ancestral"] + (["rgas"] if getattr(p, "discriminator", None) is not None else [])}

    def display(self, z: torch.Tensor) -> list[str]:
        """Each row of a state (B, L) as text, a masked position shown as :data:`MASKED`."""
        tokenizer, mask = self.pipeline.tokenizer, getattr(self.pipeline, "mask_index", None)
        out = []
        for row in z.tolist():
            pieces, run = [], []
            for token in row + [None]:
                if token is None or token == mask:
                    if run:
                        pieces.append(tokenizer.decode(run))
                        run = []
                    pieces.append(MASKED if token is not None else "")
                else:
                    run.append(token)
            out.append("".join(pieces))
        return out

    def generate(self, request: GenerateRequest,
                 on_step: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
        """Sample ``request``; ``on_step`` receives each intermediate state as ``{"type": "step", "step",
        "rows", "masked"}`` (diffusion models). Returns the answer of ``/api/generate``."""
        p = self.pipeline
        require(request.seq_len is None or 1 <= request.seq_len <= p.config.model.max_seq_len, "seq_len",
                f"must be in [1, {p.config.model.max_seq_len}] for {self.name} (got {request.seq_len})")
        nfe = request.nfe or self.default_nfe
        hook = None
        if on_step is not None and p.kind != "ar":
            def hook(i: int, z: torch.Tensor) -> None:
                on_step({"type": "step", "model": self.name, "step": i + 1, "steps": nfe, "rows": self.display(z),
                         "masked": int((z == p.mask_index).sum())})
        options = {"on_step": hook} if p.kind != "ar" else {}
        start = time.perf_counter()
        results = p.sample(request.num_samples, nfe, seed=request.seed, seq_len=request.seq_len,
                           sampler=request.sampler, temperature=request.temperature, top_k=request.top_k,
                           top_p=request.top_p, prompt=request.prompt, infill=request.infill, **options)
        latency = time.perf_counter() - start
        records = sample_records(p, results)
        keep = ("text", "generated", "tokens", "prompt", "infill")
        return {"type": "done", "model": self.name, "kind": p.kind, "sampler": results[0].sampler,
                "nfe": None if p.kind == "ar" else nfe, "network_calls": sum(r.nfe for r in results),
                "latency_s": latency, "samples": [{k: r[k] for k in keep if k in r} for r in records]}


def served_models(paths: list[str | Path], nfe: list[int] | None = None, *, device: str = "auto",
                  weights: str = "ema") -> list[ServedModel]:
    """Load every path (run directory, export, checkpoint, Hub id) with ``didi.load``; names are the folder names,
    made unique. ``nfe``: one default per model, or one for all."""
    from ..pipelines.load import load

    require(len(paths) >= 1, "model", "give at least one model to serve")
    nfe = list(nfe or [])
    require(len(nfe) in (0, 1, len(paths)), "nfe", f"give one --nfe per --model, or one for all (got {len(nfe)} "
                                                   f"for {len(paths)} models)")
    require(all(n >= 1 for n in nfe), "nfe", f"must be >= 1 (got {nfe})")
    served: list[ServedModel] = []
    for i, path in enumerate(paths):
        name = Path(str(path)).name or str(path)
        while any(m.name == name for m in served):
            name = f"{Path(str(path)).name}-{i + 1}"
        default = nfe[i] if len(nfe) == len(paths) else nfe[0] if nfe else None
        served.append(ServedModel(name, load(path, device=device, weights=weights), default, str(path)))
    return served
