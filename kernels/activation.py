"""Element-wise activations and their gradients: ReLU, leaky ReLU, sigmoid and tanh.

One kernel each way, the activation chosen by a code (so one compiled function serves
every kind). ReLU, leaky ReLU and every gradient are computed in float64 and rounded once
to the data dtype; sigmoid and tanh in the data's precision (`mathf`: float32 inputs
get vectorised float32 functions within 2.5 ulp, float64 inputs libm). Each element
depends on nothing else, so no result depends on the thread count. A NaN stays NaN.
"""

import numpy as np
from numba import prange

from ._jit import jit
from .mathf import sigmoid, tanh

RELU, LEAKY_RELU, SIGMOID, TANH = 0, 1, 2, 3


@jit(parallel=True)
def activation_forward(x, kind, slope):
    """y = f(x) for kind RELU, LEAKY_RELU (slope for x < 0), SIGMOID or TANH.
    x: any shape, C-contiguous; returns y of x's shape and dtype."""
    out = np.empty_like(x)
    src, dst = x.reshape(-1), out.reshape(-1)
    # One loop per kind: a loop with no branch in it is one that vectorises.
    if kind == SIGMOID:
        for p in prange(src.shape[0]):
            dst[p] = sigmoid(src[p])
    elif kind == TANH:
        for p in prange(src.shape[0]):
            dst[p] = tanh(src[p])
    else:
        for p in prange(src.shape[0]):
            v = np.float64(src[p])
            dst[p] = v * (0.0 if kind == RELU else slope) if v < 0 else v
    return out


@jit(parallel=True)
def activation_backward(dy, saved, kind, slope):
    """dx = dy * f'(x). saved: x for RELU and LEAKY_RELU, y = f(x) for SIGMOID and TANH
    (their derivatives are y (1 - y) and 1 - y^2); dy and saved of one shape."""
    out = np.empty_like(dy)
    g, s, dst = dy.reshape(-1), saved.reshape(-1), out.reshape(-1)
    for p in prange(g.shape[0]):
        d = np.float64(g[p])
        v = np.float64(s[p])
        if kind == RELU:
            r = d if v > 0 else 0.0
        elif kind == LEAKY_RELU:
            r = d if v > 0 else d * slope
        elif kind == SIGMOID:
            r = d * v * (1.0 - v)
        else:
            r = d * (1.0 - v * v)
        dst[p] = r
    return out
