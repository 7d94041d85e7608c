"""Fixtures for the benchmark suites (see bench/README.md).

Under the default `--benchmark-disable` every benchmark runs once as a plain test, so
the suites shrink their sizes then (`fast`); `--benchmark-enable` runs the real sizes.
"""

from __future__ import annotations

import numba
import pytest
from harness import fast_mode, load_images

import fastcnn


@pytest.fixture
def threads(request):
    """Numba threads for fastcnn (BLAS pinned to one), restored afterwards. Parametrise
    it indirectly: `@pytest.mark.parametrize("threads", thread_params(), indirect=True)`
    with `harness.thread_params`."""
    before = numba.get_num_threads()
    yield fastcnn.set_threads(request.param)
    fastcnn.set_threads(before)


@pytest.fixture
def fast(request) -> bool:
    return fast_mode(request.config)


@pytest.fixture(scope="session")
def data():
    """2,048 real images, pre-normalised float32 (N, 1, 28, 28), and int64 labels."""
    return load_images(2048)


@pytest.fixture
def run_benchmark(benchmark):
    """benchmark(fn, *args) after `warmup` untimed calls (JIT compile, cache load,
    tf.function tracing), with the batch size and per-sample time in extra_info."""

    def run(fn, *args, batch: int, warmup: int = 1, **info):
        for _ in range(warmup):
            fn(*args)
        benchmark.extra_info.update(batch=batch, **info)
        result = benchmark(fn, *args)
        if benchmark.stats is not None:  # None when benchmarks are disabled
            median = benchmark.stats.stats.median
            benchmark.extra_info["per_sample_us"] = median / batch * 1e6
            benchmark.extra_info["samples_per_s"] = batch / median
        return result

    return run
