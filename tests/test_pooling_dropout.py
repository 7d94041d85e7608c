"""AvgPool2D, GlobalAvgPool2D and Dropout: kernels against both oracles, the layers'
behaviour and validation, and PyTorch where it is installed."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import fastcnn as fc
from fastcnn import functional, kernels, naive, reference

ORACLES = [reference, naive]


@st.composite
def pool_cases(draw):
    n, c = draw(st.integers(1, 3)), draw(st.integers(1, 4))
    ph, pw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    sh, sw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    h, w = draw(st.integers(ph, 13)), draw(st.integers(pw, 13))
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    return n, c, h, w, ph, pw, sh, sw, dtype, draw(st.integers(0, 2**32 - 1))


def tolerance(dtype):
    # Sums are taken in float64 and rounded once: one rounding of the data dtype.
    return {"rtol": 1e-6, "atol": 1e-6} if dtype == np.float32 else {"rtol": 1e-12,
                                                                      "atol": 1e-12}


@given(pool_cases())
def test_avgpool_matches_oracles(case):
    n, c, h, w, ph, pw, sh, sw, dtype, seed = case
    r = np.random.default_rng(seed)
    x = r.standard_normal((n, c, h, w)).astype(dtype)
    y = kernels.avgpool2d_forward(x, ph, pw, sh, sw)
    dy = r.standard_normal(y.shape).astype(dtype)
    dx = kernels.avgpool2d_backward(dy, ph, pw, sh, sw, h, w)
    assert y.dtype == dx.dtype == dtype
    for oracle in ORACLES:
        np.testing.assert_allclose(y, oracle.avgpool2d_forward(x, ph, pw, sh, sw),
                                   **tolerance(dtype))
        np.testing.assert_allclose(dx, oracle.avgpool2d_backward(dy, ph, pw, sh, sw, h, w),
                                   **tolerance(dtype))


@given(pool_cases())
def test_global_avgpool_matches_oracles(case):
    n, c, h, w, _, _, _, _, dtype, seed = case
    r = np.random.default_rng(seed)
    x = r.standard_normal((n, c, h, w)).astype(dtype)
    y = kernels.global_avgpool2d_forward(x)
    dy = r.standard_normal(y.shape).astype(dtype)
    dx = kernels.global_avgpool2d_backward(dy, h, w)
    for oracle in ORACLES:
        np.testing.assert_allclose(y, oracle.global_avgpool2d_forward(x), **tolerance(dtype))
        np.testing.assert_allclose(dx, oracle.global_avgpool2d_backward(dy, h, w),
                                   **tolerance(dtype))


@given(st.integers(1, 2000), st.floats(0, 0.95), st.sampled_from([np.float32, np.float64]),
       st.integers(0, 2**32 - 1))
def test_dropout_matches_oracles(size, rate, dtype, seed):
    r = np.random.default_rng(seed)
    x = r.standard_normal(size).astype(dtype)
    keep = r.random(size) >= rate
    y = kernels.dropout_apply(x, keep, 1 / (1 - rate))
    assert y.dtype == dtype
    for oracle in ORACLES:
        np.testing.assert_allclose(y, oracle.dropout_apply(x, keep, 1 / (1 - rate)),
                                   **tolerance(dtype))


def test_dropout_keeps_the_expected_share_and_its_mean():
    x = np.ones((64, 4, 16, 16), np.float32)
    y, keep = functional.dropout(x, 0.3, np.random.default_rng(0))
    assert abs(keep.mean() - 0.7) < 0.01  # 65,536 draws: ~0.002 standard deviation
    assert abs(float(y.mean()) - 1.0) < 0.02  # inverted: the expectation is kept
    np.testing.assert_array_equal(y[keep], np.float32(1 / 0.7))
    assert not y[~keep].any()
    # The same generator state draws the same mask; the backward pass uses it.
    _, again = functional.dropout(x, 0.3, np.random.default_rng(0))
    np.testing.assert_array_equal(keep, again)
    dy = np.full_like(x, 2.0)
    np.testing.assert_array_equal(functional.dropout_backward(dy, keep, 0.3),
                                  np.where(keep, np.float32(2 / 0.7), 0))


def test_dropout_carries_nan_like_pytorch():
    x = np.array([np.nan, 1.0], np.float32)
    y = kernels.dropout_apply(x, np.array([False, True]), 2.0)
    assert np.isnan(y[0]) and y[1] == 2.0  # x * mask: NaN * 0 is NaN


def test_dropout_layer_is_the_identity_in_evaluation_and_needs_a_generator():
    layer = fc.Dropout(0.5)
    model = fc.Sequential([fc.Flatten(), layer, fc.Dense(3)], input_shape=(1, 4, 4))
    x = np.random.default_rng(1).standard_normal((5, 16)).astype(np.float32)
    assert layer.forward(x, training=False) is x
    with pytest.raises(ValueError, match="Generator"):
        layer.forward(x, training=True)
    # Sequential hands it the model's generator when the caller gives none.
    logits = model.forward(x.reshape(5, 1, 4, 4), training=True)
    assert logits.shape == (5, 3)


@pytest.mark.parametrize("call, exc, match", [
    (lambda: fc.Dropout(1.0), ValueError, r"rate must be in \[0, 1\)"),
    (lambda: fc.Dropout(-0.1), ValueError, r"rate must be in \[0, 1\)"),
    (lambda: fc.Dropout(float("nan")), ValueError, r"rate must be in \[0, 1\)"),
    (lambda: fc.Dropout(True), TypeError, "rate must be a number"),
    (lambda: fc.Dropout("0.5"), TypeError, "rate must be a number"),
    (lambda: functional.dropout(np.ones(3, np.float32), 0.5, 7), TypeError, "Generator"),
    (lambda: functional.dropout(np.ones(3, np.int64), 0.5, np.random.default_rng()),
     TypeError, "float32 or float64"),
    (lambda: functional.dropout_backward(np.ones(3, np.float32), np.ones(3), 0.5),
     TypeError, "bool array"),
    (lambda: functional.dropout_backward(np.ones(3, np.float32), np.ones(2, bool), 0.5),
     ValueError, "differs"),
    (lambda: functional.avg_pool2d(np.ones((1, 1, 2, 2), np.float32), 3), ValueError,
     "larger than the input"),
    (lambda: functional.avg_pool2d(np.ones((1, 2, 2), np.float32)), ValueError,
     "4 dimensions"),
    (lambda: functional.avg_pool2d_backward(np.ones((1, 1, 2, 2), np.float32), (1, 1, 6, 6)),
     ValueError, "dy must have shape"),
    (lambda: functional.avg_pool2d_backward(np.ones((1, 1, 2, 2), np.float32), (1, 1, 4)),
     TypeError, "input_shape"),
    (lambda: functional.avg_pool2d_backward(np.ones((1, 1, 1, 1), np.float32),
                                            (1, 1, 2**20, 2**20)), ValueError, "elements"),
    (lambda: functional.global_avg_pool2d_backward(np.ones((2, 3), np.float32), (2, 4, 5, 5)),
     ValueError, "dy must have shape"),
    (lambda: functional.global_avg_pool2d_backward(np.ones((2, 3, 1), np.float32),
                                                   (2, 3, 5, 5)), ValueError, "2 dimensions"),
    (lambda: fc.GlobalAvgPool2D().compute_output_shape((4,)), ValueError, "(C, H, W)"),
])
def test_bad_arguments_are_named(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


def test_models_with_the_new_layers_save_load_and_train(tmp_path):
    def make(seed):
        return fc.Sequential([
            fc.Conv2D(4, 3, padding="same", activation="relu"), fc.Dropout(0.25),
            fc.AvgPool2D(2), fc.Conv2D(6, 3), fc.GlobalAvgPool2D(), fc.Dense(10),
        ], input_shape=(1, 28, 28), seed=seed)

    x, y = fc.load_dataset("sample", "train")
    test = fc.load_dataset("sample", "test")
    model = make(0)
    before = model.evaluate(*test)["loss"]
    model.fit(x, y, epochs=2, batch_size=32, optimizer=fc.Adam(0.01), verbose=False)
    assert model.evaluate(*test)["loss"] < before
    model.save(tmp_path / "m.npz")
    loaded = fc.load_model(tmp_path / "m.npz")
    assert [type(a) for a in loaded.layers] == [type(b) for b in model.layers]
    assert loaded.layers[1].rate == 0.25 and loaded.layers[2].pool_size == (2, 2)
    np.testing.assert_array_equal(loaded.predict(x[:50]), model.predict(x[:50]))


def _torch():
    return pytest.importorskip("torch")


def test_avg_pool_and_dropout_scale_match_pytorch():
    torch = _torch()
    x = np.random.default_rng(3).standard_normal((2, 3, 9, 8)).astype(np.float32)
    for pool, stride in [(2, 2), (3, 2), ((2, 3), (1, 2))]:
        want = torch.nn.functional.avg_pool2d(torch.from_numpy(x), pool, stride).numpy()
        np.testing.assert_allclose(functional.avg_pool2d(x, pool, stride), want, rtol=1e-6,
                                   atol=1e-6)
    want = torch.nn.functional.adaptive_avg_pool2d(torch.from_numpy(x), 1).numpy()[:, :, 0, 0]
    np.testing.assert_allclose(functional.global_avg_pool2d(x), want, rtol=1e-6, atol=1e-6)
    # PyTorch's masks come from its own generator: compare the scaling of kept elements.
    y = torch.nn.functional.dropout(torch.ones(10_000), 0.2, training=True).numpy()
    np.testing.assert_allclose(y[y != 0], 1 / 0.8, rtol=1e-6)
