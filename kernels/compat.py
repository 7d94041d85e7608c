"""Kernels for ``fastcnn.compat``'s per-sample layers, and their batched twins for predict.

Flat functions over C-contiguous float64 arrays, no validation: ``fastcnn.compat``
checks shapes and dtypes before calling. The per-sample kernels are serial on
purpose: with one sample there is nothing to split, and waking a thread pool per
call costs more than the work (and far more on a busy machine).

A batched kernel runs the same inlined per-sample code on each sample, without
fastmath, so every sample's result has the same bits as the per-sample kernel's:
predictions over a data set equal the per-image ones.
"""

import numpy as np
from numba import prange

from ._jit import jit
from ._tuning import COMPAT_ROWS as _ROWS

# exp overflows float64 above ~709.78: below this no shift is needed, and none is made.
EXP_SAFE = 700.0


@jit(inline="always")
def _pool_sample(x, y, pool):
    """y[c, i, j] = max of x's (i, j) pool x pool window; x: (C, H, W), y: (C, OH, OW)."""
    C, OH, OW = y.shape
    for c in range(C):
        for i in range(OH):
            for j in range(OW):
                h0 = i * pool
                w0 = j * pool
                best = x[c, h0, w0]
                for a in range(pool):
                    for b in range(pool):
                        v = x[c, h0 + a, w0 + b]
                        # Once best is NaN nothing compares greater, so NaN sticks.
                        if v > best or v != v:
                            best = v
                y[c, i, j] = best


@jit()
def maxpool_forward(x, pool):
    """Max over non-overlapping pool x pool windows (floor: ragged edges are dropped).

    x: (C, H, W). Returns y: (C, H // pool, W // pool); a NaN in a window gives NaN,
    as np.amax does.
    """
    C, H, W = x.shape
    y = np.empty((C, H // pool, W // pool), dtype=np.float64)
    _pool_sample(x, y, pool)
    return y


@jit(parallel=True)
def maxpool_forward_batch(x, pool):
    """maxpool_forward of every sample: x: (N, C, H, W) -> (N, C, H // pool, W // pool)."""
    N, C, H, W = x.shape
    y = np.empty((N, C, H // pool, W // pool), dtype=np.float64)
    for n in prange(N):
        _pool_sample(x[n], y[n], pool)
    return y


@jit(fastmath={"reassoc"})
def dense_backward_sgd(w, x, g, lr):
    """dL/dx = w @ g with the weights from before the update, and the SGD step
    w -= lr * outer(x, g) in place, in one pass over w (it is read from memory once).

    w: (I, O); x: (I,); g: (O,). Returns dx: (I,). reassoc lets each row's dot product
    use vector partial sums; the update's bits may then differ from NumPy's by an ulp.
    """
    I, O = w.shape
    dx = np.empty(I, dtype=np.float64)
    for i in range(I):
        row = w[i]
        s = 0.0
        for j in range(O):
            s += row[j] * g[j]
        dx[i] = s
        xi = x[i]
        for j in range(O):
            row[j] -= lr * (xi * g[j])
    return dx


@jit(inline="always")
def _dense_rows(x, w, y, n0, n1):
    """y[n] = x[n] @ w for n0 <= n < n1, summed over k in order for each output.

    x: (N, K); w: (K, U); y: (N, U). No fastmath: the bits of a row do not depend on
    how many rows share the pass.
    """
    K, U = w.shape
    for n in range(n0, n1):
        yn = y[n]
        for u in range(U):
            yn[u] = 0.0
    for k in range(K):
        wk = w[k]
        for n in range(n0, n1):
            xv = x[n, k]
            yn = y[n]
            for u in range(U):
                yn[u] += xv * wk[u]


@jit()
def dense_forward(x, w):
    """x @ w for one sample: x: (K,); w: (K, U). Returns (U,)."""
    y = np.empty((1, w.shape[1]), dtype=np.float64)
    _dense_rows(x.reshape((1, x.shape[0])), w, y, 0, 1)
    return y[0]


@jit(parallel=True)
def dense_forward_batch(x, w):
    """dense_forward of every row: x: (N, K); w: (K, U). Returns (N, U)."""
    N = x.shape[0]
    y = np.empty((N, w.shape[1]), dtype=np.float64)
    for t in prange((N + _ROWS - 1) // _ROWS):
        _dense_rows(x, w, y, t * _ROWS, min(N, (t + 1) * _ROWS))
    return y


@jit()
def maxpool_backward_ties(x, dy, pool):
    """Max-pool input gradient where EVERY position equal to its window's max gets dy.

    x: (C, H, W); dy: (C, H // pool, W // pool); non-overlapping pool x pool windows.
    Returns dx: (C, H, W), zero outside the windows. A window holding a NaN has a
    NaN max, which equals nothing, so it passes no gradient (as np.amax does).
    Plain element indexing: row views in this short loop cost more than the work.
    """
    C, H, W = x.shape
    dx = np.zeros((C, H, W), dtype=np.float64)
    for c in range(C):
        for i in range(H // pool):
            h0 = i * pool
            for j in range(W // pool):
                w0 = j * pool
                best = x[c, h0, w0]
                has_nan = False
                for a in range(pool):
                    for b in range(pool):
                        v = x[c, h0 + a, w0 + b]
                        has_nan |= v != v
                        best = max(best, v)
                g = 0.0 if has_nan else dy[c, i, j]
                for a in range(pool):
                    for b in range(pool):
                        # A select, not a multiply: an inf gradient times 0 would be NaN.
                        if x[c, h0 + a, w0 + b] == best:
                            dx[c, h0 + a, w0 + b] = g
    return dx


@jit()
def dense_sgd_update(w, x, g, lr):
    """SGD step w -= lr * outer(x, g), in place; returns nothing.

    w: (I, O); x: (I,); g: (O,). In place and fused so that a 1176x100 layer does
    not allocate three temporaries per sample; the rounding order is that of
    ``w -= lr * (x[:, None] @ g[None])``.
    """
    I, O = w.shape
    for i in range(I):
        xi = x[i]
        row = w[i]
        for j in range(O):
            row[j] -= lr * (xi * g[j])


@jit(inline="always")
def _softmax_rows(totals, probs):
    """probs[n] = exp(totals[n]) / its sum; totals, probs: (N, U).

    Shifted by the row's largest total only where exp would overflow (total >= 700),
    so that huge logits give probabilities instead of NaN; otherwise unshifted, as
    the notebook computes them.
    """
    N, U = totals.shape
    for n in range(N):
        t = totals[n]
        top = t[0]
        for u in range(1, U):
            top = max(top, t[u])
        shift = top if top >= EXP_SAFE else 0.0
        s = 0.0
        for u in range(U):
            e = np.exp(t[u] - shift)
            probs[n, u] = e
            s += e
        for u in range(U):
            probs[n, u] /= s


@jit(inline="always")
def _affine_softmax(x, w, b, totals, probs, n0, n1):
    """totals = x @ w + b and probs = softmax(totals), for rows n0 <= n < n1."""
    _dense_rows(x, w, totals, n0, n1)
    U = w.shape[1]
    for n in range(n0, n1):
        for u in range(U):
            totals[n, u] += b[u]
    _softmax_rows(totals[n0:n1], probs[n0:n1])


@jit()
def softmax_forward(x, w, b):
    """The output layer for one sample: x: (K,); w: (K, U); b: (U,).

    Returns (totals: (U,) = x @ w + b, probs: (U,) = softmax(totals)).
    """
    U = w.shape[1]
    totals = np.empty((1, U), dtype=np.float64)
    probs = np.empty((1, U), dtype=np.float64)
    _affine_softmax(x.reshape((1, x.shape[0])), w, b, totals, probs, 0, 1)
    return totals[0], probs[0]


@jit(parallel=True)
def softmax_forward_batch(x, w, b):
    """softmax_forward of every row: x: (N, K). Returns (totals, probs), both (N, U)."""
    N, U = x.shape[0], w.shape[1]
    totals = np.empty((N, U), dtype=np.float64)
    probs = np.empty((N, U), dtype=np.float64)
    for t in prange((N + _ROWS - 1) // _ROWS):
        _affine_softmax(x, w, b, totals, probs, t * _ROWS, min(N, (t + 1) * _ROWS))
    return totals, probs


@jit()
def softmax_backward(totals, w, d):
    """The output layer's gradients from the first non-zero entry i of d alone.

    totals: (U,), the forward pass's; w: (K, U); d: (U,), dL/dprobs. Returns
    (dL/dtotals: (U,), dL/dinput: (K,) = w @ dL/dtotals), or arrays of size 0 when d is
    all zero. dprobs_i/dtotals is written out as the notebook does: with t = exp(totals)
    and S its sum, -t_i * t / S^2, and t_i * (S - t_i) / S^2 at i.
    """
    U = totals.shape[0]
    K = w.shape[0]
    i = 0
    while i < U and d[i] == 0:
        i += 1
    if i == U:
        return np.empty(0, dtype=np.float64), np.empty(0, dtype=np.float64)
    top = totals.max()
    shift = top if top >= EXP_SAFE else 0.0
    t = np.empty(U, dtype=np.float64)
    S = 0.0
    for u in range(U):
        t[u] = np.exp(totals[u] - shift)
        S += t[u]
    S2 = S * S
    ti = t[i]
    dt = np.empty(U, dtype=np.float64)
    for u in range(U):
        dt[u] = d[i] * (-ti * t[u] / S2)
    dt[i] = d[i] * (ti * (S - ti) / S2)
    dx = np.empty(K, dtype=np.float64)
    for k in range(K):
        s = 0.0
        for u in range(U):
            s += w[k, u] * dt[u]
        dx[k] = s
    return dt, dx
