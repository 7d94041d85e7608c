"""Data-parallel training over MPI (mpi4py), bit-identical to one process for any number
of ranks.

Every rank holds the whole model and the whole data, draws the same data order and takes
its share of every batch: a run of whole chunks of `GRAD_CHUNK` samples (the chunks the
convolution kernels sum their weight gradients over). The network is cut before its
first layer that cannot run on a share of the batch (a Dense, BatchNorm or Dropout
layer, usually the first Dense): from there on it is the *head*.

- the convolutional part runs on each rank's own samples; its backward pass leaves the
  weight gradient of each chunk apart (`Conv2D.grad_parts`), and the ranks exchange
  those parts (`Allgatherv`), so that every rank adds all chunks of the batch in chunk
  order, as one process's kernel does;
- the activations at the cut are gathered, and every rank runs the head (and the loss)
  on the whole batch, with the same kernels and random draws as one process: the head
  of a CNN is a small part of its work, and its results then cannot depend on how the
  batch was split.

So the weights after every step are the same bits as one process training on the same
batches, for any number of ranks (some may even hold no sample of a small last batch). A network
with a BatchNorm or Dropout among its convolutions is cut there, so the convolutions
after it run on every rank, whole: correct, but that part is not shared out. Every
exchange waits at most ``timeout`` seconds: a rank that stops
answering makes the others raise `DistributedError`, rather than hang.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from typing import TYPE_CHECKING, Any

import numpy as np

from . import metrics
from .layers import Conv2D, Dropout, Layer
from .losses import softmax
from .ops import GRAD_CHUNK, sum_parts
from .validation import check_int

if TYPE_CHECKING:
    from .augment import Augmentation
    from .model import Sequential
    from .optim import Optimizer
    from .training import EarlyStopping, FitState

DEFAULT_TIMEOUT = 300.0
SPIN_SECONDS = 0.05  # how long `wait` polls without pausing


class DistributedError(RuntimeError):
    """Distributed training cannot go on: MPI is missing, or a rank stopped answering."""


class RanksDisagree(DistributedError):
    """The ranks were started with different settings, data or weights (raised on every
    rank, before training)."""


def require_mpi() -> Any:
    """mpi4py's MPI module, or DistributedError saying how to install it."""
    try:
        from mpi4py import MPI
    except ImportError as exc:
        raise DistributedError(f"distributed training needs mpi4py and an MPI library "
                               f"(pip install 'fastcnn[mpi]'): {exc}") from None
    return MPI


def wait(request: Any, timeout: float, rank: int, what: str) -> None:
    """Wait for a non-blocking MPI request, at most `timeout` seconds; DistributedError
    after that (a rank died or hangs).

    MPI moves a non-blocking collective on only inside calls such as Test, one round of
    its algorithm at a time, so the first SPIN_SECONDS poll without pause (sleeping
    between polls made SEED-ARCH's exchange of 370 kB take 4-5 ms instead of 0.08:
    bench/README.md); then pauses grow to 1 ms, for waits that are long anyway (a slower
    rank, a hang)."""
    start = time.monotonic()
    deadline = start + timeout
    pause = 1e-5
    while not request.Test():
        now = time.monotonic()
        if now > deadline:
            raise DistributedError(f"rank {rank}: no answer from the other ranks within "
                                   f"{timeout:g} s ({what}); a rank died or hangs")
        if now - start > SPIN_SECONDS:
            time.sleep(pause)
            pause = min(2 * pause, 1e-3)


def agree_max(comm: Any, value: int, timeout: float = DEFAULT_TIMEOUT) -> int:
    """The largest of every rank's int `value`, on every rank (collective)."""
    MPI = require_mpi()
    out = np.zeros(1, dtype=np.int64)
    request = comm.Iallreduce(np.array([value], dtype=np.int64), out, op=MPI.MAX)
    wait(request, timeout, comm.Get_rank(), "agreeing to stop")
    return int(out[0])


def shard(batch: int, size: int, rank: int, chunk: int) -> tuple[int, int]:
    """Samples [lo, hi) of a batch that `rank` of `size` ranks takes: whole chunks of
    `chunk` samples, as evenly as they go (a rank may get none)."""
    chunks = -(-batch // chunk)
    return (min(rank * chunks // size * chunk, batch),
            min((rank + 1) * chunks // size * chunk, batch))


def _shardable(layer: Layer) -> bool:
    """Whether a layer can run on a share of the batch, bit for bit as on all of it:
    per-sample layers, and convolutions, whose weight gradients come in per-chunk parts.
    BatchNorm needs the whole batch's statistics, Dropout draws per sample, and Dense's
    kernels choose their algorithm by batch size."""
    if isinstance(layer, Conv2D):
        return layer.backend == "numba"
    return not layer.params and not isinstance(layer, Dropout)


def _cut(model: Sequential, training: bool) -> int:
    """Index of the first step of the model's plan that holds a layer that cannot run on
    a share of the batch (where the head begins), or the number of steps."""
    for i, step in enumerate(model._plans[training]):
        if not all(_shardable(layer) for layer in _layers(model, step)):
            return i
    return len(model._plans[training])


def _layers(model: Sequential, step: Any) -> list:
    return model.layers[step.first:step.first + step.size]


class DataParallel:
    """The ranks of an MPI communicator training one model together (see the module's
    docstring). ``fit(..., comm=...)`` makes one; its methods are collective: every rank
    calls them in the same order with the same arguments, but its own model."""

    def __init__(self, model: Sequential, comm: Any, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.MPI = require_mpi()
        if not isinstance(comm, self.MPI.Comm):
            raise TypeError(f"comm must be an mpi4py communicator, got {type(comm).__name__}")
        if not (isinstance(timeout, (int, float)) and timeout > 0 and math.isfinite(timeout)):
            raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")
        self.model, self.comm, self.timeout = model, comm, float(timeout)
        self.rank, self.size = comm.Get_rank(), comm.Get_size()
        self.chunk = GRAD_CHUNK
        self.cut = {training: _cut(model, training) for training in (True, False)}
        plan = model._plans[True]
        self.local_layers = [layer for step in plan[:self.cut[True]]
                             for layer in _layers(model, step)]
        self.convs = [layer for layer in self.local_layers if isinstance(layer, Conv2D)]
        self.parts_bytes = 0  # bytes of weight-gradient parts received in the last step
        self.comm_seconds = 0.0  # time spent in exchanges since made (not reproducible)

    # -- exchanges ---------------------------------------------------------------------
    def _wait(self, request: Any, what: str) -> None:
        wait(request, self.timeout, self.rank, what)

    def _allgather_rows(self, local: np.ndarray, counts: list[int], what: str) -> np.ndarray:
        """Concatenate every rank's rows (rank r holds counts[r] rows of local's shape)."""
        row = math.prod(local.shape[1:])
        out = np.empty((sum(counts), *local.shape[1:]), dtype=local.dtype)
        sizes = [c * row for c in counts]
        displs = [sum(sizes[:r]) for r in range(self.size)]
        start = time.perf_counter()
        request = self.comm.Iallgatherv(np.ascontiguousarray(local), [out, (sizes, displs)])
        self._wait(request, what)
        self.comm_seconds += time.perf_counter() - start
        return out

    def any(self, flag: bool) -> bool:
        """True on every rank if `flag` is true on any."""
        return bool(agree_max(self.comm, int(bool(flag)), self.timeout))

    def check_same(self, items: dict[str, bytes | str | np.ndarray]) -> None:
        """DistributedError on every rank if any rank's item differs from rank 0's
        (compared by SHA-256): settings, data and initial weights must agree."""
        names = sorted(items)
        digests = np.zeros((len(names), 32), dtype=np.uint8)
        for i, name in enumerate(names):
            value = items[name]
            if isinstance(value, str):
                value = value.encode()
            elif isinstance(value, np.ndarray):
                value = np.ascontiguousarray(value).tobytes()
            digests[i] = np.frombuffer(hashlib.sha256(value).digest(), dtype=np.uint8)
        every = self._allgather_rows(digests[None], [1] * self.size, "comparing settings")
        differ = [name for i, name in enumerate(names)
                  if any((every[r, i] != every[0, i]).any() for r in range(self.size))]
        if differ:
            raise RanksDisagree(f"the ranks differ in {', '.join(differ)}: every rank must run "
                                "the same settings on the same data")

    # -- training ----------------------------------------------------------------------
    def _counts(self, n: int, chunk: int) -> list[int]:
        return [hi - lo for lo, hi in (shard(n, self.size, r, chunk) for r in range(self.size))]

    def _forward(self, x: np.ndarray, training: bool, rng: np.random.Generator | None,
                 chunk: int) -> np.ndarray:
        """Logits of the whole batch x (raw images), on every rank: this rank's share
        through the steps before the cut, then everyone's, gathered, through the head."""
        model = self.model
        plan, cut = model._plans[training], self.cut[training]
        lo, hi = shard(len(x), self.size, self.rank, chunk)
        first = plan[cut].first if cut < len(plan) else len(model.layers)
        shape = model.layers[first - 1].output_shape if first else model.input_shape
        a = np.zeros((0, *shape), dtype=model.dtype)
        if hi > lo:
            a = model.prepare(x[lo:hi])
            for step in plan[:cut]:
                a = step.forward(a, training, rng)
        a = self._allgather_rows(a, self._counts(len(x), chunk), "gathering activations")
        for step in plan[cut:]:
            a = step.forward(a, training, rng)
        if training:
            model._trained_plan = plan
        return a

    def train_step(self, x: np.ndarray, y: np.ndarray, optimizer: Optimizer,
                   rng: np.random.Generator | None) -> float:
        """`Sequential.train_step` on the whole batch (raw images x, labels y), with the
        work shared out; returns the batch loss, the same on every rank."""
        model, plan, cut = self.model, self.model._plans[True], self.cut[True]
        rng = model._rng if rng is None else rng
        # Checked on every rank, so that none raises alone and leaves the others waiting.
        for conv in self.convs:
            if not conv.params_as_built():
                raise DistributedError(f"{conv!r}: distributed training needs its weight and "
                                       "bias as built (C-contiguous, its dtype, not replaced)")
        for conv in self.convs:
            conv.grad_parts = True
        try:
            loss = model.loss(self._forward(x, True, rng, self.chunk), y)
            dy = model.loss.backward()
            for step in reversed(plan[cut:]):
                dy = step.backward(dy, step.first > 0)
            lo, hi = shard(len(x), self.size, self.rank, self.chunk)
            if cut and hi > lo:
                dy = np.ascontiguousarray(dy[lo:hi])
                for step in reversed(plan[:cut]):
                    dy = step.backward(dy, step.first > 0)
        finally:
            for conv in self.convs:
                conv.grad_parts = False
        self._sum_parts(len(x), hi > lo)
        optimizer.step(model.parameters(), model.gradients())
        return loss

    def _sum_parts(self, n: int, have_samples: bool) -> None:
        """Exchange the convolutions' per-chunk gradients and leave each layer's `grads`
        their sum in chunk order."""
        if not self.convs:
            return
        names = [(conv, name) for conv in self.convs for name in conv.params]
        sizes = [conv.params[name].size for conv, name in names]
        chunks = -(-n // self.chunk)
        lo, hi = shard(n, self.size, self.rank, self.chunk)
        mine = -(-(hi - lo) // self.chunk)
        local = np.empty((mine, sum(sizes)))
        if have_samples:
            at = 0
            for (conv, name), size in zip(names, sizes, strict=True):
                local[:, at:at + size] = conv.grads[name].reshape(mine, size)
                at += size
        counts = [-(-c // self.chunk) for c in self._counts(n, self.chunk)]
        every = self._allgather_rows(local, counts, "exchanging gradients")
        self.parts_bytes = every.nbytes
        at = 0
        for (conv, name), size in zip(names, sizes, strict=True):
            parts = np.ascontiguousarray(every[:, at:at + size]).reshape(
                chunks, *conv.params[name].shape)
            conv.grads[name] = sum_parts(parts).astype(conv.dtype)
            at += size

    def predict(self, x: np.ndarray, batch_size: int = 1000) -> np.ndarray:
        """`Sequential.predict`, the work shared out; the same on every rank."""
        model = self.model
        batch_size = check_int(batch_size, "batch_size", 1, None)
        model._check_classifier()
        model._check_images(x, "x")
        out = [softmax(self._forward(x[i:i + batch_size], False, None, 1))
               for i in range(0, len(x), batch_size)]
        return np.concatenate(out) if out else np.zeros((0, model.output_shape[0]), model.dtype)

    def evaluate(self, x: np.ndarray, y: np.ndarray, batch_size: int = 1000) -> dict:
        """`Sequential.evaluate`, the work shared out; the same on every rank."""
        y = self.model._check_labelled(x, y, "x", "y")
        return metrics.scores(y, self.predict(x, batch_size))


def weights_bytes(model: Sequential) -> bytes:
    """The model's weights and buffers, as bytes for `check_same`."""
    return b"".join(a.tobytes() for a in model.state_arrays().values())


def fit_fingerprint(model: Sequential, x: np.ndarray, y: np.ndarray,
                    validation_data: tuple | None, optimizer: Optimizer, *, epochs: int,
                    batch_size: int, augment: Augmentation | None, seed: int | None,
                    early_stopping: EarlyStopping | None, on_progress: bool,
                    initial_state: FitState | None) -> dict[str, bytes | str | np.ndarray]:
    """What every rank of a distributed fit must agree on, for `check_same`: anything that
    changes the result or which exchanges a rank makes, and the machine code's CPU and
    versions (bits agree only on the same CPU and versions: README, *Reliability*)."""
    import llvmlite
    import llvmlite.binding as llvm
    import numba

    from . import __version__

    validation = b"" if validation_data is None else b"".join(
        np.ascontiguousarray(a).tobytes() for a in validation_data)
    return {
        "the model's architecture": json.dumps(model.get_config(), sort_keys=True)
        + repr([layer.backend for layer in model.layers]),
        "the weights": weights_bytes(model),
        "the training images": x, "the training labels": y,
        "the validation data": validation,
        "the optimizer": _optimizer_fingerprint(optimizer),
        "epochs, batch size, augmentation, seed, early stopping or on_progress": repr(
            (epochs, batch_size, augment, seed, early_stopping, on_progress)),
        "the point resumed from": repr(None if initial_state is None else (
            initial_state.epoch, initial_state.batch, initial_state.rng_state)),
        "the CPU or the versions of fastcnn, NumPy, Numba, llvmlite": repr((
            llvm.get_host_cpu_name(), llvm.get_host_cpu_features().flatten(), __version__,
            np.__version__, numba.__version__, llvmlite.__version__)),
    }


def _optimizer_fingerprint(optimizer: Optimizer) -> bytes:
    """The optimizer's type, settings and state, as bytes. A schedule counts by its config,
    or, without one, by its name and rates at a few steps (its repr may hold an address)."""
    def setting(value: object) -> object:
        if hasattr(value, "get_config"):
            return value.get_config()
        if callable(value):
            return [getattr(value, "__qualname__", type(value).__qualname__),
                    *(float(value(step)) for step in (0, 1, 10, 100, 1000, 10000))]
        return repr(value)

    settings = {k: setting(v) for k, v in sorted(vars(optimizer).items())
                if not isinstance(v, dict)}
    state = optimizer.state()
    return (json.dumps([type(optimizer).__name__, settings, sorted(state)]).encode()
            + b"".join(state[k].tobytes() for k in sorted(state)))
