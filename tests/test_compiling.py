"""The first-use compile is announced and counted; python -m fastcnn.compile caches it all."""

import json
import os
import subprocess
import sys

import numba
import numpy as np
import pytest

import fastcnn as fc
from fastcnn import compile as compile_command
from fastcnn import compiling
from fastcnn.compiling import compile_progress


def _kernel(name):
    """A fresh, uncached jitted function that reads as one of fastcnn's kernels, calling a
    jitted helper of the same module."""
    namespace = {"__name__": "fastcnn.kernels.probe", "numba": numba}
    exec(f"@numba.njit\ndef helper(x):\n    return x + 1\n\n"
         f"def {name}(x):\n    return helper(x) * 2\n", namespace)
    return numba.njit(namespace[name])


@pytest.mark.parametrize("quiet", [False, True])
def test_a_compile_is_announced_once_and_counted(capsys, quiet):
    first, second = _kernel("first"), _kernel("second")
    with compile_progress(quiet=quiet) as log:
        assert first(1) == 4 and second(2) == 6
    err = capsys.readouterr().err
    assert err.startswith("fastcnn: compiling its kernels for this CPU, once")
    assert err.count("fastcnn: compiling its kernels") == 1 and "cache" in err
    assert "compiled 2 kernels" in err
    assert ("compiling:" in err) == (not quiet)  # the bar
    # The helper compiled inside a kernel is not a kernel of its own.
    assert [name for name, _, _ in log.kernels] == ["probe.first", "probe.second"]
    assert all(seconds > 0 for _, _, seconds in log.kernels)
    assert log.table()[0]["types"] == "int64"


def test_nothing_is_said_when_nothing_compiles(capsys):
    kernel = _kernel("warm")
    kernel(1)
    capsys.readouterr()
    with compile_progress() as log:
        kernel(3)
    assert capsys.readouterr().err == "" and log.kernels == []


def test_compile_command_compiles_then_finds_everything_cached(tmp_path, capsys):
    out = tmp_path / "compile.json"
    assert compile_command.main(["--quiet", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["seconds"] > 0 and isinstance(report["kernels"], list)
    printed = capsys.readouterr().out
    assert printed.startswith("fastcnn: ") and "cache" in printed
    # Everything it runs is now compiled in this process: a second run compiles nothing.
    assert compile_command.main(["--quiet"]) == 0
    assert capsys.readouterr().out.startswith("fastcnn: every kernel was already compiled")


def test_a_fresh_cache_is_compiled_in_two_processes_and_then_loads(tmp_path):
    """Into an empty cache, fastcnn.compile's two parts compile in worker processes: this
    process then loads every kernel they cached and compiles none itself."""
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path / "cache")}
    command = [sys.executable, "-m", "fastcnn.compile", "--quiet", "--processes", "2"]
    cold = subprocess.run([*command, "--json", str(tmp_path / "c.json")], capture_output=True,
                          text=True, env=env, timeout=900)
    assert cold.returncode == 0, cold.stderr
    report = json.loads((tmp_path / "c.json").read_text())
    assert report["processes"] == 2 and report["compiled_in_main_process"] == []
    # (name, float64): a float32 kernel's weight-gradient parts are float64 arrays.
    kernels = {(row["kernel"], "float32" not in row["types"]) for row in report["kernels"]}
    assert {("conv.flat._backward_s1_task", False), ("conv.flat._backward_s1_task", True),
            ("dense._weight_grad_task", False), ("compat.softmax_forward", True)} <= kernels
    # One announcement: the workers are silent.
    assert cold.stderr.count("fastcnn: compiling its kernels") == 1
    warm = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert warm.returncode == 0 and warm.stderr == ""
    assert warm.stdout.startswith("fastcnn: every kernel was already compiled")


def test_compile_rejects_zero_processes(capsys):
    assert compile_command.main(["--processes", "0"]) == 2
    assert "--processes must be at least 1" in capsys.readouterr().err


def _train_cold(tmp_path, *args):
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path / "cache")}
    return subprocess.run([sys.executable, "-m", "fastcnn.train", *args], capture_output=True,
                          text=True, env=env, timeout=900)


def test_a_cold_training_run_compiles_beside_and_trains_bit_identically(tmp_path):
    """On an empty cache, train hands the backward kernels to a second process and loads
    them from the cache: the model is the one a warm run trains."""
    metrics = []
    for name in ("cold", "warm"):
        proc = _train_cold(tmp_path, "--dataset", "sample", "--epochs", "1", "--limit", "640",
                           "--quiet", "--out", str(tmp_path / name), "--metrics-json",
                           str(tmp_path / f"{name}.json"))
        assert proc.returncode == 0, proc.stderr
        metrics.append(json.loads((tmp_path / f"{name}.json").read_text()))
    cold, warm = metrics
    beside = cold["compiled_in_second_process"]
    assert {"conv.flat._backward_s1_task", "dense._weight_grad_task"} <= set(beside)
    assert "conv.flat._forward_s1_task" not in beside
    kernels = [row["kernel"] for row in cold["compiled_kernels"]]
    # Compiled once, in the second process: this one loaded them from the cache.
    assert kernels.count("conv.flat._backward_s1_task") == 1
    assert kernels.count("dense._weight_grad_task") == 1 and "conv.flat._forward_s1_task" in kernels
    assert warm["compiled_kernels"] == [] and warm["compiled_in_second_process"] == []
    with np.load(tmp_path / "cold" / "model.npz") as a, \
            np.load(tmp_path / "warm" / "model.npz") as b:
        assert a.files == b.files
        for key in a.files:
            np.testing.assert_array_equal(a[key], b[key])


_NOTEBOOK_TRAIN = """
import json, numpy as np
from fastcnn.compat import SimpleCNN, ConvLayer, ReLU, MaxPool, FeedForward, Softmax
from fastcnn.compiling import compile_progress
np.random.seed(0)
model = SimpleCNN(ConvLayer(input_shape=(1, 28, 28), kernel_size=5, num_kernels=6, padding=0),
                  ReLU(), ConvLayer(input_shape=(6, 28, 28), kernel_size=5, num_kernels=6,
                  padding=0), ReLU(), MaxPool(), FeedForward(6 * 14 * 14, 100), ReLU(),
                  Softmax(100, 10))
images = np.random.randint(0, 256, (12, 28, 28)).astype(np.uint8)
with compile_progress(quiet=True) as log:
    model.train(images, np.arange(12) % 10, None, None, epochs=1)
print(json.dumps({"compiled": [name for name, _, _ in log.kernels],
                  "kernels": model.ConvLayer_1.kernels.tolist()}))
"""


def test_the_drop_in_compiles_its_conv_backward_beside_on_a_cold_cache(tmp_path):
    """The notebook's train on an empty cache: its first forward pass compiles here while
    a second process compiles the convolution's backward kernel, which this process then
    loads; the weights are a warm run's, bit for bit."""
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path / "cache")}
    runs = []
    for _ in ("cold", "warm"):
        proc = subprocess.run([sys.executable, "-c", _NOTEBOOK_TRAIN], capture_output=True,
                              text=True, env=env, timeout=900)
        assert proc.returncode == 0, proc.stderr
        runs.append(json.loads(proc.stdout.splitlines()[-1]))
    cold, warm = runs
    assert "conv.flat._forward_s1_task" in cold["compiled"]
    assert "conv.flat._backward_s1_task" not in cold["compiled"]  # loaded: compiled beside
    assert list((tmp_path / "cache").rglob("*_backward_s1_task*.nbi"))
    assert warm["compiled"] == [] and cold["kernels"] == warm["kernels"]


def test_no_helper_process_where_none_can_start(monkeypatch):
    import fastcnn.compiling as compiling

    monkeypatch.setattr(compiling, "cache_is_cold", lambda: True)
    monkeypatch.setattr(compiling, "cache_is_writable", lambda: True)
    monkeypatch.setattr(compiling.sys, "executable", "/nonexistent/python")
    assert compiling.compile_beside("float32", ("conv",)) is None


def test_usable_cpus_where_the_os_has_no_affinity(monkeypatch):
    import fastcnn.compiling as compiling

    assert compiling.usable_cpus() >= 1
    monkeypatch.delattr(compiling.os, "sched_getaffinity", raising=False)  # macOS, Windows
    monkeypatch.setattr(compiling.os, "cpu_count", lambda: 3)
    assert compiling.usable_cpus() == 3


def test_a_failing_cold_run_does_not_wait_for_the_second_process(tmp_path):
    proc = _train_cold(tmp_path, "--data-dir", str(tmp_path / "missing"), "--epochs", "1")
    assert proc.returncode == 2 and "does not exist" in proc.stderr
    # The helper was stopped with the run, long before it could cache the kernel.
    assert (tmp_path / "cache").exists()
    assert not list((tmp_path / "cache").rglob("*_backward_s1_task*.nbc"))


def _run(*args):
    return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True,
                          timeout=300)


def test_python_m_fastcnn_lists_the_commands():
    proc = _run("fastcnn")
    assert proc.returncode == 0
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("fastcnn 0.") and "Numba" in lines[0]
    for command in ("train", "evaluate", "predict", "compile"):
        assert any(line.split()[:1] == [command] for line in lines), command
    assert _run("fastcnn", "nonsense").returncode == 2


@pytest.mark.parametrize("command", ["fastcnn", "fastcnn.train", "fastcnn.evaluate",
                                     "fastcnn.predict", "fastcnn.compile"])
def test_every_command_has_version(command):
    proc = _run(command, "--version")
    assert proc.returncode == 0 and proc.stdout.strip().startswith("fastcnn 0.")


def test_a_fresh_cache_is_announced_before_anything_else(tmp_path):
    code = "from fastcnn.compiling import announce_if_cold; print(announce_if_cold())"
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path / "empty")}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=env, timeout=120)
    assert proc.stdout.strip() == "True"
    assert proc.stderr.startswith("fastcnn: compiling its kernels for this CPU, once")
    assert str(tmp_path / "empty") in proc.stderr
    # Where the convolution's kernels are cached, nothing is said up front.
    from fastcnn.kernels import conv

    x = np.zeros((9, 1, 6, 6), np.float32)
    w = np.zeros((1, 1, 3, 3), np.float32)
    conv.conv2d_backward(x, w, x, x, True, 1, 1, 1, 1, True)  # compiles and caches it
    warm = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert warm.stdout.strip() == "False" and warm.stderr == ""


def test_the_second_process_compiles_the_backward_kernels_the_model_runs():
    """The matrix path's backward kernel goes to the second process only for a model with
    a convolution on it; its tiny stand-in takes that path (a signature, not a shape)."""
    from fastcnn.kernels.conv import gemm

    seed = fc.Sequential([fc.Conv2D(6, 5, padding="same", activation="relu"), fc.Flatten(),
                          fc.Dense(10)], input_shape=(1, 28, 28))
    deep = fc.Sequential([fc.Conv2D(32, 3, padding="same", activation="relu"),
                          fc.Conv2D(64, 3, padding="same", activation="relu"), fc.Flatten(),
                          fc.Dense(10)], input_shape=(1, 8, 8))
    assert [layer.algorithm for layer in deep.layers[:2]] == ["flat", "gemm"]
    assert compiling.backward_kernels(seed) == ("conv", "dense")
    assert compiling.backward_kernels(deep) == ("conv", "gemm", "dense")
    only_gemm = fc.Sequential([fc.Conv2D(8, 1, stride=2), fc.Flatten(), fc.Dense(10)],
                              input_shape=(3, 8, 8))
    assert only_gemm.layers[0].algorithm == "gemm"
    assert compiling.backward_kernels(only_gemm) == ("gemm", "dense")
    with compiling.compile_progress(quiet=True):
        compiling.compile_backward("float32", ("gemm",))
    assert any("float32" in str(sig) for sig in gemm.conv2d_backward_gemm.signatures)
