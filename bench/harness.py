"""Shared by the benchmark suites and compare.py: data, the SEED-ARCH network in each
system (fastcnn, PyTorch, Keras, naive per-sample loops) and start-up timing.

Every system takes pre-normalised float32 images (N, 1, 28, 28) and int64 labels,
converts them to its own layout once (`native`), outside any timed region, and then
offers `train_step(x, y) -> loss` and `predict(x) -> (N, 10)`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import numba
import numpy as np
import suite

import fastcnn
from fastcnn import naive
from fastcnn.data import load_dataset, normalize
from fastcnn.functional import conv_geometry
from fastcnn.losses import softmax

LR = 0.01
MOMENTUM = 0.9
CORES = numba.config.NUMBA_NUM_THREADS
# 5x5 'same' convolution on 28x28: (pad_top, pad_left, out_h, out_w).
SAME_5x5 = conv_geometry(28, 28, (5, 5), (1, 1), "same")

TORCH_HINT = "optional extra 'bench' not installed: pip install torch==2.13.0"
TF_HINT = "optional extra 'bench' not installed: pip install tensorflow-cpu"


def fast_mode(config) -> bool:
    """True when pytest-benchmark runs each benchmark once as a plain test."""
    return bool(config.getoption("benchmark_disable", False)) and not config.getoption(
        "benchmark_enable", False)


def thread_params(counts=(1, 2)) -> list:
    """pytest params for thread counts, skipping those the machine lacks."""
    import pytest

    return [pytest.param(n, id=f"t{n}", marks=pytest.mark.skipif(
        n > CORES, reason=f"needs {n} cores, this machine has {CORES}")) for n in counts]


def load_images(n: int) -> tuple[np.ndarray, np.ndarray]:
    """n real Fashion-MNIST images from the shipped sample (repeated if n > 2000),
    normalised to float32 (n, 1, 28, 28), and int64 labels. Deterministic."""
    images, labels = load_dataset("sample", "train")
    reps = -(-n // len(labels))
    x = normalize(np.tile(images, (reps, 1, 1))[:n])
    y = np.tile(labels, reps)[:n].astype(np.int64)
    return np.ascontiguousarray(x, dtype=np.float32), y


def versions() -> dict[str, str | None]:
    """Versions of everything the comparison touches (None: not installed)."""
    import platform
    from importlib import metadata

    out: dict[str, str | None] = {"python": platform.python_version()}
    for name, dist in (("numpy", "numpy"), ("numba", "numba"), ("fastcnn", "fastcnn"),
                       ("torch", "torch"), ("tensorflow", "tensorflow-cpu"),
                       ("keras", "keras")):
        try:
            out[name] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[name] = None
    if out["tensorflow"] is None:
        try:
            out["tensorflow"] = metadata.version("tensorflow")
        except metadata.PackageNotFoundError:
            pass
    return out


# -- systems ---------------------------------------------------------------------------

class FastcnnSystem:
    """A network of `suite` (SEED-ARCH by default) in fastcnn: Numba threads = `threads`,
    BLAS pinned to one thread."""

    name = "fastcnn"

    def __init__(self, threads: int, seed: int = 0, arch: str = "seed_arch") -> None:
        self.threads = threads
        self.model = suite.build(arch, seed)
        self.optimizer = fastcnn.SGD(LR, momentum=MOMENTUM)

    def activate(self) -> None:
        fastcnn.set_threads(self.threads)

    def native(self, x: np.ndarray, y: np.ndarray):
        return x, y

    def train_step(self, x, y) -> float:
        return self.model.train_step(self.model.prepare(x), y, self.optimizer)

    def predict(self, x) -> np.ndarray:
        return self.model.predict(x, batch_size=1000)


class TorchSystem:
    """The same network in PyTorch (NCHW, fastcnn's initial weights), SGD with momentum,
    cross-entropy."""

    name = "PyTorch"

    def __init__(self, threads: int, seed: int = 0, arch: str = "seed_arch") -> None:
        import torch
        from torch import nn

        self.torch, self.threads = torch, threads
        self.model = suite.torch_twin(suite.build(arch, seed))
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=LR, momentum=MOMENTUM)
        self.loss_fn = nn.CrossEntropyLoss()

    def activate(self) -> None:
        self.torch.set_num_threads(self.threads)

    def native(self, x: np.ndarray, y: np.ndarray):
        return self.torch.from_numpy(x), self.torch.from_numpy(y)

    def train_step(self, x, y) -> float:
        self.optimizer.zero_grad(set_to_none=True)
        loss = self.loss_fn(self.model(x), y)
        loss.backward()
        self.optimizer.step()
        return loss.item()

    def predict(self, x) -> np.ndarray:
        # Softmax too, as fastcnn's predict returns probabilities.
        with self.torch.inference_mode():
            return self.torch.softmax(self.model(x), dim=1).numpy()


def import_tensorflow(threads: int = min(2, CORES)):
    """Import TensorFlow and ask for `threads` intra-op threads; returns (tf, threads).

    TF fixes its thread pools when its runtime starts, so a later call cannot change
    them: the number returned is the one in force."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    import tensorflow as tf

    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
    except RuntimeError:
        pass  # already initialised: keep what it has
    actual = tf.config.threading.get_intra_op_parallelism_threads() or CORES
    return tf, actual


class KerasSystem:
    """The same network in Keras 3 on TensorFlow (NHWC), trained with the compiled
    `train_on_batch`; inference with the compiled `predict_on_batch`."""

    name = "Keras"

    def __init__(self, seed: int = 0) -> None:
        self.tf, self.threads = import_tensorflow()
        import keras
        from keras import layers

        keras.utils.set_random_seed(seed)
        self.model = keras.Sequential([
            keras.Input((28, 28, 1)),
            layers.Conv2D(6, 5, padding="same", activation="relu"),
            layers.Conv2D(6, 5, padding="same", activation="relu"),
            layers.MaxPooling2D(2), layers.Flatten(),
            layers.Dense(100, activation="relu"), layers.Dense(10)])
        self.model.compile(
            optimizer=keras.optimizers.SGD(LR, momentum=MOMENTUM),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        self.jit_compile = bool(self.model.jit_compile)

    def activate(self) -> None:
        pass  # thread count is fixed for the process (see import_tensorflow)

    def native(self, x: np.ndarray, y: np.ndarray):
        nhwc = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
        return self.tf.constant(nhwc), self.tf.constant(y)

    def train_step(self, x, y) -> float:
        return float(self.model.train_on_batch(x, y))

    def predict(self, x) -> np.ndarray:
        return np.asarray(self.model.predict_on_batch(x))


class NaiveSystem:
    """SEED-ARCH trained one sample at a time (whatever the batch), float64, with the
    loop kernels of `fastcnn.naive` and NumPy dense layers: the shape of the original
    per-sample code. Starts from the same weights as `fastcnn.seed_arch(seed)`."""

    name = "naive NumPy loops"

    def __init__(self, seed: int = 0) -> None:
        self.threads = 1
        self.params = [p.astype(np.float64) for p in fastcnn.seed_arch(seed).parameters()]
        self.velocity = [np.zeros_like(p) for p in self.params]

    def activate(self) -> None:
        # Pins BLAS to one thread; the loops are serial, so Numba's count is kept.
        fastcnn.set_threads(numba.get_num_threads())

    def native(self, x: np.ndarray, y: np.ndarray):
        return x, y

    def _forward(self, x):
        w1, b1, w2, b2, w3, b3, w4, b4 = self.params
        a1 = naive.conv2d_forward(x, w1, b1, 1, 1, *SAME_5x5, True)
        a2 = naive.conv2d_forward(a1, w2, b2, 1, 1, *SAME_5x5, True)
        pooled, argmax = naive.maxpool2d_forward(a2, 2, 2, 2, 2)
        flat = pooled.reshape(1, -1)
        hidden = np.maximum(flat @ w3 + b3, 0.0)
        return (a1, a2, argmax, flat, hidden), hidden @ w4 + b4

    def train_step(self, x, y) -> float:
        w1, b1, w2, b2, w3, b3, w4, b4 = self.params
        pt, pl = SAME_5x5[:2]
        total = 0.0
        for n in range(len(y)):
            xn = x[n:n + 1]
            (a1, a2, argmax, flat, hidden), logits = self._forward(xn)
            probs = softmax(logits)
            total -= float(np.log(probs[0, y[n]]))
            dz = probs
            dz[0, y[n]] -= 1.0
            dh = (dz @ w4.T) * (hidden > 0)
            dflat = dh @ w3.T
            da2 = naive.maxpool2d_backward(dflat.reshape(1, 6, 14, 14), argmax, 28, 28)
            da2 *= a2 > 0
            gw2, gb2 = naive.conv2d_backward_weight(a1, da2, 5, 5, 1, 1, pt, pl)
            da1 = naive.conv2d_backward_input(da2, w2, 28, 28, 1, 1, pt, pl) * (a1 > 0)
            gw1, gb1 = naive.conv2d_backward_weight(xn, da1, 5, 5, 1, 1, pt, pl)
            grads = (gw1, gb1, gw2, gb2, flat.T @ dh, dh[0], hidden.T @ dz, dz[0])
            for p, v, g in zip(self.params, self.velocity, grads, strict=True):
                v *= MOMENTUM
                v += g
                p -= LR * v
        return total / len(y)

    def predict(self, x) -> np.ndarray:
        return np.concatenate([softmax(self._forward(x[n:n + 1])[1]) for n in range(len(x))])


@numba.njit(parallel=True, fastmath=True)
def _burn(buffers, rounds):
    """Independent, equal, L1-resident multiply-add work per task: nothing shared, no
    traffic beyond each core's cache, no imbalance. buffers: (tasks, n) float32, updated
    in place."""
    for t in numba.prange(buffers.shape[0]):
        row = buffers[t]
        for _ in range(rounds):
            for i in range(row.shape[0]):
                row[i] = row[i] * np.float32(0.999) + np.float32(0.001)


class CeilingSystem:
    """Not a network: a compute-only Numba kernel with equal, independent tasks, timed in
    the same rotation as the systems. Its speed-up from 1 to 2 threads is what the second
    core gave code that loses nothing to parallelism (not a bound: a step that moves data
    suffers differently from a shared machine, and has scaled better than this)."""

    name = "ceiling"
    TASKS, SIZE, ROUNDS = 64, 1024, 6000  # ~25 ms per call on one core

    def __init__(self, threads: int) -> None:
        self.threads = threads
        self.buffers = np.ones((self.TASKS, self.SIZE), np.float32)

    def activate(self) -> None:
        numba.set_num_threads(self.threads)

    def train_step(self, x, y) -> float:
        _burn(self.buffers, self.ROUNDS)
        return 0.0


# -- start-up / JIT compile time -------------------------------------------------------

_STARTUP_SCRIPT = """
import json, time
t0 = time.perf_counter()
import numpy as np
import fastcnn
t1 = time.perf_counter()
model = fastcnn.seed_arch(0)
opt = fastcnn.SGD(0.01, momentum=0.9)
rng = np.random.default_rng(0)
x = rng.integers(0, 256, (64, 28, 28), dtype=np.uint8)
y = rng.integers(0, 10, 64)
t2 = time.perf_counter()
model.train_step(model.prepare(x), y, opt)
t3 = time.perf_counter()
model.train_step(model.prepare(x), y, opt)
t4 = time.perf_counter()
print(json.dumps({"import_s": t1 - t0, "build_s": t2 - t1, "first_batch_s": t3 - t2,
                  "second_batch_s": t4 - t3, "total_s": t3 - t0}))
"""


def startup_time(cache_dir: str | os.PathLike | None, timeout: float = 900) -> dict[str, float]:
    """`import fastcnn` + build SEED-ARCH + first training batch (64), in a fresh Python.

    cache_dir: NUMBA_CACHE_DIR for the child (an empty folder gives a cold compile;
    None keeps Numba's default cache beside the kernels). `total_s` is import to the
    end of the first batch; `process_s` adds interpreter start-up."""
    env = dict(os.environ)
    if cache_dir is not None:
        env["NUMBA_CACHE_DIR"] = os.fspath(cache_dir)
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", _STARTUP_SCRIPT], env=env, timeout=timeout,
                          capture_output=True, text=True, check=False)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"start-up probe failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["process_s"] = wall
    return result
