"""Serial kernels for ``fastcnn.compat``'s per-sample (batch of one) layers.

Flat functions over C-contiguous float64 arrays, no validation: ``fastcnn.compat``
checks shapes and dtypes before calling. They are serial on purpose: with one
sample there is nothing to split, and waking a thread pool per call costs more
than the work (and far more on a busy machine).
"""

import numpy as np

from ._jit import jit


@jit()
def maxpool_forward(x, pool):
    """Max over non-overlapping pool x pool windows (floor: ragged edges are dropped).

    x: (C, H, W). Returns y: (C, H // pool, W // pool); a NaN in a window gives NaN,
    as np.amax does.
    """
    C, H, W = x.shape
    OH = H // pool
    OW = W // pool
    y = np.empty((C, OH, OW), dtype=np.float64)
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
    return y


@jit()
def maxpool_backward_ties(x, dy, pool):
    """Max-pool input gradient where EVERY position equal to its window's max gets dy.

    x: (C, H, W); dy: (C, H // pool, W // pool); non-overlapping pool x pool windows.
    Returns dx: (C, H, W), zero outside the windows. A window holding a NaN has a
    NaN max, which equals nothing, so it passes no gradient (as np.amax does).
    """
    C, H, W = x.shape
    OH = H // pool
    OW = W // pool
    dx = np.zeros((C, H, W), dtype=np.float64)
    for c in range(C):
        xc = x[c]
        dxc = dx[c]
        dyc = dy[c]
        for i in range(OH):
            h0 = i * pool
            for j in range(OW):
                w0 = j * pool
                best = xc[h0, w0]
                has_nan = False
                for a in range(pool):
                    row = xc[h0 + a]
                    for b in range(pool):
                        v = row[w0 + b]
                        has_nan |= v != v
                        best = max(best, v)
                g = 0.0 if has_nan else dyc[i, j]
                for a in range(pool):
                    row = xc[h0 + a]
                    drow = dxc[h0 + a]
                    for b in range(pool):
                        # A select, not a multiply: an inf gradient times 0 would be NaN.
                        drow[w0 + b] = g if row[w0 + b] == best else 0.0
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
