"""Layers: thin, stateful wrappers that validate, run a prepared operation (`fastcnn.ops`)
or call `fastcnn.functional`, and keep what the backward pass needs. Shapes exclude the
batch axis unless stated.

The layer contract (what `Sequential`, the optimisers and saving rely on):

- ``build(input_shape, rng, dtype)`` allocates the parameters (drawn from ``rng``) and
  buffers and prepares the layer's operations for that shape; it returns the output
  shape. ``compute_output_shape`` and ``parameter_count`` answer for a shape without
  allocating (the model checks sizes before building).
- ``params``: trainable arrays, optimised and saved; ``grads``: the same keys, filled by
  ``backward``; ``buffers``: arrays saved with the model but never optimised (running
  statistics).
- ``forward(x, training, rng)``: ``rng`` is the model's generator, for layers that draw
  random numbers in training (its state is checkpointed, so a resumed run draws the
  same); ``backward(dy, need_input_grad)`` returns dx, or None when not needed.
- ``get_config()``: the constructor's arguments, as JSON values.

Adding a layer (BatchNorm2D, say) touches: this module (the class, and `LAYERS`, which
is how saved models find it), its kernels in `kernels/` with the NumPy oracles of the
same names in `fastcnn/reference.py` and `fastcnn/naive.py`, an op in `fastcnn/ops.py`
and a validated function in `fastcnn/functional.py` if it has kernels, and, if it runs
fused with the layer before it, one entry in `fastcnn/plan.py`'s `FUSIONS`. Nothing in
the model, the optimisers, saving or checkpointing changes.
"""

from __future__ import annotations

import math

import numpy as np

from . import functional, ops
from .initializers import INITIALIZERS, initialize


class Layer:
    """Base class. A layer is built once for an input shape, then runs forward/backward."""

    def __init__(self, backend: str = "numba") -> None:
        ops.backend_module(backend)  # validates the name
        self.backend = backend
        self.params: dict[str, np.ndarray] = {}
        self.buffers: dict[str, np.ndarray] = {}
        self.grads: dict[str, np.ndarray] = {}
        self.input_shape: tuple[int, ...] | None = None
        self.output_shape: tuple[int, ...] | None = None
        self.dtype = np.dtype(np.float32)
        self._batch = 0  # samples in the last training forward pass

    def build(self, input_shape: tuple[int, ...], rng: np.random.Generator,
              dtype: np.dtype = np.float32) -> tuple[int, ...]:
        self.dtype = np.dtype(dtype)
        self.input_shape = tuple(int(s) for s in input_shape)
        self.output_shape = self.compute_output_shape(self.input_shape)
        return self.output_shape

    def compute_output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        return input_shape

    def parameter_count(self, input_shape: tuple[int, ...]) -> int:
        """Elements of the parameters `build` would allocate for input_shape."""
        return 0

    def forward(self, x: np.ndarray, training: bool = True,
                rng: np.random.Generator | None = None) -> np.ndarray:
        raise NotImplementedError

    def backward(self, dy: np.ndarray, need_input_grad: bool = True) -> np.ndarray | None:
        """Fill `grads` and return dL/dinput (None allowed when not need_input_grad)."""
        raise NotImplementedError

    def get_config(self) -> dict:
        return {}

    # The attributes that hold what the last training pass saved for backward.
    _SAVED: tuple[str, ...] = ()

    def release(self) -> None:
        """Forget what the last training pass saved: backward then refuses to run, and
        the activations can be freed. (A fused step calls it on the layer it stands in
        for, whose own state would otherwise be an older pass's.)"""
        for name in self._SAVED:
            setattr(self, name, None)

    def _check_input(self, x: np.ndarray) -> None:
        if self.input_shape is None:
            raise RuntimeError(f"{type(self).__name__} is not built; put it in a Sequential")
        if not isinstance(x, np.ndarray) or x.ndim != len(self.input_shape) + 1 \
                or x.shape[1:] != self.input_shape:
            shape = getattr(x, "shape", type(x).__name__)
            raise ValueError(
                f"{type(self).__name__} expects input of shape (N, "
                f"{', '.join(map(str, self.input_shape))}), got {shape}"
            )
        if x.dtype != self.dtype:
            raise TypeError(f"{type(self).__name__} expects {self.dtype} input, got {x.dtype}")

    def _check_dy(self, dy: np.ndarray) -> None:
        """dy must match the output of the last training forward pass exactly."""
        expected = (self._batch, *self.output_shape)
        if not isinstance(dy, np.ndarray) or dy.shape != expected:
            shape = getattr(dy, "shape", type(dy).__name__)
            raise ValueError(f"{type(self).__name__}.backward expects dy of shape {expected}, "
                             f"got {shape}")
        if dy.dtype != self.dtype:
            raise TypeError(f"{type(self).__name__}.backward expects {self.dtype} dy, "
                            f"got {dy.dtype}")

    def _is_as_built(self, x: np.ndarray) -> bool:
        """Whether x and the parameters are exactly as built, so that the layer's prepared
        operation may run on them unchecked (never, for a layer without one)."""
        return False

    def _backward_is_as_built(self, dy: np.ndarray, need_input_grad: object) -> bool:
        """`_is_as_built` for the saved input, with a plain dy and a plain bool flag."""
        return (self._is_as_built(self._x) and _as_built(dy, dy.shape, self.dtype)
                and isinstance(need_input_grad, bool))

    def _need_forward(self, saved: object) -> None:
        if saved is None:
            raise RuntimeError(
                f"{type(self).__name__}.backward called before forward(training=True)")

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({args})"


def _as_built(a: object, shape: tuple[int, ...], dtype: np.dtype) -> bool:
    """True if `a` is a plain, writable, C-contiguous array of exactly this shape and dtype.

    The layers then run the operations they prepared when built. Anything
    else (a parameter someone replaced, a strided view, an empty batch) goes through
    `fastcnn.functional`, whose checks copy what they can and name what they cannot: the
    same results and the same errors, at the price of those checks on every call (a few
    percent of a training step: bench/README.md).
    """
    return (type(a) is np.ndarray and a.shape == shape and a.dtype == dtype
            and a.flags.c_contiguous and a.flags.writeable)


def _activation(name: str | None) -> str | None:
    if name not in (None, "relu"):
        raise ValueError(f"activation must be None or 'relu', got {name!r}")
    return name


def _initializer(name: str) -> str:
    if name not in INITIALIZERS:
        raise ValueError(f"kernel_initializer must be one of {INITIALIZERS}, got {name!r}")
    return name


class Conv2D(Layer):
    """2-D convolution over (C, H, W) inputs; weight (filters, C, KH, KW), bias (filters,).

    ``activation="relu"`` fuses the ReLU into the convolution kernel.
    """

    def __init__(self, filters: int, kernel_size: int | tuple[int, int], stride=1,
                 padding: str | int | tuple[int, int] = "valid", activation: str | None = None,
                 kernel_initializer: str = "he_normal", backend: str = "numba") -> None:
        super().__init__(backend)
        self.filters = functional.check_int(filters, "filters", 1)
        self.kernel_size = functional.pair(kernel_size, "kernel_size")
        self.stride = functional.pair(stride, "stride")
        if isinstance(padding, str):
            functional.conv_geometry(1, 1, (1, 1), (1, 1), padding)  # validates the word
        else:
            padding = functional.pair(padding, "padding", minimum=0)
        self.padding = padding
        self.activation = _activation(activation)
        self.kernel_initializer = _initializer(kernel_initializer)
        # What backward needs: the input, and the output (unfused) or, after a fused
        # training pass, (pool size, pooled output, indices).
        self._x = self._y = self._pooled = None

    _SAVED = ("_x", "_y", "_pooled")

    def compute_output_shape(self, input_shape):
        if len(input_shape) != 3:
            raise ValueError(f"Conv2D expects (C, H, W) inputs, got shape {input_shape}")
        _, _, oh, ow = functional.conv_geometry(input_shape[1], input_shape[2],
                                                self.kernel_size, self.stride, self.padding)
        return (self.filters, oh, ow)

    def parameter_count(self, input_shape):
        return self.filters * input_shape[0] * self.kernel_size[0] * self.kernel_size[1]

    def build(self, input_shape, rng, dtype=np.float32):
        out = super().build(input_shape, rng, dtype)
        shape = (self.filters, input_shape[0], *self.kernel_size)
        fan_in = input_shape[0] * self.kernel_size[0] * self.kernel_size[1]
        fan_out = self.filters * self.kernel_size[0] * self.kernel_size[1]
        self.params = {
            "weight": initialize(self.kernel_initializer, shape, fan_in, fan_out, rng, dtype),
            "bias": np.zeros(self.filters, dtype=dtype),
        }
        # (pad_top, pad_left, out_h, out_w), and the largest array per sample a kernel
        # allocates (output or padded input), for the as-built check.
        geometry = functional.conv_geometry(input_shape[1], input_shape[2], self.kernel_size,
                                            self.stride, self.padding)
        buffers = functional.conv_buffer_shapes((1, *input_shape), shape, self.stride, geometry)
        self._sample_elements = max(math.prod(b) for b in buffers)
        self._op = ops.Conv2dOp(self.backend, self.stride, geometry)
        return out

    def _is_as_built(self, x: np.ndarray) -> bool:
        return (_as_built(x, (len(x), *self.input_shape), self.dtype) and len(x) > 0
                and len(x) * self._sample_elements <= functional.MAX_ELEMENTS
                and _as_built(self.params["weight"],
                              (self.filters, self.input_shape[0], *self.kernel_size), self.dtype)
                and _as_built(self.params["bias"], (self.filters,), self.dtype))

    def forward(self, x, training=True, rng=None):
        self._check_input(x)
        relu = self.activation == "relu"
        weight, bias = self.params["weight"], self.params["bias"]
        if self._is_as_built(x):
            y = self._op.forward(x, weight, bias, relu)
        else:
            y = functional.conv2d(x, weight, bias, self.stride, self.padding, relu=relu,
                                  backend=self.backend)
        if training:
            self._x, self._y, self._pooled, self._batch = x, y, None, len(x)
        return y

    def forward_pooled(self, x: np.ndarray, pool: MaxPool2D, training: bool = False) -> np.ndarray:
        """This layer and the MaxPool2D after it, fused: the same result as
        pool.forward(self.forward(x, training), training), without storing the unpooled
        output. The pool's windows must not overlap (see `fuses_with`); only its
        configuration is read. After a training pass, `backward_pooled` (not `backward`)
        takes the gradient of the pooled output.
        """
        self._check_input(x)
        relu = self.activation == "relu"
        weight, bias = self.params["weight"], self.params["bias"]
        if self._is_as_built(x):
            if not training:
                return self._op.forward_pooled(x, weight, bias, relu, pool.pool_size)
            y, indices = self._op.forward_pooled_with_indices(x, weight, bias, relu,
                                                              pool.pool_size)
        elif not training:
            return functional.conv2d_max_pool2d(x, weight, bias, self.stride, self.padding,
                                                pool.pool_size, relu=relu, backend=self.backend)
        else:
            y, indices = functional.conv2d_max_pool2d(
                x, weight, bias, self.stride, self.padding, pool.pool_size, relu=relu,
                return_indices=True, backend=self.backend)
        self._x, self._y, self._pooled, self._batch = x, None, (pool.pool_size, y, indices), len(x)
        return y

    def fuses_with(self, layer: Layer, training: bool = False) -> bool:
        """True if this layer and `layer` may run as one `forward_pooled`: a MaxPool2D
        with non-overlapping windows (of at most 256 elements, for training)."""
        return (isinstance(layer, MaxPool2D) and layer.stride == layer.pool_size
                and layer.backend == self.backend and layer.input_shape == self.output_shape
                and (not training or layer.pool_size[0] * layer.pool_size[1]
                     <= functional.MAX_POOL_WINDOW))

    def backward(self, dy, need_input_grad=True):
        if self._pooled is not None:
            raise RuntimeError("Conv2D ran fused with the MaxPool2D after it in the last "
                               "training pass: call backward_pooled with the pool's gradient")
        self._need_forward(self._y)
        self._check_dy(dy)
        relu_output = self._y if self.activation == "relu" else None
        if self._backward_is_as_built(dy, need_input_grad):
            dx, dw, db = self._op.backward(self._x, self.params["weight"], dy, relu_output,
                                           need_input_grad)
        else:
            dx, dw, db = functional.conv2d_backward(
                self._x, self.params["weight"], dy, self.stride, self.padding,
                relu_output=relu_output, need_input_grad=need_input_grad, backend=self.backend)
        self.grads = {"weight": dw, "bias": db}
        return dx

    def backward_pooled(self, dy: np.ndarray, need_input_grad: bool = True) -> np.ndarray | None:
        """`backward` through the MaxPool2D fused in the last `forward_pooled(training=True)`:
        dy is the gradient of the pooled output."""
        self._need_forward(self._pooled)
        pool_size, y, indices = self._pooled
        expected = (self._batch, *y.shape[1:])
        if not isinstance(dy, np.ndarray) or dy.shape != expected:
            shape = getattr(dy, "shape", type(dy).__name__)
            raise ValueError(f"MaxPool2D.backward expects dy of shape {expected}, got {shape}")
        if dy.dtype != self.dtype:
            raise TypeError(f"MaxPool2D.backward expects {self.dtype} dy, got {dy.dtype}")
        relu_output = y if self.activation == "relu" else None
        if self._backward_is_as_built(dy, need_input_grad):
            # indices come from this layer's own forward kernel: each lies in its window.
            dx, dw, db = self._op.backward_pooled(self._x, self.params["weight"], dy,
                                                  relu_output, indices, pool_size,
                                                  need_input_grad)
        else:
            dx, dw, db = functional.conv2d_max_pool2d_backward(
                self._x, self.params["weight"], dy, indices, self.stride, self.padding,
                pool_size, relu_output=relu_output, need_input_grad=need_input_grad,
                backend=self.backend)
        self.grads = {"weight": dw, "bias": db}
        return dx

    def get_config(self):
        return {"filters": self.filters, "kernel_size": list(self.kernel_size),
                "stride": list(self.stride),
                "padding": self.padding if isinstance(self.padding, str) else list(self.padding),
                "activation": self.activation, "kernel_initializer": self.kernel_initializer}


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


class MaxPool2D(Layer):
    """Max pooling over (C, H, W) inputs; stride defaults to the pool size."""

    def __init__(self, pool_size: int | tuple[int, int] = 2,
                 stride: int | tuple[int, int] | None = None, backend: str = "numba") -> None:
        super().__init__(backend)
        self.pool_size = functional.pair(pool_size, "pool_size")
        self.stride = functional.pair(self.pool_size if stride is None else stride, "stride")
        self._argmax = None
        self._shape = None

    _SAVED = ("_argmax", "_shape")

    def compute_output_shape(self, input_shape):
        if len(input_shape) != 3:
            raise ValueError(f"MaxPool2D expects (C, H, W) inputs, got shape {input_shape}")
        c, h, w = input_shape
        (ph, pw), (sh, sw) = self.pool_size, self.stride
        if ph > h or pw > w:
            raise ValueError(f"pool_size {self.pool_size} is larger than the input {(h, w)}")
        return (c, (h - ph) // sh + 1, (w - pw) // sw + 1)

    def forward(self, x, training=True, rng=None):
        self._check_input(x)
        y, argmax = functional.max_pool2d(x, self.pool_size, self.stride, backend=self.backend)
        if training:
            self._argmax, self._shape, self._batch = argmax, x.shape, len(x)
        return y

    def backward(self, dy, need_input_grad=True):
        self._need_forward(self._argmax)
        self._check_dy(dy)
        return functional.max_pool2d_backward(dy, self._argmax, self._shape, backend=self.backend)

    def get_config(self):
        return {"pool_size": list(self.pool_size), "stride": list(self.stride)}


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


LAYERS = {cls.__name__: cls for cls in (Conv2D, ReLU, MaxPool2D, Flatten, Dense)}
