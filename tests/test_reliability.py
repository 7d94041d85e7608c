"""Reliability: checkpoints survive real kills, resumed runs are bit-identical, results do
not depend on the thread count, divergence keeps the last good checkpoint, files are safe.

The kill tests run the real `python -m fastcnn.train` on 640 sample images (2 epochs of 20
batches, a checkpoint every 3 batches), stop it with SIGINT, SIGTERM or SIGKILL at chosen
points, resume it with --resume, and compare model.npz bit for bit with an uninterrupted
run. Exact stopping points use the test-only FASTCNN_TEST_STOP_AT hook; SIGKILL is sent
from outside once the checkpoint shows the wanted position.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numba
import numpy as np
import pytest

import fastcnn as fc
from fastcnn import checkpoint as ckpt
from fastcnn import fileio, train
from fastcnn.data import load_dataset

BASE = ["--dataset", "sample", "--limit", "640", "--batch-size", "32", "--epochs", "2",
        "--quiet"]
RUN = [*BASE, "--checkpoint-every", "3"]
STEPS = 20  # batches per epoch: 640 / 32
TWO_THREADS = min(2, numba.config.NUMBA_NUM_THREADS)
# Per-epoch results that must repeat exactly (timings need not).
SAME_METRICS = ("train_loss", "test_loss_per_epoch", "test_accuracy_per_epoch",
                "macro_f1_per_epoch", "test_accuracy", "macro_f1", "test_loss")


def train_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "fastcnn.train", *args]


def run_train(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(train_cmd(*args), capture_output=True, text=True, timeout=120,
                          env={**os.environ, **(env or {})})


def progress(directory: Path) -> dict:
    with np.load(ckpt.checkpoint_path(directory), allow_pickle=False) as f:
        return json.loads(str(f["__progress__"]))


def assert_same_run(out: Path, reference: dict) -> None:
    with np.load(out / "model.npz", allow_pickle=False) as f:
        weights = {k: f[k] for k in f.files}
    assert weights.keys() == reference["weights"].keys()
    for key, a in reference["weights"].items():
        assert weights[key].dtype == a.dtype
        assert np.array_equal(weights[key], a), f"{key} differs from the uninterrupted run"
    metrics = json.loads((out / "metrics.json").read_text())
    for key in SAME_METRICS:
        assert metrics[key] == reference["metrics"][key], key


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The uninterrupted run, without checkpoints and with two threads: every resumed run
    (one thread) must match it bit for bit."""
    out = tmp_path_factory.mktemp("reference")
    proc = run_train(*BASE, "--threads", str(TWO_THREADS), "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    with np.load(out / "model.npz", allow_pickle=False) as f:
        weights = {k: f[k] for k in f.files}
    return {"weights": weights, "metrics": json.loads((out / "metrics.json").read_text())}


@pytest.mark.parametrize("stop_at,expect", [
    ("1:7:INT", (0, 7)),    # during the first epoch, between two periodic checkpoints
    ("2:0:INT", (1, 0)),    # between epochs, after the first epoch's validation
    ("2:11:TERM", (1, 11)),  # during the last epoch
])
def test_signal_then_resume_is_bit_identical(stop_at, expect, reference, tmp_path):
    ck, out = tmp_path / "ck", tmp_path / "out"
    proc = run_train(*RUN, "--threads", "1", "--checkpoint-dir", str(ck), "--out", str(out),
                     env={"FASTCNN_TEST_STOP_AT": stop_at})
    code = 143 if stop_at.endswith("TERM") else 130
    assert proc.returncode == code, proc.stderr
    err = proc.stderr.strip()
    assert "\n" not in err and "Traceback" not in err
    assert err.startswith(f"interrupted by SIG{stop_at.split(':')[2]} ")
    assert f"resume with: python -m fastcnn.train --resume {ck}" in err
    p = progress(ck)
    assert (p["epoch"], p["batch"]) == expect and p["iterations"] == expect[0] * STEPS + expect[1]
    assert not (out / "model.npz").exists()

    proc = run_train("--resume", str(ck))  # every setting comes from the checkpoint
    assert proc.returncode == 0, proc.stderr
    assert f"resuming from {ck / 'checkpoint.npz'}" in proc.stdout
    assert_same_run(out, reference)
    assert progress(ck)["epoch"] == 2  # the final checkpoint marks the run complete


def test_interrupted_twice_and_resumed_twice(reference, tmp_path):
    ck, out = tmp_path / "ck", tmp_path / "out"
    args = [*RUN, "--threads", "1", "--checkpoint-dir", str(ck), "--out", str(out)]
    assert run_train(*args, env={"FASTCNN_TEST_STOP_AT": "1:19"}).returncode == 130
    proc = run_train("--resume", str(ck), env={"FASTCNN_TEST_STOP_AT": "2:4:TERM"})
    assert proc.returncode == 143, proc.stderr
    assert (progress(ck)["epoch"], progress(ck)["batch"]) == (1, 4)
    proc = run_train("--resume", str(ck), "--threads", str(TWO_THREADS))
    assert proc.returncode == 0, proc.stderr
    assert_same_run(out, reference)


def kill_when(ck: Path, out: Path, ready, env: dict, timeout: float = 60) -> dict:
    """Start a run, SIGKILL it from outside once its checkpoint's progress satisfies
    `ready`, and return the progress of the checkpoint it left behind."""
    proc = subprocess.Popen(
        train_cmd(*RUN, "--threads", "1", "--checkpoint-dir", str(ck), "--out", str(out)),
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env={**os.environ, **env})
    deadline = time.monotonic() + timeout
    try:
        while True:
            assert proc.poll() is None, f"finished before the kill: {proc.stderr.read()}"
            assert time.monotonic() < deadline, "no checkpoint in time"
            if ckpt.checkpoint_path(ck).exists() and ready(progress(ck)):
                break
            time.sleep(0.005)
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=30) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stderr.close()
    return progress(ck)


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
@pytest.mark.parametrize("ready,env", [
    # Anywhere after the third periodic checkpoint of epoch 1: mid-batch, mid-write...
    pytest.param(lambda p: p["iterations"] >= 9, {"FASTCNN_TEST_BATCH_DELAY": "0.04"},
                 id="during-epoch"),
    # The trainer writes the end-of-epoch-1 checkpoint and waits there to be killed.
    pytest.param(lambda p: (p["epoch"], p["batch"]) == (1, 0),
                 {"FASTCNN_TEST_STOP_AT": "2:0:PAUSE"}, id="between-epochs"),
])
def test_external_sigkill_then_resume(ready, env, reference, tmp_path):
    ck, out = tmp_path / "ck", tmp_path / "out"
    p = kill_when(ck, out, ready, env)
    # Whatever the kill interrupted, the file on disk is a whole checkpoint at a boundary.
    assert p["batch"] == 0 or p["iterations"] % 3 == 0
    proc = run_train("--resume", str(ck))
    assert proc.returncode == 0, proc.stderr
    assert_same_run(out, reference)
    assert not list(ck.glob(".*.tmp")), "a killed writer's temporary file was not cleaned up"


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
def test_sigkill_before_the_epoch_end_checkpoint(reference, tmp_path):
    """Killed after the last batch of epoch 1, before its checkpoint and validation: the
    resumed run redoes batches 19-20 from the periodic checkpoint after batch 18."""
    ck, out = tmp_path / "ck", tmp_path / "out"
    proc = run_train(*RUN, "--threads", "1", "--checkpoint-dir", str(ck), "--out", str(out),
                     env={"FASTCNN_TEST_STOP_AT": "1:20:KILL"})
    assert proc.returncode == -signal.SIGKILL
    assert (progress(ck)["epoch"], progress(ck)["batch"]) == (0, 18)
    assert run_train("--resume", str(ck)).returncode == 0
    assert_same_run(out, reference)


# -- the CLI refuses what it cannot resume exactly --------------------------------------
@pytest.fixture(scope="module")
def stopped_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A checkpoint dir of a run interrupted at epoch 1, batch 7 (in-process)."""
    ck = tmp_path_factory.mktemp("stopped") / "ck"
    os.environ["FASTCNN_TEST_STOP_AT"] = "1:7"
    try:
        code = train.main([*RUN, "--threads", "1", "--checkpoint-dir", str(ck)])
    finally:
        del os.environ["FASTCNN_TEST_STOP_AT"]
    assert code == 130
    return ck


@pytest.mark.parametrize("args,message", [
    (["--batch-size", "64"], "batch_size 32 there, 64 here"),
    (["--seed", "1"], "seed 0 there, 1 here"),
    (["--limit", "320"], "limit 640 there, 320 here"),
    (["--optimizer", "sgd"], "optimizer 'adam' there, 'sgd' here"),
    (["--lr", "0.01"], "lr 0.002 there, 0.01 here"),
    (["--epochs", "3", "--schedule", "step"], "epochs 2 there, 3 here; schedule"),
    (["--dataset", "fashion-mnist"], "dataset 'sample' there, 'fashion-mnist' here"),
    (["--backend", "numpy"], "backend 'numba' there, 'numpy' here"),
])
def test_resume_refuses_other_settings(stopped_run, args, message, capsys):
    assert train.main(["--resume", str(stopped_run), *args]) == 2
    err = capsys.readouterr().err
    assert message in err and "other settings" in err and err.count("\n") == 1


def test_resume_refuses_other_architecture_and_data(stopped_run, tmp_path, capsys):
    with np.load(ckpt.checkpoint_path(stopped_run), allow_pickle=False) as f:
        arrays = {k: f[k] for k in f.files}
    config = json.loads(str(arrays["__config__"]))
    config["layers"][0]["config"]["kernel_initializer"] = "glorot_normal"
    (tmp_path / "arch").mkdir()
    (tmp_path / "data").mkdir()
    np.savez(ckpt.checkpoint_path(tmp_path / "arch"),
             **{**arrays, "__config__": np.array(json.dumps(config))})
    assert train.main(["--resume", str(tmp_path / "arch")]) == 2
    assert "architecture is not SEED-ARCH" in capsys.readouterr().err
    settings = {**json.loads(str(arrays["__settings__"])), "train_sha256": "0" * 64}
    np.savez(ckpt.checkpoint_path(tmp_path / "data"),
             **{**arrays, "__settings__": np.array(json.dumps(settings))})
    assert train.main(["--resume", str(tmp_path / "data")]) == 2
    assert "training data differ from the checkpoint's" in capsys.readouterr().err


def test_resume_reads_checkpoints_from_before_the_model_setting(stopped_run, tmp_path):
    """Checkpoints written before --model existed record no model: they ran SEED-ARCH."""
    with np.load(ckpt.checkpoint_path(stopped_run), allow_pickle=False) as f:
        arrays = {k: f[k] for k in f.files}
    settings = json.loads(str(arrays["__settings__"]))
    assert settings["model"] == "seed_arch" and settings["model_config"] is None
    old = {k: v for k, v in settings.items() if k not in ("model", "model_config")}
    (tmp_path / "old").mkdir()
    np.savez(ckpt.checkpoint_path(tmp_path / "old"),
             **{**arrays, "__settings__": np.array(json.dumps(old))})
    assert train.main(["--resume", str(tmp_path / "old"), "--model", "lenet5"]) == 2
    assert train.main(["--resume", str(tmp_path / "old")]) == 0


def test_interrupt_without_checkpoint_dir_says_nothing_was_saved(monkeypatch, capsys):
    monkeypatch.setenv("FASTCNN_TEST_STOP_AT", "1:2:TERM")
    assert train.main([*BASE, "--threads", "1", "--limit", "128"]) == 143
    err = capsys.readouterr().err
    assert err == ("interrupted by SIGTERM at epoch 1/2, batch 2/4: nothing saved (run with "
                   "--checkpoint-dir DIR to be able to resume)\n")


def test_checkpoint_dir_problems_exit_2(stopped_run, tmp_path, capsys):
    # A fresh run would overwrite a checkpoint it did not write.
    assert train.main([*RUN, "--checkpoint-dir", str(stopped_run)]) == 2
    assert "already exists; continue that run with --resume" in capsys.readouterr().err
    assert train.main(["--resume", str(tmp_path / "nothing")]) == 2
    assert "no checkpoint to resume from" in capsys.readouterr().err
    bad = tmp_path / "bad"
    bad.mkdir()
    data = ckpt.checkpoint_path(stopped_run).read_bytes()
    ckpt.checkpoint_path(bad).write_bytes(data[: len(data) // 2])
    assert train.main(["--resume", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "cannot resume" in err and "not a .npz file" in err and err.count("\n") == 1
    assert train.main([*RUN, "--checkpoint-every", "0", "--checkpoint-dir", str(bad)]) == 2
    assert train.main(["--dataset", "sample", "--checkpoint-every", "2"]) == 2
    assert "needs --checkpoint-dir" in capsys.readouterr().err


def test_divergence_keeps_last_good_checkpoint(tmp_path):
    ck = tmp_path / "ck"
    # Plain SGD at lr 1e6 overflows on the 3rd batch (so do 1e7 and 1e8: it is not on the
    # edge); a checkpoint is written after each.
    proc = run_train(*BASE, "--threads", "1", "--optimizer", "sgd", "--lr", "1e6",
                     "--schedule", "constant", "--checkpoint-every", "1",
                     "--checkpoint-dir", str(ck))
    assert proc.returncode == 1
    err = proc.stderr
    assert err.count("\n") == 1 and "Traceback" not in err
    assert "at epoch 1, batch 3/20" in err and "lower learning rate" in err
    assert f"last good checkpoint (at epoch 1/2, batch 2/20) is kept in {ck}" in err
    saved = ckpt.load_checkpoint(ckpt.checkpoint_path(ck))  # refuses non-finite weights
    assert (saved.state.epoch, saved.state.batch, saved.iterations) == (0, 2, 2)


# -- in-process: fit's resume hook, threads and seeds -----------------------------------
@pytest.fixture(scope="module")
def small():
    (x, y), (xt, yt) = load_dataset("sample", "train", limit=192), load_dataset("sample", "test")
    return x, y, xt[:100], yt[:100]


def strided_model(seed: int) -> fc.Sequential:
    """Exercises the other kernels: strided conv, overlapping pooling, float64."""
    return fc.Sequential([
        fc.Conv2D(4, 3, stride=2, padding=1, activation="relu"),
        fc.MaxPool2D(3, stride=2),
        fc.Conv2D(5, (2, 3), padding="same"),
        fc.ReLU(),
        fc.Flatten(),
        fc.Dense(10),
    ], input_shape=(1, 28, 28), seed=seed, dtype=np.float64)


class Noise(fc.Layer):
    """Draws from the model's generator in training, as Dropout will, and keeps a buffer,
    as BatchNorm's running statistics will: adds 0.1 * N(0, 1) noise and counts passes."""

    def build(self, input_shape, rng, dtype=np.float32):
        out = super().build(input_shape, rng, dtype)
        self.buffers = {"passes": np.zeros(1, dtype=dtype)}
        return out

    def forward(self, x, training=True, rng=None):
        self._check_input(x)
        if not training:
            return x
        self.buffers["passes"] += 1
        self._batch = len(x)
        return x + (0.1 * rng.standard_normal(x.shape)).astype(x.dtype)

    def backward(self, dy, need_input_grad=True):
        self._check_dy(dy)
        return dy


def noisy_model(seed: int) -> fc.Sequential:
    return fc.Sequential([
        fc.Conv2D(4, 3, padding="same", activation="relu"),
        Noise(),
        fc.MaxPool2D(2),
        fc.Flatten(),
        fc.Dense(10),
    ], input_shape=(1, 28, 28), seed=seed)


def dropout_model(seed: int) -> fc.Sequential:
    return fc.Sequential([
        fc.Conv2D(4, 3, padding="same", activation="relu"),
        fc.Dropout(0.3),
        fc.AvgPool2D(2),
        fc.GlobalAvgPool2D(),
        fc.Dense(10),
    ], input_shape=(1, 28, 28), seed=seed)


def batchnorm_model(seed: int) -> fc.Sequential:
    return fc.Sequential([
        fc.Conv2D(4, 3, padding="same"), fc.BatchNorm2D(), fc.ReLU(), fc.MaxPool2D(2),
        fc.Dropout(0.2), fc.Flatten(), fc.Dense(12), fc.BatchNorm1D(), fc.ReLU(),
        fc.Dense(10),
    ], input_shape=(1, 28, 28), seed=seed)


def fit(model, data, optimizer, **kwargs) -> fc.History:
    x, y, xt, yt = data
    return model.fit(x, y, epochs=2, batch_size=32, optimizer=optimizer,
                     validation_data=(xt, yt), seed=3, verbose=False, **kwargs)


def same_history(a: fc.History, b: fc.History) -> bool:
    return all(getattr(a, k) == getattr(b, k) for k in
               ("loss", "batch_loss", "val_loss", "val_accuracy", "val_macro_f1"))


@pytest.mark.parametrize("make_model,make_opt,fit_kwargs", [
    (fc.seed_arch, lambda: fc.SGD(fc.CosineDecay(0.05, 12), momentum=0.9, nesterov=True), {}),
    (strided_model, lambda: fc.Adam(fc.StepDecay(0.01, 5)), {}),
    (noisy_model, lambda: fc.SGD(0.05, momentum=0.9), {}),
    (dropout_model, lambda: fc.Adam(0.01), {}),
    (batchnorm_model, lambda: fc.AdamW(0.01, weight_decay=0.01), {}),
    (dropout_model, lambda: fc.Adam(0.01), {"augment": fc.Augmentation(shift=3)}),
], ids=["seed-arch-sgd", "strided-f64-adam", "random-layer-with-buffer", "dropout",
        "batchnorm-adamw", "augment-dropout"])
def test_fit_stop_and_resume_is_bit_identical(make_model, make_opt, fit_kwargs, small):
    full = make_model(0)
    history = fit(full, small, make_opt(), **fit_kwargs)
    for stop in [(0, 1), (0, 5), (1, 0), (1, 3), (2, 0)]:
        model, opt = make_model(0), make_opt()
        seen: list[fc.model.FitState] = []

        def hook(state, stop=stop, seen=seen):
            if (state.epoch, state.batch) == stop:
                seen.append(state)
                return True
            return None

        fit(model, small, opt, on_progress=hook, **fit_kwargs)
        # Resume in a fresh model and optimizer, as a new process would.
        resumed, opt2 = make_model(99), make_opt()
        resumed.load_state_arrays({k: v.copy() for k, v in model.state_arrays().items()})
        opt2.load_state({k: v.copy() for k, v in opt.state().items()}, opt.iterations,
                        resumed.parameters())
        h2 = fit(resumed, small, opt2, initial_state=seen[0], **fit_kwargs)
        for a, b in zip(full.state_arrays().values(), resumed.state_arrays().values(),
                        strict=True):
            assert np.array_equal(a, b), stop
        assert same_history(history, h2), stop


def test_fit_refuses_inconsistent_initial_state(small):
    model, opt = fc.seed_arch(0), fc.Adam(0.001)
    states = []
    fit(model, small, opt, on_progress=lambda s: states.append(s) or len(states) == 2)
    with pytest.raises(ValueError, match="restore it with load_state"):
        fit(fc.seed_arch(0), small, fc.Adam(0.001), initial_state=states[-1])
    x, y, xt, yt = small
    with pytest.raises(ValueError, match="batches per epoch"):
        model.fit(x, y, epochs=2, batch_size=16, optimizer=opt, validation_data=(xt, yt),
                  verbose=False, initial_state=states[-1])


@pytest.mark.skipif(TWO_THREADS < 2, reason="needs two Numba threads")
@pytest.mark.parametrize("make_model", [fc.seed_arch, strided_model, batchnorm_model],
                         ids=["seed-arch", "strided", "batchnorm"])
def test_same_seed_same_bits_with_one_or_two_threads(make_model, small, restore_threads):
    runs = []
    for threads in (1, 2, 2):
        fc.set_threads(threads)
        model = make_model(0)
        history = fit(model, small, fc.SGD(0.05, momentum=0.9))
        runs.append((model.parameters(), history, model.predict(small[2])))
    for params, history, probs in runs[1:]:
        for a, b in zip(runs[0][0], params, strict=True):
            assert np.array_equal(a, b)
        assert same_history(runs[0][1], history)
        assert np.array_equal(runs[0][2], probs)


# -- safe files ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def model_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("model") / "model.npz"
    fc.seed_arch(0).save(path)
    return path


def test_truncated_model_is_refused(model_file, tmp_path):
    data = model_file.read_bytes()
    for size in (len(data) // 2, len(data) - 1, 100, 0):
        cut = tmp_path / f"cut{size}.npz"
        cut.write_bytes(data[:size])
        with pytest.raises(ValueError, match="not a .npz file"):
            fc.load_model(cut)


def test_model_and_checkpoint_formats_are_not_interchangeable(model_file, stopped_run):
    with pytest.raises(ValueError, match="not a fastcnn-checkpoint file"):
        ckpt.load_checkpoint(model_file)
    with pytest.raises(ValueError, match="not a fastcnn-model file"):
        fc.load_model(ckpt.checkpoint_path(stopped_run))


def rewrite(path: Path, dest: Path, **changes) -> Path:
    with np.load(path, allow_pickle=False) as f:
        arrays = {k: f[k] for k in f.files}
    for key, value in changes.items():
        key = key.replace("__dot__", ".")
        if value is None:
            del arrays[key]
        else:
            arrays[key] = value
    np.savez(dest, **arrays)
    return dest


@pytest.mark.parametrize("changes,message", [
    ({"__version__": np.array(2)}, "format version 2"),
    ({"__version__": np.array([1, 1])}, "without a valid format version"),
    ({"__progress__": None}, "missing or malformed __progress__"),
    ({"__progress__": np.array("{not json")}, "not valid JSON"),
    ({"__progress__": np.array('{"epoch": -1}')}, "'epoch' must be an int >= 0"),
    ({"history__dot__loss": np.zeros((2, 2))}, "history.loss must be a 1-d float64"),
    ({"0__dot__weight": None}, "missing weight arrays"),
    ({"0__dot__weight": np.zeros((6, 1, 3, 3), np.float32)}, "0.weight"),
    ({"0__dot__bias": np.full(6, np.nan, np.float32)}, "NaN or infinite"),
    ({"__config__": np.array("[" * 100000)}, "bad model configuration"),
    ({"__format__": np.array(["fastcnn-checkpoint"], dtype=object)}, "not a readable"),
])
def test_bad_checkpoints_are_refused(stopped_run, tmp_path, changes, message):
    bad = rewrite(ckpt.checkpoint_path(stopped_run), tmp_path / "bad.npz", **changes)
    with pytest.raises(ValueError, match=message):
        ckpt.load_checkpoint(bad)


def test_bad_optimizer_state_in_checkpoint_is_refused(stopped_run, tmp_path, capsys):
    (tmp_path / "ck").mkdir()
    rewrite(ckpt.checkpoint_path(stopped_run), ckpt.checkpoint_path(tmp_path / "ck"),
            **{"optimizer.m.0": np.zeros(3, np.float32)})
    assert train.main(["--resume", str(tmp_path / "ck")]) == 2
    assert "optimizer state m.0 is float32[3]" in capsys.readouterr().err


def failing_savez(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make np.savez write part of its output and then fail, like a full disk."""
    def savez(file, *args, **kwargs):
        file.write(b"PK\x03\x04 half a zip file")
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(fileio.np, "savez", savez)


def test_failed_save_keeps_the_old_file(model_file, tmp_path, monkeypatch):
    path = tmp_path / "model.npz"
    path.write_bytes(model_file.read_bytes())
    failing_savez(monkeypatch)
    with pytest.raises(OSError, match="No space left"):
        fc.seed_arch(1).save(path)
    assert path.read_bytes() == model_file.read_bytes()
    assert [p.name for p in tmp_path.iterdir()] == ["model.npz"], "temporary file left behind"


def test_failed_checkpoint_keeps_the_old_one(stopped_run, tmp_path, monkeypatch):
    path = ckpt.checkpoint_path(tmp_path)
    path.write_bytes(ckpt.checkpoint_path(stopped_run).read_bytes())
    saved = ckpt.load_checkpoint(path)
    opt = fc.Adam(0.001)
    opt.load_state(saved.optimizer_state, saved.iterations, saved.model.parameters())
    failing_savez(monkeypatch)
    with pytest.raises(OSError):
        ckpt.save_checkpoint(path, saved.model, opt, saved.state, saved.settings)
    assert path.read_bytes() == ckpt.checkpoint_path(stopped_run).read_bytes()
    assert [p.name for p in tmp_path.iterdir()] == [ckpt.FILENAME]
    monkeypatch.undo()
    saved.model.parameters()[0][0, 0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="refusing to checkpoint NaN"):
        ckpt.save_checkpoint(path, saved.model, opt, saved.state, saved.settings)
    assert path.read_bytes() == ckpt.checkpoint_path(stopped_run).read_bytes()


def test_random_layers_draw_from_the_fit_seed_and_buffers_are_not_optimised(small):
    x, y, xt, yt = small
    runs = []
    for seed in (3, 3, 4):
        model = noisy_model(0)
        before = {k: v.copy() for k, v in model.state_arrays().items()}
        model.fit(x, y, epochs=1, batch_size=32, optimizer=fc.SGD(0.05), seed=seed,
                  verbose=False)
        runs.append(model)
        steps = -(-len(x) // 32)
        assert model.layers[1].buffers["passes"][0] == steps  # counted, never stepped
        assert "1.passes" in model.state_arrays() and len(model.parameters()) == 4
        assert not np.array_equal(before["0.weight"], model.state_arrays()["0.weight"])
    # The same seed draws the same noise; another seed other noise (and data order).
    assert np.array_equal(runs[0].parameters()[0], runs[1].parameters()[0])
    assert not np.array_equal(runs[0].parameters()[0], runs[2].parameters()[0])


def test_checkpoint_carries_the_layers_generator(small, tmp_path, monkeypatch):
    from fastcnn import layers
    from fastcnn.checkpoint import load_checkpoint, save_checkpoint

    monkeypatch.setitem(layers.LAYERS, "Noise", Noise)
    model, opt = noisy_model(0), fc.SGD(0.05)
    states = []
    fit(model, small, opt, on_progress=lambda s: states.append(s) or len(states) == 3)
    state = states[-1]
    assert state.layer_rng_state is not None
    save_checkpoint(tmp_path / "c.npz", model, opt, state, {})
    loaded = load_checkpoint(tmp_path / "c.npz")
    assert loaded.state.layer_rng_state == state.layer_rng_state
    assert np.array_equal(loaded.model.layers[1].buffers["passes"],
                          model.layers[1].buffers["passes"])


def test_set_threads_leaves_malloc_alone_when_asked(monkeypatch, restore_threads):
    from fastcnn import threads

    calls = []
    monkeypatch.setattr(threads, "keep_freed_memory", lambda: calls.append("malloc"))
    assert threads.set_threads(1, keep_memory=False) == 1 and calls == []
    threads.set_threads(1)
    assert calls == ["malloc"]
