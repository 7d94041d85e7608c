"""Conv2D: the convolution layer, with its fused ReLU and max-pool."""

from __future__ import annotations

import math

import numpy as np

from .. import functional, kernels, ops
from ..initializers import initialize
from .base import Layer, _activation, _as_built, _initializer, _unfused_activation
from .pooling import MaxPool2D


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
        # An activation the kernel does not fuse runs after it; backward needs its saved
        # input or output.
        self._post = _unfused_activation(self.activation, backend)
        self._post_saved = None
        self.kernel_initializer = _initializer(kernel_initializer)
        # What backward needs: the input, and the output (unfused) or, after a fused
        # training pass, (pool size, pooled output, indices).
        self._x = self._y = self._pooled = None
        # Set by distributed training (`fastcnn.distributed`): backward then leaves in
        # `grads` the weight and bias gradients of each chunk of samples, unsummed.
        self.grad_parts = False

    _SAVED = ("_x", "_y", "_pooled", "_post_saved")

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

    @property
    def algorithm(self) -> str:
        """How this built layer's kernels compute it, fixed by its shape (see
        `fastcnn.kernels.conv.algorithm`): "flat", "phases" or "gemm"; "numpy" on the
        NumPy backend."""
        if self.backend != "numba":
            return "numpy"
        _, _, oh, ow = self._op.geometry
        return kernels.conv.algorithm(self.input_shape[0], *self.kernel_size, *self.stride,
                                      oh, ow)

    def params_as_built(self) -> bool:
        """Whether the weight and bias are plain arrays of the shapes and dtype built."""
        return (_as_built(self.params["weight"],
                          (self.filters, self.input_shape[0], *self.kernel_size), self.dtype)
                and _as_built(self.params["bias"], (self.filters,), self.dtype))

    def _is_as_built(self, x: np.ndarray) -> bool:
        return (_as_built(x, (len(x), *self.input_shape), self.dtype) and len(x) > 0
                and len(x) * self._sample_elements <= functional.MAX_ELEMENTS
                and self.params_as_built())

    def forward(self, x, training=True, rng=None):
        self._check_input(x)
        relu = self.activation == "relu"
        weight, bias = self.params["weight"], self.params["bias"]
        if self._is_as_built(x):
            y = self._op.forward(x, weight, bias, relu)
        else:
            y = functional.conv2d(x, weight, bias, self.stride, self.padding, relu=relu,
                                  backend=self.backend)
        if self._post is not None:
            pre, y = y, self._post.forward(y)
            if training:
                self._post_saved = y if self._post.saves_output else pre
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
        if self._post is not None:
            raise ValueError(f"forward_pooled fuses no activation but relu, this Conv2D has "
                             f"activation={self.activation!r}")
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
        with non-overlapping windows (of at most 256 elements, for training), after no
        activation or a ReLU (the ones the kernel fuses)."""
        return (isinstance(layer, MaxPool2D) and layer.stride == layer.pool_size
                and self.activation in (None, "relu")
                and layer.backend == self.backend and layer.input_shape == self.output_shape
                and (not training or layer.pool_size[0] * layer.pool_size[1]
                     <= functional.MAX_POOL_WINDOW))

    def backward(self, dy, need_input_grad=True):
        if self._pooled is not None:
            raise RuntimeError("Conv2D ran fused with the MaxPool2D after it in the last "
                               "training pass: call backward_pooled with the pool's gradient")
        self._need_forward(self._y)
        self._check_dy(dy)
        if self._post is not None:  # to the gradient of the kernel's output
            dy = self._post.backward(np.ascontiguousarray(dy), self._post_saved)
        relu_output = self._y if self.activation == "relu" else None
        if self._backward_is_as_built(dy, need_input_grad):
            dx, dw, db = self._op.backward(self._x, self.params["weight"], dy, relu_output,
                                           need_input_grad, self.grad_parts)
        else:
            self._refuse_parts()
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
        self._check_dy(dy, y.shape[1:], "MaxPool2D")
        relu_output = y if self.activation == "relu" else None
        if self._backward_is_as_built(dy, need_input_grad):
            # indices come from this layer's own forward kernel: each lies in its window.
            dx, dw, db = self._op.backward_pooled(self._x, self.params["weight"], dy,
                                                  relu_output, indices, pool_size,
                                                  need_input_grad, self.grad_parts)
        else:
            self._refuse_parts()
            dx, dw, db = functional.conv2d_max_pool2d_backward(
                self._x, self.params["weight"], dy, indices, self.stride, self.padding,
                pool_size, relu_output=relu_output, need_input_grad=need_input_grad,
                backend=self.backend)
        self.grads = {"weight": dw, "bias": db}
        return dx

    def _refuse_parts(self) -> None:
        if self.grad_parts:
            raise RuntimeError("Conv2D: per-chunk gradients need the layer's arrays as built "
                               "(C-contiguous, its dtype, its parameters not replaced)")

    def get_config(self):
        return {"filters": self.filters, "kernel_size": list(self.kernel_size),
                "stride": list(self.stride),
                "padding": self.padding if isinstance(self.padding, str) else list(self.padding),
                "activation": self.activation, "kernel_initializer": self.kernel_initializer}
