"""The networks of the performance suite (issue 15), in fastcnn and as PyTorch twins.

Each network is written once, as a fastcnn `Sequential`; `torch_twin` builds the same
layers in PyTorch from its layer configs, with the same initial weights. Every conv is
followed by a ReLU; 'same' keeps the spatial size; Dense 10 at the end; softmax
cross-entropy. Only SEED-ARCH trains on real images: the others run on synthetic data
of their input shape (`synthetic`), as speed does not depend on the values.

- seed_arch: 1x28x28 -> Conv 6@5x5 same -> Conv 6@5x5 same -> MaxPool 2 -> Dense 100 ->
  Dense 10.
- lenet5: 1x28x28 -> Conv 6@5x5 pad 2 -> MaxPool 2 -> Conv 16@5x5 valid -> MaxPool 2 ->
  Dense 120 -> Dense 84 -> Dense 10.
- keras_mnist: Keras' "simple MNIST convnet" without its dropout: 1x28x28 -> Conv
  32@3x3 valid -> MaxPool 2 -> Conv 64@3x3 valid -> MaxPool 2 -> Dense 10.
- cifar_vgg: 3x32x32 -> Conv 32@3x3 same x2 -> MaxPool 2 -> Conv 64@3x3 same x2 ->
  MaxPool 2 -> Dense 128 -> Dense 10.
- strided: 3x32x32 -> Conv 16@5x5 stride 2 pad 2 -> Conv 32@3x3 stride 2 pad 1 -> Conv
  64@3x3 stride 2 pad 1 -> Dense 10 (every downsampling by a stride-2 convolution).
"""

from __future__ import annotations

import numpy as np

import fastcnn as fc

CLASSES = 10


def _conv(filters: int, size: int, **kw) -> fc.Conv2D:
    return fc.Conv2D(filters, size, activation="relu", **kw)


def _head(*units: int) -> list:
    dense = [fc.Dense(u, activation="relu") for u in units]
    return [fc.Flatten(), *dense, fc.Dense(CLASSES, kernel_initializer="glorot_uniform")]


def seed_arch(seed: int = 0) -> fc.Sequential:
    return fc.seed_arch(seed)


def lenet5(seed: int = 0) -> fc.Sequential:
    return fc.Sequential([_conv(6, 5, padding=2), fc.MaxPool2D(2), _conv(16, 5),
                          fc.MaxPool2D(2), *_head(120, 84)], input_shape=(1, 28, 28),
                         seed=seed)


def keras_mnist(seed: int = 0) -> fc.Sequential:
    return fc.Sequential([_conv(32, 3), fc.MaxPool2D(2), _conv(64, 3), fc.MaxPool2D(2),
                          *_head()], input_shape=(1, 28, 28), seed=seed)


def cifar_vgg(seed: int = 0) -> fc.Sequential:
    return fc.Sequential([_conv(32, 3, padding="same"), _conv(32, 3, padding="same"),
                          fc.MaxPool2D(2), _conv(64, 3, padding="same"),
                          _conv(64, 3, padding="same"), fc.MaxPool2D(2), *_head(128)],
                         input_shape=(3, 32, 32), seed=seed)


def strided(seed: int = 0) -> fc.Sequential:
    return fc.Sequential([_conv(16, 5, stride=2, padding=2), _conv(32, 3, stride=2, padding=1),
                          _conv(64, 3, stride=2, padding=1), *_head()],
                         input_shape=(3, 32, 32), seed=seed)


ARCHS = {"seed_arch": seed_arch, "lenet5": lenet5, "keras_mnist": keras_mnist,
         "cifar_vgg": cifar_vgg, "strided": strided}


def build(arch: str, seed: int = 0) -> fc.Sequential:
    if arch not in ARCHS:
        raise ValueError(f"unknown arch {arch!r}; choose from {', '.join(ARCHS)}")
    return ARCHS[arch](seed)


def synthetic(arch: str, n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """n standard-normal float32 images of the arch's input shape and int64 labels."""
    rng = np.random.default_rng(seed)
    shape = build(arch).input_shape
    x = rng.standard_normal((n, *shape), dtype=np.float32)
    return x, rng.integers(0, CLASSES, n).astype(np.int64)


def torch_twin(model: fc.Sequential):
    """The same layers in PyTorch (NCHW), float32, starting from the model's weights."""
    import torch
    from torch import nn

    layers, channels = [], model.input_shape[0]
    for layer in model.layers:
        cfg, kind = layer.get_config(), type(layer).__name__
        if kind == "Conv2D":
            padding = cfg["padding"]
            conv = nn.Conv2d(channels, cfg["filters"], tuple(cfg["kernel_size"]),
                             stride=tuple(cfg["stride"]),
                             padding=padding if isinstance(padding, str) else tuple(padding))
            with torch.no_grad():
                conv.weight.copy_(torch.from_numpy(layer.params["weight"]))
                conv.bias.copy_(torch.from_numpy(layer.params["bias"]))
            layers.append(conv)
            channels = cfg["filters"]
        elif kind == "MaxPool2D":
            layers.append(nn.MaxPool2d(tuple(cfg["pool_size"]), tuple(cfg["stride"])))
        elif kind == "Flatten":
            layers.append(nn.Flatten())
        elif kind == "Dense":
            weight = layer.params["weight"]  # (in, out); PyTorch keeps (out, in)
            dense = nn.Linear(*weight.shape)
            with torch.no_grad():
                dense.weight.copy_(torch.from_numpy(np.ascontiguousarray(weight.T)))
                dense.bias.copy_(torch.from_numpy(layer.params["bias"]))
            layers.append(dense)
        else:
            raise ValueError(f"torch_twin: no PyTorch twin for {kind}")
        if cfg.get("activation") == "relu":
            layers.append(nn.ReLU())
        elif cfg.get("activation") is not None:
            raise ValueError(f"torch_twin: activation {cfg['activation']!r} not supported")
    return nn.Sequential(*layers)
