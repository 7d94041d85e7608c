"""The training loop: `fit` (which `Sequential.fit` runs), the `History` it measures and
the `FitState` it can stop at and resume from bit-identically."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING

import numpy as np
from tqdm.auto import tqdm

from .data import batches
from .optim import SGD, Optimizer
from .threads import one_blas_thread
from .validation import check_int, describe

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


def layer_generator(seed: int | None) -> np.random.Generator:
    """The generator layers draw from in training (dropout masks), for a seed: a child of
    the same seed, so drawing from it never shifts the data order or the weights."""
    return np.random.default_rng(np.random.SeedSequence(seed).spawn(1)[0])


def fit(model: Sequential, x: np.ndarray, y: np.ndarray, *, epochs: int = 1,
        batch_size: int = 64, optimizer: Optimizer | None = None,
        validation_data: tuple | None = None, seed: int | None = 0, verbose: bool = True,
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
    y = model._check_labelled(x, y, "x", "y")
    if validation_data is not None:
        if not isinstance(validation_data, (tuple, list)) or len(validation_data) != 2:
            raise TypeError("validation_data must be a pair (x, y), got "
                            f"{describe(validation_data)}")
        model._check_labelled(*validation_data, "validation x", "validation y")
    n = len(x)
    steps = math.ceil(n / batch_size)
    if initial_state is None:
        rng = np.random.default_rng(seed)
        layer_rng = layer_generator(seed)
        state = FitState(0, 0, steps, rng.bit_generator.state, 0.0, 0.0, History())
    else:
        state = check_fit_state(initial_state, epochs, steps, optimizer,
                                validation_data is not None)
        rng = np.random.default_rng()
        rng.bit_generator.state = state.rng_state
        layer_rng = np.random.default_rng(0)
        if state.layer_rng_state is not None:
            layer_rng.bit_generator.state = state.layer_rng_state
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
                    loss = model.train_step(model.prepare(x[idx]), y[idx], optimizer, layer_rng)
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
                            before + time.perf_counter() - start, history,
                            layer_rng.bit_generator.state)):
                        return history
            finally:
                bar.close()
            seconds = before + time.perf_counter() - start
            history.loss.append(total / n)
            history.epoch_seconds.append(seconds)
            history.samples_per_s.append(n / seconds)
            if validation_data is not None:
                scores = model.evaluate(*validation_data)
                history.val_loss.append(scores["loss"])
                history.val_accuracy.append(scores["accuracy"])
                history.val_macro_f1.append(scores["macro_f1"])
            if on_epoch_end is not None:
                on_epoch_end(epoch, history)
            if on_progress is not None and on_progress(FitState(
                    epoch + 1, 0, steps, rng.bit_generator.state, 0.0, 0.0, history,
                    layer_rng.bit_generator.state)):
                return history
    return history


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
                    float(state.elapsed), h.copy(), layer_rng_state)


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
