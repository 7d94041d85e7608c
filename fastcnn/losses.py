"""Softmax cross-entropy, fused for numerical stability."""

from __future__ import annotations

import numpy as np

from . import functional, ops


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


class SoftmaxCrossEntropy:
    """Mean cross-entropy of softmax(logits) against integer labels.

    Calling it returns the loss and keeps its gradient for `backward`."""

    def __init__(self, backend: str = "numba") -> None:
        ops.backend_module(backend)  # validates the name
        self.backend = backend
        self._grad: np.ndarray | None = None

    def __call__(self, logits: np.ndarray, labels: np.ndarray) -> float:
        if type(logits) is np.ndarray and logits.ndim == 2 and len(logits) > 0 \
                and logits.dtype in functional.FLOAT_DTYPES and logits.flags.c_contiguous \
                and logits.flags.writeable and type(labels) is np.ndarray \
                and labels.dtype == np.int64 and labels.shape == (len(logits),) \
                and labels.flags.c_contiguous:
            # What a training step passes: straight to the kernel, which checks the labels.
            loss, grad, bad = ops.softmax_cross_entropy(self.backend, logits, labels)
            if bad < 0:
                self._grad = grad
                return loss
        # Anything else, or a label out of range: functional's checks and messages.
        loss, self._grad = functional.softmax_cross_entropy(logits, labels, backend=self.backend)
        return loss

    def backward(self) -> np.ndarray:
        """dloss/dlogits of the last call (the same array until the next call)."""
        if self._grad is None:
            raise RuntimeError("SoftmaxCrossEntropy.backward called before the loss")
        return self._grad
