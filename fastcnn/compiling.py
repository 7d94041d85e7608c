"""Say what is compiling: Numba compiles fastcnn's kernels for this CPU on first use.

``compile_progress()`` listens to Numba's compile events. Before the first kernel
compiles it prints one line saying what is happening, roughly how long it takes and
where the cache lives; then a tqdm bar on stderr counts the kernels as they compile.
Kernels loaded from the cache compile nothing, so a warm run prints nothing. The
listener also records how long each kernel took (``CompileLog.kernels``).

On a cold cache, ``compile_beside`` has a second process compile the backward kernels
(``compile_backward``, on tiny zeros: a signature depends on types, not shapes) while
this one compiles the forward ones; this process then loads them from the cache.
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import numpy as np
from numba.core import event
from tqdm import tqdm

from .kernels import _jit
from .kernels._tuning import WARMUP_BATCHES

_KERNELS = "fastcnn.kernels."

# Measured cold compiles of a whole training run (SEED-ARCH) on these 2-core machines.
ESTIMATE = "about 10-25 s on 2 cores"


def cache_location() -> str:
    """Where Numba keeps fastcnn's compiled kernels, in words."""
    if not _jit.CACHE:
        return "nowhere: FASTCNN_NUMBA_CACHE=0 turns the cache off, so every run compiles"
    from .kernels.conv import flat

    # Numba's choice: beside the sources, else NUMBA_CACHE_DIR or the user's cache folder.
    kernel = flat._forward_s1_task
    path = getattr(getattr(kernel, "_cache", None), "_cache_path", None)
    return str(path) if path else "Numba's cache folder"


def _announcement() -> str:
    return (f"fastcnn: compiling its kernels for this CPU, once ({ESTIMATE}); later runs "
            f"load them from the cache: {cache_location()}")


def cache_is_cold() -> bool:
    """Whether the on-disk cache holds none of the convolution's kernels (a fresh
    install); False when caching is off or Numba lays its cache out otherwise."""
    from .kernels.conv import flat

    try:
        index = flat._backward_s1_task._cache._cache_file._index_path  # Numba's layout
    except AttributeError:
        return False
    return not Path(index).exists()


def cache_is_writable() -> bool:
    """Whether this process can write the kernels' cache folder (or create it)."""
    from .kernels.conv import flat

    path = getattr(getattr(flat._forward_s1_task, "_cache", None), "_cache_path", None)
    if not _jit.CACHE or path is None:
        return False
    folder = Path(path)
    while not folder.exists():
        folder = folder.parent
    return os.access(folder, os.W_OK | os.X_OK)


def announce_if_cold(out: TextIO | None = None) -> bool:
    """Say now that the kernels will compile if the cache is cold, before slower work
    such as loading data; returns whether it did."""
    if not cache_is_cold():
        return False  # warm, or caching off: the compile itself will say it
    print(_announcement(), file=out or sys.stderr, flush=True)
    return True


def compile_backward(dtype: str, layers: tuple[str, ...]) -> None:
    """Compile the backward kernels of the stride-1 convolution ("conv"), of its matrix
    path ("gemm") and of the dense layer ("dense") in dtype, on tiny zeros: a kernel's
    signature depends on types, not shapes, so a training run can compile them before
    its forward pass produced activations (and have a second process compile some)."""
    from . import ops

    x = np.zeros((1, 1, 4, 4), dtype=dtype)
    if "conv" in layers:  # the pooled backward runs the same kernel
        ops.Conv2dOp("numba", (1, 1), (1, 1, 4, 4)).backward(
            x, np.zeros((1, 1, 3, 3), dtype=dtype), x, x, True)
    if "gemm" in layers:  # a 32-channel 3x3 convolution on a 4x4 plane takes the matrix path
        x = np.zeros((1, 32, 4, 4), dtype=dtype)
        y = np.zeros((1, 1, 4, 4), dtype=dtype)
        ops.Conv2dOp("numba", (1, 1), (1, 1, 4, 4)).backward(
            x, np.zeros((1, 32, 3, 3), dtype=dtype), y, y, True)
    if "dense" in layers:
        for n in WARMUP_BATCHES:  # its two paths
            flat = np.zeros((n, 16), dtype=dtype)
            y = np.zeros((n, 2), dtype=dtype)
            ops.DenseOp("numba").backward(flat, np.zeros((16, 2), dtype=dtype), y, y, True)


def backward_kernels(model: Any) -> tuple[str, ...]:
    """The `compile_backward` layers a model's training runs: "conv" for its stride-1 and
    phase-plane convolutions, "gemm" for those on the matrix path, and "dense"."""
    from .layers.conv import Conv2D

    algorithms = {layer.algorithm for layer in model.layers if isinstance(layer, Conv2D)}
    return ((("conv",) if algorithms & {"flat", "phases"} else ())
            + (("gemm",) if "gemm" in algorithms else ()) + ("dense",))


def compile_backward_silently(dtype: str, layers: tuple[str, ...]
                              ) -> list[tuple[str, str, float]]:
    """compile_backward in a helper process: nothing printed; returns the kernels."""
    with contextlib.redirect_stderr(io.StringIO()), compile_progress(quiet=True) as log:
        compile_backward(dtype, layers)
    return log.kernels


# The helper process: a fresh interpreter (not multiprocessing, whose spawn re-runs the
# user's unguarded __main__ script), which prints its log rows as JSON.
_HELPER = ("import json, sys; from fastcnn.compiling import compile_backward_silently as f; "
           "print(json.dumps(f(sys.argv[1], tuple(sys.argv[2:]))))")


class BesideCompile:
    """compile_backward(dtype, layers) in a second Python process, so that it compiles
    while this one compiles other kernels; it writes them to the on-disk cache, from
    which this process then loads them. ``wait()`` before the first call that needs
    them. The process is stopped if this one exits first, and a failed process only
    means this one compiles the kernels itself."""

    def __init__(self, dtype: str, layers: tuple[str, ...]) -> None:
        import atexit
        import subprocess

        self._process = subprocess.Popen([sys.executable, "-c", _HELPER, dtype, *layers],
                                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                         text=True)
        atexit.register(self._stop)
        self.kernels: list[tuple[str, str, float]] = []

    def _stop(self) -> None:
        if self._process.poll() is None:
            self._process.kill()
            self._process.wait()

    def wait(self) -> None:
        import json

        out, _ = self._process.communicate()
        try:
            self.kernels = [tuple(row) for row in json.loads(out)]
        except ValueError:  # it failed: its kernels compile here
            self.kernels = []


def usable_cpus() -> int:
    """The CPUs this process may run on (all of them where the OS cannot say)."""
    if hasattr(os, "sched_getaffinity"):  # Linux; not macOS or Windows
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def compile_beside(dtype: str, layers: tuple[str, ...]) -> BesideCompile | None:
    """BesideCompile(dtype, layers) where it can help: a cold, writable cache and a second
    CPU for this process; else None."""
    if usable_cpus() < 2 or not cache_is_cold() or not cache_is_writable():
        return None
    try:
        return BesideCompile(dtype, layers)
    except OSError:  # no interpreter to start (an embedded Python): compile here
        return None


@dataclass
class CompileLog:
    """The kernels compiled inside one ``compile_progress`` block, slowest first."""

    kernels: list[tuple[str, str, float]] = field(default_factory=list)  # name, types, s

    @property
    def seconds(self) -> float:
        return sum(s for _, _, s in self.kernels)

    def table(self) -> list[dict[str, Any]]:
        return [{"kernel": name, "types": types, "seconds": round(seconds, 3)}
                for name, types, seconds in sorted(self.kernels, key=lambda k: -k[2])]


class _Listener(event.Listener):
    """Counts the outermost fastcnn kernels that compile (helpers compile inside them)."""

    def __init__(self, log: CompileLog, quiet: bool, out: TextIO, announced: bool,
                 on_kernel: Callable[[tuple[str, str, float]], object] | None) -> None:
        self.log, self.quiet, self.out, self.on_kernel = log, quiet, out, on_kernel
        self.already_announced = announced
        self.depth = 0
        self.started = 0.0
        self.compiling = False  # a kernel has started compiling in this block
        self.bar: tqdm | None = None

    @staticmethod
    def _name(ev: event.Event) -> str | None:
        py_func = getattr(ev.data["dispatcher"], "py_func", None)
        module = getattr(py_func, "__module__", "") or ""
        if not module.startswith(_KERNELS):
            return None
        return f"{module.removeprefix(_KERNELS)}.{py_func.__name__}"

    def on_start(self, ev: event.Event) -> None:
        name = self._name(ev)
        if name is None:
            return
        self.depth += 1
        if self.depth > 1:
            return
        self.started = time.perf_counter()
        if not self.compiling:
            self.compiling = True
            if not self.already_announced:
                print(_announcement(), file=self.out, flush=True)
            if not self.quiet:
                self.bar = tqdm(desc="compiling", unit=" kernels", file=self.out, leave=False)
        if self.bar is not None:
            self.bar.set_postfix_str(name, refresh=True)

    def on_end(self, ev: event.Event) -> None:
        name = self._name(ev)
        if name is None:
            return
        self.depth -= 1
        if self.depth:
            return
        types = ", ".join(str(t) for t in ev.data["args"])
        self.log.kernels.append((name, types, time.perf_counter() - self.started))
        if self.on_kernel is not None:
            self.on_kernel(self.log.kernels[-1])
        if self.bar is not None:
            self.bar.update(1)


@contextmanager
def compile_progress(quiet: bool = False, out: TextIO | None = None, announced: bool = False,
                     on_kernel: Callable[[tuple[str, str, float]], object] | None = None
                     ) -> Iterator[CompileLog]:
    """Announce and count the kernels that compile inside the block (nothing if none do).

    The line is printed even when ``quiet`` (the bar is not), and not again when
    ``announce_if_cold`` already printed it (``announced``). ``on_kernel`` gets each
    kernel's (name, types, seconds) as it finishes compiling.
    """
    log = CompileLog()
    listener = _Listener(log, quiet, out or sys.stderr, announced, on_kernel)
    event.register("numba:compile", listener)
    try:
        yield log
    finally:
        event.unregister("numba:compile", listener)
        if listener.bar is not None:
            listener.bar.close()
        if listener.compiling:
            print(f"fastcnn: compiled {len(log.kernels)} kernels in {log.seconds:.1f} s",
                  file=listener.out, flush=True)
