"""Plain NumPy replica of the tutorial notebook's classes (``cnn-from-scratch.ipynb``).

The oracle for ``fastcnn.compat``: the notebook's public interface (class names,
constructor signatures and defaults, attribute names, methods, return values,
printed lines, the order of the ``np.random`` draws) and its arithmetic, written
out as per-region Python loops in float64. Deliberately slow and literal, quirks
included (the untied bias, ``Softmax`` acting on the first non-zero gradient
entry only, the F1 mean that leaves out classes without precision or recall);
do not optimise it, and do not fix it.
"""

# The notebook draws from the global np.random state.
# ruff: noqa: NPY002, B006

from __future__ import annotations

import numpy as np
from tqdm import tqdm


class ConvLayer:
    """'Same' convolution over a prepadded image; the border is filled with ``padding``."""

    def __init__(self, input_shape, kernel_size=5, num_kernels=6, padding=0):
        depth, height, width = input_shape
        self.d = depth
        # Height and width of the padded input.
        self.h = height + kernel_size - 1
        self.w = width + kernel_size - 1
        self.input_shape = input_shape
        self.padding = padding
        self.num_kernels = num_kernels
        self.kernel_size = kernel_size
        self.pad_size = kernel_size // 2
        self.kernel_shape = (num_kernels, depth, kernel_size, kernel_size)
        self.bias_shape = (num_kernels, self.h - kernel_size + 1, self.w - kernel_size + 1)
        self.kernels = np.random.randn(*self.kernel_shape) / (kernel_size * kernel_size)
        self.bias = np.random.randn(*self.bias_shape) / (self.h * self.w)

    def iter_regions(self, image):
        """Every kernel_size x kernel_size window of a padded image, with its position."""
        k = self.kernel_size
        for i in range(self.h - k + 1):
            for j in range(self.w - k + 1):
                yield image[:, i : i + k, j : j + k], i, j

    def forward(self, input):
        p = self.pad_size
        padded = np.pad(input, ((0, 0), (p, p), (p, p)), mode="constant",
                        constant_values=self.padding)
        self.prev_input = padded
        self.output = np.copy(self.bias)
        for region, i, j in self.iter_regions(padded):
            self.output[:, i, j] += np.sum(region * self.kernels, axis=(1, 2, 3))
        return self.output

    def backprop(self, d_L_d_out, learn_rate):
        # Weight gradient: correlate the saved padded input with the output gradient.
        d_L_d_kernels = np.zeros(self.kernels.shape)
        for region, i, j in self.iter_regions(self.prev_input):
            for f in range(self.num_kernels):
                d_L_d_kernels[f] += d_L_d_out[f, i, j] * region
        # Input gradient: full convolution of the padded output gradient with the
        # kernels turned by 180 degrees, channel by channel (old kernels).
        d_L_d_input = np.zeros(self.input_shape)
        p = self.pad_size
        padded_grad = np.pad(d_L_d_out, ((0, 0), (p, p), (p, p)), mode="constant",
                             constant_values=0)
        turned = np.rot90(np.moveaxis(self.kernels, 0, 1), 2, axes=(2, 3))
        for region, i, j in self.iter_regions(padded_grad):
            for c in range(self.d):
                d_L_d_input[c, i, j] += np.sum(region * turned[c])
        self.bias -= learn_rate * d_L_d_out
        self.kernels -= learn_rate * d_L_d_kernels
        return d_L_d_input


class ReLU:
    def __init__(self):
        pass

    def forward(self, input):
        self.prev_output = np.maximum(0, input)
        return self.prev_output

    def backprop(self, d_L_d_out):
        return d_L_d_out * np.int64(self.prev_output > 0)


class MaxPool:
    """Non-overlapping max pooling; on ties every maximum gets the gradient."""

    def __init__(self, pool_size=2):
        self.size = pool_size

    def iter_regions(self, image):
        s = self.size
        _, h, w = image.shape
        for i in range(h // s):
            for j in range(w // s):
                yield image[:, i * s : i * s + s, j * s : j * s + s], i, j

    def forward(self, input):
        self.prev_input = input
        depth, h, w = input.shape
        output = np.zeros((depth, h // self.size, w // self.size))
        for region, i, j in self.iter_regions(input):
            output[:, i, j] = np.amax(region, axis=(1, 2))
        return output

    def backprop(self, d_L_d_out):
        s = self.size
        d_L_d_input = np.zeros(self.prev_input.shape)
        for region, i, j in self.iter_regions(self.prev_input):
            depth, h, w = region.shape
            best = np.amax(region, axis=(1, 2))
            for a in range(h):
                for b in range(w):
                    for c in range(depth):
                        if region[c, a, b] == best[c]:
                            d_L_d_input[c, i * s + a, j * s + b] = d_L_d_out[c, i, j]
        return d_L_d_input


class FeedForward:
    def __init__(self, input_size, output_size):
        self.weights = np.random.randn(input_size, output_size) / input_size
        self.bias = np.random.randn(output_size) / output_size

    def forward(self, input):
        self.prev_input_shape = input.shape
        flat = input.flatten()
        self.prev_input = flat
        self.output = np.dot(flat, self.weights) + self.bias
        return self.output

    def backprop(self, d_L_d_out, learn_rate):
        d_L_d_weights = self.prev_input[np.newaxis].T @ d_L_d_out[np.newaxis]
        d_L_d_input = self.weights @ d_L_d_out
        self.weights -= learn_rate * d_L_d_weights
        self.bias -= learn_rate * d_L_d_out
        return d_L_d_input.reshape(self.prev_input_shape)


class Softmax:
    def __init__(self, input_len, nodes):
        self.weights = np.random.randn(input_len, nodes) / input_len
        self.bias = np.random.randn(nodes) / nodes

    def forward(self, input):
        totals = np.dot(input, self.weights) + self.bias
        exp = np.exp(totals)
        self.prev_input_shape = input.shape
        self.prev_input = input
        self.prev_totals = totals
        return exp / np.sum(exp, axis=0)

    def backprop(self, d_L_d_out, learn_rate):
        # Only the first non-zero entry (the true class's) is used; all zeros: None.
        for i, gradient in enumerate(d_L_d_out):
            if gradient == 0:
                continue
            t_exp = np.exp(self.prev_totals)
            S = np.sum(t_exp)
            d_out_d_t = -t_exp[i] * t_exp / (S**2)
            d_out_d_t[i] = t_exp[i] * (S - t_exp[i]) / (S**2)
            d_L_d_t = gradient * d_out_d_t
            d_L_d_w = self.prev_input[np.newaxis].T @ d_L_d_t[np.newaxis]
            d_L_d_inputs = self.weights @ d_L_d_t
            self.weights -= learn_rate * d_L_d_w
            self.bias -= learn_rate * d_L_d_t
            return d_L_d_inputs.reshape(self.prev_input_shape)


class SimpleCNN:
    """Conv -> ReLU -> Conv -> ReLU -> MaxPool -> FeedForward -> ReLU -> Softmax."""

    def __init__(self, ConvLayer_1, ReLU_1, ConvLayer_2, ReLU_2, MaxPool, FeedForward, ReLU_3,
                 Output):
        self.ConvLayer_1 = ConvLayer_1
        self.ReLU_1 = ReLU_1
        self.ConvLayer_2 = ConvLayer_2
        self.ReLU_2 = ReLU_2
        self.MaxPool = MaxPool
        self.FeedForward = FeedForward
        self.ReLU_3 = ReLU_3
        self.OutputLayer = Output

    def preprocess(self, data):
        if data.ndim == 3:
            return data[:, np.newaxis, :, :]
        if data.ndim == 4 and data.shape[3] == 3:
            return np.moveaxis(data, -1, 1)
        return data

    def forward(self, image):
        out = image / 255 - 0.5
        out = self.ConvLayer_1.forward(out)
        out = self.ReLU_1.forward(out)
        out = self.ConvLayer_2.forward(out)
        out = self.ReLU_2.forward(out)
        out = self.MaxPool.forward(out)
        out = self.FeedForward.forward(out)
        out = self.ReLU_3.forward(out)
        return self.OutputLayer.forward(out)

    def backprop(self, gradient, learn_rate):
        g = self.OutputLayer.backprop(gradient, learn_rate)
        g = self.ReLU_3.backprop(g)
        g = self.FeedForward.backprop(g, learn_rate)
        g = self.MaxPool.backprop(g)
        g = self.ReLU_2.backprop(g)
        g = self.ConvLayer_2.backprop(g, learn_rate)
        g = self.ReLU_1.backprop(g)
        return self.ConvLayer_1.backprop(g, learn_rate)

    def avg_f1_score(self, predicted_labels, true_labels, classes):
        scores = []
        for c in classes:
            predicted = np.array([p == c for p in predicted_labels])
            actual = np.array([t == c for t in true_labels])
            hits = np.sum(np.logical_and(predicted, actual))
            precision = hits / np.sum(predicted) if np.sum(predicted) else 0
            recall = hits / np.sum(actual) if np.sum(actual) else 0
            # Classes without precision or recall are left out of the mean, not counted as 0.
            if precision and recall:
                scores.append(2 * (precision * recall) / (precision + recall))
        return np.mean(scores)

    def predict(self, dataset, true_labels, classes):
        preds = []
        hits = 0
        for image, label in zip(dataset, true_labels, strict=False):
            preds.append(np.argmax(self.forward(image)))
            hits += preds[-1] == label
        preds = np.array(preds)
        return hits / len(preds), self.avg_f1_score(preds, true_labels, classes)

    def train(self, trainset, trainlabels, devset, devlabels,
              classes=[0, 1, 2, 3, 4, 5, 6, 7, 8, 9], epochs=3, learn_rate=0.005):
        trainset = self.preprocess(trainset)
        devset = self.preprocess(devset)
        # One permutation, drawn once, serves every epoch.
        order = np.random.permutation(len(trainset))
        train_data = trainset[order]
        train_labels = trainlabels[order]
        print("Training...")
        for epoch in range(epochs):
            losses = []
            for image, label in tqdm(list(zip(train_data, train_labels, strict=False))):
                out = self.forward(image)
                losses.append(-np.log(out[label]))
                gradient = np.zeros(10)
                gradient[label] = -1 / out[label]
                self.backprop(gradient, learn_rate)
            print(f"Epoch {epoch + 1}, loss: {np.mean(losses):.3f}")
            print("Evaluating dev...")
            acc, f1 = self.predict(devset, devlabels, classes)
            print(f"Dev Accuracy: {acc:.3f}, Dev F1 Score: {f1:.3f}")
