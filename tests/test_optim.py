"""Optimiser kernels against the textbook update rules, computed in float64 NumPy."""

import math

import numpy as np
import pytest

import fastcnn as fc


def reference_sgd(p, grads, lr, momentum, nesterov, weight_decay):
    v = np.zeros_like(p)
    for g in grads:
        g = g + weight_decay * p
        if momentum:
            v = momentum * v + g
            g = g + momentum * v if nesterov else v
        p = p - lr * g
    return p


@pytest.mark.parametrize("dtype,rtol", [(np.float64, 1e-12), (np.float32, 2e-5)])
@pytest.mark.parametrize("momentum,nesterov,wd", [
    (0.0, False, 0.0), (0.9, False, 0.0), (0.9, True, 0.0), (0.5, False, 1e-2)])
def test_sgd_matches_reference(dtype, rtol, momentum, nesterov, wd):
    rng = np.random.default_rng(0)
    p0 = rng.standard_normal((7, 5))
    grads = [rng.standard_normal((7, 5)) for _ in range(6)]
    p = p0.astype(dtype)
    opt = fc.SGD(0.1, momentum=momentum, nesterov=nesterov, weight_decay=wd)
    for g in grads:
        opt.step([p], [g.astype(dtype)])
    expected = reference_sgd(p0, grads, 0.1, momentum, nesterov, wd)
    np.testing.assert_allclose(p, expected, rtol=rtol, atol=rtol)
    assert opt.iterations == 6


@pytest.mark.parametrize("dtype,rtol", [(np.float64, 1e-10), (np.float32, 1e-4)])
def test_adam_matches_reference(dtype, rtol):
    rng = np.random.default_rng(1)
    p0 = rng.standard_normal(40)
    grads = [rng.standard_normal(40) for _ in range(8)]
    p = p0.astype(dtype)
    opt = fc.Adam(0.01)
    for g in grads:
        opt.step([p], [g.astype(dtype)])
    # fastcnn folds the bias corrections into the step size, as PyTorch does; eps is added to
    # sqrt(v_t) before that correction, so compare against the same formulation.
    m = np.zeros(40)
    v = np.zeros(40)
    q = p0.copy()
    for t, g in enumerate(grads, start=1):
        m = 0.9 * m + 0.1 * g
        v = 0.999 * v + 0.001 * g * g
        q -= 0.01 * math.sqrt(1 - 0.999**t) / (1 - 0.9**t) * m / (np.sqrt(v) + 1e-8)
    np.testing.assert_allclose(p, q, rtol=rtol, atol=rtol * 0.1)


def test_step_rejects_mismatched_gradients():
    with pytest.raises(ValueError, match="shape"):
        fc.SGD(0.1).step([np.zeros(3)], [np.zeros(4)])
    with pytest.raises(ValueError, match="1 parameters but 2 gradients"):
        fc.SGD(0.1).step([np.zeros(3)], [np.zeros(3), np.zeros(3)])


# Sizes around the kernels' 4096-element chunks, in float32 and float64 within one step.
MANY = [((1,), np.float32), ((4096,), np.float64), ((4097,), np.float32), ((3, 5, 7), np.float64),
        ((100, 123), np.float32), ((8191,), np.float32)]


def test_sgd_updates_many_parameters_of_mixed_dtypes_in_one_step():
    rng = np.random.default_rng(2)
    p0 = [rng.standard_normal(shape) for shape, _ in MANY]
    grads = [[rng.standard_normal(shape) for shape, _ in MANY] for _ in range(3)]
    params = [p.astype(dtype) for p, (_, dtype) in zip(p0, MANY, strict=True)]
    opt = fc.SGD(0.1, momentum=0.9, nesterov=True, weight_decay=1e-2)
    for step in grads:
        opt.step(params, [g.astype(p.dtype) for g, p in zip(step, params, strict=True)])
    for k, (p, (shape, dtype)) in enumerate(zip(params, MANY, strict=True)):
        expected = reference_sgd(p0[k], [step[k] for step in grads], 0.1, 0.9, True, 1e-2)
        rtol = 2e-5 if dtype == np.float32 else 1e-12
        assert p.shape == shape and p.dtype == dtype
        np.testing.assert_allclose(p, expected, rtol=rtol, atol=rtol)
        assert opt.state()[f"velocity.{k}"].shape == shape


def test_adam_updates_many_parameters_of_mixed_dtypes_in_one_step():
    rng = np.random.default_rng(3)
    p0 = [rng.standard_normal(shape) for shape, _ in MANY]
    grads = [[rng.standard_normal(shape) for shape, _ in MANY] for _ in range(3)]
    params = [p.astype(dtype) for p, (_, dtype) in zip(p0, MANY, strict=True)]
    opt = fc.Adam(0.01)
    for step in grads:
        opt.step(params, [g.astype(p.dtype) for g, p in zip(step, params, strict=True)])
    for k, (p, (shape, dtype)) in enumerate(zip(params, MANY, strict=True)):
        m, v, q = np.zeros(shape), np.zeros(shape), p0[k].copy()
        for t, step in enumerate(grads, start=1):
            g = step[k]
            m = 0.9 * m + 0.1 * g
            v = 0.999 * v + 0.001 * g * g
            q -= 0.01 * math.sqrt(1 - 0.999**t) / (1 - 0.9**t) * m / (np.sqrt(v) + 1e-8)
        rtol = 1e-4 if dtype == np.float32 else 1e-10
        np.testing.assert_allclose(p, q, rtol=rtol, atol=rtol * 0.1)
        assert opt.state()[f"m.{k}"].shape == shape


@pytest.mark.parametrize("make", [fc.SGD, fc.Adam])
def test_step_updates_ndarray_subclasses_in_place(make):
    """A masked array is still an ndarray: it is updated in place like a plain one (found
    by tests/test_fuzz.py, where Numba refused the subclass with a NumbaTypeError)."""
    rng = np.random.default_rng(4)
    plain = [rng.standard_normal((3, 2)).astype(np.float32), rng.standard_normal(4)]
    masked = [np.ma.masked_array(p.copy()) for p in plain]
    grads = [rng.standard_normal(p.shape).astype(p.dtype) for p in plain]
    make(0.1).step(plain, grads)
    make(0.1).step(masked, grads)
    for p, m in zip(plain, masked, strict=True):
        np.testing.assert_array_equal(np.asarray(m), p)
