"""Average-pooling kernels over NCHW mini-batches: windows without padding (floor output
size, as maxpool2d), and the global average over each plane.

Sums are taken in float64 and rounded once to the data dtype. Each task owns whole
planes, so no result depends on the thread count.
"""

import numpy as np
from numba import prange

from ._jit import jit


@jit(parallel=True)
def avgpool2d_forward(x, pool_h, pool_w, stride_h, stride_w):
    """x: (N, C, H, W). Returns y: (N, C, OH, OW), the mean of each pool_h x pool_w
    window, windows stride_h, stride_w apart; OH = (H - pool_h) // stride_h + 1."""
    N, C, H, W = x.shape
    OH = (H - pool_h) // stride_h + 1
    OW = (W - pool_w) // stride_w + 1
    y = np.empty((N, C, OH, OW), dtype=x.dtype)
    scale = 1.0 / (pool_h * pool_w)
    for t in prange(N * C):
        n, c = t // C, t % C
        for i in range(OH):
            for j in range(OW):
                s = 0.0
                for a in range(pool_h):
                    row = x[n, c, i * stride_h + a]
                    for b in range(pool_w):
                        s += row[j * stride_w + b]
                y[n, c, i, j] = s * scale
    return y


@jit(parallel=True)
def avgpool2d_backward(dy, pool_h, pool_w, stride_h, stride_w, in_h, in_w):
    """dy: (N, C, OH, OW), with OH, OW those of avgpool2d_forward on an (in_h, in_w)
    input. Returns dx: (N, C, in_h, in_w); overlapping windows add up."""
    N, C, OH, OW = dy.shape
    dx = np.empty((N, C, in_h, in_w), dtype=dy.dtype)
    scale = 1.0 / (pool_h * pool_w)
    for t in prange(N * C):
        n, c = t // C, t % C
        plane = np.zeros((in_h, in_w))  # float64, rounded once at the end
        for i in range(OH):
            for j in range(OW):
                g = dy[n, c, i, j] * scale
                for a in range(pool_h):
                    for b in range(pool_w):
                        plane[i * stride_h + a, j * stride_w + b] += g
        for h in range(in_h):
            for w in range(in_w):
                dx[n, c, h, w] = plane[h, w]
    return dx


@jit(parallel=True)
def global_avgpool2d_forward(x):
    """x: (N, C, H, W). Returns y: (N, C), the mean of each plane."""
    N, C, H, W = x.shape
    y = np.empty((N, C), dtype=x.dtype)
    scale = 1.0 / (H * W)
    for t in prange(N * C):
        n, c = t // C, t % C
        s = 0.0
        for h in range(H):
            for w in range(W):
                s += x[n, c, h, w]
        y[n, c] = s * scale
    return y


@jit(parallel=True)
def global_avgpool2d_backward(dy, in_h, in_w):
    """dy: (N, C). Returns dx: (N, C, in_h, in_w), each plane dy / (in_h * in_w)."""
    N, C = dy.shape
    dx = np.empty((N, C, in_h, in_w), dtype=dy.dtype)
    scale = 1.0 / (in_h * in_w)
    for t in prange(N * C):
        n, c = t // C, t % C
        g = dy[n, c] * scale
        for h in range(in_h):
            for w in range(in_w):
                dx[n, c, h, w] = g
    return dx
