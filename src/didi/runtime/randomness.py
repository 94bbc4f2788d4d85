"""Seeds: the whole process at start-up, and per-step generators that make runs independent of resumes and world
sizes (every step's randomness is a function of ``(seed, step, stream)``, never of the history)."""
from __future__ import annotations

import random

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def step_generator(seed: int, step: int, stream: int = 0, device: torch.device | str = "cpu") -> torch.Generator:
    """A generator whose state depends only on ``(seed, step, stream)``.

    Training draws all per-step randomness of the *global* batch (diffusion times, masks) from such a generator,
    so a run is reproducible across resumes and across world sizes: every rank draws the same global numbers and
    keeps its own slice.
    """
    g = torch.Generator(device=device)
    g.manual_seed((seed * 1_000_003 + step * 97 + stream * 7_919) % (2**63 - 1))
    return g
