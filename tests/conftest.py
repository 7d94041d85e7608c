import os

import numpy as np
import pytest
from hypothesis import HealthCheck, settings

# Kernels compile on first use; a deadline would time the compiler, not the code.
settings.register_profile("fastcnn", deadline=None, max_examples=40,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("ci", deadline=None, max_examples=60, derandomize=True,
                          suppress_health_check=[HealthCheck.too_slow])
# For the run without JIT (tests/test_no_jit.py): plain Python is slow, a few draws do.
settings.register_profile("nojit", deadline=None, max_examples=6, derandomize=True,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("ci" if os.environ.get("CI") else "fastcnn")


@pytest.fixture
def rng():
    return np.random.default_rng(12345)


@pytest.fixture
def restore_threads():
    """Puts fastcnn's thread count back to its default after the test."""
    yield
    import fastcnn

    fastcnn.set_threads(None)
