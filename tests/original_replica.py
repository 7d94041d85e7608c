"""Plain NumPy replica of the from-scratch, per-sample CNN tutorial's classes.

Written from the tutorial's description as the oracle for ``fastcnn.compat``:
per-region Python loops, float64, ``np.random`` initialisation, plain SGD.
Deliberately slow and literal; do not optimise it.
"""

# The tutorial uses the global np.random state.
# ruff: noqa: NPY002

from __future__ import annotations

import numpy as np
from tqdm import tqdm

from fastcnn.metrics import accuracy, macro_f1


class ConvLayer:
    """'Same' convolution with untied bias, padded with the constant ``padding``."""

    def __init__(self, input_shape, kernel_size=5, num_kernels=6, padding=0):
        depth, height, width = input_shape
        self.input_shape = tuple(input_shape)
        self.kernel_size = kernel_size
        self.num_kernels = num_kernels
        self.padding = padding
        self.pad = kernel_size // 2
        padded_h = height + 2 * self.pad
        padded_w = width + 2 * self.pad
        self.kernels = np.random.randn(num_kernels, depth, kernel_size, kernel_size) / (
            kernel_size * kernel_size
        )
        self.bias = np.random.randn(num_kernels, height, width) / (padded_h * padded_w)

    def iterate_regions(self, image):
        k = self.kernel_size
        _, h, w = image.shape
        for i in range(h - k + 1):
            for j in range(w - k + 1):
                yield image[:, i : i + k, j : j + k], i, j

    def forward(self, input):
        p = self.pad
        self.last_input = np.pad(
            input, ((0, 0), (p, p), (p, p)), mode="constant", constant_values=self.padding
        )
        _, h, w = input.shape
        output = np.zeros((self.num_kernels, h, w))
        for region, i, j in self.iterate_regions(self.last_input):
            output[:, i, j] = np.sum(region * self.kernels, axis=(1, 2, 3))
        return output + self.bias

    def backprop(self, d_L_d_out, learn_rate):
        k = self.kernel_size
        d_L_d_kernels = np.zeros(self.kernels.shape)
        d_L_d_input = np.zeros(self.last_input.shape)
        for region, i, j in self.iterate_regions(self.last_input):
            for f in range(self.num_kernels):
                d_L_d_kernels[f] += d_L_d_out[f, i, j] * region
                d_L_d_input[:, i : i + k, j : j + k] += d_L_d_out[f, i, j] * self.kernels[f]
        self.kernels -= learn_rate * d_L_d_kernels
        self.bias -= learn_rate * d_L_d_out
        p = self.pad
        _, h, w = d_L_d_input.shape
        return d_L_d_input[:, p : h - p, p : w - p]


class ReLU:
    def forward(self, input):
        self.last_input = input
        return np.maximum(0, input)

    def backprop(self, d_L_d_out):
        return d_L_d_out * (self.last_input > 0)


class MaxPool:
    """Non-overlapping max pooling; on ties every maximum gets the gradient."""

    def __init__(self, pool_size=2):
        self.pool_size = pool_size

    def iterate_regions(self, image):
        s = self.pool_size
        _, h, w = image.shape
        for i in range(h // s):
            for j in range(w // s):
                yield image[:, i * s : (i + 1) * s, j * s : (j + 1) * s], i, j

    def forward(self, input):
        self.last_input = input
        s = self.pool_size
        d, h, w = input.shape
        output = np.zeros((d, h // s, w // s))
        for region, i, j in self.iterate_regions(input):
            output[:, i, j] = np.amax(region, axis=(1, 2))
        return output

    def backprop(self, d_L_d_out):
        s = self.pool_size
        d_L_d_input = np.zeros(self.last_input.shape)
        for region, i, j in self.iterate_regions(self.last_input):
            d, h, w = region.shape
            amax = np.amax(region, axis=(1, 2))
            for i2 in range(h):
                for j2 in range(w):
                    for f2 in range(d):
                        if region[f2, i2, j2] == amax[f2]:
                            d_L_d_input[f2, i * s + i2, j * s + j2] = d_L_d_out[f2, i, j]
        return d_L_d_input


class FeedForward:
    def __init__(self, input_size, output_size):
        self.weights = np.random.randn(input_size, output_size) / input_size
        self.bias = np.random.randn(output_size) / output_size

    def forward(self, input):
        self.last_input_shape = input.shape
        input = input.flatten()
        self.last_input = input
        return np.dot(input, self.weights) + self.bias

    def backprop(self, d_L_d_out, learn_rate):
        d_L_d_w = self.last_input[np.newaxis].T @ d_L_d_out[np.newaxis]
        d_L_d_input = self.weights @ d_L_d_out
        self.weights -= learn_rate * d_L_d_w
        self.bias -= learn_rate * d_L_d_out
        return d_L_d_input.reshape(self.last_input_shape)


class Softmax:
    def __init__(self, input_len, nodes):
        self.weights = np.random.randn(input_len, nodes) / input_len
        self.biases = np.random.randn(nodes) / nodes

    def forward(self, input):
        self.last_input_shape = input.shape
        input = input.flatten()
        self.last_input = input
        totals = np.dot(input, self.weights) + self.biases
        self.last_totals = totals
        exp = np.exp(totals)
        return exp / np.sum(exp, axis=0)

    def backprop(self, d_L_d_out, learn_rate):
        for i, gradient in enumerate(d_L_d_out):
            if gradient == 0:
                continue
            t_exp = np.exp(self.last_totals)
            S = np.sum(t_exp)
            d_out_d_t = -t_exp[i] * t_exp / (S**2)
            d_out_d_t[i] = t_exp[i] * (S - t_exp[i]) / (S**2)
            d_L_d_t = gradient * d_out_d_t
            d_L_d_w = self.last_input[np.newaxis].T @ d_L_d_t[np.newaxis]
            d_L_d_inputs = self.weights @ d_L_d_t
            self.weights -= learn_rate * d_L_d_w
            self.biases -= learn_rate * d_L_d_t
            return d_L_d_inputs.reshape(self.last_input_shape)


def preprocess(data):
    n, h, w = data.shape
    return data.reshape(n, 1, h, w)


class SimpleCNN:
    def __init__(self, layers):
        self.layers = layers

    def forward(self, image):
        out = image / 255 - 0.5
        for layer in self.layers:
            out = layer.forward(out)
        return out

    def backprop(self, gradient, learn_rate):
        for layer in reversed(self.layers):
            if isinstance(layer, (ConvLayer, FeedForward, Softmax)):
                gradient = layer.backprop(gradient, learn_rate)
            else:
                gradient = layer.backprop(gradient)
        return gradient

    def train(self, trainset, trainlabels, devset, devlabels, epochs, learn_rate):
        for epoch in range(epochs):
            permutation = np.random.permutation(len(trainset))
            train_data = trainset[permutation]
            train_labels = trainlabels[permutation]
            loss = 0.0
            samples = zip(train_data, train_labels, strict=True)
            for im, label in tqdm(samples, total=len(train_data)):
                out = self.forward(im)
                loss += -np.log(out[label])
                gradient = np.zeros(len(out))
                gradient[label] = -1 / out[label]
                self.backprop(gradient, learn_rate)
            print(f"Epoch {epoch + 1}: average loss {loss / len(train_data):.4f}")
            acc, f1 = self.predict(devset, devlabels, 10)
            print(f"dev accuracy {acc:.4f}, macro F1 {f1:.4f}")

    def predict(self, dataset, labels, classes):
        preds = np.array([np.argmax(self.forward(im)) for im in dataset])
        return accuracy(labels, preds), macro_f1(labels, preds, classes)


def seed_arch_layers():
    return [
        ConvLayer((1, 28, 28), 5, 6),
        ReLU(),
        ConvLayer((6, 28, 28), 5, 6),
        ReLU(),
        MaxPool(2),
        FeedForward(1176, 100),
        ReLU(),
        Softmax(100, 10),
    ]
