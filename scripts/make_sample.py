"""Regenerate fastcnn/_data/fashion_mnist_sample.npz from the real Fashion-MNIST.

The sample is stratified: 200 training images per class (2,000) and 100 test
images per class (1,000), drawn with ``np.random.default_rng(0)`` and stored in
shuffled order, so it is reproducible and class-balanced for quick demos/tests.

Usage (from the repository root): python scripts/make_sample.py [--data-dir DIR]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "fastcnn" / "_data" / "fashion_mnist_sample.npz"
TRAIN_PER_CLASS = 200
TEST_PER_CLASS = 100
SEED = 0


def stratified(labels: np.ndarray, per_class: int, rng: np.random.Generator) -> np.ndarray:
    """Indices of ``per_class`` random items of each class, in shuffled order."""
    picks = []
    for c in range(int(labels.max()) + 1):
        pool = np.flatnonzero(labels == c)
        if len(pool) < per_class:
            raise ValueError(f"class {c} has only {len(pool)} items, need {per_class}")
        picks.append(rng.choice(pool, size=per_class, replace=False))
    # Shuffle so any prefix (e.g. --limit) is still roughly balanced.
    return rng.permutation(np.concatenate(picks))


def write_atomic(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Save ``arrays`` as a compressed .npz that appears only once complete."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.", delete=False)
    try:
        with tmp:
            np.savez_compressed(tmp, **arrays)
            tmp.flush()
            os.fsync(tmp.fileno())
        # NamedTemporaryFile is 0600; a shipped data file should be world-readable.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp.name, 0o666 & ~umask)
        os.replace(tmp.name, path)
    except BaseException:
        Path(tmp.name).unlink(missing_ok=True)
        raise


def main(argv: list[str] | None = None) -> int:
    """Build the sample and write it; returns the process exit code."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=None, help="directory with the .gz files")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUT, help="output .npz path")
    args = parser.parse_args(argv)

    # Lets the script run from a plain checkout, without installing the package.
    sys.path.insert(0, str(REPO))
    from fastcnn.data import DataError, load_fashion_mnist

    rng = np.random.default_rng(SEED)
    arrays: dict[str, np.ndarray] = {}
    try:
        for split, per_class in (("train", TRAIN_PER_CLASS), ("test", TEST_PER_CLASS)):
            images, labels = load_fashion_mnist(split, data_dir=args.data_dir)
            idx = stratified(labels, per_class, rng)
            arrays[f"{split}_images"] = np.ascontiguousarray(images[idx], dtype=np.uint8)
            arrays[f"{split}_labels"] = np.ascontiguousarray(labels[idx], dtype=np.uint8)
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    write_atomic(args.output, arrays)
    sizes = ", ".join(f"{k} {v.shape}" for k, v in arrays.items())
    print(f"wrote {args.output} ({args.output.stat().st_size} bytes): {sizes}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
