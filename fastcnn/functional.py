"""Stateless, validated convolution and pooling (the ``nn.functional`` of fastcnn).

Every function checks its arguments, works out the geometry and then runs a prepared
operation (`fastcnn.ops`) on the Numba kernels (``backend="numba"``) or on the NumPy
oracles (``backend="numpy"``). Nothing reaches a kernel that could make it read or
write out of bounds. The checks and geometry live in `validation` and `geometry`, and
are re-exported here.
"""

from __future__ import annotations

import numpy as np

from . import ops
from .geometry import (  # noqa: F401  (re-exported: part of fastcnn.functional's API)
    MAX_POOL_WINDOW,
    check_conv_budget,
    conv_buffer_shapes,
    conv_geometry,
    pooled_geometry,
)
from .ops import BACKENDS, backend_module, grads_in  # noqa: F401
from .validation import (  # noqa: F401
    FLOAT_DTYPES,
    MAX_ELEMENTS,
    MAX_SIZE,
    check_array,
    check_bool,
    check_budget,
    check_int,
    check_real,
    describe,
    pair,
)


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
    backend_module(backend)
    relu = check_bool(relu, "relu")
    x, weight, bias = _check_conv(x, weight, bias)
    sh, sw = pair(stride, "stride")
    geo = conv_geometry(x.shape[2], x.shape[3], weight.shape[2:], (sh, sw), padding)
    check_conv_budget(x.shape, weight.shape, (sh, sw), geo)
    return ops.Conv2dOp(backend, (sh, sw), geo).forward(x, weight, bias, relu)


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
    backend_module(backend)
    relu = check_bool(relu, "relu")
    return_indices = check_bool(return_indices, "return_indices")
    x, weight, bias = _check_conv(x, weight, bias)
    stride, pool_size, geo = pooled_geometry(x.shape, weight.shape, stride, padding, pool_size)
    op = ops.Conv2dOp(backend, stride, geo)
    if not return_indices:
        return op.forward_pooled(x, weight, bias, relu, pool_size)
    if pool_size[0] * pool_size[1] > MAX_POOL_WINDOW:
        raise ValueError(f"return_indices needs pool windows of at most {MAX_POOL_WINDOW} "
                         f"elements, got pool_size {pool_size}")
    return op.forward_pooled_with_indices(x, weight, bias, relu, pool_size)


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
    backend_module(backend)
    need_input_grad = check_bool(need_input_grad, "need_input_grad")
    x, weight, _ = _check_conv(x, weight, None)
    (sh, sw), (ph, pw), geo = pooled_geometry(x.shape, weight.shape, stride, padding, pool_size)
    _, _, out_h, out_w = geo
    pooled_shape = (x.shape[0], weight.shape[0], out_h // ph, out_w // pw)
    dy, relu_output = _check_output_grad(dy, relu_output, pooled_shape, x.dtype)
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
    return ops.Conv2dOp(backend, (sh, sw), geo).backward_pooled(
        x, weight, dy, relu_output, indices, (ph, pw), need_input_grad)


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
    backend_module(backend)
    need_input_grad = check_bool(need_input_grad, "need_input_grad")
    x, weight, _ = _check_conv(x, weight, None)
    sh, sw = pair(stride, "stride")
    N, _, H, W = x.shape
    geo = conv_geometry(H, W, weight.shape[2:], (sh, sw), padding)
    check_conv_budget(x.shape, weight.shape, (sh, sw), geo)
    dy, relu_output = _check_output_grad(dy, relu_output, (N, weight.shape[0], *geo[2:]),
                                         x.dtype)
    return ops.Conv2dOp(backend, (sh, sw), geo).backward(x, weight, dy, relu_output,
                                                         need_input_grad)


def max_pool2d(
    x: np.ndarray,
    pool_size: int | tuple[int, int] = 2,
    stride: int | tuple[int, int] | None = None,
    *,
    backend: str = "numba",
) -> tuple[np.ndarray, np.ndarray]:
    """(y, argmax) of max pooling; stride defaults to the pool size."""
    backend_module(backend)
    x = check_array(x, "x", 4)
    ph, pw = pair(pool_size, "pool_size")
    sh, sw = pair(pool_size if stride is None else stride, "stride")
    if ph > x.shape[2] or pw > x.shape[3]:
        raise ValueError(f"pool_size {(ph, pw)} is larger than the input {x.shape[2:]}")
    return ops.MaxPool2dOp(backend, (ph, pw), (sh, sw)).forward(x)


def max_pool2d_backward(
    dy: np.ndarray,
    argmax: np.ndarray,
    input_shape: tuple[int, int, int, int],
    *,
    backend: str = "numba",
) -> np.ndarray:
    """Input gradient of max pooling, from the argmax that `max_pool2d` returned."""
    backend_module(backend)
    dy = check_array(dy, "dy", 4)
    if not isinstance(argmax, np.ndarray) or argmax.dtype != np.int64:
        raise TypeError(f"argmax must be the int64 array returned by max_pool2d, "
                        f"got {describe(argmax)}")
    if argmax.shape != dy.shape:
        raise ValueError(f"argmax shape {argmax.shape} differs from dy shape {dy.shape}")
    N, C, H, W = _check_input_shape(input_shape)
    if (N, C) != dy.shape[:2] or H < dy.shape[2] or W < dy.shape[3]:
        raise ValueError(f"input_shape {tuple(input_shape)} cannot have produced dy of "
                         f"shape {dy.shape}")
    # The kernel scatters into dx at these indices: any outside the plane would write
    # out of bounds.
    if argmax.min() < 0 or argmax.max() >= H * W:
        raise ValueError(f"argmax holds indices outside the {H}x{W} input plane")
    if not argmax.flags.writeable or not argmax.flags.c_contiguous:
        argmax = np.array(argmax, order="C")
    # The window and stride do not matter here: argmax says where each maximum was.
    return ops.MaxPool2dOp(backend, (1, 1), (1, 1)).backward(dy, argmax, H, W)


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
    backend_module(backend)
    relu = check_bool(relu, "relu")
    x, weight, bias = _check_dense(x, weight, bias)
    check_budget((x.shape[0], weight.shape[1]), "the output")
    return ops.DenseOp(backend).forward(x, weight, bias, relu)


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
    backend_module(backend)
    need_input_grad = check_bool(need_input_grad, "need_input_grad")
    x, weight, _ = _check_dense(x, weight, None)
    dy, relu_output = _check_output_grad(dy, relu_output, (x.shape[0], weight.shape[1]),
                                         x.dtype)
    return ops.DenseOp(backend).backward(x, weight, dy, relu_output, need_input_grad)


def softmax_cross_entropy(
    logits: np.ndarray,
    labels: np.ndarray,
    *,
    backend: str = "numba",
) -> tuple[float, np.ndarray]:
    """(mean cross-entropy of softmax(logits) against integer labels, its gradient with
    respect to logits). logits: (N, classes) float; labels: (N,) integers."""
    backend_module(backend)
    logits = check_array(logits, "logits", 2)
    labels = np.asarray(labels)
    if labels.shape != (logits.shape[0],) or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be {logits.shape[0]} integers, got "
                         f"shape {labels.shape} dtype {labels.dtype}")
    # uint64 labels above 2**63 wrap negative here, so the kernel still refuses them.
    index = np.ascontiguousarray(labels, dtype=np.int64)
    loss, grad, bad = ops.softmax_cross_entropy(backend, logits, index)
    if bad >= 0:
        raise ValueError(f"labels must lie in [0, {logits.shape[1]}), got {labels[bad]} "
                         f"at index {bad}")
    return loss, grad


def _pool_pairs(pool_size, stride, shape):
    ph, pw = pair(pool_size, "pool_size")
    sh, sw = pair(pool_size if stride is None else stride, "stride")
    if ph > shape[2] or pw > shape[3]:
        raise ValueError(f"pool_size {(ph, pw)} is larger than the input {shape[2:]}")
    return (ph, pw), (sh, sw)


def _check_input_shape(input_shape: object, ndim: int = 4) -> tuple[int, ...]:
    if not isinstance(input_shape, (tuple, list)) or len(input_shape) != ndim:
        raise TypeError(f"input_shape must be a tuple (N, C, H, W), got {describe(input_shape)}")
    shape = tuple(check_int(v, f"input_shape[{i}]", 1) for i, v in enumerate(input_shape))
    check_budget(shape, "the input gradient")
    return shape


def avg_pool2d(
    x: np.ndarray,
    pool_size: int | tuple[int, int] = 2,
    stride: int | tuple[int, int] | None = None,
    *,
    backend: str = "numba",
) -> np.ndarray:
    """Average pooling without padding (floor output size); stride defaults to the pool
    size. x: (N, C, H, W)."""
    backend_module(backend)
    x = check_array(x, "x", 4)
    pool, stride = _pool_pairs(pool_size, stride, x.shape)
    return ops.AvgPool2dOp(backend, pool, stride).forward(x)


def avg_pool2d_backward(
    dy: np.ndarray,
    input_shape: tuple[int, int, int, int],
    pool_size: int | tuple[int, int] = 2,
    stride: int | tuple[int, int] | None = None,
    *,
    backend: str = "numba",
) -> np.ndarray:
    """Input gradient of `avg_pool2d` on an input of input_shape (N, C, H, W)."""
    backend_module(backend)
    dy = check_array(dy, "dy", 4)
    N, C, H, W = _check_input_shape(input_shape)
    pool, stride = _pool_pairs(pool_size, stride, (N, C, H, W))
    expected = (N, C, (H - pool[0]) // stride[0] + 1, (W - pool[1]) // stride[1] + 1)
    if dy.shape != expected:
        raise ValueError(f"dy must have shape {expected} for input_shape {(N, C, H, W)}, "
                         f"got {dy.shape}")
    return ops.AvgPool2dOp(backend, pool, stride).backward(dy, H, W)


def global_avg_pool2d(x: np.ndarray, *, backend: str = "numba") -> np.ndarray:
    """The mean of each plane: x (N, C, H, W) -> (N, C)."""
    backend_module(backend)
    x = check_array(x, "x", 4)
    return ops.GlobalAvgPool2dOp(backend).forward(x)


def global_avg_pool2d_backward(dy: np.ndarray, input_shape: tuple[int, int, int, int], *,
                               backend: str = "numba") -> np.ndarray:
    """Input gradient of `global_avg_pool2d`: dy (N, C) spread evenly over each plane."""
    backend_module(backend)
    dy = check_array(dy, "dy", 2)
    N, C, H, W = _check_input_shape(input_shape)
    if dy.shape != (N, C):
        raise ValueError(f"dy must have shape {(N, C)} for input_shape {(N, C, H, W)}, "
                         f"got {dy.shape}")
    return ops.GlobalAvgPool2dOp(backend).backward(dy, H, W)


def check_rate(rate: object) -> float:
    """A dropout rate: a real number in [0, 1)."""
    if isinstance(rate, (bool, np.bool_)) or not isinstance(rate, (int, float, np.integer,
                                                                      np.floating)):
        raise TypeError(f"rate must be a number in [0, 1), got {describe(rate)}")
    if not 0 <= rate < 1:  # NaN fails too
        raise ValueError(f"rate must be in [0, 1), got {rate}")
    return float(rate)


def dropout(x: np.ndarray, rate: float, rng: np.random.Generator, *,
            backend: str = "numba") -> tuple[np.ndarray, np.ndarray]:
    """Inverted dropout in training: (y, keep). Each element is kept with probability
    1 - rate, drawn from ``rng``, and scaled by 1 / (1 - rate); keep (bool, x's shape)
    is what `dropout_backward` needs."""
    backend_module(backend)
    rate = check_rate(rate)
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng must be a numpy Generator, got {describe(rng)}")
    x = check_array(x, "x", x.ndim if isinstance(x, np.ndarray) else 1)
    keep = rng.random(x.shape, dtype=np.float32) >= np.float32(rate)
    return ops.DropoutOp(backend, rate).apply(x, keep), keep


def dropout_backward(dy: np.ndarray, keep: np.ndarray, rate: float, *,
                     backend: str = "numba") -> np.ndarray:
    """Input gradient of `dropout`, from the keep mask it returned."""
    backend_module(backend)
    rate = check_rate(rate)
    dy = check_array(dy, "dy", dy.ndim if isinstance(dy, np.ndarray) else 1)
    if not isinstance(keep, np.ndarray) or keep.dtype != np.bool_:
        raise TypeError(f"keep must be the bool array returned by dropout, got "
                        f"{describe(keep)}")
    if keep.shape != dy.shape:
        raise ValueError(f"keep shape {keep.shape} differs from dy shape {dy.shape}")
    if not keep.flags.writeable or not keep.flags.c_contiguous:
        keep = np.array(keep, order="C")
    return ops.DropoutOp(backend, rate).apply(dy, keep)


def check_activation(name: object, negative_slope: object = 0.01) -> tuple[str, float]:
    """(name, negative_slope), checked: a name of `ops.ACTIVATIONS` and a finite slope."""
    if not isinstance(name, str) or name not in ops.ACTIVATIONS:
        raise ValueError(f"activation must be one of {sorted(ops.ACTIVATIONS)}, got "
                         f"{describe(name)}")
    if isinstance(negative_slope, (bool, np.bool_)) or not isinstance(
            negative_slope, (int, float, np.integer, np.floating)) \
            or not np.isfinite(negative_slope):
        raise TypeError(f"negative_slope must be a finite number, got "
                        f"{describe(negative_slope)}")
    return name, float(negative_slope)


def activation(x: np.ndarray, name: str, *, negative_slope: float = 0.01,
               backend: str = "numba") -> np.ndarray:
    """An element-wise activation: "relu", "leaky_relu" (``negative_slope`` times x
    below zero), "sigmoid" or "tanh" (float32 sigmoid and tanh within 2.5 and 1.5 ulp of
    the exact value, float64 as libm)."""
    backend_module(backend)
    name, slope = check_activation(name, negative_slope)
    x = check_array(x, "x", x.ndim if isinstance(x, np.ndarray) else 1)
    return ops.ActivationOp(backend, name, slope).forward(x)


def activation_backward(dy: np.ndarray, saved: np.ndarray, name: str, *,
                        negative_slope: float = 0.01, backend: str = "numba") -> np.ndarray:
    """Input gradient of `activation`; ``saved`` is its input for relu and leaky_relu,
    its output for sigmoid and tanh."""
    backend_module(backend)
    name, slope = check_activation(name, negative_slope)
    dy = check_array(dy, "dy", dy.ndim if isinstance(dy, np.ndarray) else 1)
    saved = check_array(saved, "saved", dy.ndim, dy.dtype)
    if saved.shape != dy.shape:
        raise ValueError(f"saved shape {saved.shape} differs from dy shape {dy.shape}")
    return ops.ActivationOp(backend, name, slope).backward(dy, saved)


def _check_channels(x: object, name: str, dtype: np.dtype | None = None) -> np.ndarray:
    """x of batch normalisation: (N, C) or (N, C, H, W)."""
    ndim = x.ndim if isinstance(x, np.ndarray) and x.ndim in (2, 4) else 4
    return check_array(x, name, ndim, dtype)


def check_per_channel(a: object, name: str, channels: int, dtype: np.dtype | None) -> np.ndarray:
    a = check_array(a, name, 1, dtype)
    if a.shape != (channels,):
        raise ValueError(f"{name} must have shape ({channels},) for {channels} channels, "
                         f"got {a.shape}")
    return a


def check_eps(eps: object) -> float:
    """Batch normalisation's eps: a number in (0, 1]."""
    return check_real(eps, "eps", 0.0, 1.0, low_open=True)


def batch_norm(x: np.ndarray, gamma: np.ndarray, beta: np.ndarray, *, eps: float = 1e-5,
               relu: bool = False, backend: str = "numba"
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Batch normalisation with the batch's statistics (training): per channel of x
    (N, C) or (N, C, H, W), over the batch (and the plane). gamma, beta: (C,).
    Returns (y, mean, var, invstd): var is the biased variance and invstd
    1 / sqrt(var + eps), all (C,) float64; `batch_norm_backward` takes them."""
    backend_module(backend)
    eps, relu = check_eps(eps), check_bool(relu, "relu")
    x = _check_channels(x, "x")
    gamma = check_per_channel(gamma, "gamma", x.shape[1], x.dtype)
    beta = check_per_channel(beta, "beta", x.shape[1], x.dtype)
    return ops.BatchNormOp(backend).forward(x, gamma, beta, eps, relu)


def batch_norm_inference(x: np.ndarray, gamma: np.ndarray, beta: np.ndarray,
                         running_mean: np.ndarray, running_var: np.ndarray, *,
                         eps: float = 1e-5, relu: bool = False,
                         backend: str = "numba") -> np.ndarray:
    """Batch normalisation with given statistics (evaluation)."""
    backend_module(backend)
    eps, relu = check_eps(eps), check_bool(relu, "relu")
    x = _check_channels(x, "x")
    stats = [check_per_channel(a, name, x.shape[1], None) for a, name in (
        (gamma, "gamma"), (beta, "beta"), (running_mean, "running_mean"),
        (running_var, "running_var"))]
    if np.any(stats[3] < 0):
        raise ValueError("running_var must not be negative")
    scale, shift = ops.batchnorm_scale_shift(*stats, eps)
    return ops.BatchNormOp(backend).inference(x, scale, shift, relu)


def batch_norm_backward(dy: np.ndarray, x: np.ndarray, y: np.ndarray, mean: np.ndarray,
                        invstd: np.ndarray, gamma: np.ndarray, *, relu: bool = False,
                        need_input_grad: bool = True, backend: str = "numba"
                        ) -> tuple[np.ndarray | None, np.ndarray, np.ndarray]:
    """Gradients of `batch_norm`: (dx or None, dgamma, dbeta). y is its output (read
    only with relu), mean and invstd the statistics it returned."""
    backend_module(backend)
    relu = check_bool(relu, "relu")
    need_input_grad = check_bool(need_input_grad, "need_input_grad")
    x = _check_channels(x, "x")
    dy = check_array(dy, "dy", x.ndim, x.dtype)
    y = check_array(y, "y", x.ndim, x.dtype)
    for a, name in ((dy, "dy"), (y, "y")):
        if a.shape != x.shape:
            raise ValueError(f"{name} must have x's shape {x.shape}, got {a.shape}")
    C = x.shape[1]
    gamma = check_per_channel(gamma, "gamma", C, x.dtype)
    mean = check_per_channel(mean, "mean", C, None).astype(np.float64, copy=False)
    invstd = check_per_channel(invstd, "invstd", C, None).astype(np.float64, copy=False)
    return ops.BatchNormOp(backend).backward(dy, x, y, mean, invstd, gamma, relu,
                                             need_input_grad)
