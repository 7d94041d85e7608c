"""2-D convolution kernels over NCHW mini-batches (cross-correlation, as in PyTorch).

Geometry is explicit: the caller passes strides, the top/left zero padding and
the output size, so 'same', 'valid', symmetric and asymmetric padding all reduce
to one kernel. Padding beyond the input on the bottom/right is implied by the
output size. Inputs must be C-contiguous and of one float dtype; the Python layer
(`fastcnn.functional`) checks that before calling.

Each parallel loop runs over samples or over fixed-size chunks of samples, so a
result never depends on the number of threads.
"""

import numpy as np
from numba import prange, uint64

from ._jit import jit

# Samples per partial sum in the weight gradient: fixed, so that the reduction
# order (and so every bit of the result) is the same for any thread count.
GRAD_CHUNK = 8

_FASTMATH = {"reassoc", "contract"}


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


@jit(parallel=True, fastmath=_FASTMATH)
def _conv2d_forward_strided(x, weight, bias, stride_h, stride_w, pad_top, pad_left, out_h, out_w,
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


@jit(parallel=True, fastmath=_FASTMATH)
def _conv2d_backward_input_strided(dy, weight, in_h, in_w, stride_h, stride_w, pad_top, pad_left):
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


@jit(parallel=True, fastmath=_FASTMATH)
def _conv2d_weight_partials(x, dy, KH, KW, stride_h, stride_w, pad_top, pad_left):
    """Any stride: per-chunk partial sums of the weight and bias gradients.

    Returns (dw_parts: (chunks, F, C, KH, KW), db_parts: (chunks, F)).
    """
    N, C, H, W = x.shape
    _, F, OH, OW = dy.shape
    Hp = _padded_extent(H, pad_top, OH, stride_h, KH)
    Wp = _padded_extent(W, pad_left, OW, stride_w, KW)
    span = (OW - 1) * stride_w + 1
    chunks = (N + GRAD_CHUNK - 1) // GRAD_CHUNK
    dw_parts = np.zeros((chunks, F, C, KH, KW), dtype=x.dtype)
    db_parts = np.zeros((chunks, F), dtype=x.dtype)
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


# --- stride 1: flat rows -------------------------------------------------------------------
# With stride 1, each (padded) image plane is stored flat with row pitch Wp. An output
# position p = i * Wp + j then reads input p + ki * Wp + kj, so one kernel row is a
# shifted copy of one long contiguous loop over the whole plane: long vectorised loops
# instead of 28-wide ones. The Wp - out_w columns past each row's end are computed
# and thrown away (or are zero, for gradients), which costs ~14% on SEED-ARCH.


@jit(inline="always", fastmath=_FASTMATH)
def _add_taps(acc, src, w, L):
    """acc[p] += sum_t w[t] * src[p + t] for p < L, up to five taps per pass over acc."""
    T = w.shape[0]
    t = 0
    while t < T:
        r = T - t
        if r >= 5:
            w0, w1, w2, w3, w4 = w[t], w[t + 1], w[t + 2], w[t + 3], w[t + 4]
            s0, s1, s2 = src[t:t + L], src[t + 1:t + 1 + L], src[t + 2:t + 2 + L]
            s3, s4 = src[t + 3:t + 3 + L], src[t + 4:t + 4 + L]
            for p in range(L):
                acc[p] += w0 * s0[p] + w1 * s1[p] + w2 * s2[p] + w3 * s3[p] + w4 * s4[p]
            t += 5
        elif r == 4:
            w0, w1, w2, w3 = w[t], w[t + 1], w[t + 2], w[t + 3]
            s0, s1 = src[t:t + L], src[t + 1:t + 1 + L]
            s2, s3 = src[t + 2:t + 2 + L], src[t + 3:t + 3 + L]
            for p in range(L):
                acc[p] += w0 * s0[p] + w1 * s1[p] + w2 * s2[p] + w3 * s3[p]
            t += 4
        elif r == 3:
            w0, w1, w2 = w[t], w[t + 1], w[t + 2]
            s0, s1, s2 = src[t:t + L], src[t + 1:t + 1 + L], src[t + 2:t + 2 + L]
            for p in range(L):
                acc[p] += w0 * s0[p] + w1 * s1[p] + w2 * s2[p]
            t += 3
        elif r == 2:
            w0, w1 = w[t], w[t + 1]
            s0, s1 = src[t:t + L], src[t + 1:t + 1 + L]
            for p in range(L):
                acc[p] += w0 * s0[p] + w1 * s1[p]
            t += 2
        else:
            w0 = w[t]
            s0 = src[t:t + L]
            for p in range(L):
                acc[p] += w0 * s0[p]
            t += 1


@jit(inline="always", fastmath=_FASTMATH)
def _dot_taps(out, d, src, L, scratch):
    """out[t] += sum_p d[p] * src[p + t] for every tap t, up to five taps per pass over d.

    scratch: a length-1 array of the data dtype, so the partial sums keep that dtype
    (and vectorise) while `out` may be float64.
    """
    T = out.shape[0]
    t = 0
    while t < T:
        r = T - t
        a0 = a1 = a2 = a3 = a4 = scratch[0]
        if r >= 5:
            s0, s1, s2 = src[t:t + L], src[t + 1:t + 1 + L], src[t + 2:t + 2 + L]
            s3, s4 = src[t + 3:t + 3 + L], src[t + 4:t + 4 + L]
            for p in range(L):
                g = d[p]
                a0 += g * s0[p]
                a1 += g * s1[p]
                a2 += g * s2[p]
                a3 += g * s3[p]
                a4 += g * s4[p]
            out[t] += a0
            out[t + 1] += a1
            out[t + 2] += a2
            out[t + 3] += a3
            out[t + 4] += a4
            t += 5
        elif r >= 3:
            s0, s1, s2 = src[t:t + L], src[t + 1:t + 1 + L], src[t + 2:t + 2 + L]
            for p in range(L):
                g = d[p]
                a0 += g * s0[p]
                a1 += g * s1[p]
                a2 += g * s2[p]
            out[t] += a0
            out[t + 1] += a1
            out[t + 2] += a2
            t += 3
        else:
            s0 = src[t:t + L]
            for p in range(L):
                a0 += d[p] * s0[p]
            out[t] += a0
            t += 1


@jit(inline="always", fastmath=_FASTMATH)
def _add_taps3(a0, a1, a2, src, w0, w1, w2, L):
    """_add_taps for three accumulators that read the same source with their own taps.

    Sharing each source load between three filters (or channels) turns a load-bound
    loop (6 loads per 5 FMAs) into an FMA-bound one (8 loads per 15 FMAs).
    """
    T = w0.shape[0]
    t = 0
    while t < T:
        r = T - t
        if r >= 5:
            u0, u1, u2, u3, u4 = w0[t], w0[t + 1], w0[t + 2], w0[t + 3], w0[t + 4]
            v0, v1, v2, v3, v4 = w1[t], w1[t + 1], w1[t + 2], w1[t + 3], w1[t + 4]
            z0, z1, z2, z3, z4 = w2[t], w2[t + 1], w2[t + 2], w2[t + 3], w2[t + 4]
            s0, s1, s2 = src[t:t + L], src[t + 1:t + 1 + L], src[t + 2:t + 2 + L]
            s3, s4 = src[t + 3:t + 3 + L], src[t + 4:t + 4 + L]
            for p in range(L):
                x0, x1, x2, x3, x4 = s0[p], s1[p], s2[p], s3[p], s4[p]
                a0[p] += u0 * x0 + u1 * x1 + u2 * x2 + u3 * x3 + u4 * x4
                a1[p] += v0 * x0 + v1 * x1 + v2 * x2 + v3 * x3 + v4 * x4
                a2[p] += z0 * x0 + z1 * x1 + z2 * x2 + z3 * x3 + z4 * x4
            t += 5
        elif r >= 3:
            u0, u1, u2 = w0[t], w0[t + 1], w0[t + 2]
            v0, v1, v2 = w1[t], w1[t + 1], w1[t + 2]
            z0, z1, z2 = w2[t], w2[t + 1], w2[t + 2]
            s0, s1, s2 = src[t:t + L], src[t + 1:t + 1 + L], src[t + 2:t + 2 + L]
            for p in range(L):
                x0, x1, x2 = s0[p], s1[p], s2[p]
                a0[p] += u0 * x0 + u1 * x1 + u2 * x2
                a1[p] += v0 * x0 + v1 * x1 + v2 * x2
                a2[p] += z0 * x0 + z1 * x1 + z2 * x2
            t += 3
        else:
            u0, v0, z0 = w0[t], w1[t], w2[t]
            s0 = src[t:t + L]
            for p in range(L):
                x0 = s0[p]
                a0[p] += u0 * x0
                a1[p] += v0 * x0
                a2[p] += z0 * x0
            t += 1


@jit(inline="always", fastmath=_FASTMATH)
def _dot_taps2(o0, o1, d0, d1, src, L, scratch):
    """_dot_taps for two gradients sharing one source: o_k[t] += sum_p d_k[p] * src[p + t].

    Two filters per pass share the five source loads (7 loads per 10 FMAs instead of
    6 per 5); three filters ran out of registers and were slower.
    """
    T = o0.shape[0]
    t = 0
    while t < T:
        if T - t >= 5:
            a0 = a1 = a2 = a3 = a4 = scratch[0]
            b0 = b1 = b2 = b3 = b4 = scratch[0]
            s0, s1, s2 = src[t:t + L], src[t + 1:t + 1 + L], src[t + 2:t + 2 + L]
            s3, s4 = src[t + 3:t + 3 + L], src[t + 4:t + 4 + L]
            for p in range(L):
                x0, x1, x2, x3, x4 = s0[p], s1[p], s2[p], s3[p], s4[p]
                g = d0[p]
                h = d1[p]
                a0 += g * x0
                a1 += g * x1
                a2 += g * x2
                a3 += g * x3
                a4 += g * x4
                b0 += h * x0
                b1 += h * x1
                b2 += h * x2
                b3 += h * x3
                b4 += h * x4
            o0[t] += a0
            o0[t + 1] += a1
            o0[t + 2] += a2
            o0[t + 3] += a3
            o0[t + 4] += a4
            o1[t] += b0
            o1[t + 1] += b1
            o1[t + 2] += b2
            o1[t + 3] += b3
            o1[t + 4] += b4
            t += 5
        else:
            a0 = b0 = scratch[0]
            s0 = src[t:t + L]
            for p in range(L):
                x0 = s0[p]
                a0 += d0[p] * x0
                b0 += d1[p] * x0
            o0[t] += a0
            o1[t] += b0
            t += 1


@jit(parallel=True)
def _pad_flat(x, pad_top, pad_left, Hp, Wp, before, after, mask, use_mask):
    """x (N, C, H, W) -> (N, C, before + Hp * Wp + after): zero-padded planes of pitch Wp.

    With use_mask, entries where mask (same shape as x) is <= 0 become zero: the ReLU
    backward pass, fused into the copy the gradient kernels need anyway.
    """
    N, C, H, W = x.shape
    xp = np.zeros((N, C, before + Hp * Wp + after), dtype=x.dtype)
    # One view per plane and unsigned indices: views of a shared array update its
    # refcount atomically (per-row views cost more than the copy), and signed indices
    # Numba cannot prove non-negative get wraparound checks that stop vectorisation.
    for t in prange(N * C):
        n = t // C
        c = t % C
        dst = xp[n, c]
        src = x[n, c].reshape(-1)
        m = mask[n, c].reshape(-1)
        for h in range(H):
            b = uint64(before + (pad_top + h) * Wp + pad_left)
            r = uint64(h * W)
            if use_mask:
                for w in range(uint64(W)):
                    v = src[r + w]
                    dst[b + w] = v if m[r + w] > 0 else 0
            else:
                for w in range(uint64(W)):
                    dst[b + w] = src[r + w]
    return xp


@jit(parallel=True, fastmath=_FASTMATH)
def _conv2d_forward_s1(xp, weight, bias, Wp, out_h, out_w, relu):
    """xp: (N, C, Hp * Wp + KW) from _pad_flat. Returns y: (N, F, out_h, out_w).

    One task per (sample, block of three filters): a batch of one still has work for
    two threads, and the three filters share every load of the input.
    """
    N, C, _ = xp.shape
    F, _, KH, KW = weight.shape
    L = out_h * Wp
    blocks = (F + 2) // 3
    y = np.empty((N, F, out_h, out_w), dtype=xp.dtype)
    for t in prange(N * blocks):
        n = t // blocks
        f0 = (t % blocks) * 3
        nf = min(3, F - f0)
        acc = np.empty((3, L), dtype=xp.dtype)
        for k in range(nf):
            b = bias[f0 + k]
            for p in range(L):
                acc[k, p] = b
        for c in range(C):
            for ki in range(KH):
                src = xp[n, c, ki * Wp:]
                if nf == 3:
                    _add_taps3(acc[0], acc[1], acc[2], src, weight[f0, c, ki],
                               weight[f0 + 1, c, ki], weight[f0 + 2, c, ki], L)
                else:
                    for k in range(nf):
                        _add_taps(acc[k], src, weight[f0 + k, c, ki], L)
        for k in range(nf):
            for i in range(out_h):
                for j in range(out_w):
                    v = acc[k, i * Wp + j]
                    if relu and v < 0:
                        v = 0
                    y[n, f0 + k, i, j] = v
    return y


@jit(parallel=True, fastmath=_FASTMATH)
def _conv2d_backward_input_s1(dyz, weight_flipped, in_h, in_w, Wp, pad_top, pad_left):
    """dyz: dy from _pad_flat with a leading margin of (KH - 1) * Wp + KW - 1 zeros.

    weight_flipped: weight[:, :, :, ::-1], contiguous. dx[q] gathers dy[q - ki * Wp - kj],
    a correlation with the flipped kernel rows; one task per (sample, block of three
    input channels). Returns dx: (N, C, in_h, in_w).
    """
    N, F, _ = dyz.shape
    _, C, KH, KW = weight_flipped.shape
    margin = (KH - 1) * Wp + KW - 1
    L = in_h * Wp
    q0 = pad_top * Wp
    blocks = (C + 2) // 3
    dx = np.empty((N, C, in_h, in_w), dtype=dyz.dtype)
    for t in prange(N * blocks):
        n = t // blocks
        c0 = (t % blocks) * 3
        nc = min(3, C - c0)
        acc = np.zeros((3, L), dtype=dyz.dtype)
        for f in range(F):
            for ki in range(KH):
                src = dyz[n, f, margin + q0 - ki * Wp - (KW - 1):]
                if nc == 3:
                    _add_taps3(acc[0], acc[1], acc[2], src, weight_flipped[f, c0, ki],
                               weight_flipped[f, c0 + 1, ki], weight_flipped[f, c0 + 2, ki], L)
                else:
                    for k in range(nc):
                        _add_taps(acc[k], src, weight_flipped[f, c0 + k, ki], L)
        for k in range(nc):
            for h in range(in_h):
                for w in range(in_w):
                    dx[n, c0 + k, h, w] = acc[k, h * Wp + pad_left + w]
    return dx


@jit(parallel=True, fastmath=_FASTMATH)
def _conv2d_backward_weight_s1(xp, dq, offset, KH, KW, Wp, out_h):
    """xp: (N, C, Hp * Wp + KW), dq: (N, F, offset + out_h * Wp + ...) both from _pad_flat.

    One task per (pair of filters, input channel[, kernel row]) owns those weights: no
    write races, and the sum over samples runs in a fixed order whatever the thread count.
    Returns (dw (F, C, KH, KW), db (F,)).
    """
    N, C, _ = xp.shape
    F = dq.shape[1]
    L = out_h * Wp
    pairs = (F + 1) // 2
    dw = np.empty((F, C, KH, KW), dtype=xp.dtype)
    db = np.empty(F, dtype=xp.dtype)
    # Few (filter pair, channel) tasks, as in conv1 (C = 1: 3 tasks for 2 threads), are
    # split by kernel row too; with many, whole kernels per task reuse each dy plane.
    rows = KH if pairs * C < 8 else 1
    for t in prange(pairs * C * rows):
        f0 = (t // (C * rows)) * 2
        c = (t // rows) % C
        k0 = (t % rows) if rows > 1 else 0
        k1 = k0 + 1 if rows > 1 else KH
        nf = min(2, F - f0)
        acc = np.zeros((2, KH, KW))  # float64 across samples; data dtype within one plane
        scratch = np.zeros(1, dtype=xp.dtype)
        for n in range(N):
            for ki in range(k0, k1):
                src = xp[n, c, ki * Wp:]
                if nf == 2:
                    _dot_taps2(acc[0, ki], acc[1, ki], dq[n, f0, offset:],
                               dq[n, f0 + 1, offset:], src, L, scratch)
                else:
                    _dot_taps(acc[0, ki], dq[n, f0, offset:], src, L, scratch)
        for k in range(nf):
            for ki in range(k0, k1):
                for kj in range(KW):
                    dw[f0 + k, c, ki, kj] = acc[k, ki, kj]
    for f in prange(F):
        s = 0.0
        for n in range(N):
            for p in range(L):
                s += dq[n, f, offset + p]
        db[f] = s
    return dw, db


@jit()
def _sum_parts(parts):
    """Sum over the leading axis in a fixed order."""
    out = parts[0].copy()
    flat = out.reshape(-1)
    for k in range(1, parts.shape[0]):
        src = parts[k].reshape(-1)
        for t in range(flat.size):
            flat[t] += src[t]
    return out



def _s1_geometry(H, W, out_h, out_w, KH, KW, pad_top, pad_left):
    """(Hp, Wp, margin) of the flat stride-1 layout."""
    Wp = max(W + pad_left, out_w + KW - 1)
    Hp = max(H + pad_top, out_h + KH - 1)
    return Hp, Wp, (KH - 1) * Wp + KW - 1


def conv2d_forward(x, weight, bias, stride_h, stride_w, pad_top, pad_left, out_h, out_w, relu):
    """y = conv(x, weight) + bias, optionally followed by ReLU.

    x: (N, C, H, W); weight: (F, C, KH, KW); bias: (F,); all one float dtype.
    Returns y: (N, F, out_h, out_w).
    """
    if stride_h != 1 or stride_w != 1:
        return _conv2d_forward_strided(x, weight, bias, stride_h, stride_w, pad_top, pad_left,
                                       out_h, out_w, relu)
    _, _, H, W = x.shape
    _, _, KH, KW = weight.shape
    Hp, Wp, _ = _s1_geometry(H, W, out_h, out_w, KH, KW, pad_top, pad_left)
    xp = _pad_flat(x, pad_top, pad_left, Hp, Wp, 0, KW, x, False)
    return _conv2d_forward_s1(xp, weight, bias, Wp, out_h, out_w, relu)


def conv2d_backward(x, weight, dy, y, relu, stride_h, stride_w, pad_top, pad_left, input_grad):
    """All gradients of a convolution in one pass over shared buffers.

    x: (N, C, H, W); weight: (F, C, KH, KW); dy, y: (N, F, OH, OW). With relu, y is the
    fused conv + ReLU output and dy is first zeroed where y <= 0. Returns
    (dx: (N, C, H, W) or None when not input_grad, dw: (F, C, KH, KW), db: (F,)).
    """
    _, _, H, W = x.shape
    _, _, KH, KW = weight.shape
    _, _, OH, OW = dy.shape
    if stride_h != 1 or stride_w != 1:
        if relu:
            dy = _pad_flat(dy, 0, 0, OH, OW, 0, 0, y, True).reshape(dy.shape)
        dx = None
        if input_grad:
            dx = _conv2d_backward_input_strided(dy, weight, H, W, stride_h, stride_w,
                                                pad_top, pad_left)
        dw_parts, db_parts = _conv2d_weight_partials(x, dy, KH, KW, stride_h, stride_w,
                                                     pad_top, pad_left)
        return dx, _sum_parts(dw_parts), _sum_parts(db_parts)
    Hp, Wp, margin = _s1_geometry(H, W, OH, OW, KH, KW, pad_top, pad_left)
    # One layout of dy serves both kernels: pitch Wp, zero columns past each row, and a
    # leading margin so the input gradient can gather without negative indices.
    dyz = _pad_flat(dy, 0, 0, Hp, Wp, margin, 0, y, relu)
    xp = _pad_flat(x, pad_top, pad_left, Hp, Wp, 0, KW, x, False)
    dw, db = _conv2d_backward_weight_s1(xp, dyz, margin, KH, KW, Wp, OH)
    dx = None
    if input_grad:
        flipped = np.ascontiguousarray(weight[:, :, :, ::-1])
        dx = _conv2d_backward_input_s1(dyz, flipped, H, W, Wp, pad_top, pad_left)
    return dx, dw, db


def conv2d_backward_input(dy, weight, in_h, in_w, stride_h, stride_w, pad_top, pad_left):
    """Gradient of the loss with respect to the convolution's input.

    dy: (N, F, OH, OW); weight: (F, C, KH, KW). Returns dx: (N, C, in_h, in_w).
    """
    if stride_h != 1 or stride_w != 1:
        return _conv2d_backward_input_strided(dy, weight, in_h, in_w, stride_h, stride_w,
                                              pad_top, pad_left)
    _, _, OH, OW = dy.shape
    _, _, KH, KW = weight.shape
    Hp, Wp, margin = _s1_geometry(in_h, in_w, OH, OW, KH, KW, pad_top, pad_left)
    dyz = _pad_flat(dy, 0, 0, Hp, Wp, margin, 0, dy, False)
    flipped = np.ascontiguousarray(weight[:, :, :, ::-1])
    return _conv2d_backward_input_s1(dyz, flipped, in_h, in_w, Wp, pad_top, pad_left)


def conv2d_backward_weight(x, dy, kernel_h, kernel_w, stride_h, stride_w, pad_top, pad_left):
    """Gradients of the loss with respect to the weight and the bias.

    x: (N, C, H, W); dy: (N, F, OH, OW). Returns (dw: (F, C, KH, KW), db: (F,)).
    """
    if stride_h != 1 or stride_w != 1:
        dw_parts, db_parts = _conv2d_weight_partials(
            x, dy, kernel_h, kernel_w, stride_h, stride_w, pad_top, pad_left
        )
        return _sum_parts(dw_parts), _sum_parts(db_parts)
    _, _, H, W = x.shape
    _, _, OH, OW = dy.shape
    Hp, Wp, _ = _s1_geometry(H, W, OH, OW, kernel_h, kernel_w, pad_top, pad_left)
    xp = _pad_flat(x, pad_top, pad_left, Hp, Wp, 0, kernel_w, x, False)
    dq = _pad_flat(dy, 0, 0, OH, Wp, 0, 0, dy, False)
    return _conv2d_backward_weight_s1(xp, dq, 0, kernel_h, kernel_w, Wp, OH)
