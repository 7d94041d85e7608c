"""Fashion-MNIST loading: local search, verified download, sample set, batching.

A folder the user names (``data_dir``, else ``$FASTCNN_DATA``) is the only place
looked in: files missing there are an error naming the folder, never a reason to
read other data or download. Only when neither is given are the user cache and
Debian's ``dataset-fashion-mnist`` package searched, in that order, and the files
downloaded into the cache if absent. Every file is checked against the SHA-256 of
its decompressed bytes before use.
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import importlib.resources
import io
import os
import urllib.error
import urllib.request
import warnings
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import numpy as np

from .fileio import atomic_writer
from .preprocessing import standardize

__all__ = [
    "CLASS_NAMES",
    "DEBIAN_DIR",
    "FILES",
    "MEAN",
    "MIRROR",
    "STD",
    "DataError",
    "batches",
    "cache_dir",
    "download",
    "load_dataset",
    "load_fashion_mnist",
    "load_sample",
    "normalize",
    "parse_idx",
    "read_file",
    "search_dirs",
]

CLASS_NAMES: tuple[str, ...] = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)

# SHA-256 of the *decompressed* bytes, so an uncompressed copy or a re-gzipped
# file (different gzip header/timestamp) verifies just the same.
FILES: dict[str, tuple[str, str]] = {
    "train_images": (
        "train-images-idx3-ubyte.gz",
        "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
    ),
    "train_labels": (
        "train-labels-idx1-ubyte.gz",
        "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
    ),
    "test_images": (
        "t10k-images-idx3-ubyte.gz",
        "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
    ),
    "test_labels": (
        "t10k-labels-idx1-ubyte.gz",
        "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
    ),
}

MIRROR = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")

# Pixel statistics of the Fashion-MNIST training set (after scaling to [0, 1]).
MEAN = 0.2860
STD = 0.3530

NUM_CLASSES = len(CLASS_NAMES)
IMAGE_SHAPE = (28, 28)
SPLITS = ("train", "test")
SAMPLE_FILE = "fashion_mnist_sample.npz"

_IDX_MAGIC = {1: 0x00000801, 3: 0x00000803}
_HASH_PREFIX = 12
_CHUNK = 1 << 20
# A 256-entry table turns normalisation into one gather and gives every batch
# bit-identical values, whatever its size.


class DataError(Exception):
    """A data file is missing, unreadable, corrupted or inconsistent."""


class _NetworkError(DataError):
    """The download itself failed (as opposed to delivering bad bytes)."""


def _one_line(exc: BaseException) -> str:
    # Messages must stay on one line even when the wrapped error is multi-line.
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


def cache_dir() -> Path:
    """Return the download cache: ``$FASTCNN_CACHE``, else the XDG cache dir."""
    explicit = os.environ.get("FASTCNN_CACHE")
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "fastcnn"


def _explicit_dir(data_dir: str | os.PathLike[str] | None) -> tuple[Path, str] | None:
    """(folder, where it came from) when the user named one: ``data_dir``, else
    ``$FASTCNN_DATA``; None otherwise."""
    if data_dir is not None:
        return Path(data_dir).expanduser(), ""
    env = os.environ.get("FASTCNN_DATA")
    if env:
        return Path(env).expanduser(), " (from $FASTCNN_DATA)"
    return None


def _search_plan(data_dir: str | os.PathLike[str] | None) -> list[tuple[Path, bool]]:
    """Directories to search, each flagged True if it is the (replaceable) cache."""
    explicit = _explicit_dir(data_dir)
    if explicit is not None:
        return [(explicit[0], False)]
    return [(cache_dir(), True), (DEBIAN_DIR, False)]


def search_dirs(data_dir: str | os.PathLike[str] | None = None) -> list[Path]:
    """Directories searched for the data files, highest priority first."""
    return [directory for directory, _ in _search_plan(data_dir)]


def parse_idx(raw: bytes, name: str, ndim: int | None = None) -> np.ndarray:
    """Parse uint8 IDX bytes (3-D images or 1-D labels) into a writable array.

    ``ndim`` defaults to what ``name`` implies ("idx3"/"images" -> 3,
    "idx1"/"labels" -> 1); if the name says neither, both are accepted.
    """
    if ndim is None:
        lowered = name.lower()
        if "idx3" in lowered or "images" in lowered:
            ndim = 3
        elif "idx1" in lowered or "labels" in lowered:
            ndim = 1
    if ndim is not None and ndim not in _IDX_MAGIC:
        raise ValueError(f"ndim must be 1 or 3, got {ndim}")
    if len(raw) < 4:
        raise DataError(f"{name}: truncated: {len(raw)} bytes is too short for an IDX header")
    magic = int.from_bytes(raw[:4], "big")
    if ndim is None:
        accepted = set(_IDX_MAGIC.values())
        expected = " or ".join(f"0x{m:08x}" for m in sorted(accepted))
    else:
        accepted = {_IDX_MAGIC[ndim]}
        expected = f"0x{_IDX_MAGIC[ndim]:08x}"
    if magic not in accepted:
        raise DataError(f"{name}: wrong IDX magic 0x{magic:08x}, expected {expected}")
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{name}: truncated: IDX header needs {header} bytes, file has {len(raw)}")
    dims = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected_body = 1
    for d in dims:
        expected_body *= d  # Python ints: no overflow on hostile headers
    body = len(raw) - header
    if body < expected_body:
        raise DataError(f"{name}: truncated: header says {expected_body} bytes, file has {body}")
    if body > expected_body:
        raise DataError(
            f"{name}: size mismatch: header says {expected_body} bytes, file has {body}"
        )
    # frombuffer over bytes is read-only; copy so callers own a normal array.
    return (
        np.frombuffer(raw, dtype=np.uint8, count=expected_body, offset=header).reshape(dims).copy()
    )


def _decompress(data: bytes, name: str) -> bytes:
    try:
        return gzip.decompress(data)
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(f"{name}: corrupted or truncated gzip ({_one_line(exc)})") from exc


def _verify(raw: bytes, sha256: str, name: str) -> None:
    actual = hashlib.sha256(raw).hexdigest()
    if actual != sha256.lower():
        raise DataError(
            f"{name}: checksum mismatch: expected sha256 {sha256[:_HASH_PREFIX]}…, "
            f"got {actual[:_HASH_PREFIX]}…"
        )


def _candidates(path: Path) -> list[Path]:
    """The file as named, then its uncompressed twin if the name ends in .gz."""
    return [path, path.with_suffix("")] if path.suffix == ".gz" else [path]


def _existing(path: Path) -> Path | None:
    for candidate in _candidates(path):
        if candidate.is_file():
            return candidate
    return None


def read_file(path: str | os.PathLike[str], sha256: str) -> np.ndarray:
    """Read, decompress, checksum and parse one IDX file.

    A missing ``foo.gz`` falls back to an uncompressed ``foo`` beside it.
    """
    path = Path(path)
    found = _existing(path)
    if found is None:
        raise DataError(f"{path}: file not found")
    try:
        data = found.read_bytes()
    except OSError as exc:
        raise DataError(f"{found}: cannot read: {_one_line(exc)}") from exc
    raw = _decompress(data, str(found)) if found.suffix == ".gz" else data
    _verify(raw, sha256, str(found))
    return parse_idx(raw, str(found))


def _lookup(name: str) -> tuple[str, str]:
    """Map a FILES key or file name to (file name, sha256)."""
    if name in FILES:
        return FILES[name]
    for fname, sha in FILES.values():
        if name == fname:
            return fname, sha
    raise ValueError(f"unknown data file {name!r}; expected one of {sorted(FILES)}")


def _fetch(url: str, out: BinaryIO, timeout: float, fname: str) -> None:
    """Stream ``url`` into ``out``; only network-side failures become _NetworkError."""
    try:
        response = urllib.request.urlopen(url, timeout=timeout)
    except (urllib.error.URLError, http.client.HTTPException, OSError) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise _NetworkError(
            f"{fname}: could not download {url} (no network?): {_one_line(reason)}"
        ) from exc
    with response:
        while True:
            try:
                chunk = response.read(_CHUNK)
            except (http.client.HTTPException, OSError) as exc:
                raise _NetworkError(
                    f"{fname}: could not download {url} (no network?): {_one_line(exc)}"
                ) from exc
            if not chunk:
                return
            out.write(chunk)  # disk errors propagate as themselves, not "no network"


def _download(name: str, dest_dir: Path, timeout: float) -> Path:
    fname, sha = _lookup(name)
    url = MIRROR + fname
    dest = dest_dir / fname
    try:  # a folder that cannot be made fails before the download, not after
        dest_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(f"{dest}: cannot write to {dest_dir}: {_one_line(exc)}") from exc
    buffer = io.BytesIO()  # at most ~26 MB
    _fetch(url, buffer, timeout, fname)
    raw = buffer.getvalue()
    label = f"{fname} (downloaded from {url})"
    # Verified before it is written, so the cache never holds an unverified file.
    _verify(_decompress(raw, label), sha, label)
    try:
        with atomic_writer(dest) as f:
            f.write(raw)
    except OSError as exc:
        raise DataError(f"{dest}: cannot write to {dest_dir}: {_one_line(exc)}") from exc
    return dest


def download(name: str, dest_dir: str | os.PathLike[str], timeout: float = 30) -> Path:
    """Download ``MIRROR + name`` into ``dest_dir`` atomically after verifying it.

    ``name`` is a file name from FILES (or its key). Returns the final path.
    """
    return _download(name, Path(dest_dir), timeout)


def _load_file(
    key: str, data_dir: str | os.PathLike[str] | None, allow_download: bool
) -> np.ndarray:
    fname, sha = FILES[key]
    explicit = _explicit_dir(data_dir)
    if explicit is not None:
        directory, named_by = explicit
        found = _existing(directory / fname)
        if found is None:
            raise DataError(_missing_message(directory, named_by))
        return read_file(found, sha)
    plan = _search_plan(data_dir)
    searched = ", ".join(str(d) for d, _ in plan)
    cache = next(d for d, is_cache in plan if is_cache)
    for directory, is_cache in plan:
        found = _existing(directory / fname)
        if found is None:
            continue
        try:
            return read_file(found, sha)
        except DataError as exc:
            if not is_cache:
                raise  # a user's corrupt file is their problem to fix, never skipped
            if not allow_download:
                raise DataError(f"{exc} (cached copy; downloads are disabled)") from exc
            warnings.warn(f"{exc}; re-downloading", stacklevel=3)
            break
    else:
        if not allow_download:
            raise DataError(
                f"{fname}: not found in: {searched}; install Debian's "
                "dataset-fashion-mnist or pass --data-dir"
            )
    try:
        path = _download(fname, cache, timeout=30)
    except _NetworkError as exc:
        raise DataError(
            f"{exc}; and no valid local copy found in: {searched}; "
            "install Debian's dataset-fashion-mnist or pass --data-dir"
        ) from exc
    return read_file(path, sha)


def _missing_message(directory: Path, named_by: str) -> str:
    """What a folder the user named lacks, in one line."""
    what = "does not exist" if not directory.is_dir() else "lacks " + ", ".join(
        name for name, _ in FILES.values() if _existing(directory / name) is None)
    return (f"data folder {directory}{named_by} {what}; it must hold the four "
            "Fashion-MNIST *-ubyte.gz files (Debian's dataset-fashion-mnist installs them "
            f"in {DEBIAN_DIR})")


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")


def _check_pair(images: np.ndarray, labels: np.ndarray, source: str) -> None:
    if images.ndim != 3 or images.shape[1:] != IMAGE_SHAPE:
        raise DataError(f"{source}: images have shape {images.shape}, expected (N, 28, 28)")
    if labels.ndim != 1:
        raise DataError(f"{source}: labels have shape {labels.shape}, expected (N,)")
    if len(images) != len(labels):
        raise DataError(f"{source}: {len(images)} images but {len(labels)} labels")
    if labels.size and int(labels.max()) >= NUM_CLASSES:
        raise DataError(
            f"{source}: label {int(labels.max())} out of range, expected 0..{NUM_CLASSES - 1}"
        )


def load_fashion_mnist(
    split: str = "train",
    data_dir: str | os.PathLike[str] | None = None,
    download: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Return (images uint8 (N, 28, 28), labels uint8 (N,)) for ``split``."""
    _check_split(split)
    images = _load_file(f"{split}_images", data_dir, download)
    labels = _load_file(f"{split}_labels", data_dir, download)
    _check_pair(images, labels, f"Fashion-MNIST {split}")
    return np.ascontiguousarray(images), np.ascontiguousarray(labels)


def load_sample(split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    """Return the small shipped sample (2,000 train / 1,000 test images)."""
    _check_split(split)
    try:
        resource = importlib.resources.files("fastcnn") / "_data" / SAMPLE_FILE
    except (NotADirectoryError, TypeError):
        # Editable installs of a package without __init__.py expose a namespace
        # path that importlib.resources cannot handle; the file sits beside us.
        resource = Path(__file__).with_name("_data") / SAMPLE_FILE
    try:
        with (
            importlib.resources.as_file(resource) as path,
            np.load(path, allow_pickle=False) as npz,
        ):
            images = np.ascontiguousarray(npz[f"{split}_images"], dtype=np.uint8)
            labels = np.ascontiguousarray(npz[f"{split}_labels"], dtype=np.uint8)
    except FileNotFoundError as exc:
        raise DataError(
            f"{SAMPLE_FILE}: sample file missing from the package; "
            "regenerate it with scripts/make_sample.py"
        ) from exc
    except (OSError, ValueError, KeyError) as exc:
        raise DataError(f"{SAMPLE_FILE}: unreadable sample file: {_one_line(exc)}") from exc
    _check_pair(images, labels, f"{SAMPLE_FILE} {split}")
    return images, labels


def load_dataset(
    name: str,
    split: str,
    data_dir: str | os.PathLike[str] | None = None,
    limit: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Load ``"fashion-mnist"`` or ``"sample"``, keeping the first ``limit`` items."""
    if name == "fashion-mnist":
        images, labels = load_fashion_mnist(split, data_dir=data_dir)
    elif name == "sample":
        images, labels = load_sample(split)
    else:
        raise ValueError(f"dataset must be 'fashion-mnist' or 'sample', got {name!r}")
    if limit is not None:
        if limit < 0:
            raise ValueError(f"limit must be >= 0, got {limit}")
        if limit < len(labels):
            # Copy so the full-size arrays can be freed.
            images, labels = images[:limit].copy(), labels[:limit].copy()
    return images, labels


def normalize(images: np.ndarray) -> np.ndarray:
    """Map uint8 images (N,28,28) or (N,1,28,28) to float32 (N,1,H,W) standardised with
    Fashion-MNIST's mean and std (`fastcnn.preprocessing.standardize` for other data).

    Floating-point input is taken as already normalised and only cast/reshaped.
    """
    images = np.asarray(images)
    if images.ndim == 3:
        images = images[:, None]
    elif images.ndim != 4 or images.shape[1] != 1:
        raise ValueError(f"images must be (N,H,W) or (N,1,H,W), got shape {images.shape}")
    if images.dtype == np.uint8:
        return standardize(images, (MEAN,), (STD,))
    if np.issubdtype(images.dtype, np.floating):
        return np.ascontiguousarray(images, dtype=np.float32)
    raise TypeError(f"images must be uint8 or floating point, got {images.dtype}")


def batches(n: int, batch_size: int, rng: np.random.Generator | None) -> Iterator[np.ndarray]:
    """Yield index arrays covering ``range(n)``, shuffled if ``rng`` is given.

    The last batch may be smaller than ``batch_size``.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    order = rng.permutation(n) if rng is not None else np.arange(n)
    for start in range(0, n, batch_size):
        yield order[start : start + batch_size]
