"""Softmax cross-entropy, fused for numerical stability."""

from __future__ import annotations

import numpy as np


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


class SoftmaxCrossEntropy:
    """Mean cross-entropy of softmax(logits) against integer labels."""

    def __init__(self) -> None:
        self._probs = None
        self._labels = None

    def __call__(self, logits: np.ndarray, labels: np.ndarray) -> float:
        if logits.ndim != 2:
            raise ValueError(f"logits must be (N, classes), got shape {logits.shape}")
        labels = np.asarray(labels)
        if labels.shape != (logits.shape[0],) or not np.issubdtype(labels.dtype, np.integer):
            raise ValueError(f"labels must be {logits.shape[0]} integers, got "
                             f"shape {labels.shape} dtype {labels.dtype}")
        if labels.size and (labels.min() < 0 or labels.max() >= logits.shape[1]):
            raise ValueError(f"labels must lie in [0, {logits.shape[1]}), got "
                             f"[{labels.min()}, {labels.max()}]")
        z = logits - logits.max(axis=1, keepdims=True)
        log_norm = np.log(np.exp(z).sum(axis=1))
        rows = np.arange(len(labels))
        self._probs = np.exp(z - log_norm[:, None])
        self._labels = labels
        return float(np.mean(log_norm - z[rows, labels]))

    def backward(self) -> np.ndarray:
        if self._probs is None:
            raise RuntimeError("SoftmaxCrossEntropy.backward called before the loss")
        grad = self._probs.copy()
        grad[np.arange(len(self._labels)), self._labels] -= 1
        return (grad / len(self._labels)).astype(self._probs.dtype, copy=False)
