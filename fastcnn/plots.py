"""PNG reports of a trained model: training curves, confusion matrix, prediction grid.

matplotlib (the optional ``plot`` extra) is imported only when a plot is drawn, so
the rest of fastcnn works without it. Figures are rendered with the Agg canvas
directly rather than through pyplot, so the caller's matplotlib backend and global
figure state are left alone.
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from . import metrics
from .data import CLASS_NAMES
from .fileio import atomic_writer

if TYPE_CHECKING:
    from .model import History, Sequential

__all__ = [
    "MISSING_MATPLOTLIB",
    "check_ready",
    "plot_confusion_matrix",
    "plot_predictions",
    "plot_training_curves",
    "write_plots",
]

MISSING_MATPLOTLIB = "plots need matplotlib: pip install 'fastcnn[plot]'"
DPI = 110
MISTAKE = "#c62828"
CORRECT = "#1b5e20"


def _figure(figsize: tuple[float, float]) -> Any:
    """A Figure on an Agg canvas; ImportError naming the extra if matplotlib is missing."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise ImportError(MISSING_MATPLOTLIB) from None
    fig = Figure(figsize=figsize, dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Any, path: str | os.PathLike) -> Path:
    # Render fully in memory first so a failed draw never leaves a partial file behind.
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    with atomic_writer(path) as f:
        f.write(buf.getvalue())
    return Path(path)


def check_ready(out_dir: str | os.PathLike) -> None:
    """Fail fast (before any long computation) if plots cannot be written to `out_dir`.

    Raises ImportError if matplotlib is missing, NotADirectoryError if `out_dir`
    exists and is not a directory.
    """
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise ImportError(MISSING_MATPLOTLIB) from None
    if Path(out_dir).exists() and not Path(out_dir).is_dir():
        raise NotADirectoryError(f"{out_dir}: exists and is not a directory")


def _class_names(k: int, class_names: Sequence[str] | None) -> list[str]:
    if class_names is None:
        class_names = CLASS_NAMES if k == len(CLASS_NAMES) else [str(i) for i in range(k)]
    if len(class_names) != k:
        raise ValueError(f"{len(class_names)} class names for {k} classes")
    return [str(c) for c in class_names]


def plot_training_curves(history: History, path: str | os.PathLike) -> Path:
    """Loss per batch and per epoch (left), test accuracy and macro F1 per epoch (right)."""
    epochs = len(history.loss)
    if epochs == 0:
        raise ValueError("history holds no completed epoch")
    has_val = bool(history.val_accuracy)
    fig = _figure((11, 4.5) if has_val else (6.5, 4.5))
    axes = fig.subplots(1, 2 if has_val else 1, squeeze=False)[0]

    ax = axes[0]
    ep = np.arange(1, epochs + 1)
    batch = np.asarray(history.batch_loss, dtype=np.float64)
    if batch.size:
        # Batches are spread evenly over each epoch, so the x axis reads in epochs.
        x = np.arange(1, batch.size + 1) * (epochs / batch.size)
        ax.plot(x, batch, color="#64b5f6", lw=0.7, alpha=0.8, label="batch loss")
        window = int(min(max(2, batch.size // 25), 100))
        if batch.size >= 3 * window:
            running = np.convolve(batch, np.ones(window) / window, mode="valid")
            ax.plot(x[window - 1:], running, color="#1565c0", lw=1.6,
                    label=f"running mean ({window} batches)")
    ax.plot(ep, history.loss, "o-", color="#0d47a1", ms=6, lw=1.2, label="train loss (epoch mean)")
    if history.val_loss:
        ax.plot(ep[:len(history.val_loss)], history.val_loss, "s--", color="#e65100", ms=6,
                lw=1.2, label="test loss")
    ax.set_xlabel("epoch", fontsize=11)
    ax.set_ylabel("cross-entropy loss", fontsize=11)
    ax.set_title("Loss", fontsize=12)
    ax.set_xlim(0, epochs * 1.02)
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=9)
    _integer_epochs(ax, epochs, first=0)

    if has_val:
        ax = axes[1]
        n = len(history.val_accuracy)
        ax.plot(ep[:n], history.val_accuracy, "o-", color="#2e7d32", ms=6, label="test accuracy")
        for e, a in zip(ep[:n], history.val_accuracy, strict=True):
            ax.annotate(f"{a:.3f}", (e, a), textcoords="offset points", xytext=(0, 8),
                        ha="center", fontsize=9)
        if history.val_macro_f1:
            m = len(history.val_macro_f1)
            ax.plot(ep[:m], history.val_macro_f1, "^--", color="#6a1b9a", ms=5, lw=1,
                    label="test macro F1")
        scores = history.val_accuracy + history.val_macro_f1
        ax.set_ylim(max(0.0, min(scores) - 0.05), min(1.0, max(scores) + 0.04))
        ax.set_xlim(0.5, epochs + 0.5)
        ax.set_xlabel("epoch", fontsize=11)
        ax.set_ylabel("score", fontsize=11)
        ax.set_title("Test accuracy", fontsize=12)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=9, loc="lower right")
        _integer_epochs(ax, epochs, first=1)
    return _save(fig, path)


def _integer_epochs(ax: Any, epochs: int, first: int) -> None:
    if epochs <= 12:
        ax.set_xticks(range(first, epochs + 1))
    else:
        from matplotlib.ticker import MaxNLocator

        ax.xaxis.set_major_locator(MaxNLocator(nbins=10, integer=True))


def plot_confusion_matrix(cm: np.ndarray, path: str | os.PathLike,
                          class_names: Sequence[str] | None = CLASS_NAMES) -> Path:
    """Heatmap of a (true x predicted) count matrix, with the counts written in the cells.

    Colour is the share of each true class (row), so classes of different sizes compare fairly.
    """
    cm = np.asarray(cm)
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1] or cm.shape[0] == 0:
        raise ValueError(f"confusion matrix must be square, got shape {cm.shape}")
    k = cm.shape[0]
    names = _class_names(k, class_names)
    rows = cm.sum(axis=1, keepdims=True)
    share = np.divide(cm, rows, out=np.zeros(cm.shape, dtype=np.float64), where=rows > 0)
    size = max(6.0, 0.62 * k + 2.5)
    fig = _figure((size + 1.2, size))
    ax = fig.subplots()
    im = ax.imshow(share, cmap="Blues", vmin=0.0, vmax=1.0)
    cbar = fig.colorbar(im, ax=ax, fraction=0.046, pad=0.03)
    cbar.set_label("share of the true class", fontsize=10)
    fontsize = 9 if cm.max() < 10000 else 7
    for i in range(k):
        for j in range(k):
            count = int(cm[i, j])
            colour = "white" if share[i, j] > 0.55 else ("#9e9e9e" if count == 0 else "black")
            ax.text(j, i, str(count), ha="center", va="center", color=colour, fontsize=fontsize,
                    fontweight="bold" if i == j else "normal")
    ax.set_xticks(range(k))
    ax.set_yticks(range(k))
    ax.set_xticklabels(names, rotation=45, ha="right", rotation_mode="anchor", fontsize=10)
    ax.set_yticklabels(names, fontsize=10)
    ax.set_xlabel("predicted class", fontsize=11)
    ax.set_ylabel("true class", fontsize=11)
    total = int(cm.sum())
    acc = np.trace(cm) / total if total else float("nan")
    ax.set_title(f"Confusion matrix ({total} test images, accuracy {acc:.3f})", fontsize=12)
    return _save(fig, path)


def _pick(y_true: np.ndarray, y_pred: np.ndarray, n: int) -> tuple[np.ndarray, int]:
    """Up to `n` indices, mistakes first (at most half of them), spread over the data."""
    wrong = np.flatnonzero(y_true != y_pred)
    right = np.flatnonzero(y_true == y_pred)
    n_wrong = min(len(wrong), max(n // 2, n - len(right)))
    n_right = min(len(right), n - n_wrong)

    def spread(idx: np.ndarray, m: int) -> np.ndarray:
        # Evenly spaced picks, deterministic and not all from the start of the test set.
        return idx[np.linspace(0, len(idx) - 1, m).round().astype(int)] if m else idx[:0]

    return np.concatenate([spread(wrong, n_wrong), spread(right, n_right)]), n_wrong


def plot_predictions(images: np.ndarray, y_true: np.ndarray, y_pred: np.ndarray,
                     path: str | os.PathLike, class_names: Sequence[str] | None = CLASS_NAMES,
                     n: int = 36) -> Path:
    """A grid of up to `n` images titled with true and predicted class; mistakes in red first.

    Up to half the grid is mistakes (more than their share, so they can be studied); the
    figure title says so and gives the real error rate.
    """
    images = np.asarray(images)
    if images.ndim == 4 and images.shape[1] == 1:
        images = images[:, 0]
    if images.ndim != 3:
        raise ValueError(f"images must be (N, H, W) or (N, 1, H, W), got {images.shape}")
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    if not len(images) == len(y_true) == len(y_pred):
        raise ValueError(f"{len(images)} images, {len(y_true)} labels, {len(y_pred)} predictions")
    if len(images) == 0 or n < 1:
        raise ValueError("nothing to show: no images or n < 1")
    k = int(max(y_true.max(), y_pred.max())) + 1
    names = _class_names(len(class_names) if class_names is not None else k, class_names)
    if k > len(names):
        raise ValueError(f"label {k - 1} has no class name ({len(names)} names)")

    chosen, n_wrong = _pick(y_true, y_pred, n)
    cols = min(len(chosen), max(1, math.ceil(math.sqrt(len(chosen)))))
    rows = math.ceil(len(chosen) / cols)
    fig = _figure((max(4.0, 1.65 * cols), 1.3 + 1.95 * rows))
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    # uint8 pixels keep their absolute scale; floats (already normalised) use their own range.
    lo, hi = (0, 255) if images.dtype == np.uint8 else (float(images.min()), float(images.max()))
    for ax, i in zip(axes, chosen, strict=False):
        ok = y_true[i] == y_pred[i]
        ax.imshow(images[i], cmap="gray", vmin=lo, vmax=hi, interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        colour = CORRECT if ok else MISTAKE
        ax.set_title(f"true: {names[y_true[i]]}\npred: {names[y_pred[i]]}", fontsize=8.5,
                     color=colour, fontweight="normal" if ok else "bold")
        for spine in ax.spines.values():
            spine.set_edgecolor(colour)
            spine.set_linewidth(1 if ok else 3.5)
    for ax in axes[len(chosen):]:
        ax.axis("off")
    errors = int(np.sum(y_true != y_pred))
    fig.suptitle(f"{len(chosen)} test images: {n_wrong} mistakes (red, shown first), "
                 f"{len(chosen) - n_wrong} correct\nwhole test set: {errors} of {len(y_true)} "
                 f"wrong ({errors / len(y_true):.1%})", fontsize=11)
    return _save(fig, path)


def write_plots(model: Sequential, history: History | None, x_test: np.ndarray,
                y_test: np.ndarray, out_dir: str | os.PathLike, *,
                y_pred: np.ndarray | None = None) -> list[Path]:
    """Write training_curves.png (if `history` has epochs), confusion_matrix.png and
    predictions.png into `out_dir`; returns the paths written.

    Pass `y_pred` if the test predictions are already known, to skip predicting again.
    """
    check_ready(out_dir)
    out = Path(out_dir)
    written = []
    if history is not None and history.loss:
        written.append(plot_training_curves(history, out / "training_curves.png"))
    if len(x_test):
        k = int(model.output_shape[0])
        y_test = np.asarray(y_test)
        if y_pred is None:
            y_pred = model.predict(x_test).argmax(axis=1)
        names = _class_names(k, None)
        cm = metrics.confusion_matrix(y_test, y_pred, k)
        written.append(plot_confusion_matrix(cm, out / "confusion_matrix.png", names))
        written.append(plot_predictions(x_test, y_test, y_pred, out / "predictions.png", names))
    return written
