"""fit(validation_split=...) and EarlyStopping: what is held out, when training stops,
the best weights restored, and a resumed run (through a checkpoint file) stopping and
restoring exactly as the uninterrupted one."""

import numpy as np
import pytest

import fastcnn as fc
from fastcnn.checkpoint import load_checkpoint, save_checkpoint


@pytest.fixture(scope="module")
def data():
    return fc.load_dataset("sample", "train")


def model(seed=0):
    return fc.Sequential([fc.Conv2D(4, 3, padding="same", activation="relu"),
                          fc.MaxPool2D(2), fc.Flatten(), fc.Dense(10)], seed=seed)


def run(data, **kwargs):
    x, y = data
    m, opt = model(), fc.Adam(0.02)
    kwargs = {"epochs": 12, "batch_size": 50, "optimizer": opt, "validation_split": 0.25,
              "verbose": False, **kwargs}
    return m, opt, m.fit(x, y, **kwargs)


def test_validation_split_holds_out_the_last_samples(data):
    x, y = data
    m, _, h = run(data, epochs=2)
    assert len(h.val_accuracy) == 2
    tail = m.evaluate(x[1500:], y[1500:])
    assert h.val_accuracy[-1] == tail["accuracy"] and h.val_loss[-1] == tail["loss"]
    # Trained on the first 1,500 only: the same as fitting those with no split.
    m2 = model()
    m2.fit(x[:1500], y[:1500], epochs=2, batch_size=50, optimizer=fc.Adam(0.02),
           verbose=False)
    for a, b in zip(m.parameters(), m2.parameters(), strict=True):
        assert np.array_equal(a, b)


def test_early_stopping_stops_after_patience_and_restores_the_best_epoch(data):
    x, y = data
    es = fc.EarlyStopping("val_loss", patience=2)
    m, _, h = run(data, epochs=40, early_stopping=es)
    best = es.best_epoch(h)
    assert best == int(np.argmin(h.val_loss))
    assert len(h.loss) == best + 3 < 40  # stopped two epochs after the best one
    assert all(v >= h.val_loss[best] for v in h.val_loss[best + 1:])
    assert m.evaluate(x[1500:], y[1500:])["loss"] == h.val_loss[best]


def test_min_delta_and_modes():
    h = fc.History(val_loss=[1.0, 0.95, 0.949, 0.5], val_accuracy=[0.5, 0.6, 0.55, 0.7])
    assert fc.EarlyStopping("val_loss").best_epoch(h) == 3
    assert fc.EarlyStopping("val_loss", min_delta=0.1).best_epoch(h) == 3
    h.val_loss = [1.0, 0.95, 0.949, 0.93]
    assert fc.EarlyStopping("val_loss", min_delta=0.1).best_epoch(h) == 0
    assert fc.EarlyStopping("val_loss", min_delta=0.1, patience=3).should_stop(h)
    assert not fc.EarlyStopping("val_loss", min_delta=0.1, patience=4).should_stop(h)
    assert fc.EarlyStopping("val_accuracy").best_epoch(h) == 3
    h.val_accuracy = [float("nan"), 0.6, 0.6]
    assert fc.EarlyStopping("val_accuracy").best_epoch(h) == 1  # ties keep the first


def test_without_restoring_the_last_weights_stay(data):
    x, y = data
    es = fc.EarlyStopping("val_accuracy", patience=1, restore_best_weights=False)
    m, _, h = run(data, epochs=40, early_stopping=es)
    assert m.evaluate(x[1500:], y[1500:])["accuracy"] == h.val_accuracy[-1]


@pytest.mark.parametrize("stop_epoch,stop_batch", [(0, 3), (1, 0), (2, 7), (4, 0)])
def test_resume_through_a_checkpoint_stops_and_restores_identically(data, tmp_path,
                                                                    stop_epoch, stop_batch):
    make_es = lambda: fc.EarlyStopping("val_loss", patience=2)  # noqa: E731
    full, _, history = run(data, epochs=40, early_stopping=make_es())
    m, opt = model(), fc.Adam(0.02)

    def stop_here(state):
        if (state.epoch, state.batch) != (stop_epoch, stop_batch):
            return False
        save_checkpoint(tmp_path / "c.npz", m, opt, state, {})
        return True

    m.fit(*data, epochs=40, batch_size=50, optimizer=opt, validation_split=0.25,
          early_stopping=make_es(), verbose=False, on_progress=stop_here)
    saved = load_checkpoint(tmp_path / "c.npz")
    if stop_epoch:
        assert saved.state.best_arrays is not None
    opt2 = fc.Adam(0.02)
    opt2.load_state(saved.optimizer_state, saved.iterations, saved.model.parameters())
    h2 = saved.model.fit(*data, epochs=40, batch_size=50, optimizer=opt2,
                         validation_split=0.25, early_stopping=make_es(), verbose=False,
                         initial_state=saved.state)
    assert h2.val_loss == history.val_loss and h2.loss == history.loss
    for a, b in zip(full.state_arrays().values(), saved.model.state_arrays().values(),
                    strict=True):
        assert np.array_equal(a, b)


def test_a_run_resumed_after_its_early_stop_stops_at_once(data):
    es = fc.EarlyStopping("val_loss", patience=1)
    saved = []

    def keep(state):
        saved[:] = [state, {k: v.copy() for k, v in opt.state().items()}, opt.iterations]

    x, y = data
    full, opt = model(), fc.Adam(0.02)
    history = full.fit(x, y, epochs=40, batch_size=50, optimizer=opt, validation_split=0.25,
                       early_stopping=es, verbose=False, on_progress=keep)
    last, opt_state, iterations = saved
    assert last.batch == 0 and es.should_stop(last.history) and last.epoch < 40
    # Resumed from its final state with the last (not the best) weights: nothing is
    # trained, the history stays, and the best weights are loaded.
    resumed = model(5)
    resumed.load_state_arrays(last.best_arrays)
    resumed.layers[0].params["bias"] += 1
    opt2 = fc.Adam(0.02)
    opt2.load_state(opt_state, iterations, resumed.parameters())
    h2 = resumed.fit(x, y, epochs=40, batch_size=50, optimizer=opt2, validation_split=0.25,
                     early_stopping=es, verbose=False, initial_state=last)
    assert h2.val_loss == history.val_loss and opt2.iterations == iterations
    for a, b in zip(full.state_arrays().values(), resumed.state_arrays().values(),
                    strict=True):
        assert np.array_equal(a, b)


@pytest.mark.parametrize("kwargs, exc, match", [
    ({"validation_split": 1.0}, ValueError, "leaves no training"),
    ({"validation_split": 1e-17}, ValueError, "leaves no training or no validation"),
    ({"validation_split": -0.1}, ValueError, "validation_split must be in"),
    ({"validation_split": "a"}, TypeError, "validation_split must be a number"),
    ({"validation_split": 0.2, "validation_data": "set below"}, ValueError, "not both"),
    ({"validation_split": 0, "early_stopping": fc.EarlyStopping()}, ValueError,
     "needs validation_data or validation_split"),
    ({"early_stopping": "yes"}, TypeError, "must be an EarlyStopping"),
])
def test_bad_arguments_are_named(data, kwargs, exc, match):
    x, y = data
    if kwargs.get("validation_data") == "set below":
        kwargs["validation_data"] = (x[:10], y[:10])
    with pytest.raises(exc, match=match):
        model().fit(x, y, verbose=False, **kwargs)


@pytest.mark.parametrize("kwargs, exc, match", [
    ({"monitor": "accuracy"}, ValueError, "monitor must be one of"),
    ({"patience": 0}, ValueError, "patience must be"),
    ({"min_delta": -1}, ValueError, "min_delta must be in"),
    ({"restore_best_weights": 1}, TypeError, "restore_best_weights must be True or False"),
])
def test_bad_early_stopping_is_named(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        fc.EarlyStopping(**kwargs)


@pytest.mark.parametrize("change, exc, match", [
    (lambda best: None, ValueError, "holds no best weights"),
    (lambda best: list(best.values()), TypeError, "must be a dict"),
    (lambda best: {k: a for k, a in best.items() if k != "0.bias"}, ValueError,
     r"missing weight arrays \['0.bias'\]"),
    (lambda best: {**best, "0.bias": best["0.bias"][:2]}, ValueError, "'0.bias' is float32"),
    (lambda best: {**best, "0.bias": best["0.bias"] * np.nan}, ValueError, "NaN"),
    (lambda best: {**best, "9.bias": best["0.bias"]}, ValueError,
     r"arrays the model does not have \['9.bias'\]"),
])
def test_a_resumed_state_with_bad_best_weights_is_refused(data, change, exc, match):
    """The best epoch's arrays that a resumed run would restore are checked as a loaded
    model's are, before any training."""
    x, y = data
    saved = []
    m, opt = model(), fc.Adam(0.02)
    m.fit(x, y, epochs=2, batch_size=50, optimizer=opt, validation_split=0.25,
          early_stopping=fc.EarlyStopping(), verbose=False,
          on_progress=saved.append)
    state = saved[-1]
    assert state.best_arrays is not None
    state.best_arrays = change(state.best_arrays)
    opt2 = fc.Adam(0.02)
    opt2.load_state(opt.state(), opt.iterations, m.parameters())
    with pytest.raises(exc, match=match):
        m.fit(x, y, epochs=2, batch_size=50, optimizer=opt2, validation_split=0.25,
              early_stopping=fc.EarlyStopping(), verbose=False, initial_state=state)
