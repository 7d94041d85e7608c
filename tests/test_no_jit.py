"""The kernel and fuzz tests once more with the kernels run as plain Python.

Numba does no bounds checks: a kernel that indexes past an array's end reads or writes
other memory silently. Run as Python (NUMBA_DISABLE_JIT=1), NumPy checks every index as
it happens, so an out-of-bounds access fails the run. A few draws per test keep it to
about a minute (the "nojit" hypothesis profile, and a fifth of the fuzz examples).
"""

from kernel_rerun import run_kernel_and_fuzz_tests


def test_kernel_and_fuzz_tests_pass_as_plain_python():
    run_kernel_and_fuzz_tests(NUMBA_DISABLE_JIT="1")
