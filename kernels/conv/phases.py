"""A strided convolution as a stride-1 one over the input's phases (space-to-depth).

With stride (sh, sw), output (i, j) reads padded input row sh * i + kh, column
sw * j + kw. Writing kh = sh * a + p and kw = sw * b + q (0 <= p < sh, 0 <= q < sw), it
reads row i + a, column j + b of the phase plane (p, q), which holds the padded input's
rows p, p + sh, ... and columns q, q + sw, .... So the convolution is a stride-1, 'valid'
one over C * sh * sw phase channels with a ceil(KH / sh) x ceil(KW / sw) kernel whose taps
beyond the original kernel are zero: the fast stride-1 kernels of `flat` run it (fused
ReLU and pooling included), at the cost of those zero taps, which `worth_phases` weighs.

Phase channel (c * sh + p) * sw + q holds channel c's phase (p, q), the order of
reshaping a (C, sh, sw) axis triple, so the weight maps with plain NumPy slicing.

The zero taps multiply input values (or, in the input gradient, output gradients) that
the convolution itself never combines: exact while those are finite, but 0 * inf and
0 * NaN are NaN, which would reach outputs the value does not touch. So the phase form
runs only on finite data (`all_finite`); the caller takes another path otherwise.
"""

import numpy as np
from numba import prange

from .._jit import jit

# Zero taps the phase kernel may add, as a multiple of the original taps, for the stride-1
# kernels still to beat the other paths (3x3 stride 2: 16 / 9; see bench/README.md).
MAX_TAP_GROWTH = 2.0


def phase_kernel(kernel_h: int, kernel_w: int, stride_h: int, stride_w: int) -> tuple[int, int]:
    """(KH', KW'): the kernel over the phase planes."""
    return -(-kernel_h // stride_h), -(-kernel_w // stride_w)


def worth_phases(kernel_h: int, kernel_w: int, stride_h: int, stride_w: int) -> bool:
    """True when the phase form of a strided convolution adds few enough zero taps."""
    if stride_h == 1 and stride_w == 1:
        return False
    kh, kw = phase_kernel(kernel_h, kernel_w, stride_h, stride_w)
    return kh * kw * stride_h * stride_w <= MAX_TAP_GROWTH * kernel_h * kernel_w


@jit()
def all_finite(a):
    """True when every element of the C-contiguous float32 or float64 array a is finite.

    One thread: the loop is memory-bound and vectorised (13 us for 200k float32), less
    than waking the others would cost."""
    if a.itemsize == 4:
        return _exponents_below(a.reshape(-1).view(np.uint32), np.uint32(0x7F800000))
    return _exponents_below(a.reshape(-1).view(np.uint64), np.uint64(0x7FF0000000000000))


@jit(inline="always")
def _exponents_below(bits, mask):
    """True unless some element's exponent bits are all ones (NaN or infinity): an
    integer maximum, which vectorises with no fast-math flags."""
    m = mask - mask  # of mask's unsigned type: mixing it with int64 would give float64
    for i in range(bits.size):
        v = bits[i] & mask
        m = v if v > m else m
    return m < mask


@jit(parallel=True)
def to_phases(x, stride_h, stride_w, pad_top, pad_left, Hq, Wq):
    """The phase planes of the zero-padded input.

    x: (N, C, H, W). Returns xq: (N, C * stride_h * stride_w, Hq, Wq), where
    xq[n, (c * stride_h + p) * stride_w + q, u, v] = x[n, c, stride_h * u + p - pad_top,
    stride_w * v + q - pad_left], zero outside x.
    """
    N, C, H, W = x.shape
    xq = np.zeros((N, C * stride_h * stride_w, Hq, Wq), dtype=x.dtype)
    for n in prange(N):
        for c in range(C):
            for p in range(stride_h):
                for q in range(stride_w):
                    k = (c * stride_h + p) * stride_w + q
                    # Columns v with 0 <= stride_w * v + q - pad_left < W.
                    v0 = max(0, -(-(pad_left - q) // stride_w))
                    v1 = min(Wq, (W - 1 + pad_left - q) // stride_w + 1)
                    for u in range(Hq):
                        i = stride_h * u + p - pad_top
                        if 0 <= i < H:
                            dst = xq[n, k, u]
                            src = x[n, c, i]
                            for v in range(v0, v1):
                                dst[v] = src[stride_w * v + q - pad_left]
    return xq


@jit(parallel=True)
def from_phases(dxq, C, stride_h, stride_w, pad_top, pad_left, H, W):
    """The input gradient from the phase planes' gradient: to_phases' adjoint.

    dxq: (N, C * stride_h * stride_w, Hq, Wq). Returns dx: (N, C, H, W); an input that
    no phase plane holds (beyond the last output's window) gets zero.
    """
    N, _, Hq, Wq = dxq.shape
    dx = np.zeros((N, C, H, W), dtype=dxq.dtype)
    for n in prange(N):
        for c in range(C):
            for i in range(H):
                u, p = divmod(i + pad_top, stride_h)
                if u >= Hq:
                    continue
                for j in range(W):
                    v, q = divmod(j + pad_left, stride_w)
                    if v < Wq:
                        dx[n, c, i, j] = dxq[n, (c * stride_h + p) * stride_w + q, u, v]
    return dx


def phase_weight(weight: np.ndarray, stride_h: int, stride_w: int) -> np.ndarray:
    """(F, C, KH, KW) -> (F, C * stride_h * stride_w, KH', KW'), zero-filled taps."""
    F, C, KH, KW = weight.shape
    kh, kw = phase_kernel(KH, KW, stride_h, stride_w)
    wq = np.zeros((F, C, stride_h, stride_w, kh, kw), dtype=weight.dtype)
    for p in range(stride_h):
        for q in range(stride_w):
            taps = weight[:, :, p::stride_h, q::stride_w]
            wq[:, :, p, q, :taps.shape[2], :taps.shape[3]] = taps
    return wq.reshape(F, C * stride_h * stride_w, kh, kw)


def unphase_weight(dwq: np.ndarray, kernel_h: int, kernel_w: int, stride_h: int,
                   stride_w: int) -> np.ndarray:
    """phase_weight's inverse for a gradient (..., F, C * sh * sw, KH', KW') ->
    (..., F, C, KH, KW): the zero taps' gradients are dropped."""
    *lead, F, Cq, kh, kw = dwq.shape
    C = Cq // (stride_h * stride_w)
    parts = dwq.reshape(*lead, F, C, stride_h, stride_w, kh, kw)
    dw = np.empty((*lead, F, C, kernel_h, kernel_w), dtype=dwq.dtype)
    for p in range(stride_h):
        for q in range(stride_w):
            taps = dw[..., p::stride_h, q::stride_w]
            taps[...] = parts[..., p, q, :taps.shape[-2], :taps.shape[-1]]
    return dw
