"""Saving and loading models: one .npz file of JSON architecture and weight arrays,
written atomically and read without unpickling anything."""

from __future__ import annotations

import json
import os
import zipfile

import numpy as np

from .fileio import atomic_write_npz
from .model import Sequential
from .ops import backend_module
from .validation import describe

FORMAT = "fastcnn-model"
FORMAT_VERSION = 1


def save_model(model: Sequential, path: str | os.PathLike) -> None:
    """Write architecture and weights to one .npz file, atomically."""
    check_path(path)
    atomic_write_npz(path, {"__format__": np.array(FORMAT),
                            "__version__": np.array(FORMAT_VERSION),
                            "__config__": np.array(json.dumps(model.get_config())),
                            **model.state_arrays()})


def load_model(path: str | os.PathLike, backend: str = "numba") -> Sequential:
    """Read a model written by `save_model` (never unpickles anything)."""
    check_path(path)
    backend_module(backend)  # a bad name is the caller's error, not the file's
    arrays = read_npz(path, FORMAT, FORMAT_VERSION)
    return model_from_json(arrays, path, backend)


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
    check_path(path)
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


def check_path(path: object) -> None:
    # An int would be taken as an open file descriptor.
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a str or os.PathLike, got {describe(path)}")


