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


def reference_adamw(p, grads, lr, wd, beta1=0.9, beta2=0.999, eps=1e-8):
    """AdamW: decay by 1 - lr * wd, then the bias-corrected Adam step, with eps added
    to sqrt(v) as fastcnn's Adam does (Kingma & Ba's efficient form; PyTorch adds it to
    the corrected sqrt(v_hat), which differs by about eps / sqrt(v))."""
    m, v = np.zeros_like(p), np.zeros_like(p)
    for t, g in enumerate(grads, start=1):
        p = p * (1 - lr * wd)
        m = beta1 * m + (1 - beta1) * g
        v = beta2 * v + (1 - beta2) * g * g
        p = p - lr * math.sqrt(1 - beta2**t) / (1 - beta1**t) * m / (np.sqrt(v) + eps)
    return p


@pytest.mark.parametrize("dtype,rtol", [(np.float64, 1e-7), (np.float32, 1e-4)])
@pytest.mark.parametrize("wd", [0.0, 0.01, 0.3])
def test_adamw_matches_reference(dtype, rtol, wd):
    rng = np.random.default_rng(4)
    p0 = rng.standard_normal((6, 4))
    grads = [rng.standard_normal((6, 4)) for _ in range(5)]
    p = p0.astype(dtype)
    opt = fc.AdamW(0.05, weight_decay=wd)
    for g in grads:
        opt.step([p], [g.astype(dtype)])
    np.testing.assert_allclose(p, reference_adamw(p0, grads, 0.05, wd), rtol=rtol,
                               atol=rtol * 0.1)


def test_adamw_without_decay_is_adam_bit_for_bit():
    rng = np.random.default_rng(5)
    a = rng.standard_normal(1000).astype(np.float32)
    b = a.copy()
    for _ in range(3):
        g = rng.standard_normal(1000).astype(np.float32)
        fc.Adam(0.01).step([a], [g])
        fc.AdamW(0.01, weight_decay=0.0).step([b], [g])
    np.testing.assert_array_equal(a, b)


def test_clip_norm_scales_the_global_norm_like_pytorch():
    rng = np.random.default_rng(6)
    params = [rng.standard_normal((3, 4)), rng.standard_normal(5)]
    grads = [10 * rng.standard_normal((3, 4)), 10 * rng.standard_normal(5)]
    norm = math.sqrt(sum(float((g * g).sum()) for g in grads))
    assert norm > 1.0
    clipped_p = [p.copy() for p in params]
    fc.SGD(0.1, clip_norm=1.0).step(clipped_p, grads)
    scale = 1.0 / (norm + 1e-6)  # one factor for every parameter
    for p, q, g in zip(params, clipped_p, grads, strict=True):
        np.testing.assert_allclose(q, p - 0.1 * g * scale, rtol=1e-12)
    # Under the limit nothing changes, bit for bit.
    small = [g / (2 * norm) for g in grads]
    a, b = [p.copy() for p in params], [p.copy() for p in params]
    fc.SGD(0.1).step(a, small)
    fc.SGD(0.1, clip_norm=1.0).step(b, small)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)
    with pytest.raises(ValueError, match="clip_norm"):
        fc.Adam(0.1, clip_norm=0.0)
    with pytest.raises(ValueError, match="weight_decay"):
        fc.AdamW(0.1, weight_decay=-1.0)


def test_adamw_and_clipping_match_pytorch():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(7)
    p0 = rng.standard_normal(50)
    grads = [5 * rng.standard_normal(50) for _ in range(4)]
    t = torch.tensor(p0.copy(), requires_grad=True)
    # eps ~0: PyTorch adds eps to the bias-corrected sqrt(v), fastcnn (as Keras) to sqrt(v)
    # (see reference_adamw), which at gradients near 1e-4 differs by 1e-3 of a step.
    opt_t = torch.optim.AdamW([t], lr=0.01, weight_decay=0.1, eps=1e-300)
    p = p0.copy()
    opt = fc.AdamW(0.01, weight_decay=0.1, clip_norm=2.0, eps=1e-300)
    for g in grads:
        t.grad = torch.tensor(g)
        torch.nn.utils.clip_grad_norm_([t], 2.0)
        opt_t.step()
        opt.step([p], [g])
    np.testing.assert_allclose(p, t.detach().numpy(), rtol=1e-12, atol=1e-12)
