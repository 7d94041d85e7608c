"""Per-sample cost of fastcnn.compat against the plain NumPy tutorial replica (SEED-ARCH).

Run: python -m pytest bench/bench_compat.py  (add --benchmark-disable for a smoke test)
"""

# The tutorial seeds the global np.random state.
# ruff: noqa: NPY002

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from fastcnn import compat
from fastcnn.data import load_dataset

LR = 0.005


def _load_replica():
    # The replica lives with the tests (it is their oracle); load it by path, not sys.path.
    path = Path(__file__).resolve().parent.parent / "tests" / "original_replica.py"
    spec = importlib.util.spec_from_file_location("original_replica", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


replica = _load_replica()
IMPLS = {"fastcnn.compat": compat, "replica": replica}


@pytest.fixture(scope="module")
def images():
    x, y = load_dataset("sample", "train", limit=64)
    return compat.preprocess(x), y


def _net(impl: str):
    np.random.seed(0)
    mod = IMPLS[impl]
    return mod.SimpleCNN(mod.seed_arch_layers())


def _cycle(images):
    x, y = images
    state = {"i": 0}

    def next_sample():
        i = state["i"] = (state["i"] + 1) % len(y)
        return x[i], y[i]

    return next_sample


@pytest.mark.benchmark(group="compat-train-step")
@pytest.mark.parametrize("impl", list(IMPLS))
def test_train_step(benchmark, images, impl):
    net = _net(impl)
    next_sample = _cycle(images)

    def step():
        im, label = next_sample()
        out = net.forward(im)
        gradient = np.zeros(len(out))
        gradient[label] = -1 / out[label]
        net.backprop(gradient, LR)

    step()  # compile / load the kernels outside the timing
    benchmark(step)


@pytest.mark.benchmark(group="compat-inference")
@pytest.mark.parametrize("impl", list(IMPLS))
def test_inference(benchmark, images, impl):
    net = _net(impl)
    next_sample = _cycle(images)

    def infer():
        return int(np.argmax(net.forward(next_sample()[0])))

    infer()
    benchmark(infer)
