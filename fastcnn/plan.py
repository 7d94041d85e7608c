"""The execution plan: which layers of a `Sequential` run as one fused step.

A plan is worked out once per mode (training, inference) when the model is built: a list
of steps, each running one layer, or a run of adjacent layers fused into one. A fusion is
one entry of `FUSIONS`: the layer types, when it applies, and the run's forward and
backward (None for a fusion made only for inference), which the first layer implements.
No layer writes another's state: the fused step only reads the other layers'
configuration and parameters, and has them forget their own saved state, which the fused
pass made stale. The first entry that matches at a position wins, so longer runs come
first.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from . import functional
from .layers import BatchNorm1D, BatchNorm2D, Conv2D, Dense, Layer, MaxPool2D, ReLU

Forward = Callable[[np.ndarray, bool, "np.random.Generator | None"], np.ndarray]
Backward = Callable[[np.ndarray, bool], "np.ndarray | None"]
Layers = Sequence[Layer]


@dataclass(frozen=True)
class Fusion:
    """Adjacent layers of these types run as one step where `applies(layers, training)`."""

    types: tuple[type[Layer], ...]
    applies: Callable[[Layers, bool], bool]
    forward: Callable[[Layers, np.ndarray, bool], np.ndarray]
    backward: Callable[[Layers, np.ndarray, bool], np.ndarray | None] | None = None


def _release(layers: Layers, training: bool) -> None:
    if training:
        for layer in layers[1:]:
            layer.release()


def _conv_pool_forward(layers: Layers, x: np.ndarray, training: bool) -> np.ndarray:
    conv, pool = layers
    y = conv.forward_pooled(x, pool, training)
    _release(layers, training)
    return y


def _same_backend(layers: Layers) -> bool:
    return all(layer.backend == layers[0].backend for layer in layers)


def _folds(layers: Layers, training: bool) -> bool:
    """Inference of a Conv2D or Dense without activation, the BatchNorm after it, and
    then perhaps a ReLU and a MaxPool2D the convolution kernel fuses."""
    first = layers[0]
    pool = layers[-1] if isinstance(layers[-1], MaxPool2D) else None
    return (not training and first.activation is None and _same_backend(layers)
            and (pool is None or first.fuses_with(pool)))


def _folded_forward(layers: Layers, x: np.ndarray, training: bool) -> np.ndarray:
    first, norm = layers[0], layers[1]
    first._check_input(x)
    relu = any(isinstance(layer, ReLU) for layer in layers[2:])
    pool = layers[-1] if isinstance(layers[-1], MaxPool2D) else None
    if isinstance(first, Dense):
        weight, bias = norm.fold(first.params["weight"], first.params["bias"], axis=1)
        return functional.dense(x, weight, bias, relu=relu, backend=first.backend)
    weight, bias = norm.fold(first.params["weight"], first.params["bias"], axis=0)
    if pool is None:
        return functional.conv2d(x, weight, bias, first.stride, first.padding, relu=relu,
                                 backend=first.backend)
    return functional.conv2d_max_pool2d(x, weight, bias, first.stride, first.padding,
                                        pool.pool_size, relu=relu, backend=first.backend)


def _norm_relu_forward(layers: Layers, x: np.ndarray, training: bool) -> np.ndarray:
    y = layers[0].forward_relu(x, training)
    _release(layers, training)
    return y


FUSIONS: tuple[Fusion, ...] = (
    # Inference: a BatchNorm folds into the weights of the Conv2D or Dense before it, and
    # the ReLU and max-pool after it run in the same kernel.
    *(Fusion(types, applies=_folds, forward=_folded_forward) for types in (
        (Conv2D, BatchNorm2D, ReLU, MaxPool2D), (Conv2D, BatchNorm2D, ReLU),
        (Conv2D, BatchNorm2D, MaxPool2D), (Conv2D, BatchNorm2D),
        (Dense, BatchNorm1D, ReLU), (Dense, BatchNorm1D))),
    # Conv2D (with its ReLU) and a MaxPool2D with non-overlapping windows: one kernel,
    # without storing the unpooled activations.
    Fusion((Conv2D, MaxPool2D),
           applies=lambda layers, training: layers[0].fuses_with(layers[1], training),
           forward=_conv_pool_forward,
           backward=lambda layers, dy, need: layers[0].backward_pooled(dy, need)),
    # A BatchNorm and the ReLU after it: one kernel each way.
    *(Fusion((norm, ReLU), applies=lambda layers, training: _same_backend(layers),
             forward=_norm_relu_forward,
             backward=lambda layers, dy, need: layers[0].backward(dy, need))
      for norm in (BatchNorm2D, BatchNorm1D)),
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


def _fused(fusion: Fusion, layers: Layers, k: int) -> Step:
    backward = fusion.backward
    return Step(k, len(layers), lambda x, training, rng: fusion.forward(layers, x, training),
                _no_backward if backward is None else
                lambda dy, need: backward(layers, dy, need))


def _no_backward(dy: np.ndarray, need: bool) -> None:
    raise RuntimeError("backward called after an inference pass")


def _matches(fusion: Fusion, layers: Layers, k: int, training: bool) -> bool:
    run = layers[k:k + len(fusion.types)]
    return (len(run) == len(fusion.types)
            and all(type(layer) is t for layer, t in zip(run, fusion.types, strict=True))
            and (training is False or fusion.backward is not None)
            and fusion.applies(run, training))


def build_plan(layers: Sequence[Layer], training: bool) -> tuple[Step, ...]:
    """The steps that run `layers` in order, fusing runs of layers where a fusion applies."""
    steps = []
    k = 0
    while k < len(layers):
        fusion = next((f for f in FUSIONS if _matches(f, layers, k, training)), None)
        if fusion is None:
            steps.append(_single(layers[k], k))
            k += 1
        else:
            run = tuple(layers[k:k + len(fusion.types)])
            steps.append(_fused(fusion, run, k))
            k += len(run)
    return tuple(steps)
