"""Data-parallel training over MPI: per-chunk gradient parts, the batch split, and real
`mpiexec -n K python -m fastcnn.train --distributed` runs that must end with the same
model.npz, bit for bit, as one process (K = 2 and 3, with --threads 1), stop together on a
signal, resume with another K, refuse ranks that disagree and give up on a rank that
hangs or dies.

The MPI runs need the `mpi` extra (mpi4py and an MPI library with mpiexec); CI installs
it. In-process tests use MPI.COMM_SELF.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import fastcnn as fc
from fastcnn import distributed, kernels, naive, reference
from fastcnn.data import load_dataset
from fastcnn.kernels._tuning import GRAD_CHUNK
from fastcnn.models import MODELS

MPI = pytest.importorskip("mpi4py.MPI", reason="the mpi extra (mpi4py, mpich) is not installed")
MPIEXEC = shutil.which("mpiexec", path=str(Path(sys.executable).parent)) or shutil.which(
    "mpiexec")

# 688 sample images in batches of 52 (7 chunks of 8, the last one short): 13 full batches
# and one of 12 (2 chunks), which leaves one of 3 ranks without a sample.
BASE = ["--dataset", "sample", "--limit", "688", "--batch-size", "52", "--epochs", "2",
        "--quiet", "--threads", "1"]
# Strided convolutions, average pooling, and a head with Dropout and BatchNorm1D.
CONFIG = {"input_shape": [1, 28, 28], "dtype": "float32", "input_mean": [0.2860],
          "input_std": [0.3530], "layers": [
              {"class": "Conv2D", "config": {"filters": 8, "kernel_size": [5, 5],
                                             "stride": [2, 2], "padding": "same",
                                             "activation": "relu"}},
              {"class": "Conv2D", "config": {"filters": 16, "kernel_size": [3, 3],
                                             "stride": [1, 1], "padding": "same"}},
              {"class": "ReLU", "config": {}},
              {"class": "AvgPool2D", "config": {"pool_size": [2, 2]}},
              {"class": "Flatten", "config": {}},
              {"class": "Dropout", "config": {"rate": 0.25}},
              {"class": "Dense", "config": {"units": 24}},
              {"class": "BatchNorm1D", "config": {}},
              {"class": "ReLU", "config": {}},
              {"class": "Dense", "config": {"units": 10}}]}
# float64, no head at all (global average pooling gives the 10 class scores), batches of
# 12, fewer than 3 ranks x 8: some rank has no sample at every step.
NO_HEAD = {"input_shape": [1, 28, 28], "dtype": "float64", "input_mean": [0.2860],
           "input_std": [0.3530], "layers": [
               {"class": "Conv2D", "config": {"filters": 6, "kernel_size": [3, 3],
                                              "activation": "relu"}},
               {"class": "MaxPool2D", "config": {"pool_size": [2, 2]}},
               {"class": "Conv2D", "config": {"filters": 10, "kernel_size": [3, 3]}},
               {"class": "GlobalAvgPool2D", "config": {}}]}
# A BatchNorm first: the whole network is the head (the cut is at its first step).
NORM_FIRST = {"input_shape": [1, 28, 28], "dtype": "float32", "input_mean": [0.2860],
              "input_std": [0.3530], "layers": [
                  {"class": "BatchNorm2D", "config": {}},
                  {"class": "Conv2D", "config": {"filters": 4, "kernel_size": [3, 3],
                                                 "stride": [2, 2], "activation": "relu"}},
                  {"class": "Flatten", "config": {}},
                  {"class": "Dense", "config": {"units": 10}}]}


def weights(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as f:
        return {k: f[k] for k in f.files}


def assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for key in wa:
        assert wa[key].dtype == wb[key].dtype
        assert np.array_equal(wa[key], wb[key]), f"{key} differs"


def single(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fastcnn.train", *args], capture_output=True,
                          text=True, timeout=300, env={**os.environ, **(env or {})})


def mpiexec_path() -> str:
    if MPIEXEC is None:
        pytest.fail("mpi4py is installed but mpiexec is not on the PATH")
    return MPIEXEC


def mpiexec(k: int, *args: str, env: dict | None = None,
            timeout: float = 300) -> subprocess.CompletedProcess:
    cmd = [mpiexec_path(), "-n", str(k), sys.executable, "-m", "fastcnn.train", "--distributed",
           *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


# -- the pieces ---------------------------------------------------------------------------
@given(st.integers(1, 300), st.integers(1, 5))
def test_shards_are_whole_chunks_in_order_covering_the_batch(batch, size):
    bounds = [distributed.shard(batch, size, r, GRAD_CHUNK) for r in range(size)]
    assert bounds[0][0] == 0 and bounds[-1][1] == batch
    for (lo, hi), (next_lo, _) in zip(bounds, bounds[1:], strict=False):
        assert lo <= hi == next_lo
        assert lo % GRAD_CHUNK == 0
    chunks = [-(-(hi - lo) // GRAD_CHUNK) for lo, hi in bounds]
    assert sum(chunks) == -(-batch // GRAD_CHUNK)
    assert max(chunks) - min(chunks) <= 1


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("pooled", [False, True])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_gradient_parts_of_a_split_batch_add_up_to_the_kernel_result(stride, pooled, dtype):
    """What distributed training relies on: the parts of two consecutive shares of a batch
    (split at a chunk boundary), stacked and summed, are conv2d_backward's gradients bit
    for bit; and the parts match the NumPy oracle's."""
    rng = np.random.default_rng(stride * 2 + pooled)
    n, c, f, h, w = 21, 3, 5, 12, 11
    x = rng.standard_normal((n, c, h, w)).astype(dtype)
    weight = rng.standard_normal((f, c, 3, 3)).astype(dtype)
    bias = rng.standard_normal(f).astype(dtype)
    oh, ow = -(-h // stride), -(-w // stride)
    geometry = (1, 1, oh, ow)
    if pooled:
        y, idx = kernels.conv2d_pool_forward_with_indices(x, weight, bias, stride, stride,
                                                          *geometry, True, 2, 2)
        dy = rng.standard_normal(y.shape).astype(dtype)
        args = (idx, True, stride, stride, *geometry, 2, 2, True)
        whole = kernels.conv2d_pool_backward(x, weight, dy, y, *args)

        def parts(lo, hi, module=kernels):
            return module.conv2d_pool_backward_parts(x[lo:hi], weight, dy[lo:hi], y[lo:hi],
                                                     idx[lo:hi], *args[1:])
    else:
        y = kernels.conv2d_forward(x, weight, bias, stride, stride, *geometry, True)
        dy = rng.standard_normal(y.shape).astype(dtype)
        whole = kernels.conv2d_backward(x, weight, dy, y, True, stride, stride, 1, 1, True)

        def parts(lo, hi, module=kernels):
            return module.conv2d_backward_parts(x[lo:hi], weight, dy[lo:hi], y[lo:hi], True,
                                                stride, stride, 1, 1, True)
    first, second = parts(0, 2 * GRAD_CHUNK), parts(2 * GRAD_CHUNK, n)
    assert first[1].dtype == np.float64 and first[1].shape[0] == 2
    dx = np.concatenate([first[0], second[0]])
    assert np.array_equal(dx, whole[0])
    for i in (1, 2):
        stacked = np.concatenate([first[i], second[i]])
        summed = kernels.sum_parts(stacked).astype(dtype)
        assert summed.dtype == whole[i].dtype
        assert np.array_equal(summed, whole[i])
        oracle = parts(0, n, reference)[i]
        tol = 1e-4 if dtype == np.float32 else 1e-10
        np.testing.assert_allclose(stacked, oracle, rtol=tol, atol=tol * 10)
        if not pooled and stride == 2:  # the naive loops, on a few chunks (they are slow)
            np.testing.assert_allclose(parts(0, 2 * GRAD_CHUNK, naive)[i], oracle[:2], rtol=1e-10,
                                       atol=1e-9)


def small_model() -> fc.Sequential:
    return fc.Sequential.from_config(CONFIG, seed=0)


def test_fit_over_a_one_rank_communicator_is_fit():
    x, y = load_dataset("sample", "train", limit=200)
    results = []
    for comm in (None, MPI.COMM_SELF):
        model = small_model()
        history = model.fit(x, y, epochs=2, batch_size=36, optimizer=fc.SGD(0.05, momentum=0.9),
                            validation_data=(x[:50], y[:50]), verbose=False,
                            augment=fc.Augmentation(1, True), comm=comm)
        results.append((model.state_arrays(), history))
    (a, ha), (b, hb) = results
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert ha.batch_loss == hb.batch_loss and ha.val_loss == hb.val_loss


def test_a_network_with_batchnorm_among_its_convolutions_is_cut_there():
    model = MODELS["vgg_small"](seed=0)
    dp = distributed.DataParallel(model, MPI.COMM_SELF)
    assert dp.local_layers == model.layers[:1]  # the first Conv2D; a BatchNorm follows
    assert dp.convs == model.layers[:1]


def test_bad_communicator_and_timeout_are_refused():
    model = small_model()
    with pytest.raises(TypeError, match="mpi4py communicator"):
        distributed.DataParallel(model, object())
    with pytest.raises(ValueError, match="timeout"):
        distributed.DataParallel(model, MPI.COMM_SELF, timeout=0)


def test_distributed_without_mpi4py_is_a_one_line_error(tmp_path):
    code = ("import sys; sys.modules['mpi4py'] = None; from fastcnn.train import main; "
            "sys.exit(main(sys.argv[1:]))")
    proc = subprocess.run([sys.executable, "-c", code, "--distributed", *BASE],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0
    assert "--distributed" in proc.stderr and "mpi" in proc.stderr


# -- real MPI runs ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def one_process(tmp_path_factory):
    """The references, each trained by one process: SEED-ARCH; the strided network (with
    a validation split, so the test set is scored once at the end, and early stopping);
    NO_HEAD; NORM_FIRST."""
    root = tmp_path_factory.mktemp("single")
    outs = {}
    configs = {}
    for name, value in (("strided", CONFIG), ("no_head", NO_HEAD), ("norm_first", NORM_FIRST)):
        configs[name] = root / f"{name}.json"
        configs[name].write_text(json.dumps(value))
    outs = {}
    for name, extra in (
            ("seed", []),
            ("strided", ["--model-config", str(configs["strided"]), "--augment", "1",
                         "--val-split", "0.1", "--early-stop", "1"]),
            ("no_head", ["--model-config", str(configs["no_head"]), "--batch-size", "12",
                         "--limit", "300", "--optimizer", "sgd"]),
            ("norm_first", ["--model-config", str(configs["norm_first"]), "--limit", "300"])):
        # Two threads here, one per rank there: the bits depend on neither.
        proc = single(*BASE, *extra, "--threads", "2", "--out", str(root / name))
        assert proc.returncode == 0, proc.stderr
        outs[name] = (root / name, extra)
    return outs


@pytest.mark.parametrize(("network", "ranks"), [
    ("seed", 2), ("seed", 3), ("strided", 2), ("strided", 3), ("no_head", 3),
    ("norm_first", 2)])
def test_mpiexec_run_ends_bit_identical_to_one_process(one_process, tmp_path, ranks, network):
    reference_out, extra = one_process[network]
    proc = mpiexec(ranks, *BASE, *extra, "--out", str(tmp_path / "out"))
    assert proc.returncode == 0, proc.stderr
    assert_same_weights(reference_out / "model.npz", tmp_path / "out" / "model.npz")
    # Rank 0 alone prints: one report per epoch.
    assert proc.stdout.count("epoch 2/2") == 1
    with open(reference_out / "metrics.json") as f, open(tmp_path / "out" / "metrics.json") as g:
        a, b = json.load(f), json.load(g)
    same = [key for key in a if key.endswith("_per_epoch") or key in (
        "train_loss", "test_accuracy", "macro_f1", "test_loss", "best_epoch", "epochs_run")]
    assert len(same) >= 8
    for key in same:
        assert a[key] == b[key], key


def test_signal_on_one_rank_stops_all_then_resumes_with_other_ranks(one_process, tmp_path):
    """SIGINT on the last of 2 ranks, mid-epoch: both stop at the same batch, rank 0
    writes the checkpoint; 3 ranks resume it, and one process resumes it too."""
    ckpt_dir = tmp_path / "ckpt"
    proc = mpiexec(2, *BASE, "--checkpoint-dir", str(ckpt_dir),
                   env={"FASTCNN_TEST_STOP_AT": "1:5:INT"})
    assert proc.returncode != 0
    assert "interrupted by SIGINT at epoch 1/2, batch 5/14" in proc.stderr
    resumed = tmp_path / "resumed"
    shutil.copytree(ckpt_dir, resumed)
    proc = mpiexec(3, "--resume", str(ckpt_dir), "--out", str(tmp_path / "out3"))
    assert proc.returncode == 0, proc.stderr
    assert_same_weights(one_process["seed"][0] / "model.npz", tmp_path / "out3" / "model.npz")
    proc = single("--resume", str(resumed), "--out", str(tmp_path / "out1"))
    assert proc.returncode == 0, proc.stderr
    assert_same_weights(one_process["seed"][0] / "model.npz", tmp_path / "out1" / "model.npz")


def test_sigterm_to_mpiexec_stops_every_rank_at_one_batch_with_one_checkpoint(one_process,
                                                                             tmp_path):
    ckpt_dir = tmp_path / "ckpt"
    cmd = [mpiexec_path(), "-n", "2", sys.executable, "-m", "fastcnn.train", "--distributed", *BASE,
           "--checkpoint-dir", str(ckpt_dir), "--checkpoint-every", "2"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "FASTCNN_TEST_BATCH_DELAY": "0.2"})
    try:
        deadline = time.monotonic() + 120
        while not (ckpt_dir / "checkpoint.npz").exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert err.count("interrupted by SIGTERM") == 1, err
    assert "mpiexec -n 2 python -m fastcnn.train --resume" in err
    with np.load(ckpt_dir / "checkpoint.npz", allow_pickle=False) as f:
        at = json.loads(str(f["__progress__"]))
    assert f"at epoch {at['epoch'] + 1}/2, batch {at['batch']}/14" in err
    proc = single("--resume", str(ckpt_dir), "--out", str(tmp_path / "out"))
    assert proc.returncode == 0, proc.stderr
    assert_same_weights(one_process["seed"][0] / "model.npz", tmp_path / "out" / "model.npz")


def test_ranks_with_different_settings_are_refused():
    """Checked on every rank before training; the first to fail ends the job (exit 2)."""
    mpiexec_path()
    cmd = [MPIEXEC, "-n", "1", sys.executable, "-m", "fastcnn.train", "--distributed", *BASE,
           ":", "-n", "1", sys.executable, "-m", "fastcnn.train", "--distributed", *BASE,
           "--seed", "1"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert "the ranks differ in" in proc.stderr, proc.stderr
    assert "the weights" in proc.stderr and "seed" in proc.stderr


def test_an_error_on_one_rank_only_ends_the_whole_job(tmp_path):
    """Rank 0 alone writes checkpoints; a checkpoint folder it cannot use fails there
    only, and the other rank must not wait for it."""
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    start = time.monotonic()
    proc = mpiexec(2, *BASE, "--checkpoint-dir", str(blocker / "ckpt"), timeout=120)
    assert proc.returncode != 0
    assert time.monotonic() - start < 60
    assert "error:" in proc.stderr


@pytest.mark.parametrize("action", ["PAUSE", "KILL"])
def test_a_rank_that_hangs_or_dies_ends_the_run_in_bounded_time(tmp_path, action):
    start = time.monotonic()
    proc = mpiexec(2, *BASE, "--mpi-timeout", "5", env={"FASTCNN_TEST_STOP_AT": f"1:3:{action}"},
                   timeout=120)
    assert proc.returncode != 0
    assert time.monotonic() - start < 100
    if action == "PAUSE":
        assert "rank 0: no answer from the other ranks within 5 s" in proc.stderr
