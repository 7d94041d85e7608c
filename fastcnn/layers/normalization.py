"""Batch normalisation: BatchNorm2D (per channel of (C, H, W) inputs) and BatchNorm1D
(per feature of flat inputs, after a Dense)."""

from __future__ import annotations

import numpy as np

from .. import functional, ops
from .base import Layer, _as_built


class _BatchNorm(Layer):
    """Normalises with the batch's mean and (biased) variance in training and with the
    running statistics in evaluation, then scales by ``gamma`` and shifts by ``beta``
    (learnable, initialised to 1 and 0).

    ``momentum`` and ``eps`` mean what they mean in PyTorch (defaults 0.1 and 1e-5):
    running = (1 - momentum) * running + momentum * batch statistic, the running
    variance being updated with the unbiased variance. Keras' ``momentum`` is the other
    weight (its 0.99 is PyTorch's 0.01), its default eps is 1e-3, and it updates the
    moving variance with the biased variance. The running statistics are buffers: saved
    with the model, never optimised.

    In training a ReLU right after it runs in its kernel; in evaluation it folds into
    the weights of a Conv2D or Dense right before it (`fastcnn.plan`).
    """

    _RANK = 0  # dimensions of a sample

    def __init__(self, momentum: float = 0.1, eps: float = 1e-5, backend: str = "numba") -> None:
        super().__init__(backend)
        self.momentum = functional.check_real(momentum, "momentum", 0.0, 1.0)
        self.eps = functional.check_eps(eps)
        self._op = ops.BatchNormOp(backend)
        self._saved = None  # (x, y, mean, invstd, relu) of the last training pass

    _SAVED = ("_saved",)

    def compute_output_shape(self, input_shape):
        if len(input_shape) != self._RANK:
            expected = "(C, H, W)" if self._RANK == 3 else "flat (features,)"
            raise ValueError(f"{type(self).__name__} expects {expected} inputs, got shape "
                             f"{input_shape}")
        return input_shape

    def parameter_count(self, input_shape):
        return 2 * input_shape[0]

    def build(self, input_shape, rng, dtype=np.float32):
        out = super().build(input_shape, rng, dtype)
        c = input_shape[0]
        self.params = {"gamma": np.ones(c, dtype=dtype), "beta": np.zeros(c, dtype=dtype)}
        self.buffers = {"running_mean": np.zeros(c, dtype=dtype),
                        "running_var": np.ones(c, dtype=dtype)}
        return out

    def _channels_as_built(self, names: tuple[str, ...]) -> bool:
        c = self.input_shape[0]
        arrays = {**self.params, **self.buffers}
        return all(_as_built(arrays.get(name), (c,), self.dtype) for name in names)

    def forward(self, x, training=True, rng=None):
        return self.forward_relu(x, training, relu=False)

    def forward_relu(self, x: np.ndarray, training: bool = True, relu: bool = True) -> np.ndarray:
        """This layer, and a ReLU after it if relu (one kernel)."""
        self._check_input(x)
        gamma, beta = self.params["gamma"], self.params["beta"]
        if not training:
            return functional.batch_norm_inference(
                x, gamma, beta, self.buffers["running_mean"], self.buffers["running_var"],
                eps=self.eps, relu=relu, backend=self.backend)
        count = x.size // x.shape[1] if x.size else 0
        if count < 2:
            raise ValueError(f"{type(self).__name__} needs more than one value per channel "
                             f"in training, got input of shape {x.shape}")
        if _as_built(x, x.shape, self.dtype) and self._channels_as_built(("gamma", "beta")):
            y, mean, var, invstd = self._op.forward(x, gamma, beta, self.eps, relu)
        else:
            y, mean, var, invstd = functional.batch_norm(x, gamma, beta, eps=self.eps,
                                                         relu=relu, backend=self.backend)
        self._update_running(mean, var * (count / (count - 1)))
        self._saved, self._batch = (x, y, mean, invstd, relu), len(x)
        return y

    def _update_running(self, mean: np.ndarray, unbiased_var: np.ndarray) -> None:
        m = self.momentum
        for name, value in (("running_mean", mean), ("running_var", unbiased_var)):
            old = functional.check_per_channel(self.buffers[name], name, self.input_shape[0],
                                               None)
            self.buffers[name] = ((1 - m) * old.astype(np.float64) + m * value).astype(
                self.dtype)

    def backward(self, dy, need_input_grad=True):
        self._need_forward(self._saved)
        self._check_dy(dy)
        x, y, mean, invstd, relu = self._saved
        gamma = self.params["gamma"]
        if (_as_built(dy, x.shape, self.dtype) and self._channels_as_built(("gamma",))
                and isinstance(need_input_grad, bool)):
            dx, dgamma, dbeta = self._op.backward(dy, x, y, mean, invstd, gamma, relu,
                                                  need_input_grad)
        else:
            dx, dgamma, dbeta = functional.batch_norm_backward(
                dy, x, y, mean, invstd, gamma, relu=relu, need_input_grad=need_input_grad,
                backend=self.backend)
        self.grads = {"gamma": dgamma, "beta": dbeta}
        return dx

    def scale_shift(self) -> tuple[np.ndarray, np.ndarray]:
        """Evaluation's y = x * scale + shift per channel, as float64 (C,) arrays."""
        c = self.input_shape[0]
        arrays = [functional.check_per_channel({**self.params, **self.buffers}[name], name,
                                                c, None)
                  for name in ("gamma", "beta", "running_mean", "running_var")]
        return ops.batchnorm_scale_shift(*arrays, self.eps)

    def fold(self, weight: np.ndarray, bias: np.ndarray, axis: int) -> tuple[np.ndarray,
                                                                             np.ndarray]:
        """The weights of the layer before this one (its output channels on `axis` of
        weight) with this layer's evaluation folded in: one kernel instead of two."""
        scale, shift = self.scale_shift()
        shape = [1] * weight.ndim
        shape[axis] = -1
        folded = (weight.astype(np.float64) * scale.reshape(shape)).astype(self.dtype)
        return folded, (bias.astype(np.float64) * scale + shift).astype(self.dtype)

    def get_config(self):
        return {"momentum": self.momentum, "eps": self.eps}


class BatchNorm2D(_BatchNorm):
    """Batch normalisation per channel of (C, H, W) inputs: PyTorch's BatchNorm2d, Keras'
    BatchNormalization(axis=1)."""

    _RANK = 3


class BatchNorm1D(_BatchNorm):
    """Batch normalisation per feature of flat (features,) inputs: PyTorch's BatchNorm1d
    on (N, features)."""

    _RANK = 1
