"""Training checkpoints: one .npz holding everything needed to continue a run bit-identically.

A checkpoint stores the model (configuration, weights and buffers), the optimizer state
(its arrays and step count), the `FitState` (epoch, batch position, the data-order
generator's state at the start of the epoch, the layers' generator's state at that
batch, running loss sum, History, the best epoch's weights for early stopping) and the
run's settings. It is written atomically (temporary file, fsync, rename), so a crash
or a kill at any moment leaves the previous checkpoint or the new one, never a mix.
Nothing in it is pickled: structured values are JSON text in 0-d string arrays.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np

from .fileio import atomic_write_npz
from .functional import describe
from .model import FitState, History, Sequential
from .optim import Optimizer
from .persistence import model_from_json, read_npz

FORMAT = "fastcnn-checkpoint"
FORMAT_VERSION = 1
FILENAME = "checkpoint.npz"
_OPTIMIZER = "optimizer."
_HISTORY = "history."
_BEST = "best."  # the best epoch's model arrays, for early stopping
_PROGRESS_INTS = ("epoch", "batch", "steps", "iterations")


@dataclass
class Checkpoint:
    """A loaded checkpoint: the model with its weights, and what restores the rest."""

    model: Sequential
    optimizer_state: dict[str, np.ndarray]
    iterations: int
    state: FitState
    settings: dict


def checkpoint_path(directory: str | os.PathLike) -> Path:
    """Where a run that checkpoints into `directory` keeps its checkpoint."""
    return Path(directory) / FILENAME


def all_finite(arrays: list[np.ndarray]) -> bool:
    return all(bool(np.all(np.isfinite(a))) for a in arrays)


def save_checkpoint(path: str | os.PathLike, model: Sequential, optimizer: Optimizer,
                    state: FitState, settings: dict) -> None:
    """Write a checkpoint atomically. Refuses non-finite weights or optimizer state, so a
    diverged run never replaces the last good checkpoint."""
    if not all_finite(model.parameters()) or not all_finite(list(optimizer.state().values())):
        raise ValueError("refusing to checkpoint NaN or infinite weights or optimizer state")
    progress = {"epoch": state.epoch, "batch": state.batch, "steps": state.steps,
                "iterations": optimizer.iterations, "rng_state": state.rng_state,
                "loss_sum": state.loss_sum, "elapsed": state.elapsed,
                "layer_rng_state": state.layer_rng_state}
    arrays = {
        "__format__": np.array(FORMAT),
        "__version__": np.array(FORMAT_VERSION),
        "__config__": np.array(json.dumps(model.get_config())),
        "__settings__": np.array(json.dumps(settings)),
        # Python's JSON writes floats with repr(), which round-trips exactly.
        "__progress__": np.array(json.dumps(progress)),
        **{_HISTORY + f.name: np.asarray(getattr(state.history, f.name), dtype=np.float64)
           for f in fields(History)},
        **model.state_arrays(),
        **{_OPTIMIZER + k: a for k, a in optimizer.state().items()},
        **{_BEST + k: a for k, a in (state.best_arrays or {}).items()},
    }
    atomic_write_npz(path, arrays)


def load_checkpoint(path: str | os.PathLike, backend: str = "numba") -> Checkpoint:
    """Read and check a checkpoint (never unpickles anything); ValueError if it is bad."""
    arrays = read_npz(path, FORMAT, FORMAT_VERSION)
    model = model_from_json(arrays, path, backend)
    settings = _json(arrays, "__settings__", path)
    progress = _json(arrays, "__progress__", path)
    for key in _PROGRESS_INTS:
        value = progress.get(key)
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise ValueError(f"{path}: progress {key!r} must be an int >= 0, got "
                             f"{describe(value)}")
    for key in ("loss_sum", "elapsed"):
        value = progress.get(key)
        if not isinstance(value, (int, float)) or isinstance(value, bool) \
                or not math.isfinite(value):
            raise ValueError(f"{path}: progress {key!r} must be a finite number, got "
                             f"{describe(value)}")
    if not isinstance(progress.get("rng_state"), dict):
        raise ValueError(f"{path}: progress holds no data-order generator state")
    # Absent from checkpoints written before layers could draw random numbers.
    layer_rng_state = progress.get("layer_rng_state")
    if layer_rng_state is not None and not isinstance(layer_rng_state, dict):
        raise ValueError(f"{path}: progress 'layer_rng_state' must be a generator state, got "
                         f"{describe(layer_rng_state)}")
    history = {}
    for f in fields(History):
        a = arrays.get(_HISTORY + f.name)
        if not isinstance(a, np.ndarray) or a.ndim != 1 or a.dtype != np.float64:
            raise ValueError(f"{path}: {_HISTORY + f.name} must be a 1-d float64 array, got "
                             f"{describe(a)}")
        history[f.name] = [float(v) for v in a]
    best = {k[len(_BEST):]: a for k, a in arrays.items() if k.startswith(_BEST)}
    state = FitState(progress["epoch"], progress["batch"], progress["steps"],
                     progress["rng_state"], float(progress["loss_sum"]),
                     float(progress["elapsed"]), History(**history), layer_rng_state,
                     best or None)
    optimizer_state = {k[len(_OPTIMIZER):]: a for k, a in arrays.items()
                       if k.startswith(_OPTIMIZER)}
    return Checkpoint(model, optimizer_state, progress["iterations"], state, settings)


def remove_stale_temporaries(directory: str | os.PathLike) -> list[Path]:
    """Delete temporary files a killed writer left beside the checkpoint; returns them."""
    stale = sorted(Path(directory).glob(f".{FILENAME}.*.tmp"))
    for path in stale:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
    return stale


def _json(arrays: dict[str, np.ndarray], key: str, path: str | os.PathLike) -> dict:
    a = arrays.get(key)
    if not isinstance(a, np.ndarray) or a.shape != () or a.dtype.kind != "U":
        raise ValueError(f"{path}: missing or malformed {key}")
    try:
        value = json.loads(str(a))
    except (ValueError, RecursionError) as exc:
        raise ValueError(f"{path}: {key} is not valid JSON ({exc})") from None
    if not isinstance(value, dict):
        raise ValueError(f"{path}: {key} must be a JSON object")
    return value
