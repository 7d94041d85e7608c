"""Softmax cross-entropy over a mini-batch: the mean loss and its gradient in one pass.

logits: (N, K), C-contiguous float32 or float64; labels: (N,) int64. The Python layer
(`fastcnn.functional`) checks shapes and dtypes; the kernel checks every label against
K before it indexes with it. Sums and exponentials are taken in float64, but each
sample's loss is rounded to the logits' dtype, as a framework computing in that dtype
would: a loss beyond its range is infinite, so training stops when the float32 network
has diverged rather than some batches later.

One pass instead of a dozen NumPy calls, each of which would sweep the batch again
through caches already full of activations (bench/README.md has the figures).
"""

import math

import numpy as np

from ._jit import jit


@jit()
def softmax_cross_entropy(logits, labels):
    """Returns (mean loss, dlogits: (N, K), both in logits' dtype, and the index of the
    first label outside [0, K) or -1). The loss is NaN if any logit in the batch is NaN."""
    N, K = logits.shape
    grad = np.empty_like(logits)
    rounded = np.empty(1, dtype=logits.dtype)  # stores round to the logits' dtype
    total = 0.0
    for n in range(N):
        label = labels[n]
        if label < 0 or label >= K:
            return math.nan, grad, n
        row = logits[n]
        g = grad[n]
        top = np.float64(row[0])
        for k in range(1, K):
            if row[k] > top:
                top = np.float64(row[k])
        s = 0.0
        for k in range(K):
            s += math.exp(np.float64(row[k]) - top)
        log_norm = math.log(s)
        rounded[0] = log_norm - (np.float64(row[label]) - top)
        total += rounded[0]
        for k in range(K):
            g[k] = math.exp(np.float64(row[k]) - top - log_norm) / N
        g[label] -= 1.0 / N
    rounded[0] = total / N
    return rounded[0], grad, -1
