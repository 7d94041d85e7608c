"""Optimisers (SGD with momentum, Adam) and learning-rate schedules.

An optimiser updates parameters in place. Its learning rate is a float or a
schedule: a callable from the step count (0, 1, ...) to a learning rate.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

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
        if step_size < 1:
            raise ValueError(f"step_size must be >= 1, got {step_size}")
        self.step_size, self.gamma = int(step_size), float(gamma)

    def __call__(self, step: int) -> float:
        return self.lr * self.gamma ** (step // self.step_size)

    def get_config(self) -> dict:
        return {"name": "step", "lr": self.lr, "step_size": self.step_size, "gamma": self.gamma}


class CosineDecay:
    """Half a cosine from lr down to final_lr over decay_steps, then final_lr."""

    def __init__(self, lr: float, decay_steps: int, final_lr: float = 0.0) -> None:
        self.lr = _positive(lr, "lr")
        if decay_steps < 1:
            raise ValueError(f"decay_steps must be >= 1, got {decay_steps}")
        self.decay_steps, self.final_lr = int(decay_steps), float(final_lr)

    def __call__(self, step: int) -> float:
        t = min(step, self.decay_steps) / self.decay_steps
        return self.final_lr + 0.5 * (self.lr - self.final_lr) * (1 + math.cos(math.pi * t))

    def get_config(self) -> dict:
        return {"name": "cosine", "lr": self.lr, "decay_steps": self.decay_steps,
                "final_lr": self.final_lr}


def _positive(value: float, name: str) -> float:
    value = float(value)
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a positive number, got {value}")
    return value


Schedule = Callable[[int], float]


class Optimizer:
    def __init__(self, lr: float | Schedule) -> None:
        self.schedule: Schedule = lr if callable(lr) else Constant(lr)
        self.iterations = 0

    @property
    def lr(self) -> float:
        return self.schedule(self.iterations)

    def step(self, params: list[np.ndarray], grads: list[np.ndarray]) -> None:
        """Update every parameter in place from its gradient, then count the step."""
        if len(params) != len(grads):
            raise ValueError(f"{len(params)} parameters but {len(grads)} gradients")
        lr = self.lr
        for i, (p, g) in enumerate(zip(params, grads, strict=True)):
            if p.shape != g.shape:
                raise ValueError(f"parameter {i} has shape {p.shape}, its gradient {g.shape}")
            self._update(i, p, g.astype(p.dtype, copy=False), lr)
        self.iterations += 1

    def _update(self, i: int, p: np.ndarray, g: np.ndarray, lr: float) -> None:
        raise NotImplementedError

    def state(self) -> dict[str, np.ndarray]:
        """Arrays that, with `iterations`, let training resume exactly."""
        return {}

    def load_state(self, state: dict[str, np.ndarray], iterations: int) -> None:
        self.iterations = int(iterations)


class SGD(Optimizer):
    """Stochastic gradient descent with optional (Nesterov) momentum and weight decay."""

    def __init__(self, lr: float | Schedule = 0.01, momentum: float = 0.0,
                 nesterov: bool = False, weight_decay: float = 0.0) -> None:
        super().__init__(lr)
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}")
        if weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
        self.momentum, self.nesterov, self.weight_decay = float(momentum), nesterov, weight_decay
        self.velocity: dict[int, np.ndarray] = {}

    def _update(self, i, p, g, lr):
        v = self.velocity.get(i)
        if v is None:
            v = self.velocity[i] = np.zeros_like(p) if self.momentum else np.zeros(0, p.dtype)
        t = p.dtype.type
        optim_kernels.sgd_update(p.reshape(-1), np.ascontiguousarray(g).reshape(-1),
                                 v.reshape(-1), t(lr), t(self.momentum),
                                 t(self.weight_decay), self.nesterov)

    def state(self):
        return {f"velocity.{i}": v for i, v in self.velocity.items()}

    def load_state(self, state, iterations):
        super().load_state(state, iterations)
        self.velocity = {int(k.split(".")[1]): v.copy() for k, v in state.items()
                         if k.startswith("velocity.")}


class Adam(Optimizer):
    """Adam (Kingma & Ba) with bias correction."""

    def __init__(self, lr: float | Schedule = 1e-3, beta1: float = 0.9, beta2: float = 0.999,
                 eps: float = 1e-8) -> None:
        super().__init__(lr)
        for name, b in (("beta1", beta1), ("beta2", beta2)):
            if not 0.0 <= b < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {b}")
        self.beta1, self.beta2, self.eps = float(beta1), float(beta2), float(eps)
        self.m: dict[int, np.ndarray] = {}
        self.v: dict[int, np.ndarray] = {}

    def _update(self, i, p, g, lr):
        if i not in self.m:
            self.m[i], self.v[i] = np.zeros_like(p), np.zeros_like(p)
        n = self.iterations + 1
        step = lr * math.sqrt(1 - self.beta2**n) / (1 - self.beta1**n)
        t = p.dtype.type
        optim_kernels.adam_update(p.reshape(-1), np.ascontiguousarray(g).reshape(-1),
                                  self.m[i].reshape(-1), self.v[i].reshape(-1), t(step),
                                  t(self.beta1), t(self.beta2), t(self.eps))

    def state(self):
        return {**{f"m.{i}": a for i, a in self.m.items()},
                **{f"v.{i}": a for i, a in self.v.items()}}

    def load_state(self, state, iterations):
        super().load_state(state, iterations)
        self.m = {int(k[2:]): a.copy() for k, a in state.items() if k.startswith("m.")}
        self.v = {int(k[2:]): a.copy() for k, a in state.items() if k.startswith("v.")}
