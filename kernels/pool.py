"""2-D max-pooling kernels over NCHW mini-batches (no padding, floor output size)."""

import numpy as np
from numba import prange

from ._jit import jit


@jit(inline="always")
def _pool_plane(x, y, argmax, n, c, pool_h, pool_w, stride_h, stride_w, nan_aware):
    """Max-pool one (n, c) plane; returns True if the fast pass met a NaN.

    Plain 4-D indexing throughout: slicing a view per window costs refcount updates,
    and a NaN test in every comparison stops the common (finite) case vectorising, so
    the fast pass only counts NaNs and the caller redoes the rare plane that has one.
    """
    W = x.shape[3]
    OH, OW = y.shape[2], y.shape[3]
    nans = 0
    if not nan_aware and pool_h == 2 and pool_w == 2 and stride_h == 2 and stride_w == 2:
        # The common 2x2/2 pool with the window unrolled, which vectorises; the loops do not.
        for i in range(OH):
            h0 = 2 * i
            for j in range(OW):
                w0 = 2 * j
                v0, v1 = x[n, c, h0, w0], x[n, c, h0, w0 + 1]
                v2, v3 = x[n, c, h0 + 1, w0], x[n, c, h0 + 1, w0 + 1]
                nans += (v0 != v0) + (v1 != v1) + (v2 != v2) + (v3 != v3)
                best, where = v0, h0 * W + w0
                if v1 > best:
                    best, where = v1, h0 * W + w0 + 1
                if v2 > best:
                    best, where = v2, (h0 + 1) * W + w0
                if v3 > best:
                    best, where = v3, (h0 + 1) * W + w0 + 1
                y[n, c, i, j] = best
                argmax[n, c, i, j] = where
        return nans > 0
    for i in range(OH):
        h0 = i * stride_h
        for j in range(OW):
            w0 = j * stride_w
            best = x[n, c, h0, w0]
            where = h0 * W + w0
            for a in range(pool_h):
                for b in range(pool_w):
                    v = x[n, c, h0 + a, w0 + b]
                    if nan_aware:
                        if v > best or (v != v and best == best):
                            best = v
                            where = (h0 + a) * W + w0 + b
                    else:
                        nans += v != v
                        if v > best:
                            best = v
                            where = (h0 + a) * W + w0 + b
            y[n, c, i, j] = best
            argmax[n, c, i, j] = where
    return nans > 0


@jit(parallel=True)
def maxpool2d_forward(x, pool_h, pool_w, stride_h, stride_w):
    """Max over each pool window.

    x: (N, C, H, W). Returns (y: (N, C, OH, OW), argmax: (N, C, OH, OW) int64),
    where argmax is the flat index h * W + w of the window's first maximum in its
    (H, W) plane; a NaN in a window wins, as in PyTorch.
    """
    N, C, H, W = x.shape
    OH = (H - pool_h) // stride_h + 1
    OW = (W - pool_w) // stride_w + 1
    y = np.empty((N, C, OH, OW), dtype=x.dtype)
    argmax = np.empty((N, C, OH, OW), dtype=np.int64)
    for p in prange(N * C):
        n = p // C
        c = p % C
        if _pool_plane(x, y, argmax, n, c, pool_h, pool_w, stride_h, stride_w, False):
            _pool_plane(x, y, argmax, n, c, pool_h, pool_w, stride_h, stride_w, True)
    return y, argmax


@jit(parallel=True)
def maxpool2d_backward(dy, argmax, in_h, in_w):
    """Route each output gradient to the input position that held the maximum.

    dy, argmax: (N, C, OH, OW). Returns dx: (N, C, in_h, in_w); overlapping
    windows that share a maximum add up their gradients.
    """
    N, C, OH, OW = dy.shape
    dx = np.empty((N, C, in_h * in_w), dtype=dy.dtype)
    for p in prange(N * C):
        n = p // C
        c = p % C
        # Each task zeroes its own plane: zeroing the batch on the calling thread first
        # left half of it in the wrong core's cache.
        plane = dx[n, c]
        for q in range(in_h * in_w):
            plane[q] = 0
        for i in range(OH):
            for j in range(OW):
                plane[argmax[n, c, i, j]] += dy[n, c, i, j]
    return dx.reshape((N, C, in_h, in_w))
