"""fastcnn: a CPU CNN library whose convolution and pooling run as Numba kernels."""

from . import functional
from .augment import Augmentation
from .data import CLASS_NAMES, load_dataset, load_fashion_mnist
from .layers import (
    AvgPool2D,
    BatchNorm1D,
    BatchNorm2D,
    Conv2D,
    Dense,
    Dropout,
    Flatten,
    GlobalAvgPool2D,
    Layer,
    LeakyReLU,
    MaxPool2D,
    ReLU,
    Sigmoid,
    Tanh,
)
from .losses import SoftmaxCrossEntropy, softmax
from .model import EarlyStopping, History, Sequential, TrainingDiverged
from .models import seed_arch
from .optim import SGD, Adam, AdamW, Constant, CosineDecay, StepDecay
from .threads import set_threads

__version__ = "0.1.0"

load_model = Sequential.load

__all__ = [
    "Adam", "AdamW", "Augmentation", "AvgPool2D", "BatchNorm1D", "BatchNorm2D", "CLASS_NAMES",
    "Constant", "Conv2D", "CosineDecay", "Dense", "Dropout", "EarlyStopping", "Flatten",
    "functional", "GlobalAvgPool2D", "History", "Layer", "LeakyReLU", "load_dataset",
    "load_fashion_mnist", "load_model", "MaxPool2D", "ReLU", "seed_arch", "Sequential",
    "set_threads", "SGD", "Sigmoid", "softmax", "SoftmaxCrossEntropy", "StepDecay", "Tanh",
    "TrainingDiverged",
]
