"""Convolution with any stride: direct loops over padded copies of each sample.

The general algorithm, for strides other than 1 (stride 1 has the faster flat-row
kernels of `flat`). Geometry as in the package docstring; arrays C-contiguous, of one
float dtype, checked by the caller.
"""

import numpy as np
from numba import prange

from .._jit import FASTMATH, jit
from .._tuning import GRAD_CHUNK


@jit(inline="always")
def _padded_extent(size, pad_before, out_size, stride, k):
    return max(size + pad_before, (out_size - 1) * stride + k)


@jit(inline="always")
def _fill_padded(xp, xn, pad_top, pad_left):
    """Copy one sample xn (C, H, W) into the zeroed interior of xp (C, Hp, Wp)."""
    C, H, W = xn.shape
    for c in range(C):
        for h in range(H):
            row = xp[c, pad_top + h, pad_left:pad_left + W]
            src = xn[c, h]
            for w in range(W):
                row[w] = src[w]


@jit(parallel=True, fastmath=FASTMATH)
def conv2d_forward_strided(x, weight, bias, stride_h, stride_w, pad_top, pad_left, out_h, out_w,
                            relu):
    """Any stride: y = conv(x, weight) + bias, optionally followed by ReLU.

    x: (N, C, H, W); weight: (F, C, KH, KW); bias: (F,); all one float dtype.
    Returns y: (N, F, out_h, out_w).
    """
    N, C, H, W = x.shape
    F, _, KH, KW = weight.shape
    Hp = _padded_extent(H, pad_top, out_h, stride_h, KH)
    Wp = _padded_extent(W, pad_left, out_w, stride_w, KW)
    span = (out_w - 1) * stride_w + 1
    y = np.empty((N, F, out_h, out_w), dtype=x.dtype)
    for n in prange(N):
        xp = np.zeros((C, Hp, Wp), dtype=x.dtype)
        _fill_padded(xp, x[n], pad_top, pad_left)
        for i in range(out_h):
            # All output channels of one output row stay hot in L1 together.
            for f in range(F):
                acc = y[n, f, i]
                b = bias[f]
                for j in range(out_w):
                    acc[j] = b
            for c in range(C):
                for ki in range(KH):
                    xr = xp[c, i * stride_h + ki]
                    for f in range(F):
                        acc = y[n, f, i]
                        for kj in range(KW):
                            wv = weight[f, c, ki, kj]
                            if stride_w == 1:
                                xs = xr[kj:kj + out_w]
                                for j in range(out_w):
                                    acc[j] += wv * xs[j]
                            else:
                                xs = xr[kj:kj + span:stride_w]
                                for j in range(out_w):
                                    acc[j] += wv * xs[j]
            if relu:
                for f in range(F):
                    acc = y[n, f, i]
                    for j in range(out_w):
                        if acc[j] < 0:
                            acc[j] = 0
    return y


@jit(parallel=True, fastmath=FASTMATH)
def conv2d_backward_input_strided(dy, weight, in_h, in_w, stride_h, stride_w, pad_top, pad_left):
    """Any stride: gradient of the loss with respect to the convolution's input.

    dy: (N, F, OH, OW); weight: (F, C, KH, KW). Returns dx: (N, C, in_h, in_w).
    """
    N, F, OH, OW = dy.shape
    _, C, KH, KW = weight.shape
    Hp = _padded_extent(in_h, pad_top, OH, stride_h, KH)
    Wp = _padded_extent(in_w, pad_left, OW, stride_w, KW)
    span = (OW - 1) * stride_w + 1
    dx = np.empty((N, C, in_h, in_w), dtype=dy.dtype)
    for n in prange(N):
        dxp = np.zeros((C, Hp, Wp), dtype=dy.dtype)
        for i in range(OH):
            for c in range(C):
                for ki in range(KH):
                    dr = dxp[c, i * stride_h + ki]
                    for f in range(F):
                        g = dy[n, f, i]
                        for kj in range(KW):
                            wv = weight[f, c, ki, kj]
                            if stride_w == 1:
                                ds = dr[kj:kj + OW]
                                for j in range(OW):
                                    ds[j] += wv * g[j]
                            else:
                                ds = dr[kj:kj + span:stride_w]
                                for j in range(OW):
                                    ds[j] += wv * g[j]
        for c in range(C):
            for h in range(in_h):
                src = dxp[c, pad_top + h, pad_left:pad_left + in_w]
                dst = dx[n, c, h]
                for w in range(in_w):
                    dst[w] = src[w]
    return dx


@jit(parallel=True, fastmath=FASTMATH)
def conv2d_weight_partials(x, dy, KH, KW, stride_h, stride_w, pad_top, pad_left):
    """Any stride: per-chunk partial sums of the weight and bias gradients, in float64 (as
    the stride-1 kernel's), so that they add up the same way on every path.

    Returns (dw_parts: (chunks, F, C, KH, KW), db_parts: (chunks, F)).
    """
    N, C, H, W = x.shape
    _, F, OH, OW = dy.shape
    Hp = _padded_extent(H, pad_top, OH, stride_h, KH)
    Wp = _padded_extent(W, pad_left, OW, stride_w, KW)
    span = (OW - 1) * stride_w + 1
    chunks = (N + GRAD_CHUNK - 1) // GRAD_CHUNK
    dw_parts = np.zeros((chunks, F, C, KH, KW))
    db_parts = np.zeros((chunks, F))
    for k in prange(chunks):
        xp = np.zeros((C, Hp, Wp), dtype=x.dtype)
        dw = dw_parts[k]
        db = db_parts[k]
        for n in range(k * GRAD_CHUNK, min(N, (k + 1) * GRAD_CHUNK)):
            _fill_padded(xp, x[n], pad_top, pad_left)
            for f in range(F):
                for i in range(OH):
                    g = dy[n, f, i]
                    s = 0.0
                    for j in range(OW):
                        s += g[j]
                    db[f] += s
                    for c in range(C):
                        for ki in range(KH):
                            xr = xp[c, i * stride_h + ki]
                            for kj in range(KW):
                                s = 0.0
                                if stride_w == 1:
                                    xs = xr[kj:kj + OW]
                                    for j in range(OW):
                                        s += g[j] * xs[j]
                                else:
                                    xs = xr[kj:kj + span:stride_w]
                                    for j in range(OW):
                                        s += g[j] * xs[j]
                                dw[f, c, ki, kj] += s
    return dw_parts, db_parts


@jit(parallel=True)
def relu_mask(dy, y):
    """dy where y > 0, else 0 (the ReLU backward pass). dy, y: (N, C, H, W)."""
    out = np.empty_like(dy)
    N, C, _, _ = dy.shape
    for t in prange(N * C):
        d = dy[t // C, t % C].reshape(-1)
        m = y[t // C, t % C].reshape(-1)
        o = out[t // C, t % C].reshape(-1)
        for p in range(d.shape[0]):
            o[p] = d[p] if m[p] > 0 else 0
    return out

