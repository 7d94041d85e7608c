"""The kernel and fuzz tests once more with Numba's bounds checks compiled in.

test_no_jit.py runs the kernels as plain Python, where NumPy checks every index; this
runs the compiled kernels themselves (inlined helpers, unsigned index arithmetic) with
NUMBA_BOUNDSCHECK=1, so an index past an array's end raises IndexError instead of
reading or writing other memory. The kernels are compiled serially for it
(FASTCNN_NUMBA_SERIAL=1): Numba loses an IndexError raised inside a parallel region.
The cache is off for the run: Numba's cache does not key on these settings, and checked
code must never be loaded by an ordinary run. A few draws per test (the "nojit"
hypothesis profile, and a fifth of the fuzz examples) keep it to a few minutes, most of
it compiling.
"""

import os
import subprocess
import sys

from kernel_rerun import run_kernel_and_fuzz_tests


def test_kernel_and_fuzz_tests_pass_with_bounds_checks():
    run_kernel_and_fuzz_tests(NUMBA_BOUNDSCHECK="1", FASTCNN_NUMBA_SERIAL="1",
                              FASTCNN_NUMBA_CACHE="0")


def test_the_bounds_checked_build_catches_an_out_of_bounds_index():
    """The run above can fail: a kernel handed an index past the array's end (which the
    validation in fastcnn.functional would refuse) raises instead of writing."""
    _assert_index_error("import numpy as np; from fastcnn import kernels\n"
                        "dy = np.ones((1, 1, 2, 2), np.float32)\n"
                        "kernels.maxpool2d_backward(dy, np.full(dy.shape, 10**6, np.int64), "
                        "4, 4)\n")


def test_an_index_error_in_a_task_called_by_address_reaches_python():
    """Tasks run through kernels._tasks are called through a function pointer; their
    errors still come back as from a direct call. Here a weight with fewer rows than x
    has columns (which the validation in fastcnn.functional would refuse) makes the
    dense forward task read past it."""
    _assert_index_error("import numpy as np; from fastcnn.kernels import dense\n"
                        "x = np.ones((16, 8), np.float32)\n"
                        "dense.dense_forward(x, np.ones((4, 3), np.float32), "
                        "np.zeros(3, np.float32), False)\n")


def _assert_index_error(probe: str) -> None:
    """Run probe in a bounds-checked serial build; it must fail with an IndexError."""
    env = {**os.environ, "NUMBA_BOUNDSCHECK": "1", "FASTCNN_NUMBA_SERIAL": "1",
           "FASTCNN_NUMBA_CACHE": "0"}
    proc = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode != 0 and "IndexError" in proc.stderr, proc.stderr[-2000:]
