"""Sequential model: forward/backward through layers, fit/evaluate/predict, save/load."""

from __future__ import annotations

import json
import math
import os
import time
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
from threadpoolctl import threadpool_limits
from tqdm.auto import tqdm

from . import metrics
from .data import batches, normalize
from .fileio import atomic_write_npz
from .layers import LAYERS, Conv2D, Dense, Flatten, Layer, MaxPool2D
from .losses import SoftmaxCrossEntropy, softmax
from .optim import SGD, Optimizer

FORMAT = "fastcnn-model"
FORMAT_VERSION = 1


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite."""


@dataclass
class History:
    """What `fit` measured: one entry per epoch, and every batch's loss."""

    loss: list[float] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    val_accuracy: list[float] = field(default_factory=list)
    val_macro_f1: list[float] = field(default_factory=list)
    epoch_seconds: list[float] = field(default_factory=list)
    samples_per_s: list[float] = field(default_factory=list)
    batch_loss: list[float] = field(default_factory=list)


class Sequential:
    """A stack of layers, built at once for `input_shape` (C, H, W) from a seeded generator."""

    def __init__(self, layers: Sequence[Layer], input_shape: tuple[int, ...] = (1, 28, 28),
                 seed: int | None = 0, dtype: type = np.float32) -> None:
        if not layers:
            raise ValueError("Sequential needs at least one layer")
        for layer in layers:
            if not isinstance(layer, Layer):
                raise TypeError(f"not a fastcnn layer: {layer!r}")
        self.layers = list(layers)
        self.input_shape = tuple(int(s) for s in input_shape)
        self.dtype = np.dtype(dtype)
        if self.dtype not in (np.float32, np.float64):
            raise TypeError(f"dtype must be float32 or float64, got {self.dtype}")
        self.seed = seed
        rng = np.random.default_rng(seed)
        shape = self.input_shape
        for layer in self.layers:
            shape = layer.build(shape, rng, self.dtype)
        self.output_shape = shape
        self.loss = SoftmaxCrossEntropy()

    # -- core passes -------------------------------------------------------------------
    def prepare(self, x: np.ndarray) -> np.ndarray:
        """Images as the first layer wants them: uint8 pixels are normalised per batch."""
        if not isinstance(x, np.ndarray):
            raise TypeError(f"x must be a numpy array, got {type(x).__name__}")
        if x.ndim == len(self.input_shape) and self.input_shape[0] == 1:
            x = x[:, None]
        if x.shape[1:] != self.input_shape:
            raise ValueError(f"x must have shape (N, {', '.join(map(str, self.input_shape))}), "
                             f"got {x.shape}")
        if x.dtype == np.uint8:
            return normalize(x).astype(self.dtype, copy=False)
        if not np.issubdtype(x.dtype, np.floating):
            raise TypeError(f"x must be uint8 pixels or floats, got dtype {x.dtype}")
        return np.ascontiguousarray(x, dtype=self.dtype)

    def forward(self, x: np.ndarray, training: bool = False) -> np.ndarray:
        """Logits for a prepared batch."""
        for layer in self.layers:
            x = layer.forward(x, training)
        return x

    def backward(self, dy: np.ndarray) -> np.ndarray | None:
        """Backpropagate dy from the last layer; fills each layer's `grads`."""
        for k in range(len(self.layers) - 1, -1, -1):
            # The first layer's input gradient is never used in training: skip it.
            dy = self.layers[k].backward(dy, need_input_grad=k > 0)
        return dy

    def parameters(self) -> list[np.ndarray]:
        return [p for layer in self.layers for p in layer.params.values()]

    def gradients(self) -> list[np.ndarray]:
        return [layer.grads[name] for layer in self.layers for name in layer.params]

    def train_step(self, x: np.ndarray, y: np.ndarray, optimizer: Optimizer) -> float:
        """One optimiser step on a prepared batch; returns the batch loss."""
        loss = self.loss(self.forward(x, training=True), y)
        self.backward(self.loss.backward())
        optimizer.step(self.parameters(), self.gradients())
        return loss

    def warmup(self) -> float:
        """Compile (or load from cache) every kernel the model uses; returns seconds."""
        start = time.perf_counter()
        x = np.zeros((2, *self.input_shape), dtype=self.dtype)
        self.loss(self.forward(x, training=True), np.zeros(2, dtype=np.int64))
        self.backward(self.loss.backward())
        return time.perf_counter() - start

    # -- Keras-like API ----------------------------------------------------------------
    def fit(self, x: np.ndarray, y: np.ndarray, *, epochs: int = 1, batch_size: int = 64,
            optimizer: Optimizer | None = None, validation_data: tuple | None = None,
            seed: int | None = 0, verbose: bool = True,
            on_epoch_end: Callable[[int, History], None] | None = None) -> History:
        """Train with mini-batch gradient descent on shuffled data."""
        y = _check_labels(y, len(x), self.output_shape[0])
        if epochs < 1 or batch_size < 1:
            raise ValueError(f"epochs and batch_size must be >= 1, got {epochs}, {batch_size}")
        optimizer = optimizer or SGD(0.01)
        self.prepare(x[:1])  # shape check before any work
        rng = np.random.default_rng(seed)
        history = History()
        steps = math.ceil(len(x) / batch_size)
        with threadpool_limits(limits=1, user_api="blas"):
            for epoch in range(epochs):
                start = time.perf_counter()
                total = 0.0
                bar = tqdm(total=len(x), unit="img", disable=not verbose, leave=False,
                           desc=f"epoch {epoch + 1}/{epochs}")
                for b, idx in enumerate(batches(len(x), batch_size, rng)):
                    loss = self.train_step(self.prepare(x[idx]), y[idx], optimizer)
                    if not math.isfinite(loss):
                        bar.close()
                        raise TrainingDiverged(
                            f"loss became {loss} at epoch {epoch + 1}, batch {b + 1}/{steps}; "
                            f"try a lower learning rate (now {optimizer.lr:g})")
                    total += loss * len(idx)
                    history.batch_loss.append(loss)
                    bar.update(len(idx))
                    if b % 20 == 0:
                        bar.set_postfix(loss=f"{total / (bar.n or 1):.4f}")
                bar.close()
                seconds = time.perf_counter() - start
                history.loss.append(total / len(x))
                history.epoch_seconds.append(seconds)
                history.samples_per_s.append(len(x) / seconds)
                if validation_data is not None:
                    scores = self.evaluate(*validation_data)
                    history.val_loss.append(scores["loss"])
                    history.val_accuracy.append(scores["accuracy"])
                    history.val_macro_f1.append(scores["macro_f1"])
                if on_epoch_end is not None:
                    on_epoch_end(epoch, history)
        return history

    def predict(self, x: np.ndarray, batch_size: int = 1000) -> np.ndarray:
        """Class probabilities, (N, classes)."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        out = [softmax(self.forward(self.prepare(x[i:i + batch_size])))
               for i in range(0, len(x), batch_size)]
        return np.concatenate(out) if out else np.zeros((0, self.output_shape[0]), self.dtype)

    def evaluate(self, x: np.ndarray, y: np.ndarray, batch_size: int = 1000) -> dict:
        """Loss, accuracy and macro F1 on labelled data."""
        y = _check_labels(y, len(x), self.output_shape[0])
        probs = self.predict(x, batch_size)
        pred = probs.argmax(axis=1)
        eps = np.finfo(probs.dtype).tiny
        return {
            "loss": float(-np.mean(np.log(probs[np.arange(len(y)), y] + eps))),
            "accuracy": metrics.accuracy(y, pred),
            "macro_f1": metrics.macro_f1(y, pred, self.output_shape[0]),
        }

    # -- persistence -------------------------------------------------------------------
    def get_config(self) -> dict:
        return {"input_shape": list(self.input_shape), "dtype": self.dtype.name,
                "layers": [{"class": type(layer).__name__, "config": layer.get_config()}
                           for layer in self.layers]}

    def state_arrays(self) -> dict[str, np.ndarray]:
        return {f"{i}.{name}": p for i, layer in enumerate(self.layers)
                for name, p in layer.params.items()}

    def save(self, path: str | os.PathLike) -> None:
        """Write architecture and weights to one .npz file, atomically."""
        atomic_write_npz(path, {"__format__": np.array(FORMAT),
                                "__version__": np.array(FORMAT_VERSION),
                                "__config__": np.array(json.dumps(self.get_config())),
                                **self.state_arrays()})

    @classmethod
    def from_config(cls, config: dict, backend: str = "numba") -> Sequential:
        layers = []
        for spec in config["layers"]:
            if spec["class"] not in LAYERS:
                raise ValueError(f"unknown layer class {spec['class']!r}")
            layers.append(LAYERS[spec["class"]](**spec["config"], backend=backend))
        return cls(layers, tuple(config["input_shape"]), seed=None, dtype=np.dtype(config["dtype"]))

    def load_state_arrays(self, arrays: dict[str, np.ndarray], source: str = "file") -> None:
        expected = self.state_arrays()
        missing = sorted(set(expected) - set(arrays))
        if missing:
            raise ValueError(f"{source}: missing weight arrays {missing}")
        for key, p in expected.items():
            a = arrays[key]
            if a.shape != p.shape or a.dtype != p.dtype:
                raise ValueError(f"{source}: array {key!r} is {a.dtype}{list(a.shape)}, "
                                 f"the model needs {p.dtype}{list(p.shape)}")
            if not np.all(np.isfinite(a)):
                raise ValueError(f"{source}: array {key!r} holds NaN or infinite values")
        for key, p in expected.items():
            p[...] = arrays[key]

    @classmethod
    def load(cls, path: str | os.PathLike, backend: str = "numba") -> Sequential:
        """Read a model written by `save` (never unpickles anything)."""
        arrays = read_npz(path, FORMAT, FORMAT_VERSION)
        try:
            config = json.loads(str(arrays["__config__"]))
            model = cls.from_config(config, backend)
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"{path}: bad model configuration: {exc}") from None
        model.load_state_arrays(arrays, str(path))
        return model

    def summary(self) -> str:
        lines, shape = [f"input {self.input_shape}"], self.input_shape
        for layer in self.layers:
            shape = layer.output_shape
            n = sum(p.size for p in layer.params.values())
            lines.append(f"{layer!r:<70} -> {shape}  params {n}")
        lines.append(f"total params {sum(p.size for p in self.parameters())}")
        return "\n".join(lines)


def read_npz(path: str | os.PathLike, fmt: str, version: int) -> dict[str, np.ndarray]:
    """All arrays of a fastcnn .npz file, after checking its format tag and version."""
    # np.load would read a non-zip file as a pickle and blame allow_pickle.
    if os.path.isfile(path) and not zipfile.is_zipfile(path):
        raise ValueError(f"{path}: not a .npz file")
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such file") from None
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise ValueError(f"{path}: not a readable .npz file ({exc})") from None
    if str(arrays.get("__format__", "")) != fmt:
        raise ValueError(f"{path}: not a {fmt} file")
    found = int(arrays.get("__version__", -1))
    if found != version:
        raise ValueError(f"{path}: format version {found}, this fastcnn reads version {version}")
    return arrays


def _check_labels(y: np.ndarray, n: int, classes: int) -> np.ndarray:
    y = np.asarray(y)
    if y.ndim != 1 or len(y) != n:
        raise ValueError(f"y must hold one label per image ({n}), got shape {y.shape}")
    if not np.issubdtype(y.dtype, np.integer):
        raise TypeError(f"y must hold integer class labels, got dtype {y.dtype}")
    if n and (y.min() < 0 or y.max() >= classes):
        raise ValueError(f"labels must lie in [0, {classes}), got [{y.min()}, {y.max()}]")
    return y.astype(np.int64, copy=False)


def seed_arch(seed: int | None = 0, backend: str = "numba") -> Sequential:
    """SEED-ARCH: 1x28x28 -> Conv 6@5x5 same -> ReLU -> Conv 6@5x5 same -> ReLU -> MaxPool 2
    -> Flatten (1176) -> Dense 100 -> ReLU -> Dense 10. ReLUs are fused into their layers."""
    return Sequential([
        Conv2D(6, 5, padding="same", activation="relu", backend=backend),
        Conv2D(6, 5, padding="same", activation="relu", backend=backend),
        MaxPool2D(2, backend=backend),
        Flatten(backend=backend),
        Dense(100, activation="relu", backend=backend),
        Dense(10, kernel_initializer="glorot_uniform", backend=backend),
    ], input_shape=(1, 28, 28), seed=seed)
