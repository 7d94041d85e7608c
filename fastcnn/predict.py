"""python -m fastcnn.predict: classify image files with a trained fastcnn model.

Reads PNG/JPEG (or any format Pillow opens), ``.npy`` arrays (one H x W image,
or an N x H x W / N x 1 x H x W stack; uint8 0..255 or floats in [0, 1]) and
IDX image files (gzipped or not). Images are made grey, put on a dark background
like Fashion-MNIST (a dark object on a light background is inverted, and the
output says so), padded to a square and resized to the model's input size.
"""

from __future__ import annotations

import argparse
import gzip
import io
import json
import os
import sys
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .cli import ArgumentParser, CLIError, run_cli
from .compiling import compile_progress
from .data import CLASS_NAMES, MEAN, STD, DataError, parse_idx
from .model import Sequential

__all__ = ["BadInput", "Loaded", "detect_dark_background", "load_images", "main", "preprocess"]

MISSING_PILLOW = "reading and resizing images needs Pillow: pip install 'fastcnn[plot]'"
INVERTED_NOTE = "inverted: dark object on light background"

_NPY_MAGIC = b"\x93NUMPY"
_GZIP_MAGIC = b"\x1f\x8b"
_IDX_IMAGES = (0x00000803).to_bytes(4, "big")
_IDX_LABELS = (0x00000801).to_bytes(4, "big")
# Tuned on the Fashion-MNIST test set: none of its 10,000 images is flagged as light
# background, and all but 10 of their inverted copies are.
_LIGHT_BACKGROUND = 0.5
_POLARITY_MARGIN = 0.02


class BadInput(Exception):
    """One input file cannot be used; the message names the file."""


@dataclass
class Loaded:
    """Images read from one file: floats in [0, 1], (N, H, W); `stack` if N is meaningful."""

    images: list[np.ndarray]
    stack: bool


def _pillow() -> tuple[Any, Any]:
    """PIL's Image and ImageOps modules, imported only when an image must be read."""
    try:
        from PIL import Image, ImageOps
    except ImportError:
        raise BadInput(MISSING_PILLOW) from None
    return Image, ImageOps


# -- reading -------------------------------------------------------------------------------
def load_images(path: str | os.PathLike) -> Loaded:
    """Read one file by its content (not its name); raises BadInput naming the file."""
    name = str(path)
    try:
        raw = Path(path).read_bytes()
    except FileNotFoundError:
        raise BadInput(f"{name}: no such file") from None
    except IsADirectoryError:
        raise BadInput(f"{name}: is a directory") from None
    except OSError as exc:
        raise BadInput(f"{name}: cannot read: {exc.strerror or exc}") from None
    if not raw:
        raise BadInput(f"{name}: empty file")
    if raw.startswith(_GZIP_MAGIC):
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as exc:
            raise BadInput(f"{name}: corrupted gzip ({exc})") from None
        if not raw.startswith((_IDX_IMAGES, _IDX_LABELS)):
            raise BadInput(f"{name}: gzip file does not hold IDX images")
    if raw.startswith(_NPY_MAGIC):
        return _from_npy(raw, name)
    if raw.startswith(_IDX_LABELS):
        raise BadInput(f"{name}: IDX file holds labels, not images")
    if raw.startswith(_IDX_IMAGES):
        try:
            images = parse_idx(raw, name, ndim=3)
        except DataError as exc:
            raise BadInput(str(exc)) from None
        return _from_array(images, name, stack=True)
    return _from_picture(raw, name)


def _from_npy(raw: bytes, name: str) -> Loaded:
    try:
        a = np.load(io.BytesIO(raw), allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise BadInput(f"{name}: unreadable .npy file ({' '.join(str(exc).split())})") from None
    if a.ndim == 2:
        return _from_array(a[None], name, stack=False)
    if a.ndim == 3 and a.shape[-1] in (3, 4) and min(a.shape[:2]) > 4:
        return _from_array(_rgb_to_grey(a, name)[None], name, stack=False)  # one H x W x C image
    if a.ndim == 3:
        return _from_array(a, name, stack=True)
    if a.ndim == 4 and a.shape[1] == 1:
        return _from_array(a[:, 0], name, stack=True)
    if a.ndim == 4 and a.shape[-1] in (1, 3, 4):
        return _from_array(_rgb_to_grey(a, name), name, stack=True)
    raise BadInput(f"{name}: array of shape {a.shape} is not H x W, N x H x W or N x 1 x H x W")


def _unit_range(a: np.ndarray, name: str) -> np.ndarray:
    """Pixels as float64 in [0, 1]: integers are 0..255, floats must already be in [0, 1]."""
    if a.size == 0:
        raise BadInput(f"{name}: no pixels (array shape {a.shape})")
    if a.dtype == np.uint8:
        return a / 255.0
    if np.issubdtype(a.dtype, np.integer):
        lo, hi = int(a.min()), int(a.max())
        if lo < 0 or hi > 255:
            raise BadInput(f"{name}: integer pixels must lie in 0..255, got {lo}..{hi}")
        return a / 255.0
    if np.issubdtype(a.dtype, np.floating):
        a = a.astype(np.float64)
        if not np.all(np.isfinite(a)):
            raise BadInput(f"{name}: pixels include NaN or infinite values")
        lo, hi = float(a.min()), float(a.max())
        if lo < 0 or hi > 1:
            raise BadInput(f"{name}: float pixels must lie in [0, 1], got [{lo:.3g}, {hi:.3g}]")
        return a
    raise BadInput(f"{name}: pixels must be uint8 or float, got dtype {a.dtype}")


def _rgb_to_grey(a: np.ndarray, name: str) -> np.ndarray:
    a = _unit_range(a, name)
    if a.shape[-1] == 1:
        return a[..., 0]
    grey = a[..., :3] @ np.array([0.299, 0.587, 0.114])  # ITU-R 601 luma, as Pillow's "L"
    if a.shape[-1] == 4:
        alpha = a[..., 3]
        grey = grey * alpha + (1.0 - alpha)  # transparent parts shown on white, as viewers do
    return grey


def _from_array(a: np.ndarray, name: str, stack: bool) -> Loaded:
    if a.shape[0] == 0 or a.shape[1] == 0 or a.shape[2] == 0:
        raise BadInput(f"{name}: no images (array shape {a.shape})")
    a = _unit_range(a, name)
    return Loaded([a[i] for i in range(len(a))], stack)


def _from_picture(raw: bytes, name: str) -> Loaded:
    Image, ImageOps = _pillow()
    try:
        with Image.open(io.BytesIO(raw)) as img:
            img.load()
            img = ImageOps.exif_transpose(img)  # phone photos are often stored sideways
            grey = _picture_to_grey(img, Image)
    except Image.UnidentifiedImageError:
        raise BadInput(f"{name}: not an image, .npy or IDX file") from None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        detail = " ".join(str(exc).split()) or type(exc).__name__
        raise BadInput(f"{name}: unreadable image ({detail})") from None
    if grey.size == 0:
        raise BadInput(f"{name}: image has no pixels")
    return Loaded([grey], stack=False)


def _picture_to_grey(img: Any, Image: Any) -> np.ndarray:
    if img.mode.startswith("I;16"):
        return np.asarray(img, dtype=np.float64) / 65535.0
    if img.mode in ("I", "F"):
        a = np.asarray(img, dtype=np.float64)
        hi = float(a.max()) if a.size else 1.0
        return np.clip(a / (255.0 if hi <= 255 else 65535.0), 0.0, 1.0)
    if img.mode in ("RGBA", "LA", "PA") or "transparency" in img.info:
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(white, rgba)  # transparent parts shown on white
    return np.asarray(img.convert("L"), dtype=np.float64) / 255.0


# -- preprocessing --------------------------------------------------------------------------
def _ring(h: int, w: int) -> tuple[np.ndarray, tuple[slice, slice]]:
    """A mask of the outer ~10% border, and the slices of the central half."""
    t = max(1, round(min(h, w) * 0.1))
    mask = np.zeros((h, w), dtype=bool)
    mask[:t], mask[-t:], mask[:, :t], mask[:, -t:] = True, True, True, True
    return mask, (slice(h // 4, h - h // 4), slice(w // 4, w - w // 4))


def detect_dark_background(image: np.ndarray) -> bool:
    """False if `image` (floats in [0, 1]) shows a dark object on a light background.

    Light background: most border pixels are brighter than mid-grey and than the mean of
    the image's central half, the opposite of Fashion-MNIST.
    """
    h, w = image.shape
    border, centre = _ring(h, w)
    level = float(np.median(image[border]))
    light = level > _LIGHT_BACKGROUND and level > float(image[centre].mean()) + _POLARITY_MARGIN
    return not light


def _pad_square(image: np.ndarray) -> np.ndarray:
    # Fashion-MNIST objects keep their aspect ratio; stretching a photo would distort them.
    h, w = image.shape
    if h == w:
        return image
    border, _ = _ring(h, w)
    s = max(h, w)
    out = np.full((s, s), float(np.median(image[border])))
    top, left = (s - h) // 2, (s - w) // 2
    out[top:top + h, left:left + w] = image
    return out


def preprocess(image: np.ndarray, size: tuple[int, int]) -> tuple[np.ndarray, bool]:
    """A [0, 1] grey image as the model sees it: light-on-dark, square, `size` (H, W).

    Returns (image, inverted).
    """
    inverted = not detect_dark_background(image)
    if inverted:
        image = 1.0 - image
    if image.shape != tuple(size):
        image = _pad_square(image)
        Image, _ = _pillow()
        resized = Image.fromarray(image.astype(np.float32)).resize(
            (size[1], size[0]), Image.Resampling.LANCZOS)
        image = np.clip(np.asarray(resized, dtype=np.float64), 0.0, 1.0)
    return image, inverted


# -- command line ---------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="python -m fastcnn.predict", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", metavar="MODEL.npz", help="a model saved by fastcnn.train --out")
    p.add_argument("files", metavar="FILE", nargs="+", help="PNG/JPEG, .npy or IDX files")
    p.add_argument("--json", action="store_true", help="print a JSON list instead of text")
    p.add_argument("--top", type=int, default=3, metavar="K", help="classes shown per image (3)")
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns 0, 1 if some files failed, 2 for bad flags or model."""
    return run_cli(_main, argv)


def _main(argv: list[str] | None) -> int:
    args = build_parser().parse_intermixed_args(argv)
    try:
        model = Sequential.load(args.model)
    except (FileNotFoundError, ValueError) as exc:
        raise CLIError(str(exc)) from None
    if len(model.input_shape) != 3 or model.input_shape[0] != 1:
        raise CLIError(f"{args.model}: model input {model.input_shape} is not one grey image")
    k = int(model.output_shape[0])
    if not 1 <= args.top <= k:
        raise CLIError(f"--top must be from 1 to {k}, got {args.top}")
    names = CLASS_NAMES if k == len(CLASS_NAMES) else tuple(f"class {i}" for i in range(k))
    size = model.input_shape[1:]

    items: list[tuple[str, int | None, bool]] = []
    batch: list[np.ndarray] = []
    failed = 0
    for file in args.files:
        try:
            loaded = load_images(file)
            prepared = [preprocess(im, size) for im in loaded.images]
        except BadInput as exc:
            failed += 1
            print(f"error: {exc}" if str(exc).startswith(file) else f"error: {file}: {exc}",
                  file=sys.stderr, flush=True)
            continue
        for i, (im, inverted) in enumerate(prepared):
            items.append((file, i if loaded.stack else None, inverted))
            batch.append(im)

    results = []
    if batch:
        # Standardised like the training data (the model takes floats as already normalised).
        x = ((np.stack(batch) - MEAN) / STD).astype(model.dtype)[:, None]
        with compile_progress():
            probs = model.predict(x)
        for (file, index, inverted), p in zip(items, probs, strict=True):
            top = np.argsort(-p, kind="stable")[:args.top]
            results.append({"file": file, "index": index,
                            "top": [{"class": names[c], "probability": float(p[c])}
                                    for c in top],
                            "inverted": inverted})
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        for r in results:
            label = r["file"] if r["index"] is None else f"{r['file']}[{r['index']}]"
            top = "  ".join(f"{t['class']} {t['probability']:.3f}" for t in r["top"])
            note = f"  ({INVERTED_NOTE})" if r["inverted"] else ""
            print(f"{label}: {top}{note}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
