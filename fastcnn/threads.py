"""Runtime ownership: Numba's workers get the cores, BLAS gets one thread, and freed
memory stays with the process.

On a small machine Numba's OpenMP/TBB workers and OpenBLAS's threads fight over
the same cores, so BLAS is pinned to one thread (bench/README.md has the measurement).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys
from collections.abc import Iterator
from contextlib import contextmanager

import numba
from threadpoolctl import ThreadpoolController

_blas_limit = None
_controller: ThreadpoolController | None = None
_malloc_tuned = False

# glibc mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3


def keep_freed_memory() -> bool:
    """Ask glibc to reuse freed batch-sized buffers instead of returning them to the OS.

    By default glibc serves large arrays with fresh mmap pages and unmaps them on free,
    so every batch page-faults its buffers in again, and the faults serialise both
    threads (bench/README.md says what that cost). Peak memory is unchanged; memory that
    was freed is kept for reuse. A no-op (returns False) off glibc. Idempotent.
    """
    global _malloc_tuned
    if _malloc_tuned or not sys.platform.startswith("linux"):
        return _malloc_tuned
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        ok = libc.mallopt(_M_MMAP_THRESHOLD, 32 << 20) and libc.mallopt(_M_TRIM_THRESHOLD,
                                                                         1 << 30)
    except (OSError, AttributeError):
        return False
    _malloc_tuned = bool(ok)
    return _malloc_tuned


def set_threads(n: int | None, *, keep_memory: bool = True) -> int:
    """Give the cores to Numba: `n` Numba threads (None: all cores) and one BLAS thread,
    process-wide; with ``keep_memory`` (the default, as training and benchmarks want)
    also `keep_freed_memory`, glibc's malloc setting. Returns n."""
    global _blas_limit
    available = numba.config.NUMBA_NUM_THREADS
    if n is None:
        n = available
    if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= available:
        raise ValueError(f"threads must be an integer from 1 to {available}, got {n!r}")
    numba.set_num_threads(n)
    _blas_limit = _blas().limit(limits=1, user_api="blas")
    if keep_memory:
        keep_freed_memory()
    return n


def _blas() -> ThreadpoolController:
    """The loaded BLAS libraries, looked up once: a lookup takes about a millisecond,
    which a call on one sample cannot afford; a limit then costs tens of microseconds."""
    global _controller
    if _controller is None:
        _controller = ThreadpoolController()
    return _controller


@contextmanager
def one_blas_thread() -> Iterator[None]:
    """BLAS on one thread inside the block, as it was after."""
    with _blas().limit(limits=1, user_api="blas"):
        yield
