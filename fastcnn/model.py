"""Sequential model: forward/backward through layers, fit/evaluate/predict, save/load."""

from __future__ import annotations

import copy
import json
import math
import os
import time
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields

import numpy as np
from tqdm.auto import tqdm

from . import metrics
from .data import batches, normalize
from .fileio import atomic_write_npz
from .functional import backend_module, check_int, describe
from .layers import LAYERS, Conv2D, Dense, Flatten, Layer, MaxPool2D
from .losses import SoftmaxCrossEntropy, softmax
from .optim import SGD, Optimizer
from .threads import one_blas_thread

FORMAT = "fastcnn-model"
FORMAT_VERSION = 1
# Largest weight array, and largest sample at any layer, a model may have (1 GiB of
# float32). Far beyond this CPU library's use; it turns a typo such as units=10**9 into
# a ValueError instead of an allocation that exhausts memory.
MAX_LAYER_ELEMENTS = 2**28


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

    def copy(self) -> History:
        return History(**{f.name: list(getattr(self, f.name)) for f in fields(self)})


@dataclass
class FitState:
    """Where `fit` stands at a point it can stop and resume from bit-identically.

    With the model's weights and the optimizer's state (`Optimizer.state()` and
    `iterations`) taken at the same moment, this is all `fit(initial_state=...)` needs.
    """

    epoch: int  # 0-based epoch in progress; == epochs once training is complete
    batch: int  # batches of that epoch already trained on (0: the epoch has not started)
    steps: int  # batches per epoch
    # The data-order generator's bit_generator.state at the start of `epoch`: the epoch's
    # permutation is drawn from it again on resume.
    rng_state: dict
    loss_sum: float  # sum of loss * batch size over the batches done in `epoch`
    elapsed: float  # seconds spent on `epoch` so far (timing only, not reproducible)
    history: History  # everything measured so far (the live object: copy it to keep it)


class Sequential:
    """A stack of layers, built at once for `input_shape` (C, H, W) from a seeded generator."""

    def __init__(self, layers: Sequence[Layer], input_shape: tuple[int, ...] = (1, 28, 28),
                 seed: int | None = 0, dtype: type = np.float32) -> None:
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
        rng = np.random.default_rng(seed)
        shape = self.input_shape
        _check_size(shape, "one input sample")
        for layer in self.layers:
            # Sizes are checked before build() allocates anything.
            _check_size(layer.compute_output_shape(shape), f"one sample's output of {layer!r}")
            _check_size((_parameter_count(layer, shape),), f"the weights of {layer!r}")
            shape = layer.build(shape, rng, self.dtype)
        self.output_shape = shape
        # The loss follows the layers onto the NumPy oracles when they all use them.
        numpy_only = all(layer.backend == "numpy" for layer in self.layers)
        self.loss = SoftmaxCrossEntropy("numpy" if numpy_only else "numba")
        # Layers that ran fused with the next one in the last training pass.
        self._fused: frozenset[int] = frozenset()

    # -- core passes -------------------------------------------------------------------
    def prepare(self, x: np.ndarray) -> np.ndarray:
        """Images as the first layer wants them: uint8 pixels are normalised per batch."""
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
            return normalize(x).astype(self.dtype, copy=False)
        if not np.issubdtype(x.dtype, np.floating):
            raise TypeError(f"x must be uint8 pixels or floats, got dtype {x.dtype}")
        return np.ascontiguousarray(x, dtype=self.dtype)

    def forward(self, x: np.ndarray, training: bool = False) -> np.ndarray:
        """Logits for a prepared batch.

        A Conv2D followed by a MaxPool2D with non-overlapping windows runs as one fused
        kernel (`Conv2D.forward_pooled`): the same values, without storing the unpooled
        activations; in training, `backward` then runs the pair's fused backward pass.
        """
        layers = self.layers
        fused = []
        k = 0
        while k < len(layers):
            layer = layers[k]
            if isinstance(layer, Conv2D) and k + 1 < len(layers) \
                    and layer.fuses_with(layers[k + 1], training):
                x = layer.forward_pooled(x, layers[k + 1], training)
                fused.append(k)
                k += 2
            else:
                x = layer.forward(x, training)
                k += 1
        if training:
            self._fused = frozenset(fused)
        return x

    def backward(self, dy: np.ndarray) -> np.ndarray | None:
        """Backpropagate dy from the last layer; fills each layer's `grads`."""
        k = len(self.layers) - 1
        while k >= 0:
            # The first layer's input gradient is never used in training: skip it.
            if k - 1 in self._fused:
                dy = self.layers[k - 1].backward_pooled(dy, need_input_grad=k > 1)
                k -= 2
            else:
                dy = self.layers[k].backward(dy, need_input_grad=k > 0)
                k -= 1
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

    def warmup(self, optimizer: Optimizer | None = None,
               before_backward: Callable[[], object] | None = None) -> float:
        """Compile (or load from cache) every kernel the model uses in training and
        inference, and the optimizer's update if given; returns seconds. The weights and
        the optimizer's state stay as they were. ``before_backward`` runs between the
        forward and backward passes (to wait for kernels another process compiles)."""
        start = time.perf_counter()
        # Every batch size runs the same kernels: two samples compile them all.
        n = 2
        x = np.zeros((n, *self.input_shape), dtype=self.dtype)
        self.forward(x)
        self.loss(self.forward(x, training=True), np.zeros(n, dtype=np.int64))
        if before_backward is not None:
            before_backward()
        self.backward(self.loss.backward())
        if optimizer is not None:
            # A copy steps copies of the weights: the first epoch then times no compiling.
            copy.deepcopy(optimizer).step([p.copy() for p in self.parameters()],
                                          self.gradients())
        return time.perf_counter() - start

    # -- Keras-like API ----------------------------------------------------------------
    def fit(self, x: np.ndarray, y: np.ndarray, *, epochs: int = 1, batch_size: int = 64,
            optimizer: Optimizer | None = None, validation_data: tuple | None = None,
            seed: int | None = 0, verbose: bool = True,
            on_epoch_end: Callable[[int, History], None] | None = None,
            on_progress: Callable[[FitState], bool | None] | None = None,
            initial_state: FitState | None = None) -> History:
        """Train with mini-batch gradient descent on shuffled data.

        ``on_progress(state)`` runs at every point training can stop and later resume
        bit-identically: after each batch, and after each epoch's validation (then
        ``state.batch == 0``). If it returns True, `fit` stops there and returns the
        history so far. ``initial_state`` continues from such a state (``seed`` is then
        unused: the data order comes from the state); the caller restores the weights and
        the optimizer (``load_state``) saved at that same moment.
        """
        epochs = check_int(epochs, "epochs", 1, None)
        batch_size = check_int(batch_size, "batch_size", 1, None)
        if optimizer is not None and not isinstance(optimizer, Optimizer):
            raise TypeError(f"optimizer must be a fastcnn optimizer, got {describe(optimizer)}")
        optimizer = optimizer or SGD(0.01)
        for name, fn in (("on_epoch_end", on_epoch_end), ("on_progress", on_progress)):
            if fn is not None and not callable(fn):
                raise TypeError(f"{name} must be callable, got {describe(fn)}")
        y = self._check_labelled(x, y, "x", "y")
        if validation_data is not None:
            if not isinstance(validation_data, (tuple, list)) or len(validation_data) != 2:
                raise TypeError("validation_data must be a pair (x, y), got "
                                f"{describe(validation_data)}")
            self._check_labelled(*validation_data, "validation x", "validation y")
        n = len(x)
        steps = math.ceil(n / batch_size)
        if initial_state is None:
            rng = np.random.default_rng(seed)
            state = FitState(0, 0, steps, rng.bit_generator.state, 0.0, 0.0, History())
        else:
            state = check_fit_state(initial_state, epochs, steps, optimizer,
                                    validation_data is not None)
            rng = np.random.default_rng()
            rng.bit_generator.state = state.rng_state
        history = state.history
        with one_blas_thread():
            for epoch in range(state.epoch, epochs):
                # The permutation is drawn from this state, so a resumed epoch redraws it.
                epoch_rng = rng.bit_generator.state
                first = state.batch if epoch == state.epoch else 0
                total = state.loss_sum if first else 0.0
                before = state.elapsed if first else 0.0
                start = time.perf_counter()
                bar = tqdm(total=n, initial=min(first * batch_size, n), unit="img",
                           disable=not verbose, leave=False, desc=f"epoch {epoch + 1}/{epochs}")
                try:
                    for b, idx in enumerate(batches(n, batch_size, rng)):
                        if b < first:
                            continue
                        loss = self.train_step(self.prepare(x[idx]), y[idx], optimizer)
                        if not math.isfinite(loss):
                            raise TrainingDiverged(
                                f"loss became {loss} at epoch {epoch + 1}, batch {b + 1}/{steps}; "
                                f"try a lower learning rate (now {optimizer.lr:g})")
                        total += loss * len(idx)
                        history.batch_loss.append(loss)
                        bar.update(len(idx))
                        if b % 20 == 0:
                            bar.set_postfix(loss=f"{total / (bar.n or 1):.4f}")
                        if on_progress is not None and on_progress(FitState(
                                epoch, b + 1, steps, epoch_rng, total,
                                before + time.perf_counter() - start, history)):
                            return history
                finally:
                    bar.close()
                seconds = before + time.perf_counter() - start
                history.loss.append(total / n)
                history.epoch_seconds.append(seconds)
                history.samples_per_s.append(n / seconds)
                if validation_data is not None:
                    scores = self.evaluate(*validation_data)
                    history.val_loss.append(scores["loss"])
                    history.val_accuracy.append(scores["accuracy"])
                    history.val_macro_f1.append(scores["macro_f1"])
                if on_epoch_end is not None:
                    on_epoch_end(epoch, history)
                if on_progress is not None and on_progress(FitState(
                        epoch + 1, 0, steps, rng.bit_generator.state, 0.0, 0.0, history)):
                    return history
        return history

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
        _check_path(path)
        atomic_write_npz(path, {"__format__": np.array(FORMAT),
                                "__version__": np.array(FORMAT_VERSION),
                                "__config__": np.array(json.dumps(self.get_config())),
                                **self.state_arrays()})

    @classmethod
    def from_config(cls, config: dict, backend: str = "numba") -> Sequential:
        if not isinstance(config, dict) or not isinstance(config.get("layers"), list):
            raise ValueError("the configuration must be a dict with a list of layers")
        layers = []
        for spec in config["layers"]:
            if not isinstance(spec, dict) or not isinstance(spec.get("config"), dict):
                raise ValueError(f"bad layer entry {describe(spec)}")
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
            if not isinstance(a, np.ndarray):
                raise TypeError(f"{source}: {key!r} must be an array, got {describe(a)}")
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
        _check_path(path)
        backend_module(backend)  # a bad name is the caller's error, not the file's
        arrays = read_npz(path, FORMAT, FORMAT_VERSION)
        return model_from_json(arrays, path, backend)

    def summary(self) -> str:
        lines, shape = [f"input {self.input_shape}"], self.input_shape
        for layer in self.layers:
            shape = layer.output_shape
            n = sum(p.size for p in layer.params.values())
            lines.append(f"{layer!r:<70} -> {shape}  params {n}")
        lines.append(f"total params {sum(p.size for p in self.parameters())}")
        return "\n".join(lines)


def model_from_json(arrays: dict[str, np.ndarray], source: str | os.PathLike,
                    backend: str = "numba") -> Sequential:
    """The model described by the JSON text in arrays["__config__"], with its weights."""
    try:
        config = json.loads(str(arrays["__config__"]))
        model = Sequential.from_config(config, backend)
    except (KeyError, TypeError, ValueError, RecursionError) as exc:
        raise ValueError(f"{source}: bad model configuration: {exc}") from None
    model.load_state_arrays(arrays, str(source))
    return model


def read_npz(path: str | os.PathLike, fmt: str, version: int) -> dict[str, np.ndarray]:
    """All arrays of a fastcnn .npz file, after checking its format tag and version."""
    _check_path(path)
    # np.load would read a non-zip file as a pickle and blame allow_pickle.
    if os.path.isfile(path) and not zipfile.is_zipfile(path):
        raise ValueError(f"{path}: not a .npz file (corrupted, or cut short)")
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such file") from None
    except (IsADirectoryError, PermissionError):
        raise
    except Exception as exc:
        # Corrupted bytes surface as whatever zipfile, zlib or the .npy parser trips on
        # (BadZipFile, zlib.error, NotImplementedError, a MemoryError for an absurd shape
        # in a header...): all of them mean the file is unreadable.
        raise ValueError(f"{path}: not a readable .npz file ({type(exc).__name__}: "
                         f"{' '.join(str(exc).split())[:200]})") from None
    tag, found = arrays.get("__format__"), arrays.get("__version__")
    if not (isinstance(tag, np.ndarray) and tag.shape == () and str(tag) == fmt):
        raise ValueError(f"{path}: not a {fmt} file")
    if not (isinstance(found, np.ndarray) and found.shape == ()
            and np.issubdtype(found.dtype, np.integer)):
        raise ValueError(f"{path}: {fmt} file without a valid format version")
    if int(found) != version:
        raise ValueError(f"{path}: format version {int(found)}, this fastcnn reads version "
                         f"{version}")
    return arrays


def _check_path(path: object) -> None:
    # An int would be taken as an open file descriptor.
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a str or os.PathLike, got {describe(path)}")


def _check_size(shape: tuple[int, ...], what: str) -> None:
    if math.prod(shape) > MAX_LAYER_ELEMENTS:
        raise ValueError(f"{what} would hold {math.prod(shape)} elements (shape {shape}), "
                         f"more than {MAX_LAYER_ELEMENTS}")


def _parameter_count(layer: Layer, input_shape: tuple[int, ...]) -> int:
    """Weights `layer` will allocate for `input_shape`, computed without allocating."""
    if isinstance(layer, Conv2D):
        return layer.filters * input_shape[0] * layer.kernel_size[0] * layer.kernel_size[1]
    if isinstance(layer, Dense):
        return math.prod(input_shape) * layer.units
    return 0


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


def check_fit_state(state: object, epochs: int, steps: int, optimizer: Optimizer,
                    has_validation: bool) -> FitState:
    """A validated copy of a FitState to resume from, consistent with a fit call with
    these arguments; ValueError/TypeError saying what does not match."""
    if not isinstance(state, FitState):
        raise TypeError(f"initial_state must be a FitState, got {describe(state)}")
    epoch = check_int(state.epoch, "initial_state.epoch", 0, epochs)
    batch = check_int(state.batch, "initial_state.batch", 0, steps if epoch < epochs else 0)
    if state.steps != steps:
        raise ValueError(f"initial_state has {state.steps} batches per epoch, this fit "
                         f"{steps}: the data or the batch size differ")
    done = epoch * steps + batch
    if optimizer.iterations != done:
        raise ValueError(f"the optimizer has taken {optimizer.iterations} steps but "
                         f"initial_state is after {done}: restore it with load_state")
    h = state.history
    if not isinstance(h, History):
        raise TypeError(f"initial_state.history must be a History, got {describe(h)}")
    val = epoch if has_validation else 0
    lengths = {"loss": epoch, "epoch_seconds": epoch, "samples_per_s": epoch,
               "batch_loss": done, "val_loss": val, "val_accuracy": val, "val_macro_f1": val}
    for name, want in lengths.items():
        if len(getattr(h, name)) != want:
            raise ValueError(f"initial_state.history.{name} has {len(getattr(h, name))} "
                             f"entries, expected {want}")
    for name in ("loss_sum", "elapsed"):
        value = getattr(state, name)
        if isinstance(value, bool) or not isinstance(value, (int, float)) \
                or not math.isfinite(value) or value < 0:
            raise ValueError(f"initial_state.{name} must be a finite number >= 0, "
                             f"got {describe(value)}")
    rng = np.random.default_rng()
    if not isinstance(state.rng_state, dict) \
            or state.rng_state.get("bit_generator") != type(rng.bit_generator).__name__:
        raise ValueError(f"initial_state.rng_state is not a {type(rng.bit_generator).__name__} "
                         "state")
    try:
        rng.bit_generator.state = state.rng_state
    except (TypeError, ValueError, KeyError, OverflowError) as exc:
        raise ValueError(f"initial_state.rng_state is invalid: {exc}") from None
    return FitState(epoch, batch, steps, rng.bit_generator.state, float(state.loss_sum),
                    float(state.elapsed), h.copy())


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
