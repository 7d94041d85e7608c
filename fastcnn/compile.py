"""python -m fastcnn.compile: compile and cache every kernel the commands and layers use.

Run it once when building an image or a shared install, so that no user waits for the
first-use compile. It runs, on zeros, what the commands run: SEED-ARCH training (Adam
and SGD) and inference in float32 (any batch size runs the same kernels), and the
per-sample float64 layers of fastcnn.compat.
Then it prints the seconds each kernel took to compile; kernels already in the cache
load in milliseconds and are not listed.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
import warnings

import numpy as np

from . import compat
from .cli import ArgumentParser, run_cli, threads_option
from .compiling import CompileLog, cache_location, compile_progress
from .fileio import atomic_write_text
from .model import seed_arch
from .optim import SGD, Adam
from .threads import one_blas_thread


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="python -m fastcnn.compile", description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=None, help="Numba threads (all cores)")
    p.add_argument("--json", metavar="FILE", default=None,
                   help="write the seconds each kernel took to compile to FILE")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def compile_all() -> None:
    """Run every kernel path once on zeros (weights and the global np.random untouched)."""
    model = seed_arch(0)
    for optimizer in (Adam(0.001), SGD(0.01, momentum=0.9)):
        model.warmup(optimizer)
    # fastcnn.compat: the notebook's network, per sample and batched (predict), float64.
    state = np.random.get_state()  # noqa: NPY002 (compat draws from it, as the notebook)
    try:
        net = compat.SimpleCNN(*_notebook_layers())
        images = np.zeros((40, 1, 28, 28), dtype=np.uint8)
        with one_blas_thread():
            out = net.forward(images[0])
            net.backprop(np.where(np.arange(len(out)) == 0, -1.0, 0.0), 0.0)
            net.predict(images, np.zeros(len(images), dtype=np.int64), range(10))
    finally:
        np.random.set_state(state)  # noqa: NPY002


def _notebook_layers() -> tuple:
    C = compat
    return (C.ConvLayer((1, 28, 28), 5, 6), C.ReLU(), C.ConvLayer((6, 28, 28), 5, 6), C.ReLU(),
            C.MaxPool(), C.FeedForward(6 * 14 * 14, 100), C.ReLU(), C.Softmax(100, 10))


def report(log: CompileLog, seconds: float) -> str:
    if not log.kernels:
        return (f"fastcnn: every kernel was already compiled ({seconds:.1f} s to load); "
                f"cache: {cache_location()}")
    lines = [f"fastcnn: {len(log.kernels)} kernels now cached in {cache_location()}",
             "  seconds  kernel (array dtypes)"]
    for row in log.table():
        dtypes = sorted(set(re.findall(r"array\((\w+),", row["types"])))
        lines.append(f"  {row['seconds']:7.1f}  {row['kernel']} ({', '.join(dtypes)})")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    return run_cli(_main, argv)


def _main(argv: list[str] | None) -> int:
    args = build_parser().parse_args(argv)
    threads_option(args.threads)
    start = time.perf_counter()
    with warnings.catch_warnings():
        # Numba says so when it cannot write its cache (a read-only install): keep it.
        warnings.simplefilter("default")
        with compile_progress(quiet=args.quiet) as log:
            compile_all()
    seconds = time.perf_counter() - start
    print(report(log, seconds))
    if args.json:
        atomic_write_text(args.json, json.dumps(
            {"seconds": seconds, "cache": cache_location(), "kernels": log.table()}, indent=2)
            + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
