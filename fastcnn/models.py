"""Ready-made networks, for any input shape (C, H, W) and number of classes.

`MODELS` maps each name (`python -m fastcnn.train --model NAME`) to its builder; every
builder takes ``seed``, ``backend``, ``input_shape`` and ``classes``.
"""

from __future__ import annotations

from collections.abc import Callable

from .layers import (
    BatchNorm2D,
    Conv2D,
    Dense,
    Dropout,
    Flatten,
    GlobalAvgPool2D,
    MaxPool2D,
    ReLU,
)
from .model import Sequential


def seed_arch(seed: int | None = 0, backend: str = "numba", *,
              input_shape: tuple[int, int, int] = (1, 28, 28), classes: int = 10) -> Sequential:
    """SEED-ARCH: 1x28x28 -> Conv 6@5x5 same -> ReLU -> Conv 6@5x5 same -> ReLU -> MaxPool 2
    -> Flatten (1176) -> Dense 100 -> ReLU -> Dense 10. ReLUs are fused into their layers."""
    return Sequential([
        Conv2D(6, 5, padding="same", activation="relu", backend=backend),
        Conv2D(6, 5, padding="same", activation="relu", backend=backend),
        MaxPool2D(2, backend=backend),
        Flatten(backend=backend),
        Dense(100, activation="relu", backend=backend),
        Dense(classes, kernel_initializer="glorot_uniform", backend=backend),
    ], input_shape=input_shape, seed=seed)


def lenet5(seed: int | None = 0, backend: str = "numba", *,
           input_shape: tuple[int, int, int] = (1, 28, 28), classes: int = 10) -> Sequential:
    """LeNet-5 with ReLUs: Conv 6@5x5 pad 2 -> MaxPool 2 -> Conv 16@5x5 valid -> MaxPool 2
    -> Dense 120 -> Dense 84 -> Dense classes."""
    return Sequential([
        Conv2D(6, 5, padding=2, activation="relu", backend=backend),
        MaxPool2D(2, backend=backend),
        Conv2D(16, 5, padding="valid", activation="relu", backend=backend),
        MaxPool2D(2, backend=backend),
        Flatten(backend=backend),
        Dense(120, activation="relu", backend=backend),
        Dense(84, activation="relu", backend=backend),
        Dense(classes, kernel_initializer="glorot_uniform", backend=backend),
    ], input_shape=input_shape, seed=seed)


def keras_mnist(seed: int | None = 0, backend: str = "numba", *,
                input_shape: tuple[int, int, int] = (1, 28, 28),
                classes: int = 10) -> Sequential:
    """Keras' "simple MNIST convnet": Conv 32@3x3 -> MaxPool 2 -> Conv 64@3x3 -> MaxPool 2
    -> Flatten -> Dropout 0.5 -> Dense classes."""
    return Sequential([
        Conv2D(32, 3, activation="relu", backend=backend),
        MaxPool2D(2, backend=backend),
        Conv2D(64, 3, activation="relu", backend=backend),
        MaxPool2D(2, backend=backend),
        Flatten(backend=backend),
        Dropout(0.5, backend=backend),
        Dense(classes, kernel_initializer="glorot_uniform", backend=backend),
    ], input_shape=input_shape, seed=seed)


def vgg_small(seed: int | None = 0, backend: str = "numba", *,
              input_shape: tuple[int, int, int] = (1, 28, 28),
              classes: int = 10) -> Sequential:
    """A small VGG with BatchNorm: (Conv 32@3x3 -> BN -> ReLU) x2 -> MaxPool 2 -> Dropout
    0.25 -> (Conv 64@3x3 -> BN -> ReLU) x2 -> MaxPool 2 -> Dropout 0.25 -> Conv 128@3x3 ->
    BN -> ReLU -> GlobalAvgPool -> Dropout 0.25 -> Dense classes; convolutions 'same'.
    In evaluation each BatchNorm folds into its convolution (`fastcnn.plan`)."""
    def block(filters: int) -> list:
        return [Conv2D(filters, 3, padding="same", backend=backend),
                BatchNorm2D(backend=backend), ReLU(backend=backend)]

    return Sequential([
        *block(32), *block(32), MaxPool2D(2, backend=backend), Dropout(0.25, backend=backend),
        *block(64), *block(64), MaxPool2D(2, backend=backend), Dropout(0.25, backend=backend),
        *block(128), GlobalAvgPool2D(backend=backend), Dropout(0.25, backend=backend),
        Dense(classes, kernel_initializer="glorot_uniform", backend=backend),
    ], input_shape=input_shape, seed=seed)


MODELS: dict[str, Callable[..., Sequential]] = {
    "seed_arch": seed_arch, "lenet5": lenet5, "keras_mnist": keras_mnist,
    "vgg_small": vgg_small}


def describe_models() -> str:
    """One line per model: its name and the first line of its description."""
    return "\n".join(f"{name:<12} {fn.__doc__.split(chr(10))[0]}" for name, fn in MODELS.items())
