"""The tutorial's full recipe through fastcnn.compat: SEED-ARCH, per-sample SGD.

3 epochs at learning rate 0.005 over the 60,000 Fashion-MNIST training images,
np.random.seed(0), test set as the dev set. Prints and writes JSON with the wall
time of each epoch and the test accuracy / macro F1.

    python bench/compat_recipe.py [--epochs 3] [--lr 0.005] [--limit N] [--out FILE]
"""

# The tutorial seeds the global np.random state.
# ruff: noqa: NPY002

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numba
import numpy as np

from fastcnn import compat
from fastcnn.data import load_dataset


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--lr", type=float, default=0.005)
    p.add_argument("--limit", type=int, default=None,
                   help="use only the first N train and N test images (quick runs)")
    p.add_argument("--dataset", choices=("fashion-mnist", "sample"), default="fashion-mnist")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path("runs/compat_recipe.json"),
                   help="where to write the JSON results")
    args = p.parse_args(argv)
    if args.epochs < 1 or (args.limit is not None and args.limit < 1):
        p.error("--epochs and --limit must be >= 1")
    return args


def warm_up(image: np.ndarray) -> float:
    """Load the compiled kernels with one step on a throwaway net; returns seconds.

    Keeps the one-off cost out of epoch 1 and leaves np.random's state untouched.
    """
    state = np.random.get_state()
    start = time.perf_counter()
    net = compat.SimpleCNN(compat.seed_arch_layers())
    out = net.forward(image)
    net.backprop(np.where(np.arange(len(out)) == 0, -1 / out[0], 0.0), 0.0)
    np.random.set_state(state)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> dict:
    """Run the recipe; returns the results that were written as JSON."""
    args = parse_args(argv)
    train_x, train_y = load_dataset(args.dataset, "train", args.data_dir, args.limit)
    test_x, test_y = load_dataset(args.dataset, "test", args.data_dir, args.limit)
    np.random.seed(args.seed)
    warmup = warm_up(compat.preprocess(train_x[:1])[0])
    net = compat.SimpleCNN(compat.seed_arch_layers())
    start = time.perf_counter()
    history = net.train(compat.preprocess(train_x), train_y, compat.preprocess(test_x), test_y,
                        args.epochs, args.lr)
    total = time.perf_counter() - start
    results = {
        "recipe": "tutorial SEED-ARCH via fastcnn.compat",
        "dataset": args.dataset,
        "train_images": len(train_y),
        "test_images": len(test_y),
        "epochs": args.epochs,
        "learn_rate": args.lr,
        "seed": args.seed,
        # Training time only; each epoch's test evaluation is in eval_seconds.
        "epoch_seconds": [r["seconds"] for r in history],
        "epoch_loss": [r["loss"] for r in history],
        "warmup_seconds": warmup,
        "eval_seconds": total - sum(r["seconds"] for r in history),
        "total_seconds": total,
        "ms_per_train_sample": 1e3 * sum(r["seconds"] for r in history)
        / (args.epochs * len(train_y)),
        "test_accuracy": history[-1]["dev_accuracy"],
        "test_macro_f1": history[-1]["dev_macro_f1"],
        "test_accuracy_per_epoch": [r["dev_accuracy"] for r in history],
        # compat runs each per-sample kernel on one thread (see fastcnn.compat._serial).
        "cpu_count": os.cpu_count(),
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


if __name__ == "__main__":
    main()
