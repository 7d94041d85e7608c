"""Stateless, validated convolution and pooling (the ``nn.functional`` of fastcnn).

Every function checks its arguments, works out the geometry and then calls either
the Numba kernels (``backend="numba"``) or the NumPy oracles (``backend="numpy"``).
Nothing reaches a kernel that could make it read or write out of bounds.
"""

from __future__ import annotations

import math
from types import ModuleType

import numpy as np

from . import kernels, reference

BACKENDS = ("numba", "numpy")
FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


# A single size or count above this is refused: it keeps every index a kernel computes
# (products of a few sizes) far from int64 overflow.
MAX_SIZE = 2**31 - 1
# Largest array a kernel may be asked to allocate. Not a memory check: it turns absurd
# geometry (huge padding or images) into a ValueError before any index can overflow.
MAX_ELEMENTS = 2**31


def backend_module(backend: str) -> ModuleType:
    # Only strings are compared: `array == "numba"` would raise an unrelated error.
    if isinstance(backend, str):
        if backend == "numba":
            return kernels
        if backend == "numpy":
            return reference
    raise ValueError(f"backend must be one of {BACKENDS}, got {describe(backend)}")


def describe(value: object) -> str:
    """A short description of an argument for error messages (never a huge repr)."""
    if isinstance(value, np.ndarray):
        return f"an array of shape {value.shape} and dtype {value.dtype}"
    text = repr(value)
    return text if len(text) <= 60 else f"{text[:57]}..."


def _is_int(value: object) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def check_int(value: object, name: str, minimum: int = 0, maximum: int | None = MAX_SIZE) -> int:
    """An int (not a bool) in [minimum, maximum], or a TypeError/ValueError naming `name`."""
    if not _is_int(value):
        raise TypeError(f"{name} must be an int, got {describe(value)}")
    if value < minimum or (maximum is not None and value > maximum):
        bound = f">= {minimum}" if maximum is None else f"in [{minimum}, {maximum}]"
        raise ValueError(f"{name} must be {bound}, got {value}")
    return int(value)


def check_bool(value: object, name: str) -> bool:
    """True or False (Python or NumPy), or a TypeError naming `name`."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be True or False, got {describe(value)}")
    return bool(value)


def pair(value: int | tuple[int, int], name: str, minimum: int = 1) -> tuple[int, int]:
    """Turn an int or a pair of ints into a validated (h, w) pair, each <= MAX_SIZE."""
    if type(value) is tuple and len(value) == 2 and type(value[0]) is int \
            and type(value[1]) is int and minimum <= value[0] <= MAX_SIZE \
            and minimum <= value[1] <= MAX_SIZE:
        return value  # the common, already-valid case: layers call this every batch
    if _is_int(value):
        items: tuple = (value, value)
    elif isinstance(value, (tuple, list)) or (isinstance(value, np.ndarray) and value.ndim == 1):
        items = tuple(value)
    else:  # tuple() would accept strings, dicts and generators
        raise TypeError(f"{name} must be an int or a pair of ints, got {describe(value)}")
    if len(items) != 2 or not all(_is_int(v) for v in items):
        raise TypeError(f"{name} must be an int or a pair of ints, got {describe(value)}")
    if any(v < minimum or v > MAX_SIZE for v in items):
        raise ValueError(f"{name} must be in [{minimum}, {MAX_SIZE}], got {describe(value)}")
    return int(items[0]), int(items[1])


def check_array(a: object, name: str, ndim: int, dtype: np.dtype | None = None) -> np.ndarray:
    """A C-contiguous float32/float64 array of `ndim` dimensions, or a clear error."""
    if not isinstance(a, np.ndarray):
        raise TypeError(f"{name} must be a numpy array, got {type(a).__name__}")
    if a.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be float32 or float64, got dtype {a.dtype}")
    if dtype is not None and a.dtype != dtype:
        raise TypeError(f"{name} has dtype {a.dtype} but the input is {dtype}; use one dtype")
    if a.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {a.shape}")
    if a.size == 0:
        raise ValueError(f"{name} is empty (shape {a.shape})")
    if not a.flags.writeable:  # Numba would compile a second, read-only specialisation
        return np.array(a, order="C")
    return np.ascontiguousarray(a)


def _check_budget(shape: tuple[int, ...], what: str) -> None:
    if math.prod(shape) > MAX_ELEMENTS:
        raise ValueError(f"{what} would have shape {shape}: more than {MAX_ELEMENTS} elements")


def _axis_geometry(size: int, k: int, stride: int, pad: object) -> tuple[int, int]:
    """(pad_before, out_size) along one axis."""
    if pad == "valid":
        pad_before, out = 0, (size - k) // stride + 1 if size >= k else 0
    elif pad == "same":
        # Keras/TensorFlow convention: out = ceil(size / stride), extra padding at the end.
        out = math.ceil(size / stride)
        pad_before = max((out - 1) * stride + k - size, 0) // 2
    else:
        pad_before = pad
        padded = size + 2 * pad
        out = (padded - k) // stride + 1 if padded >= k else 0
    return pad_before, out


def conv_geometry(
    in_h: int, in_w: int, kernel_size: tuple[int, int], stride: tuple[int, int], padding: object
) -> tuple[int, int, int, int]:
    """(pad_top, pad_left, out_h, out_w) of a convolution."""
    if isinstance(padding, str):
        if padding not in ("same", "valid"):
            raise ValueError(f"padding must be 'same', 'valid', an int or a pair, got {padding!r}")
        pads: tuple[object, object] = (padding, padding)
    else:
        pads = pair(padding, "padding", minimum=0)
    pad_top, out_h = _axis_geometry(in_h, kernel_size[0], stride[0], pads[0])
    pad_left, out_w = _axis_geometry(in_w, kernel_size[1], stride[1], pads[1])
    if out_h < 1 or out_w < 1:
        raise ValueError(
            f"kernel {kernel_size} is larger than the padded input {(in_h, in_w)} "
            f"(padding={padding!r})"
        )
    return pad_top, pad_left, out_h, out_w


def conv_buffer_shapes(x_shape, weight_shape, stride, geo):
    """(output shape, padded input shape): the largest arrays a convolution kernel
    allocates for x of x_shape (N, C, H, W)."""
    N, C, H, W = x_shape
    F, _, KH, KW = weight_shape
    pad_top, pad_left, out_h, out_w = geo
    # The kernels pad x (and dy) into planes at least this large.
    hp = max(H + pad_top, (out_h - 1) * stride[0] + KH)
    wp = max(W + pad_left, (out_w - 1) * stride[1] + KW) + KW
    return (N, F, out_h, out_w), (N, max(C, F), hp, wp)


def _check_conv_budget(x_shape, weight_shape, stride, geo) -> None:
    """Refuse geometry whose output or padded copies would be absurdly large."""
    output, padded = conv_buffer_shapes(x_shape, weight_shape, stride, geo)
    _check_budget(output, "the output")
    _check_budget(padded, "the padded input")


def grads_in(dtype: np.dtype, dx: np.ndarray | None, dw: np.ndarray,
             db: np.ndarray) -> tuple[np.ndarray | None, np.ndarray, np.ndarray]:
    """A backward kernel's (dx or None, dw, db) in the data dtype (the NumPy oracles
    return float64)."""
    return (None if dx is None else dx.astype(dtype, copy=False), dw.astype(dtype, copy=False),
            db.astype(dtype, copy=False))


def _check_layer_arrays(x, weight, bias, ndim, in_axis, out_axis, inputs):
    """x, weight and bias (None: zeros) checked against each other: weight's axis
    `in_axis` must match x's axis 1 (its `inputs`), its axis `out_axis` sizes bias."""
    x = check_array(x, "x", ndim)
    weight = check_array(weight, "weight", ndim, x.dtype)
    if weight.shape[in_axis] != x.shape[1]:
        raise ValueError(f"weight expects {weight.shape[in_axis]} {inputs}, x has {x.shape[1]} "
                         f"(x shape {x.shape}, weight shape {weight.shape})")
    if bias is None:
        bias = np.zeros(weight.shape[out_axis], dtype=x.dtype)
    bias = check_array(bias, "bias", 1, x.dtype)
    if bias.shape[0] != weight.shape[out_axis]:
        raise ValueError(f"bias must have shape ({weight.shape[out_axis]},), got {bias.shape}")
    return x, weight, bias


def _check_conv(x, weight, bias):
    return _check_layer_arrays(x, weight, bias, 4, 1, 0, "input channels")


def conv2d(
    x: np.ndarray,
    weight: np.ndarray,
    bias: np.ndarray | None = None,
    stride: int | tuple[int, int] = 1,
    padding: str | int | tuple[int, int] = "valid",
    *,
    relu: bool = False,
    backend: str = "numba",
) -> np.ndarray:
    """2-D convolution. x: (N, C, H, W); weight: (F, C, KH, KW); bias: (F,) or None."""
    impl = backend_module(backend)
    relu = check_bool(relu, "relu")
    x, weight, bias = _check_conv(x, weight, bias)
    sh, sw = pair(stride, "stride")
    geo = conv_geometry(x.shape[2], x.shape[3], weight.shape[2:], (sh, sw), padding)
    _check_conv_budget(x.shape, weight.shape, (sh, sw), geo)
    y = impl.conv2d_forward(x, weight, bias, sh, sw, *geo, relu)
    return y.astype(x.dtype, copy=False)


def _check_output_grad(dy, relu_output, expected, dtype):
    """dy, and relu_output (None when there is no fused ReLU), both of shape `expected`."""
    dy = check_array(dy, "dy", len(expected), dtype)
    if dy.shape != expected:
        raise ValueError(f"dy must have shape {expected}, got {dy.shape}")
    if relu_output is not None:
        relu_output = check_array(relu_output, "relu_output", len(expected), dtype)
        if relu_output.shape != expected:
            raise ValueError(f"relu_output must have shape {expected}, got {relu_output.shape}")
    return dy, relu_output


# Window indices are stored as uint8.
MAX_POOL_WINDOW = 256


def _pooled_geometry(x, weight, stride, padding, pool_size):
    """((sh, sw), (ph, pw), conv geometry) of a convolution followed by a max-pool with
    non-overlapping windows, checked."""
    sh, sw = pair(stride, "stride")
    ph, pw = pair(pool_size, "pool_size")
    geo = conv_geometry(x.shape[2], x.shape[3], weight.shape[2:], (sh, sw), padding)
    _check_conv_budget(x.shape, weight.shape, (sh, sw), geo)
    if ph > geo[2] or pw > geo[3]:
        raise ValueError(f"pool_size {(ph, pw)} is larger than the convolution's output "
                         f"{geo[2:]}")
    return (sh, sw), (ph, pw), geo


def conv2d_max_pool2d(
    x: np.ndarray,
    weight: np.ndarray,
    bias: np.ndarray | None = None,
    stride: int | tuple[int, int] = 1,
    padding: str | int | tuple[int, int] = "valid",
    pool_size: int | tuple[int, int] = 2,
    *,
    relu: bool = False,
    return_indices: bool = False,
    backend: str = "numba",
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """max_pool2d(conv2d(...), pool_size) in one pass: the same values, without storing
    the unpooled output. The pool windows do not overlap (stride = pool size).

    With ``return_indices`` it returns (y, indices) for `conv2d_max_pool2d_backward`:
    indices (uint8, y's shape) holds a * pool_w + b, the offset of each window's first
    maximum inside the window; pool_h * pool_w must then be at most 256.
    """
    impl = backend_module(backend)
    relu = check_bool(relu, "relu")
    return_indices = check_bool(return_indices, "return_indices")
    x, weight, bias = _check_conv(x, weight, bias)
    (sh, sw), (ph, pw), geo = _pooled_geometry(x, weight, stride, padding, pool_size)
    if not return_indices:
        y = impl.conv2d_pool_forward(x, weight, bias, sh, sw, *geo, relu, ph, pw)
        return y.astype(x.dtype, copy=False)
    if ph * pw > MAX_POOL_WINDOW:
        raise ValueError(f"return_indices needs pool windows of at most {MAX_POOL_WINDOW} "
                         f"elements, got pool_size {(ph, pw)}")
    y, indices = impl.conv2d_pool_forward_with_indices(x, weight, bias, sh, sw, *geo, relu,
                                                       ph, pw)
    return y.astype(x.dtype, copy=False), indices


def conv2d_max_pool2d_backward(
    x: np.ndarray,
    weight: np.ndarray,
    dy: np.ndarray,
    indices: np.ndarray,
    stride: int | tuple[int, int] = 1,
    padding: str | int | tuple[int, int] = "valid",
    pool_size: int | tuple[int, int] = 2,
    *,
    relu_output: np.ndarray | None = None,
    need_input_grad: bool = True,
    backend: str = "numba",
) -> tuple[np.ndarray | None, np.ndarray, np.ndarray]:
    """(dx, dweight, dbias) of `conv2d_max_pool2d`, given the gradient dy of its pooled
    output and the indices it returned.

    Pass ``relu_output`` (the pooled output of ``conv2d_max_pool2d(..., relu=True)``) to
    backpropagate through the fused ReLU as well; dx is None when not
    ``need_input_grad``.
    """
    impl = backend_module(backend)
    need_input_grad = check_bool(need_input_grad, "need_input_grad")
    x, weight, _ = _check_conv(x, weight, None)
    (sh, sw), (ph, pw), geo = _pooled_geometry(x, weight, stride, padding, pool_size)
    pad_top, pad_left, out_h, out_w = geo
    pooled_shape = (x.shape[0], weight.shape[0], out_h // ph, out_w // pw)
    dy, mask = _check_output_grad(dy, relu_output, pooled_shape, x.dtype)
    if not isinstance(indices, np.ndarray) or indices.dtype != np.uint8:
        raise TypeError(f"indices must be the uint8 array returned by conv2d_max_pool2d, "
                        f"got {describe(indices)}")
    if indices.shape != pooled_shape:
        raise ValueError(f"indices must have shape {pooled_shape}, got {indices.shape}")
    # The kernel writes each gradient at its index inside the window: a larger index
    # would write outside it.
    if int(indices.max()) >= ph * pw:
        raise ValueError(f"indices hold offsets outside the {ph}x{pw} pool window")
    if not indices.flags.writeable or not indices.flags.c_contiguous:
        indices = np.array(indices, order="C")
    dx, dw, db = impl.conv2d_pool_backward(
        x, weight, dy, dy if mask is None else mask, indices, mask is not None, sh, sw,
        pad_top, pad_left, out_h, out_w, ph, pw, need_input_grad)
    return grads_in(x.dtype, dx, dw, db)


def conv2d_backward(
    x: np.ndarray,
    weight: np.ndarray,
    dy: np.ndarray,
    stride: int | tuple[int, int] = 1,
    padding: str | int | tuple[int, int] = "valid",
    *,
    relu_output: np.ndarray | None = None,
    need_input_grad: bool = True,
    backend: str = "numba",
) -> tuple[np.ndarray | None, np.ndarray, np.ndarray]:
    """(dx, dweight, dbias) of a convolution given the output gradient dy.

    Pass ``relu_output`` (the output of ``conv2d(..., relu=True)``) to backpropagate
    through the fused ReLU as well; dx is None when not ``need_input_grad``.
    """
    impl = backend_module(backend)
    need_input_grad = check_bool(need_input_grad, "need_input_grad")
    x, weight, _ = _check_conv(x, weight, None)
    sh, sw = pair(stride, "stride")
    N, _, H, W = x.shape
    KH, KW = weight.shape[2:]
    pad_top, pad_left, out_h, out_w = conv_geometry(H, W, (KH, KW), (sh, sw), padding)
    _check_conv_budget(x.shape, weight.shape, (sh, sw), (pad_top, pad_left, out_h, out_w))
    dy, mask = _check_output_grad(dy, relu_output, (N, weight.shape[0], out_h, out_w), x.dtype)
    dx, dw, db = impl.conv2d_backward(
        x, weight, dy, dy if mask is None else mask, mask is not None, sh, sw, pad_top,
        pad_left, need_input_grad)
    return grads_in(x.dtype, dx, dw, db)


def max_pool2d(
    x: np.ndarray,
    pool_size: int | tuple[int, int] = 2,
    stride: int | tuple[int, int] | None = None,
    *,
    backend: str = "numba",
) -> tuple[np.ndarray, np.ndarray]:
    """(y, argmax) of max pooling; stride defaults to the pool size."""
    impl = backend_module(backend)
    x = check_array(x, "x", 4)
    ph, pw = pair(pool_size, "pool_size")
    sh, sw = pair(pool_size if stride is None else stride, "stride")
    if ph > x.shape[2] or pw > x.shape[3]:
        raise ValueError(f"pool_size {(ph, pw)} is larger than the input {x.shape[2:]}")
    y, argmax = impl.maxpool2d_forward(x, ph, pw, sh, sw)
    return y.astype(x.dtype, copy=False), argmax


def max_pool2d_backward(
    dy: np.ndarray,
    argmax: np.ndarray,
    input_shape: tuple[int, int, int, int],
    *,
    backend: str = "numba",
) -> np.ndarray:
    """Input gradient of max pooling, from the argmax that `max_pool2d` returned."""
    impl = backend_module(backend)
    dy = check_array(dy, "dy", 4)
    if not isinstance(argmax, np.ndarray) or argmax.dtype != np.int64:
        raise TypeError(f"argmax must be the int64 array returned by max_pool2d, "
                        f"got {describe(argmax)}")
    if argmax.shape != dy.shape:
        raise ValueError(f"argmax shape {argmax.shape} differs from dy shape {dy.shape}")
    if not isinstance(input_shape, (tuple, list)) or len(input_shape) != 4:
        raise TypeError(f"input_shape must be a tuple (N, C, H, W), got {describe(input_shape)}")
    N, C, H, W = (check_int(v, f"input_shape[{i}]", 1) for i, v in enumerate(input_shape))
    if (N, C) != dy.shape[:2] or H < dy.shape[2] or W < dy.shape[3]:
        raise ValueError(f"input_shape {tuple(input_shape)} cannot have produced dy of "
                         f"shape {dy.shape}")
    _check_budget((N, C, H, W), "the input gradient")
    # The kernel scatters into dx at these indices: any outside the plane would write
    # out of bounds.
    if argmax.min() < 0 or argmax.max() >= H * W:
        raise ValueError(f"argmax holds indices outside the {H}x{W} input plane")
    if not argmax.flags.writeable or not argmax.flags.c_contiguous:
        argmax = np.array(argmax, order="C")
    dx = impl.maxpool2d_backward(dy, argmax, H, W)
    return dx.astype(dy.dtype, copy=False)


def _check_dense(x, weight, bias):
    return _check_layer_arrays(x, weight, bias, 2, 0, 1, "input features")


def dense(
    x: np.ndarray,
    weight: np.ndarray,
    bias: np.ndarray | None = None,
    *,
    relu: bool = False,
    backend: str = "numba",
) -> np.ndarray:
    """Fully connected layer x @ weight + bias. x: (N, K); weight: (K, U); bias: (U,) or None."""
    impl = backend_module(backend)
    relu = check_bool(relu, "relu")
    x, weight, bias = _check_dense(x, weight, bias)
    _check_budget((x.shape[0], weight.shape[1]), "the output")
    return impl.dense_forward(x, weight, bias, relu).astype(x.dtype, copy=False)


def dense_backward(
    x: np.ndarray,
    weight: np.ndarray,
    dy: np.ndarray,
    *,
    relu_output: np.ndarray | None = None,
    need_input_grad: bool = True,
    backend: str = "numba",
) -> tuple[np.ndarray | None, np.ndarray, np.ndarray]:
    """(dx, dweight, dbias) of a dense layer given the output gradient dy.

    Pass ``relu_output`` (the output of ``dense(..., relu=True)``) to backpropagate
    through the fused ReLU as well; dx is None when not ``need_input_grad``.
    """
    impl = backend_module(backend)
    need_input_grad = check_bool(need_input_grad, "need_input_grad")
    x, weight, _ = _check_dense(x, weight, None)
    dy, mask = _check_output_grad(dy, relu_output, (x.shape[0], weight.shape[1]), x.dtype)
    dx, dw, db = impl.dense_backward(x, weight, dy, dy if mask is None else mask,
                                     mask is not None, need_input_grad)
    return grads_in(x.dtype, dx, dw, db)


def softmax_cross_entropy(
    logits: np.ndarray,
    labels: np.ndarray,
    *,
    backend: str = "numba",
) -> tuple[float, np.ndarray]:
    """(mean cross-entropy of softmax(logits) against integer labels, its gradient with
    respect to logits). logits: (N, classes) float; labels: (N,) integers."""
    impl = backend_module(backend)
    logits = check_array(logits, "logits", 2)
    labels = np.asarray(labels)
    if labels.shape != (logits.shape[0],) or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be {logits.shape[0]} integers, got "
                         f"shape {labels.shape} dtype {labels.dtype}")
    # uint64 labels above 2**63 wrap negative here, so the kernel still refuses them.
    index = np.ascontiguousarray(labels, dtype=np.int64)
    loss, grad, bad = impl.softmax_cross_entropy(logits, index)
    if bad >= 0:
        raise ValueError(f"labels must lie in [0, {logits.shape[1]}), got {labels[bad]} "
                         f"at index {bad}")
    return float(loss), grad.astype(logits.dtype, copy=False)
