"""Sequential: a stack of layers built at once, run as an execution plan, trained by
`fastcnn.training.fit` and saved by `fastcnn.persistence`."""

from __future__ import annotations

import copy
import math
import os
import time
from collections.abc import Callable, Sequence

import numpy as np

from . import metrics
from .augment import Augmentation
from .data import MEAN, STD
from .kernels._tuning import WARMUP_BATCHES
from .layers import LAYERS, Layer
from .losses import SoftmaxCrossEntropy, softmax
from .optim import Optimizer
from .plan import Step, build_plan
from .preprocessing import channel_statistics, standardize
from .training import (
    EarlyStopping,
    FitState,
    History,
    TrainingDiverged,
    check_fit_state,
    fit,
    layer_generator,
)
from .validation import check_int, check_real, describe

__all__ = ["FitState", "History", "Sequential", "TrainingDiverged", "check_fit_state"]

# Largest weight array, and largest sample at any layer, a model may have (1 GiB of
# float32). Far beyond this CPU library's use; it turns a typo such as units=10**9 into
# a ValueError instead of an allocation that exhausts memory.
MAX_LAYER_ELEMENTS = 2**28


class Sequential:
    """A stack of layers, built at once for `input_shape` (C, H, W) from a seeded generator."""

    def __init__(self, layers: Sequence[Layer], input_shape: tuple[int, ...] = (1, 28, 28),
                 seed: int | None = 0, dtype: type = np.float32,
                 input_mean: Sequence[float] = (MEAN,),
                 input_std: Sequence[float] = (STD,)) -> None:
        if not isinstance(layers, Sequence) or isinstance(layers, str):
            raise TypeError(f"layers must be a list of fastcnn layers, got {describe(layers)}")
        if not layers:
            raise ValueError("Sequential needs at least one layer")
        for layer in layers:
            if not isinstance(layer, Layer):
                raise TypeError(f"not a fastcnn layer: {describe(layer)}")
        if len({id(layer) for layer in layers}) != len(layers):
            raise ValueError("the same layer object appears twice; layers cannot be shared")
        self.layers = list(layers)
        if not isinstance(input_shape, (tuple, list)) or not input_shape:
            raise TypeError(f"input_shape must be a tuple of sizes such as (1, 28, 28), "
                            f"got {describe(input_shape)}")
        self.input_shape = tuple(check_int(s, f"input_shape[{i}]", 1)
                                 for i, s in enumerate(input_shape))
        try:
            self.dtype = np.dtype(dtype)
        except (TypeError, ValueError):
            raise TypeError(f"dtype must be float32 or float64, got {describe(dtype)}") from None
        if self.dtype not in (np.float32, np.float64):
            raise TypeError(f"dtype must be float32 or float64, got {self.dtype}")
        if seed is not None:
            check_int(seed, "seed", 0, None)
        self.seed = seed
        self.input_mean, self.input_std = _input_statistics(input_mean, input_std,
                                                            self.input_shape[0])
        rng = np.random.default_rng(seed)
        shape = self.input_shape
        _check_size(shape, "one input sample")
        for layer in self.layers:
            # Sizes are checked before build() allocates anything.
            _check_size(layer.compute_output_shape(shape), f"one sample's output of {layer!r}")
            _check_size((layer.parameter_count(shape),), f"the weights of {layer!r}")
            shape = layer.build(shape, rng, self.dtype)
        self.output_shape = shape
        # The loss follows the layers onto the NumPy oracles when they all use them.
        numpy_only = all(layer.backend == "numpy" for layer in self.layers)
        self.loss = SoftmaxCrossEntropy("numpy" if numpy_only else "numba")
        # What layers draw from in training when forward is given no generator (fit
        # gives its own, whose state it checkpoints).
        self._rng = layer_generator(seed)
        # The execution plans, worked out once: which layers run fused, as what step.
        self._plans = {training: build_plan(self.layers, training) for training in (False, True)}
        self._trained_plan: tuple[Step, ...] = self._plans[True]  # of the last training pass

    # -- core passes -------------------------------------------------------------------
    def prepare(self, x: np.ndarray) -> np.ndarray:
        """Images as the first layer wants them: uint8 pixels are standardised per
        channel, (pixel / 255 - input_mean[c]) / input_std[c] (by default Fashion-MNIST's
        mean and std in every channel; `adapt` takes them from the training images);
        floats are taken as they are."""
        if not isinstance(x, np.ndarray):
            raise TypeError(f"x must be a numpy array, got {type(x).__name__}")
        if x.ndim == 0:
            raise ValueError("x must be a batch of images, got a 0-d array")
        if x.ndim == len(self.input_shape) and self.input_shape[0] == 1:
            x = x[:, None]
        if x.shape[1:] != self.input_shape:
            raise ValueError(f"x must have shape (N, {', '.join(map(str, self.input_shape))}), "
                             f"got {x.shape}")
        if x.dtype == np.uint8:
            return standardize(x, self.input_mean, self.input_std).astype(self.dtype,
                                                                          copy=False)
        if not np.issubdtype(x.dtype, np.floating):
            raise TypeError(f"x must be uint8 pixels or floats, got dtype {x.dtype}")
        return np.ascontiguousarray(x, dtype=self.dtype)

    def forward(self, x: np.ndarray, training: bool = False,
                rng: np.random.Generator | None = None) -> np.ndarray:
        """Logits for a prepared batch. ``rng``: the generator that layers draw from in
        training.

        The model runs as its execution plan (`fastcnn.plan`): a Conv2D followed by a
        MaxPool2D with non-overlapping windows runs as one fused kernel, the same values
        without storing the unpooled activations; in training, `backward` then runs the
        pair's fused backward pass.
        """
        plan = self._plans[bool(training)]
        if training and rng is None:
            rng = self._rng
        for step in plan:
            x = step.forward(x, training, rng)
        if training:
            self._trained_plan = plan
        return x

    def backward(self, dy: np.ndarray) -> np.ndarray | None:
        """Backpropagate dy from the last layer; fills each layer's `grads`."""
        for step in reversed(self._trained_plan):
            # The first layer's input gradient is never used in training: skip it.
            dy = step.backward(dy, step.first > 0)
        return dy

    @property
    def _fused(self) -> frozenset[int]:
        """The first layers of the fused steps of the last training pass."""
        return frozenset(step.first for step in self._trained_plan if step.size > 1)

    def parameters(self) -> list[np.ndarray]:
        return [p for layer in self.layers for p in layer.params.values()]

    def gradients(self) -> list[np.ndarray]:
        return [layer.grads[name] for layer in self.layers for name in layer.params]

    def train_step(self, x: np.ndarray, y: np.ndarray, optimizer: Optimizer,
                   rng: np.random.Generator | None = None) -> float:
        """One optimiser step on a prepared batch; returns the batch loss."""
        loss = self.loss(self.forward(x, training=True, rng=rng), y)
        self.backward(self.loss.backward())
        optimizer.step(self.parameters(), self.gradients())
        return loss

    def warmup(self, optimizer: Optimizer | None = None,
               before_backward: Callable[[], object] | None = None) -> float:
        """Compile (or load from cache) every kernel the model uses in training and
        inference, and the optimizer's update if given; returns seconds. The weights,
        the buffers and the optimizer's state stay as they were. ``before_backward`` runs
        between the forward and backward passes (to wait for kernels another process
        compiles)."""
        start = time.perf_counter()
        # A training pass updates buffers (BatchNorm's running statistics): put them back.
        buffers = [{k: a.copy() for k, a in layer.buffers.items()} for layer in self.layers]
        if optimizer is not None:
            # A copy steps copies of the weights (with zero gradients, so that it compiles
            # while another process may compile the backward kernels): the first epoch
            # then times no compiling.
            copy.deepcopy(optimizer).step([p.copy() for p in self.parameters()],
                                          [np.zeros_like(p) for p in self.parameters()])
        for i, n in enumerate(WARMUP_BATCHES):  # every path of every kernel
            x = np.zeros((n, *self.input_shape), dtype=self.dtype)
            self.forward(x)
            self.loss(self.forward(x, training=True, rng=np.random.default_rng(0)),
                      np.zeros(n, dtype=np.int64))
            if i == 0 and before_backward is not None:
                before_backward()
            self.backward(self.loss.backward())
        for layer, saved in zip(self.layers, buffers, strict=True):
            layer.buffers.update(saved)
        return time.perf_counter() - start

    # -- Keras-like API ----------------------------------------------------------------
    def fit(self, x: np.ndarray, y: np.ndarray, *, epochs: int = 1, batch_size: int = 64,
            optimizer: Optimizer | None = None, validation_data: tuple | None = None,
            validation_split: float = 0.0, early_stopping: EarlyStopping | None = None,
            augment: Augmentation | None = None, seed: int | None = 0, verbose: bool = True,
            on_epoch_end: Callable[[int, History], None] | None = None,
            on_progress: Callable[[FitState], bool | None] | None = None,
            initial_state: FitState | None = None, comm: object = None,
            timeout: float | None = None) -> History:
        """Train with mini-batch gradient descent on shuffled data: `fastcnn.training.fit`,
        which documents the arguments (``comm``: an mpi4py communicator, to train over
        its ranks)."""
        return fit(self, x, y, epochs=epochs, batch_size=batch_size, optimizer=optimizer,
                   validation_data=validation_data, validation_split=validation_split,
                   early_stopping=early_stopping, augment=augment, seed=seed, verbose=verbose,
                   on_epoch_end=on_epoch_end, on_progress=on_progress,
                   initial_state=initial_state, comm=comm, timeout=timeout)

    def predict(self, x: np.ndarray, batch_size: int = 1000) -> np.ndarray:
        """Class probabilities, (N, classes). NaN in the input gives NaN rows."""
        batch_size = check_int(batch_size, "batch_size", 1, None)
        self._check_classifier()
        self._check_images(x, "x")
        out = [softmax(self.forward(self.prepare(x[i:i + batch_size])))
               for i in range(0, len(x), batch_size)]
        return np.concatenate(out) if out else np.zeros((0, self.output_shape[0]), self.dtype)

    def evaluate(self, x: np.ndarray, y: np.ndarray, batch_size: int = 1000) -> dict:
        """Loss, accuracy and macro F1 on labelled data."""
        y = self._check_labelled(x, y, "x", "y")
        return metrics.scores(y, self.predict(x, batch_size))

    def _check_classifier(self) -> None:
        if len(self.output_shape) != 1:
            raise ValueError(f"this model outputs shape {self.output_shape}, not class scores "
                             "(classes,): end it with Flatten and Dense")

    def _check_images(self, x: object, name: str) -> None:
        """Type and shape of a whole image array, before any batch of it is used."""
        if not isinstance(x, np.ndarray):
            raise TypeError(f"{name} must be a numpy array, got {type(x).__name__}")
        if x.ndim == 0:
            raise ValueError(f"{name} must be a batch of images, got a 0-d array")
        try:
            self.prepare(x[:1])
        except (TypeError, ValueError) as exc:
            raise type(exc)(str(exc).replace("x must", f"{name} must", 1)) from None

    def _check_labelled(self, x: object, y: object, x_name: str, y_name: str) -> np.ndarray:
        """Checks shared by fit and evaluate; returns the labels as int64."""
        self._check_classifier()
        self._check_images(x, x_name)
        if len(x) == 0:
            raise ValueError(f"{x_name} is empty (shape {x.shape})")
        # NaN pixels would turn every weight into NaN, or every score into garbage.
        if x.dtype != np.uint8 and not np.all(np.isfinite(x)):
            raise ValueError(f"{x_name} holds NaN or infinite values")
        return _check_labels(y, len(x), self.output_shape[0], y_name)

    def adapt(self, x: np.ndarray) -> None:
        """Take `prepare`'s per-channel mean and std from uint8 training images x
        (N, C, H, W), or (N, H, W) for one channel: as Keras' Normalization.adapt."""
        self._check_images(x, "x")
        if x.dtype != np.uint8:
            raise TypeError(f"adapt takes uint8 images, got dtype {x.dtype}")
        mean, std = channel_statistics(x.reshape(len(x), *self.input_shape))
        self.input_mean, self.input_std = _input_statistics(mean, std, self.input_shape[0])

    # -- persistence -------------------------------------------------------------------
    def get_config(self) -> dict:
        return {"input_shape": list(self.input_shape), "dtype": self.dtype.name,
                "input_mean": list(self.input_mean), "input_std": list(self.input_std),
                "layers": [{"class": type(layer).__name__, "config": layer.get_config()}
                           for layer in self.layers]}

    def state_arrays(self) -> dict[str, np.ndarray]:
        """Every array saved with the model: each layer's parameters, then its buffers."""
        return {f"{i}.{name}": p for i, layer in enumerate(self.layers)
                for name, p in (*layer.params.items(), *layer.buffers.items())}

    def save(self, path: str | os.PathLike) -> None:
        """Write architecture and weights to one .npz file, atomically."""
        from .persistence import save_model  # it builds models: imported when used

        save_model(self, path)

    @classmethod
    def from_config(cls, config: dict, backend: str = "numba",
                    seed: int | None = None) -> Sequential:
        """The model `get_config` describes (the architecture JSON of a saved model), its
        weights drawn from ``seed`` (None: fresh entropy; loading overwrites them)."""
        if not isinstance(config, dict) or not isinstance(config.get("layers"), list):
            raise ValueError("the configuration must be a dict with a list of layers")
        layers = []
        for spec in config["layers"]:
            if not isinstance(spec, dict) or not isinstance(spec.get("config"), dict):
                raise ValueError(f"bad layer entry {describe(spec)}")
            if spec["class"] not in LAYERS:
                raise ValueError(f"unknown layer class {spec['class']!r}")
            layers.append(LAYERS[spec["class"]](**spec["config"], backend=backend))
        # Models saved before per-channel statistics used Fashion-MNIST's.
        return cls(layers, tuple(config["input_shape"]), seed=seed,
                   dtype=np.dtype(config["dtype"]),
                   input_mean=config.get("input_mean", (MEAN,)),
                   input_std=config.get("input_std", (STD,)))

    def check_state_arrays(self, arrays: object, source: str = "file") -> None:
        """Raise (naming `source` and the array) unless `arrays` holds every array of
        `state_arrays()`, of its shape and dtype, and finite."""
        if not isinstance(arrays, dict):
            raise TypeError(f"{source}: the weight arrays must be a dict, got {describe(arrays)}")
        expected = self.state_arrays()
        missing = sorted(set(expected) - set(arrays))
        if missing:
            raise ValueError(f"{source}: missing weight arrays {missing}")
        for key, p in expected.items():
            a = arrays[key]
            if not isinstance(a, np.ndarray):
                raise TypeError(f"{source}: {key!r} must be an array, got {describe(a)}")
            if a.shape != p.shape or a.dtype != p.dtype:
                raise ValueError(f"{source}: array {key!r} is {a.dtype}{list(a.shape)}, "
                                 f"the model needs {p.dtype}{list(p.shape)}")
            if not np.all(np.isfinite(a)):
                raise ValueError(f"{source}: array {key!r} holds NaN or infinite values")

    def load_state_arrays(self, arrays: dict[str, np.ndarray], source: str = "file") -> None:
        """Copy checked arrays (check_state_arrays) into the parameters and buffers."""
        self.check_state_arrays(arrays, source)
        for key, p in self.state_arrays().items():
            p[...] = arrays[key]

    @classmethod
    def load(cls, path: str | os.PathLike, backend: str = "numba") -> Sequential:
        """Read a model written by `save` (never unpickles anything)."""
        from .persistence import load_model

        return load_model(path, backend)

    def summary(self) -> str:
        """A Keras-style table: each layer, its output shape and parameter count, and the
        totals (buffers count as non-trainable)."""
        rows = [("Layer (type)", "Output shape", "Param #")]
        for i, layer in enumerate(self.layers):
            n = sum(a.size for a in (*layer.params.values(), *layer.buffers.values()))
            rows.append((f"{i}: {type(layer).__name__}", str((None, *layer.output_shape)),
                         f"{n:,}"))
        widths = [max(len(r[k]) for r in rows) + 2 for k in range(3)]
        rule = "-" * sum(widths)

        def line(r: tuple[str, str, str]) -> str:
            return (r[0].ljust(widths[0]) + r[1].ljust(widths[1]) + r[2].rjust(widths[2]))

        trainable = sum(p.size for p in self.parameters())
        buffers = sum(b.size for layer in self.layers for b in layer.buffers.values())
        return "\n".join([f"Input shape: {(None, *self.input_shape)}, {self.dtype.name}",
                          rule, line(rows[0]), rule, *map(line, rows[1:]), rule,
                          f"Total params: {trainable + buffers:,}",
                          f"Trainable params: {trainable:,}",
                          f"Non-trainable params: {buffers:,}"])


def _input_statistics(mean: object, std: object,
                      channels: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Checked per-channel mean and std (1 value for all channels, or one per channel)."""
    out = []
    for name, values, low in (("input_mean", mean, -math.inf), ("input_std", std, 0.0)):
        if isinstance(values, np.ndarray):
            values = values.tolist()
        if not isinstance(values, (tuple, list)) or len(values) not in (1, channels):
            raise ValueError(f"{name} needs 1 or {channels} values (one per channel), got "
                             f"{describe(values)}")
        out.append(tuple(check_real(v, f"{name}[{i}]", low, math.inf, low_open=low == 0.0)
                         for i, v in enumerate(values)))
        if not all(math.isfinite(v) for v in out[-1]):
            raise ValueError(f"{name} must be finite, got {describe(values)}")
    return out[0], out[1]


def _check_size(shape: tuple[int, ...], what: str) -> None:
    if math.prod(shape) > MAX_LAYER_ELEMENTS:
        raise ValueError(f"{what} would hold {math.prod(shape)} elements (shape {shape}), "
                         f"more than {MAX_LAYER_ELEMENTS}")


def _check_labels(y: object, n: int, classes: int, name: str = "y") -> np.ndarray:
    if not isinstance(y, (np.ndarray, list, tuple)):
        raise TypeError(f"{name} must be an array of class labels, got {describe(y)}")
    y = np.asarray(y)
    if y.ndim != 1 or len(y) != n:
        raise ValueError(f"{name} must hold one label per image ({n}), got shape {y.shape}")
    if not np.issubdtype(y.dtype, np.integer):
        raise TypeError(f"{name} must hold integer class labels, got dtype {y.dtype}")
    if n and (y.min() < 0 or y.max() >= classes):
        raise ValueError(f"{name}: labels must lie in [0, {classes}), got "
                         f"[{y.min()}, {y.max()}]")
    return y.astype(np.int64, copy=False)


