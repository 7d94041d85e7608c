"""The training loop: `fit` (which `Sequential.fit` runs), the `History` it measures and
the `FitState` it can stop at and resume from bit-identically."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any

import numpy as np
from tqdm.auto import tqdm

from .augment import Augmentation
from .data import batches
from .distributed import DEFAULT_TIMEOUT, DataParallel, fit_fingerprint, weights_bytes
from .optim import SGD, Optimizer
from .threads import one_blas_thread
from .validation import check_bool, check_int, check_real, describe

if TYPE_CHECKING:
    from .model import Sequential


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
    # The state, at this point, of the generator that layers draw from in training
    # (dropout masks): None in checkpoints written before it existed, whose layers drew
    # nothing.
    layer_rng_state: dict | None = None
    # With `EarlyStopping(restore_best_weights=True)`: the model's `state_arrays()` after
    # the best epoch so far (None before the first epoch ends).
    best_arrays: dict[str, np.ndarray] | None = None


class EarlyStopping:
    """Stop `fit` when the monitored metric has not improved for `patience` epochs, and
    (``restore_best_weights``) end with the weights of its best epoch.

    monitor: "val_loss" (the default), "val_accuracy", "val_macro_f1" or "loss"; losses
    improve downwards, the others upwards, by more than ``min_delta``. As Keras'
    EarlyStopping, except that the best weights are restored whenever training ends, not
    only when it stops early (Keras restores them only then). Every decision is a function
    of the History, so a resumed run stops where the uninterrupted one would.
    """

    MONITORS = {"val_loss": -1, "val_accuracy": 1, "val_macro_f1": 1, "loss": -1}

    def __init__(self, monitor: str = "val_loss", patience: int = 5, min_delta: float = 0.0,
                 restore_best_weights: bool = True) -> None:
        if not isinstance(monitor, str) or monitor not in self.MONITORS:
            raise ValueError(f"monitor must be one of {sorted(self.MONITORS)}, got "
                             f"{describe(monitor)}")
        self.monitor = monitor
        self.patience = check_int(patience, "patience", 1, None)
        self.min_delta = check_real(min_delta, "min_delta", 0.0, math.inf)
        self.restore_best_weights = check_bool(restore_best_weights, "restore_best_weights")

    def best_epoch(self, history: History) -> int | None:
        """0-based epoch of the best value so far (the first, among ties), or None."""
        values = getattr(history, self.monitor)
        sign = self.MONITORS[self.monitor]
        best = None
        for epoch, value in enumerate(values):
            if best is None or math.isnan(values[best]) or sign * (value - values[best]) > \
                    self.min_delta:
                best = epoch
        return best

    def should_stop(self, history: History) -> bool:
        best = self.best_epoch(history)
        return best is not None and len(getattr(history, self.monitor)) - 1 - best >= \
            self.patience

    def __repr__(self) -> str:
        return (f"EarlyStopping(monitor={self.monitor!r}, patience={self.patience}, "
                f"min_delta={self.min_delta}, restore_best_weights={self.restore_best_weights})")


def split_index(n: int, validation_split: float) -> int:
    """Where `fit(validation_split=...)` splits n samples: the first split_index train."""
    return int(n * (1 - validation_split))


def layer_generator(seed: int | None) -> np.random.Generator:
    """The generator layers draw from in training (dropout masks), for a seed: a child of
    the same seed, so drawing from it never shifts the data order or the weights."""
    return np.random.default_rng(np.random.SeedSequence(seed).spawn(1)[0])


def fit(model: Sequential, x: np.ndarray, y: np.ndarray, *, epochs: int = 1,
        batch_size: int = 64, optimizer: Optimizer | None = None,
        validation_data: tuple | None = None, validation_split: float = 0.0,
        early_stopping: EarlyStopping | None = None, augment: Augmentation | None = None,
        seed: int | None = 0,
        verbose: bool = True, on_epoch_end: Callable[[int, History], None] | None = None,
        on_progress: Callable[[FitState], bool | None] | None = None,
        initial_state: FitState | None = None, comm: Any = None,
        timeout: float | None = None) -> History:
    """Train with mini-batch gradient descent on shuffled data.

    ``on_progress(state)`` runs at every point training can stop and later resume
    bit-identically: after each batch, and after each epoch's validation (then
    ``state.batch == 0``). If it returns True, `fit` stops there and returns the
    history so far. ``initial_state`` continues from such a state (``seed`` is then
    unused: the data order comes from the state); the caller restores the weights and
    the optimizer (``load_state``) saved at that same moment.

    ``validation_split`` holds out that fraction of the samples, the last ones (before
    any shuffling, as Keras), as validation data. ``early_stopping`` (an `EarlyStopping`)
    ends training when its metric stops improving. ``augment`` (an `Augmentation`)
    randomly shifts and flips each batch of uint8 training images, drawing from the
    layers' generator (so a resumed run draws the same).

    ``comm`` (an mpi4py communicator) trains on all its ranks together, each rank with
    the whole data and its own copy of the model, which ends with the same weights, bit
    for bit, as one process would (`fastcnn.distributed`); only rank 0 shows progress.
    Every rank must make the same call; ``on_progress`` stops training if it returns True
    on any rank. ``timeout``: seconds a rank waits for the others in one exchange before
    raising `DistributedError` (default 300).
    """
    epochs = check_int(epochs, "epochs", 1, None)
    batch_size = check_int(batch_size, "batch_size", 1, None)
    if optimizer is not None and not isinstance(optimizer, Optimizer):
        raise TypeError(f"optimizer must be a fastcnn optimizer, got {describe(optimizer)}")
    optimizer = optimizer or SGD(0.01)
    for name, fn in (("on_epoch_end", on_epoch_end), ("on_progress", on_progress)):
        if fn is not None and not callable(fn):
            raise TypeError(f"{name} must be callable, got {describe(fn)}")
    y = model._check_labelled(x, y, "x", "y")
    validation_split = check_real(validation_split, "validation_split", 0.0, 1.0)
    if validation_split:
        if validation_data is not None:
            raise ValueError("give validation_data or validation_split, not both")
        split_at = split_index(len(x), validation_split)
        if split_at == 0 or split_at == len(x):
            raise ValueError(f"validation_split {validation_split} of {len(x)} samples "
                             "leaves no training or no validation samples")
        x, y, validation_data = x[:split_at], y[:split_at], (x[split_at:], y[split_at:])
    if early_stopping is not None:
        if not isinstance(early_stopping, EarlyStopping):
            raise TypeError(f"early_stopping must be an EarlyStopping, got "
                            f"{describe(early_stopping)}")
        if early_stopping.monitor.startswith("val_") and validation_data is None:
            raise ValueError(f"early stopping on {early_stopping.monitor} needs "
                             "validation_data or validation_split")
    if augment is not None:
        if not isinstance(augment, Augmentation):
            raise TypeError(f"augment must be an Augmentation, got {describe(augment)}")
        if x.dtype != np.uint8:
            raise TypeError(f"augment works on uint8 images, x is {x.dtype}")
        augment.check(model.input_shape)
    if validation_data is not None:
        if not isinstance(validation_data, (tuple, list)) or len(validation_data) != 2:
            raise TypeError("validation_data must be a pair (x, y), got "
                            f"{describe(validation_data)}")
        model._check_labelled(*validation_data, "validation x", "validation y")
    if timeout is not None and comm is None:
        raise ValueError("timeout is for distributed training: give comm too")
    n = len(x)
    steps = math.ceil(n / batch_size)
    dp = None
    if comm is not None:
        dp = DataParallel(model, comm, DEFAULT_TIMEOUT if timeout is None else timeout)
        dp.check_same(fit_fingerprint(
            model, x, y, validation_data, optimizer, epochs=epochs, batch_size=batch_size,
            augment=augment, seed=seed, early_stopping=early_stopping,
            on_progress=on_progress is not None, initial_state=initial_state))
        verbose = verbose and dp.rank == 0
    if initial_state is None:
        rng = np.random.default_rng(seed)
        layer_rng = layer_generator(seed)
        state = FitState(0, 0, steps, rng.bit_generator.state, 0.0, 0.0, History())
    else:
        state = check_fit_state(initial_state, epochs, steps, optimizer,
                                validation_data is not None)
        _check_best_arrays(state, early_stopping, model)
        rng = np.random.default_rng()
        rng.bit_generator.state = state.rng_state
        layer_rng = np.random.default_rng(0)
        if state.layer_rng_state is not None:
            layer_rng.bit_generator.state = state.layer_rng_state
    history = state.history
    keep_best = early_stopping is not None and early_stopping.restore_best_weights
    best_arrays = state.best_arrays if keep_best else None
    # A run resumed after the point where it stopped early stops there again.
    stopped = early_stopping is not None and early_stopping.should_stop(history)
    with one_blas_thread():
        for epoch in range(state.epoch, epochs if not stopped else state.epoch):
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
                    xb = x[idx]
                    if augment is not None:
                        xb = augment.apply(xb.reshape(len(idx), *model.input_shape), layer_rng)
                    if dp is None:
                        loss = model.train_step(model.prepare(xb), y[idx], optimizer,
                                                layer_rng)
                    else:
                        loss = dp.train_step(xb, y[idx], optimizer, layer_rng)
                    if not math.isfinite(loss):
                        raise TrainingDiverged(
                            f"loss became {loss} at epoch {epoch + 1}, batch {b + 1}/{steps}; "
                            f"try a lower learning rate (now {optimizer.lr:g})")
                    total += loss * len(idx)
                    history.batch_loss.append(loss)
                    bar.update(len(idx))
                    if b % 20 == 0:
                        bar.set_postfix(loss=f"{total / (bar.n or 1):.4f}")
                    if on_progress is not None and _agree(dp, on_progress(FitState(
                            epoch, b + 1, steps, epoch_rng, total,
                            before + time.perf_counter() - start, history,
                            layer_rng.bit_generator.state, best_arrays))):
                        return history
            finally:
                bar.close()
            seconds = before + time.perf_counter() - start
            history.loss.append(total / n)
            history.epoch_seconds.append(seconds)
            history.samples_per_s.append(n / seconds)
            if validation_data is not None:
                scores = (model if dp is None else dp).evaluate(*validation_data)
                history.val_loss.append(scores["loss"])
                history.val_accuracy.append(scores["accuracy"])
                history.val_macro_f1.append(scores["macro_f1"])
            if dp is not None:  # replicas that drifted apart (other CPUs or versions)
                dp.check_same({f"the weights after epoch {epoch + 1}": weights_bytes(model)})
            if early_stopping is not None:
                if keep_best and early_stopping.best_epoch(history) == epoch:
                    best_arrays = {k: a.copy() for k, a in model.state_arrays().items()}
                stopped = early_stopping.should_stop(history)
            if on_epoch_end is not None:
                on_epoch_end(epoch, history)
            if on_progress is not None and _agree(dp, on_progress(FitState(
                    epoch + 1, 0, steps, rng.bit_generator.state, 0.0, 0.0, history,
                    layer_rng.bit_generator.state, best_arrays))):
                return history
            if stopped:
                break
    if best_arrays is not None:
        model.load_state_arrays(best_arrays, "the best epoch's weights")
    return history


def _agree(dp: DataParallel | None, stop: bool | None) -> bool:
    """on_progress's answer; over MPI, True on every rank if it is on any."""
    return bool(stop) if dp is None else dp.any(bool(stop))


def _check_best_arrays(state: FitState, early_stopping: EarlyStopping | None,
                       model: Sequential) -> None:
    """A resumed run that restores the best weights needs them once an epoch has ended."""
    if early_stopping is None or not early_stopping.restore_best_weights:
        return
    if state.best_arrays is None:
        if getattr(state.history, early_stopping.monitor):
            raise ValueError("initial_state holds no best weights for early stopping "
                             "(it was saved without restore_best_weights)")
        return
    model.check_state_arrays(state.best_arrays, "initial_state.best_arrays")
    # Unlike a model file (which also holds its config), the best arrays are the model's
    # arrays and nothing else.
    extra = sorted(set(state.best_arrays) - set(model.state_arrays()))
    if extra:
        raise ValueError(f"initial_state.best_arrays: arrays the model does not have {extra}")


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
    rng_state = _generator_state(state.rng_state, "initial_state.rng_state")
    layer_rng_state = None
    if state.layer_rng_state is not None:
        layer_rng_state = _generator_state(state.layer_rng_state,
                                           "initial_state.layer_rng_state")
    return FitState(epoch, batch, steps, rng_state, float(state.loss_sum),
                    float(state.elapsed), h.copy(), layer_rng_state, state.best_arrays)


def _generator_state(value: object, name: str) -> dict:
    """A checked copy of a NumPy default generator's bit_generator.state."""
    rng = np.random.default_rng()
    if not isinstance(value, dict) \
            or value.get("bit_generator") != type(rng.bit_generator).__name__:
        raise ValueError(f"{name} is not a {type(rng.bit_generator).__name__} state")
    try:
        rng.bit_generator.state = value
    except (TypeError, ValueError, KeyError, OverflowError) as exc:
        raise ValueError(f"{name} is invalid: {exc}") from None
    return rng.bit_generator.state
