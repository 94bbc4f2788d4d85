"""didi: ultra-fast language generation with discrete (masked) diffusion LMs and DiDi-Instruct distillation."""
from __future__ import annotations

from .version import __version__ as __version__


def load(path_or_repo: str, device: str = "auto", **kwargs):
    """Load any supported model (a didi run directory, a converted checkpoint, ...) ready to sample/evaluate.

    See :func:`didi.pipelines.load.load`.
    """
    from .pipelines.load import load as _load

    return _load(path_or_repo, device=device, **kwargs)
