"""python -m fastcnn.evaluate: score a saved model on the test split.

Prints accuracy, macro F1, per-class precision/recall/F1 and the confusion matrix;
optionally writes them as JSON and draws the confusion matrix and a grid of
predictions as PNGs.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from typing import TypeVar

import numpy as np

from . import metrics
from .cli import ArgumentParser, CLIError, run_cli, threads_option
from .compiling import compile_progress
from .data import CLASS_NAMES, DataError, load_dataset
from .fileio import atomic_write_text
from .model import Sequential

__all__ = ["SHORT_NAMES", "build_parser", "evaluate", "format_report", "main"]

T = TypeVar("T")

# At most 7 characters, so the ten-column text confusion matrix stays under 90 columns.
SHORT_NAMES: tuple[str, ...] = (
    "T-shirt", "Trouser", "Pullovr", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Boot",
)


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="python -m fastcnn.evaluate", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", metavar="MODEL.npz", help="a model saved by fastcnn.train --out")
    p.add_argument("--dataset", choices=("fashion-mnist", "sample"), default="fashion-mnist",
                   help="full Fashion-MNIST, or the small sample shipped with fastcnn")
    p.add_argument("--data-dir", default=None, help="folder holding the *-ubyte.gz files")
    p.add_argument("--json", metavar="PATH", default=None, help="write the report as JSON here")
    p.add_argument("--plots", metavar="DIR", default=None,
                   help="write confusion_matrix.png and predictions.png here (needs matplotlib)")
    p.add_argument("--threads", type=int, default=None, help="Numba threads (all cores)")
    return p


def evaluate(model: Sequential, x: np.ndarray, y: np.ndarray,
             class_names: Sequence[str] = CLASS_NAMES) -> tuple[dict, np.ndarray]:
    """The report dict (accuracy, macro_f1, loss, per_class, confusion_matrix) and predictions."""
    k = int(model.output_shape[0])
    if len(class_names) != k:
        raise ValueError(f"{len(class_names)} class names for a model with {k} outputs")
    probs = model.predict(x)
    pred = probs.argmax(axis=1)
    y = np.asarray(y, dtype=np.int64)
    precision, recall, f1, support = metrics.precision_recall_f1(y, pred, k)
    summary = metrics.scores(y, probs)  # the numbers Sequential.evaluate gives
    report = {
        "n": len(y),
        "accuracy": summary["accuracy"],
        "macro_f1": summary["macro_f1"],
        "loss": summary["loss"],
        "per_class": [
            {"class": str(class_names[c]), "precision": float(precision[c]),
             "recall": float(recall[c]), "f1": float(f1[c]), "support": int(support[c])}
            for c in range(k)
        ],
        "confusion_matrix": metrics.confusion_matrix(y, pred, k).tolist(),
    }
    return report, pred


def format_report(report: dict, short_names: Sequence[str] = SHORT_NAMES) -> str:
    """The report as aligned text: summary, per-class table, confusion matrix."""
    per_class = report["per_class"]
    width = max(11, *(len(c["class"]) for c in per_class))
    lines = [
        f"accuracy {report['accuracy']:.4f}  macro F1 {report['macro_f1']:.4f}  "
        f"loss {report['loss']:.4f}  ({report['n']} images)",
        "",
        f"{'class':<{width}}  {'precision':>9}  {'recall':>7}  {'f1':>7}  {'support':>7}",
    ]
    for c in per_class:
        lines.append(f"{c['class']:<{width}}  {c['precision']:>9.4f}  {c['recall']:>7.4f}  "
                     f"{c['f1']:>7.4f}  {c['support']:>7d}")
    mean = [float(np.mean([c[key] for c in per_class])) for key in ("precision", "recall", "f1")]
    lines.append(f"{'macro avg':<{width}}  {mean[0]:>9.4f}  {mean[1]:>7.4f}  {mean[2]:>7.4f}  "
                 f"{sum(c['support'] for c in per_class):>7d}")

    cm = np.asarray(report["confusion_matrix"])
    names = list(short_names) if len(short_names) == len(cm) else [str(i) for i in range(len(cm))]
    col = max(max(len(n) for n in names), len(str(cm.max()))) + 1
    label = max(len(n) for n in names)
    lines += ["", "confusion matrix (rows: true class, columns: predicted class)",
              " " * label + "".join(f"{n:>{col}}" for n in names)]
    for name, row in zip(names, cm, strict=True):
        lines.append(f"{name:<{label}}" + "".join(f"{v:>{col}d}" for v in row))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns 0, or 2 for bad flags, an unreadable model or missing data."""
    return run_cli(_main, argv)


def _main(argv: list[str] | None) -> int:
    args = build_parser().parse_args(argv)
    threads_option(args.threads)
    if args.plots:
        from .plots import check_ready

        try:
            check_ready(args.plots)
        except (ImportError, OSError) as exc:
            raise CLIError(f"--plots: {exc}") from None
    try:
        model = Sequential.load(args.model)
    except (FileNotFoundError, ValueError) as exc:
        raise CLIError(str(exc)) from None
    try:
        x, y = load_dataset(args.dataset, "test", args.data_dir)
    except DataError as exc:
        raise CLIError(str(exc)) from None
    if model.input_shape != (1, *x.shape[1:]) or model.output_shape != (len(CLASS_NAMES),):
        raise CLIError(f"{args.model}: model maps {model.input_shape} to {model.output_shape}, "
                       f"{args.dataset} needs (1, {x.shape[1]}, {x.shape[2]}) to "
                       f"({len(CLASS_NAMES)},)")

    with compile_progress():
        report, pred = evaluate(model, x, y)
    print(f"{args.model} on the {args.dataset} test split")
    print(format_report(report))
    if args.json:
        payload = {"model": str(args.model), "dataset": args.dataset, "split": "test", **report}
        _write(args.json, lambda p: atomic_write_text(p, json.dumps(payload, indent=2) + "\n"))
        print(f"wrote {args.json}")
    if args.plots:
        from .plots import write_plots

        paths = _write(args.plots, lambda d: write_plots(model, None, x, y, d, y_pred=pred))
        for path in paths:
            print(f"wrote {path}")
    return 0


def _write(target: str, write: Callable[[str], T]) -> T:
    # Output failures come after the work is done: one line, not a traceback.
    try:
        return write(target)
    except OSError as exc:
        raise CLIError(f"cannot write {target}: {exc}") from None


if __name__ == "__main__":
    sys.exit(main())
