"""Prepared operations: a kernel call with its geometry worked out once.

Each op is built from checked geometry (by a layer when it is built, or by
`fastcnn.functional` for one call) and holds the backend's module; each method is the
one place its kernel's positional arguments are written. Ops do not validate: their
callers pass arrays known to fit (C-contiguous, writable, of one float dtype, of the
shapes the geometry was worked out for). This is where a per-shape choice of algorithm
belongs, made once when the op is built.
"""

from __future__ import annotations

from types import ModuleType

import numpy as np

from . import kernels, reference
from .kernels import _tuning as kernels_tuning
from .validation import describe

BACKENDS = ("numba", "numpy")
# Samples per partial sum of the convolutions' weight gradients, and the kernel that adds
# such parts in order (distributed training adds the parts of a batch's chunks from all
# ranks with it).
GRAD_CHUNK = kernels_tuning.GRAD_CHUNK
sum_parts = kernels.sum_parts


def backend_module(backend: str) -> ModuleType:
    """The module of kernels (or of NumPy oracles, with the same names and arguments)
    for a backend name."""
    # Only strings are compared: `array == "numba"` would raise an unrelated error.
    if isinstance(backend, str):
        if backend == "numba":
            return kernels
        if backend == "numpy":
            return reference
    raise ValueError(f"backend must be one of {BACKENDS}, got {describe(backend)}")


Grads = tuple[np.ndarray | None, np.ndarray, np.ndarray]


def grads_in(dtype: np.dtype, dx: np.ndarray | None, dw: np.ndarray, db: np.ndarray) -> Grads:
    """A backward kernel's (dx or None, dw, db) in the data dtype (the NumPy oracles
    return float64)."""
    return (None if dx is None else dx.astype(dtype, copy=False), dw.astype(dtype, copy=False),
            db.astype(dtype, copy=False))


class Conv2dOp:
    """A 2-D convolution of a fixed stride and geometry (pad_top, pad_left, out_h, out_w),
    optionally fused with a ReLU and with a max-pool of non-overlapping windows after it.

    x: (N, C, H, W); weight: (F, C, KH, KW); bias: (F,). ``relu_output`` is the output of
    a forward pass with ReLU (None: no ReLU); ``indices`` (uint8) the offset of each pool
    window's maximum inside its window, as the pooled forward pass returns it.
    """

    __slots__ = ("impl", "stride", "geometry")

    def __init__(self, backend: str, stride: tuple[int, int],
                 geometry: tuple[int, int, int, int]) -> None:
        self.impl = backend_module(backend)
        self.stride = stride
        self.geometry = geometry

    def forward(self, x: np.ndarray, weight: np.ndarray, bias: np.ndarray,
                relu: bool) -> np.ndarray:
        y = self.impl.conv2d_forward(x, weight, bias, *self.stride, *self.geometry, relu)
        return y.astype(x.dtype, copy=False)

    def forward_pooled(self, x: np.ndarray, weight: np.ndarray, bias: np.ndarray, relu: bool,
                       pool_size: tuple[int, int]) -> np.ndarray:
        """The pooled output, without the indices (inference)."""
        y = self.impl.conv2d_pool_forward(x, weight, bias, *self.stride, *self.geometry, relu,
                                          *pool_size)
        return y.astype(x.dtype, copy=False)

    def forward_pooled_with_indices(self, x: np.ndarray, weight: np.ndarray, bias: np.ndarray,
                                    relu: bool, pool_size: tuple[int, int]
                                    ) -> tuple[np.ndarray, np.ndarray]:
        """(pooled output, indices): training."""
        y, indices = self.impl.conv2d_pool_forward_with_indices(
            x, weight, bias, *self.stride, *self.geometry, relu, *pool_size)
        return y.astype(x.dtype, copy=False), indices

    def backward(self, x: np.ndarray, weight: np.ndarray, dy: np.ndarray,
                 relu_output: np.ndarray | None, need_input_grad: bool,
                 parts: bool = False) -> Grads:
        """(dx or None, dw, db); with parts, dw and db are per-chunk partial sums (the
        kernels' *_parts functions), left in the dtype they are summed in."""
        relu = relu_output is not None
        backward = self.impl.conv2d_backward_parts if parts else self.impl.conv2d_backward
        dx, dw, db = backward(x, weight, dy, relu_output if relu else dy, relu, *self.stride,
                              *self.geometry[:2], need_input_grad)
        return _grads(x.dtype, dx, dw, db, parts)

    def backward_pooled(self, x: np.ndarray, weight: np.ndarray, dy: np.ndarray,
                        relu_output: np.ndarray | None, indices: np.ndarray,
                        pool_size: tuple[int, int], need_input_grad: bool,
                        parts: bool = False) -> Grads:
        """Gradients through the pool and the convolution; dy, relu_output and indices
        are of the pooled output's shape. parts as in `backward`."""
        relu = relu_output is not None
        backward = (self.impl.conv2d_pool_backward_parts if parts
                    else self.impl.conv2d_pool_backward)
        dx, dw, db = backward(x, weight, dy, relu_output if relu else dy, indices, relu,
                              *self.stride, *self.geometry, *pool_size, need_input_grad)
        return _grads(x.dtype, dx, dw, db, parts)


def _grads(dtype: np.dtype, dx: np.ndarray | None, dw: np.ndarray, db: np.ndarray,
           parts: bool) -> Grads:
    if parts:
        return (None if dx is None else dx.astype(dtype, copy=False)), dw, db
    return grads_in(dtype, dx, dw, db)


class MaxPool2dOp:
    """Max pooling of a fixed window and stride; argmax (int64) holds the flat index
    h * W + w of each window's first maximum in its input plane."""

    __slots__ = ("impl", "pool_size", "stride")

    def __init__(self, backend: str, pool_size: tuple[int, int],
                 stride: tuple[int, int]) -> None:
        self.impl = backend_module(backend)
        self.pool_size = pool_size
        self.stride = stride

    def forward(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        y, argmax = self.impl.maxpool2d_forward(x, *self.pool_size, *self.stride)
        return y.astype(x.dtype, copy=False), argmax

    def backward(self, dy: np.ndarray, argmax: np.ndarray, in_h: int, in_w: int) -> np.ndarray:
        return self.impl.maxpool2d_backward(dy, argmax, in_h, in_w).astype(dy.dtype, copy=False)


class DenseOp:
    """y = x @ weight + bias, optionally fused with a ReLU. x: (N, K); weight: (K, U)."""

    __slots__ = ("impl",)

    def __init__(self, backend: str) -> None:
        self.impl = backend_module(backend)

    def forward(self, x: np.ndarray, weight: np.ndarray, bias: np.ndarray,
                relu: bool) -> np.ndarray:
        return self.impl.dense_forward(x, weight, bias, relu).astype(x.dtype, copy=False)

    def backward(self, x: np.ndarray, weight: np.ndarray, dy: np.ndarray,
                 relu_output: np.ndarray | None, need_input_grad: bool) -> Grads:
        relu = relu_output is not None
        dx, dw, db = self.impl.dense_backward(x, weight, dy, relu_output if relu else dy, relu,
                                              need_input_grad)
        return grads_in(x.dtype, dx, dw, db)


def softmax_cross_entropy(backend: str, logits: np.ndarray,
                          labels: np.ndarray) -> tuple[float, np.ndarray, int]:
    """(mean loss, gradient in the logits' dtype, index of the first label out of range
    or -1). logits: (N, classes); labels: (N,) int64."""
    loss, grad, bad = backend_module(backend).softmax_cross_entropy(logits, labels)
    return float(loss), grad.astype(logits.dtype, copy=False), int(bad)


class AvgPool2dOp:
    """Average pooling of a fixed window and stride, without padding."""

    __slots__ = ("impl", "pool_size", "stride")

    def __init__(self, backend: str, pool_size: tuple[int, int],
                 stride: tuple[int, int]) -> None:
        self.impl = backend_module(backend)
        self.pool_size = pool_size
        self.stride = stride

    def forward(self, x: np.ndarray) -> np.ndarray:
        return self.impl.avgpool2d_forward(x, *self.pool_size, *self.stride).astype(
            x.dtype, copy=False)

    def backward(self, dy: np.ndarray, in_h: int, in_w: int) -> np.ndarray:
        return self.impl.avgpool2d_backward(dy, *self.pool_size, *self.stride, in_h,
                                            in_w).astype(dy.dtype, copy=False)


class GlobalAvgPool2dOp:
    """The mean of each (H, W) plane: (N, C, H, W) -> (N, C)."""

    __slots__ = ("impl",)

    def __init__(self, backend: str) -> None:
        self.impl = backend_module(backend)

    def forward(self, x: np.ndarray) -> np.ndarray:
        return self.impl.global_avgpool2d_forward(x).astype(x.dtype, copy=False)

    def backward(self, dy: np.ndarray, in_h: int, in_w: int) -> np.ndarray:
        return self.impl.global_avgpool2d_backward(dy, in_h, in_w).astype(dy.dtype, copy=False)


class DropoutOp:
    """Inverted dropout of a fixed rate: kept elements scaled by 1 / (1 - rate)."""

    __slots__ = ("impl", "scale")

    def __init__(self, backend: str, rate: float) -> None:
        self.impl = backend_module(backend)
        self.scale = 1.0 / (1.0 - rate)

    def apply(self, x: np.ndarray, keep: np.ndarray) -> np.ndarray:
        """x (or, backward, dy) where keep, scaled; zero elsewhere."""
        return self.impl.dropout_apply(x, keep, self.scale).astype(x.dtype, copy=False)


# Activation names and their kernel codes (kernels/activation.py).
ACTIVATIONS = {"relu": 0, "leaky_relu": 1, "sigmoid": 2, "tanh": 3}


class ActivationOp:
    """An element-wise activation. Its backward pass takes `saved`: the input for relu
    and leaky_relu, the output for sigmoid and tanh (`saves_output`)."""

    __slots__ = ("impl", "kind", "slope", "saves_output")

    def __init__(self, backend: str, name: str, negative_slope: float = 0.01) -> None:
        self.impl = backend_module(backend)
        self.kind = ACTIVATIONS[name]
        self.slope = float(negative_slope)
        self.saves_output = name in ("sigmoid", "tanh")

    def forward(self, x: np.ndarray) -> np.ndarray:
        return self.impl.activation_forward(x, self.kind, self.slope).astype(x.dtype,
                                                                             copy=False)

    def backward(self, dy: np.ndarray, saved: np.ndarray) -> np.ndarray:
        return self.impl.activation_backward(dy, saved, self.kind, self.slope).astype(
            dy.dtype, copy=False)


def batchnorm_scale_shift(gamma: np.ndarray, beta: np.ndarray, running_mean: np.ndarray,
                          running_var: np.ndarray, eps: float) -> tuple[np.ndarray, np.ndarray]:
    """Evaluation's per-channel affine map, in float64: y = x * scale + shift."""
    scale = gamma.astype(np.float64) / np.sqrt(running_var.astype(np.float64) + eps)
    return scale, beta.astype(np.float64) - running_mean.astype(np.float64) * scale


class BatchNormOp:
    """Batch normalisation of (N, C) or (N, C, H, W) inputs (the kernels see (N, C, L)),
    optionally followed by a ReLU. Statistics are float64 (C,) arrays."""

    __slots__ = ("impl",)

    def __init__(self, backend: str) -> None:
        self.impl = backend_module(backend)

    @staticmethod
    def _rows(a: np.ndarray) -> np.ndarray:
        return a.reshape(a.shape[0], a.shape[1], -1)

    def forward(self, x: np.ndarray, gamma: np.ndarray, beta: np.ndarray, eps: float,
                relu: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Training: (y, mean, biased var, invstd = 1 / sqrt(var + eps)) of the batch."""
        y, mean, var, invstd = self.impl.batchnorm_forward(self._rows(x), gamma, beta,
                                                           float(eps), relu)
        return y.astype(x.dtype, copy=False).reshape(x.shape), mean, var, invstd

    def inference(self, x: np.ndarray, scale: np.ndarray, shift: np.ndarray,
                  relu: bool) -> np.ndarray:
        y = self.impl.batchnorm_inference(self._rows(x), scale, shift, relu)
        return y.astype(x.dtype, copy=False).reshape(x.shape)

    def backward(self, dy: np.ndarray, x: np.ndarray, y: np.ndarray, mean: np.ndarray,
                 invstd: np.ndarray, gamma: np.ndarray, relu: bool,
                 need_input_grad: bool) -> Grads:
        """(dx or None, dgamma, dbeta); y is the forward output (read only if relu)."""
        dx, dgamma, dbeta = self.impl.batchnorm_backward(
            self._rows(dy), self._rows(x), self._rows(y), mean, invstd, gamma, relu,
            need_input_grad)
        dx = dx.reshape(x.shape) if need_input_grad else None
        return grads_in(x.dtype, dx, dgamma, dbeta)
