"""The one place kernels get their Numba options, so caching has a single switch.

FASTCNN_NUMBA_CACHE=0 turns the on-disk cache off (every process compiles afresh).
With caching on, Numba writes beside the sources, or, where that folder is read-only
(a system-wide install), under NUMBA_CACHE_DIR or the user's cache folder.

Numba checks a cached function against its own source file only, so a cached kernel
that calls (or inlines) a jitted helper from another module would keep the old helper's
machine code after an edit there. The convolution algorithms share their tap loops and
plane copies across modules, so every kernel's cache is stamped with a hash of every
source file of this package as well: an edit anywhere in `fastcnn.kernels` recompiles
all of them, and none can go stale. tests/test_numba_cache.py checks both.

FASTCNN_NUMBA_SERIAL=1 compiles every kernel without ``parallel`` (prange runs as
range), for the bounds-checked test run: an IndexError raised inside a parallel region
is lost, or surfaces later as a SystemError. Never for real use, and never cached
(that run turns the cache off).

``FASTMATH`` is the one set of fast-math flags the kernels use: reassociation and
fused multiply-add, never the flags that assume no NaN or infinity (the kernels must
carry a NaN through, as NumPy does).
"""

from __future__ import annotations

import functools
import hashlib
import os
from pathlib import Path

from numba import njit
from numba.core import caching

CACHE = os.environ.get("FASTCNN_NUMBA_CACHE", "1").strip().lower() not in ("0", "false", "no",
                                                                           "off")
SERIAL = os.environ.get("FASTCNN_NUMBA_SERIAL", "0").strip() == "1"
FASTMATH = {"reassoc", "contract"}

_PACKAGE = Path(__file__).resolve().parent


@functools.cache
def _hash_sources(files: tuple[tuple[str, int, int], ...]) -> str:
    """sha256 over the names and contents of the package's sources (memoised on their
    names, modification times and sizes, so an edit while running is seen)."""
    h = hashlib.sha256()
    for name, _, _ in files:
        h.update(name.encode())
        h.update((_PACKAGE / name).read_bytes())
    return h.hexdigest()


def package_stamp() -> str:
    """A hash of every Python source of the kernels package ("" where there are none to
    read, e.g. in a zip: the file's own stamp then stands alone)."""
    files = []
    for path in sorted(_PACKAGE.rglob("*.py")):
        st = path.stat()
        files.append((path.relative_to(_PACKAGE).as_posix(), st.st_mtime_ns, st.st_size))
    return _hash_sources(tuple(files)) if files else ""


def _stamped(locator: type) -> type:
    """Numba's cache locator `locator`, whose source stamp also covers the package."""

    def get_source_stamp(self):
        return (locator.get_source_stamp(self), package_stamp())

    return type(f"Package{locator.__name__}", (locator,), {"get_source_stamp": get_source_stamp})


class _PackageCacheImpl(caching.CompileResultCacheImpl):
    _locator_classes = [_stamped(c) for c in caching.CompileResultCacheImpl._locator_classes]


class PackageFunctionCache(caching.FunctionCache):
    """Numba's FunctionCache, invalidated by an edit to any module of the package."""

    _impl_class = _PackageCacheImpl


def jit(**options):
    """numba.njit with fastcnn's cache policy."""

    if SERIAL:
        options = {k: v for k, v in options.items() if k != "parallel"}

    def decorate(func):
        dispatcher = njit(**options)(func)
        # Under NUMBA_DISABLE_JIT=1 njit gives back the plain function: nothing to cache.
        if CACHE and hasattr(dispatcher, "py_func"):
            # What njit(cache=True) does (Dispatcher.enable_caching), with the package stamp.
            dispatcher._cache = PackageFunctionCache(dispatcher.py_func)
        return dispatcher

    return decorate
