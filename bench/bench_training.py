"""Whole SEED-ARCH training steps and inference, fastcnn against PyTorch, Keras and the
naive per-sample loops. Groups `train-b{batch}-t{threads}` and `predict-b{batch}-t{threads}`
hold every system measured at that setting. Start-up and JIT compile time are
measured separately, in fresh processes (`test_compile_time`).
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from harness import (
    TF_HINT,
    TORCH_HINT,
    FastcnnSystem,
    KerasSystem,
    NaiveSystem,
    TorchSystem,
    fast_mode,
    startup_time,
    thread_params,
)

BATCHES = (1, 32, 64, 256)
FAST_BATCHES = (1, 64)
PREDICT_BATCH, FAST_PREDICT_BATCH = 1000, 100
# Distinct batches cycled through, so a step never reuses the previous step's input.
POOL = 4


def pytest_generate_tests(metafunc):
    if "batch" in metafunc.fixturenames:
        batches = FAST_BATCHES if fast_mode(metafunc.config) else BATCHES
        metafunc.parametrize("batch", batches, ids=[f"b{b}" for b in batches])
    if "predict_batch" in metafunc.fixturenames:
        n = FAST_PREDICT_BATCH if fast_mode(metafunc.config) else PREDICT_BATCH
        metafunc.parametrize("predict_batch", [n], ids=[f"b{n}"])


@pytest.fixture(scope="module")
def torch_mod():
    return pytest.importorskip("torch", reason=TORCH_HINT)


@pytest.fixture(scope="module")
def keras_mod():
    pytest.importorskip("tensorflow", reason=TF_HINT)
    return pytest.importorskip("keras", reason=TF_HINT)


def cycle_batches(system, data, batch):
    """A step function cycling over POOL batches already in the system's layout."""
    x, y = data
    pool = itertools.cycle([system.native(x[i * batch:(i + 1) * batch],
                                          y[i * batch:(i + 1) * batch]) for i in range(POOL)])
    return lambda: system.train_step(*next(pool))


def bench_train(run_benchmark, benchmark, system, data, batch, warmup=1):
    system.activate()
    benchmark.group = f"train-b{batch}-t{system.threads}"
    step = cycle_batches(system, data, batch)
    loss = run_benchmark(step, batch=batch, warmup=warmup, system=system.name,
                         threads=system.threads)
    assert np.isfinite(loss)


def bench_predict(run_benchmark, benchmark, system, data, n):
    system.activate()
    benchmark.group = f"predict-b{n}-t{system.threads}"
    x = system.native(data[0][:n], data[1][:n])[0]
    probs = run_benchmark(system.predict, x, batch=n, system=system.name,
                          threads=system.threads)
    assert probs.shape == (n, 10) and np.isfinite(probs).all()


@pytest.mark.parametrize("threads", thread_params(), indirect=True)
def test_train_fastcnn(run_benchmark, benchmark, data, batch, threads):
    bench_train(run_benchmark, benchmark, FastcnnSystem(threads), data, batch)


@pytest.mark.parametrize("threads", thread_params(), indirect=True)
def test_train_torch(run_benchmark, benchmark, torch_mod, data, batch, threads):
    bench_train(run_benchmark, benchmark, TorchSystem(threads), data, batch)


def test_train_keras(run_benchmark, benchmark, keras_mod, data, batch):
    system = KerasSystem()
    benchmark.extra_info.update(jit_compile=system.jit_compile,
                                note="TF threads are fixed at start-up: all cores only")
    # The first two calls trace and build the train function.
    bench_train(run_benchmark, benchmark, system, data, batch, warmup=2)


def test_train_naive(run_benchmark, benchmark, data):
    # One sample per step, as the original code trains; a single thread.
    bench_train(run_benchmark, benchmark, NaiveSystem(), data, 1)


@pytest.mark.parametrize("threads", thread_params(), indirect=True)
def test_predict_fastcnn(run_benchmark, benchmark, data, predict_batch, threads):
    bench_predict(run_benchmark, benchmark, FastcnnSystem(threads), data, predict_batch)


@pytest.mark.parametrize("threads", thread_params(), indirect=True)
def test_predict_torch(run_benchmark, benchmark, torch_mod, data, predict_batch, threads):
    bench_predict(run_benchmark, benchmark, TorchSystem(threads), data, predict_batch)


def test_predict_keras(run_benchmark, benchmark, keras_mod, data, predict_batch):
    system = KerasSystem()
    benchmark.extra_info.update(jit_compile=system.jit_compile,
                                note="TF threads are fixed at start-up: all cores only")
    bench_predict(run_benchmark, benchmark, system, data, predict_batch)


def test_naive_baseline_matches_fastcnn(data):
    """The naive baseline trains the same network: one step from the same weights
    gives the same weights as fastcnn's batch-1 step."""
    x, y = data[0][:1], data[1][:1]
    reference, loops = FastcnnSystem(1), NaiveSystem()
    assert np.isclose(reference.train_step(x, y), loops.train_step(x, y), rtol=1e-4)
    for ours, theirs in zip(reference.model.parameters(), loops.params, strict=True):
        np.testing.assert_allclose(ours, theirs, rtol=1e-3, atol=1e-5)
    np.testing.assert_allclose(reference.predict(x), loops.predict(x), rtol=1e-3, atol=1e-6)


def test_compile_time(benchmark, tmp_path, fast, capsys):
    """import fastcnn + build SEED-ARCH + first training batch, in fresh processes:
    cold (empty NUMBA_CACHE_DIR, every kernel compiles) then warm (same cache)."""
    benchmark.group = "startup"
    if fast:
        # A cold compile of every kernel takes ~20-40 s: too slow for the test run.
        # Numba's default cache is warm by now (earlier benches compiled the kernels).
        cache, info = None, {"cold": "skipped in fast mode (compiles every kernel)"}
    else:
        cache = tmp_path / "numba-cache"
        cache.mkdir()
        info = {"cold": startup_time(cache)}
    warm = benchmark.pedantic(startup_time, args=(cache,), rounds=1 if fast else 3)
    info["warm"] = warm
    benchmark.extra_info.update(info)
    with capsys.disabled():
        for kind, result in info.items():
            if isinstance(result, dict):
                print(f"\n{kind} start-up: import {result['import_s']:.2f} s, first batch "
                      f"{result['first_batch_s']:.2f} s, total {result['total_s']:.2f} s")
            else:
                print(f"\n{kind} start-up: {result}")
    assert warm["total_s"] > 0 and np.isfinite(warm["second_batch_s"])
