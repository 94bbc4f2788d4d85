"""Conditioning for every diffusion sampler: fixed positions, and semi-autoregressive windows past the model length.

**Fixed positions.** A sampler is conditioned by ``prefix`` (B, L), the tokens, and ``fixed`` (B, L, bool), a
per-row mask of the positions that keep their token
(:func:`didi.diffusion.sampling.conditioned_start`). The sampler starts from
``z = where(fixed, prefix, [MASK])``. Masked diffusion then never touches them: a step only reveals positions that
are [MASK] (:func:`didi.diffusion.sampling.ancestral_transition`), SUBS copies unmasked tokens, and the network
sees them as context at every step. The filled positions are therefore drawn from the model's own conditional
``p(x_free | x_fixed)`` as the K-step sampler defines it (``tests/test_conditioning.py`` checks it against the
enumerated conditional of a toy model). :func:`didi.diffusion.rgas.rgas_sample` honours the same mask and keeps
fixed positions out of every reward sum (see its docstring). Without ``fixed`` a ``prefix`` is a partially
masked start: its non-[MASK] positions are the fixed ones.

**Semi-autoregressive windows** (:func:`semi_autoregressive_sample`), for sequences longer than the model: window
``k`` covers positions ``[a_k, a_k + W)`` with ``a_k = k S`` while ``k S + W < N``, and a last window
``[N - W, N)`` that ends the sequence (:func:`window_starts`). Each window is sampled by ``sample_window`` with
everything already decided inside it fixed: the last ``W - S`` positions of the previous window (more for the last
window when ``N - W`` is not a multiple of ``S``) are the context and the next ``S`` positions are denoised.
Positions fixed by the caller stay fixed in every window; a window sees nothing to its right. ``head``/``tail``
frame every window with fixed tokens (the pipeline passes ``[BOS]``/``[EOS]``: a wrap-packed model was trained on
``[BOS] chunk [EOS]`` blocks, so each window looks like a training block instead of carrying an [EOS] the
previous window generated at its last position); the frame is not part of the output. ``nfe`` is the sum of the
calls of all windows, exactly; ``info["windows"]`` lists each window's span and calls.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import torch

from ..errors import require
from ..runtime.progress import track
from .sampling import SampleResult, conditioned_start

WindowSampler = Callable[[torch.Tensor, torch.Tensor], SampleResult]
"""``sample_window(prefix, fixed) -> SampleResult``: any sampler of this package bound to a denoiser, sampling a
(B, W) window whose ``fixed`` positions hold ``prefix``'s tokens (e.g. ``functools.partial(ancestral_sample,
denoiser, ...)`` called with ``prefix=``/``fixed=``)."""


def window_starts(seq_len: int, window: int, stride: int) -> list[int]:
    """Starts ``a_k`` of the windows ``[a_k, a_k + window)`` covering ``[0, seq_len)``: ``0, S, 2S, ...`` while the
    window ends before ``seq_len``, then ``seq_len - window``. One window ``[0, seq_len)`` if it fits."""
    require(window >= 1, "window", f"must be >= 1 (got {window})")
    require(1 <= stride < window, "stride", f"must be in [1, {window - 1}]: below the window of {window} tokens "
                                            f"(got {stride})")
    if seq_len <= window:
        return [0]
    return list(range(0, seq_len - window, stride)) + [seq_len - window]


def semi_autoregressive_sample(sample_window: WindowSampler, *, batch_size: int, seq_len: int, window: int,
                               stride: int, mask_index: int, prefix: torch.Tensor | None = None,
                               fixed: torch.Tensor | None = None, head: Sequence[int] = (),
                               tail: Sequence[int] = (), device: torch.device | str = "cpu",
                               progress: bool = False) -> SampleResult:
    """Sample ``seq_len`` tokens window by window (see the module docstring).

    ``window`` is the length ``sample_window`` is called with, frame included: each window holds
    ``W = window - len(head) - len(tail)`` positions of the sequence and the stride must be below ``W``.
    """
    body = window - len(head) - len(tail)
    frame = f" (the model's {window} minus the {len(head) + len(tail)}-token frame)" if head or tail else ""
    require(body >= 2, "window", f"holds {body} positions of the sequence{frame}: too short to slide")
    require(1 <= stride < body, "stride", f"must be in [1, {body - 1}]: below the window of {body} tokens{frame} "
                                          f"(got {stride})")
    start = time.perf_counter()
    device = torch.device(device)
    z, fixed = conditioned_start(batch_size, seq_len, mask_index, device, prefix, fixed)
    decided = fixed.clone()
    width = min(body, seq_len)
    head_ids = torch.tensor(list(head), dtype=torch.long, device=device).expand(batch_size, -1)
    tail_ids = torch.tensor(list(tail), dtype=torch.long, device=device).expand(batch_size, -1)
    edge = torch.ones((batch_size, len(head)), dtype=torch.bool, device=device)
    end = torch.ones((batch_size, len(tail)), dtype=torch.bool, device=device)
    windows, results = [], []
    for a in track(window_starts(seq_len, width, stride) if seq_len > width else [0], "windows",
                   enabled=progress, unit="window"):
        inside = slice(a, a + width)
        result = sample_window(torch.cat([head_ids, z[:, inside], tail_ids], 1),
                               torch.cat([edge, decided[:, inside], end], 1))
        z[:, inside] = result.tokens[:, len(head):len(head) + width]
        decided[:, inside] = True
        results.append(result)
        windows.append({"start": a, "end": a + width, "nfe": result.nfe, "extra_calls": dict(result.extra_calls)})
    extra: dict[str, int] = {}
    for result in results:
        for key, calls in result.extra_calls.items():
            extra[key] = extra.get(key, 0) + calls
    info = {**results[0].info, "windows": windows, "window": width, "stride": stride, "frame": [list(head), list(tail)]}
    return SampleResult(tokens=z, nfe=sum(r.nfe for r in results), seconds=time.perf_counter() - start,
                        num_steps=results[0].num_steps, sampler=results[0].sampler, extra_calls=extra, info=info,
                        fixed=fixed)
