"""Activations: ReLU, LeakyReLU, Sigmoid and Tanh as layers and as ``activation=``, the
kernel against both oracles, and PyTorch where it is installed."""

import numba
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import fastcnn as fc
from fastcnn import functional, kernels, naive, ops, reference

NAMES = sorted(ops.ACTIVATIONS)


@given(st.sampled_from(NAMES), st.integers(1, 500), st.floats(-3, 3),
       st.sampled_from([np.float32, np.float64]), st.floats(0.1, 200),
       st.integers(0, 2**32 - 1))
def test_activation_kernels_match_oracles(name, size, slope, dtype, scale, seed):
    r = np.random.default_rng(seed)
    x = (scale * r.standard_normal(size)).astype(dtype)  # large |x|: sigmoid must not overflow
    dy = r.standard_normal(size).astype(dtype)
    kind = ops.ACTIVATIONS[name]
    y = kernels.activation_forward(x, kind, slope)
    saved = y if name in ("sigmoid", "tanh") else x
    dx = kernels.activation_backward(dy, saved, kind, slope)
    assert y.dtype == dx.dtype == dtype and np.all(np.isfinite(y))
    # float64 math rounded once, or (float32 sigmoid, tanh) within 2.5 ulp.
    tol = {"rtol": 1e-6, "atol": 1e-7} if dtype == np.float32 else {"rtol": 1e-12,
                                                                    "atol": 1e-15}
    for oracle in (reference, naive):
        np.testing.assert_allclose(y, oracle.activation_forward(x, kind, slope), **tol)
        np.testing.assert_allclose(dx, oracle.activation_backward(dy, saved, kind, slope),
                                   **tol)


def _float32_sample(n):
    """n float32 from random bit patterns (every exponent), a dense grid over the range
    where tanh and sigmoid are not yet flat, and the edge cases."""
    r = np.random.default_rng(0)
    x = r.integers(0, 2**32, n, dtype=np.uint64).astype(np.uint32).view(np.float32)
    edges = [0.0, -0.0, np.inf, -np.inf, 0.625, -0.625, 44.0, 88.7, 89.0, -87.4, -103.9,
             -104.0, -150.0, 1e-30, -1e-45, np.finfo(np.float32).max]
    return np.concatenate([x[~np.isnan(x)], np.linspace(-120, 120, n // 4, dtype=np.float32),
                           np.array(edges, np.float32)])


@pytest.mark.parametrize("name, max_ulp", [("tanh", 1.5), ("sigmoid", 2.5)])
def test_float32_sigmoid_and_tanh_are_within_their_ulp_bounds(name, max_ulp):
    """float32 sigmoid and tanh are vectorised approximations (kernels/mathf.py): within
    max_ulp of the float64 value everywhere, subnormal results included, and exact at
    the limits (+-1, 0, +-0 kept, NaN carried)."""
    x = _float32_sample(4_000_000)
    kind = ops.ACTIVATIONS[name]
    y = kernels.activation_forward(x, kind, 0.0)
    want = reference.activation_forward(x, kind, 0.0)
    ulp = np.spacing(np.abs(want).astype(np.float32)).astype(np.float64)
    err = np.abs(y - want) / ulp
    assert err.max() <= max_ulp, f"{err.max():.2f} ulp at x = {x[err.argmax()]!r}"
    np.testing.assert_array_equal(np.signbit(y), np.signbit(want.astype(np.float32)))
    assert np.isnan(kernels.activation_forward(np.array([np.nan], np.float32), kind, 0.0)[0])


@pytest.mark.skipif(numba.config.NUMBA_NUM_THREADS < 2, reason="needs two Numba threads")
@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("size", [1, 15, 16, 17, 1000, 100_003])
def test_activation_bits_do_not_depend_on_the_thread_count(restore_threads, name, size):
    """A loop's vectorised body and its scalar remainder round alike: the same element
    gives the same bits alone, in any position, with 1 or 2 threads."""
    x = (8 * np.random.default_rng(size).standard_normal(size)).astype(np.float32)
    kind = ops.ACTIVATIONS[name]
    results = []
    for n in (1, 2):
        fc.set_threads(n)
        results.append(kernels.activation_forward(x, kind, 0.01))
    alone = [kernels.activation_forward(x[i:i + 1], kind, 0.01)[0] for i in range(0, size, 7)]
    np.testing.assert_array_equal(results[0], results[1])
    np.testing.assert_array_equal(results[0][::7], alone)


@pytest.mark.parametrize("name", NAMES)
def test_activations_carry_nan(name):
    x = np.array([np.nan, -1.0, 2.0], np.float32)
    y = functional.activation(x, name)
    assert np.isnan(y[0]) and np.all(np.isfinite(y[1:]))


def test_relu_layer_keeps_its_bits():
    x = np.random.default_rng(0).standard_normal((4, 3, 5, 5)).astype(np.float32)
    x[0, 0, 0, 0] = 0.0
    layer = fc.ReLU()
    fc.Sequential([layer, fc.Flatten(), fc.Dense(2)], input_shape=(3, 5, 5))
    np.testing.assert_array_equal(layer.forward(x), np.maximum(x, 0))
    dy = np.random.default_rng(1).standard_normal(x.shape).astype(np.float32)
    np.testing.assert_array_equal(layer.backward(dy), np.where(x > 0, dy, 0))


@pytest.mark.parametrize("name", ["leaky_relu", "sigmoid", "tanh"])
def test_activation_argument_equals_the_layer_after(name):
    """Conv2D/Dense(activation=name) give the bits of the layer followed by the
    activation layer, in both passes; such a Conv2D does not fuse with its pool."""
    layer = {"leaky_relu": fc.LeakyReLU, "sigmoid": fc.Sigmoid, "tanh": fc.Tanh}[name]
    a = fc.Sequential([fc.Conv2D(3, 3, padding="same", activation=name), fc.MaxPool2D(2),
                       fc.Flatten(), fc.Dense(6, activation=name), fc.Dense(4)],
                      input_shape=(2, 8, 8), seed=5)
    b = fc.Sequential([fc.Conv2D(3, 3, padding="same"), layer(), fc.MaxPool2D(2),
                       fc.Flatten(), fc.Dense(6), layer(), fc.Dense(4)],
                      input_shape=(2, 8, 8), seed=5)
    assert a._plans[True][0].size == 1  # not fused with the pool
    rng = np.random.default_rng(2)
    x = rng.standard_normal((5, 2, 8, 8)).astype(np.float32)
    labels = rng.integers(0, 4, 5)
    for m in (a, b):
        m.loss(m.forward(x, training=True), labels)
        m.backward(m.loss.backward())
    for ga, gb in zip(a.gradients(), b.gradients(), strict=True):
        np.testing.assert_array_equal(ga, gb)
    with pytest.raises(ValueError, match="forward_pooled"):
        a.layers[0].forward_pooled(x, a.layers[1])


@pytest.mark.parametrize("call, exc, match", [
    (lambda: fc.Conv2D(2, 3, activation="gelu"), ValueError, "activation must be one of"),
    (lambda: fc.Dense(2, activation="softmax"), ValueError, "activation must be one of"),
    (lambda: fc.LeakyReLU(float("inf")), TypeError, "negative_slope"),
    (lambda: fc.LeakyReLU("0.1"), TypeError, "negative_slope"),
    (lambda: functional.activation(np.ones(3, np.float32), "swish"), ValueError,
     "activation must be one of"),
    (lambda: functional.activation_backward(np.ones(3, np.float32), np.ones(2, np.float32),
                                            "tanh"), ValueError, "differs"),
    (lambda: functional.activation_backward(np.ones(3, np.float32), np.ones(3), "tanh"),
     TypeError, "one dtype"),
])
def test_bad_arguments_are_named(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


def test_leaky_relu_slope_is_saved(tmp_path):
    model = fc.Sequential([fc.Flatten(), fc.Dense(5), fc.LeakyReLU(0.2), fc.Dense(3),
                           fc.Sigmoid(), fc.Dense(2), fc.Tanh(), fc.Dense(2)],
                          input_shape=(1, 4, 4))
    model.save(tmp_path / "m.npz")
    loaded = fc.load_model(tmp_path / "m.npz")
    assert loaded.layers[2].get_config() == {"negative_slope": 0.2}
    x = np.random.default_rng(3).standard_normal((4, 1, 4, 4)).astype(np.float32)
    np.testing.assert_array_equal(loaded.predict(x), model.predict(x))


def test_activations_match_pytorch():
    torch = pytest.importorskip("torch")
    x = np.linspace(-30, 30, 601).astype(np.float32)
    t = torch.from_numpy(x)
    for name, want in [("relu", torch.relu(t)), ("sigmoid", torch.sigmoid(t)),
                       ("tanh", torch.tanh(t)),
                       ("leaky_relu", torch.nn.functional.leaky_relu(t, 0.01))]:
        np.testing.assert_allclose(functional.activation(x, name), want.numpy(), rtol=1e-6,
                                   atol=1e-7)
