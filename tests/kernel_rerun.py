"""The kernel and fuzz tests run once more in a subprocess under another build of the
kernels (see test_no_jit.py and test_boundscheck.py), with a few draws per test: the
"nojit" hypothesis profile, and a fifth of the fuzz examples."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# The kernel tests of test_pooling_dropout.py (its other tests train models).
POOLING_DROPOUT = ("test_avgpool_matches_oracles", "test_global_avgpool_matches_oracles",
                   "test_dropout_matches_oracles", "test_dropout_carries_nan_like_pytorch")


def run_kernel_and_fuzz_tests(**env: str) -> None:
    """Run them with these environment variables; assert that they all pass."""
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
         "--hypothesis-profile=nojit", "tests/test_kernels.py", "tests/test_fuzz.py",
         *(f"tests/test_pooling_dropout.py::{name}" for name in POOLING_DROPOUT),
         "tests/test_activations.py::test_activation_kernels_match_oracles",
         "tests/test_activations.py::test_activations_carry_nan"],
        cwd=ROOT, env={**os.environ, "FASTCNN_FUZZ_SCALE": "0.2", **env},
        capture_output=True, text=True, timeout=1500)
    tail = proc.stdout.strip().splitlines()[-1:] or [""]
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert " passed" in tail[0] and "failed" not in tail[0], tail
