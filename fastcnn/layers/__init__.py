"""Layers: thin, stateful wrappers over `fastcnn.ops` and `fastcnn.functional`.

`base.Layer`'s docstring holds the layer contract and what adding a layer touches;
`LAYERS` is how saved models find a layer's class by name.
"""

from .base import Layer
from .conv import Conv2D
from .core import Dense, Dropout, Flatten, LeakyReLU, ReLU, Sigmoid, Tanh
from .normalization import BatchNorm1D, BatchNorm2D
from .pooling import AvgPool2D, GlobalAvgPool2D, MaxPool2D

__all__ = ["LAYERS", "AvgPool2D", "BatchNorm1D", "BatchNorm2D", "Conv2D", "Dense", "Dropout",
           "Flatten", "GlobalAvgPool2D", "Layer", "LeakyReLU", "MaxPool2D", "ReLU", "Sigmoid",
           "Tanh"]

LAYERS = {cls.__name__: cls for cls in (Conv2D, ReLU, LeakyReLU, Sigmoid, Tanh, MaxPool2D,
                                         AvgPool2D, GlobalAvgPool2D, Dropout, Flatten, Dense,
                                         BatchNorm2D, BatchNorm1D)}
