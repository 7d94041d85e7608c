"""Layers: thin, stateful wrappers that validate, run a prepared operation (`fastcnn.ops`)
or call `fastcnn.functional`, and keep what the backward pass needs. Shapes exclude the
batch axis unless stated.

The layer contract (what `Sequential`, the optimisers and saving rely on):

- ``build(input_shape, rng, dtype)`` allocates the parameters (drawn from ``rng``) and
  buffers and prepares the layer's operations for that shape; it returns the output
  shape. ``compute_output_shape`` and ``parameter_count`` answer for a shape without
  allocating (the model checks sizes before building).
- ``params``: trainable arrays, optimised and saved; ``grads``: the same keys, filled by
  ``backward``; ``buffers``: arrays saved with the model but never optimised (running
  statistics).
- ``forward(x, training, rng)``: ``rng`` is the model's generator, for layers that draw
  random numbers in training (its state is checkpointed, so a resumed run draws the
  same); ``backward(dy, need_input_grad)`` returns dx, or None when not needed.
- ``get_config()``: the constructor's arguments, as JSON values.

Adding a layer (BatchNorm2D, say) touches: a module of this package for the class, and
`LAYERS` in its `__init__.py` (how saved models find it by name); its kernels in a
module of `kernels/` with NumPy oracles of the same names and arguments in
`fastcnn/reference.py` and `fastcnn/naive.py`; an op in `fastcnn/ops.py` (the one call
site of its kernels) and validated functions in `fastcnn/functional.py`; and, if it
runs fused with the layer before it, one entry in `fastcnn/plan.py`'s `FUSIONS`.
Nothing in the model, the optimisers, saving or checkpointing changes.
"""

from __future__ import annotations

import numpy as np

from .. import ops
from ..initializers import INITIALIZERS


class Layer:
    """Base class. A layer is built once for an input shape, then runs forward/backward."""

    def __init__(self, backend: str = "numba") -> None:
        ops.backend_module(backend)  # validates the name
        self.backend = backend
        self.params: dict[str, np.ndarray] = {}
        self.buffers: dict[str, np.ndarray] = {}
        self.grads: dict[str, np.ndarray] = {}
        self.input_shape: tuple[int, ...] | None = None
        self.output_shape: tuple[int, ...] | None = None
        self.dtype = np.dtype(np.float32)
        self._batch = 0  # samples in the last training forward pass

    def build(self, input_shape: tuple[int, ...], rng: np.random.Generator,
              dtype: np.dtype = np.float32) -> tuple[int, ...]:
        self.dtype = np.dtype(dtype)
        self.input_shape = tuple(int(s) for s in input_shape)
        self.output_shape = self.compute_output_shape(self.input_shape)
        return self.output_shape

    def compute_output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        return input_shape

    def parameter_count(self, input_shape: tuple[int, ...]) -> int:
        """Elements of the parameters `build` would allocate for input_shape."""
        return 0

    def forward(self, x: np.ndarray, training: bool = True,
                rng: np.random.Generator | None = None) -> np.ndarray:
        raise NotImplementedError

    def backward(self, dy: np.ndarray, need_input_grad: bool = True) -> np.ndarray | None:
        """Fill `grads` and return dL/dinput (None allowed when not need_input_grad)."""
        raise NotImplementedError

    def get_config(self) -> dict:
        return {}

    # The attributes that hold what the last training pass saved for backward.
    _SAVED: tuple[str, ...] = ()

    def release(self) -> None:
        """Forget what the last training pass saved: backward then refuses to run, and
        the activations can be freed. (A fused step calls it on the layer it stands in
        for, whose own state would otherwise be an older pass's.)"""
        for name in self._SAVED:
            setattr(self, name, None)

    def _check_input(self, x: np.ndarray) -> None:
        if self.input_shape is None:
            raise RuntimeError(f"{type(self).__name__} is not built; put it in a Sequential")
        if not isinstance(x, np.ndarray) or x.ndim != len(self.input_shape) + 1 \
                or x.shape[1:] != self.input_shape:
            shape = getattr(x, "shape", type(x).__name__)
            raise ValueError(
                f"{type(self).__name__} expects input of shape (N, "
                f"{', '.join(map(str, self.input_shape))}), got {shape}"
            )
        if x.dtype != self.dtype:
            raise TypeError(f"{type(self).__name__} expects {self.dtype} input, got {x.dtype}")

    def _check_dy(self, dy: np.ndarray, output_shape: tuple[int, ...] | None = None,
                  who: str | None = None) -> None:
        """dy must match the output of the last training forward pass exactly (of
        output_shape per sample, for a fused pass; `who` names the layer in errors)."""
        expected = (self._batch, *(self.output_shape if output_shape is None else output_shape))
        who = who or type(self).__name__
        if not isinstance(dy, np.ndarray) or dy.shape != expected:
            shape = getattr(dy, "shape", type(dy).__name__)
            raise ValueError(f"{who}.backward expects dy of shape {expected}, got {shape}")
        if dy.dtype != self.dtype:
            raise TypeError(f"{who}.backward expects {self.dtype} dy, got {dy.dtype}")

    def _is_as_built(self, x: np.ndarray) -> bool:
        """Whether x and the parameters are exactly as built, so that the layer's prepared
        operation may run on them unchecked (never, for a layer without one)."""
        return False

    def _backward_is_as_built(self, dy: np.ndarray, need_input_grad: object) -> bool:
        """`_is_as_built` for the saved input, with a plain dy and a plain bool flag."""
        return (self._is_as_built(self._x) and _as_built(dy, dy.shape, self.dtype)
                and isinstance(need_input_grad, bool))

    def _need_forward(self, saved: object) -> None:
        if saved is None:
            raise RuntimeError(
                f"{type(self).__name__}.backward called before forward(training=True)")

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({args})"


def _as_built(a: object, shape: tuple[int, ...], dtype: np.dtype) -> bool:
    """True if `a` is a plain, writable, C-contiguous array of exactly this shape and dtype.

    The layers then run the operations they prepared when built. Anything
    else (a parameter someone replaced, a strided view, an empty batch) goes through
    `fastcnn.functional`, whose checks copy what they can and name what they cannot: the
    same results and the same errors, at the price of those checks on every call (a few
    percent of a training step: bench/README.md).
    """
    return (type(a) is np.ndarray and a.shape == shape and a.dtype == dtype
            and a.flags.c_contiguous and a.flags.writeable)


ACTIVATION_NAMES = (None, "relu", "leaky_relu", "sigmoid", "tanh")


def _activation(name: str | None) -> str | None:
    if name not in ACTIVATION_NAMES:
        raise ValueError(f"activation must be one of {ACTIVATION_NAMES}, got {name!r}")
    return name


def _unfused_activation(name: str | None, backend: str) -> ops.ActivationOp | None:
    """The op a Conv2D or Dense runs after its kernel for ``activation=name``: None for
    no activation and for relu, which the kernels fuse. leaky_relu's slope is 0.01, as
    PyTorch's default (Keras 3's is 0.2); use a LeakyReLU layer for another."""
    return None if name in (None, "relu") else ops.ActivationOp(backend, name)


def _initializer(name: str) -> str:
    if name not in INITIALIZERS:
        raise ValueError(f"kernel_initializer must be one of {INITIALIZERS}, got {name!r}")
    return name
