"""Batch normalisation over (N, C, L) mini-batches: L = H * W for BatchNorm2D, 1 for
BatchNorm1D, statistics per channel over N * L values. An optional ReLU is fused into
the output (forward) and its mask into the gradient (backward).

Each channel is one task and its sums run in a fixed order in float64, so no result
depends on the thread count. The variance is the biased one (divided by N * L), two
passes over the data for accuracy; the running statistics are updated in Python.
"""

import math

import numpy as np
from numba import prange

from ._jit import jit


@jit(parallel=True)
def batchnorm_forward(x, gamma, beta, eps, relu):
    """Training: normalise with the batch's statistics.

    x: (N, C, L); gamma, beta: (C,). Returns (y, mean, var, invstd): y (N, C, L) in x's
    dtype, gamma * (x - mean) * invstd + beta (then max(., 0) if relu); mean, var (biased)
    and invstd = 1 / sqrt(var + eps), each (C,) float64."""
    N, C, L = x.shape
    y = np.empty_like(x)
    mean = np.empty(C)
    var = np.empty(C)
    invstd = np.empty(C)
    count = N * L
    for c in prange(C):
        s = 0.0
        for n in range(N):
            for p in range(L):
                s += x[n, c, p]
        mu = s / count
        q = 0.0
        for n in range(N):
            for p in range(L):
                d = x[n, c, p] - mu
                q += d * d
        v = q / count
        inv = 1.0 / math.sqrt(v + eps)
        scale = gamma[c] * inv
        shift = beta[c] - mu * scale
        for n in range(N):
            for p in range(L):
                t = x[n, c, p] * scale + shift
                if relu and t < 0:
                    t = 0.0
                y[n, c, p] = t
        mean[c] = mu
        var[c] = v
        invstd[c] = inv
    return y, mean, var, invstd


@jit(parallel=True)
def batchnorm_inference(x, scale, shift, relu):
    """Evaluation: y = x * scale + shift per channel (then max(., 0) if relu), with
    scale = gamma / sqrt(running_var + eps) and shift = beta - running_mean * scale
    worked out by the caller. x: (N, C, L); scale, shift: (C,) float64."""
    N, C, L = x.shape
    y = np.empty_like(x)
    for t in prange(N * C):
        n, c = t // C, t % C
        a, b = scale[c], shift[c]
        for p in range(L):
            v = x[n, c, p] * a + b
            if relu and v < 0:
                v = 0.0
            y[n, c, p] = v
    return y


@jit(parallel=True)
def batchnorm_backward(dy, x, y, mean, invstd, gamma, relu, need_input_grad):
    """Gradients of `batchnorm_forward`. dy, x, y: (N, C, L), y its output (read only if
    relu: where y is not > 0 the gradient is zero); mean, invstd: (C,) float64 from it;
    gamma: (C,). Returns (dx, dgamma, dbeta): dx (N, C, L) in dy's dtype (empty when
    not need_input_grad), dgamma and dbeta (C,) float64."""
    N, C, L = x.shape
    dx = np.empty((N, C, L) if need_input_grad else (0, C, L), dtype=dy.dtype)
    dgamma = np.empty(C)
    dbeta = np.empty(C)
    count = N * L
    for c in prange(C):
        mu, inv = mean[c], invstd[c]
        sb = 0.0
        sg = 0.0
        for n in range(N):
            for p in range(L):
                g = np.float64(dy[n, c, p])
                if relu and not y[n, c, p] > 0:
                    g = 0.0
                sb += g
                sg += g * ((x[n, c, p] - mu) * inv)
        dgamma[c] = sg
        dbeta[c] = sb
        if need_input_grad:
            k = gamma[c] * inv / count
            for n in range(N):
                for p in range(L):
                    g = np.float64(dy[n, c, p])
                    if relu and not y[n, c, p] > 0:
                        g = 0.0
                    xhat = (x[n, c, p] - mu) * inv
                    dx[n, c, p] = k * (count * g - sb - xhat * sg)
    return dx, dgamma, dbeta
