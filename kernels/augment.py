"""Data augmentation on uint8 image batches: random shifts with zero fill (a random crop
of the zero-padded image) and horizontal flips, drawn by the caller."""

import numpy as np
from numba import prange

from ._jit import jit


@jit(parallel=True)
def shift_flip(images, shifts, flips):
    """images: (N, C, H, W) uint8; shifts: (N, 2) int64, each (dy, dx) with |dy| < H and
    |dx| < W; flips: (N,) bool. Returns out of images' shape and dtype:
    out[n, c, h, w] = images[n, c, h + dy, v + dx], v = W - 1 - w if flips[n] else w,
    and 0 where that lies outside the image. Each sample is one task."""
    N, C, H, W = images.shape
    out = np.zeros_like(images)
    for n in prange(N):
        dy, dx = shifts[n, 0], shifts[n, 1]
        flip = flips[n]
        for c in range(C):
            for h in range(max(0, -dy), min(H, H - dy)):
                src = images[n, c, h + dy]
                dst = out[n, c, h]
                for w in range(W):
                    v = (W - 1 - w if flip else w) + dx
                    if 0 <= v < W:
                        dst[w] = src[v]
    return out
