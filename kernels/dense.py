"""Fully connected kernels: y = x @ weight + bias over a mini-batch, and its gradients.

x: (N, K); weight: (K, U), as in Keras; all C-contiguous and of one float dtype. The
Python layer (`fastcnn.functional`) checks shapes and dtypes before calling.

fastcnn pins BLAS to one thread so that it does not fight Numba's workers for the
cores; these kernels give the products to those workers instead. Every output belongs
to one task and is summed in a fixed order, so no result depends on the thread count.
Long rows carry the vector loops: the forward pass takes dot products along K; the
input gradient sweeps rows of weight transposed (length K), and the weight gradient rows
of dy (padded to a multiple of 16) with the samples as taps. Below DENSE_SMALL_BATCH
samples both passes read the weight in place instead of transposing it.
"""

import numpy as np

from ._jit import FASTMATH, jit
from ._tasks import run_tasks
from ._tuning import DENSE_SMALL_BATCH, DENSE_TILE


@jit(inline="always")
def _transpose_into(out, a, t):
    """Rows t * DENSE_TILE ... of a (R, S) into columns of out (S, R)."""
    R, S = a.shape
    for r in range(t * DENSE_TILE, min(R, (t + 1) * DENSE_TILE)):
        for s in range(S):
            out[s, r] = a[r, s]


@jit(inline="always", fastmath=FASTMATH)
def _dots4x3(a0, a1, a2, a3, b0, b1, b2, K, zero):
    """The 12 dot products a_i . b_j over K: four rows share each load of b, three
    columns each load of a, and the 12 sums stay in vector registers."""
    s00 = s01 = s02 = s10 = s11 = s12 = zero
    s20 = s21 = s22 = s30 = s31 = s32 = zero
    for k in range(K):
        p0, p1, p2, p3 = a0[k], a1[k], a2[k], a3[k]
        q0, q1, q2 = b0[k], b1[k], b2[k]
        s00 += p0 * q0
        s01 += p0 * q1
        s02 += p0 * q2
        s10 += p1 * q0
        s11 += p1 * q1
        s12 += p1 * q2
        s20 += p2 * q0
        s21 += p2 * q1
        s22 += p2 * q2
        s30 += p3 * q0
        s31 += p3 * q1
        s32 += p3 * q2
    return (s00, s01, s02), (s10, s11, s12), (s20, s21, s22), (s30, s31, s32)


@jit(inline="always", fastmath=FASTMATH)
def _rows3(acc, a, i0, B):
    """acc[r, p] = sum_t a[i_r, t] * B[t, p] for the rows i_r = i0, i0 + 1, i0 + 2 of a
    (clamped to its last row); five taps per pass, three rows sharing each load of B.

    acc: (3, P); a: (M, T); B: (T, P).
    """
    M, T = a.shape
    P = B.shape[1]
    c0, c1, c2 = acc[0], acc[1], acc[2]
    r0, r1, r2 = min(i0, M - 1), min(i0 + 1, M - 1), min(i0 + 2, M - 1)
    for p in range(P):
        c0[p] = 0
        c1[p] = 0
        c2[p] = 0
    t = 0
    while t + 5 <= T:
        u0, u1, u2, u3, u4 = a[r0, t], a[r0, t + 1], a[r0, t + 2], a[r0, t + 3], a[r0, t + 4]
        v0, v1, v2, v3, v4 = a[r1, t], a[r1, t + 1], a[r1, t + 2], a[r1, t + 3], a[r1, t + 4]
        z0, z1, z2, z3, z4 = a[r2, t], a[r2, t + 1], a[r2, t + 2], a[r2, t + 3], a[r2, t + 4]
        s0, s1, s2, s3, s4 = B[t], B[t + 1], B[t + 2], B[t + 3], B[t + 4]
        for p in range(P):
            x0, x1, x2, x3, x4 = s0[p], s1[p], s2[p], s3[p], s4[p]
            c0[p] += u0 * x0 + u1 * x1 + u2 * x2 + u3 * x3 + u4 * x4
            c1[p] += v0 * x0 + v1 * x1 + v2 * x2 + v3 * x3 + v4 * x4
            c2[p] += z0 * x0 + z1 * x1 + z2 * x2 + z3 * x3 + z4 * x4
        t += 5
    while t < T:
        u0, v0, z0 = a[r0, t], a[r1, t], a[r2, t]
        s0 = B[t]
        for p in range(P):
            x0 = s0[p]
            c0[p] += u0 * x0
            c1[p] += v0 * x0
            c2[p] += z0 * x0
        t += 1


@jit(fastmath=FASTMATH)
def _forward_rows_task(x, weight, bias, relu, y, t):
    """Rows 3t ... 3t + 2 of y = x @ weight + bias (ReLU'd if relu): rows of weight as
    taps, reading the weight once with no transpose (few samples)."""
    N = x.shape[0]
    U = weight.shape[1]
    acc = np.empty((3, U), dtype=x.dtype)
    _rows3(acc, x, 3 * t, weight)
    for r in range(min(3, N - 3 * t)):
        for u in range(U):
            v = acc[r, u] + bias[u]
            if relu and v < 0:
                v = 0
            y[3 * t + r, u] = v


@jit()
def _transpose_task(a, out, t):
    """Rows t * DENSE_TILE ... of a (R, S) into columns of out (S, R)."""
    _transpose_into(out, a, t)


@jit(fastmath=FASTMATH)
def _forward_dots_task(x, wt, bias, relu, zero, y, t):
    """Block t of y = x @ wt.T + bias (ReLU'd if relu): 4 rows x 3 units, as dot
    products along K; zero: 0 in the data dtype, whose sums vectorise."""
    N, K = x.shape
    U = wt.shape[0]
    ub = (U + 2) // 3
    n0 = (t // ub) * 4
    u0 = (t % ub) * 3
    # A block past the last row (unit) repeats it; only in-range sums are stored.
    sums = _dots4x3(x[min(n0, N - 1)], x[min(n0 + 1, N - 1)], x[min(n0 + 2, N - 1)],
                    x[min(n0 + 3, N - 1)], wt[min(u0, U - 1)], wt[min(u0 + 1, U - 1)],
                    wt[min(u0 + 2, U - 1)], K, zero)
    for i in range(min(4, N - n0)):
        for j in range(min(3, U - u0)):
            v = sums[i][j] + bias[u0 + j]
            if relu and v < 0:
                v = 0
            y[n0 + i, u0 + j] = v


def _transposed(a):
    """a.T, contiguous, transposed by Numba's threads in tiles of DENSE_TILE rows."""
    out = np.empty((a.shape[1], a.shape[0]), dtype=a.dtype)
    run_tasks(_transpose_task, -(-a.shape[0] // DENSE_TILE), a, out)
    return out


@jit()
def _masked_gradient(dy, mask, relu):
    """(g, db): dy through the ReLU, with zero columns up to a multiple of 16 (rows of
    the weight gradient then vectorise with no scalar remainder; the padding is never
    stored), and its column sums in float64."""
    N, U = dy.shape
    Up = (U + 15) // 16 * 16
    g = np.zeros((N, Up), dtype=dy.dtype)
    db = np.zeros(U)
    for n in range(N):
        for u in range(U):
            v = dy[n, u] if not relu or mask[n, u] > 0 else 0
            g[n, u] = v
            db[u] += v
    return g, db


@jit(fastmath=FASTMATH)
def _weight_grad_task(x, g, dw, t):
    """Rows 3t ... 3t + 2 of dw = x.T @ g, samples as taps. x.T is a view (read with
    x's strides), so no transposed copy of x is made."""
    K, U = dw.shape
    acc = np.empty((3, g.shape[1]), dtype=g.dtype)
    _rows3(acc, x.T, 3 * t, g)
    for r in range(min(3, K - 3 * t)):
        for u in range(U):
            dw[3 * t + r, u] = acc[r, u]


@jit(fastmath=FASTMATH)
def _input_grad_dots_task(weight, g, zero, dx, t):
    """Block t of dx = g @ weight.T, 4 inputs x 3 samples, as dot products along the
    rows of weight, which reads the weight once (few samples); zero: 0 in g's dtype."""
    N, K = dx.shape
    U = weight.shape[1]
    nb = (N + 2) // 3
    k0 = (t // nb) * 4
    n0 = (t % nb) * 3
    sums = _dots4x3(weight[min(k0, K - 1)], weight[min(k0 + 1, K - 1)],
                    weight[min(k0 + 2, K - 1)], weight[min(k0 + 3, K - 1)],
                    g[min(n0, N - 1)], g[min(n0 + 1, N - 1)], g[min(n0 + 2, N - 1)], U, zero)
    for i in range(min(4, K - k0)):
        for j in range(min(3, N - n0)):
            dx[n0 + j, k0 + i] = sums[i][j]


@jit(fastmath=FASTMATH)
def _input_grad_rows_task(g, wt, dx, t):
    """Rows 3t ... 3t + 2 of dx = g[:, :U] @ wt: rows of wt (length K) as taps, which
    vectorise better than dot products of length U (many samples)."""
    N = dx.shape[0]
    U = wt.shape[0]
    acc = np.empty((3, dx.shape[1]), dtype=g.dtype)
    _rows3(acc, g[:, :U], 3 * t, wt)
    for r in range(min(3, N - 3 * t)):
        for k in range(dx.shape[1]):  # a loop: slice assignment compiles its error message
            dx[3 * t + r, k] = acc[r, k]


def dense_forward(x, weight, bias, relu):
    """y = x @ weight + bias, optionally followed by ReLU.

    x: (N, K); weight: (K, U); bias: (U,); all one float dtype. Returns y: (N, U).
    """
    N, U = x.shape[0], weight.shape[1]
    y = np.empty((N, U), dtype=x.dtype)
    if N < DENSE_SMALL_BATCH:
        run_tasks(_forward_rows_task, -(-N // 3), x, weight, bias, relu, y)
    else:
        run_tasks(_forward_dots_task, -(-N // 4) * -(-U // 3), x, _transposed(weight), bias,
                  relu, x.dtype.type(0), y)
    return y


def dense_backward(x, weight, dy, y, relu, need_input_grad):
    """All gradients of a dense layer.

    x: (N, K); weight: (K, U); dy, y: (N, U). With relu, y is the fused dense + ReLU
    output and dy is first zeroed where y <= 0. Returns (dx: (N, K) or None when not
    need_input_grad, dw: (K, U), db: (U,)).
    """
    (N, K), U = x.shape, weight.shape[1]
    g, db = _masked_gradient(dy, y, relu)
    dw = np.empty((K, U), dtype=dy.dtype)
    run_tasks(_weight_grad_task, -(-K // 3), x, g, dw)
    dx = None
    if need_input_grad:
        dx = np.empty((N, K), dtype=dy.dtype)
        if N < DENSE_SMALL_BATCH:
            run_tasks(_input_grad_dots_task, -(-K // 4) * -(-N // 3), weight, g, g.dtype.type(0),
                      dx)
        else:
            run_tasks(_input_grad_rows_task, -(-N // 3), g, _transposed(weight), dx)
    return dx, dw, db.astype(dy.dtype)
