"""Plane copies of the flat-row convolution (see `flat`): padding a plane into a flat
grid of pitch Wp, with the ReLU and max-pool backward passes fused into the copy, and
cropping or max-pooling the rows of such a grid back out.
"""

import numpy as np
from numba import prange, uint8, uint64

from .._jit import jit


@jit(inline="always")
def flat_plane(dst, src, mask, relu, before, top, left, Wp):
    """Write every element of dst: zeros, with the (H, W) plane src placed at row `top`,
    column `left` of a pitch-Wp grid that starts at dst[before].

    With relu, src is taken as zero where mask (same shape) is <= 0: the ReLU backward
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
        if relu:
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
def window_offsets(pool_h, pool_w, Wp):
    """The offset a * Wp + b of each window index a * pool_w + b in a pitch-Wp grid."""
    offsets = np.empty(pool_h * pool_w, dtype=np.uint64)
    for a in range(pool_h):
        for b in range(pool_w):
            offsets[a * pool_w + b] = a * Wp + b
    return offsets


@jit(inline="always")
def unpool_plane(dst, g, mask, relu, indices, offsets, before, Wp, pool_h, pool_w):
    """Write every element of dst: zeros, with each pooled gradient g[i, j] (PH, PW) at
    its window's maximum, row i * pool_h + a and column j * pool_w + b of the pitch-Wp
    grid that starts at dst[before], where indices[i, j] = a * pool_w + b and
    offsets = window_offsets(pool_h, pool_w, Wp).

    With relu, g is taken as zero where mask (the pooled ReLU output) is <= 0: the
    ReLU gradient at each window's maximum. indices values must be < pool_h * pool_w.
    """
    PH, PW = g.shape
    for p in range(dst.shape[0]):
        dst[p] = 0
    gs, ms, ws = g.reshape(-1), mask.reshape(-1), indices.reshape(-1)
    for i in range(uint64(PH)):
        row = uint64(before) + i * uint64(pool_h * Wp)
        for j in range(uint64(PW)):
            q = i * uint64(PW) + j
            if not relu or ms[q] > 0:
                dst[row + j * uint64(pool_w) + offsets[ws[q]]] = gs[q]


@jit(inline="always")
def crop_rows(dst, src, left, Wp, relu):
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
def pool_rows(dst, win, src, Wp, relu, pool_h, pool_w, want_indices):
    """dst (PH, PW) = max over non-overlapping pool_h x pool_w windows of the rows of
    pitch Wp in src, ReLU'd first if relu; with want_indices, win (PH, PW) gets the index
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
                if want_indices:
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
            if want_indices:
                w[i * PW + j] = where



@jit()
def sum_parts(parts):
    """Sum over the leading axis in a fixed order."""
    out = parts[0].copy()
    flat = out.reshape(-1)
    for k in range(1, parts.shape[0]):
        src = parts[k].reshape(-1)
        for t in range(flat.size):
            flat[t] += src[t]
    return out



@jit(parallel=True)
def window_of(argmax, W, pool_h, pool_w):
    """maxpool2d_forward's argmax (flat h * W + w) as offsets inside each window (uint8)."""
    N, C, PH, PW = argmax.shape
    indices = np.empty((N, C, PH, PW), dtype=np.uint8)
    for t in prange(N * C):
        n, c = t // C, t % C
        for i in range(PH):
            for j in range(PW):
                h, w = argmax[n, c, i, j] // W, argmax[n, c, i, j] % W
                indices[n, c, i, j] = (h - i * pool_h) * pool_w + w - j * pool_w
    return indices


@jit(parallel=True)
def unpooled(dy, y, relu, indices, out_h, out_w, pool_h, pool_w):
    """The pool's backward pass (and the ReLU's, with relu) as a full gradient
    (N, F, out_h, out_w), for the matrix path (`gemm`)."""
    N, F, _, _ = dy.shape
    full = np.empty((N, F, out_h, out_w), dtype=dy.dtype)
    offsets = window_offsets(pool_h, pool_w, out_w)
    for t in prange(N * F):
        n, f = t // F, t % F
        unpool_plane(full[n, f].reshape(-1), dy[n, f], y[n, f], relu, indices[n, f],
                      offsets, 0, out_w, pool_h, pool_w)
    return full

