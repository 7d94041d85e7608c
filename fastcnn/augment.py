"""Seeded data augmentation of uint8 image batches: random shifts with zero fill (the
random crop of a zero-padded image) and horizontal flips, on a Numba kernel.

The random numbers are drawn in Python from the generator `fit` gives its layers, whose
state every checkpoint carries: a resumed run augments exactly as the uninterrupted one,
with any thread count.
"""

from __future__ import annotations

import numpy as np

from .ops import backend_module
from .validation import check_bool, check_int, describe


def shift_flip(images: np.ndarray, shifts: np.ndarray, flips: np.ndarray, *,
               backend: str = "numba") -> np.ndarray:
    """images (N, C, H, W) uint8, each shifted by shifts[n] = (dy, dx) pixels
    (out[h, w] = image[h + dy, w + dx], zero outside) and then, where flips[n], mirrored
    left to right."""
    impl = backend_module(backend)
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.ndim != 4:
        raise TypeError(f"images must be uint8 of shape (N, C, H, W), got {describe(images)}")
    n, _, h, w = images.shape
    if not isinstance(shifts, np.ndarray) or shifts.shape != (n, 2) \
            or not np.issubdtype(shifts.dtype, np.integer):
        raise TypeError(f"shifts must be integers of shape ({n}, 2), got {describe(shifts)}")
    if not isinstance(flips, np.ndarray) or flips.shape != (n,) or flips.dtype != np.bool_:
        raise TypeError(f"flips must be bool of shape ({n},), got {describe(flips)}")
    if n and (np.abs(shifts[:, 0]).max() >= h or np.abs(shifts[:, 1]).max() >= w):
        raise ValueError(f"shifts must be smaller than the image ({h}, {w})")
    if n == 0:
        return images.copy()
    return impl.shift_flip(np.ascontiguousarray(images), shifts.astype(np.int64),
                           np.ascontiguousarray(flips))


class Augmentation:
    """Random shifts of up to ``shift`` pixels each way (uniform in [-shift, shift],
    rows and columns drawn independently) with zero fill, and, if ``flip``, a horizontal
    flip with probability 1/2: torchvision's RandomCrop(size, padding=shift) followed
    by RandomHorizontalFlip(). `fit(augment=...)` applies it to each uint8 training batch.
    """

    def __init__(self, shift: int = 2, flip: bool = True) -> None:
        self.shift = check_int(shift, "shift", 0, 1024)
        self.flip = check_bool(flip, "flip")

    def check(self, input_shape: tuple[int, ...]) -> None:
        """ValueError unless the shifts fit images of input_shape (C, H, W)."""
        if len(input_shape) != 3 or self.shift >= min(input_shape[1:]):
            raise ValueError(f"augmentation shifts of {self.shift} pixels need (C, H, W) "
                             f"images larger than that, the model takes {input_shape}")

    def apply(self, images: np.ndarray, rng: np.random.Generator, *,
              backend: str = "numba") -> np.ndarray:
        """A randomly shifted and flipped copy of uint8 images (N, C, H, W)."""
        n = len(images)
        shifts = rng.integers(-self.shift, self.shift + 1, size=(n, 2))
        flips = rng.random(n) < 0.5 if self.flip else np.zeros(n, dtype=bool)
        return shift_flip(images, shifts, flips, backend=backend)

    def get_config(self) -> dict:
        return {"shift": self.shift, "flip": self.flip}

    def __repr__(self) -> str:
        return f"Augmentation(shift={self.shift}, flip={self.flip})"
