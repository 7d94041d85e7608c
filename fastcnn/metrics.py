"""Classification metrics (accuracy, confusion matrix, per-class P/R/F1, loss)."""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike

__all__ = ["accuracy", "confusion_matrix", "macro_f1", "precision_recall_f1", "scores"]


def _check_num_classes(num_classes: int) -> int:
    if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)):
        raise ValueError(f"num_classes must be an integer, got {num_classes!r}")
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    return int(num_classes)


def _check_labels(values: ArrayLike, arg: str, num_classes: int | None) -> np.ndarray:
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise ValueError(f"{arg} must be 1-D, got shape {arr.shape}")
    if arr.size == 0:
        # np.asarray([]) is float64; an empty list is still valid label data.
        return arr.astype(np.int64)
    if not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"{arg} must hold integer class labels, got dtype {arr.dtype}")
    lo, hi = int(arr.min()), int(arr.max())
    if lo < 0 or (num_classes is not None and hi >= num_classes):
        bad = lo if lo < 0 else hi
        limit = "" if num_classes is None else f" [0, {num_classes})"
        raise ValueError(f"{arg} has label {bad} outside{limit or ' [0, inf)'}")
    return arr.astype(np.int64, copy=False)


def _check_pair(
    y_true: ArrayLike, y_pred: ArrayLike, num_classes: int | None
) -> tuple[np.ndarray, np.ndarray]:
    t = _check_labels(y_true, "y_true", num_classes)
    p = _check_labels(y_pred, "y_pred", num_classes)
    if len(t) != len(p):
        raise ValueError(f"y_true and y_pred differ in length: {len(t)} vs {len(p)}")
    return t, p


def accuracy(y_true: ArrayLike, y_pred: ArrayLike) -> float:
    """Fraction of predictions equal to the true label."""
    t, p = _check_pair(y_true, y_pred, None)
    if len(t) == 0:
        raise ValueError("y_true is empty: accuracy is undefined")
    return float(np.mean(t == p))


def confusion_matrix(y_true: ArrayLike, y_pred: ArrayLike, num_classes: int = 10) -> np.ndarray:
    """Counts as an int64 (num_classes, num_classes) matrix: rows true, columns predicted."""
    k = _check_num_classes(num_classes)
    t, p = _check_pair(y_true, y_pred, k)
    return np.bincount(t * k + p, minlength=k * k).reshape(k, k).astype(np.int64, copy=False)


def precision_recall_f1(
    y_true: ArrayLike, y_pred: ArrayLike, num_classes: int = 10
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per-class (precision, recall, f1, support); 0 where a ratio is 0/0.

    Matches scikit-learn's ``precision_recall_fscore_support(zero_division=0)``.
    """
    cm = confusion_matrix(y_true, y_pred, num_classes)
    tp = np.diag(cm).astype(np.float64)
    predicted = cm.sum(axis=0)
    support = cm.sum(axis=1)
    # F1 as 2tp / (2tp + fp + fn), like scikit-learn, rather than from rounded P and R.
    f1_denom = predicted + support
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    recall = np.divide(tp, support, out=np.zeros_like(tp), where=support > 0)
    f1 = np.divide(2.0 * tp, f1_denom, out=np.zeros_like(tp), where=f1_denom > 0)
    return precision, recall, f1, support.astype(np.int64, copy=False)


def macro_f1(y_true: ArrayLike, y_pred: ArrayLike, num_classes: int = 10) -> float:
    """Unweighted mean of the per-class F1 over all ``num_classes`` classes."""
    return float(np.mean(precision_recall_f1(y_true, y_pred, num_classes)[2]))


def scores(y_true: ArrayLike, probs: np.ndarray) -> dict[str, float]:
    """Cross-entropy loss, accuracy and macro F1 from class probabilities (N, classes)."""
    probs = np.asarray(probs)
    if probs.ndim != 2:
        raise ValueError(f"probs must be (N, classes), got shape {probs.shape}")
    y = _check_labels(y_true, "y_true", probs.shape[1])
    if len(y) != len(probs):
        raise ValueError(f"y_true has {len(y)} labels for {len(probs)} rows of probs")
    pred = probs.argmax(axis=1)
    eps = np.finfo(probs.dtype).tiny  # a zero probability gives a large, finite loss
    return {
        "loss": float(-np.mean(np.log(probs[np.arange(len(y)), y] + eps))),
        "accuracy": accuracy(y, pred),
        "macro_f1": macro_f1(y, pred, probs.shape[1]),
    }
