"""Inverted dropout: the forward and backward pass are one kernel, given the mask."""

import numpy as np
from numba import prange

from ._jit import jit


@jit(parallel=True)
def dropout_apply(x, keep, scale):
    """x * scale where keep, else x * 0 (a NaN stays NaN, as in PyTorch's x * mask).

    x: any shape, C-contiguous; keep: bool, x's shape; scale: 1 / (1 - rate). The
    forward pass applies it to the input, the backward pass to the output gradient."""
    out = np.empty_like(x)
    flat, mask, o = x.reshape(-1), keep.reshape(-1), out.reshape(-1)
    consts = np.empty(2, dtype=x.dtype)  # 0 and scale in the data dtype
    consts[0] = 0
    consts[1] = scale
    zero, factor = consts[0], consts[1]
    for p in prange(flat.shape[0]):
        o[p] = flat[p] * (factor if mask[p] else zero)
    return out
