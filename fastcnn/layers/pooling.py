"""Pooling layers: max, average and global average."""

from __future__ import annotations

from .. import functional
from .base import Layer


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
        return _pool_output_shape("MaxPool2D", input_shape, self.pool_size, self.stride)

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


def _pool_output_shape(name: str, input_shape: tuple[int, ...], pool_size: tuple[int, int],
                       stride: tuple[int, int]) -> tuple[int, int, int]:
    if len(input_shape) != 3:
        raise ValueError(f"{name} expects (C, H, W) inputs, got shape {input_shape}")
    c, h, w = input_shape
    (ph, pw), (sh, sw) = pool_size, stride
    if ph > h or pw > w:
        raise ValueError(f"pool_size {pool_size} is larger than the input {(h, w)}")
    return (c, (h - ph) // sh + 1, (w - pw) // sw + 1)


class AvgPool2D(Layer):
    """Average pooling over (C, H, W) inputs, without padding; stride defaults to the
    pool size."""

    def __init__(self, pool_size: int | tuple[int, int] = 2,
                 stride: int | tuple[int, int] | None = None, backend: str = "numba") -> None:
        super().__init__(backend)
        self.pool_size = functional.pair(pool_size, "pool_size")
        self.stride = functional.pair(self.pool_size if stride is None else stride, "stride")
        self._shape = None

    _SAVED = ("_shape",)

    def compute_output_shape(self, input_shape):
        return _pool_output_shape("AvgPool2D", input_shape, self.pool_size, self.stride)

    def forward(self, x, training=True, rng=None):
        self._check_input(x)
        y = functional.avg_pool2d(x, self.pool_size, self.stride, backend=self.backend)
        if training:
            self._shape, self._batch = x.shape, len(x)
        return y

    def backward(self, dy, need_input_grad=True):
        self._need_forward(self._shape)
        self._check_dy(dy)
        return functional.avg_pool2d_backward(dy, self._shape, self.pool_size, self.stride,
                                              backend=self.backend)

    def get_config(self):
        return {"pool_size": list(self.pool_size), "stride": list(self.stride)}


class GlobalAvgPool2D(Layer):
    """The mean of each channel's plane: (C, H, W) -> (C,), as Keras' GlobalAveragePooling2D
    (PyTorch's AdaptiveAvgPool2d(1) followed by flatten)."""

    def __init__(self, backend: str = "numba") -> None:
        super().__init__(backend)
        self._shape = None

    _SAVED = ("_shape",)

    def compute_output_shape(self, input_shape):
        if len(input_shape) != 3:
            raise ValueError(f"GlobalAvgPool2D expects (C, H, W) inputs, got shape "
                             f"{input_shape}")
        return (input_shape[0],)

    def forward(self, x, training=True, rng=None):
        self._check_input(x)
        y = functional.global_avg_pool2d(x, backend=self.backend)
        if training:
            self._shape, self._batch = x.shape, len(x)
        return y

    def backward(self, dy, need_input_grad=True):
        self._need_forward(self._shape)
        self._check_dy(dy)
        return functional.global_avg_pool2d_backward(dy, self._shape, backend=self.backend)
