"""Optimiser updates: one fused pass over each parameter instead of 3-4 NumPy passes.

They update their array arguments in place (the one exception to arrays-in,
arrays-out: a copy of every weight per step is what they exist to avoid). All
arrays are flat, contiguous and of one dtype; scalars come in that dtype too, so
the arithmetic stays in it and vectorises. Every element is independent, so the
parallel loops give the same bits for any thread count.
"""

import numpy as np
from numba import prange

from ._jit import jit


@jit(parallel=True, fastmath={"contract"})
def sgd_update(param, grad, velocity, lr, momentum, weight_decay, nesterov):
    """SGD step as in PyTorch. param, grad, velocity: (P,); velocity unused if momentum == 0."""
    for i in prange(param.shape[0]):
        g = grad[i] + weight_decay * param[i]
        if momentum != 0:
            v = momentum * velocity[i] + g
            velocity[i] = v
            g = g + momentum * v if nesterov else v
        param[i] -= lr * g


@jit(parallel=True, fastmath={"contract"})
def adam_update(param, grad, m, v, step, beta1, beta2, eps):
    """Adam step; `step` is lr with the bias corrections folded in. All arrays (P,)."""
    one = np.ones(1, dtype=param.dtype)[0]
    for i in prange(param.shape[0]):
        g = grad[i]
        mi = beta1 * m[i] + (one - beta1) * g
        vi = beta2 * v[i] + (one - beta2) * g * g
        m[i] = mi
        v[i] = vi
        param[i] -= step * mi / (np.sqrt(vi) + eps)
