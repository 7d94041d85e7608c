"""Thread ownership: Numba's workers get the cores, BLAS gets one thread.

On a small machine Numba's OpenMP/TBB workers and OpenBLAS's threads fight over
the same cores; pinning BLAS to one thread made a whole training step ~3x faster.
"""

from __future__ import annotations

import numba
from threadpoolctl import threadpool_limits

_blas_limit = None


def set_threads(n: int | None) -> int:
    """Use `n` Numba threads (None: all cores) and one BLAS thread. Returns n."""
    global _blas_limit
    available = numba.config.NUMBA_NUM_THREADS
    if n is None:
        n = available
    if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= available:
        raise ValueError(f"threads must be an integer from 1 to {available}, got {n!r}")
    numba.set_num_threads(n)
    _blas_limit = threadpool_limits(limits=1, user_api="blas")
    return n
