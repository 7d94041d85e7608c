"""Sequential: training reaches real accuracy, save/load round trips, errors are clear."""

import json
import os
import stat

import numpy as np
import pytest

import fastcnn as fc
from fastcnn.data import load_dataset


@pytest.fixture(scope="module")
def sample():
    return load_dataset("sample", "train"), load_dataset("sample", "test")


@pytest.fixture(scope="module")
def trained(sample):
    (xtr, ytr), (xte, yte) = sample
    model = fc.seed_arch(seed=0)
    opt = fc.SGD(fc.CosineDecay(0.05, 3 * 32), momentum=0.9)
    history = model.fit(xtr, ytr, epochs=3, batch_size=64, optimizer=opt,
                        validation_data=(xte, yte), verbose=False)
    return model, history


def test_training_on_sample_beats_stated_accuracy(trained, sample):
    model, history = trained
    (_, _), (xte, yte) = sample
    scores = model.evaluate(xte, yte)
    # 2,000 real training images, 3 epochs: measured 0.80; chance is 0.10.
    assert scores["accuracy"] >= 0.75
    assert scores["macro_f1"] >= 0.74
    assert history.loss[-1] < history.loss[0]
    assert len(history.batch_loss) == 3 * 32
    assert history.val_accuracy[-1] == pytest.approx(scores["accuracy"])


def test_predict_returns_probabilities(trained, sample):
    model, _ = trained
    (_, _), (xte, _) = sample
    probs = model.predict(xte[:37], batch_size=10)
    assert probs.shape == (37, 10) and probs.dtype == np.float32
    np.testing.assert_allclose(probs.sum(axis=1), 1, rtol=1e-5)
    # Batching must not change the answer.
    np.testing.assert_allclose(probs, model.predict(xte[:37]), rtol=1e-5, atol=1e-7)


def test_save_load_round_trip(trained, sample, tmp_path):
    model, _ = trained
    (_, _), (xte, _) = sample
    path = tmp_path / "model.npz"
    model.save(path)
    loaded = fc.load_model(path)
    assert loaded.get_config() == model.get_config()
    for a, b in zip(model.parameters(), loaded.parameters(), strict=True):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(model.predict(xte[:50]), loaded.predict(xte[:50]))
    with np.load(path, allow_pickle=False) as f:  # no pickled objects inside
        assert json.loads(str(f["__config__"]))["layers"][0]["class"] == "Conv2D"
    assert [p.name for p in tmp_path.iterdir()] == ["model.npz"]  # no temp files left


def test_load_refuses_bad_files(trained, tmp_path):
    model, _ = trained
    with pytest.raises(FileNotFoundError, match="no such file"):
        fc.load_model(tmp_path / "missing.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="not a .npz file"):
        fc.load_model(tmp_path / "junk.npz")
    arrays = {"__format__": np.array("fastcnn-model"), "__version__": np.array(99)}
    np.savez(tmp_path / "future.npz", **arrays)
    with pytest.raises(ValueError, match="format version 99"):
        fc.load_model(tmp_path / "future.npz")
    good = tmp_path / "good.npz"
    model.save(good)
    with np.load(good) as f:
        arrays = {k: f[k] for k in f.files}
    del arrays["4.weight"]
    np.savez(tmp_path / "missing_array.npz", **arrays)
    with pytest.raises(ValueError, match="missing weight arrays"):
        fc.load_model(tmp_path / "missing_array.npz")
    arrays["4.weight"] = np.zeros((3, 3), np.float32)
    np.savez(tmp_path / "bad_shape.npz", **arrays)
    with pytest.raises(ValueError, match="4.weight"):
        fc.load_model(tmp_path / "bad_shape.npz")


def test_same_seed_same_weights():
    a, b, c = fc.seed_arch(7), fc.seed_arch(7), fc.seed_arch(8)
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        np.testing.assert_array_equal(pa, pb)
    assert not np.array_equal(a.parameters()[0], c.parameters()[0])


@pytest.mark.parametrize("bad,exc,match", [
    (np.zeros((2, 28, 27), np.uint8), ValueError, r"\(N, 1, 28, 28\)"),
    (np.zeros((2, 28, 28), np.int32), TypeError, "uint8 pixels or floats"),
    ([[0.0]], TypeError, "numpy array"),
])
def test_predict_rejects_bad_input(bad, exc, match):
    with pytest.raises(exc, match=match):
        fc.seed_arch().predict(bad)


def test_fit_rejects_bad_labels():
    x = np.zeros((4, 28, 28), np.uint8)
    with pytest.raises(ValueError, match=r"lie in \[0, 10\)"):
        fc.seed_arch().fit(x, np.array([0, 1, 2, 10]), verbose=False)
    with pytest.raises(ValueError, match="one label per image"):
        fc.seed_arch().fit(x, np.array([0, 1]), verbose=False)


@pytest.mark.parametrize("logits, labels, exc, match", [
    (np.zeros((2, 3), np.float32), np.array([0, 3]), ValueError,
     r"lie in \[0, 3\), got 3 at index 1"),
    (np.zeros((2, 3), np.float32), np.array([-1, 0]), ValueError, r"got -1 at index 0"),
    (np.zeros((2, 3), np.float32), np.array([0.0, 1.0]), ValueError, "2 integers"),
    (np.zeros((2, 3), np.float32), np.array([0, 1, 2]), ValueError, "2 integers"),
    (np.zeros((0, 3), np.float32), np.array([], np.int64), ValueError, "empty"),
    (np.zeros(3, np.float32), np.array([0]), ValueError, "2 dimensions"),
    (np.zeros((2, 3), np.int64), np.array([0, 1]), TypeError, "float32 or float64"),
    ([[0.0, 1.0]], np.array([0]), TypeError, "numpy array"),
])
def test_loss_rejects_bad_input(logits, labels, exc, match):
    for backend in ("numba", "numpy"):
        with pytest.raises(exc, match=match):
            fc.SoftmaxCrossEntropy(backend)(logits, labels)


def test_loss_backends_agree_and_backward_needs_a_call():
    rng = np.random.default_rng(5)
    logits = rng.standard_normal((7, 4)).astype(np.float32)
    labels = rng.integers(0, 4, 7).astype(np.uint8)  # any integer dtype
    fast, oracle = fc.SoftmaxCrossEntropy(), fc.SoftmaxCrossEntropy("numpy")
    assert fast(logits, labels) == pytest.approx(oracle(logits, labels), rel=1e-6)  # float32
    assert fast.backward().dtype == np.float32
    np.testing.assert_allclose(fast.backward(), oracle.backward(), rtol=1e-6, atol=1e-8)
    with pytest.raises(RuntimeError, match="before the loss"):
        fc.SoftmaxCrossEntropy().backward()
    with pytest.raises(ValueError, match="backend"):
        fc.SoftmaxCrossEntropy("torch")
    assert fc.seed_arch(backend="numpy").loss.backend == "numpy"
    assert fc.seed_arch().loss.backend == "numba"


def test_divergence_is_reported():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (64, 28, 28), dtype=np.uint8)
    y = rng.integers(0, 10, 64)
    with pytest.raises(fc.TrainingDiverged, match="epoch 1, batch .*lower learning rate"):
        fc.seed_arch().fit(x, y, epochs=2, batch_size=8, optimizer=fc.SGD(1e6), verbose=False)


@pytest.mark.parametrize("opt", [
    lambda: fc.SGD(0.05, momentum=0.9, nesterov=True),
    lambda: fc.Adam(fc.StepDecay(0.002, step_size=10)),
])
def test_optimizers_reduce_loss(opt, sample):
    (xtr, ytr), _ = sample
    model = fc.seed_arch(1)
    hist = model.fit(xtr[:512], ytr[:512], epochs=2, batch_size=32, optimizer=opt(),
                     verbose=False)
    assert hist.loss[1] < hist.loss[0]


def test_schedules():
    cos = fc.CosineDecay(0.1, decay_steps=10)
    assert cos(0) == pytest.approx(0.1) and cos(5) == pytest.approx(0.05)
    assert cos(10) == pytest.approx(0.0) and cos(50) == pytest.approx(0.0)
    step = fc.StepDecay(1.0, step_size=3, gamma=0.5)
    assert [step(i) for i in (0, 2, 3, 6)] == [1.0, 1.0, 0.5, 0.25]
    assert fc.Constant(0.3)(1000) == 0.3


def test_adam_matches_reference_update():
    p = np.array([1.0, -2.0], np.float64)
    g = np.array([0.5, 0.25])
    opt = fc.Adam(0.1)
    opt.step([p], [g])
    # First bias-corrected Adam step moves each weight by lr * sign(g).
    np.testing.assert_allclose(p, [0.9, -2.1], rtol=1e-6)


def test_saved_model_gets_the_usual_file_mode(tmp_path):
    old = os.umask(0o022)
    try:
        fc.seed_arch().save(tmp_path / "m.npz")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "m.npz").stat().st_mode) == 0o644


@pytest.mark.parametrize("layer,shape,dy_shape", [
    (lambda: fc.Dense(3), (4,), (1, 3)),            # would broadcast over the batch
    (lambda: fc.ReLU(), (2, 3, 3), (1, 2, 3, 3)),
    (lambda: fc.Flatten(), (2, 3, 3), (4, 2, 3, 3)),  # right size, wrong shape
    (lambda: fc.MaxPool2D(2), (1, 4, 4), (2, 1, 2, 3)),
    (lambda: fc.Conv2D(2, 3), (1, 5, 5), (2, 2, 3, 4)),
])
def test_backward_refuses_wrong_dy_shape(layer, shape, dy_shape):
    layer = layer()
    fc.Sequential([layer], input_shape=shape)
    layer.forward(np.ones((2, *shape), np.float32))
    with pytest.raises(ValueError, match="expects dy of shape"):
        layer.backward(np.ones(dy_shape, np.float32))


def test_layers_refuse_wrong_dtype_and_bad_sizes():
    dense = fc.Dense(3)
    fc.Sequential([dense], input_shape=(4,))
    with pytest.raises(TypeError, match="expects float32 input, got int64"):
        dense.forward(np.ones((2, 4), np.int64))
    with pytest.raises(TypeError, match="filters must be an int"):
        fc.Conv2D((2, 7), 3)
    with pytest.raises(TypeError, match="units must be an int"):
        fc.Dense((3, 4))
    with pytest.raises(ValueError, match="kernel_initializer must be one of"):
        fc.Dense(3, kernel_initializer="zeros")


def test_layers_checked_path_gives_the_same_bits_and_clear_errors():
    """Layers call the kernels directly only while x and their parameters are as built;
    anything else goes through fastcnn.functional: the same bits, or its clear errors."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((5, 1, 28, 28)).astype(np.float32)
    y = rng.integers(0, 10, 5)

    def step(change=None):
        model, xb = fc.seed_arch(1), x
        if change == "fortran_weights":
            for k in (0, 1, 4):
                layer = model.layers[k]
                layer.params["weight"] = np.asfortranarray(layer.params["weight"])
        elif change == "readonly_x":
            xb = x.copy()
            xb.flags.writeable = False
        elif change == "strided_x":
            xb = np.repeat(x, 2, axis=-1)[..., ::2]
        logits = model.forward(xb, training=True)
        model.loss(logits, y)
        dy = model.loss.backward()
        model.backward(np.asfortranarray(dy) if change == "fortran_dy" else dy)
        return [logits] + [g.copy() for g in model.gradients()]

    want = step()
    for change in ("fortran_weights", "readonly_x", "strided_x", "fortran_dy"):
        for got, expected in zip(step(change), want, strict=True):
            np.testing.assert_array_equal(got, expected, err_msg=change)
    for k, name, value, exc, match in (
            (4, "weight", np.zeros((1176, 100)), TypeError, "weight has dtype float64"),
            (1, "weight", np.zeros((6, 5, 5, 5), np.float32), ValueError, "5 input channels"),
            (0, "bias", np.zeros(7, np.float32), ValueError, "bias must have shape")):
        model = fc.seed_arch(1)
        model.layers[k].params[name] = value
        with pytest.raises(exc, match=match):
            model.forward(x)


def test_inference_fuses_conv_and_pool_with_the_same_bits():
    import fastcnn as fc

    model = fc.seed_arch(3)
    x = np.random.default_rng(0).standard_normal((37, 1, 28, 28)).astype(np.float32)
    x[5, 0, 10, 10] = np.nan  # one image's NaN stays in that image's row
    unfused = x
    for layer in model.layers:
        unfused = layer.forward(unfused, training=False)
    fused = model.forward(x)
    np.testing.assert_array_equal(fused, unfused)
    assert np.isnan(fused[5]).all() and not np.isnan(np.delete(fused, 5, axis=0)).any()
    conv, pool = model.layers[1], model.layers[2]
    assert conv.fuses_with(pool) and not model.layers[0].fuses_with(model.layers[1])
    # Overlapping windows (stride < pool size) are not fused, and still agree.
    overlapping = fc.Sequential([fc.Conv2D(4, 3, padding="same", activation="relu"),
                                 fc.MaxPool2D(3, stride=1), fc.Flatten(), fc.Dense(3)],
                                input_shape=(2, 9, 9), seed=1)
    assert not overlapping.layers[0].fuses_with(overlapping.layers[1])
    xo = np.random.default_rng(1).standard_normal((4, 2, 9, 9)).astype(np.float32)
    np.testing.assert_array_equal(overlapping.forward(xo), overlapping.forward(xo, training=True))


def test_training_fuses_conv_and_pool_with_the_same_bits():
    """A training step runs Conv2D + MaxPool2D as one forward and one backward kernel;
    outputs and every gradient keep the bits of the layers run one by one."""
    model = fc.Sequential([
        fc.Conv2D(4, 3, padding="same", activation="relu"), fc.MaxPool2D(2),
        fc.Conv2D(3, 3, stride=2, padding=1), fc.MaxPool2D((1, 2)),
        fc.Flatten(), fc.Dense(5)], input_shape=(2, 12, 11), seed=4)
    rng = np.random.default_rng(2)
    x = np.round(rng.standard_normal((6, 2, 12, 11)), 1).astype(np.float32)  # with ties
    labels = rng.integers(0, 5, 6)
    logits = model.forward(x, training=True)
    assert model._fused == {0, 2}
    model.loss(logits, labels)
    model.backward(model.loss.backward())
    fused = [g.copy() for g in model.gradients()]
    with pytest.raises(RuntimeError, match="backward_pooled"):
        model.layers[0].backward(np.ones((6, 4, 12, 11), np.float32))
    with pytest.raises(RuntimeError, match="before forward"):
        model.layers[1].backward(np.ones((6, 4, 6, 5), np.float32))
    out = x
    for layer in model.layers:
        out = layer.forward(out, training=True)
    np.testing.assert_array_equal(out, logits)
    model.loss(out, labels)
    dy = model.loss.backward()
    for k in range(len(model.layers) - 1, -1, -1):
        dy = model.layers[k].backward(dy, need_input_grad=k > 0)
    for a, b in zip(fused, model.gradients(), strict=True):
        np.testing.assert_array_equal(a, b)


def test_a_fused_pass_leaves_no_stale_state_in_the_layer_it_stands_in_for():
    model = fc.seed_arch(0)
    x = np.random.default_rng(0).standard_normal((3, 1, 28, 28)).astype(np.float32)
    pool = model.layers[2]
    # The pool ran on its own once (as a user may call it), then fused in the model.
    pool.forward(model.layers[1].forward(model.layers[0].forward(x)), training=True)
    model.forward(x, training=True)
    with pytest.raises(RuntimeError, match="before forward"):
        pool.backward(np.ones((3, 6, 14, 14), np.float32))


def test_the_execution_plan_fuses_by_its_table(monkeypatch):
    from fastcnn import plan

    model = fc.seed_arch(0)
    assert [(s.first, s.size) for s in model._plans[True]] == [(0, 1), (1, 2), (3, 1), (4, 1),
                                                               (5, 1)]
    calls = []

    def forward(layers, x, training):
        calls.append("forward")
        flatten, dense = layers
        return dense.forward(flatten.forward(x, training), training)

    def backward(layers, dy, need):
        calls.append("backward")
        flatten, dense = layers
        return flatten.backward(dense.backward(dy, True), need)

    # A new fused run is one entry of the table.
    monkeypatch.setattr(plan, "FUSIONS", (*plan.FUSIONS, plan.Fusion(
        (fc.Flatten, fc.Dense), lambda layers, training: training, forward, backward)))
    fused = fc.seed_arch(0)
    assert [(s.first, s.size) for s in fused._plans[True]] == [(0, 1), (1, 2), (3, 2), (5, 1)]
    assert len(fused._plans[False]) == 5  # the entry applies in training only
    rng = np.random.default_rng(1)
    x = rng.standard_normal((4, 1, 28, 28)).astype(np.float32)
    labels = rng.integers(0, 10, 4)
    for m in (model, fused):
        m.train_step(x, labels, fc.SGD(0.1))
    assert calls == ["forward", "backward"]
    for a, b in zip(model.parameters(), fused.parameters(), strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("make_opt", [lambda: fc.SGD(0.05, momentum=0.9), lambda: fc.Adam(0.01)])
def test_warmup_compiles_the_optimizer_and_changes_nothing(make_opt):
    model, opt = fc.seed_arch(0), make_opt()
    before = [p.copy() for p in model.parameters()]
    assert model.warmup(opt) >= 0
    assert opt.iterations == 0 and not opt.state()
    for a, b in zip(before, model.parameters(), strict=True):
        np.testing.assert_array_equal(a, b)


def colour_images(n, seed):
    """3-channel uint8 images whose class is which channel is bright (with noise)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    x = rng.integers(0, 60, (n, 3, 8, 8)).astype(np.uint8)
    x[np.arange(n), y] += rng.integers(60, 190, (n, 8, 8)).astype(np.uint8)
    x[:, 2] //= 2  # channels on different scales: per-channel statistics matter
    return x, y


def test_per_channel_statistics_from_the_training_images(tmp_path):
    x, y = colour_images(600, 0)
    model = fc.Sequential([fc.Conv2D(4, 3, activation="relu"), fc.GlobalAvgPool2D(),
                           fc.Dense(3)], input_shape=(3, 8, 8), seed=0)
    assert model.input_mean == (fc.data.MEAN,)  # Fashion-MNIST's until adapted
    model.adapt(x)
    v = x.astype(np.float64) / 255
    np.testing.assert_allclose(model.input_mean, v.mean(axis=(0, 2, 3)), rtol=1e-12)
    np.testing.assert_allclose(model.input_std, v.std(axis=(0, 2, 3)), rtol=1e-12)
    prepared = model.prepare(x)
    np.testing.assert_allclose(prepared.mean(axis=(0, 2, 3)), 0, atol=1e-5)
    np.testing.assert_allclose(prepared.std(axis=(0, 2, 3)), 1, atol=1e-5)
    model.fit(x, y, epochs=15, batch_size=32, optimizer=fc.Adam(0.01), verbose=False)
    xt, yt = colour_images(300, 1)
    assert model.evaluate(xt, yt)["accuracy"] > 0.9
    model.save(tmp_path / "m.npz")
    loaded = fc.load_model(tmp_path / "m.npz")
    assert loaded.input_mean == model.input_mean and loaded.input_std == model.input_std
    np.testing.assert_array_equal(loaded.predict(xt), model.predict(xt))


@pytest.mark.parametrize("kwargs, exc, match", [
    ({"input_mean": (0.1, 0.2)}, ValueError, "input_mean needs 1 or 3 values"),
    ({"input_std": (0.0,)}, ValueError, "input_std\\[0\\] must be in"),
    ({"input_std": (float("inf"),)}, ValueError, "input_std must be finite"),
    ({"input_mean": "abc"}, ValueError, "input_mean needs"),
    ({"input_mean": (None,)}, TypeError, "input_mean\\[0\\] must be a number"),
])
def test_bad_input_statistics_are_named(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        fc.Sequential([fc.Flatten(), fc.Dense(3)], input_shape=(3, 4, 4), **kwargs)


def test_adapt_takes_uint8_images_of_the_model_shape():
    model = fc.Sequential([fc.Flatten(), fc.Dense(3)], input_shape=(3, 4, 4))
    with pytest.raises(TypeError, match="adapt takes uint8"):
        model.adapt(np.zeros((2, 3, 4, 4), np.float32))
    with pytest.raises(ValueError, match="x must have shape"):
        model.adapt(np.zeros((2, 1, 4, 4), np.uint8))


@pytest.mark.parametrize("name", sorted(fc.models.MODELS))
def test_every_zoo_model_builds_for_other_shapes_trains_and_reloads(name, tmp_path):
    build = fc.models.MODELS[name]
    model = build(1, input_shape=(3, 32, 32), classes=7)
    assert model.input_shape == (3, 32, 32) and model.output_shape == (7,)
    assert build(1).get_config() == build(2).get_config()  # seed draws weights only
    x, y = colour_images(64, 2)
    x = np.repeat(np.repeat(x, 4, axis=2), 4, axis=3)  # (64, 3, 32, 32)
    model.adapt(x)
    before = model.evaluate(x, y)["loss"]
    opt = fc.Adam(0.003)
    for _ in range(8):
        loss = model.train_step(model.prepare(x), y, opt)
    assert np.isfinite(loss)
    model.save(tmp_path / "m.npz")
    loaded = fc.load_model(tmp_path / "m.npz")
    np.testing.assert_array_equal(loaded.predict(x), model.predict(x))
    assert loaded.evaluate(x, y)["loss"] < before
