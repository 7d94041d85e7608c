"""fastcnn.compat against a plain NumPy replica of the per-sample tutorial classes."""

# Seeding the global np.random state is the point: compat must follow it like the tutorial.
# ruff: noqa: NPY002

import numpy as np
import original_replica as R
import pytest

from fastcnn import compat as C
from fastcnn.data import load_dataset
from fastcnn.metrics import accuracy, macro_f1

RTOL = 1e-6
LR = 0.005


@pytest.fixture(scope="module")
def sample():
    images, labels = load_dataset("sample", "train")
    return C.preprocess(images), labels


def close(actual, expected, what):
    """rtol 1e-6, with an absolute floor far below the array's scale for near-zero entries."""
    expected = np.asarray(expected)
    atol = 1e-9 * float(np.max(np.abs(expected), initial=0.0)) + 1e-300
    np.testing.assert_allclose(actual, expected, rtol=RTOL, atol=atol, err_msg=what)


def twin(make_layers, seed):
    """The same network built twice from the same np.random state: (replica, compat)."""
    np.random.seed(seed)
    replica = R.SimpleCNN(make_layers(R))
    np.random.seed(seed)
    compat = C.SimpleCNN(make_layers(C))
    return replica, compat


def params(layer):
    return {name: getattr(layer, name) for name in ("kernels", "bias", "weights", "biases")
            if hasattr(layer, name)}


def snapshot(net):
    return [{k: v.copy() for k, v in params(layer).items()} for layer in net.layers]


def compare_params(replica, compat, start_r, start_c, what):
    """Parameters and (more telling, as steps are tiny) their change since the start."""
    for idx, (lr_, lc) in enumerate(zip(replica.layers, compat.layers, strict=True)):
        for name, value in params(lr_).items():
            got = getattr(lc, name)
            assert got.dtype == np.float64
            close(got, value, f"{what}: layer {idx} {name}")
            close(got - start_c[idx][name], value - start_r[idx][name],
                  f"{what}: layer {idx} {name} update")


def loss_gradient(out, label):
    gradient = np.zeros(len(out))
    gradient[label] = -1 / out[label]
    return gradient


def seed_arch(mod):
    return mod.seed_arch_layers()


def small_net(mod):
    # 15x15 crops: a ragged edge for the pool, a non-zero padding constant, 3x3 and 5x5.
    return [
        mod.ConvLayer((1, 15, 15), 3, 4),
        mod.ReLU(),
        mod.ConvLayer((4, 15, 15), 5, 5, padding=0.25),
        mod.ReLU(),
        mod.MaxPool(2),
        mod.FeedForward(5 * 7 * 7, 32),
        mod.ReLU(),
        mod.Softmax(32, 10),
    ]


def test_init_matches_replica():
    replica, compat = twin(seed_arch, 3)
    for lr_, lc in zip(replica.layers, compat.layers, strict=True):
        for name, value in params(lr_).items():
            np.testing.assert_array_equal(getattr(lc, name), value)


def test_seed_arch_steps_match_replica(sample):
    images, labels = sample
    replica, compat = twin(seed_arch, 0)
    start_r, start_c = snapshot(replica), snapshot(compat)
    for step in range(60):
        im, label = images[step], labels[step]
        out_r, out_c = replica.forward(im), compat.forward(im)
        assert out_c.dtype == np.float64 and out_c.shape == (10,)
        close(out_c, out_r, f"step {step} output")
        # Layer by layer, to compare every input gradient (SimpleCNN.backprop drops them).
        g_r = g_c = loss_gradient(out_r, label)
        for idx in reversed(range(len(replica.layers))):
            lr_, lc = replica.layers[idx], compat.layers[idx]
            if isinstance(lr_, (R.ConvLayer, R.FeedForward, R.Softmax)):
                g_r, g_c = lr_.backprop(g_r, LR), lc.backprop(g_c, LR)
            else:
                g_r, g_c = lr_.backprop(g_r), lc.backprop(g_c)
            assert g_c.shape == g_r.shape
            close(g_c, g_r, f"step {step} layer {idx} input gradient")
        if step % 20 == 19:
            compare_params(replica, compat, start_r, start_c, f"step {step}")


def test_small_net_training_matches_replica(sample):
    images, labels = sample
    crops = images[:, :, 6:21, 6:21]
    replica, compat = twin(small_net, 1)
    start_r, start_c = snapshot(replica), snapshot(compat)
    for step in range(240):
        im, label = crops[step], labels[step]
        out_r, out_c = replica.forward(im), compat.forward(im)
        close(out_c, out_r, f"step {step} output")
        replica.backprop(loss_gradient(out_r, label), LR)
        compat.backprop(loss_gradient(out_c, label), LR)
        if step % 40 == 39:
            compare_params(replica, compat, start_r, start_c, f"step {step}")


def test_train_matches_replica_train(sample, capsys):
    images, labels = sample
    crops, dev = images[:120, :, 6:21, 6:21], images[120:160, :, 6:21, 6:21]
    replica, compat = twin(small_net, 2)
    start_r, start_c = snapshot(replica), snapshot(compat)
    np.random.seed(5)
    replica.train(crops, labels[:120], dev, labels[120:160], 1, LR)
    np.random.seed(5)
    history = compat.train(crops, labels[:120], dev, labels[120:160], 1, LR)
    compare_params(replica, compat, start_r, start_c, "after train")
    assert C.SimpleCNN(compat.layers).predict(dev, labels[120:160], 10) == pytest.approx(
        (history[0]["dev_accuracy"], history[0]["dev_macro_f1"]))


def test_seed_arch_train_runs_and_prints(sample, capsys):
    images, labels = sample
    np.random.seed(0)
    net = C.SimpleCNN(C.seed_arch_layers())
    history = net.train(images[:300], labels[:300], images[300:400], labels[300:400], 1, LR)
    printed = capsys.readouterr().out
    assert "Epoch 1: average loss" in printed and "dev accuracy" in printed
    assert len(history) == 1 and np.isfinite(history[0]["loss"])
    assert 0.0 <= history[0]["dev_accuracy"] <= 1.0


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


def test_softmax_edge_cases():
    np.random.seed(0)
    s = C.Softmax(4, 3)
    x = np.ones((2, 2))
    s.forward(x)
    before = s.weights.copy()
    np.testing.assert_array_equal(s.backprop(np.zeros(3), 0.1), np.zeros((2, 2)))
    np.testing.assert_array_equal(s.weights, before)  # nothing to learn from
    s.weights[:] = 1e3  # logits ~4000: exp overflows unless shifted
    p = s.forward(x)
    assert np.all(np.isfinite(p)) and p.sum() == pytest.approx(1.0)


def test_float32_and_integer_inputs_give_float64():
    np.random.seed(0)
    conv = C.ConvLayer((1, 6, 6), 3, 2)
    x = np.random.default_rng(0).standard_normal((1, 6, 6))
    y64 = conv.forward(x)
    y32 = conv.forward(x.astype(np.float32))
    assert y32.dtype == np.float64
    close(y32, y64.astype(np.float32), "float32 input")
    assert conv.backprop(np.ones((2, 6, 6), dtype=np.float32), 0.0).dtype == np.float64
    assert C.MaxPool(2).forward(np.arange(36).reshape(1, 6, 6)).dtype == np.float64


def test_mixed_with_tutorial_layers(sample):
    images, labels = sample
    np.random.seed(4)
    layers = small_net(C)
    layers[1], layers[6] = R.ReLU(), R.ReLU()  # unknown layers: learn rate by signature
    net = C.SimpleCNN(layers)
    out = net.forward(images[0, :, 6:21, 6:21])
    net.backprop(loss_gradient(out, labels[0]), LR)


def test_preprocess():
    data = np.zeros((4, 28, 28), dtype=np.uint8)
    out = C.preprocess(data)
    assert out.shape == (4, 1, 28, 28) and out.dtype == np.uint8
    with pytest.raises(ValueError, match=r"\(N, height, width\)"):
        C.preprocess(np.zeros((4, 1, 28, 28)))


def test_predict_returns_metrics(sample):
    images, labels = sample
    crops = images[:80, :, 6:21, 6:21]
    replica, compat = twin(small_net, 6)
    preds = np.array([np.argmax(compat.forward(im)) for im in crops])
    expected = (accuracy(labels[:80], preds), macro_f1(labels[:80], preds, 10))
    assert compat.predict(crops, labels[:80], 10) == expected
    from fastcnn.data import CLASS_NAMES

    assert compat.predict(crops, labels[:80], CLASS_NAMES) == expected
    assert replica.predict(crops, labels[:80], 10) == expected


def test_bad_inputs_raise():
    np.random.seed(0)
    conv = C.ConvLayer((1, 28, 28), 5, 6)
    with pytest.raises(ValueError, match=r"\(1, 28, 28\)"):
        conv.forward(np.zeros((28, 28)))
    with pytest.raises(ValueError, match=r"\(1, 28, 28\)"):
        conv.forward(np.zeros((3, 28, 28)))
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
    with pytest.raises(ValueError, match="odd"):
        C.ConvLayer((1, 28, 28), 4, 6)
    with pytest.raises(ValueError, match="input_shape"):
        C.ConvLayer((28, 28), 5, 6)
    with pytest.raises(ValueError, match="1176"):
        C.FeedForward(1176, 100).forward(np.zeros((6, 14, 13)))
    soft = C.Softmax(100, 10)
    soft.forward(np.zeros(100))
    with pytest.raises(ValueError, match=r"\(10,\)"):
        soft.backprop(np.zeros(9), LR)
    pool = C.MaxPool(2)
    with pytest.raises(ValueError, match=r"\(depth, h, w\)"):
        pool.forward(np.zeros((28, 28)))
    pool.forward(np.zeros((6, 28, 28)))
    with pytest.raises(ValueError, match=r"\(6, 14, 14\)"):
        pool.backprop(np.zeros((6, 28, 28)))
    relu = C.ReLU()
    relu.forward(np.zeros(5))
    with pytest.raises(ValueError, match=r"\(5,\)"):
        relu.backprop(np.zeros(6))
