"""Drop-in, faster layers for code written against the classic from-scratch NumPy CNN.

Change ``from cnn import ConvLayer, ReLU, ...`` to ``from fastcnn.compat import ...``
and the same per-sample code runs on fastcnn's Numba kernels. Constructors,
attributes (``kernels``, ``bias``, ``weights``, ``biases``), ``np.random``
initialisation, float64 results and the SGD updates match the tutorial.

Deliberate differences, all at the edges: inputs of the wrong shape or dtype
raise ValueError/TypeError up front; even kernel sizes are rejected (they cannot
give 'same' output); softmax subtracts the max logit, so huge logits give
probabilities instead of NaN; ``Softmax.backprop`` with an all-zero gradient
returns zeros instead of None. Additions: ``SimpleCNN.train`` returns per-epoch
records (loss, seconds, dev scores) and accepts ``devset=None``; ``predict``
takes the class count or the class names.
"""

# The tutorial draws from the global np.random state; users' np.random.seed must work.
# ruff: noqa: NPY002

from __future__ import annotations

import inspect
import time
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from typing import Any

import numba
import numpy as np
from threadpoolctl import threadpool_limits
from tqdm import tqdm

from .kernels import conv2d_backward_input, conv2d_backward_weight, conv2d_forward
from .kernels.compat import dense_sgd_update, maxpool_backward_ties, maxpool_forward
from .metrics import accuracy, macro_f1

__all__ = [
    "ConvLayer",
    "FeedForward",
    "MaxPool",
    "ReLU",
    "SimpleCNN",
    "Softmax",
    "preprocess",
    "seed_arch_layers",
]

_F64 = np.dtype(np.float64)
_REAL_KINDS = "biuf"


def _serial(fn: Callable[..., Any], *args: Any) -> Any:
    """Call a (parallel) kernel on one Numba thread.

    A batch of one gives prange nothing to split, and the other threads' wake-up
    and barrier cost more than the work; on a busy machine, milliseconds.
    """
    prev = numba.get_num_threads()
    if prev == 1:
        return fn(*args)
    numba.set_num_threads(1)
    try:
        return fn(*args)
    finally:
        numba.set_num_threads(prev)


@contextmanager
def _one_thread_each():
    """One Numba thread and one BLAS thread for a whole per-sample loop."""
    prev = numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        with threadpool_limits(limits=1, user_api="blas"):
            yield
    finally:
        numba.set_num_threads(prev)


def _as_array(x: object, who: str) -> np.ndarray:
    a = x if isinstance(x, np.ndarray) else np.asarray(x)
    if a.dtype.kind not in _REAL_KINDS:
        raise TypeError(f"{who} needs real numbers, got dtype {a.dtype}")
    return a


def _checked(x: object, shape: tuple[int, ...], who: str) -> np.ndarray:
    """``x`` as a C-contiguous float64 array of exactly ``shape`` (no copy if it is one)."""
    a = _as_array(x, who)
    if a.shape != shape:
        raise ValueError(f"{who} expects shape {shape}, got {a.shape}")
    if a.dtype != _F64 or not a.flags.c_contiguous:
        a = np.ascontiguousarray(a, dtype=_F64)
    return a


def _param(a: object, shape: tuple[int, ...], name: str) -> np.ndarray:
    """A public parameter in the form the kernels need; they do no bounds checks."""
    if not isinstance(a, np.ndarray) or a.shape != shape:
        raise ValueError(f"{name} must be an array of shape {shape}, got {getattr(a, 'shape', a)}")
    if a.dtype != _F64 or not a.flags.c_contiguous:
        a = np.ascontiguousarray(a, dtype=_F64)
    return a


def _positive_int(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def _sgd_outer(w: np.ndarray, x: np.ndarray, g: np.ndarray, learn_rate: float) -> None:
    """w -= learn_rate * outer(x, g), fused when w is a float64 array the kernel can take."""
    if w.shape != (x.size, g.size):
        raise ValueError(f"weights must have shape {(x.size, g.size)}, got {w.shape}")
    if w.dtype == _F64 and w.flags.c_contiguous and w.flags.writeable:
        dense_sgd_update(w, x, g, float(learn_rate))
    else:
        w -= learn_rate * (x[:, None] @ g[None])


class ConvLayer:
    """'Same' 2-D convolution (stride 1) with an untied bias, over one (depth, h, w) image.

    ``padding`` is the constant the border is padded with (``kernel_size // 2`` wide).
    Kernels: (num_kernels, depth, k, k); bias: (num_kernels, h, w).
    """

    _takes_learn_rate = True

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
        self.input_shape = (depth, height, width)
        self.kernel_size = k
        self.num_kernels = _positive_int(num_kernels, "num_kernels")
        self.padding = padding
        self.pad = k // 2
        self.output_shape = (self.num_kernels, height, width)
        # Private copies of the geometry: the kernels trust it, and the public
        # attributes above can be reassigned by user code.
        self._in_shape = self.input_shape
        self._out_shape = self.output_shape
        self._k, self._p = k, k // 2
        self._padded_shape = (1, depth, height + 2 * self._p, width + 2 * self._p)
        self._kernels_shape = (self.num_kernels, depth, k, k)
        # Same draws, in the same order, as the tutorial, so np.random.seed reproduces it.
        self.kernels = np.random.randn(*self._kernels_shape) / (k * k)
        self.bias = np.random.randn(*self.output_shape) / (
            self._padded_shape[2] * self._padded_shape[3]
        )
        self._zero_bias = np.zeros(self.num_kernels)
        self._xp: np.ndarray | None = None
        self.last_input: np.ndarray | None = None

    def forward(self, input: np.ndarray) -> np.ndarray:
        """(depth, h, w) image -> (num_kernels, h, w) feature maps."""
        x = _as_array(input, "ConvLayer.forward")
        if x.shape != self._in_shape:
            raise ValueError(f"ConvLayer.forward expects shape {self._in_shape}, got {x.shape}")
        _, height, width = self._in_shape
        p = self._p
        # Pad here, not in the kernel: the weight gradient must see the same constant.
        if self.padding == 0:
            xp = np.zeros(self._padded_shape)
        else:
            xp = np.full(self._padded_shape, self.padding, dtype=_F64)
        xp[0, :, p : p + height, p : p + width] = x
        self._xp = xp
        self.last_input = xp[0]
        w = _param(self.kernels, self._kernels_shape, "kernels")
        y = _serial(conv2d_forward, xp, w, self._zero_bias, 1, 1, 0, 0, height, width, False)[0]
        y += self.bias
        return y

    def backprop(self, d_L_d_out: np.ndarray, learn_rate: float) -> np.ndarray:
        """SGD-update kernels and bias in place; return dL/dinput (depth, h, w)."""
        return self._backprop(d_L_d_out, learn_rate, True)

    def _backprop(
        self, d_L_d_out: np.ndarray, learn_rate: float, need_input_grad: bool
    ) -> np.ndarray | None:
        if self._xp is None:
            raise RuntimeError("ConvLayer.backprop called before forward")
        dy = _checked(d_L_d_out, self._out_shape, "ConvLayer.backprop")[None]
        w = _param(self.kernels, self._kernels_shape, "kernels")
        _, height, width = self._in_shape
        k, p = self._k, self._p
        dx = None
        if need_input_grad:
            # Before the update: the tutorial uses the old kernels for dL/dinput.
            dx = _serial(conv2d_backward_input, dy, w, height, width, 1, 1, p, p)[0]
        dw, _ = _serial(conv2d_backward_weight, self._xp, dy, k, k, 1, 1, 0, 0)
        self.kernels -= learn_rate * dw
        self.bias -= learn_rate * dy[0]
        return dx


class ReLU:
    """max(0, x), elementwise, any shape."""

    _takes_learn_rate = False

    def __init__(self) -> None:
        self.last_input: np.ndarray | None = None

    def forward(self, input: np.ndarray) -> np.ndarray:
        """max(0, input)."""
        x = _as_array(input, "ReLU.forward")
        self.last_input = x
        return np.maximum(0, x)

    def backprop(self, d_L_d_out: np.ndarray) -> np.ndarray:
        """The gradient where the input was positive, 0 elsewhere."""
        if self.last_input is None:
            raise RuntimeError("ReLU.backprop called before forward")
        d = _as_array(d_L_d_out, "ReLU.backprop")
        if d.shape != self.last_input.shape:
            raise ValueError(f"ReLU.backprop expects shape {self.last_input.shape}, got {d.shape}")
        return d * (self.last_input > 0)


class MaxPool:
    """Non-overlapping max pooling over (depth, h, w); on ties every maximum gets the gradient."""

    _takes_learn_rate = False

    def __init__(self, pool_size: int = 2) -> None:
        self.pool_size = _positive_int(pool_size, "pool_size")
        self.last_input: np.ndarray | None = None
        self._out_shape: tuple[int, int, int] | None = None

    def forward(self, input: np.ndarray) -> np.ndarray:
        """(depth, h, w) -> (depth, h // pool_size, w // pool_size)."""
        x = _as_array(input, "MaxPool.forward")
        s = self.pool_size
        if x.ndim != 3 or x.shape[1] < s or x.shape[2] < s:
            raise ValueError(
                f"MaxPool.forward expects shape (depth, h, w) with h, w >= {s}, got {x.shape}"
            )
        if x.dtype != _F64 or not x.flags.c_contiguous:
            x = np.ascontiguousarray(x, dtype=_F64)
        self.last_input = x
        y = maxpool_forward(x, s)
        self._out_shape = y.shape
        return y

    def backprop(self, d_L_d_out: np.ndarray) -> np.ndarray:
        """dL/dinput (depth, h, w); recomputes each window's max from the saved input."""
        if self.last_input is None:
            raise RuntimeError("MaxPool.backprop called before forward")
        d = _checked(d_L_d_out, self._out_shape, "MaxPool.backprop")
        return maxpool_backward_ties(self.last_input, d, self.pool_size)


class FeedForward:
    """Fully connected layer without activation; flattens its input.

    weights: (input_size, output_size); bias: (output_size,).
    """

    _takes_learn_rate = True

    def __init__(self, input_size: int, output_size: int) -> None:
        n_in = _positive_int(input_size, "input_size")
        n_out = _positive_int(output_size, "output_size")
        self.weights = np.random.randn(n_in, n_out) / n_in
        self.bias = np.random.randn(n_out) / n_out
        self.last_input: np.ndarray | None = None
        self.last_input_shape: tuple[int, ...] | None = None

    def forward(self, input: np.ndarray) -> np.ndarray:
        """Flattened input @ weights + bias."""
        self.last_input_shape, self.last_input = _flat_input(
            input, self.weights.shape[0], "FeedForward.forward"
        )
        return self.last_input @ self.weights + self.bias

    def backprop(self, d_L_d_out: np.ndarray, learn_rate: float) -> np.ndarray:
        """SGD-update weights and bias; return dL/dinput in the input's shape."""
        if self.last_input is None:
            raise RuntimeError("FeedForward.backprop called before forward")
        d = _checked(d_L_d_out, (self.weights.shape[1],), "FeedForward.backprop")
        d_L_d_input = self.weights @ d
        _sgd_outer(self.weights, self.last_input, d, learn_rate)
        self.bias -= learn_rate * d
        return d_L_d_input.reshape(self.last_input_shape)


def _flat_input(x: object, size: int, who: str) -> tuple[tuple[int, ...], np.ndarray]:
    """(original shape, flat float64 view or copy) of an input of ``size`` elements."""
    a = _as_array(x, who)
    if a.size != size:
        raise ValueError(f"{who} expects {size} values (shape ({size},) or any reshape of it), "
                         f"got shape {a.shape}")
    flat = a.reshape(-1)
    if flat.dtype != _F64 or not flat.flags.c_contiguous:
        flat = np.ascontiguousarray(flat, dtype=_F64)
    return a.shape, flat


class Softmax:
    """Fully connected layer + softmax; flattens its input and returns probabilities.

    weights: (input_len, nodes); biases: (nodes,).
    """

    _takes_learn_rate = True

    def __init__(self, input_len: int, nodes: int) -> None:
        n_in = _positive_int(input_len, "input_len")
        n_out = _positive_int(nodes, "nodes")
        self.weights = np.random.randn(n_in, n_out) / n_in
        self.biases = np.random.randn(n_out) / n_out
        self.last_input: np.ndarray | None = None
        self.last_input_shape: tuple[int, ...] | None = None
        self.last_totals: np.ndarray | None = None

    def forward(self, input: np.ndarray) -> np.ndarray:
        """Probabilities (nodes,) of softmax(flattened input @ weights + biases)."""
        self.last_input_shape, self.last_input = _flat_input(
            input, self.weights.shape[0], "Softmax.forward"
        )
        totals = self.last_input @ self.weights + self.biases
        self.last_totals = totals
        e = np.exp(totals - totals.max())
        return e / e.sum()

    def backprop(self, d_L_d_out: np.ndarray, learn_rate: float) -> np.ndarray:
        """Backpropagate the gradient at its first non-zero entry (the true class).

        SGD-updates weights and biases; returns dL/dinput in the input's shape.
        """
        if self.last_totals is None:
            raise RuntimeError("Softmax.backprop called before forward")
        d = _checked(d_L_d_out, (self.weights.shape[1],), "Softmax.backprop")
        nonzero = np.flatnonzero(d)
        if nonzero.size == 0:
            return np.zeros(self.last_input_shape)
        i = nonzero[0]
        # The tutorial's formula; the shift by the max cancels in every ratio.
        t_exp = np.exp(self.last_totals - self.last_totals.max())
        S = t_exp.sum()
        d_out_d_t = -t_exp[i] * t_exp / (S * S)
        d_out_d_t[i] = t_exp[i] * (S - t_exp[i]) / (S * S)
        d_L_d_t = d[i] * d_out_d_t
        d_L_d_inputs = self.weights @ d_L_d_t
        _sgd_outer(self.weights, self.last_input, d_L_d_t, learn_rate)
        self.biases -= learn_rate * d_L_d_t
        return d_L_d_inputs.reshape(self.last_input_shape)


_TAKES_LR: dict[type, bool] = {}


def _takes_learn_rate(layer: object) -> bool:
    """Whether ``layer.backprop`` wants a learning rate (also for the tutorial's own layers)."""
    cls = type(layer)
    known = getattr(cls, "_takes_learn_rate", None)
    if known is not None:
        return known
    if cls not in _TAKES_LR:
        params = inspect.signature(layer.backprop).parameters.values()
        positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
        _TAKES_LR[cls] = len(positional) >= 2
    return _TAKES_LR[cls]


def _num_classes(classes: int | Sequence[object]) -> int:
    if isinstance(classes, (int, np.integer)) and not isinstance(classes, bool):
        return int(classes)
    return len(classes)


class SimpleCNN:
    """The tutorial's per-sample network: a list of layers trained with SGD, one image at a time."""

    def __init__(self, layers: list[Any]) -> None:
        self.layers = layers

    def forward(self, image: np.ndarray) -> np.ndarray:
        """Scale a raw 0..255 image to image / 255 - 0.5 and run every layer."""
        out = np.asarray(image) / 255 - 0.5
        for layer in self.layers:
            out = layer.forward(out)
        return out

    def backprop(self, gradient: np.ndarray, learn_rate: float) -> None:
        """Backpropagate ``gradient`` through the layers, updating them with SGD."""
        last = len(self.layers) - 1
        for idx, layer in enumerate(reversed(self.layers)):
            if idx == last and type(layer) is ConvLayer:
                # Nobody reads the first layer's input gradient: skip computing it.
                layer._backprop(gradient, learn_rate, False)
            elif _takes_learn_rate(layer):
                gradient = layer.backprop(gradient, learn_rate)
            else:
                gradient = layer.backprop(gradient)

    def train(
        self,
        trainset: np.ndarray,
        trainlabels: np.ndarray,
        devset: np.ndarray | None,
        devlabels: np.ndarray | None,
        epochs: int,
        learn_rate: float,
    ) -> list[dict[str, float]]:
        """Per-sample SGD on cross-entropy; prints the loss and dev scores each epoch.

        Returns one record per epoch (loss, seconds, dev accuracy and macro F1).
        """
        trainset = np.asarray(trainset)
        trainlabels = np.asarray(trainlabels)
        if len(trainset) == 0 or len(trainset) != len(trainlabels):
            raise ValueError(
                f"need as many labels as images (and at least one), got {len(trainset)} "
                f"images and {len(trainlabels)} labels"
            )
        history: list[dict[str, float]] = []
        num_outputs = 0
        with _one_thread_each():
            for epoch in range(epochs):
                start = time.perf_counter()
                permutation = np.random.permutation(len(trainset))
                train_data = trainset[permutation]
                train_labels = trainlabels[permutation]
                loss = 0.0
                samples = tqdm(zip(train_data, train_labels, strict=True), total=len(train_data),
                               desc=f"Epoch {epoch + 1}/{epochs}", leave=False)
                for im, label in samples:
                    out = self.forward(im)
                    p = out[label]
                    loss += -np.log(p)
                    gradient = np.zeros(len(out))
                    gradient[label] = -1 / p
                    self.backprop(gradient, learn_rate)
                    num_outputs = len(out)
                seconds = time.perf_counter() - start
                record = {"epoch": epoch + 1, "loss": float(loss / len(train_data)),
                          "seconds": seconds}
                print(f"Epoch {epoch + 1}: average loss {record['loss']:.4f} ({seconds:.1f} s)")
                if devset is not None and devlabels is not None:
                    acc, f1 = self.predict(devset, devlabels, num_outputs)
                    record.update(dev_accuracy=acc, dev_macro_f1=f1)
                    print(f"Epoch {epoch + 1}: dev accuracy {acc:.4f}, macro F1 {f1:.4f}")
                history.append(record)
        return history

    def predict(
        self, dataset: np.ndarray, labels: np.ndarray, classes: int | Sequence[object]
    ) -> tuple[float, float]:
        """(accuracy, macro F1) of the argmax predictions; ``classes``: a count or the names."""
        with _one_thread_each():
            preds = np.fromiter((np.argmax(self.forward(im)) for im in dataset),
                                dtype=np.int64, count=len(dataset))
        labels = np.asarray(labels)
        return accuracy(labels, preds), macro_f1(labels, preds, _num_classes(classes))


def preprocess(data: np.ndarray) -> np.ndarray:
    """(N, h, w) images -> (N, 1, h, w), a view with the same dtype."""
    a = np.asarray(data)
    if a.ndim != 3:
        raise ValueError(f"preprocess expects images of shape (N, height, width), got {a.shape}")
    return a[:, np.newaxis]


def seed_arch_layers() -> list[Any]:
    """The tutorial's SEED-ARCH stack for 1x28x28 images and 10 classes."""
    return [
        ConvLayer((1, 28, 28), 5, 6),
        ReLU(),
        ConvLayer((6, 28, 28), 5, 6),
        ReLU(),
        MaxPool(2),
        FeedForward(1176, 100),
        ReLU(),
        Softmax(100, 10),
    ]
