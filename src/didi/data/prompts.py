"""Prompts and infill templates: text -> token ids with the positions a sampler must keep (``fixed``).

* ``--prompt "ROMEO:"`` (:func:`encode_prompt`): the sample is ``[BOS] prompt`` followed by free positions up to the
  sample length; the free run is the generated span.
* ``--infill "To be, or not to be: [MASK:8] question."`` (:func:`parse_template`): the text between spans is
  fixed, each ``[MASK:n]`` is a span of ``n`` free positions; the sample is ``[BOS] template`` (its length is the
  template's, BOS included).
* ``--prompts FILE.jsonl`` (:func:`read_prompts`): one ``{"prompt": ...}`` or ``{"infill": ...}`` object per line.

``[BOS]`` leads every conditioned sample because every training block starts with it (``[BOS] chunk [EOS]``, see
:mod:`didi.data.corpora`). Every piece of fixed text must survive ``decode(encode(text)) == text``; a text the
tokenizer changes (a protein tokenizer upper-cases and drops spaces) is refused with how it was tokenized, rather
than silently conditioning on different text. :func:`prompt_batches` lays rows out at their length and cuts them
into batches; the samplers see only ``ids`` and ``fixed`` tensors (:mod:`didi.diffusion.conditioning`).
"""
from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..errors import ConfigError, DataError, option_error
from .tokenizer import Tokenizer

SPAN_START = re.compile(r"\[MASK(?=[:\]])")  # where template syntax starts: "[MASK:" or "[MASK]"
SPAN = re.compile(r"\[MASK:([1-9][0-9]*)\]")
FREE = -1  # id placeholder of a free position in Prompt.ids


@dataclass(frozen=True)
class Prompt:
    """One conditioning text as token ids: ``ids`` starts with ``[BOS]``; ``FREE`` marks template span positions.

    ``kind`` is ``prompt`` (continue ``text`` up to the sample length) or ``infill`` (fill ``spans``, the length is
    the template's). ``option`` and ``origin`` (``FILE:LINE`` of a ``--prompts`` row) name the source in errors.
    """

    kind: str
    text: str
    ids: tuple[int, ...]
    spans: tuple[tuple[int, int], ...] = ()
    option: str = "prompt"
    origin: str = ""

    def error(self, message: str, option: str | None = None) -> ConfigError:
        where = f"{self.origin}: " if self.origin else ""
        return option_error(option or self.option, where + message)

    def layout(self, length: int | None, default_length: int) -> tuple[list[int], list[bool], list[list[int]]]:
        """``(ids, fixed, spans)`` of a sample of this prompt: free positions hold ``FREE`` and ``fixed`` False.

        A prompt fills ``length`` (``default_length`` if ``None``) positions and must leave at least one to
        generate; a template has its own length, so ``length`` must be ``None`` or equal to it.
        """
        if self.kind == "infill":
            if length is not None and length != len(self.ids):
                raise self.error(f"a template sets the sample length itself ({len(self.ids)} tokens with BOS; "
                                 f"got {length}): drop --length", option="length")
            fixed = [i != FREE for i in self.ids]
            return list(self.ids), fixed, [list(s) for s in self.spans]
        total = default_length if length is None else length
        if total <= len(self.ids):
            if length is None:
                raise self.error(f"is {len(self.ids)} tokens with BOS, not shorter than the sample length {total}: "
                                 "nothing is left to generate (raise --length)")
            raise self.error(f"{length} leaves nothing to generate after the prompt's {len(self.ids)} tokens "
                             "(BOS included)", option="length")
        free = total - len(self.ids)
        return list(self.ids) + [FREE] * free, [True] * len(self.ids) + [False] * free, [[len(self.ids), total]]

    def record(self) -> dict[str, Any]:
        """What a sample file records about its conditioning: ``{"prompt": text}`` or ``{"infill": text}``."""
        return {self.kind: self.text}


def encode_exactly(tokenizer: Tokenizer, text: str, option: str, origin: str = "") -> list[int]:
    """Ids of ``text``, refused unless they decode back to exactly ``text`` (a one-line error says how it was
    tokenized)."""
    where = f"{origin}: " if origin else ""
    try:
        ids = tokenizer.encode(text)
    except DataError as exc:
        raise option_error(option, f"{where}the {tokenizer.kind} tokenizer cannot encode {text!r}: {exc}") from None
    decoded = tokenizer.decode(ids)
    if decoded != text:
        shown = ", ".join(map(str, ids[:12])) + (", ..." if len(ids) > 12 else "")
        raise option_error(option, f"{where}{text!r} cannot be represented faithfully by the {tokenizer.kind} "
                                   f"tokenizer: it is tokenized as {len(ids)} tokens [{shown}], which decode to "
                                   f"{decoded!r}")
    return ids


def encode_prompt(tokenizer: Tokenizer, text: str, option: str = "prompt", origin: str = "") -> Prompt:
    """A prefix to continue: ``[BOS] + encode(text)``."""
    if not text:
        where = f"{origin}: " if origin else ""
        raise option_error(option, f"{where}the prompt is empty (sample without one to generate unconditionally)")
    ids = encode_exactly(tokenizer, text, option, origin)
    return Prompt(kind="prompt", text=text, ids=(tokenizer.bos_id, *ids), option=option, origin=origin)


def parse_template(tokenizer: Tokenizer, template: str, option: str = "infill", origin: str = "") -> Prompt:
    """An infill template: the text between ``[MASK:n]`` spans is fixed, each span is ``n >= 1`` free tokens.

    ``"[MASK:0]"``, ``"[MASK:x]"``, ``"[MASK]"`` or an unclosed ``"[MASK:"`` is an error, and so is a template
    without any span.
    """
    where = f"{origin}: " if origin else ""
    ids: list[int] = [tokenizer.bos_id]
    spans: list[tuple[int, int]] = []
    position = 0
    for start in SPAN_START.finditer(template):
        if start.start() < position:
            continue
        match = SPAN.match(template, start.start())
        if match is None:
            close = template.find("]", start.start())
            bad = template[start.start():close + 1 if close >= 0 else len(template)]
            raise option_error(option, f"{where}malformed span {bad!r} at character {start.start()}: write "
                                       "[MASK:n] with n >= 1 tokens to generate")
        piece = template[position:match.start()]
        if piece:
            ids += encode_exactly(tokenizer, piece, option, origin)
        n = int(match.group(1))
        spans.append((len(ids), len(ids) + n))
        ids += [FREE] * n
        position = match.end()
    if not spans:
        raise option_error(option, f"{where}the template has no [MASK:n] span to fill "
                                   "(e.g. \"To be, or not to be: [MASK:8] question.\")")
    if template[position:]:
        ids += encode_exactly(tokenizer, template[position:], option, origin)
    return Prompt(kind="infill", text=template, ids=tuple(ids), spans=tuple(spans), option=option, origin=origin)


def read_prompts(path: str | Path, tokenizer: Tokenizer, option: str = "prompts") -> list[Prompt]:
    """The rows of a JSON-lines file, each ``{"prompt": TEXT}`` or ``{"infill": TEMPLATE}`` (other keys are
    ignored; blank lines are skipped)."""
    path = Path(path)
    if not path.is_file():
        raise option_error(option, f"{path}: file not found")
    prompts = []
    with open(path, encoding="utf-8") as fh:
        for number, line in enumerate(fh, 1):
            if not line.strip():
                continue
            origin = f"{path}:{number}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise option_error(option, f"{origin}: not valid JSON ({exc.msg})") from None
            keys = [k for k in ("prompt", "infill") if isinstance(row, dict) and k in row]
            if len(keys) != 1 or not isinstance(row[keys[0]], str):
                raise option_error(option, f"{origin}: each row needs exactly one of a \"prompt\" or an \"infill\" "
                                           "string")
            make = encode_prompt if keys[0] == "prompt" else parse_template
            prompts.append(make(tokenizer, row[keys[0]], option, origin))
    if not prompts:
        raise option_error(option, f"{path}: no prompts in file")
    return prompts


def as_prompts(tokenizer: Tokenizer, prompt: str | Prompt | Sequence[str | Prompt] | None = None,
               infill: str | Sequence[str] | None = None) -> list[Prompt]:
    """The :class:`Prompt` list of the Python API's ``prompt=`` / ``infill=`` arguments (a text or a list)."""
    if prompt is not None and infill is not None:
        raise option_error("infill", "give either prompts or infill templates, not both")
    out: list[Prompt] = []
    for value in [prompt] if isinstance(prompt, (str, Prompt)) else (prompt or []):
        out.append(value if isinstance(value, Prompt) else encode_prompt(tokenizer, value))
    for value in [infill] if isinstance(infill, str) else (infill or []):
        out.append(parse_template(tokenizer, value))
    if (prompt is not None or infill is not None) and not out:
        raise option_error("prompt" if prompt is not None else "infill", "an empty list of texts")
    return out


@dataclass
class PromptBatch:
    """Rows sampled together: ``size`` rows of ``length`` tokens; conditioned rows have ``ids`` (B, L), the fixed
    tokens (0 at free positions), ``fixed`` (B, L) and, per row, what sample files record (:meth:`Prompt.record`,
    the generated ``spans`` and ``text_start`` = 1: the completed text starts after the BOS the prompt added)."""

    size: int
    length: int
    ids: torch.Tensor | None = None
    fixed: torch.Tensor | None = None
    rows: list[dict[str, Any]] = field(default_factory=list)


def prompt_batches(prompts: Sequence[Prompt], *, num_samples: int, length: int | None, default_length: int,
                   batch_size: int) -> list[PromptBatch]:
    """``num_samples`` rows per prompt, in order, cut into batches of at most ``batch_size`` consecutive rows of the
    same length (every prompt is laid out, hence checked, before anything is sampled)."""
    laid = [(p, *p.layout(length, default_length)) for p in prompts]
    batches: list[PromptBatch] = []
    pending: list[tuple[list[int], list[bool], dict[str, Any]]] = []

    def flush() -> None:
        if pending:
            ids = torch.tensor([[max(i, 0) for i in row[0]] for row in pending], dtype=torch.long)
            fixed = torch.tensor([row[1] for row in pending], dtype=torch.bool)
            batches.append(PromptBatch(size=len(pending), length=ids.shape[1], ids=ids, fixed=fixed,
                                       rows=[row[2] for row in pending]))
            pending.clear()

    for prompt, ids, fixed, spans in laid:
        for _ in range(num_samples):
            if pending and (len(pending) == batch_size or len(pending[0][0]) != len(ids)):
                flush()
            pending.append((ids, fixed, {**prompt.record(), "spans": spans, "text_start": 1}))
    flush()
    return batches
