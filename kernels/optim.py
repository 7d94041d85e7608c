"""Optimiser updates: one fused pass over every parameter instead of 3-4 NumPy passes each.

They update their array arguments in place (the one exception to arrays-in,
arrays-out: a copy of every weight per step is what they exist to avoid). Each takes
tuples of flat, contiguous arrays of one dtype, one entry per parameter, so that a step
is one call and one parallel loop, whatever the number of parameters: per-parameter
calls cost more than the update of a small one. Scalars come in that dtype too, so the
arithmetic stays in it and vectorises. Every element is independent, so the parallel
loop gives the same bits for any thread count.
"""

import numpy as np
from numba import prange

from ._jit import jit
from ._tuning import OPTIM_CHUNK as CHUNK


@jit()
def _chunks(params):
    """(owner, start) of every CHUNK-sized piece of the parameters, in order."""
    count = 0
    for i in range(len(params)):
        count += (params[i].shape[0] + CHUNK - 1) // CHUNK
    owner = np.empty(count, dtype=np.int64)
    start = np.empty(count, dtype=np.int64)
    k = 0
    for i in range(len(params)):
        for s in range(0, params[i].shape[0], CHUNK):
            owner[k] = i
            start[k] = s
            k += 1
    return owner, start


@jit(parallel=True, fastmath={"contract"})
def sgd_update(params, grads, velocities, lr, momentum, weight_decay, nesterov):
    """SGD step as in PyTorch. params, grads, velocities: tuples of (P_i,) arrays;
    velocities are unused (may be empty) when momentum == 0."""
    owner, start = _chunks(params)
    for k in prange(owner.shape[0]):
        i = owner[k]
        # Views indexed by a bare range: Numba can prove those indices non-negative, so
        # the loop vectorises (an index from start[k] gets wraparound checks).
        s, e = start[k], min(start[k] + CHUNK, params[i].shape[0])
        param, grad = params[i][s:e], grads[i][s:e]
        velocity = velocities[i][s:e] if momentum != 0 else velocities[i]
        for j in range(e - s):
            g = grad[j] + weight_decay * param[j]
            if momentum != 0:
                v = momentum * velocity[j] + g
                velocity[j] = v
                g = g + momentum * v if nesterov else v
            param[j] -= lr * g


@jit(parallel=True, fastmath={"contract"})
def adam_update(params, grads, ms, vs, step, beta1, beta2, eps, decay):
    """Adam step; `step` is lr with the bias corrections folded in; each parameter is
    first multiplied by `decay` (1 - lr * weight_decay: AdamW's decoupled weight decay;
    exactly 1 for Adam, which leaves every bit as it was). Tuples of (P_i,) arrays:
    parameters, gradients, first and second moments."""
    one = np.ones(1, dtype=params[0].dtype)[0]
    owner, start = _chunks(params)
    for k in prange(owner.shape[0]):
        i = owner[k]
        s, e = start[k], min(start[k] + CHUNK, params[i].shape[0])
        param, grad, m, v = params[i][s:e], grads[i][s:e], ms[i][s:e], vs[i][s:e]
        for j in range(e - s):
            g = grad[j]
            mj = beta1 * m[j] + (one - beta1) * g
            vj = beta2 * v[j] + (one - beta2) * g * g
            m[j] = mj
            v[j] = vj
            param[j] = param[j] * decay - step * mj / (np.sqrt(vj) + eps)
