"""Weight initialisers drawn from a seeded generator."""

from __future__ import annotations

import numpy as np

INITIALIZERS = ("he_normal", "he_uniform", "glorot_normal", "glorot_uniform")


def initialize(name: str, shape: tuple[int, ...], fan_in: int, fan_out: int,
               rng: np.random.Generator, dtype=np.float32) -> np.ndarray:
    """He (Kaiming) scales by fan_in, for ReLU nets; Glorot (Xavier) by fan_in + fan_out."""
    if name not in INITIALIZERS:
        raise ValueError(f"kernel_initializer must be one of {INITIALIZERS}, got {name!r}")
    scale = 2.0 / fan_in if name.startswith("he") else 2.0 / (fan_in + fan_out)
    if name.endswith("normal"):
        w = rng.normal(0.0, np.sqrt(scale), size=shape)
    else:
        limit = np.sqrt(3.0 * scale)
        w = rng.uniform(-limit, limit, size=shape)
    return w.astype(dtype)
