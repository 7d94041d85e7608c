"""The one place kernels get their Numba options, so caching has a single switch.

FASTCNN_NUMBA_CACHE=0 turns the on-disk cache off (every process compiles afresh).
With caching on, Numba writes beside the sources, or, where that folder is read-only
(a system-wide install), under NUMBA_CACHE_DIR or the user's cache folder.

Numba checks a cached function against its own source file only, so a cached kernel
that called a jitted function from another module would keep stale machine code when
that module changed. Kernels therefore call jitted helpers from their own module only;
tests/test_numba_cache.py enforces it.
"""

import os

from numba import njit

CACHE = os.environ.get("FASTCNN_NUMBA_CACHE", "1").strip().lower() not in ("0", "false", "no",
                                                                           "off")


def jit(**options):
    """numba.njit with fastcnn's cache policy."""
    return njit(cache=CACHE, **options)
