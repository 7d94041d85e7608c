"""Backward passes against central finite differences, in float64."""

import numpy as np
import pytest

from fastcnn import (
    AvgPool2D,
    BatchNorm1D,
    BatchNorm2D,
    Conv2D,
    Dense,
    Dropout,
    Flatten,
    GlobalAvgPool2D,
    LeakyReLU,
    MaxPool2D,
    ReLU,
    Sequential,
    Sigmoid,
    Tanh,
)

EPS = 1e-6


def numeric_grad(f, a, idx):
    old = a[idx]
    a[idx] = old + EPS
    up = f()
    a[idx] = old - EPS
    down = f()
    a[idx] = old
    return (up - down) / (2 * EPS)


def sample_indices(a, rng, k=12):
    flat = rng.choice(a.size, size=min(k, a.size), replace=False)
    return [np.unravel_index(i, a.shape) for i in flat]


def check_layer(layer, input_shape, rng, backend):
    model = Sequential([layer], input_shape=input_shape, seed=1, dtype=np.float64)
    x = rng.standard_normal((3, *input_shape))
    r = rng.standard_normal((3, *model.output_shape))

    def loss():
        # A fresh generator per call: Dropout draws the same mask every time.
        y = layer.forward(x, training=True, rng=np.random.default_rng(7))
        return float(np.sum(y * r))

    loss()
    dx = layer.backward(r)
    for idx in sample_indices(x, rng):
        assert dx[idx] == pytest.approx(numeric_grad(loss, x, idx), rel=1e-5, abs=1e-7)
    for name, p in layer.params.items():
        loss()
        layer.backward(r)
        g = layer.grads[name].copy()
        for idx in sample_indices(p, rng):
            assert g[idx] == pytest.approx(numeric_grad(loss, p, idx), rel=1e-5, abs=1e-7), name


def check_model(model, x, y, rng, fused=frozenset()):
    """Every parameter's gradient through the whole model against finite differences;
    `fused`: the layers the training plan must have run fused."""
    def loss():
        return model.loss(model.forward(x, training=True), y)

    loss()
    assert model._fused == fused
    model.backward(model.loss.backward())
    grads = [g.copy() for g in model.gradients()]
    for p, g in zip(model.parameters(), grads, strict=True):
        for idx in sample_indices(p, rng, k=6):
            assert g[idx] == pytest.approx(numeric_grad(loss, p, idx), rel=1e-4, abs=1e-8)


@pytest.mark.parametrize("backend", ["numba", "numpy"])
@pytest.mark.parametrize("make,shape", [
    (lambda b: Conv2D(4, 3, padding="same", backend=b), (2, 7, 6)),
    (lambda b: Conv2D(3, (2, 4), stride=2, padding=1, activation="relu", backend=b), (3, 9, 8)),
    (lambda b: Conv2D(2, 5, stride=(1, 3), padding="valid", backend=b), (1, 8, 12)),
    (lambda b: MaxPool2D(2, backend=b), (3, 8, 7)),
    (lambda b: MaxPool2D(3, stride=2, backend=b), (2, 9, 9)),
    (lambda b: ReLU(backend=b), (2, 5, 5)),
    (lambda b: AvgPool2D(2, backend=b), (3, 8, 7)),
    (lambda b: AvgPool2D((3, 2), stride=(1, 2), backend=b), (2, 7, 9)),
    (lambda b: GlobalAvgPool2D(backend=b), (4, 5, 6)),
    (lambda b: Dropout(0.4, backend=b), (3, 6, 5)),
    (lambda b: LeakyReLU(0.1, backend=b), (2, 4, 5)),
    (lambda b: Sigmoid(backend=b), (2, 4, 5)),
    (lambda b: Tanh(backend=b), (2, 4, 5)),
    (lambda b: Conv2D(3, 3, padding="same", activation="tanh", backend=b), (2, 6, 5)),
    (lambda b: Dense(6, activation="sigmoid", backend=b), (9,)),
    (lambda b: Dense(6, activation="leaky_relu", backend=b), (9,)),
    (lambda b: Flatten(backend=b), (2, 3, 4)),
    (lambda b: Dense(7, activation="relu", backend=b), (11,)),
    (lambda b: BatchNorm2D(backend=b), (3, 5, 4)),
    (lambda b: BatchNorm2D(momentum=0.5, eps=1e-3, backend=b), (2, 1, 1)),
    (lambda b: BatchNorm1D(backend=b), (7,)),
])
def test_layer_gradients(make, shape, backend, rng):
    check_layer(make(backend), shape, rng, backend)


@pytest.mark.parametrize("backend", ["numba", "numpy"])
def test_whole_model_gradients(backend, rng):
    model = Sequential([
        Conv2D(3, 3, padding="same", activation="relu", backend=backend),
        Conv2D(4, 3, stride=2, padding="same", backend=backend),
        ReLU(backend=backend),
        MaxPool2D(2, backend=backend),
        Flatten(backend=backend),
        Dense(6, activation="relu", backend=backend),
        Dense(5, backend=backend),
    ], input_shape=(2, 10, 9), seed=3, dtype=np.float64)
    x = rng.standard_normal((4, 2, 10, 9))
    y = np.array([0, 3, 4, 1])
    check_model(model, x, y, rng)


@pytest.mark.parametrize("backend", ["numba", "numpy"])
def test_fused_conv_pool_gradients(backend, rng):
    """Conv2D + MaxPool2D pairs train fused (stride 1 and strided, with and without ReLU)."""
    model = Sequential([
        Conv2D(3, 3, padding="same", activation="relu", backend=backend),
        MaxPool2D(2, backend=backend),
        Conv2D(4, 3, stride=2, padding=1, backend=backend),
        MaxPool2D((1, 2), backend=backend),
        Flatten(backend=backend),
        Dense(5, backend=backend),
    ], input_shape=(2, 10, 9), seed=5, dtype=np.float64)
    x = rng.standard_normal((3, 2, 10, 9))
    y = np.array([0, 3, 4])
    check_model(model, x, y, rng, fused={0, 2})


def test_backends_agree_on_seed_arch_training(rng):
    """Numba and NumPy backends take the same float32 training steps within tolerance."""
    from fastcnn import SGD, seed_arch

    x = rng.integers(0, 256, (16, 28, 28), dtype=np.uint8)
    y = rng.integers(0, 10, 16)
    models = [seed_arch(0, backend=b) for b in ("numba", "numpy")]
    for model in models:
        model.fit(x, y, epochs=2, batch_size=8, optimizer=SGD(0.05, momentum=0.9), verbose=False)
    for a, b in zip(models[0].parameters(), models[1].parameters(), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-5)


@pytest.mark.parametrize("backend", ["numba", "numpy"])
def test_batchnorm_model_gradients(backend, rng):
    """Conv2D + BatchNorm2D + ReLU and Dense + BatchNorm1D + ReLU: the BatchNorms train
    fused with their ReLUs."""
    model = Sequential([
        Conv2D(3, 3, padding="same", backend=backend),
        BatchNorm2D(backend=backend),
        ReLU(backend=backend),
        MaxPool2D(2, backend=backend),
        Flatten(backend=backend),
        Dense(6, backend=backend),
        BatchNorm1D(backend=backend),
        ReLU(backend=backend),
        Dense(5, backend=backend),
    ], input_shape=(2, 8, 7), seed=5, dtype=np.float64)
    x = rng.standard_normal((4, 2, 8, 7))
    y = np.array([0, 3, 4, 1])
    check_model(model, x, y, rng, fused={1, 6})
