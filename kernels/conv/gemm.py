"""Convolution as matrix products over im2col columns, for small output planes.

The flat stride-1 kernels (`flat`) vectorise along an output plane's rows; on a 4x4 or
8x8 plane those loops are a few vectors long and their overhead dominates. Here each
task copies a chunk of samples into columns (C * KH * KW, samples * OH * OW) and runs
the dense layer's register-blocked products (`dense._rows3`: three rows share each load,
five taps a pass) over them, whose vector loops run along all the chunk's pixels, or
along the filters for the weight gradient:

    forward         y[n, f, :]          = W (F, CKK) @ cols (CKK, M)
    input gradient  dcols (CKK, M)      = W.T (CKK, F) @ dy (F, M), scattered back to dx
    weight gradient dW.T (CKK, F)       = cols (CKK, M) @ dy.T (M, F), per GRAD_CHUNK

Any stride and padding; arrays C-contiguous and of one float dtype, checked by the
caller. Unlike the flat and dense kernels these are not tasks called by address
(`_tasks`): that compiles them once instead of five times, but ran them 5-10% slower
(measured side by side in one process, bench/README *Tasks called by address*), while
only the deeper networks compile them.

Each task owns its samples, and the weight gradient is summed per fixed chunk of
GRAD_CHUNK samples (float64 parts added in order by `sum_parts`), so no result depends on
the thread count.
"""

import numpy as np
from numba import prange

from .._jit import FASTMATH, jit
from .._tuning import FORWARD_CHUNK, GRAD_CHUNK
from ..dense import _rows3


@jit(inline="always")
def _im2col(cols, x, n0, nc, KH, KW, stride_h, stride_w, pad_top, pad_left, OH, OW):
    """cols[(c * KH + kh) * KW + kw, m * OH * OW + i * OW + j] = x[n0 + m, c,
    i * stride_h + kh - pad_top, j * stride_w + kw - pad_left], zero outside x."""
    _, C, H, W = x.shape
    P = OH * OW
    for c in range(C):
        for kh in range(KH):
            for kw in range(KW):
                row = cols[(c * KH + kh) * KW + kw]
                for m in range(nc):
                    plane = x[n0 + m, c]
                    for i in range(OH):
                        hi = i * stride_h + kh - pad_top
                        base = m * P + i * OW
                        if hi < 0 or hi >= H:
                            for j in range(OW):
                                row[base + j] = 0
                            continue
                        src = plane[hi]
                        for j in range(OW):
                            wj = j * stride_w + kw - pad_left
                            row[base + j] = src[wj] if 0 <= wj < W else 0


@jit(inline="always")
def _col2im_add(dx, acc, k0, rows, n0, nc, C, KH, KW, stride_h, stride_w, pad_top, pad_left,
                OH, OW):
    """dx[n0 + m] += the column rows k0 ... k0 + rows - 1 held in acc: _im2col's adjoint."""
    _, _, H, W = dx.shape
    P = OH * OW
    for r in range(rows):
        k = k0 + r
        c, rest = divmod(k, KH * KW)
        kh, kw = divmod(rest, KW)
        src = acc[r]
        for m in range(nc):
            plane = dx[n0 + m, c]
            for i in range(OH):
                hi = i * stride_h + kh - pad_top
                if hi < 0 or hi >= H:
                    continue
                dst = plane[hi]
                base = m * P + i * OW
                for j in range(OW):
                    wj = j * stride_w + kw - pad_left
                    if 0 <= wj < W:
                        dst[wj] += src[base + j]


@jit(parallel=True, fastmath=FASTMATH)
def conv2d_forward_gemm(x, wmat, bias, KH, KW, stride_h, stride_w, pad_top, pad_left, out_h,
                        out_w, relu):
    """y = conv(x, weight) + bias, optionally followed by ReLU.

    x: (N, C, H, W); wmat: (F, C * KH * KW), the weight reshaped; bias: (F,).
    Returns y: (N, F, out_h, out_w).
    """
    N, C, _, _ = x.shape
    F, CKK = wmat.shape
    P = out_h * out_w
    y = np.empty((N, F, out_h, out_w), dtype=x.dtype)
    flat_y = y.reshape(N, F, P)
    for t in prange((N + FORWARD_CHUNK - 1) // FORWARD_CHUNK):
        n0 = t * FORWARD_CHUNK
        nc = min(FORWARD_CHUNK, N - n0)
        cols = np.empty((CKK, nc * P), dtype=x.dtype)
        _im2col(cols, x, n0, nc, KH, KW, stride_h, stride_w, pad_top, pad_left, out_h, out_w)
        acc = np.empty((3, nc * P), dtype=x.dtype)
        for f0 in range(0, F, 3):
            _rows3(acc, wmat, f0, cols)
            for r in range(min(3, F - f0)):
                b = bias[f0 + r]
                for m in range(nc):
                    dst = flat_y[n0 + m, f0 + r]
                    src = acc[r, m * P:(m + 1) * P]
                    for p in range(P):
                        v = src[p] + b
                        if relu and v < 0:
                            v = 0
                        dst[p] = v
    return y


@jit(parallel=True, fastmath=FASTMATH)
def conv2d_backward_gemm(x, wt, dy, mask, relu, KH, KW, stride_h, stride_w, pad_top, pad_left,
                         need_weight_grad, need_input_grad):
    """The input gradient and the per-chunk weight and bias gradients of a convolution.

    x: (N, C, H, W), only its shape read without need_weight_grad; wt: (C * KH * KW, F),
    the weight reshaped and transposed, read only with need_input_grad; dy, mask:
    (N, F, OH, OW), the output's gradient, unpooled, and with relu the fused conv + ReLU
    output (dy counts only where mask > 0).
    Returns (dx: (N, C, H, W), or (0, C, H, W) without need_input_grad;
    dw_parts: (chunks, F, C, KH, KW), zero without need_weight_grad; db_parts:
    (chunks, F)), the parts in float64, one per GRAD_CHUNK samples.
    """
    N, C, H, W = x.shape
    _, F, OH, OW = dy.shape
    CKK = C * KH * KW
    P = OH * OW
    Fp = (F + 15) // 16 * 16  # zero columns: the weight gradient's rows vectorise whole
    chunks = (N + GRAD_CHUNK - 1) // GRAD_CHUNK
    dx = np.zeros((N if need_input_grad else 0, C, H, W), dtype=x.dtype)
    flat_dy = dy.reshape(N, F, P)
    flat_mask = mask.reshape(N, F, P) if relu else flat_dy
    dw_parts = np.zeros((chunks, F, CKK))
    db_parts = np.zeros((chunks, F))
    for t in prange(chunks):
        n0 = t * GRAD_CHUNK
        nc = min(GRAD_CHUNK, N - n0)
        M = nc * P
        g = np.empty((F, M), dtype=x.dtype)
        gt = np.zeros((M, Fp), dtype=x.dtype)
        for m in range(nc):
            for f in range(F):
                src = flat_dy[n0 + m, f]
                on = flat_mask[n0 + m, f]
                s = 0.0
                for p in range(P):
                    v = src[p] if not relu or on[p] > 0 else 0
                    g[f, m * P + p] = v
                    gt[m * P + p, f] = v
                    s += v
                db_parts[t, f] += s
        if need_weight_grad:
            cols = np.empty((CKK, M), dtype=x.dtype)
            _im2col(cols, x, n0, nc, KH, KW, stride_h, stride_w, pad_top, pad_left, OH, OW)
            acc = np.empty((3, Fp), dtype=x.dtype)
            for k0 in range(0, CKK, 3):
                _rows3(acc, cols, k0, gt)
                for r in range(min(3, CKK - k0)):
                    for f in range(F):
                        dw_parts[t, f, k0 + r] = acc[r, f]
        if need_input_grad:
            dacc = np.empty((3, M), dtype=x.dtype)
            for k0 in range(0, CKK, 3):
                _rows3(dacc, wt, k0, g)
                _col2im_add(dx, dacc, k0, min(3, CKK - k0), n0, nc, C, KH, KW, stride_h,
                            stride_w, pad_top, pad_left, OH, OW)
    return dx, dw_parts.reshape(chunks, F, C, KH, KW), db_parts
