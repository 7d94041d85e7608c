"""Ready-made networks."""

from __future__ import annotations

from .layers import Conv2D, Dense, Flatten, MaxPool2D
from .model import Sequential


def seed_arch(seed: int | None = 0, backend: str = "numba") -> Sequential:
    """SEED-ARCH: 1x28x28 -> Conv 6@5x5 same -> ReLU -> Conv 6@5x5 same -> ReLU -> MaxPool 2
    -> Flatten (1176) -> Dense 100 -> ReLU -> Dense 10. ReLUs are fused into their layers."""
    return Sequential([
        Conv2D(6, 5, padding="same", activation="relu", backend=backend),
        Conv2D(6, 5, padding="same", activation="relu", backend=backend),
        MaxPool2D(2, backend=backend),
        Flatten(backend=backend),
        Dense(100, activation="relu", backend=backend),
        Dense(10, kernel_initializer="glorot_uniform", backend=backend),
    ], input_shape=(1, 28, 28), seed=seed)
