"""The tutorial notebook's recipe through fastcnn.compat: its model cell, unchanged.

SEED-ARCH trained one sample at a time, 3 epochs at learning rate 0.005, the test set
as the dev set, np.random.seed(0). The notebook's cell trains on the first 10,000
training images; its README reports the full 60,000 (--train-images 60000). Prints
the notebook's lines, then JSON with the wall time of each epoch and of each dev
evaluation, and the final test accuracy and F1, also written to --out.

    python bench/compat_recipe.py [--train-images 10000] [--epochs 3] [--out FILE]
"""

# The notebook seeds the global np.random state.
# ruff: noqa: NPY002

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import sys
import time
from pathlib import Path
from types import ModuleType

import numba
import numpy as np

from fastcnn import compat
from fastcnn.data import load_dataset


def notebook_model(mod: ModuleType = compat):
    """The notebook's model cell, word for word, with the classes of ``mod``."""
    ConvLayer, ReLU, MaxPool = mod.ConvLayer, mod.ReLU, mod.MaxPool
    FeedForward, Softmax, SimpleCNN = mod.FeedForward, mod.Softmax, mod.SimpleCNN
    model = SimpleCNN(
            ConvLayer(input_shape=(1, 28, 28), kernel_size=5, num_kernels=6, padding=0),
            ReLU(),
            ConvLayer(input_shape=(6, 28, 28), kernel_size=5, num_kernels=6, padding=0),
            ReLU(),
            MaxPool(),
            FeedForward(6 * 14 * 14, 100),
            ReLU(),
            Softmax(100, 10)
    )
    return model


class _StampedLines:
    """A stdout that passes text through and notes when each line was printed."""

    def __init__(self, out) -> None:
        self.out, self.lines, self._part = out, [], ""

    def write(self, text: str) -> int:
        self.out.write(text)
        self._part += text
        *done, self._part = self._part.split("\n")
        now = time.perf_counter()
        self.lines.extend((now, line) for line in done)
        return len(text)

    def flush(self) -> None:
        self.out.flush()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--train-images", type=int, default=10_000,
                   help="first N training images, as the notebook's trainset[:10000]")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--lr", type=float, default=0.005)
    p.add_argument("--test-images", type=int, default=None, help="first N test images")
    p.add_argument("--dataset", choices=("fashion-mnist", "sample"), default="fashion-mnist")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path("runs/compat_recipe.json"),
                   help="where to write the JSON results")
    args = p.parse_args(argv)
    if args.epochs < 1 or args.train_images < 1 or (args.test_images or 1) < 1:
        p.error("--epochs, --train-images and --test-images must be >= 1")
    return args


def main(argv: list[str] | None = None) -> dict:
    """Run the recipe; returns the results that were written as JSON."""
    args = parse_args(argv)
    trainset, trainlabels = load_dataset(args.dataset, "train", args.data_dir)
    testset, testlabels = load_dataset(args.dataset, "test", args.data_dir, args.test_images)
    trainlabels, testlabels = trainlabels.astype(np.int64), testlabels.astype(np.int64)
    n = min(args.train_images, len(trainset))
    # Load the compiled kernels outside the timing, on a throwaway net.
    warm_start = time.perf_counter()
    state = np.random.get_state()
    notebook_model().predict(compat.preprocess(testset[:2]), testlabels[:2], range(10))
    np.random.set_state(state)
    warmup = time.perf_counter() - warm_start

    np.random.seed(args.seed)
    model = notebook_model()
    stamped = _StampedLines(sys.stdout)
    start = time.perf_counter()
    with contextlib.redirect_stdout(stamped):
        model.train(trainset[:n], trainlabels[:n], testset, testlabels, epochs=args.epochs,
                    learn_rate=args.lr)
    total = time.perf_counter() - start
    accuracy, f1 = model.predict(compat.preprocess(testset), testlabels, list(range(10)))

    # Epoch k's training ends at its loss line; its evaluation at its dev line.
    marks = [start] + [t for t, line in stamped.lines
                       if line.startswith(("Epoch ", "Dev Accuracy"))]
    train_seconds = [marks[2 * k + 1] - marks[2 * k] for k in range(args.epochs)]
    eval_seconds = [marks[2 * k + 2] - marks[2 * k + 1] for k in range(args.epochs)]
    results = {
        "recipe": "the notebook's model cell via fastcnn.compat",
        "dataset": args.dataset,
        "train_images": n,
        "test_images": len(testlabels),
        "epochs": args.epochs,
        "learn_rate": args.lr,
        "seed": args.seed,
        "printed": [line for _, line in stamped.lines if not line.startswith("\r")],
        "epoch_train_seconds": train_seconds,
        "epoch_eval_seconds": eval_seconds,
        "warmup_seconds": warmup,
        "total_seconds": total,
        "ms_per_train_sample": 1e3 * sum(train_seconds) / (args.epochs * n),
        "ms_per_test_image": 1e3 * sum(eval_seconds) / (args.epochs * len(testlabels)),
        "test_accuracy": float(accuracy),
        "test_f1": float(f1),
        "cpu": _cpu_name(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "numba": numba.__version__,
    }
    text = json.dumps(results, indent=2)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text + "\n")
    print(f"wrote {args.out}", file=sys.stderr)
    return results


def _cpu_name() -> str:
    import llvmlite.binding as llvm

    return llvm.get_host_cpu_name()


if __name__ == "__main__":
    main()
