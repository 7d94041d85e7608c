"""fastcnn.compat against a literal NumPy replica of the tutorial notebook's classes."""

# Seeding the global np.random state is the point: compat must follow it like the notebook.
# ruff: noqa: NPY002

import numpy as np
import original_replica as R
import pytest

from fastcnn import compat as C
from fastcnn.data import load_dataset

RTOL = 1e-6
LR = 0.005
LAYERS = ("ConvLayer_1", "ReLU_1", "ConvLayer_2", "ReLU_2", "MaxPool", "FeedForward", "ReLU_3",
          "OutputLayer")
PARAMS = ("kernels", "bias", "weights")


@pytest.fixture(scope="module")
def fashion():
    """Real Fashion-MNIST images as the notebook has them: raw uint8 (N, 28, 28), int64 labels."""
    train_x, train_y = load_dataset("sample", "train")
    test_x, test_y = load_dataset("sample", "test")
    return train_x, train_y.astype(np.int64), test_x, test_y.astype(np.int64)


def notebook_model(ConvLayer, ReLU, MaxPool, FeedForward, Softmax, SimpleCNN):
    """The notebook's model cell, word for word, with the classes passed in."""
    model = SimpleCNN(
            ConvLayer(input_shape=(1, 28, 28), kernel_size=5, num_kernels=6, padding=0),
            ReLU(),
            ConvLayer(input_shape=(6, 28, 28), kernel_size=5, num_kernels=6, padding=0),
            ReLU(),
            MaxPool(),
            FeedForward(6 * 14 * 14, 100),
            ReLU(),
            Softmax(100, 10)
    )
    return model


def build(mod, seed, make=None):
    np.random.seed(seed)
    if make is None:
        return notebook_model(mod.ConvLayer, mod.ReLU, mod.MaxPool, mod.FeedForward, mod.Softmax,
                              mod.SimpleCNN)
    return mod.SimpleCNN(*make(mod))


def twin(seed, make=None):
    """The same network built twice from the same np.random state: (replica, compat)."""
    return build(R, seed, make), build(C, seed, make)


def small_net(mod):
    # 15x15 crops: a ragged edge for the pool, a non-zero padding constant, 3x3 and 5x5.
    return (
        mod.ConvLayer((1, 15, 15), 3, 4),
        mod.ReLU(),
        mod.ConvLayer((4, 15, 15), 5, 5, padding=0.25),
        mod.ReLU(),
        mod.MaxPool(3),
        mod.FeedForward(5 * 5 * 5, 32),
        mod.ReLU(),
        mod.Softmax(32, 10),
    )


def close(actual, expected, what):
    """rtol 1e-6, with an absolute floor far below the array's scale for near-zero entries."""
    expected = np.asarray(expected)
    atol = 1e-9 * float(np.max(np.abs(expected), initial=0.0)) + 1e-300
    np.testing.assert_allclose(actual, expected, rtol=RTOL, atol=atol, err_msg=what)


def params(net):
    return {(name, p): getattr(getattr(net, name), p) for name in LAYERS for p in PARAMS
            if hasattr(getattr(net, name), p)}


def snapshot(net):
    return {key: value.copy() for key, value in params(net).items()}


def compare_params(replica, compat, start_r, start_c, what):
    """Parameters and (more telling, as steps are tiny) their change since the start."""
    got = params(compat)
    for key, value in params(replica).items():
        assert got[key].dtype == np.float64
        close(got[key], value, f"{what}: {key}")
        close(got[key] - start_c[key], value - start_r[key], f"{what}: {key} update")


def loss_gradient(out, label):
    gradient = np.zeros(len(out))
    gradient[label] = -1 / out[label]
    return gradient


def test_notebook_model_cell_trains_like_the_original(fashion, capsys):
    """The model cell as written, train() on 150 real images for 2 epochs: same printed
    lines, and weights within 1e-6 of the replica's after 300 per-sample steps."""
    train_x, train_y, test_x, test_y = fashion
    replica, compat = twin(0)
    start_r, start_c = snapshot(replica), snapshot(compat)
    np.random.seed(11)
    assert replica.train(train_x[:150], train_y[:150], test_x[:60], test_y[:60],
                         epochs=2, learn_rate=0.005) is None
    printed_r = capsys.readouterr().out
    np.random.seed(11)
    assert compat.train(train_x[:150], train_y[:150], test_x[:60], test_y[:60],
                        epochs=2, learn_rate=0.005) is None
    printed_c = capsys.readouterr().out
    next_draw = np.random.randint(1 << 30)
    lines = printed_c.splitlines()
    assert lines[0] == "Training..." and lines[1].startswith("Epoch 1, loss: ")
    assert lines[2] == "Evaluating dev..." and lines[3].startswith("Dev Accuracy: ")
    assert len(lines) == 7 and printed_c == printed_r
    compare_params(replica, compat, start_r, start_c, "after train")
    # train drew one permutation from np.random, and nothing else.
    np.random.seed(11)
    np.random.permutation(150)
    assert np.random.randint(1 << 30) == next_draw


def test_steps_match_layer_by_layer(fashion):
    """forward, every input gradient, every saved attribute and the parameters, per step."""
    train_x, train_y, _, _ = fashion
    replica, compat = twin(3)
    images = C.preprocess(train_x)
    start_r, start_c = snapshot(replica), snapshot(compat)
    for step in range(40):
        im, label = images[step], train_y[step]
        out_r, out_c = replica.forward(im), compat.forward(im)
        assert out_c.dtype == np.float64 and out_c.shape == (10,)
        close(out_c, out_r, f"step {step} output")
        for name, attrs in [("ConvLayer_1", ("prev_input", "output")),
                            ("ConvLayer_2", ("prev_input", "output")),
                            ("ReLU_1", ("prev_output",)), ("ReLU_3", ("prev_output",)),
                            ("MaxPool", ("prev_input",)),
                            ("FeedForward", ("prev_input", "output")),
                            ("OutputLayer", ("prev_input", "prev_totals"))]:
            for attr in attrs:
                got = getattr(getattr(compat, name), attr)
                want = getattr(getattr(replica, name), attr)
                assert np.shape(got) == np.shape(want), f"{name}.{attr}"
                close(got, want, f"step {step} {name}.{attr}")
        assert compat.FeedForward.prev_input_shape == replica.FeedForward.prev_input_shape
        assert compat.OutputLayer.prev_input_shape == replica.OutputLayer.prev_input_shape
        g_r = g_c = loss_gradient(out_r, label)
        for name in reversed(LAYERS):
            lr_, lc = getattr(replica, name), getattr(compat, name)
            if name.startswith("ReLU") or name == "MaxPool":
                g_r, g_c = lr_.backprop(g_r), lc.backprop(g_c)
            else:
                g_r, g_c = lr_.backprop(g_r, LR), lc.backprop(g_c, LR)
            assert g_c.shape == g_r.shape
            close(g_c, g_r, f"step {step} {name} input gradient")
    compare_params(replica, compat, start_r, start_c, "after 40 steps")


def test_simplecnn_backprop_returns_the_input_gradient(fashion):
    train_x, train_y, _, _ = fashion
    replica, compat = twin(4, small_net)
    crops = C.preprocess(train_x)[:, :, 6:21, 6:21]
    start_r, start_c = snapshot(replica), snapshot(compat)
    for step in range(200):
        im, label = crops[step], train_y[step]
        out_r, out_c = replica.forward(im), compat.forward(im)
        close(out_c, out_r, f"step {step} output")
        g_r = replica.backprop(loss_gradient(out_r, label), LR)
        g_c = compat.backprop(loss_gradient(out_c, label), LR)
        assert g_c.shape == (1, 15, 15)
        close(g_c, g_r, f"step {step} image gradient")
    compare_params(replica, compat, start_r, start_c, "after 200 steps")


def test_conv_attributes_and_regions():
    np.random.seed(5)
    rep = R.ConvLayer((2, 9, 11), 3, 4, padding=0.5)
    np.random.seed(5)
    com = C.ConvLayer((2, 9, 11), 3, 4, padding=0.5)
    for name in ("d", "h", "w", "input_shape", "padding", "num_kernels", "kernel_size",
                 "pad_size", "kernel_shape", "bias_shape"):
        assert getattr(com, name) == getattr(rep, name), name
    assert (com.d, com.h, com.w, com.pad_size) == (2, 11, 13, 1)
    assert com.kernel_shape == (4, 2, 3, 3) and com.bias_shape == (4, 9, 11)
    np.testing.assert_array_equal(com.kernels, rep.kernels)
    np.testing.assert_array_equal(com.bias, rep.bias)
    image = np.arange(2 * 11 * 13.0).reshape(2, 11, 13)
    regions_r, regions_c = list(rep.iter_regions(image)), list(com.iter_regions(image))
    assert len(regions_c) == len(regions_r) == 9 * 11
    for (a, i, j), (b, k, m) in zip(regions_c, regions_r, strict=True):
        assert (i, j) == (k, m)
        np.testing.assert_array_equal(a, b)


def test_pool_relu_dense_attributes():
    assert C.MaxPool().size == 2 and C.MaxPool(3).size == 3
    pool_r, pool_c = R.MaxPool(2), C.MaxPool(2)
    image = np.random.default_rng(0).standard_normal((3, 6, 5))
    for (a, i, j), (b, k, m) in zip(pool_c.iter_regions(image), pool_r.iter_regions(image),
                                    strict=True):
        assert (i, j) == (k, m)
        np.testing.assert_array_equal(a, b)
    pool_c.forward(image)
    assert pool_c.prev_input is image
    relu = C.ReLU()
    out = relu.forward(np.array([-1.0, 0.0, 2.0]))
    assert out is relu.prev_output
    np.testing.assert_array_equal(relu.backprop(np.array([5.0, 6.0, 7.0])), [0.0, 0.0, 7.0])
    np.random.seed(2)
    ff_r, soft_r = R.FeedForward(12, 4), R.Softmax(4, 3)
    np.random.seed(2)
    ff_c, soft_c = C.FeedForward(12, 4), C.Softmax(4, 3)
    for a, b in ((ff_c, ff_r), (soft_c, soft_r)):
        np.testing.assert_array_equal(a.weights, b.weights)
        np.testing.assert_array_equal(a.bias, b.bias)
    x = np.random.default_rng(1).standard_normal((3, 2, 2))
    close(ff_c.forward(x), ff_r.forward(x), "FeedForward.forward")
    assert ff_c.prev_input_shape == (3, 2, 2) and ff_c.prev_input.shape == (12,)
    assert ff_c.output is not None and ff_c.output.shape == (4,)


def test_softmax_all_zero_gradient_returns_none_and_huge_logits_stay_finite():
    np.random.seed(0)
    soft, rep = C.Softmax(4, 3), R.Softmax(4, 3)
    x = np.ones(4)
    soft.forward(x)
    rep.forward(x)
    before = soft.weights.copy()
    assert soft.backprop(np.zeros(3), 0.1) is None
    assert rep.backprop(np.zeros(3), 0.1) is None
    np.testing.assert_array_equal(soft.weights, before)  # nothing to learn from
    soft.weights[:] = 1e3  # logits ~4000: exp overflows unless shifted
    p = soft.forward(x)
    assert np.all(np.isfinite(p)) and p.sum() == pytest.approx(1.0)
    g = soft.backprop(np.array([0.0, -2.0, 0.0]), 0.1)
    assert g.shape == (4,) and np.all(np.isfinite(g))


def test_softmax_matches_replica_below_overflow():
    np.random.seed(9)
    soft = C.Softmax(6, 5)
    np.random.seed(9)
    rep = R.Softmax(6, 5)
    x = np.random.default_rng(3).standard_normal(6) * 50
    close(soft.forward(x), rep.forward(x), "probabilities")
    close(soft.backprop(np.array([0, 0, -3.0, 1.0, 0]), 0.2),
          rep.backprop(np.array([0, 0, -3.0, 1.0, 0]), 0.2), "input gradient")
    close(soft.weights, rep.weights, "weights")
    close(soft.bias, rep.bias, "bias")


@pytest.mark.parametrize("padding", [0.7, -1.5])
@pytest.mark.parametrize("kernel_size", [1, 3, 5])
def test_conv_padding_constant_matches_replica(padding, kernel_size):
    np.random.seed(7)
    rep = R.ConvLayer((2, 9, 11), kernel_size, 3, padding=padding)
    np.random.seed(7)
    com = C.ConvLayer((2, 9, 11), kernel_size, 3, padding=padding)
    rng = np.random.default_rng(0)
    for step in range(3):
        x = rng.standard_normal((2, 9, 11))
        d = rng.standard_normal((3, 9, 11))
        close(com.forward(x), rep.forward(x), f"step {step} forward")
        close(com.prev_input, rep.prev_input, f"step {step} prev_input")
        close(com.backprop(d, 0.1), rep.backprop(d, 0.1), f"step {step} input gradient")
        close(com.kernels, rep.kernels, f"step {step} kernels")
        close(com.bias, rep.bias, f"step {step} bias")
    if kernel_size > 1:
        # The constant reaches the border outputs, so it really is used.
        zero = C.ConvLayer((2, 9, 11), kernel_size, 3)
        zero.kernels, zero.bias = com.kernels.copy(), com.bias.copy()
        assert not np.allclose(zero.forward(x), com.forward(x))


def test_maxpool_ties_all_get_gradient():
    x = np.zeros((2, 5, 5))
    x[0, 0, 0] = x[0, 0, 1] = 3.0  # two-way tie
    x[0, 2:4, 2:4] = -1.0  # four-way tie
    x[1, 0, 0] = np.nan  # NaN max: no gradient anywhere in the window
    x[1, 4, 4] = 9.0  # ragged edge: outside every window
    d = np.arange(1.0, 9.0).reshape(2, 2, 2)
    rep, com = R.MaxPool(2), C.MaxPool(2)
    y_r, y_c = rep.forward(x), com.forward(x)
    np.testing.assert_array_equal(y_c, y_r)
    dx_r, dx_c = rep.backprop(d), com.backprop(d)
    np.testing.assert_array_equal(dx_c, dx_r)
    assert dx_c[0, 0, 0] == dx_c[0, 0, 1] == 1.0
    assert np.all(dx_c[0, 2:4, 2:4] == 4.0)
    assert np.all(dx_c[1, :2, :2] == 0.0) and dx_c[1, 4, 4] == 0.0


def test_maxpool_matches_replica_random():
    x = np.random.default_rng(1).integers(0, 3, (3, 9, 8)).astype(np.float64)  # many ties
    d = np.random.default_rng(2).standard_normal((3, 3, 2))
    rep, com = R.MaxPool(3), C.MaxPool(3)
    np.testing.assert_array_equal(com.forward(x), rep.forward(x))
    np.testing.assert_array_equal(com.backprop(d), rep.backprop(d))


def test_float32_and_integer_inputs_give_float64():
    np.random.seed(0)
    conv = C.ConvLayer((1, 6, 6), 3, 2)
    x = np.random.default_rng(0).standard_normal((1, 6, 6))
    y64 = conv.forward(x).copy()
    y32 = conv.forward(x.astype(np.float32))
    assert y32.dtype == np.float64
    close(y32, y64.astype(np.float32), "float32 input")
    assert conv.backprop(np.ones((2, 6, 6), dtype=np.float32), 0.0).dtype == np.float64
    assert C.MaxPool(2).forward(np.arange(36).reshape(1, 6, 6)).dtype == np.float64


def test_mixed_with_the_notebooks_own_layers(fashion):
    train_x, train_y, _, _ = fashion
    np.random.seed(4)
    layers = list(small_net(C))
    layers[1], layers[6] = R.ReLU(), R.ReLU()  # a user's own layers in the same slots
    net = C.SimpleCNN(*layers)
    crops = C.preprocess(train_x)[:40, :, 6:21, 6:21]
    out = net.forward(crops[0])
    assert net.backprop(loss_gradient(out, train_y[0]), LR).shape == (1, 15, 15)
    # predict falls back to forward per image, which reaches the user's layers.
    per_image = [np.argmax(net.forward(im)) for im in crops]
    assert net.predict(crops, train_y[:40], range(10))[0] == np.mean(per_image == train_y[:40])


def test_preprocess():
    net = C.SimpleCNN(*small_net(C))
    gray = np.zeros((4, 28, 28), dtype=np.uint8)
    assert net.preprocess(gray).shape == (4, 1, 28, 28) and net.preprocess(gray).dtype == np.uint8
    rgb = np.arange(2 * 5 * 6 * 3).reshape(2, 5, 6, 3)
    np.testing.assert_array_equal(net.preprocess(rgb), R.SimpleCNN.preprocess(None, rgb))
    assert net.preprocess(rgb).shape == (2, 3, 5, 6)
    first = np.zeros((2, 1, 28, 28))
    assert net.preprocess(first) is first
    np.testing.assert_array_equal(C.preprocess(gray), net.preprocess(gray))


def test_avg_f1_score_leaves_out_classes_without_precision_or_recall():
    net = C.SimpleCNN(*small_net(C))
    rng = np.random.default_rng(8)
    for _ in range(20):
        true = rng.integers(0, 6, 50)
        pred = np.where(rng.random(50) < 0.6, true, rng.integers(0, 6, 50))
        pred[pred == 2] = 3  # class 2 never predicted: no precision, left out
        got = net.avg_f1_score(pred, true, range(6))
        assert got == R.SimpleCNN.avg_f1_score(None, pred, true, range(6))
    # By hand: class 0 perfect (F1 1), class 1 half found (P 1, R 0.5: F1 2/3), class 2
    # absent and class 3 predicted once, wrongly (P 0): both left out.
    assert net.avg_f1_score([0, 0, 1, 3], [0, 0, 1, 1], [0, 1, 2, 3]) == pytest.approx(
        (1 + 2 / 3) / 2)
    assert np.isnan(net.avg_f1_score([1, 1], [0, 0], [0, 1]))


def test_predict_matches_per_image_forward_and_the_replica(fashion):
    _, _, test_x, test_y = fashion
    replica, compat = twin(6)
    images = C.preprocess(test_x[:150])
    per_image = np.array([np.argmax(compat.forward(im)) for im in images])
    acc, f1 = compat.predict(images, test_y[:150], list(range(10)))
    assert acc == np.mean(per_image == test_y[:150])
    assert f1 == R.SimpleCNN.avg_f1_score(None, per_image, test_y[:150], range(10))
    assert (acc, f1) == replica.predict(images, test_y[:150], list(range(10)))
    # The batched predict leaves each layer's state as forward on the last image does.
    state = compat.OutputLayer.prev_totals.copy()
    compat.forward(images[-1])
    np.testing.assert_array_equal(compat.OutputLayer.prev_totals, state)


def test_predict_batches_have_the_bits_of_forward():
    """Predictions over many random networks and images equal forward's argmax exactly,
    including near ties (the batched kernels share the per-sample kernels' code)."""
    rng = np.random.default_rng(0)
    for seed in range(3):
        net = build(C, seed, small_net)
        images = rng.integers(0, 256, (600, 1, 15, 15)).astype(np.uint8)
        labels = rng.integers(0, 10, 600)
        net._batched_predictions(images)
        got = net._batched_predictions(images)
        per_image = np.array([np.argmax(net.forward(im)) for im in images])
        np.testing.assert_array_equal(got, per_image)
        probs = np.array([net.forward(im) for im in images[:5]])
        assert np.all(np.isfinite(probs))
        acc, _ = net.predict(images, labels, range(10))
        assert acc == np.mean(per_image == labels)


def test_bad_inputs_raise():
    np.random.seed(0)
    conv = C.ConvLayer((1, 28, 28), 5, 6)
    with pytest.raises(ValueError, match=r"\(1, 28, 28\)"):
        conv.forward(np.zeros((28, 28)))
    with pytest.raises(ValueError, match=r"\(1, 28, 28\)"):
        conv.forward(np.zeros((1, 30, 30)))  # the original would crop it silently
    with pytest.raises(RuntimeError, match="before forward"):
        conv.backprop(np.zeros((6, 28, 28)), LR)
    conv.forward(np.zeros((1, 28, 28)))
    with pytest.raises(ValueError, match=r"\(6, 28, 28\)"):
        conv.backprop(np.zeros((6, 27, 28)), LR)
    with pytest.raises(TypeError, match="real numbers"):
        conv.forward(np.zeros((1, 28, 28), dtype=complex))
    conv.kernels = np.zeros((6, 1, 3, 3))  # would let the kernel read out of bounds
    with pytest.raises(ValueError, match=r"\(6, 1, 5, 5\)"):
        conv.forward(np.zeros((1, 28, 28)))
    conv.kernels, conv.bias = np.zeros((6, 1, 5, 5)), np.zeros((6, 27, 28))
    with pytest.raises(ValueError, match=r"bias must be an array of shape \(6, 28, 28\)"):
        conv.forward(np.zeros((1, 28, 28)))
    with pytest.raises(ValueError, match="odd"):
        C.ConvLayer((1, 28, 28), 4, 6)
    with pytest.raises(ValueError, match="input_shape"):
        C.ConvLayer((28, 28), 5, 6)
    with pytest.raises(ValueError, match="padding"):
        C.ConvLayer((1, 28, 28), 5, 6, padding=np.nan)
    with pytest.raises(ValueError, match="1176"):
        C.FeedForward(1176, 100).forward(np.zeros((6, 14, 13)))
    soft = C.Softmax(100, 10)
    soft.forward(np.zeros(100))
    with pytest.raises(ValueError, match=r"\(10,\)"):
        soft.backprop(np.zeros(9), LR)
    soft.bias = np.zeros(9)
    with pytest.raises(ValueError, match=r"bias must be an array of shape \(10,\)"):
        soft.forward(np.zeros(100))
    pool = C.MaxPool(2)
    with pytest.raises(ValueError, match=r"\(depth, h, w\)"):
        pool.forward(np.zeros((28, 28)))
    pool.forward(np.zeros((6, 28, 28)))
    with pytest.raises(ValueError, match=r"\(6, 14, 14\)"):
        pool.backprop(np.zeros((6, 28, 28)))
    relu = C.ReLU()
    with pytest.raises(RuntimeError, match="before forward"):
        relu.backprop(np.zeros(5))
    relu.forward(np.zeros(5))
    with pytest.raises(ValueError, match=r"\(5,\)"):
        relu.backprop(np.zeros(6))


def test_bad_training_data_raises(fashion):
    train_x, train_y, test_x, test_y = fashion
    net = build(C, 0)
    with pytest.raises(ValueError, match="trainlabels needs one label per image"):
        net.train(train_x[:10], train_y[:9], test_x[:5], test_y[:5], epochs=1)
    with pytest.raises(ValueError, match="integer class indices"):
        net.train(train_x[:10], np.r_[train_y[:9], -1], test_x[:5], test_y[:5], epochs=1)
    with pytest.raises(ValueError, match="integer class indices"):
        net.train(train_x[:10], train_y[:10].astype(float), test_x[:5], test_y[:5], epochs=1)
    with pytest.raises(ValueError, match="devlabels"):
        net.train(train_x[:10], train_y[:10], test_x[:5], test_y[:4], epochs=1)
    with pytest.raises(ValueError, match="as many labels as images"):
        net.predict(C.preprocess(test_x[:5]), test_y[:4], range(10))


def test_train_without_devset_and_with_list_labels(fashion, capsys):
    train_x, train_y, _, _ = fashion
    net = build(C, 1)
    net.train(train_x[:20], list(train_y[:20]), None, None, epochs=1)
    assert capsys.readouterr().out.splitlines()[:1] == ["Training..."]


def test_train_calls_a_subclass_forward_and_backprop(fashion, capsys):
    train_x, train_y, _, _ = fashion
    calls = {"forward": 0, "backprop": 0}

    class Logged(C.SimpleCNN):
        def forward(self, image):
            calls["forward"] += 1
            return super().forward(image)

        def backprop(self, gradient, learn_rate):
            calls["backprop"] += 1
            return super().backprop(gradient, learn_rate)

    np.random.seed(0)
    net = Logged(*small_net(C))
    net.train(C.preprocess(train_x)[:12, :, 6:21, 6:21], train_y[:12], None, None, epochs=2)
    assert calls == {"forward": 24, "backprop": 24}
