"""Per-sample cost of fastcnn.compat against the literal NumPy replica of the notebook.

Both build the notebook's model cell (SEED-ARCH). Groups: a training step (forward,
loss gradient, backprop), inference of one image (forward), and predict over 64
images (the notebook's dev evaluation; divide by 64 for the time per image).

Run: python -m pytest bench/bench_compat.py --benchmark-enable
"""

# The notebook seeds the global np.random state.
# ruff: noqa: NPY002

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import compat_recipe
import numpy as np
import pytest

from fastcnn import compat
from fastcnn.data import load_dataset

LR = 0.005
PREDICT_IMAGES = 64


def _load_replica():
    # The replica lives with the tests (it is their oracle); load it by path, not sys.path.
    path = Path(__file__).resolve().parent.parent / "tests" / "original_replica.py"
    spec = importlib.util.spec_from_file_location("original_replica", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


IMPLS = {"fastcnn.compat": compat, "replica": _load_replica()}


@pytest.fixture(scope="module")
def images():
    x, y = load_dataset("sample", "train", limit=PREDICT_IMAGES)
    return compat.preprocess(x), y.astype(np.int64)


def _net(impl: str):
    np.random.seed(0)
    return compat_recipe.notebook_model(IMPLS[impl])


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


@pytest.mark.benchmark(group="compat-predict-64")
@pytest.mark.parametrize("impl", list(IMPLS))
def test_predict(benchmark, images, impl):
    net = _net(impl)
    x, y = images
    net.predict(x, y, list(range(10)))
    accuracy, _ = benchmark(net.predict, x, y, list(range(10)))
    assert 0 <= accuracy <= 1


def test_recipe_runs(tmp_path, capsys):
    out = tmp_path / "recipe.json"
    result = compat_recipe.main(["--dataset", "sample", "--train-images", "40",
                                 "--test-images", "30", "--epochs", "2", "--out", str(out)])
    assert json.loads(out.read_text()) == result
    assert result["printed"][0] == "Training..." and len(result["printed"]) == 7
    assert result["printed"][-1] == (f"Dev Accuracy: {result['test_accuracy']:.3f}, "
                                     f"Dev F1 Score: {result['test_f1']:.3f}")
    assert len(result["epoch_train_seconds"]) == 2 and min(result["epoch_train_seconds"]) > 0
