"""Turning uint8 pixels into the standardised floats a model trains on, for any data set."""

from __future__ import annotations

import functools

import numpy as np


@functools.lru_cache(maxsize=16)
def _table(mean: float, std: float) -> np.ndarray:
    """float32 value of every uint8 pixel: (pixel / 255 - mean) / std, in float64 first."""
    return ((np.arange(256, dtype=np.float64) / 255.0 - mean) / std).astype(np.float32)


def standardize(images: np.ndarray, mean: tuple[float, ...],
                std: tuple[float, ...]) -> np.ndarray:
    """(pixel / 255 - mean[c]) / std[c] for uint8 images (N, C, H, W), as float32.

    mean and std hold one value per channel (or one for all channels); pixel values go
    through a 256-entry table per channel, the same bits for every call.
    """
    if images.dtype != np.uint8 or images.ndim != 4:
        raise TypeError(f"images must be uint8 of shape (N, C, H, W), got {images.dtype} "
                        f"{images.shape}")
    channels = images.shape[1]
    if len(mean) not in (1, channels) or len(std) not in (1, channels):
        raise ValueError(f"mean and std need 1 or {channels} values, got {len(mean)} and "
                         f"{len(std)}")
    if len(mean) == 1 and len(std) == 1:
        return _table(float(mean[0]), float(std[0]))[images]
    out = np.empty(images.shape, dtype=np.float32)
    for c in range(channels):
        table = _table(float(mean[c % len(mean)]), float(std[c % len(std)]))
        out[:, c] = table[images[:, c]]
    return out


def channel_statistics(images: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of uint8 images (N, C, H, W) in [0, 1] units (pixel / 255),
    in float64, for `standardize`. A constant channel gets std 1 rather than 0."""
    if images.dtype != np.uint8 or images.ndim != 4:
        raise TypeError(f"images must be uint8 of shape (N, C, H, W), got {images.dtype} "
                        f"{images.shape}")
    # Exact integer histograms: the same statistics for any order or chunking.
    mean, std = [], []
    levels = np.arange(256, dtype=np.float64) / 255.0
    for c in range(images.shape[1]):
        counts = np.bincount(images[:, c].reshape(-1), minlength=256).astype(np.float64)
        m = float(counts @ levels / counts.sum())
        s = float(np.sqrt(counts @ (levels - m) ** 2 / counts.sum()))
        mean.append(m)
        std.append(s if s > 0 else 1.0)
    return tuple(mean), tuple(std)
