"""2-D convolution kernels over NCHW mini-batches (cross-correlation, as in PyTorch).

Geometry is explicit: the caller passes strides, the top/left zero padding and
the output size, so 'same', 'valid', symmetric and asymmetric padding all reduce
to one kernel. Padding beyond the input on the bottom/right is implied by the
output size. Inputs must be C-contiguous and of one float dtype; the Python layer
(`fastcnn.functional`) checks that before calling.

Each parallel loop runs over samples or over fixed-size chunks of samples (for small
batches, each chunk's filters are shared out between tasks, every output still computed
the same way), so a result never depends on the number of threads.
"""

import numba
import numpy as np
from llvmlite.binding import get_host_cpu_features
from numba import prange, uint8, uint64
from numba.core import config

from . import pool
from ._jit import jit

# Samples per partial sum in the weight gradient: fixed, so that the reduction
# order (and so every bit of the result) is the same for any thread count.
GRAD_CHUNK = 8
# Samples per forward task: its padding and accumulator buffers are allocated once.
FORWARD_CHUNK = 4

_FASTMATH = {"reassoc", "contract"}


def _vector_registers_are_wide():
    """True where the code Numba generates may use AVX-512's 32 vector registers."""
    features = config.CPU_FEATURES
    if features is None and config.CPU_NAME is None:
        return bool(get_host_cpu_features().get("avx512f", False))
    return "+avx512f" in (features or "")


# Filters per pass of the weight gradient's tap loop, which keeps five accumulators per
# filter in vector registers. Three (15 accumulators) fit in AVX-512's 32 and ran 6-8%
# faster than pairs; in AVX2's 16 they spill to the stack, and pairs ran that loop 1.5x
# and a whole SEED-ARCH training step ~10% faster (Zen 3). LLVM may then split the
# sums differently, so the last bits can differ between the two kinds of CPU, as they
# already do between vector widths; on one machine they never depend on the thread
# count. (The forward and input-gradient loops keep three per pass: pairs were ~5%
# slower there even on AVX2.) Passed to the kernel as an argument, not read as a global
# (which Numba would freeze into the cached code), so tests can run every choice.
DOT_FILTERS = 3 if _vector_registers_are_wide() else 2


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
    6 per 5).
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


@jit(inline="always", fastmath=_FASTMATH)
def _dot_taps3(o0, o1, o2, d0, d1, d2, src, L, scratch):
    """_dot_taps for three gradients sharing one source: 8 loads per 15 FMAs, and 15
    accumulators, which still fit in the vector registers (6-8% faster than pairs)."""
    T = o0.shape[0]
    t = 0
    while t < T:
        if T - t >= 5:
            a0 = a1 = a2 = a3 = a4 = scratch[0]
            b0 = b1 = b2 = b3 = b4 = scratch[0]
            c0 = c1 = c2 = c3 = c4 = scratch[0]
            s0, s1, s2 = src[t:t + L], src[t + 1:t + 1 + L], src[t + 2:t + 2 + L]
            s3, s4 = src[t + 3:t + 3 + L], src[t + 4:t + 4 + L]
            for p in range(L):
                x0, x1, x2, x3, x4 = s0[p], s1[p], s2[p], s3[p], s4[p]
                g = d0[p]
                h = d1[p]
                k = d2[p]
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
                c0 += k * x0
                c1 += k * x1
                c2 += k * x2
                c3 += k * x3
                c4 += k * x4
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
            o2[t] += c0
            o2[t + 1] += c1
            o2[t + 2] += c2
            o2[t + 3] += c3
            o2[t + 4] += c4
            t += 5
        else:
            a0 = b0 = c0 = scratch[0]
            s0 = src[t:t + L]
            for p in range(L):
                x0 = s0[p]
                a0 += d0[p] * x0
                b0 += d1[p] * x0
                c0 += d2[p] * x0
            o0[t] += a0
            o1[t] += b0
            o2[t] += c0
            t += 1


@jit(inline="always")
def _flat_plane(dst, src, mask, use_mask, before, top, left, Wp):
    """Write every element of dst: zeros, with the (H, W) plane src placed at row `top`,
    column `left` of a pitch-Wp grid that starts at dst[before].

    With use_mask, src is taken as zero where mask (same shape) is <= 0: the ReLU backward
    pass, fused into the copy. Writing the zeros here (rather than zeroing the buffer
    first) lets one buffer serve every sample of a task. Unsigned indices: signed ones
    that Numba cannot prove non-negative get wraparound checks that stop vectorisation.
    """
    H, W = src.shape
    s = src.reshape(-1)
    m = mask.reshape(-1)
    Wu = uint64(W)
    first = uint64(before + top * Wp + left)
    for p in range(first):
        dst[p] = 0
    for h in range(uint64(H)):
        b = first + h * uint64(Wp)
        r = h * Wu
        if use_mask:
            for w in range(Wu):
                v = s[r + w]
                dst[b + w] = v if m[r + w] > 0 else 0
        else:
            for w in range(Wu):
                dst[b + w] = s[r + w]
        end = b + uint64(Wp) if h + uint64(1) < uint64(H) else uint64(dst.shape[0])
        for p in range(b + Wu, end):
            dst[p] = 0


@jit(inline="always")
def _window_offsets(pool_h, pool_w, Wp):
    """The offset a * Wp + b of each window index a * pool_w + b in a pitch-Wp grid."""
    offsets = np.empty(pool_h * pool_w, dtype=np.uint64)
    for a in range(pool_h):
        for b in range(pool_w):
            offsets[a * pool_w + b] = a * Wp + b
    return offsets


@jit(inline="always")
def _unpool_plane(dst, g, mask, use_mask, window, offsets, before, Wp, pool_h, pool_w):
    """Write every element of dst: zeros, with each pooled gradient g[i, j] (PH, PW) at
    its window's maximum, row i * pool_h + a and column j * pool_w + b of the pitch-Wp
    grid that starts at dst[before], where window[i, j] = a * pool_w + b and
    offsets = _window_offsets(pool_h, pool_w, Wp).

    With use_mask, g is taken as zero where mask (the pooled ReLU output) is <= 0: the
    ReLU gradient at each window's maximum. window values must be < pool_h * pool_w.
    """
    PH, PW = g.shape
    for p in range(dst.shape[0]):
        dst[p] = 0
    gs, ms, ws = g.reshape(-1), mask.reshape(-1), window.reshape(-1)
    for i in range(uint64(PH)):
        row = uint64(before) + i * uint64(pool_h * Wp)
        for j in range(uint64(PW)):
            q = i * uint64(PW) + j
            if not use_mask or ms[q] > 0:
                dst[row + j * uint64(pool_w) + offsets[ws[q]]] = gs[q]


@jit(inline="always")
def _crop_rows(dst, src, left, Wp, relu):
    """dst (H, W) = the rows of pitch Wp in src, from column `left`; ReLU'd if relu.

    A 1-D view and unsigned indices, so the copy vectorises (4-D indexing did not).
    """
    H, W = dst.shape
    d = dst.reshape(-1)
    Wu = uint64(W)
    for h in range(uint64(H)):
        b = h * uint64(Wp) + uint64(left)
        r = h * Wu
        if relu:
            for w in range(Wu):
                v = src[b + w]
                d[r + w] = 0 if v < 0 else v  # NaN stays NaN, as in np.maximum
        else:
            for w in range(Wu):
                d[r + w] = src[b + w]


@jit(inline="always")
def _pool_rows(dst, win, src, Wp, relu, pool_h, pool_w, want_window):
    """dst (PH, PW) = max over non-overlapping pool_h x pool_w windows of the rows of
    pitch Wp in src, ReLU'd first if relu; with want_window, win (PH, PW) gets the index
    a * pool_w + b of each window's first maximum, as maxpool2d_forward finds it on the
    ReLU'd plane. A NaN in a window wins (the first NaN).

    As in pool.py, the fast pass only counts NaNs (testing for them in every comparison
    is several times slower) and a plane that has one is pooled again NaN-aware. The
    2x2 window is unrolled, with unsigned indices, so that the pass vectorises.
    """
    PH, PW = dst.shape
    d = dst.reshape(-1)
    w = win.reshape(-1)
    nans = 0
    if pool_h == 2 and pool_w == 2:
        for i in range(uint64(PH)):
            r0 = i * uint64(2 * Wp)
            r1 = r0 + uint64(Wp)
            o = i * uint64(PW)
            for j in range(uint64(PW)):
                c = j * uint64(2)
                a0, a1, a2, a3 = src[r0 + c], src[r0 + c + uint64(1)], src[r1 + c], \
                    src[r1 + c + uint64(1)]
                nans += (a0 != a0) + (a1 != a1) + (a2 != a2) + (a3 != a3)
                # Ties go to the earlier element, as in pool.py's sequential scan.
                s0 = a1 > a0
                m0 = a1 if s0 else a0
                s1 = a3 > a2
                m1 = a3 if s1 else a2
                s = m1 > m0
                m = m1 if s else m0
                d[o + j] = 0 if relu and m < 0 else m  # NaN stays NaN, as in np.maximum
                if want_window:
                    # ReLU first: a window of values <= 0 pools zeros, whose first is at 0.
                    k = (uint8(2) + uint8(s1)) if s else uint8(s0)
                    w[o + j] = uint8(0) if relu and m <= 0 else k
    else:
        nans = 1  # other windows: the general loop below
    if nans == 0:
        return
    for i in range(PH):
        for j in range(PW):
            base = i * pool_h * Wp + j * pool_w
            best = src[base]
            if relu and best < 0:
                best = 0
            where = 0
            for a in range(pool_h):
                for b in range(pool_w):
                    v = src[base + a * Wp + b]
                    if relu and v < 0:
                        v = 0
                    if v > best or (v != v and best == best):
                        best = v
                        where = a * pool_w + b
            d[i * PW + j] = best
            if want_window:
                w[i * PW + j] = where


@jit(fastmath=_FASTMATH)
def _forward_s1_task(x, weight, bias, pad_top, pad_left, Hp, Wp, out_h, relu, pool_h, pool_w,
                     want_window, y, window, t, g, groups):
    """Samples t * FORWARD_CHUNK ... of _conv2d_forward_s1, into y and window: of their
    filter triples, those numbered g, g + groups, ... (each sample is padded by each group).

    A function of its own, called with int64 indices (a prange index is uint64 inside the
    parallel loop, which would compile a second copy): inlined into the kernel, it was
    compiled again for the parallel loop and for each caller.
    """
    N, C, _, _ = x.shape
    F, _, KH, KW = weight.shape
    L = out_h * Wp
    pooled = pool_h > 1 or pool_w > 1 or want_window
    xp = np.empty((C, Hp * Wp + KW), dtype=x.dtype)
    acc = np.empty((3, L), dtype=x.dtype)
    no_window = np.empty((1, 1), dtype=np.uint8)  # stands in when not want_window
    for n in range(t * FORWARD_CHUNK, min(N, (t + 1) * FORWARD_CHUNK)):
        for c in range(C):
            _flat_plane(xp[c], x[n, c], x[n, c], False, 0, pad_top, pad_left, Wp)
        for f0 in range(3 * g, F, 3 * groups):
            nf = min(3, F - f0)
            for k in range(nf):
                b = bias[f0 + k]
                for p in range(L):
                    acc[k, p] = b
            for c in range(C):
                for ki in range(KH):
                    src = xp[c, ki * Wp:]
                    if nf == 3:
                        _add_taps3(acc[0], acc[1], acc[2], src, weight[f0, c, ki],
                                   weight[f0 + 1, c, ki], weight[f0 + 2, c, ki], L)
                    else:
                        for k in range(nf):
                            _add_taps(acc[k], src, weight[f0 + k, c, ki], L)
            for k in range(nf):
                if pooled:
                    win = window[n, f0 + k] if want_window else no_window
                    _pool_rows(y[n, f0 + k], win, acc[k], Wp, relu, pool_h, pool_w,
                               want_window)
                else:
                    _crop_rows(y[n, f0 + k], acc[k], 0, Wp, relu)


@jit(inline="always")
def _forward_s1_outputs(x, weight, out_h, out_w, pool_h, pool_w, want_window):
    """(y, window), empty, for the stride-1 forward kernels."""
    N = x.shape[0]
    F = weight.shape[0]
    y = np.empty((N, F, out_h // pool_h, out_w // pool_w), dtype=x.dtype)
    window = np.empty((N if want_window else 0, F, out_h // pool_h, out_w // pool_w),
                      dtype=np.uint8)
    return y, window


@jit(parallel=True, fastmath=_FASTMATH)
def _conv2d_forward_s1(x, weight, bias, pad_top, pad_left, Hp, Wp, out_h, out_w, relu, pool_h,
                       pool_w, want_window, groups):
    """Stride 1: y = conv(x, weight) + bias, optionally followed by ReLU, then max-pooled
    over non-overlapping pool_h x pool_w windows (1 x 1: no pooling).

    x: (N, C, H, W); weight: (F, C, KH, KW); bias: (F,).
    Returns (y: (N, F, out_h // pool_h, out_w // pool_w), window: the same shape, uint8,
    the index of each pool window's maximum when want_window, else of size 0).
    One task per FORWARD_CHUNK samples and group (1 to ceil(F / 3) groups): it pads each
    sample once into buffers of its own (flat planes of pitch Wp), allocated once per task,
    which stay in cache; three filters share every load of the input. Groups split a
    chunk's filter triples between tasks, for batches too small to keep every thread
    busy; each output is computed the same way for any number of groups.
    """
    y, window = _forward_s1_outputs(x, weight, out_h, out_w, pool_h, pool_w, want_window)
    for t in prange((x.shape[0] + FORWARD_CHUNK - 1) // FORWARD_CHUNK * groups):
        i = np.int64(t)
        _forward_s1_task(x, weight, bias, pad_top, pad_left, Hp, Wp, out_h, relu, pool_h, pool_w,
                         want_window, y, window, i // groups, i % groups, groups)
    return y, window


@jit(fastmath=_FASTMATH)
def _backward_s1_task(x, dy, mask, use_mask, window, pool_h, pool_w, weight_flipped, in_h, in_w,
                      pad_top, pad_left, Hp, Wp, out_h, weight_grad, input_grad, dot_filters,
                      dx, dw_parts, db_parts, k, g, groups):
    """Chunk k (samples k * GRAD_CHUNK ...) of _conv2d_backward_s1: its input gradients
    into dx, its weight and bias gradients into dw_parts[k] and db_parts[k]; of the
    weight gradient's passes (dot_filters filters each) and the input gradient's channel
    triples, those numbered g, g + groups, ... A function of its own, for the reason
    _forward_s1_task gives."""
    N, F, _, _ = dy.shape
    _, C, KH, KW = weight_flipped.shape
    pooled = pool_h * pool_w > 1
    margin = (KH - 1) * Wp + KW - 1
    L = out_h * Wp  # weight gradient: one pass over dy's rows
    Lin = in_h * Wp  # input gradient: one pass over dx's rows
    q0 = pad_top * Wp
    xp = np.empty((C if weight_grad else 0, Hp * Wp + KW), dtype=dy.dtype)
    dz = np.empty((F, margin + Hp * Wp), dtype=dy.dtype)
    acc = np.empty((3, Lin if input_grad else 0), dtype=dy.dtype)
    scratch = np.zeros(1, dtype=dy.dtype)  # the data dtype for in-plane partial sums
    offsets = _window_offsets(pool_h, pool_w, Wp)
    dw = dw_parts[k]
    for n in range(k * GRAD_CHUNK, min(N, (k + 1) * GRAD_CHUNK)):
        for f in range(F):
            if pooled:
                _unpool_plane(dz[f], dy[n, f], mask[n, f], use_mask, window[n, f],
                              offsets, margin, Wp, pool_h, pool_w)
            else:
                _flat_plane(dz[f], dy[n, f], mask[n, f], use_mask, margin, 0, 0, Wp)
        if weight_grad:
            for c in range(C):
                _flat_plane(xp[c], x[n, c], x[n, c], False, 0, pad_top, pad_left, Wp)
            for f in range(F):
                if (f // dot_filters) % groups != g:
                    continue  # another group's filter
                s = scratch[0]
                d = dz[f, margin:]
                for p in range(L):
                    s += d[p]
                db_parts[k, f] += s
            # dot_filters filters per pass (then fewer) share the five source loads
            # of a kernel row.
            for f0 in range(dot_filters * g, F, dot_filters * groups):
                nf = min(dot_filters, F - f0)
                for c in range(C):
                    for ki in range(KH):
                        src = xp[c, ki * Wp:]
                        if nf == 3:
                            _dot_taps3(dw[f0, c, ki], dw[f0 + 1, c, ki], dw[f0 + 2, c, ki],
                                       dz[f0, margin:], dz[f0 + 1, margin:],
                                       dz[f0 + 2, margin:], src, L, scratch)
                        elif nf == 2:
                            _dot_taps2(dw[f0, c, ki], dw[f0 + 1, c, ki], dz[f0, margin:],
                                       dz[f0 + 1, margin:], src, L, scratch)
                        else:
                            _dot_taps(dw[f0, c, ki], dz[f0, margin:], src, L, scratch)
        if input_grad:
            # dx[q] gathers dy[q - ki * Wp - kj]: a correlation with the flipped kernel
            # rows, three input channels per pass sharing each load of dy.
            for c0 in range(3 * g, C, 3 * groups):
                nc = min(3, C - c0)
                for j in range(nc):
                    for p in range(Lin):
                        acc[j, p] = 0
                for f in range(F):
                    for ki in range(KH):
                        src = dz[f, margin + q0 - ki * Wp - (KW - 1):]
                        if nc == 3:
                            _add_taps3(acc[0], acc[1], acc[2], src,
                                       weight_flipped[f, c0, ki],
                                       weight_flipped[f, c0 + 1, ki],
                                       weight_flipped[f, c0 + 2, ki], Lin)
                        else:
                            for j in range(nc):
                                _add_taps(acc[j], src, weight_flipped[f, c0 + j, ki], Lin)
                for j in range(nc):
                    _crop_rows(dx[n, c0 + j], acc[j], pad_left, Wp, False)


@jit(inline="always")
def _backward_s1_outputs(dy, weight_flipped, in_h, in_w, input_grad):
    """(dx, dw_parts, db_parts), dx empty and the partial sums zero, for the stride-1
    backward kernels."""
    N, F, _, _ = dy.shape
    _, C, KH, KW = weight_flipped.shape
    chunks = (N + GRAD_CHUNK - 1) // GRAD_CHUNK
    dw_parts = np.zeros((chunks, F, C, KH, KW))  # float64 across samples
    db_parts = np.zeros((chunks, F))
    dx = np.empty((N if input_grad else 0, C, in_h, in_w), dtype=dy.dtype)
    return dx, dw_parts, db_parts


@jit(parallel=True, fastmath=_FASTMATH)
def _conv2d_backward_s1(x, dy, mask, use_mask, window, pool_h, pool_w, weight_flipped, in_h,
                        in_w, pad_top, pad_left, Hp, Wp, out_h, weight_grad, input_grad,
                        dot_filters, groups):
    """Stride 1: the weight, bias and input gradients in one pass over the batch.

    dy: (N, F, out_h, OW), taken as zero where use_mask and mask (same shape) <= 0 (the
    fused ReLU). With a pool (pool_h * pool_w > 1), dy and mask are instead the gradient
    and output of the max-pool after the convolution, (N, F, PH, PW), and window (same
    shape, uint8, each < pool_h * pool_w) says where in its window each maximum was: the
    pool's backward pass, fused into the same copy. x: (N, C, in_h, in_w), read only when
    weight_grad (pass dy otherwise).
    weight_flipped: weight[:, :, :, ::-1] (F, C, KH, KW), contiguous, read only when
    input_grad. Returns dx: (N, C, in_h, in_w) (size 0 when not input_grad), dw:
    (F, C, KH, KW) and db: (F,), both float64 and zero when not weight_grad.

    dot_filters (1 to 3): filters per pass of the weight gradient (`DOT_FILTERS`).
    groups (>= 1): tasks per chunk, which share its passes and channel triples out.

    One task per fixed chunk of GRAD_CHUNK samples and group. Per sample it pads x and
    masks dy into buffers of its own, once for every filter and channel; dy gets pitch Wp
    and a leading margin, so the input gradient gathers without negative indices. Each
    chunk sums its own weight gradient (its groups write disjoint filters) and the chunks
    are added in order at the end, so every bit of the result is the same for any thread
    count and any number of groups.
    """
    dx, dw_parts, db_parts = _backward_s1_outputs(dy, weight_flipped, in_h, in_w, input_grad)
    for t in prange(dw_parts.shape[0] * groups):
        i = np.int64(t)
        _backward_s1_task(x, dy, mask, use_mask, window, pool_h, pool_w, weight_flipped, in_h,
                          in_w, pad_top, pad_left, Hp, Wp, out_h, weight_grad, input_grad,
                          dot_filters, dx, dw_parts, db_parts, i // groups, i % groups, groups)
    return dx, _sum_parts(dw_parts), _sum_parts(db_parts)


@jit(parallel=True)
def _relu_mask(dy, y):
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
    """(Hp, Wp) of the flat stride-1 layout: rows and row pitch of a padded plane."""
    return max(H + pad_top, out_h + KH - 1), max(W + pad_left, out_w + KW - 1)


# Multiply-adds below which a chunk is not split between threads, where waking a
# thread and padding the sample again would cost about what they save. One float64
# sample on 2 threads (bench/README.md): conv2 of SEED-ARCH (705 k) forward 47 -> 27 us,
# backward 98 -> 64 us; conv1 (117 k) forward 12.5 -> 8.7 us.
_SPLIT_WORK = 50_000


def _groups(n, chunk, passes, work):
    """Tasks per chunk of a batch of n samples: enough to give every Numba thread one
    when the batch has fewer chunks than threads and a chunk is worth splitting (work
    multiply-adds per sample), at most one per pass. No result depends on it."""
    chunks = -(-n // chunk)
    threads = numba.get_num_threads()
    if chunks >= threads or min(n, chunk) * work < _SPLIT_WORK:
        return 1
    return max(1, min(passes, -(-threads // chunks)))


def _forward_s1(x, weight, bias, pad_top, pad_left, Hp, Wp, out_h, out_w, relu, pool_h, pool_w,
                want_window):
    """_conv2d_forward_s1, its tasks split for small batches."""
    F, C, KH, KW = weight.shape
    groups = _groups(len(x), FORWARD_CHUNK, -(-F // 3), F * C * KH * KW * out_h * out_w)
    return _conv2d_forward_s1(x, weight, bias, pad_top, pad_left, Hp, Wp, out_h, out_w, relu,
                              pool_h, pool_w, want_window, groups)


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
    Hp, Wp = _s1_geometry(H, W, out_h, out_w, KH, KW, pad_top, pad_left)
    return _forward_s1(x, weight, bias, pad_top, pad_left, Hp, Wp, out_h, out_w, relu, 1, 1,
                       False)[0]


def _conv_pool(x, weight, bias, stride_h, stride_w, pad_top, pad_left, out_h, out_w, relu,
               pool_h, pool_w, want_window):
    """(y, window or None) of conv2d_pool_forward_with_indices, for any stride."""
    if stride_h != 1 or stride_w != 1:
        y = conv2d_forward(x, weight, bias, stride_h, stride_w, pad_top, pad_left, out_h,
                           out_w, relu)
        pooled, argmax = pool.maxpool2d_forward(y, pool_h, pool_w, pool_h, pool_w)
        return pooled, (_window_of(argmax, out_w, pool_h, pool_w) if want_window else None)
    _, _, H, W = x.shape
    _, _, KH, KW = weight.shape
    Hp, Wp = _s1_geometry(H, W, out_h, out_w, KH, KW, pad_top, pad_left)
    return _forward_s1(x, weight, bias, pad_top, pad_left, Hp, Wp, out_h, out_w, relu, pool_h,
                       pool_w, want_window)


def conv2d_pool_forward(x, weight, bias, stride_h, stride_w, pad_top, pad_left, out_h, out_w,
                        relu, pool_h, pool_w):
    """conv2d_forward, then max-pooling over non-overlapping pool_h x pool_w windows
    (floor): the inference path, which never stores the unpooled output.

    Returns y: (N, F, out_h // pool_h, out_w // pool_w); the same values as
    maxpool2d_forward(conv2d_forward(...), pool_h, pool_w, pool_h, pool_w)[0].
    """
    return _conv_pool(x, weight, bias, stride_h, stride_w, pad_top, pad_left, out_h, out_w,
                      relu, pool_h, pool_w, False)[0]


def conv2d_pool_forward_with_indices(x, weight, bias, stride_h, stride_w, pad_top, pad_left,
                                     out_h, out_w, relu, pool_h, pool_w):
    """conv2d_pool_forward, and where each maximum was: the training path.

    Returns (y, window), both (N, F, out_h // pool_h, out_w // pool_w); window (uint8)
    holds a * pool_w + b, the offset (a, b) of each maximum inside its window, as
    maxpool2d_forward's argmax finds it. pool_h * pool_w must be at most 256.
    """
    return _conv_pool(x, weight, bias, stride_h, stride_w, pad_top, pad_left, out_h, out_w,
                      relu, pool_h, pool_w, True)


@jit(parallel=True)
def _window_of(argmax, W, pool_h, pool_w):
    """maxpool2d_forward's argmax (flat h * W + w) as offsets inside each window (uint8)."""
    N, C, PH, PW = argmax.shape
    window = np.empty((N, C, PH, PW), dtype=np.uint8)
    for t in prange(N * C):
        n, c = t // C, t % C
        for i in range(PH):
            for j in range(PW):
                h, w = argmax[n, c, i, j] // W, argmax[n, c, i, j] % W
                window[n, c, i, j] = (h - i * pool_h) * pool_w + w - j * pool_w
    return window


@jit(parallel=True)
def _unpooled(dy, y, use_mask, window, out_h, out_w, pool_h, pool_w):
    """The pool's backward pass (and the ReLU's, with use_mask) as a full gradient
    (N, F, out_h, out_w), for the strided kernels."""
    N, F, _, _ = dy.shape
    full = np.empty((N, F, out_h, out_w), dtype=dy.dtype)
    offsets = _window_offsets(pool_h, pool_w, out_w)
    for t in prange(N * F):
        n, f = t // F, t % F
        _unpool_plane(full[n, f].reshape(-1), dy[n, f], y[n, f], use_mask, window[n, f],
                      offsets, 0, out_w, pool_h, pool_w)
    return full


def _flipped(weight):
    return np.ascontiguousarray(weight[:, :, :, ::-1])


def _backward_s1(x, weight, dy, mask, relu, window, pool_h, pool_w, in_h, in_w, pad_top,
                 pad_left, out_h, out_w, weight_grad, input_grad):
    """The stride-1 kernel with its geometry; returns (dx or None, dw, db) in dy's dtype."""
    _, _, KH, KW = weight.shape
    Hp, Wp = _s1_geometry(in_h, in_w, out_h, out_w, KH, KW, pad_top, pad_left)
    # Only the input gradient reads the (flipped) weight; otherwise just its shape.
    flipped = _flipped(weight) if input_grad else weight
    F, C = weight.shape[:2]
    groups = _groups(len(dy), GRAD_CHUNK, max(-(-F // DOT_FILTERS), -(-C // 3)),
                     F * C * KH * KW * out_h * out_w * (weight_grad + input_grad))
    dx, dw, db = _conv2d_backward_s1(x, dy, mask, relu, window, pool_h, pool_w, flipped, in_h,
                                     in_w, pad_top, pad_left, Hp, Wp, out_h, weight_grad,
                                     input_grad, DOT_FILTERS, groups)
    return (dx if input_grad else None), dw.astype(dy.dtype), db.astype(dy.dtype)


_NO_WINDOW = np.zeros((1, 1, 1, 1), dtype=np.uint8)  # the window argument when not pooled


def conv2d_backward(x, weight, dy, y, relu, stride_h, stride_w, pad_top, pad_left, input_grad):
    """All gradients of a convolution in one pass over shared buffers.

    x: (N, C, H, W); weight: (F, C, KH, KW); dy, y: (N, F, OH, OW). With relu, y is the
    fused conv + ReLU output and dy is first zeroed where y <= 0. Returns
    (dx: (N, C, H, W) or None when not input_grad, dw: (F, C, KH, KW), db: (F,)).
    """
    _, _, H, W = x.shape
    _, _, KH, KW = weight.shape
    if stride_h != 1 or stride_w != 1:
        if relu:
            dy = _relu_mask(dy, y)
        dx = None
        if input_grad:
            dx = _conv2d_backward_input_strided(dy, weight, H, W, stride_h, stride_w,
                                                pad_top, pad_left)
        dw_parts, db_parts = _conv2d_weight_partials(x, dy, KH, KW, stride_h, stride_w,
                                                     pad_top, pad_left)
        return dx, _sum_parts(dw_parts), _sum_parts(db_parts)
    _, _, OH, OW = dy.shape
    return _backward_s1(x, weight, dy, y, relu, _NO_WINDOW, 1, 1, H, W, pad_top, pad_left, OH,
                        OW, True, input_grad)


def conv2d_pool_backward(x, weight, dy, y, window, relu, stride_h, stride_w, pad_top, pad_left,
                         out_h, out_w, pool_h, pool_w, input_grad):
    """conv2d_backward through the max-pool after the convolution, in one pass: the
    backward of conv2d_pool_forward_with_indices.

    x: (N, C, H, W); weight: (F, C, KH, KW); dy, y, window: (N, F, out_h // pool_h,
    out_w // pool_w), the pooled output's gradient, the pooled output and the window
    indices (each < pool_h * pool_w). With relu, the gradient reaches each maximum only
    where y > 0. Returns (dx or None, dw, db) as conv2d_backward does.
    """
    _, _, H, W = x.shape
    if stride_h != 1 or stride_w != 1:
        full = _unpooled(dy, y, relu, window, out_h, out_w, pool_h, pool_w)
        return conv2d_backward(x, weight, full, full, False, stride_h, stride_w, pad_top,
                               pad_left, input_grad)
    return _backward_s1(x, weight, dy, y, relu, window, pool_h, pool_w, H, W, pad_top,
                        pad_left, out_h, out_w, True, input_grad)


def conv2d_backward_input(dy, weight, in_h, in_w, stride_h, stride_w, pad_top, pad_left):
    """Gradient of the loss with respect to the convolution's input.

    dy: (N, F, OH, OW); weight: (F, C, KH, KW). Returns dx: (N, C, in_h, in_w).
    """
    if stride_h != 1 or stride_w != 1:
        return _conv2d_backward_input_strided(dy, weight, in_h, in_w, stride_h, stride_w,
                                              pad_top, pad_left)
    _, _, OH, OW = dy.shape
    return _backward_s1(dy, weight, dy, dy, False, _NO_WINDOW, 1, 1, in_h, in_w, pad_top,
                        pad_left, OH, OW, False, True)[0]


def conv2d_backward_weight(x, dy, kernel_h, kernel_w, stride_h, stride_w, pad_top, pad_left):
    """Gradients of the loss with respect to the weight and the bias.

    x: (N, C, H, W); dy: (N, F, OH, OW). Returns (dw: (F, C, KH, KW), db: (F,)).
    """
    if stride_h != 1 or stride_w != 1:
        dw_parts, db_parts = _conv2d_weight_partials(
            x, dy, kernel_h, kernel_w, stride_h, stride_w, pad_top, pad_left
        )
        return _sum_parts(dw_parts), _sum_parts(db_parts)
    _, C, H, W = x.shape
    _, F, OH, OW = dy.shape
    # The kernel reads only the weight's shape on this path.
    shape = np.empty((F, C, kernel_h, kernel_w), dtype=x.dtype)
    return _backward_s1(x, shape, dy, dy, False, _NO_WINDOW, 1, 1, H, W, pad_top, pad_left, OH,
                        OW, True, False)[1:]
