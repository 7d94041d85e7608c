"""The validation boundary's building blocks: checks that turn a bad argument into a
TypeError or ValueError naming it, before any kernel runs (Numba does no bounds checks).
"""

from __future__ import annotations

import math

import numpy as np

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


# A single size or count above this is refused: it keeps every index a kernel computes
# (products of a few sizes) far from int64 overflow.
MAX_SIZE = 2**31 - 1
# Largest array a kernel may be asked to allocate. Not a memory check: it turns absurd
# geometry (huge padding or images) into a ValueError before any index can overflow.
MAX_ELEMENTS = 2**31


def describe(value: object) -> str:
    """A short description of an argument for error messages (never a huge repr)."""
    if isinstance(value, np.ndarray):
        return f"an array of shape {value.shape} and dtype {value.dtype}"
    text = repr(value)
    return text if len(text) <= 60 else f"{text[:57]}..."


def _is_int(value: object) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def check_int(value: object, name: str, minimum: int = 0, maximum: int | None = MAX_SIZE) -> int:
    """An int (not a bool) in [minimum, maximum], or a TypeError/ValueError naming `name`."""
    if not _is_int(value):
        raise TypeError(f"{name} must be an int, got {describe(value)}")
    if value < minimum or (maximum is not None and value > maximum):
        bound = f">= {minimum}" if maximum is None else f"in [{minimum}, {maximum}]"
        raise ValueError(f"{name} must be {bound}, got {value}")
    return int(value)


def check_bool(value: object, name: str) -> bool:
    """True or False (Python or NumPy), or a TypeError naming `name`."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be True or False, got {describe(value)}")
    return bool(value)


def check_real(value: object, name: str, low: float, high: float,
               low_open: bool = False) -> float:
    """A real number (not a bool) in [low, high] ((low, high] if low_open), or a
    TypeError/ValueError naming `name`."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(
            value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a number, got {describe(value)}")
    if not (low < value <= high if low_open else low <= value <= high):  # NaN fails too
        bounds = f"{'(' if low_open else '['}{low}, {high}]"
        raise ValueError(f"{name} must be in {bounds}, got {value}")
    return float(value)


def pair(value: int | tuple[int, int], name: str, minimum: int = 1) -> tuple[int, int]:
    """Turn an int or a pair of ints into a validated (h, w) pair, each <= MAX_SIZE."""
    if type(value) is tuple and len(value) == 2 and type(value[0]) is int \
            and type(value[1]) is int and minimum <= value[0] <= MAX_SIZE \
            and minimum <= value[1] <= MAX_SIZE:
        return value  # the common, already-valid case: layers call this every batch
    if _is_int(value):
        items: tuple = (value, value)
    elif isinstance(value, (tuple, list)) or (isinstance(value, np.ndarray) and value.ndim == 1):
        items = tuple(value)
    else:  # tuple() would accept strings, dicts and generators
        raise TypeError(f"{name} must be an int or a pair of ints, got {describe(value)}")
    if len(items) != 2 or not all(_is_int(v) for v in items):
        raise TypeError(f"{name} must be an int or a pair of ints, got {describe(value)}")
    if any(v < minimum or v > MAX_SIZE for v in items):
        raise ValueError(f"{name} must be in [{minimum}, {MAX_SIZE}], got {describe(value)}")
    return int(items[0]), int(items[1])


def check_array(a: object, name: str, ndim: int, dtype: np.dtype | None = None) -> np.ndarray:
    """A C-contiguous float32/float64 array of `ndim` dimensions, or a clear error."""
    if not isinstance(a, np.ndarray):
        raise TypeError(f"{name} must be a numpy array, got {type(a).__name__}")
    if a.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be float32 or float64, got dtype {a.dtype}")
    if dtype is not None and a.dtype != dtype:
        raise TypeError(f"{name} has dtype {a.dtype} but the input is {dtype}; use one dtype")
    if a.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {a.shape}")
    if a.size == 0:
        raise ValueError(f"{name} is empty (shape {a.shape})")
    if not a.flags.writeable:  # Numba would compile a second, read-only specialisation
        return np.array(a, order="C")
    return np.ascontiguousarray(a)


def check_budget(shape: tuple[int, ...], what: str) -> None:
    if math.prod(shape) > MAX_ELEMENTS:
        raise ValueError(f"{what} would have shape {shape}: more than {MAX_ELEMENTS} elements")


