"""Dense, Flatten and the element-wise layers: ReLU and Dropout."""

from __future__ import annotations

import math

import numpy as np

from .. import functional, ops
from ..initializers import initialize
from .base import Layer, _activation, _as_built, _initializer


class ReLU(Layer):
    def __init__(self, backend: str = "numba") -> None:
        super().__init__(backend)
        self._mask = None

    _SAVED = ("_mask",)

    def forward(self, x, training=True, rng=None):
        self._check_input(x)
        y = np.maximum(x, 0)
        if training:
            self._mask, self._batch = x > 0, len(x)
        return y

    def backward(self, dy, need_input_grad=True):
        self._need_forward(self._mask)
        self._check_dy(dy)
        return np.where(self._mask, dy, 0).astype(dy.dtype, copy=False)


class Dropout(Layer):
    """Inverted dropout: in training each element is zeroed with probability ``rate``
    (masks drawn from the model's generator, so a resumed run draws the same ones) and
    the rest scaled by 1 / (1 - rate); the identity in evaluation. As PyTorch's Dropout
    and Keras' Dropout, whose ``rate``/``p`` mean the same."""

    def __init__(self, rate: float, backend: str = "numba") -> None:
        super().__init__(backend)
        self.rate = functional.check_rate(rate)
        self._keep = None

    _SAVED = ("_keep",)

    def forward(self, x, training=True, rng=None):
        self._check_input(x)
        if not training:
            return x
        if rng is None:
            raise ValueError("Dropout needs a numpy Generator in training: "
                             "forward(x, training=True, rng=...)")
        y, self._keep = functional.dropout(x, self.rate, rng, backend=self.backend)
        self._batch = len(x)
        return y

    def backward(self, dy, need_input_grad=True):
        self._need_forward(self._keep)
        self._check_dy(dy)
        return functional.dropout_backward(dy, self._keep, self.rate, backend=self.backend)

    def get_config(self):
        return {"rate": self.rate}


class Flatten(Layer):
    def compute_output_shape(self, input_shape):
        return (int(np.prod(input_shape)),)

    def forward(self, x, training=True, rng=None):
        self._check_input(x)
        if training:
            self._batch = len(x)
        return x.reshape(x.shape[0], -1)

    def backward(self, dy, need_input_grad=True):
        self._check_dy(dy)
        return dy.reshape(dy.shape[0], *self.input_shape)


class Dense(Layer):
    """Fully connected layer y = x @ weight + bias; weight (in, units), bias (units,).

    ``activation="relu"`` fuses the ReLU into the kernel.
    """

    def __init__(self, units: int, activation: str | None = None,
                 kernel_initializer: str = "he_normal", backend: str = "numba") -> None:
        super().__init__(backend)
        self.units = functional.check_int(units, "units", 1)
        self.activation = _activation(activation)
        self.kernel_initializer = _initializer(kernel_initializer)
        self._x = self._y = None

    _SAVED = ("_x", "_y")

    def compute_output_shape(self, input_shape):
        if len(input_shape) != 1:
            raise ValueError(f"Dense expects flat inputs (features,), got shape {input_shape}; "
                             "put a Flatten before it")
        return (self.units,)

    def parameter_count(self, input_shape):
        return math.prod(input_shape) * self.units

    def build(self, input_shape, rng, dtype=np.float32):
        out = super().build(input_shape, rng, dtype)
        n_in = input_shape[0]
        self.params = {
            "weight": initialize(self.kernel_initializer, (n_in, self.units), n_in, self.units,
                                 rng, dtype),
            "bias": np.zeros(self.units, dtype=dtype),
        }
        self._op = ops.DenseOp(self.backend)
        return out

    def _is_as_built(self, x: np.ndarray) -> bool:
        return (_as_built(x, (len(x), *self.input_shape), self.dtype) and len(x) > 0
                and len(x) * max(self.units, self.input_shape[0]) <= functional.MAX_ELEMENTS
                and _as_built(self.params["weight"], (self.input_shape[0], self.units),
                              self.dtype)
                and _as_built(self.params["bias"], (self.units,), self.dtype))

    def forward(self, x, training=True, rng=None):
        self._check_input(x)
        relu = self.activation == "relu"
        if self._is_as_built(x):
            y = self._op.forward(x, self.params["weight"], self.params["bias"], relu)
        else:
            y = functional.dense(x, self.params["weight"], self.params["bias"], relu=relu,
                                 backend=self.backend)
        if training:
            self._x, self._y, self._batch = x, y, len(x)
        return y

    def backward(self, dy, need_input_grad=True):
        self._need_forward(self._x)
        self._check_dy(dy)
        relu_output = self._y if self.activation == "relu" else None
        if self._backward_is_as_built(dy, need_input_grad):
            dx, dw, db = self._op.backward(self._x, self.params["weight"], dy, relu_output,
                                           need_input_grad)
        else:
            dx, dw, db = functional.dense_backward(self._x, self.params["weight"], dy,
                                                   relu_output=relu_output,
                                                   need_input_grad=need_input_grad,
                                                   backend=self.backend)
        self.grads = {"weight": dw, "bias": db}
        return dx

    def get_config(self):
        return {"units": self.units, "activation": self.activation,
                "kernel_initializer": self.kernel_initializer}
