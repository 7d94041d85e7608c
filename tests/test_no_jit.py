"""The kernel and fuzz tests once more with the kernels run as plain Python.

Numba does no bounds checks: a kernel that indexes past an array's end reads or writes
other memory silently. Run as Python (NUMBA_DISABLE_JIT=1), NumPy checks every index as
it happens, so an out-of-bounds access fails the run. A few draws per test keep it to
about a minute (the "nojit" hypothesis profile, and a fifth of the fuzz examples).
"""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_kernel_and_fuzz_tests_pass_as_plain_python():
    env = {**os.environ, "NUMBA_DISABLE_JIT": "1", "FASTCNN_FUZZ_SCALE": "0.2"}
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
         "--hypothesis-profile=nojit", "tests/test_kernels.py", "tests/test_fuzz.py"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200)
    tail = proc.stdout.strip().splitlines()[-1:] or [""]
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert " passed" in tail[0] and "failed" not in tail[0], tail
