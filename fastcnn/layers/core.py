"""Dense, Flatten and the element-wise layers: activations and Dropout."""

from __future__ import annotations

import math

import numpy as np

from .. import functional, ops
from ..initializers import initialize
from .base import Layer, _activation, _as_built, _initializer, _unfused_activation


class _Activation(Layer):
    """An element-wise activation (no parameters), on `kernels/activation.py`."""

    name = ""

    def __init__(self, backend: str = "numba", negative_slope: float = 0.01) -> None:
        super().__init__(backend)
        _, self._slope = functional.check_activation(self.name, negative_slope)
        self._op = ops.ActivationOp(backend, self.name, self._slope)
        self._saved = None  # what backward needs: the input, or the output (sigmoid, tanh)

    _SAVED = ("_saved",)

    def forward(self, x, training=True, rng=None):
        self._check_input(x)
        y = functional.activation(x, self.name, negative_slope=self._slope,
                                  backend=self.backend)
        if training:
            self._saved, self._batch = (y if self._op.saves_output else x), len(x)
        return y

    def backward(self, dy, need_input_grad=True):
        self._need_forward(self._saved)
        self._check_dy(dy)
        return functional.activation_backward(dy, self._saved, self.name,
                                              negative_slope=self._slope, backend=self.backend)


class ReLU(_Activation):
    """max(x, 0); a NaN stays NaN."""

    name = "relu"

    def __init__(self, backend: str = "numba") -> None:
        super().__init__(backend)


class LeakyReLU(_Activation):
    """x for x > 0, negative_slope * x below: PyTorch's LeakyReLU (default 0.01; Keras 3's
    LeakyReLU defaults to 0.2)."""

    name = "leaky_relu"

    def __init__(self, negative_slope: float = 0.01, backend: str = "numba") -> None:
        super().__init__(backend, negative_slope)

    def get_config(self):
        return {"negative_slope": self._slope}


class Sigmoid(_Activation):
    """1 / (1 + exp(-x)), computed without overflow for any x (float32: within 2.5 ulp,
    kernels/mathf.py)."""

    name = "sigmoid"

    def __init__(self, backend: str = "numba") -> None:
        super().__init__(backend)


class Tanh(_Activation):
    """tanh(x) (float32: within 1.5 ulp, kernels/mathf.py)."""

    name = "tanh"

    def __init__(self, backend: str = "numba") -> None:
        super().__init__(backend)


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
        # An activation the kernel does not fuse runs after it; backward needs its saved
        # input or output.
        self._post = _unfused_activation(self.activation, backend)
        self._post_saved = None
        self.kernel_initializer = _initializer(kernel_initializer)
        self._x = self._y = None

    _SAVED = ("_x", "_y", "_post_saved")

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
        if self._post is not None:
            pre, y = y, self._post.forward(y)
            if training:
                self._post_saved = y if self._post.saves_output else pre
        if training:
            self._x, self._y, self._batch = x, y, len(x)
        return y

    def backward(self, dy, need_input_grad=True):
        self._need_forward(self._x)
        self._check_dy(dy)
        if self._post is not None:  # to the gradient of the kernel's output
            dy = self._post.backward(np.ascontiguousarray(dy), self._post_saved)
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
