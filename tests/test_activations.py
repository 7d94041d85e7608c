"""Activations: ReLU, LeakyReLU, Sigmoid and Tanh as layers and as ``activation=``, the
kernel against both oracles, and PyTorch where it is installed."""

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
    # Each element is computed in float64 and rounded once.
    tol = {"rtol": 1e-6, "atol": 1e-7} if dtype == np.float32 else {"rtol": 1e-12,
                                                                    "atol": 1e-15}
    for oracle in (reference, naive):
        np.testing.assert_allclose(y, oracle.activation_forward(x, kind, slope), **tol)
        np.testing.assert_allclose(dx, oracle.activation_backward(dy, saved, kind, slope),
                                   **tol)


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
