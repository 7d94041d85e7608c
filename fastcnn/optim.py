"""Optimisers (SGD with momentum, Adam, AdamW) and learning-rate schedules.

An optimiser updates parameters in place. Its learning rate is a float or a
schedule: a callable from the step count (0, 1, ...) to a learning rate. Every
optimiser takes ``clip_norm``: gradients are scaled down so that their global L2 norm
(over all parameters) is at most that, as torch.nn.utils.clip_grad_norm_ does (and
Keras' ``global_clipnorm``).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence

import numpy as np

from .functional import FLOAT_DTYPES, check_bool, check_int, describe
from .kernels import optim as optim_kernels


class Constant:
    def __init__(self, lr: float) -> None:
        self.lr = _positive(lr, "lr")

    def __call__(self, step: int) -> float:
        return self.lr

    def get_config(self) -> dict:
        return {"name": "constant", "lr": self.lr}


class StepDecay:
    """lr * gamma ** (step // step_size)."""

    def __init__(self, lr: float, step_size: int, gamma: float = 0.1) -> None:
        self.lr = _positive(lr, "lr")
        self.step_size = check_int(step_size, "step_size", 1, None)
        # gamma > 1 would grow the rate without bound (and overflow a float).
        self.gamma = _number(gamma, "gamma", 0.0, 1.0, low_open=True)

    def __call__(self, step: int) -> float:
        step = check_int(step, "step", 0, None)
        return self.lr * self.gamma ** (step // self.step_size)

    def get_config(self) -> dict:
        return {"name": "step", "lr": self.lr, "step_size": self.step_size, "gamma": self.gamma}


class CosineDecay:
    """Half a cosine from lr down to final_lr over decay_steps, then final_lr."""

    def __init__(self, lr: float, decay_steps: int, final_lr: float = 0.0) -> None:
        self.lr = _positive(lr, "lr")
        self.decay_steps = check_int(decay_steps, "decay_steps", 1, None)
        self.final_lr = _number(final_lr, "final_lr", 0.0, self.lr)

    def __call__(self, step: int) -> float:
        step = check_int(step, "step", 0, None)
        t = min(step, self.decay_steps) / self.decay_steps
        return self.final_lr + 0.5 * (self.lr - self.final_lr) * (1 + math.cos(math.pi * t))

    def get_config(self) -> dict:
        return {"name": "cosine", "lr": self.lr, "decay_steps": self.decay_steps,
                "final_lr": self.final_lr}


def _number(value: object, name: str, low: float, high: float = math.inf, *,
            low_open: bool = False, high_open: bool = False) -> float:
    """A finite real number in the given range, or a TypeError/ValueError naming `name`."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(
            value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a number, got {describe(value)}")
    try:
        value = float(value)
    except OverflowError:  # a huge int
        raise ValueError(f"{name} must be a finite number, got {describe(value)}") from None
    too_low = value <= low if low_open else value < low
    too_high = value >= high if high_open else value > high
    if not math.isfinite(value) or too_low or too_high:
        lo, hi = "(" if low_open else "[", ")" if high_open or high == math.inf else "]"
        raise ValueError(f"{name} must be a finite number in {lo}{low:g}, {high:g}{hi}, "
                         f"got {value}")
    return value


def _positive(value: object, name: str) -> float:
    return _number(value, name, 0.0, low_open=True)


Schedule = Callable[[int], float]


class Optimizer:
    def __init__(self, lr: float | Schedule, clip_norm: float | None = None) -> None:
        self.schedule: Schedule = lr if callable(lr) else Constant(lr)
        self.clip_norm = None if clip_norm is None else _positive(clip_norm, "clip_norm")
        self.iterations = 0

    @property
    def lr(self) -> float:
        return self.schedule(self.iterations)

    def step(self, params: Sequence[np.ndarray], grads: Sequence[np.ndarray]) -> None:
        """Update every parameter in place from its gradient, then count the step."""
        for name, arrays in (("params", params), ("grads", grads)):
            if not isinstance(arrays, (list, tuple)):
                raise TypeError(f"{name} must be a list of arrays, got {describe(arrays)}")
        if len(params) != len(grads):
            raise ValueError(f"{len(params)} parameters but {len(grads)} gradients")
        for i, (p, g) in enumerate(zip(params, grads, strict=True)):
            # The update kernels write through p.reshape(-1): a copy would lose the update.
            if not isinstance(p, np.ndarray) or p.dtype not in FLOAT_DTYPES \
                    or not p.flags.c_contiguous or not p.flags.writeable:
                raise TypeError(f"parameter {i} must be a writable, C-contiguous float32 or "
                                f"float64 array, got {describe(p)}")
            if not isinstance(g, np.ndarray) or g.dtype.kind not in "fiu":
                raise TypeError(f"gradient {i} must be a real-valued array, got {describe(g)}")
            if p.shape != g.shape:
                raise ValueError(f"parameter {i} has shape {p.shape}, its gradient {g.shape}")
        lr = self.lr
        real = isinstance(lr, (int, float, np.integer, np.floating))
        if not real or isinstance(lr, (bool, np.bool_)) or not math.isfinite(lr) or lr < 0:
            raise ValueError(f"the learning rate at step {self.iterations} is {describe(lr)}; "
                             "it must be a finite number >= 0")
        if self.clip_norm is not None:
            grads = clipped(grads, self.clip_norm)
        # One kernel call per dtype: the kernels take a tuple of same-dtype arrays.
        for dtype in dict.fromkeys(p.dtype for p in params):
            index = [i for i, p in enumerate(params) if p.dtype == dtype]
            # Plain-ndarray views of the same memory: Numba refuses subclasses such as
            # np.ma.MaskedArray, and a copy would lose the update.
            flat = tuple(np.asarray(params[i]).reshape(-1) for i in index)
            flat_grads = tuple(np.ascontiguousarray(grads[i], dtype=dtype).reshape(-1)
                               for i in index)
            self._update(index, [params[i] for i in index], flat, flat_grads, float(lr),
                         dtype.type)
        self.iterations += 1

    def _update(self, index: list[int], params: list[np.ndarray], flat: tuple[np.ndarray, ...],
                grads: tuple[np.ndarray, ...], lr: float, t: type) -> None:
        """Update parameter index[k] (params[k], flat view flat[k]) from grads[k] in place;
        t is their dtype's scalar type."""
        raise NotImplementedError

    def _slot(self, slots: dict[int, np.ndarray], i: int, p: np.ndarray,
              shape: tuple[int, ...]) -> np.ndarray:
        """The state array for parameter i, created on first use, checked on every use."""
        a = slots.get(i)
        if a is None:
            a = slots[i] = np.zeros(shape, p.dtype)
        # The kernels index the state with the parameter's indices: a mismatch (another
        # model's parameters, a bad load_state) would read and write out of bounds.
        if a.shape != shape or a.dtype != p.dtype or not a.flags.c_contiguous:
            raise ValueError(f"optimizer state for parameter {i} is {a.dtype}{list(a.shape)}, "
                             f"the parameter {p.dtype}{list(p.shape)}: an optimizer instance "
                             "serves one set of parameters")
        return a

    def state(self) -> dict[str, np.ndarray]:
        """Arrays that, with `iterations`, let training resume exactly."""
        return {}

    def load_state(self, state: dict[str, np.ndarray], iterations: int,
                   params: Sequence[np.ndarray] | None = None) -> None:
        """Restore `state()` and `iterations`; with `params`, check the arrays fit them."""
        self.iterations = check_int(iterations, "iterations", 0, None)
        if not isinstance(state, dict):
            raise TypeError(f"state must be a dict of arrays, got {describe(state)}")
        for key, a in state.items():
            if not isinstance(a, np.ndarray) or a.dtype not in FLOAT_DTYPES:
                raise TypeError(f"optimizer state {key!r} must be a float array, "
                                f"got {describe(a)}")
            if not np.all(np.isfinite(a)):
                raise ValueError(f"optimizer state {key!r} holds NaN or infinite values")

    def _load_slots(self, state: dict[str, np.ndarray], prefixes: tuple[str, ...],
                    params: Sequence[np.ndarray] | None,
                    shape_of: Callable[[np.ndarray], tuple[int, ...]]) -> list[dict]:
        """Split state into one {index: array} dict per prefix, checked against params."""
        slots: list[dict[int, np.ndarray]] = [{} for _ in prefixes]
        pattern = re.compile(rf"({'|'.join(map(re.escape, prefixes))})\.(\d{{1,9}})")
        for key, a in state.items():
            match = pattern.fullmatch(key) if isinstance(key, str) else None
            if match is None:
                raise ValueError(f"unexpected {type(self).__name__} state array {key!r}")
            slots[prefixes.index(match[1])][int(match[2])] = np.array(a, order="C")
        if params is not None:
            # Every step updates every parameter, so the state covers all of them or none.
            want = set(range(len(params))) if self.iterations else set()
            for prefix, got in zip(prefixes, slots, strict=True):
                if set(got) != want:
                    raise ValueError(f"{type(self).__name__} state after {self.iterations} "
                                     f"steps needs {prefix}.0..{len(params) - 1}, got "
                                     f"{sorted(f'{prefix}.{i}' for i in got)}")
                for i, a in got.items():
                    p = params[i]
                    if a.shape != shape_of(p) or a.dtype != p.dtype:
                        raise ValueError(f"optimizer state {prefix}.{i} is {a.dtype}"
                                         f"{list(a.shape)}, the parameter needs {p.dtype}"
                                         f"{list(shape_of(p))}")
        return slots


def clipped(grads: Sequence[np.ndarray], max_norm: float) -> Sequence[np.ndarray]:
    """grads scaled by max_norm / (norm + 1e-6) where their global L2 norm exceeds
    max_norm, as PyTorch's clip_grad_norm_; the norm is summed in float64 in parameter
    order, so the same gradients always give the same bits."""
    norm = math.sqrt(sum(float(np.dot(g.reshape(-1).astype(np.float64),
                                      g.reshape(-1).astype(np.float64))) for g in grads))
    if not norm > max_norm:  # also a NaN norm: the step then fails as it would unclipped
        return grads
    scale = max_norm / (norm + 1e-6)
    return [(g * scale).astype(g.dtype, copy=False) for g in grads]


class SGD(Optimizer):
    """Stochastic gradient descent with optional (Nesterov) momentum and weight decay."""

    def __init__(self, lr: float | Schedule = 0.01, momentum: float = 0.0,
                 nesterov: bool = False, weight_decay: float = 0.0,
                 clip_norm: float | None = None) -> None:
        super().__init__(lr, clip_norm)
        self.momentum = _number(momentum, "momentum", 0.0, 1.0, high_open=True)
        self.nesterov = check_bool(nesterov, "nesterov")
        self.weight_decay = _number(weight_decay, "weight_decay", 0.0)
        self.velocity: dict[int, np.ndarray] = {}

    def _velocity_shape(self, p: np.ndarray) -> tuple[int, ...]:
        return p.shape if self.momentum else (0,)  # the kernel ignores it without momentum

    def _update(self, index, params, flat, grads, lr, t):
        velocity = tuple(self._slot(self.velocity, i, p, self._velocity_shape(p)).reshape(-1)
                         for i, p in zip(index, params, strict=True))
        optim_kernels.sgd_update(flat, grads, velocity, t(lr), t(self.momentum),
                                 t(self.weight_decay), self.nesterov)

    def state(self):
        return {f"velocity.{i}": v for i, v in self.velocity.items()}

    def load_state(self, state, iterations, params=None):
        super().load_state(state, iterations, params)
        (self.velocity,) = self._load_slots(state, ("velocity",), params, self._velocity_shape)


class Adam(Optimizer):
    """Adam (Kingma & Ba) with bias correction."""

    def __init__(self, lr: float | Schedule = 1e-3, beta1: float = 0.9, beta2: float = 0.999,
                 eps: float = 1e-8, clip_norm: float | None = None) -> None:
        super().__init__(lr, clip_norm)
        self.beta1 = _number(beta1, "beta1", 0.0, 1.0, high_open=True)
        self.beta2 = _number(beta2, "beta2", 0.0, 1.0, high_open=True)
        self.eps = _positive(eps, "eps")
        self.m: dict[int, np.ndarray] = {}
        self.v: dict[int, np.ndarray] = {}

    def _update(self, index, params, flat, grads, lr, t):
        m = tuple(self._slot(self.m, i, p, p.shape).reshape(-1)
                  for i, p in zip(index, params, strict=True))
        v = tuple(self._slot(self.v, i, p, p.shape).reshape(-1)
                  for i, p in zip(index, params, strict=True))
        n = self.iterations + 1
        step = lr * math.sqrt(1 - self.beta2**n) / (1 - self.beta1**n)
        optim_kernels.adam_update(flat, grads, m, v, t(step), t(self.beta1), t(self.beta2),
                                  t(self.eps), t(1.0 - lr * self._weight_decay))

    _weight_decay = 0.0  # AdamW's

    def state(self):
        return {**{f"m.{i}": a for i, a in self.m.items()},
                **{f"v.{i}": a for i, a in self.v.items()}}

    def load_state(self, state, iterations, params=None):
        super().load_state(state, iterations, params)
        self.m, self.v = self._load_slots(state, ("m", "v"), params, lambda p: p.shape)


class AdamW(Adam):
    """Adam with decoupled weight decay (Loshchilov & Hutter), as PyTorch's AdamW: each
    step first multiplies every parameter by 1 - lr * weight_decay, then takes the Adam
    step (Keras' AdamW does the same, with weight_decay 0.004 by default)."""

    def __init__(self, lr: float | Schedule = 1e-3, beta1: float = 0.9, beta2: float = 0.999,
                 eps: float = 1e-8, weight_decay: float = 0.01,
                 clip_norm: float | None = None) -> None:
        super().__init__(lr, beta1, beta2, eps, clip_norm)
        self._weight_decay = _number(weight_decay, "weight_decay", 0.0)

    @property
    def weight_decay(self) -> float:
        return self._weight_decay
