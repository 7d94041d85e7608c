"""The notebook's five layer classes, per sample, in float64, on fastcnn's kernels.

See the package docstring (``fastcnn.compat``) for the interface and its deliberate
differences from the notebook.
"""

# The notebook draws from the global np.random state; users' np.random.seed must work.
# ruff: noqa: NPY002

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from .. import ops
from ..kernels.compat import (
    dense_backward_sgd,
    dense_forward,
    dense_sgd_update,
    maxpool_backward_ties,
    maxpool_forward,
    softmax_backward,
    softmax_forward,
)

_F64 = np.dtype(np.float64)
_REAL_KINDS = "biuf"


def _real(x: object, who: str) -> np.ndarray:
    a = x if isinstance(x, np.ndarray) else np.asarray(x)
    if a.dtype.kind not in _REAL_KINDS:
        raise TypeError(f"{who} needs real numbers, got dtype {a.dtype}")
    return a


def _f64(x: object, shape: tuple[int, ...], who: str) -> np.ndarray:
    """``x`` as a C-contiguous float64 array of exactly ``shape`` (no copy if it is one)."""
    a = _real(x, who)
    if a.shape != shape:
        raise ValueError(f"{who} expects shape {shape}, got {a.shape}")
    if a.dtype != _F64 or not a.flags.c_contiguous:
        a = np.ascontiguousarray(a, dtype=_F64)
    return a


def _param(a: object, shape: tuple[int, ...], name: str) -> np.ndarray:
    """A public parameter checked before a kernel reads it (kernels do no bounds checks)."""
    if not isinstance(a, np.ndarray) or a.shape != shape:
        raise ValueError(f"{name} must be an array of shape {shape}, got {getattr(a, 'shape', a)}")
    return _f64(a, shape, name)


def _positive_int(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def _flat(x: object, size: int, who: str) -> np.ndarray:
    """A flat float64 copy or view of an input of ``size`` values."""
    a = _real(x, who)
    if a.size != size:
        raise ValueError(f"{who} expects {size} values (shape ({size},) or any reshape of "
                         f"it), got shape {a.shape}")
    return np.ascontiguousarray(a.reshape(-1), dtype=_F64)


def _updatable(w: object, shape: tuple[int, int]) -> bool:
    """Whether a kernel can update ``w`` in place: a writeable C-contiguous float64 array."""
    return (isinstance(w, np.ndarray) and w.shape == shape and w.dtype == _F64
            and w.flags.c_contiguous and w.flags.writeable)


def _sgd_outer(w: np.ndarray, x: np.ndarray, g: np.ndarray, learn_rate: float) -> None:
    """w -= learn_rate * outer(x, g), fused when w is a float64 array the kernel can take."""
    if w.shape != (x.size, g.size):
        raise ValueError(f"weights must have shape {(x.size, g.size)}, got {w.shape}")
    if _updatable(w, w.shape):
        dense_sgd_update(w, x, g, float(learn_rate))
    else:
        w -= learn_rate * (x[:, None] @ g[None])


def _dense_params(layer: FeedForward | Softmax) -> tuple[np.ndarray, np.ndarray]:
    """(weights, bias) of a dense layer in the form the kernels read."""
    weights = layer.weights
    if not isinstance(weights, np.ndarray) or weights.ndim != 2:
        raise ValueError(f"weights must be a 2-D array, got {getattr(weights, 'shape', weights)}")
    w = _param(weights, weights.shape, "weights")
    return w, _param(layer.bias, (w.shape[1],), "bias")


class ConvLayer:
    """'Same' 2-D convolution (stride 1) with an untied bias, over one (depth, h, w) image.

    The input is padded with the constant ``padding``, ``kernel_size // 2`` wide.
    ``h`` and ``w`` are the padded height and width; kernels: (num_kernels, d, k, k);
    bias: (num_kernels, height, width).
    """

    def __init__(
        self,
        input_shape: tuple[int, int, int],
        kernel_size: int = 5,
        num_kernels: int = 6,
        padding: float = 0,
    ) -> None:
        shape = tuple(input_shape)
        if len(shape) != 3:
            raise ValueError(f"input_shape must be (depth, height, width), got {input_shape!r}")
        depth, height, width = (_positive_int(s, "input_shape entries") for s in shape)
        k = _positive_int(kernel_size, "kernel_size")
        if k % 2 == 0:
            raise ValueError(f"kernel_size must be odd for 'same' output, got {k}")
        num_kernels = _positive_int(num_kernels, "num_kernels")
        if not np.isfinite(_real(padding, "padding")).all() or np.ndim(padding) != 0:
            raise ValueError(f"padding must be one finite number, got {padding!r}")
        self.d = depth
        self.h = height + k - 1
        self.w = width + k - 1
        self.input_shape = (depth, height, width)
        self.padding = padding
        self.num_kernels = num_kernels
        self.kernel_size = k
        self.pad_size = k // 2
        self.kernel_shape = (num_kernels, depth, k, k)
        self.bias_shape = (num_kernels, height, width)
        # The notebook's draws, in its order, so np.random.seed reproduces its weights.
        self.kernels = np.random.randn(*self.kernel_shape) / (k * k)
        self.bias = np.random.randn(*self.bias_shape) / (self.h * self.w)
        # Private copies of the geometry: the kernels trust it, and the public
        # attributes above can be reassigned by user code.
        self._in_shape = self.input_shape
        self._kernel_shape = self.kernel_shape
        self._bias_shape = self.bias_shape
        self._padded_shape = (depth, self.h, self.w)
        self._k = k
        self._zero_bias = np.zeros(num_kernels)
        self._padded: np.ndarray | None = None
        # The convolution of an already padded image, and its backward pass from the
        # unpadded input (zero padding: the kernel pads) or from the padded one.
        p = k // 2
        self._forward_op = ops.Conv2dOp("numba", (1, 1), (0, 0, height, width))
        self._backward_ops = {True: ops.Conv2dOp("numba", (1, 1), (p, p, height, width)),
                              False: ops.Conv2dOp("numba", (1, 1), (0, 0, height, width))}

    def iter_regions(self, image: np.ndarray) -> Iterator[tuple[np.ndarray, int, int]]:
        """Yield every (region, i, j): the kernel_size x kernel_size windows of a padded image."""
        k = self.kernel_size
        for i in range(self.h - k + 1):
            for j in range(self.w - k + 1):
                yield image[:, i:i + k, j:j + k], i, j

    def forward(self, input: np.ndarray) -> np.ndarray:
        """(d, height, width) image -> (num_kernels, height, width) feature maps."""
        x = _real(input, "ConvLayer.forward")
        if x.shape != self._in_shape:
            raise ValueError(f"ConvLayer.forward expects shape {self._in_shape}, got {x.shape}")
        padded = self._pad(x[None])
        self.prev_input = self._padded = padded[0]
        self.output = self._convolve(padded)[0]
        return self.output

    def _pad(self, x: np.ndarray) -> np.ndarray:
        """(N, d, height, width) -> (N, d, h, w), the border filled with ``padding``."""
        p = self._k // 2
        padded = np.full((len(x), *self._padded_shape), float(self.padding))
        padded[:, :, p:p + x.shape[2], p:p + x.shape[3]] = x
        return padded

    def _convolve(self, padded: np.ndarray) -> np.ndarray:
        """bias + the correlation of padded (N, d, h, w) images: (N, num_kernels, H, W)."""
        w = _param(self.kernels, self._kernel_shape, "kernels")
        b = _param(self.bias, self._bias_shape, "bias")
        _, height, width = self._in_shape
        y = self._forward_op.forward(padded, w, self._zero_bias, False)
        y += b
        return y

    def backprop(self, d_L_d_out: np.ndarray, learn_rate: float) -> np.ndarray:
        """SGD-update kernels and bias in place; return dL/dinput (d, height, width)."""
        return self._backprop(d_L_d_out, learn_rate, True)

    def _backprop(
        self, d_L_d_out: np.ndarray, learn_rate: float, input_grad: bool
    ) -> np.ndarray | None:
        if self._padded is None:
            raise RuntimeError("ConvLayer.backprop called before forward")
        dy = _f64(d_L_d_out, self._bias_shape, "ConvLayer.backprop")[None]
        w = _param(self.kernels, self._kernel_shape, "kernels")
        _, height, width = self._in_shape
        p = self._k // 2
        zero_padding = self.padding == 0
        if zero_padding:
            # The kernel pads with zeros itself, and then computes dx for the input only.
            x, crop = np.ascontiguousarray(self._padded[:, p:p + height, p:p + width]), 0
        else:
            # dx is the padded input's: its interior is the input's gradient.
            x, crop = self._padded, p
        # One pass for both gradients, the input's with the kernels from before the
        # update, as the notebook does.
        dx, dw, _ = self._backward_ops[zero_padding].backward(x[None], w, dy, None, input_grad)
        self.bias -= learn_rate * dy[0]
        self.kernels -= learn_rate * dw
        if not input_grad:
            return None
        return np.ascontiguousarray(dx[0, :, crop:crop + height, crop:crop + width])


class ReLU:
    """max(0, x), elementwise, any shape."""

    def __init__(self) -> None:
        pass

    def forward(self, input: np.ndarray) -> np.ndarray:
        """max(0, input), kept as ``prev_output``."""
        self.prev_output = np.maximum(0, _real(input, "ReLU.forward"))
        return self.prev_output

    def backprop(self, d_L_d_out: np.ndarray) -> np.ndarray:
        """The gradient where the output was positive, 0 elsewhere."""
        if not hasattr(self, "prev_output"):
            raise RuntimeError("ReLU.backprop called before forward")
        d = _real(d_L_d_out, "ReLU.backprop")
        if d.shape != self.prev_output.shape:
            raise ValueError(f"ReLU.backprop expects shape {self.prev_output.shape}, "
                             f"got {d.shape}")
        positive = self.prev_output > 0
        # For floats, a product with the mask has the bits of one with np.int64(mask).
        return d * positive if d.dtype.kind == "f" else d * np.int64(positive)


class MaxPool:
    """Non-overlapping ``size`` x ``size`` max pooling over (depth, h, w); ragged edges dropped.

    On ties every maximum gets the gradient.
    """

    def __init__(self, pool_size: int = 2) -> None:
        self.size = _positive_int(pool_size, "pool_size")
        self._x: np.ndarray | None = None

    def iter_regions(self, image: np.ndarray) -> Iterator[tuple[np.ndarray, int, int]]:
        """Yield every (region, i, j): the pooling windows of a (depth, h, w) image."""
        s = self.size
        _, h, w = image.shape
        for i in range(h // s):
            for j in range(w // s):
                yield image[:, i * s:i * s + s, j * s:j * s + s], i, j

    def forward(self, input: np.ndarray) -> np.ndarray:
        """(depth, h, w) -> (depth, h // size, w // size), float64."""
        x = _real(input, "MaxPool.forward")
        s = _positive_int(self.size, "MaxPool.size")
        if x.ndim != 3 or x.shape[1] < s or x.shape[2] < s:
            raise ValueError(f"MaxPool.forward expects shape (depth, h, w) with h, w >= {s}, "
                             f"got {x.shape}")
        self.prev_input = input
        self._x = np.ascontiguousarray(x, dtype=_F64)
        self._size = s
        return maxpool_forward(self._x, s)

    def backprop(self, d_L_d_out: np.ndarray) -> np.ndarray:
        """dL/dinput (depth, h, w); recomputes each window's max from the saved input."""
        if self._x is None:
            raise RuntimeError("MaxPool.backprop called before forward")
        c, h, w = self._x.shape
        s = self._size
        d = _f64(d_L_d_out, (c, h // s, w // s), "MaxPool.backprop")
        return maxpool_backward_ties(self._x, d, s)


class FeedForward:
    """Fully connected layer without activation; flattens its input.

    weights: (input_size, output_size); bias: (output_size,).
    """

    def __init__(self, input_size: int, output_size: int) -> None:
        n_in = _positive_int(input_size, "input_size")
        n_out = _positive_int(output_size, "output_size")
        self.weights = np.random.randn(n_in, n_out) / n_in
        self.bias = np.random.randn(n_out) / n_out

    def forward(self, input: np.ndarray) -> np.ndarray:
        """Flattened input @ weights + bias."""
        w, b = _dense_params(self)
        self.prev_input_shape = np.shape(input)
        self.prev_input = _flat(input, w.shape[0], "FeedForward.forward")
        self.output = dense_forward(self.prev_input, w) + b
        return self.output

    def backprop(self, d_L_d_out: np.ndarray, learn_rate: float) -> np.ndarray:
        """SGD-update weights and bias; return dL/dinput in the input's shape."""
        if not hasattr(self, "prev_input"):
            raise RuntimeError("FeedForward.backprop called before forward")
        w = self.weights
        d = _f64(d_L_d_out, (w.shape[1],), "FeedForward.backprop")
        x = self.prev_input
        if _updatable(w, (x.size, d.size)):
            d_L_d_input = dense_backward_sgd(w, x, d, float(learn_rate))
        else:
            d_L_d_input = w @ d
            _sgd_outer(w, x, d, learn_rate)
        self.bias -= learn_rate * d
        return d_L_d_input.reshape(self.prev_input_shape)


class Softmax:
    """Fully connected layer + softmax: probabilities (nodes,) of input @ weights + bias.

    weights: (input_len, nodes); bias: (nodes,).
    """

    def __init__(self, input_len: int, nodes: int) -> None:
        n_in = _positive_int(input_len, "input_len")
        n_out = _positive_int(nodes, "nodes")
        self.weights = np.random.randn(n_in, n_out) / n_in
        self.bias = np.random.randn(n_out) / n_out

    def forward(self, input: np.ndarray) -> np.ndarray:
        """Probabilities of softmax(input @ weights + bias); keeps the totals as ``prev_totals``."""
        w, b = _dense_params(self)
        flat = _flat(input, w.shape[0], "Softmax.forward")
        totals, probs = softmax_forward(flat, w, b)
        self.prev_input_shape = np.shape(input)
        self.prev_input = input
        self.prev_totals = totals
        self._flat = flat
        return probs

    def backprop(self, d_L_d_out: np.ndarray, learn_rate: float) -> np.ndarray | None:
        """Backpropagate the gradient's first non-zero entry (the true class's) only.

        SGD-updates weights and bias; returns dL/dinput in the input's shape, or None
        for an all-zero gradient, as the notebook does.
        """
        if not hasattr(self, "prev_totals"):
            raise RuntimeError("Softmax.backprop called before forward")
        w, _ = _dense_params(self)
        n_in, n_out = w.shape
        d = _f64(d_L_d_out, (n_out,), "Softmax.backprop")
        totals = _f64(self.prev_totals, (n_out,), "Softmax.prev_totals")
        if self._flat.shape != (n_in,):
            raise ValueError(f"weights changed shape since forward: now {w.shape}")
        d_L_d_t, d_L_d_inputs = softmax_backward(totals, w, d)
        if d_L_d_t.size == 0:
            return None
        _sgd_outer(self.weights, self._flat, d_L_d_t, learn_rate)
        self.bias -= learn_rate * d_L_d_t
        return d_L_d_inputs.reshape(self.prev_input_shape)
