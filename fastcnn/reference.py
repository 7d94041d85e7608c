"""Vectorised NumPy oracles of the Numba kernels: same names, same arguments.

They compute in float64 and return float64, whatever the input dtype, so that
tests can compare the float32 kernels against them with stated tolerances.
``fastcnn.naive`` holds the same functions as plain loops.
"""

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view


def _padded(x, pad_top, pad_left, out_h, out_w, stride_h, stride_w, kernel_h, kernel_w):
    N, C, H, W = x.shape
    Hp = max(H + pad_top, (out_h - 1) * stride_h + kernel_h)
    Wp = max(W + pad_left, (out_w - 1) * stride_w + kernel_w)
    xp = np.zeros((N, C, Hp, Wp))
    xp[:, :, pad_top:pad_top + H, pad_left:pad_left + W] = x
    return xp


def _windows(xp, kernel_h, kernel_w, stride_h, stride_w, out_h, out_w):
    """(N, C, out_h, out_w, KH, KW) view of the receptive fields."""
    win = sliding_window_view(xp, (kernel_h, kernel_w), axis=(2, 3))
    return win[:, :, ::stride_h, ::stride_w][:, :, :out_h, :out_w]


def conv2d_forward(x, weight, bias, stride_h, stride_w, pad_top, pad_left, out_h, out_w, relu):
    F, C, KH, KW = weight.shape
    xp = _padded(x, pad_top, pad_left, out_h, out_w, stride_h, stride_w, KH, KW)
    win = _windows(xp, KH, KW, stride_h, stride_w, out_h, out_w)
    y = np.einsum("nchwij,fcij->nfhw", win, weight.astype(np.float64), optimize=True)
    y += bias.astype(np.float64)[None, :, None, None]
    return np.maximum(y, 0.0) if relu else y


def conv2d_backward_input(dy, weight, in_h, in_w, stride_h, stride_w, pad_top, pad_left):
    N, F, OH, OW = dy.shape
    _, C, KH, KW = weight.shape
    dy = dy.astype(np.float64)
    w = weight.astype(np.float64)
    Hp = max(in_h + pad_top, (OH - 1) * stride_h + KH)
    Wp = max(in_w + pad_left, (OW - 1) * stride_w + KW)
    dxp = np.zeros((N, C, Hp, Wp))
    for ki in range(KH):
        for kj in range(KW):
            contrib = np.einsum("nfhw,fc->nchw", dy, w[:, :, ki, kj])
            dxp[:, :, ki:ki + stride_h * (OH - 1) + 1:stride_h,
                kj:kj + stride_w * (OW - 1) + 1:stride_w] += contrib
    return dxp[:, :, pad_top:pad_top + in_h, pad_left:pad_left + in_w].copy()


def conv2d_backward_weight(x, dy, kernel_h, kernel_w, stride_h, stride_w, pad_top, pad_left):
    N, F, OH, OW = dy.shape
    xp = _padded(x, pad_top, pad_left, OH, OW, stride_h, stride_w, kernel_h, kernel_w)
    win = _windows(xp, kernel_h, kernel_w, stride_h, stride_w, OH, OW)
    dy = dy.astype(np.float64)
    dw = np.einsum("nfhw,nchwij->fcij", dy, win, optimize=True)
    return dw, dy.sum(axis=(0, 2, 3))


def maxpool2d_forward(x, pool_h, pool_w, stride_h, stride_w):
    N, C, H, W = x.shape
    OH = (H - pool_h) // stride_h + 1
    OW = (W - pool_w) // stride_w + 1
    win = _windows(x.astype(np.float64), pool_h, pool_w, stride_h, stride_w, OH, OW)
    flat = win.reshape(N, C, OH, OW, pool_h * pool_w)
    local = np.argmax(flat, axis=-1)  # first maximum; NaN counts as the maximum
    y = np.take_along_axis(flat, local[..., None], axis=-1)[..., 0]
    rows = np.arange(OH)[:, None] * stride_h + local // pool_w
    cols = np.arange(OW)[None, :] * stride_w + local % pool_w
    return y, (rows * W + cols).astype(np.int64)


def maxpool2d_backward(dy, argmax, in_h, in_w):
    N, C, OH, OW = dy.shape
    dx = np.zeros((N * C, in_h * in_w))
    planes = np.repeat(np.arange(N * C), OH * OW)
    np.add.at(dx, (planes, argmax.reshape(-1)), dy.astype(np.float64).reshape(-1))
    return dx.reshape(N, C, in_h, in_w)


def dense_forward(x, weight, bias, relu):
    y = x.astype(np.float64) @ weight.astype(np.float64) + bias.astype(np.float64)
    return np.maximum(y, 0.0) if relu else y


def dense_backward(x, weight, dy, y, relu, need_input_grad):
    g = np.where(y > 0, dy, 0.0) if relu else dy.astype(np.float64)
    dx = g @ weight.astype(np.float64).T if need_input_grad else None
    return dx, x.astype(np.float64).T @ g, g.sum(axis=0)


def fused_backward(backward_input, backward_weight):
    """The fused conv2d_backward of a module, composed from its two gradient functions."""

    def conv2d_backward(x, weight, dy, y, relu, stride_h, stride_w, pad_top, pad_left,
                        need_input_grad):
        if relu:
            dy = np.where(y > 0, dy, 0.0)
        KH, KW = weight.shape[2:]
        dx = None
        if need_input_grad:
            dx = backward_input(dy, weight, x.shape[2], x.shape[3], stride_h, stride_w,
                                pad_top, pad_left)
        dw, db = backward_weight(x, dy, KH, KW, stride_h, stride_w, pad_top, pad_left)
        return dx, dw, db

    return conv2d_backward


conv2d_backward = fused_backward(conv2d_backward_input, conv2d_backward_weight)


def pooled_forward(conv_forward, pool_forward):
    """The conv2d_pool_forward of a module, composed from its conv and pool forwards."""

    def conv2d_pool_forward(x, weight, bias, stride_h, stride_w, pad_top, pad_left, out_h,
                            out_w, relu, pool_h, pool_w):
        y = conv_forward(x, weight, bias, stride_h, stride_w, pad_top, pad_left, out_h, out_w,
                         relu)
        return pool_forward(y, pool_h, pool_w, pool_h, pool_w)[0]

    return conv2d_pool_forward


def window_of(argmax, W, pool_h, pool_w):
    """maxpool2d_forward's argmax (flat h * W + w) as the offset a * pool_w + b of each
    maximum inside its non-overlapping window (uint8)."""
    _, _, PH, PW = argmax.shape
    a = argmax // W - np.arange(PH)[:, None] * pool_h
    b = argmax % W - np.arange(PW)[None, :] * pool_w
    return (a * pool_w + b).astype(np.uint8)


def pooled_forward_with_indices(conv_forward, pool_forward):
    """The conv2d_pool_forward_with_indices of a module, composed from its conv and pool
    forwards."""

    def conv2d_pool_forward_with_indices(x, weight, bias, stride_h, stride_w, pad_top,
                                         pad_left, out_h, out_w, relu, pool_h, pool_w):
        y = conv_forward(x, weight, bias, stride_h, stride_w, pad_top, pad_left, out_h, out_w,
                         relu)
        pooled, argmax = pool_forward(y, pool_h, pool_w, pool_h, pool_w)
        return pooled, window_of(argmax, out_w, pool_h, pool_w)

    return conv2d_pool_forward_with_indices


def pooled_backward(conv_backward, pool_backward):
    """The conv2d_pool_backward of a module, composed from its conv and pool backwards."""

    def conv2d_pool_backward(x, weight, dy, y, indices, relu, stride_h, stride_w, pad_top,
                             pad_left, out_h, out_w, pool_h, pool_w, need_input_grad):
        _, _, PH, PW = dy.shape
        # The ReLU passes the gradient at a window's maximum where the pooled output is > 0.
        g = np.where(y > 0, dy, 0.0) if relu else dy.astype(np.float64)
        rows = np.arange(PH)[:, None] * pool_h + indices // pool_w
        cols = np.arange(PW)[None, :] * pool_w + indices % pool_w
        full = pool_backward(g, (rows * out_w + cols).astype(np.int64), out_h, out_w)
        return conv_backward(x, weight, full, full, False, stride_h, stride_w, pad_top,
                             pad_left, need_input_grad)

    return conv2d_pool_backward


conv2d_pool_forward = pooled_forward(conv2d_forward, maxpool2d_forward)
conv2d_pool_forward_with_indices = pooled_forward_with_indices(conv2d_forward,
                                                               maxpool2d_forward)
conv2d_pool_backward = pooled_backward(conv2d_backward, maxpool2d_backward)


# Samples per partial sum of the kernels' weight gradients (kernels/_tuning.py's GRAD_CHUNK,
# not imported from there so that the oracles load without Numba).
GRAD_CHUNK = 8


def in_parts(backward):
    """The *_parts variant of a fused backward function of a module: the weight and bias
    gradients of each chunk of GRAD_CHUNK samples, stacked, computed chunk by chunk."""

    def backward_parts(x, weight, dy, y, *args):
        *rest, need_input_grad = args
        chunks = [backward(x[i:i + GRAD_CHUNK], weight, dy[i:i + GRAD_CHUNK],
                           y[i:i + GRAD_CHUNK], *_chunk_args(rest, i), need_input_grad)
                  for i in range(0, len(x), GRAD_CHUNK)]
        dx = np.concatenate([c[0] for c in chunks]) if need_input_grad else None
        return dx, np.stack([c[1] for c in chunks]), np.stack([c[2] for c in chunks])

    backward_parts.__name__ = backward.__name__ + "_parts"
    return backward_parts


def _chunk_args(args, i):
    """The arguments after y, with a pooled pass's indices (the first array) cut to the
    chunk at sample i."""
    return [a[i:i + GRAD_CHUNK] if isinstance(a, np.ndarray) else a for a in args]


conv2d_backward_parts = in_parts(conv2d_backward)
conv2d_pool_backward_parts = in_parts(conv2d_pool_backward)


def softmax_cross_entropy(logits, labels):
    """(mean loss, dlogits, index of the first label outside [0, K) or -1)."""
    z = logits.astype(np.float64)
    N, K = z.shape
    bad = np.flatnonzero((labels < 0) | (labels >= K))
    if bad.size:
        return np.nan, np.empty_like(z), int(bad[0])
    z = z - z.max(axis=1, keepdims=True)
    log_norm = np.log(np.exp(z).sum(axis=1))
    rows = np.arange(N)
    grad = np.exp(z - log_norm[:, None])
    grad[rows, labels] -= 1
    return float(np.mean(log_norm - z[rows, labels])), grad / N, -1


def avgpool2d_forward(x, pool_h, pool_w, stride_h, stride_w):
    N, C, H, W = x.shape
    OH = (H - pool_h) // stride_h + 1
    OW = (W - pool_w) // stride_w + 1
    win = _windows(x.astype(np.float64), pool_h, pool_w, stride_h, stride_w, OH, OW)
    return win.mean(axis=(4, 5))


def avgpool2d_backward(dy, pool_h, pool_w, stride_h, stride_w, in_h, in_w):
    N, C, OH, OW = dy.shape
    dx = np.zeros((N, C, in_h, in_w))
    g = dy.astype(np.float64) / (pool_h * pool_w)
    for a in range(pool_h):  # every offset inside the window, for all windows at once
        for b in range(pool_w):
            dx[:, :, a:a + (OH - 1) * stride_h + 1:stride_h,
               b:b + (OW - 1) * stride_w + 1:stride_w] += g
    return dx


def global_avgpool2d_forward(x):
    return x.astype(np.float64).mean(axis=(2, 3))


def global_avgpool2d_backward(dy, in_h, in_w):
    g = dy.astype(np.float64) / (in_h * in_w)
    return np.broadcast_to(g[:, :, None, None], (*dy.shape, in_h, in_w)).copy()


def dropout_apply(x, keep, scale):
    return x.astype(np.float64) * np.where(keep, scale, 0.0)


def activation_forward(x, kind, slope):
    v = x.astype(np.float64)
    if kind == 0:
        return np.where(v < 0, 0.0, v)  # NaN stays NaN
    if kind == 1:
        return np.where(v < 0, v * slope, v)
    if kind == 2:
        e = np.exp(-np.abs(v))  # never overflows
        return np.where(v >= 0, 1 / (1 + e), e / (1 + e))
    return np.tanh(v)


def activation_backward(dy, saved, kind, slope):
    d, v = dy.astype(np.float64), saved.astype(np.float64)
    if kind == 0:
        return np.where(v > 0, d, 0.0)
    if kind == 1:
        return np.where(v > 0, d, d * slope)
    if kind == 2:
        return d * v * (1 - v)
    return d * (1 - v * v)


def batchnorm_forward(x, gamma, beta, eps, relu):
    v = x.astype(np.float64)
    mean = v.mean(axis=(0, 2))
    var = ((v - mean[:, None]) ** 2).mean(axis=(0, 2))
    invstd = 1 / np.sqrt(var + eps)
    y = (v - mean[:, None]) * invstd[:, None] * gamma[:, None] + beta[:, None]
    return (np.where(y < 0, 0.0, y) if relu else y), mean, var, invstd


def batchnorm_inference(x, scale, shift, relu):
    y = x.astype(np.float64) * scale[:, None] + shift[:, None]
    return np.where(y < 0, 0.0, y) if relu else y


def batchnorm_backward(dy, x, y, mean, invstd, gamma, relu, need_input_grad):
    g = dy.astype(np.float64)
    if relu:
        g = np.where(y > 0, g, 0.0)
    xhat = (x.astype(np.float64) - mean[:, None]) * invstd[:, None]
    dbeta = g.sum(axis=(0, 2))
    dgamma = (g * xhat).sum(axis=(0, 2))
    count = x.shape[0] * x.shape[2]
    dx = None
    if need_input_grad:  # the batch statistics' own gradients are the two mean terms
        dx = (gamma * invstd)[:, None] * (g - dbeta[:, None] / count
                                          - xhat * dgamma[:, None] / count)
    return dx, dgamma, dbeta


def shift_flip(images, shifts, flips):
    N, C, H, W = images.shape
    out = np.zeros_like(images)
    padded = np.zeros((N, C, 3 * H, 3 * W), dtype=images.dtype)
    padded[:, :, H:2 * H, W:2 * W] = images
    for n in range(N):  # a window of the padded image, then the flip
        dy, dx = shifts[n]
        window = padded[n, :, H + dy:2 * H + dy, W + dx:2 * W + dx]
        out[n] = window[:, :, ::-1] if flips[n] else window
    return out
