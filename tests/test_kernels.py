"""Numba kernels against the vectorised and the naive NumPy oracles on random shapes."""

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from fastcnn import functional, kernels, naive, reference
from fastcnn.kernels import conv as conv_kernels

RTOL = 1e-4
ORACLES = [reference, naive]


def assert_close32(actual, expected, magnitude):
    """float32 result vs float64 oracle: rtol 1e-4 plus an atol scaled to the terms summed.

    `magnitude` is the oracle applied to |inputs|: the sum of absolute terms per output,
    which bounds the float32 rounding error of the sum.
    """
    assert actual.dtype == np.float32
    atol = 1e-6 * float(np.max(np.abs(magnitude), initial=1.0))
    np.testing.assert_allclose(actual, expected, rtol=RTOL, atol=atol)


@st.composite
def conv_cases(draw, max_n=3):
    n = draw(st.integers(1, max_n))
    c = draw(st.integers(1, 4))
    f = draw(st.integers(1, 4))
    kh, kw = draw(st.integers(1, 5)), draw(st.integers(1, 5))
    sh, sw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    padding = draw(st.one_of(st.sampled_from(["same", "valid"]), st.integers(0, 3),
                             st.tuples(st.integers(0, 3), st.integers(0, 3))))
    h = draw(st.integers(1, 13))
    w = draw(st.integers(1, 13))
    try:
        geo = functional.conv_geometry(h, w, (kh, kw), (sh, sw), padding)
    except ValueError:
        geo = None
    seed = draw(st.integers(0, 2**32 - 1))
    return (n, c, f, h, w, kh, kw, sh, sw, padding, geo, seed)


def make_conv(case, dtype=np.float32):
    n, c, f, h, w, kh, kw, sh, sw, padding, geo, seed = case
    r = np.random.default_rng(seed)
    x = r.standard_normal((n, c, h, w)).astype(dtype)
    wt = r.standard_normal((f, c, kh, kw)).astype(dtype)
    b = r.standard_normal(f).astype(dtype)
    return x, wt, b


@given(conv_cases())
def test_conv2d_forward_matches_oracles(case):
    n, c, f, h, w, kh, kw, sh, sw, padding, geo, seed = case
    if geo is None:
        return
    x, wt, b = make_conv(case)
    for relu in (False, True):
        y = kernels.conv2d_forward(x, wt, b, sh, sw, *geo, relu)
        mag = reference.conv2d_forward(np.abs(x), np.abs(wt), np.abs(b), sh, sw, *geo, False)
        for oracle in ORACLES:
            assert_close32(y, oracle.conv2d_forward(x, wt, b, sh, sw, *geo, relu), mag)


@given(conv_cases())
def test_conv2d_backward_matches_oracles(case):
    n, c, f, h, w, kh, kw, sh, sw, padding, geo, seed = case
    if geo is None:
        return
    x, wt, b = make_conv(case)
    pt, pl, oh, ow = geo
    dy = np.random.default_rng(seed + 1).standard_normal((n, f, oh, ow)).astype(np.float32)
    dx = kernels.conv2d_backward_input(dy, wt, h, w, sh, sw, pt, pl)
    dw, db = kernels.conv2d_backward_weight(x, dy, kh, kw, sh, sw, pt, pl)
    mag_dx = reference.conv2d_backward_input(np.abs(dy), np.abs(wt), h, w, sh, sw, pt, pl)
    mag_dw, mag_db = reference.conv2d_backward_weight(np.abs(x), np.abs(dy), kh, kw, sh, sw,
                                                      pt, pl)
    for oracle in ORACLES:
        assert_close32(dx, oracle.conv2d_backward_input(dy, wt, h, w, sh, sw, pt, pl), mag_dx)
        rdw, rdb = oracle.conv2d_backward_weight(x, dy, kh, kw, sh, sw, pt, pl)
        assert_close32(dw, rdw, mag_dw)
        assert_close32(db, rdb, mag_db)


@given(conv_cases(max_n=2))
def test_conv2d_float64_kernels_match_tightly(case):
    n, c, f, h, w, kh, kw, sh, sw, padding, geo, seed = case
    if geo is None:
        return
    x, wt, b = make_conv(case, np.float64)
    pt, pl, oh, ow = geo
    y = kernels.conv2d_forward(x, wt, b, sh, sw, *geo, True)
    assert y.dtype == np.float64
    np.testing.assert_allclose(y, reference.conv2d_forward(x, wt, b, sh, sw, *geo, True),
                               rtol=1e-10, atol=1e-12)
    dy = np.ones((n, f, oh, ow))
    np.testing.assert_allclose(kernels.conv2d_backward_input(dy, wt, h, w, sh, sw, pt, pl),
                               reference.conv2d_backward_input(dy, wt, h, w, sh, sw, pt, pl),
                               rtol=1e-10, atol=1e-12)
    dw, db = kernels.conv2d_backward_weight(x, dy, kh, kw, sh, sw, pt, pl)
    rdw, rdb = reference.conv2d_backward_weight(x, dy, kh, kw, sh, sw, pt, pl)
    np.testing.assert_allclose(dw, rdw, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(db, rdb, rtol=1e-10, atol=1e-12)


@st.composite
def pool_cases(draw):
    n, c = draw(st.integers(1, 3)), draw(st.integers(1, 4))
    ph, pw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    sh, sw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    h, w = draw(st.integers(ph, 13)), draw(st.integers(pw, 13))
    ties = draw(st.booleans())
    return n, c, h, w, ph, pw, sh, sw, ties, draw(st.integers(0, 2**32 - 1))


@given(pool_cases())
def test_maxpool_matches_oracles(case):
    n, c, h, w, ph, pw, sh, sw, ties, seed = case
    r = np.random.default_rng(seed)
    # Few distinct values make ties common: the first maximum must win everywhere.
    x = (r.integers(-2, 3, (n, c, h, w)) if ties else r.standard_normal((n, c, h, w)))
    x = x.astype(np.float32)
    y, arg = kernels.maxpool2d_forward(x, ph, pw, sh, sw)
    dy = r.standard_normal(y.shape).astype(np.float32)
    dx = kernels.maxpool2d_backward(dy, arg, h, w)
    for oracle in ORACLES:
        ry, rarg = oracle.maxpool2d_forward(x, ph, pw, sh, sw)
        np.testing.assert_array_equal(y, ry)
        np.testing.assert_array_equal(arg, rarg)
        rdx = oracle.maxpool2d_backward(dy, rarg, h, w)
        np.testing.assert_allclose(dx, rdx, rtol=RTOL, atol=1e-6)


def test_maxpool_propagates_nan():
    x = np.zeros((1, 1, 2, 2), np.float32)
    x[0, 0, 1, 0] = np.nan
    y, arg = kernels.maxpool2d_forward(x, 2, 2, 2, 2)
    assert np.isnan(y[0, 0, 0, 0]) and arg[0, 0, 0, 0] == 2


@pytest.mark.parametrize("batch", [1, 7, 64])
def test_seed_arch_shapes_match_oracle(batch, rng):
    """The exact SEED-ARCH layer shapes, batch 1 included."""
    x = rng.standard_normal((batch, 6, 28, 28)).astype(np.float32)
    wt = rng.standard_normal((6, 6, 5, 5)).astype(np.float32) * 0.1
    b = rng.standard_normal(6).astype(np.float32)
    geo = functional.conv_geometry(28, 28, (5, 5), (1, 1), "same")
    assert geo == (2, 2, 28, 28)
    y = kernels.conv2d_forward(x, wt, b, 1, 1, *geo, True)
    mag = reference.conv2d_forward(np.abs(x), np.abs(wt), np.abs(b), 1, 1, *geo, False)
    assert_close32(y, reference.conv2d_forward(x, wt, b, 1, 1, *geo, True), mag)
    dy = rng.standard_normal(y.shape).astype(np.float32)
    dw, db = kernels.conv2d_backward_weight(x, dy, 5, 5, 1, 1, 2, 2)
    rdw, rdb = reference.conv2d_backward_weight(x, dy, 5, 5, 1, 1, 2, 2)
    mag_dw, _ = reference.conv2d_backward_weight(np.abs(x), np.abs(dy), 5, 5, 1, 1, 2, 2)
    assert_close32(dw, rdw, mag_dw)


@pytest.mark.parametrize("padding,expected", [
    ("same", (2, 2, 28, 28)), ("valid", (0, 0, 24, 24)), (1, (1, 1, 26, 26)),
    ((0, 2), (0, 2, 24, 28)),
])
def test_conv_geometry(padding, expected):
    assert functional.conv_geometry(28, 28, (5, 5), (1, 1), padding) == expected


def test_same_padding_with_stride_follows_keras():
    # TensorFlow: out = ceil(7/2) = 4, total pad = (4-1)*2 + 3 - 7 = 2, one before.
    assert functional.conv_geometry(7, 8, (3, 3), (2, 2), "same") == (1, 0, 4, 4)


@given(conv_cases(), st.booleans(), st.booleans())
def test_fused_conv2d_backward_matches_oracles(case, relu, input_grad):
    n, c, f, h, w, kh, kw, sh, sw, padding, geo, seed = case
    if geo is None:
        return
    x, wt, b = make_conv(case)
    pt, pl, oh, ow = geo
    y = kernels.conv2d_forward(x, wt, b, sh, sw, *geo, True)
    dy = np.random.default_rng(seed + 2).standard_normal(y.shape).astype(np.float32)
    dx, dw, db = kernels.conv2d_backward(x, wt, dy, y, relu, sh, sw, pt, pl, input_grad)
    masked = np.where(y > 0, dy, 0) if relu else dy
    mag_dw, mag_db = reference.conv2d_backward_weight(np.abs(x), np.abs(dy), kh, kw, sh, sw,
                                                      pt, pl)
    for oracle in ORACLES:
        rdx, rdw, rdb = oracle.conv2d_backward(x, wt, dy, y, relu, sh, sw, pt, pl, input_grad)
        assert_close32(dw, rdw, mag_dw)
        assert_close32(db, rdb, mag_db)
        if input_grad:
            mag_dx = reference.conv2d_backward_input(np.abs(dy), np.abs(wt), h, w, sh, sw, pt, pl)
            assert_close32(dx, rdx, mag_dx)
            assert_close32(dx, oracle.conv2d_backward_input(masked, wt, h, w, sh, sw, pt, pl),
                           mag_dx)
        else:
            assert dx is None and rdx is None


@st.composite
def algorithm_cases(draw, kind):
    """Convolutions that `algorithm` runs with kind: deep inputs (up to 48 channels) on
    small planes reach the matrix path, strides 2 and 3 the phase path."""
    n = draw(st.integers(1, 17))  # up to three weight-gradient chunks
    c = draw(st.one_of(st.integers(1, 4), st.integers(5, 48)))
    f = draw(st.integers(1, 7))
    kh, kw = draw(st.integers(1, 5)), draw(st.integers(1, 5))
    sh, sw = (1, 1) if kind == "flat" else (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    h, w = draw(st.integers(1, 11)), draw(st.integers(1, 11))
    padding = draw(st.one_of(st.sampled_from(["same", "valid"]),
                             st.tuples(st.integers(0, 3), st.integers(0, 3))))
    try:
        geo = functional.conv_geometry(h, w, (kh, kw), (sh, sw), padding)
    except ValueError:
        geo = None
    assume(geo is not None and conv_kernels.algorithm(c, kh, kw, sh, sw, *geo[2:]) == kind)
    return (n, c, f, h, w, kh, kw, sh, sw, padding, geo, draw(st.integers(0, 2**32 - 1)))


@pytest.mark.parametrize("layer,input_shape,expected", [
    (dict(filters=6, kernel_size=5, padding="same"), (6, 28, 28), "flat"),
    (dict(filters=64, kernel_size=3), (32, 13, 13), "gemm"),  # deep, small plane
    (dict(filters=64, kernel_size=3, padding="same"), (32, 32, 32), "flat"),  # large plane
    (dict(filters=16, kernel_size=5, stride=2, padding=2), (3, 32, 32), "phases"),
    (dict(filters=32, kernel_size=3, stride=2, padding=1), (16, 16, 16), "gemm"),
    (dict(filters=8, kernel_size=1, stride=2), (3, 32, 32), "gemm"),  # 4x the taps as phases
    (dict(filters=6, kernel_size=5, padding="same", backend="numpy"), (6, 28, 28), "numpy"),
])
def test_conv_layer_reports_its_algorithm(layer, input_shape, expected):
    import fastcnn as fc

    conv = fc.Conv2D(**layer)
    conv.build(input_shape, np.random.default_rng(0))
    assert conv.algorithm == expected


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("kernel,stride", [(1, (1, 2)), (3, (2, 2)), (5, (2, 2)), (3, (3, 2))])
def test_phases_keep_non_finite_values_where_they_belong(bad, kernel, stride, rng):
    """The phase form's zero taps would multiply values the convolution never combines
    (0 * inf is NaN): with a NaN or an infinity in x (or in dy, for the input gradient)
    each output is finite or not exactly where the oracle's is."""
    x = rng.standard_normal((3, 2, 9, 8)).astype(np.float32)
    wt = rng.standard_normal((4, 2, kernel, kernel)).astype(np.float32)
    b = np.zeros(4, np.float32)
    geo = functional.conv_geometry(9, 8, (kernel, kernel), stride, "same")
    pt, pl, oh, ow = geo
    assert conv_kernels.algorithm(2, kernel, kernel, *stride, oh, ow) == "phases"
    for n, c, i, j in [(0, 0, 0, 1), (1, 1, 4, 5), (2, 0, 8, 7)]:
        xb = x.copy()
        xb[n, c, i, j] = bad
        y = kernels.conv2d_forward(xb, wt, b, *stride, *geo, False)
        expected = reference.conv2d_forward(xb, wt, b, *stride, *geo, False)
        np.testing.assert_array_equal(np.isfinite(y), np.isfinite(expected))
        dy = rng.standard_normal(y.shape).astype(np.float32)
        dy[n, 0, min(i, oh - 1), min(j, ow - 1)] = bad
        dx = kernels.conv2d_backward_input(dy, wt, 9, 8, *stride, pt, pl)
        np.testing.assert_array_equal(
            np.isfinite(dx),
            np.isfinite(reference.conv2d_backward_input(dy, wt, 9, 8, *stride, pt, pl)))
        _, dw, _ = kernels.conv2d_backward(xb, wt, dy, y, False, *stride, pt, pl, True)
        np.testing.assert_array_equal(
            np.isfinite(dw),
            np.isfinite(reference.conv2d_backward_weight(xb, dy, kernel, kernel, *stride, pt,
                                                         pl)[0]))


@pytest.mark.parametrize("kind", ["flat", "phases", "gemm"])
@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_every_algorithm_matches_oracles(kind, data):
    """Each algorithm `algorithm` picks, through every entry point: the forward pass with
    ReLU, the fused backward pass, the per-chunk gradient parts (whose sum is the
    gradient, bit for bit), the fused max-pool; the same bits with 1 and 2 threads."""
    import fastcnn

    case = data.draw(algorithm_cases(kind))
    n, c, f, h, w, kh, kw, sh, sw, padding, geo, seed = case
    pt, pl, oh, ow = geo
    x, wt, b = make_conv(case)
    results = []
    try:
        for threads in (1, 2):
            fastcnn.set_threads(threads)
            y = kernels.conv2d_forward(x, wt, b, sh, sw, *geo, True)
            dy = np.random.default_rng(seed + 1).standard_normal(y.shape).astype(np.float32)
            grads = kernels.conv2d_backward(x, wt, dy, y, True, sh, sw, pt, pl, True)
            parts = kernels.conv2d_backward_parts(x, wt, dy, y, True, sh, sw, pt, pl, True)
            results.append((y, *grads, *parts))
    finally:
        fastcnn.set_threads(None)
    for one, two in zip(*results, strict=True):
        np.testing.assert_array_equal(one, two)
    y, dx, dw, db, dx_p, dw_parts, db_parts = results[0]
    np.testing.assert_array_equal(dx_p, dx)
    np.testing.assert_array_equal(conv_kernels.sum_parts(dw_parts).astype(np.float32), dw)
    np.testing.assert_array_equal(conv_kernels.sum_parts(db_parts).astype(np.float32), db)
    assert len(dw_parts) == -(-n // conv_kernels.GRAD_CHUNK)
    mag = reference.conv2d_forward(np.abs(x), np.abs(wt), np.abs(b), sh, sw, *geo, False)
    assert_close32(y, reference.conv2d_forward(x, wt, b, sh, sw, *geo, True), mag)
    rdx, rdw, rdb = reference.conv2d_backward(x, wt, dy, y, True, sh, sw, pt, pl, True)
    assert_close32(dx, rdx, reference.conv2d_backward_input(np.abs(dy), np.abs(wt), h, w, sh,
                                                            sw, pt, pl))
    mag_dw, mag_db = reference.conv2d_backward_weight(np.abs(x), np.abs(dy), kh, kw, sh, sw,
                                                      pt, pl)
    assert_close32(dw, rdw, mag_dw)
    assert_close32(db, rdb, mag_db)
    # The separate input and weight gradients.
    assert_close32(kernels.conv2d_backward_input(dy, wt, h, w, sh, sw, pt, pl),
                   reference.conv2d_backward_input(dy, wt, h, w, sh, sw, pt, pl), mag)
    for got, want, m in zip(kernels.conv2d_backward_weight(x, dy, kh, kw, sh, sw, pt, pl),
                            reference.conv2d_backward_weight(x, dy, kh, kw, sh, sw, pt, pl),
                            (mag_dw, mag_db), strict=True):
        assert_close32(got, want, m)
    # Fused with a 2x2 max-pool where the output allows one.
    if oh >= 2 and ow >= 2:
        pooled, window = kernels.conv2d_pool_forward_with_indices(x, wt, b, sh, sw, *geo, True,
                                                                  2, 2)
        assert_close32(pooled, reference.conv2d_pool_forward(x, wt, b, sh, sw, *geo, True, 2,
                                                             2), mag)
        dp = np.random.default_rng(seed + 2).standard_normal(pooled.shape).astype(np.float32)
        args = (True, sh, sw, pt, pl, oh, ow, 2, 2, True)
        got = kernels.conv2d_pool_backward(x, wt, dp, pooled, window, *args)
        want = reference.conv2d_pool_backward(x, wt, dp, pooled, window, *args)
        mags = reference.conv2d_pool_backward(np.abs(x), np.abs(wt), np.abs(dp), pooled, window,
                                              *args)
        for g, e, m in zip(got, want, mags, strict=True):
            assert_close32(g, e, m)
    # float64, tightly.
    x64, wt64, b64 = make_conv(case, np.float64)
    np.testing.assert_allclose(kernels.conv2d_forward(x64, wt64, b64, sh, sw, *geo, False),
                               reference.conv2d_forward(x64, wt64, b64, sh, sw, *geo, False),
                               rtol=1e-10, atol=1e-12)
    dy64 = dy.astype(np.float64)
    for got, want in zip(kernels.conv2d_backward(x64, wt64, dy64, dy64, False, sh, sw, pt, pl,
                                                 True),
                         reference.conv2d_backward(x64, wt64, dy64, dy64, False, sh, sw, pt, pl,
                                                   True), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-11)


@pytest.mark.parametrize("shape", [(1, 1, 2, 2), (3, 6, 28, 28), (2, 3, 7, 9)])
@pytest.mark.parametrize("ties", [False, True])
def test_maxpool_2x2_fast_path_matches_oracles(shape, ties, rng):
    """The unrolled 2x2, stride-2 path (SEED-ARCH's pool), odd sizes and ties included."""
    x = rng.integers(-1, 2, shape) if ties else rng.standard_normal(shape)
    x = x.astype(np.float32)
    y, arg = kernels.maxpool2d_forward(x, 2, 2, 2, 2)
    for oracle in ORACLES:
        ry, rarg = oracle.maxpool2d_forward(x, 2, 2, 2, 2)
        np.testing.assert_array_equal(y, ry)
        np.testing.assert_array_equal(arg, rarg)
    x.reshape(-1)[x.size // 2] = np.nan  # one NaN: its plane takes the NaN-aware path
    y, arg = kernels.maxpool2d_forward(x, 2, 2, 2, 2)
    ry, rarg = reference.maxpool2d_forward(x, 2, 2, 2, 2)
    np.testing.assert_array_equal(y, ry)
    np.testing.assert_array_equal(arg, rarg)


@st.composite
def dense_cases(draw):
    # Sizes around the kernels' blocks (4 samples x 3 units forward, 3 rows x 5 taps
    # in the gradients, 16-row transpose tiles), and SEED-ARCH's own layers.
    n = draw(st.one_of(st.integers(1, 9), st.sampled_from([16, 17, 64])))
    k = draw(st.one_of(st.integers(1, 40), st.sampled_from([100, 1176])))
    u = draw(st.one_of(st.integers(1, 8), st.sampled_from([10, 100])))
    return n, k, u, draw(st.integers(0, 2**32 - 1))


@given(dense_cases(), st.booleans(), st.booleans())
def test_dense_matches_oracles(case, relu, input_grad):
    n, k, u, seed = case
    r = np.random.default_rng(seed)
    x = r.standard_normal((n, k)).astype(np.float32)
    wt = r.standard_normal((k, u)).astype(np.float32)
    b = r.standard_normal(u).astype(np.float32)
    dy = r.standard_normal((n, u)).astype(np.float32)
    y = kernels.dense_forward(x, wt, b, relu)
    mag = reference.dense_forward(np.abs(x), np.abs(wt), np.abs(b), False)
    dx, dw, db = kernels.dense_backward(x, wt, dy, y, relu, input_grad)
    mag_dx, mag_dw, mag_db = reference.dense_backward(np.abs(x), np.abs(wt), np.abs(dy), y,
                                                      False, True)
    for oracle in ORACLES:
        assert_close32(y, oracle.dense_forward(x, wt, b, relu), mag)
        rdx, rdw, rdb = oracle.dense_backward(x, wt, dy, y, relu, input_grad)
        assert_close32(dw, rdw, mag_dw)
        assert_close32(db, rdb, mag_db)
        if input_grad:
            assert_close32(dx, rdx, mag_dx)
        else:
            assert dx is None and rdx is None


def test_dense_float64_matches_tightly(rng):
    x, wt = rng.standard_normal((13, 37)), rng.standard_normal((37, 7))
    b, dy = rng.standard_normal(7), rng.standard_normal((13, 7))
    y = kernels.dense_forward(x, wt, b, True)
    assert y.dtype == np.float64
    np.testing.assert_allclose(y, reference.dense_forward(x, wt, b, True), rtol=1e-10,
                               atol=1e-12)
    for got, want in zip(kernels.dense_backward(x, wt, dy, y, True, True),
                         reference.dense_backward(x, wt, dy, y, True, True), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("batch", [9, 17, 64])
def test_conv2d_backward_across_sample_chunks(batch, rng):
    """Batches that span several of the weight gradient's fixed chunks, ragged ends too."""
    x = rng.standard_normal((batch, 3, 11, 9)).astype(np.float32)
    wt = rng.standard_normal((5, 3, 3, 4)).astype(np.float32)
    geo = functional.conv_geometry(11, 9, (3, 4), (1, 1), "same")
    pt, pl, oh, ow = geo
    y = kernels.conv2d_forward(x, wt, np.zeros(5, np.float32), 1, 1, *geo, True)
    dy = rng.standard_normal(y.shape).astype(np.float32)
    dx, dw, db = kernels.conv2d_backward(x, wt, dy, y, True, 1, 1, pt, pl, True)
    rdx, rdw, rdb = reference.conv2d_backward(x, wt, dy, y, True, 1, 1, pt, pl, True)
    mag_dw, mag_db = reference.conv2d_backward_weight(np.abs(x), np.abs(dy), 3, 4, 1, 1, pt, pl)
    mag_dx = reference.conv2d_backward_input(np.abs(dy), np.abs(wt), 11, 9, 1, 1, pt, pl)
    assert_close32(dx, rdx, mag_dx)
    assert_close32(dw, rdw, mag_dw)
    assert_close32(db, rdb, mag_db)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("pool", [1, 2])
@pytest.mark.parametrize("filters,channels", [(5, 3), (7, 2), (6, 6)])
def test_task_groups_give_the_same_bits(dtype, pool, filters, channels, rng):
    """Small batches split each chunk's filters and channels between tasks: every sample
    and every gradient must have the bits of one task per chunk, for any number of
    groups (including more than there are filter passes), and a sample alone the bits it
    gets inside a large batch."""
    x = rng.standard_normal((21, channels, 12, 10)).astype(dtype)
    wt = rng.standard_normal((filters, channels, 5, 3)).astype(dtype)
    b = rng.standard_normal(filters).astype(dtype)
    pt, pl, oh, ow = geo = functional.conv_geometry(12, 10, (5, 3), (1, 1), "same")
    Hp, Wp = conv_kernels._s1_geometry(12, 10, oh, ow, 5, 3, pt, pl)
    forward_args = (wt, b, pt, pl, Hp, Wp, oh, ow, True, pool, pool, pool > 1)
    y, window = conv_kernels.flat.conv2d_forward_s1(x, *forward_args, 1)
    dy = rng.standard_normal(y.shape).astype(dtype)
    flipped = conv_kernels._flipped(wt)
    backward_args = (dy, y, True, window if pool > 1 else conv_kernels._NO_INDICES, pool, pool,
                     flipped, 12, 10, pt, pl, Hp, Wp, oh, True, True, conv_kernels.DOT_FILTERS)
    whole = conv_kernels.flat.conv2d_backward_s1(x, *backward_args, 1)
    for groups in (2, 3, 5):
        y2, window2 = conv_kernels.flat.conv2d_forward_s1(x, *forward_args, groups)
        np.testing.assert_array_equal(y2, y)
        np.testing.assert_array_equal(window2, window)
        split = conv_kernels.flat.conv2d_backward_s1(x, *backward_args, groups)
        for got, want in zip(split, whole, strict=True):
            np.testing.assert_array_equal(got, want)
    for n in (0, 20):  # one sample, through the dispatch that picks the groups
        alone = kernels.conv2d_forward(x[n:n + 1], wt, b, 1, 1, *geo, True)
        np.testing.assert_array_equal(
            alone[0], kernels.conv2d_forward(x, wt, b, 1, 1, *geo, True)[n])


@pytest.mark.parametrize("group", [1, 2, 3])
@pytest.mark.parametrize("filters,kernel", [(1, 5), (2, 4), (3, 5), (5, 3), (6, 5), (7, 2)])
def test_weight_gradient_matches_oracle_for_any_filters_per_pass(group, filters, kernel, rng,
                                                                monkeypatch):
    """DOT_FILTERS follows the CPU (3 with AVX-512, else 2): the choice this machine does
    not make must be right too."""
    monkeypatch.setattr(conv_kernels, "DOT_FILTERS", group)
    x = rng.standard_normal((11, 3, 12, 10)).astype(np.float32)
    wt = rng.standard_normal((filters, 3, kernel, kernel)).astype(np.float32)
    pt, pl, oh, ow = geo = functional.conv_geometry(12, 10, (kernel, kernel), (1, 1), "same")
    y = kernels.conv2d_forward(x, wt, np.zeros(filters, np.float32), 1, 1, *geo, True)
    dy = rng.standard_normal(y.shape).astype(np.float32)
    _, dw, db = kernels.conv2d_backward(x, wt, dy, y, True, 1, 1, pt, pl, True)
    _, rdw, rdb = reference.conv2d_backward(x, wt, dy, y, True, 1, 1, pt, pl, True)
    mag_dw, mag_db = reference.conv2d_backward_weight(np.abs(x), np.abs(dy * (y > 0)), kernel,
                                                      kernel, 1, 1, pt, pl)
    assert_close32(dw, rdw, mag_dw)
    assert_close32(db, rdb, mag_db)


def test_fused_relu_keeps_nan():
    """ReLU(NaN) is NaN, as np.maximum (the oracles) and PyTorch have it: a diverged
    network must not turn finite inside a fused kernel."""
    x = np.ones((2, 1, 6, 6), np.float32)
    x[1, 0, 3, 3] = np.nan
    wt = np.full((4, 1, 3, 3), -1.0, np.float32)  # every finite output is negative
    y = kernels.conv2d_forward(x, wt, np.zeros(4, np.float32), 1, 1, 1, 1, 6, 6, True)
    expected = reference.conv2d_forward(x, wt, np.zeros(4), 1, 1, 1, 1, 6, 6, True)
    np.testing.assert_array_equal(np.isnan(y), np.isnan(expected))
    assert np.isnan(y[1]).any() and not np.isnan(y[0]).any()
    xd = -np.ones((20, 5), np.float32)
    xd[3, 2] = np.nan
    yd = kernels.dense_forward(xd, np.ones((5, 4), np.float32), np.zeros(4, np.float32), True)
    np.testing.assert_array_equal(np.isnan(yd), np.isnan(reference.dense_forward(
        xd, np.ones((5, 4)), np.zeros(4), True)))
    assert np.isnan(yd[3]).all() and (yd[np.arange(20) != 3] == 0).all()


@given(conv_cases(), st.integers(1, 3), st.integers(1, 3), st.booleans(),
       st.sampled_from(["normal", "ties", "nan"]))
def test_conv2d_pool_forward_matches_oracles(case, ph, pw, relu, values):
    n, c, f, h, w, kh, kw, sh, sw, padding, geo, seed = case
    if geo is None or ph > geo[2] or pw > geo[3]:
        return
    x, wt, b = make_conv(case)
    if values == "ties":  # integer data: equal maxima in most windows
        x, wt, b = np.round(x), np.round(wt), np.round(b)
    elif values == "nan":
        x.reshape(-1)[seed % x.size] = np.nan
    y = kernels.conv2d_pool_forward(x, wt, b, sh, sw, *geo, relu, ph, pw)
    for oracle in ORACLES:
        expected = oracle.conv2d_pool_forward(x, wt, b, sh, sw, *geo, relu, ph, pw)
        np.testing.assert_array_equal(np.isnan(y), np.isnan(expected))
        mag = reference.conv2d_forward(np.abs(x), np.abs(wt), np.abs(b), sh, sw, *geo, False)
        finite = ~np.isnan(expected)
        np.testing.assert_allclose(y[finite], expected[finite], rtol=RTOL,
                                   atol=1e-6 * float(np.nanmax(mag, initial=1.0)))
    # The same bits as the unfused kernels: the fused path only skips a store.
    unfused = kernels.maxpool2d_forward(kernels.conv2d_forward(x, wt, b, sh, sw, *geo, relu),
                                        ph, pw, ph, pw)[0]
    np.testing.assert_array_equal(y, unfused)


def _pool_case(case, ph, pw, values):
    """make_conv's arrays with the value pattern of the pooled tests."""
    x, wt, b = make_conv(case)
    if values == "ties":  # integer data: equal maxima in most windows
        x, wt, b = np.round(x), np.round(wt), np.round(b)
    elif values == "nan":
        x.reshape(-1)[case[-1] % x.size] = np.nan
    return x, wt, b


@given(conv_cases(), st.integers(1, 3), st.integers(1, 3), st.booleans(),
       st.sampled_from(["normal", "ties", "nan"]))
def test_conv2d_pool_forward_with_indices_matches_unfused(case, ph, pw, relu, values):
    """The training forward pass: the values and bits of the unfused kernels, and the
    index of the maximum that maxpool2d_forward finds in each window."""
    n, c, f, h, w, kh, kw, sh, sw, padding, geo, seed = case
    if geo is None or ph > geo[2] or pw > geo[3]:
        return
    x, wt, b = _pool_case(case, ph, pw, values)
    y, window = kernels.conv2d_pool_forward_with_indices(x, wt, b, sh, sw, *geo, relu, ph, pw)
    assert window.dtype == np.uint8 and window.shape == y.shape
    conv = kernels.conv2d_forward(x, wt, b, sh, sw, *geo, relu)
    unfused, argmax = kernels.maxpool2d_forward(conv, ph, pw, ph, pw)
    np.testing.assert_array_equal(y, unfused)
    np.testing.assert_array_equal(window, reference.window_of(argmax, geo[3], ph, pw))
    np.testing.assert_array_equal(y, kernels.conv2d_pool_forward(x, wt, b, sh, sw, *geo, relu,
                                                                 ph, pw))
    if values != "nan":  # the oracles find the same maxima (exact on integer data)
        for oracle in ORACLES:
            expected, expected_window = oracle.conv2d_pool_forward_with_indices(
                x, wt, b, sh, sw, *geo, relu, ph, pw)
            mag = reference.conv2d_forward(np.abs(x), np.abs(wt), np.abs(b), sh, sw, *geo,
                                           False)
            assert_close32(y, expected, mag)
            if values == "ties":
                np.testing.assert_array_equal(window, expected_window)


@given(conv_cases(), st.integers(1, 3), st.integers(1, 3), st.booleans(),
       st.sampled_from(["normal", "ties"]), st.booleans())
def test_conv2d_pool_backward_matches_oracles(case, ph, pw, relu, values, input_grad):
    n, c, f, h, w, kh, kw, sh, sw, padding, geo, seed = case
    if geo is None or ph > geo[2] or pw > geo[3]:
        return
    x, wt, b = _pool_case(case, ph, pw, values)
    pt, pl, oh, ow = geo
    y, window = kernels.conv2d_pool_forward_with_indices(x, wt, b, sh, sw, *geo, relu, ph, pw)
    dy = np.random.default_rng(seed + 1).standard_normal(y.shape).astype(np.float32)
    args = (relu, sh, sw, pt, pl, oh, ow, ph, pw, input_grad)
    dx, dw, db = kernels.conv2d_pool_backward(x, wt, dy, y, window, *args)
    assert (dx is None) == (not input_grad)
    mag = reference.conv2d_pool_backward(np.abs(x), np.abs(wt), np.abs(dy), y, window, *args)
    for oracle in ORACLES:
        expected = oracle.conv2d_pool_backward(x, wt, dy, y, window, *args)
        for got, want, m in zip((dx, dw, db), expected, mag, strict=True):
            if got is not None:
                assert_close32(got, want, m)
    # The same bits as the unfused kernels: the pool's backward pass becomes the copy of dy.
    conv = kernels.conv2d_forward(x, wt, b, sh, sw, *geo, relu)
    _, argmax = kernels.maxpool2d_forward(conv, ph, pw, ph, pw)
    full = kernels.maxpool2d_backward(dy, argmax, oh, ow)
    unfused = kernels.conv2d_backward(x, wt, full, conv, relu, sh, sw, pt, pl, input_grad)
    for got, want in zip((dx, dw, db), unfused, strict=True):
        if got is not None:
            np.testing.assert_array_equal(got, want)


@given(st.integers(1, 70), st.integers(1, 12), st.sampled_from([0.1, 3.0, 60.0]),
       st.sampled_from([np.float32, np.float64]), st.integers(0, 2**32 - 1))
def test_softmax_cross_entropy_matches_oracles(n, k, scale, dtype, seed):
    # Scale 60: exp would overflow float32 without the max subtracted.
    r = np.random.default_rng(seed)
    logits = (r.standard_normal((n, k)) * scale).astype(dtype)
    labels = r.integers(0, k, n)
    loss, grad, bad = kernels.softmax_cross_entropy(logits, labels)
    assert bad == -1 and grad.dtype == dtype
    # Gradient entries are probabilities / n: bounded by 1 / n.
    atol = (1e-7 if dtype == np.float32 else 1e-15) / n
    for oracle in ORACLES:
        want_loss, want_grad, want_bad = oracle.softmax_cross_entropy(logits, labels)
        assert want_bad == -1
        # The kernel rounds each sample's loss, and the mean, to the logits' dtype.
        assert loss == pytest.approx(want_loss, rel=1e-6 if dtype == np.float32 else 1e-12)
        np.testing.assert_allclose(grad, want_grad, rtol=1e-6, atol=atol)
    np.testing.assert_allclose(grad.sum(axis=1), 0, atol=10 * atol * k)


def test_softmax_cross_entropy_reports_the_first_bad_label():
    logits = np.zeros((4, 3), np.float32)
    for labels, first in (([0, 2, 3, -1], 2), ([-1, 0, 0, 0], 0), ([0, 1, 2, 1], -1)):
        labels = np.array(labels)
        for impl in (kernels, *ORACLES):
            assert impl.softmax_cross_entropy(logits, labels)[2] == first, impl


def test_softmax_cross_entropy_propagates_nan():
    logits = np.array([[0.0, np.nan, 1.0], [0.0, 1.0, 2.0]], np.float32)
    loss, grad, _ = kernels.softmax_cross_entropy(logits, np.array([0, 1]))
    assert np.isnan(loss) and np.isnan(grad[0]).all() and np.isfinite(grad[1]).all()
