"""The execution plan: which layers of a `Sequential` run as one fused step.

A plan is worked out once per mode (training, inference) when the model is built: a list
of steps, each running one layer, or a layer fused with the one after it. A fusion is
one entry of `FUSIONS`: the pair of layer types, when it applies, and the pair's
forward and backward, which the first layer implements. No layer writes another's
state: the fused step only reads the second layer's configuration, and has it forget
its own saved state, which the fused pass made stale.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from .layers import Conv2D, Layer, MaxPool2D

Forward = Callable[[np.ndarray, bool, "np.random.Generator | None"], np.ndarray]
Backward = Callable[[np.ndarray, bool], "np.ndarray | None"]


@dataclass(frozen=True)
class Fusion:
    """Two adjacent layers run as one step where `applies(first, second, training)`."""

    first: type[Layer]
    second: type[Layer]
    applies: Callable[[Layer, Layer, bool], bool]
    forward: Callable[[Layer, Layer, np.ndarray, bool], np.ndarray]
    backward: Callable[[Layer, Layer, np.ndarray, bool], np.ndarray | None]


def _conv_pool_forward(conv: Conv2D, pool: MaxPool2D, x: np.ndarray,
                       training: bool) -> np.ndarray:
    y = conv.forward_pooled(x, pool, training)
    if training:
        pool.release()
    return y


FUSIONS: tuple[Fusion, ...] = (
    # Conv2D (with its ReLU) and a MaxPool2D with non-overlapping windows: one kernel,
    # without storing the unpooled activations.
    Fusion(Conv2D, MaxPool2D,
           applies=lambda conv, pool, training: conv.fuses_with(pool, training),
           forward=_conv_pool_forward,
           backward=lambda conv, pool, dy, need: conv.backward_pooled(dy, need)),
)


@dataclass(frozen=True)
class Step:
    """Layers `first` ... `first + size - 1` of the model, run as one."""

    first: int
    size: int
    forward: Forward
    backward: Backward


def _single(layer: Layer, k: int) -> Step:
    return Step(k, 1, lambda x, training, rng: layer.forward(x, training, rng),
                lambda dy, need: layer.backward(dy, need_input_grad=need))


def _fused(fusion: Fusion, a: Layer, b: Layer, k: int) -> Step:
    return Step(k, 2, lambda x, training, rng: fusion.forward(a, b, x, training),
                lambda dy, need: fusion.backward(a, b, dy, need))


def build_plan(layers: Sequence[Layer], training: bool) -> tuple[Step, ...]:
    """The steps that run `layers` in order, fusing adjacent pairs where a fusion applies."""
    steps = []
    k = 0
    while k < len(layers):
        layer = layers[k]
        nxt = layers[k + 1] if k + 1 < len(layers) else None
        fusion = next((f for f in FUSIONS if nxt is not None and isinstance(layer, f.first)
                       and isinstance(nxt, f.second) and f.applies(layer, nxt, training)), None)
        if fusion is None:
            steps.append(_single(layer, k))
            k += 1
        else:
            steps.append(_fused(fusion, layer, nxt, k))
            k += 2
    return tuple(steps)
