"""BatchNorm2D and BatchNorm1D: kernels against both oracles, running statistics with
PyTorch's meaning, folding into the layer before in evaluation, the fused ReLU,
validation, saving, and PyTorch where it is installed."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import fastcnn as fc
from fastcnn import functional, kernels, naive, plan, reference

ORACLES = [reference, naive]


@st.composite
def cases(draw):
    shape = (draw(st.integers(1, 4)), draw(st.integers(1, 5)), draw(st.integers(1, 20)))
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    return shape, dtype, draw(st.booleans()), draw(st.integers(0, 2**32 - 1))


def tolerance(dtype):
    # Everything is computed in float64 and rounded once to the data dtype.
    return {"rtol": 2e-6, "atol": 2e-6} if dtype == np.float32 else {"rtol": 1e-10,
                                                                      "atol": 1e-10}


@given(cases(), st.sampled_from([1e-5, 1e-3, 0.5]))
def test_kernels_match_oracles(case, eps):
    shape, dtype, relu, seed = case
    r = np.random.default_rng(seed)
    x = (r.standard_normal(shape) * r.uniform(0.1, 5) + r.uniform(-3, 3)).astype(dtype)
    gamma = r.standard_normal(shape[1]).astype(dtype)
    beta = r.standard_normal(shape[1]).astype(dtype)
    dy = r.standard_normal(shape).astype(dtype)
    y, mean, var, invstd = kernels.batchnorm_forward(x, gamma, beta, eps, relu)
    assert y.dtype == dtype and mean.dtype == var.dtype == invstd.dtype == np.float64
    grads = kernels.batchnorm_backward(dy, x, y, mean, invstd, gamma, relu, True)
    scale, shift = r.uniform(0.5, 2, shape[1]), r.standard_normal(shape[1])
    inference = kernels.batchnorm_inference(x, scale, shift, relu)
    for oracle in ORACLES:
        want = oracle.batchnorm_forward(x, gamma, beta, eps, relu)
        for got, expected in zip((y, mean, var, invstd), want, strict=True):
            np.testing.assert_allclose(got, expected, **tolerance(dtype))
        want = oracle.batchnorm_backward(dy, x, y, mean, invstd, gamma, relu, True)
        for got, expected in zip(grads, want, strict=True):
            # dgamma and dbeta are sums over up to 80 values before rounding.
            np.testing.assert_allclose(got, expected, rtol=tolerance(dtype)["rtol"] * 10,
                                       atol=tolerance(dtype)["atol"] * 10)
        np.testing.assert_allclose(inference, oracle.batchnorm_inference(x, scale, shift, relu),
                                   **tolerance(dtype))
    _, dgamma, dbeta = kernels.batchnorm_backward(dy, x, y, mean, invstd, gamma, relu, False)
    assert np.array_equal(dgamma, grads[1]) and np.array_equal(dbeta, grads[2])


def test_normalises_each_channel_and_tracks_running_statistics_as_pytorch():
    r = np.random.default_rng(0)
    layer = fc.BatchNorm2D(momentum=0.3, eps=1e-4)
    model = fc.Sequential([layer], input_shape=(3, 4, 5), seed=0)
    batches = [(r.standard_normal((6, 3, 4, 5)) * [[[2.0]], [[0.5]], [[1.0]]]
                + [[[1.0]], [[-2.0]], [[0.0]]]).astype(np.float32) for _ in range(3)]
    mean, var = np.zeros(3), np.ones(3)
    for x in batches:
        y = model.forward(x, training=True)
        # Normalised per channel over batch and plane (gamma 1, beta 0 as built).
        np.testing.assert_allclose(y.mean(axis=(0, 2, 3)), 0, atol=1e-5)
        np.testing.assert_allclose(y.var(axis=(0, 2, 3)), 1, atol=1e-3)
        v = x.astype(np.float64)
        mean = 0.7 * mean + 0.3 * v.mean(axis=(0, 2, 3))
        var = 0.7 * var + 0.3 * v.var(axis=(0, 2, 3), ddof=1)  # unbiased, as PyTorch
        np.testing.assert_allclose(layer.buffers["running_mean"], mean, rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(layer.buffers["running_var"], var, rtol=1e-6)
    x = batches[0]
    want = (x - mean[:, None, None]) / np.sqrt(var[:, None, None] + 1e-4)
    np.testing.assert_allclose(model.forward(x, training=False), want, rtol=1e-5, atol=1e-5)
    # Buffers are saved, never optimised.
    assert [p.shape for p in model.parameters()] == [(3,), (3,)]
    assert sorted(model.state_arrays()) == ["0.beta", "0.gamma", "0.running_mean",
                                            "0.running_var"]


def bn_model(seed: int, dtype=np.float32) -> fc.Sequential:
    return fc.Sequential([
        fc.Conv2D(4, 3, padding="same"), fc.BatchNorm2D(), fc.ReLU(), fc.MaxPool2D(2),
        fc.Conv2D(5, 3, stride=2), fc.BatchNorm2D(), fc.Flatten(),
        fc.Dense(8), fc.BatchNorm1D(), fc.ReLU(), fc.Dense(10),
    ], input_shape=(1, 12, 12), seed=seed, dtype=dtype)


def unfused(model: fc.Sequential, monkeypatch) -> None:
    monkeypatch.setattr(plan, "FUSIONS", ())
    model._plans = {t: plan.build_plan(model.layers, t) for t in (False, True)}


def trained(seed: int = 0) -> tuple[fc.Sequential, np.ndarray]:
    r = np.random.default_rng(seed)
    x = r.standard_normal((16, 1, 12, 12)).astype(np.float32)
    y = r.integers(0, 10, 16)
    model = bn_model(seed)
    opt = fc.Adam(0.01)
    for _ in range(5):
        model.train_step(x, y, opt)
    return model, x


def test_evaluation_folds_batchnorm_into_the_layer_before(monkeypatch):
    model, x = trained()
    assert [(s.first, s.size) for s in model._plans[False]] == [(0, 4), (4, 2), (6, 1),
                                                                  (7, 3), (10, 1)]
    folded = model.forward(x, training=False)
    unfused(model, monkeypatch)
    assert all(s.size == 1 for s in model._plans[False])
    plain = model.forward(x, training=False)
    # Folding rounds the folded weights once to float32.
    np.testing.assert_allclose(folded, plain, rtol=1e-5, atol=1e-5)
    assert not np.array_equal(folded, np.zeros_like(folded))


def test_training_with_the_fused_relu_is_bit_identical_to_unfused(monkeypatch):
    fused, x = trained()
    assert {s.first for s in fused._trained_plan if s.size > 1} == {1, 8}
    monkeypatch.setattr(plan, "FUSIONS", ())
    plain, _ = trained()
    assert all(s.size == 1 for s in plain._trained_plan)
    for a, b in zip(fused.state_arrays().values(), plain.state_arrays().values(), strict=True):
        assert np.array_equal(a, b)


def test_save_and_load_keep_the_running_statistics(tmp_path):
    model, x = trained()
    model.save(tmp_path / "bn.npz")
    loaded = fc.load_model(tmp_path / "bn.npz")
    assert [type(a) for a in loaded.layers] == [type(b) for b in model.layers]
    for a, b in zip(loaded.state_arrays().values(), model.state_arrays().values(), strict=True):
        assert np.array_equal(a, b)
    assert np.array_equal(loaded.predict(x), model.predict(x))
    assert "16" in loaded.summary()  # BatchNorm2D(4): gamma, beta and two buffers of 4


def test_trains_on_real_data():
    x, y = fc.load_dataset("sample", "train")
    test = fc.load_dataset("sample", "test")
    model = fc.Sequential([
        fc.Conv2D(8, 3, padding="same"), fc.BatchNorm2D(), fc.ReLU(), fc.MaxPool2D(2),
        fc.Flatten(), fc.Dense(32), fc.BatchNorm1D(), fc.ReLU(), fc.Dense(10),
    ], seed=0)
    model.fit(x, y, epochs=3, batch_size=32, optimizer=fc.Adam(0.003), verbose=False)
    assert model.evaluate(*test)["accuracy"] > 0.7


@pytest.mark.parametrize("call, exc, match", [
    (lambda: fc.BatchNorm2D(momentum=1.5), ValueError, "momentum must be in"),
    (lambda: fc.BatchNorm2D(momentum="a"), TypeError, "momentum must be a number"),
    (lambda: fc.BatchNorm1D(eps=0), ValueError, "eps must be in"),
    (lambda: fc.BatchNorm1D(eps=float("nan")), ValueError, "eps must be in"),
    (lambda: fc.Sequential([fc.BatchNorm2D()], input_shape=(5,)), ValueError,
     "expects \\(C, H, W\\)"),
    (lambda: fc.Sequential([fc.BatchNorm1D()], input_shape=(1, 4, 4)), ValueError,
     "expects flat"),
    (lambda: fc.Sequential([fc.BatchNorm1D()], input_shape=(5,)).forward(
        np.ones((1, 5), np.float32), training=True), ValueError, "more than one value"),
    (lambda: fc.Sequential([fc.BatchNorm1D()], input_shape=(5,)).layers[0].backward(
        np.ones((2, 5), np.float32)), RuntimeError, "before forward"),
    (lambda: functional.batch_norm(np.ones((2, 3, 4, 4)), np.ones(2), np.ones(3)),
     ValueError, "gamma must have shape \\(3,\\)"),
    (lambda: functional.batch_norm(np.ones((2, 3, 4)), np.ones(3), np.ones(3)),
     ValueError, "x must have 4 dimensions"),
    (lambda: functional.batch_norm(np.ones((2, 3)), np.ones(3, np.float32), np.ones(3)),
     TypeError, "gamma has dtype float32"),
    (lambda: functional.batch_norm_inference(np.ones((2, 3)), np.ones(3), np.ones(3),
                                             np.zeros(3), -np.ones(3)),
     ValueError, "running_var must not be negative"),
    (lambda: functional.batch_norm_backward(np.ones((2, 4)), np.ones((2, 3)),
                                            np.ones((2, 3)), np.zeros(3), np.ones(3),
                                            np.ones(3)), ValueError, "dy must have x's shape"),
])
def test_bad_arguments_are_named(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


def test_replaced_buffers_of_the_wrong_shape_are_named():
    model, x = trained()
    model.layers[1].buffers["running_var"] = np.ones(3, np.float32)
    with pytest.raises(ValueError, match="running_var must have shape \\(4,\\)"):
        model.forward(x, training=False)
    with pytest.raises(ValueError, match="running_var"):
        model.forward(x, training=True)


def _torch():
    return pytest.importorskip("torch", reason="PyTorch (the bench extra) is not installed")


@pytest.mark.parametrize("shape", [(6, 3, 5, 4), (8, 7)])
def test_matches_pytorch_in_training_and_evaluation(shape):
    torch = _torch()
    r = np.random.default_rng(1)
    c = shape[1]
    ours = (fc.BatchNorm2D if len(shape) == 4 else fc.BatchNorm1D)(momentum=0.2, eps=1e-4)
    model = fc.Sequential([ours], input_shape=shape[1:], seed=0, dtype=np.float64)
    theirs = (torch.nn.BatchNorm2d if len(shape) == 4 else torch.nn.BatchNorm1d)(
        c, momentum=0.2, eps=1e-4).double()
    gamma, beta = r.standard_normal(c), r.standard_normal(c)
    ours.params["gamma"][:], ours.params["beta"][:] = gamma, beta
    with torch.no_grad():
        theirs.weight.copy_(torch.from_numpy(gamma))
        theirs.bias.copy_(torch.from_numpy(beta))
    for _ in range(3):
        x = r.standard_normal(shape) * 2 + 1
        dy = r.standard_normal(shape)
        tx = torch.from_numpy(x).requires_grad_(True)
        ty = theirs.train()(tx)
        ty.backward(torch.from_numpy(dy))
        np.testing.assert_allclose(model.forward(x, training=True), ty.detach().numpy(),
                                   rtol=1e-10, atol=1e-10)
        dx = ours.backward(dy)
        np.testing.assert_allclose(dx, tx.grad.numpy(), rtol=1e-9, atol=1e-9)
        np.testing.assert_allclose(ours.grads["gamma"], theirs.weight.grad.numpy(), rtol=1e-9)
        np.testing.assert_allclose(ours.grads["beta"], theirs.bias.grad.numpy(), rtol=1e-9)
        theirs.zero_grad()
    np.testing.assert_allclose(ours.buffers["running_mean"], theirs.running_mean.numpy(),
                               rtol=1e-12)
    np.testing.assert_allclose(ours.buffers["running_var"], theirs.running_var.numpy(),
                               rtol=1e-12)
    x = r.standard_normal(shape)
    want = theirs.eval()(torch.from_numpy(x)).detach().numpy()
    np.testing.assert_allclose(model.forward(x, training=False), want, rtol=1e-10, atol=1e-10)


def test_warmup_leaves_the_running_statistics_alone():
    model, _ = trained()
    before = {k: v.copy() for k, v in model.state_arrays().items()}
    model.warmup(fc.Adam(0.01))
    for k, v in model.state_arrays().items():
        assert np.array_equal(v, before[k]), k
