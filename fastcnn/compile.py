"""python -m fastcnn.compile: compile and cache every kernel the commands and layers use.

Run it once when building an image or a shared install, so that no user waits for the
first-use compile. It runs, on zeros, what the commands run: SEED-ARCH training (Adam
and SGD) and inference in float32 (any batch size runs the same kernels), and the
per-sample float64 layers of fastcnn.compat.
Then it prints the seconds each kernel took to compile; kernels already in the cache
load in milliseconds and are not listed. Into a fresh, writable cache it compiles its
two parts (training, the drop-in) in two processes at once where the machine has two
cores, then loads everything back in this process.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import multiprocessing
import queue
import re
import sys
import time
import warnings
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

import numpy as np
from tqdm import tqdm

from . import compat
from .cli import ArgumentParser, CLIError, run_cli, threads_option
from .compiling import (
    CompileLog,
    announce_if_cold,
    cache_is_cold,
    cache_is_writable,
    cache_location,
    compile_progress,
    usable_cpus,
)
from .fileio import atomic_write_text
from .models import seed_arch
from .optim import SGD, Adam
from .threads import one_blas_thread


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="python -m fastcnn.compile", description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=None, help="Numba threads (all cores)")
    p.add_argument("--json", metavar="FILE", default=None,
                   help="write the seconds each kernel took to compile to FILE")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--processes", type=int, default=None,
                   help="processes that compile at once into a fresh cache (default: the "
                        "CPUs this process may use, at most 2; 1 compiles here only)")
    return p


def compile_all() -> None:
    """Run every kernel path once on zeros (weights and the global np.random untouched)."""
    for part in PARTS.values():
        part()


def _compile_training() -> None:
    """SEED-ARCH training (Adam and SGD) and inference, float32."""
    model = seed_arch(0)
    for optimizer in (Adam(0.001), SGD(0.01, momentum=0.9)):
        model.warmup(optimizer)


def _compile_compat() -> None:
    """fastcnn.compat: the notebook's network, per sample and batched (predict), float64."""
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


# Independent parts: no kernel signature of one is compiled by the other.
PARTS: dict[str, Callable[[], None]] = {"training": _compile_training,
                                        "compat": _compile_compat}


def _compile_part(name: str, events: queue.Queue) -> list[tuple[str, str, float]]:
    """In a worker process: compile one part silently (the drop-in announces its own
    compiles on stderr), sending each kernel to events."""
    with contextlib.redirect_stderr(io.StringIO()), compile_progress(
            quiet=True, on_kernel=events.put) as log:
        PARTS[name]()
    return log.kernels


def _compile_in_processes(processes: int, quiet: bool) -> CompileLog:
    """Compile the parts in worker processes, which write the on-disk cache; one bar
    here counts their kernels. Returns what they compiled. Only for this command's
    __main__: multiprocessing's spawn re-imports the main script of the caller."""
    log = CompileLog()
    context = multiprocessing.get_context("spawn")  # no forked Numba or thread pools
    bar = None if quiet else tqdm(desc="compiling", unit=" kernels", leave=False)
    with context.Manager() as manager, ProcessPoolExecutor(processes, context) as pool:
        events = manager.Queue()
        futures = [pool.submit(_compile_part, name, events) for name in PARTS]
        while not all(f.done() for f in futures) or not events.empty():
            try:
                name, _, _ = events.get(timeout=0.2)
            except queue.Empty:
                continue
            if bar is not None:
                bar.set_postfix_str(name, refresh=False)
                bar.update(1)
        for future in futures:
            log.kernels.extend(future.result())  # a worker's error is raised here
    if bar is not None:
        bar.close()
    return log


def _default_processes() -> int:
    return max(1, min(len(PARTS), usable_cpus()))


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
    processes = _default_processes() if args.processes is None else args.processes
    if processes < 1:
        raise CLIError(f"--processes must be at least 1, got {processes}")
    start = time.perf_counter()
    workers = CompileLog()
    # Workers help only where they can leave their work in a cache this process reads.
    if processes > 1 and cache_is_cold() and cache_is_writable():
        announce_if_cold()
        try:
            workers = _compile_in_processes(processes, args.quiet)
        except BrokenProcessPool as exc:  # a worker died: what it left undone compiles here
            print(f"fastcnn: a compiling process failed ({exc}); compiling the rest here",
                  file=sys.stderr)
    with warnings.catch_warnings():
        # Numba says so when it cannot write its cache (a read-only install): keep it.
        warnings.simplefilter("default")
        with compile_progress(quiet=args.quiet, announced=bool(workers.kernels)) as here:
            compile_all()  # loads what the workers cached; compiles anything they did not
    seconds = time.perf_counter() - start
    log = CompileLog(workers.kernels + here.kernels)
    print(report(log, seconds))
    if args.json:
        atomic_write_text(args.json, json.dumps(
            {"seconds": seconds, "cache": cache_location(), "kernels": log.table(),
             "processes": processes if workers.kernels else 1,
             "compiled_in_main_process": [name for name, _, _ in here.kernels]}, indent=2)
            + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
