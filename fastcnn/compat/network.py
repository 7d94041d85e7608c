"""The notebook's SimpleCNN: eight layers, per-sample SGD training, evaluation.

See the package docstring (``fastcnn.compat``) for the interface and its deliberate
differences from the notebook.
"""

# The notebook draws from the global np.random state; users' np.random.seed must work.
# ruff: noqa: NPY002

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from tqdm import tqdm

from ..compiling import (
    announce_if_cold,
    compile_beside,
    compile_progress,
)
from ..kernels.compat import dense_forward_batch, maxpool_forward_batch, softmax_forward_batch
from ..threads import one_blas_thread
from .layers import ConvLayer, FeedForward, MaxPool, ReLU, Softmax, _dense_params, _real

_PREDICT_BATCH = 32  # images per batch in predict: activations stay in cache


def preprocess(data: np.ndarray) -> np.ndarray:
    """(N, H, W) -> (N, 1, H, W); channels-last RGB (N, H, W, 3) -> (N, 3, H, W); else as is.

    Views, no copies, in the input's dtype.
    """
    a = np.asarray(data)
    if a.ndim == 3:
        return a[:, np.newaxis, :, :]
    if a.ndim == 4 and a.shape[3] == 3:
        return np.moveaxis(a, -1, 1)
    return a


def _labels(labels: object, count: int, who: str) -> np.ndarray:
    a = np.asarray(labels)
    if a.shape != (count,):
        raise ValueError(f"{who} needs one label per image ({count}), got shape {a.shape}")
    if count and (a.dtype.kind not in "iu" or a.min() < 0):
        raise ValueError(f"{who} must be integer class indices >= 0, got dtype {a.dtype}"
                         + (f", min {a.min()}" if a.dtype.kind in "iu" else ""))
    return a


class SimpleCNN:
    """The notebook's network of eight layers, trained with per-sample SGD.

    Input -> Conv -> ReLU -> Conv -> ReLU -> MaxPool -> FeedForward -> ReLU -> Softmax.
    """

    def __init__(self, ConvLayer_1: Any, ReLU_1: Any, ConvLayer_2: Any, ReLU_2: Any,
                 MaxPool: Any, FeedForward: Any, ReLU_3: Any, Output: Any) -> None:
        self.ConvLayer_1 = ConvLayer_1
        self.ReLU_1 = ReLU_1
        self.ConvLayer_2 = ConvLayer_2
        self.ReLU_2 = ReLU_2
        self.MaxPool = MaxPool
        self.FeedForward = FeedForward
        self.ReLU_3 = ReLU_3
        self.OutputLayer = Output

    def preprocess(self, data: np.ndarray) -> np.ndarray:
        """Images to (N, channels, H, W): see :func:`preprocess`."""
        return preprocess(data)

    def forward(self, image: np.ndarray) -> np.ndarray:
        """Scale a raw 0..255 image to image / 255 - 0.5 and run the eight layers."""
        out = _real(image, "SimpleCNN.forward") / 255 - 0.5
        out = self.ConvLayer_1.forward(out)
        out = self.ReLU_1.forward(out)
        out = self.ConvLayer_2.forward(out)
        out = self.ReLU_2.forward(out)
        out = self.MaxPool.forward(out)
        out = self.FeedForward.forward(out)
        out = self.ReLU_3.forward(out)
        return self.OutputLayer.forward(out)

    def backprop(self, gradient: np.ndarray, learn_rate: float) -> np.ndarray:
        """Backpropagate through the eight layers in reverse, updating them with SGD.

        Returns the gradient with respect to the (scaled) input image.
        """
        return self._backprop(gradient, learn_rate, True)

    def _backprop(self, gradient: np.ndarray, learn_rate: float, input_grad: bool) -> Any:
        g = self.OutputLayer.backprop(gradient, learn_rate)
        g = self.ReLU_3.backprop(g)
        g = self.FeedForward.backprop(g, learn_rate)
        g = self.MaxPool.backprop(g)
        g = self.ReLU_2.backprop(g)
        g = self.ConvLayer_2.backprop(g, learn_rate)
        g = self.ReLU_1.backprop(g)
        if not input_grad and type(self.ConvLayer_1) is ConvLayer:
            # Training never reads the image's gradient: skip computing it.
            return self.ConvLayer_1._backprop(g, learn_rate, False)
        return self.ConvLayer_1.backprop(g, learn_rate)

    def avg_f1_score(
        self, predicted_labels: Sequence[Any], true_labels: Sequence[Any], classes: Sequence[Any]
    ) -> float:
        """Mean F1 over the classes whose precision and recall are both non-zero.

        The other classes are left out of the mean, not counted as 0 (the notebook's rule).
        """
        predicted, actual = np.asarray(predicted_labels), np.asarray(true_labels)
        scores = []
        for c in classes:
            is_p, is_t = predicted == c, actual == c
            hits = np.count_nonzero(is_p & is_t)
            n_p, n_t = np.count_nonzero(is_p), np.count_nonzero(is_t)
            precision = hits / n_p if n_p else 0
            recall = hits / n_t if n_t else 0
            if precision and recall:
                scores.append(2 * (precision * recall) / (precision + recall))
        return np.mean(scores) if scores else np.float64(np.nan)

    def predict(
        self, dataset: np.ndarray, true_labels: Sequence[Any], classes: Sequence[Any]
    ) -> tuple[float, float]:
        """(accuracy, avg_f1_score) of the argmax predictions over preprocessed images."""
        if len(dataset) == 0 or len(dataset) != len(true_labels):
            raise ValueError(f"predict needs as many labels as images (and at least one), got "
                             f"{len(dataset)} images and {len(true_labels)} labels")
        with compile_progress(), one_blas_thread():
            preds = self._batched_predictions(dataset)
            if preds is None:
                preds = np.array([np.argmax(self.forward(im)) for im in dataset])
        accuracy = np.float64(np.count_nonzero(preds == np.asarray(true_labels)) / len(preds))
        return accuracy, self.avg_f1_score(preds, true_labels, classes)

    def _batched_predictions(self, dataset: object) -> np.ndarray | None:
        """argmax(forward(image)) for every image, computed in batches on all threads.

        Each sample runs through the same kernels as in forward, with the same bits.
        None (use forward per image) unless the eight layers are exactly fastcnn's and
        forward is SimpleCNN's own.
        """
        layers = (self.ConvLayer_1, self.ReLU_1, self.ConvLayer_2, self.ReLU_2, self.MaxPool,
                  self.FeedForward, self.ReLU_3, self.OutputLayer)
        kinds = (ConvLayer, ReLU, ConvLayer, ReLU, MaxPool, FeedForward, ReLU, Softmax)
        if (type(self).forward is not SimpleCNN.forward
                or any(type(a) is not b for a, b in zip(layers, kinds, strict=True))
                or not isinstance(dataset, np.ndarray) or dataset.ndim != 4):
            return None
        conv1, _, conv2, _, pool, dense, _, output = layers
        self.forward(dataset[0])  # checks every layer against the images' shape
        preds = np.empty(len(dataset), dtype=np.int64)
        for start in range(0, len(dataset), _PREDICT_BATCH):
            x = _real(dataset[start:start + _PREDICT_BATCH], "dataset") / 255 - 0.5
            x = np.maximum(0, conv1._convolve(conv1._pad(x)))
            x = np.maximum(0, conv2._convolve(conv2._pad(x)))
            x = maxpool_forward_batch(x, pool._size)
            w, b = _dense_params(dense)
            x = np.maximum(0, dense_forward_batch(x.reshape(len(x), -1), w) + b)
            _, probs = softmax_forward_batch(x, *_dense_params(output))
            preds[start:start + len(x)] = np.argmax(probs, axis=1)
        # Leave every layer's saved state as forward on each image in turn would.
        self.forward(dataset[-1])
        return preds

    def train(
        self,
        trainset: np.ndarray,
        trainlabels: np.ndarray,
        devset: np.ndarray | None,
        devlabels: np.ndarray | None,
        classes: Sequence[Any] = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9],  # noqa: B006 (the notebook's)
        epochs: int = 3,
        learn_rate: float = 0.005,
    ) -> None:
        """Per-sample SGD on cross-entropy; prints the loss and dev scores each epoch.

        One permutation, drawn before the first epoch, orders every epoch.
        """
        trainset = self.preprocess(trainset)
        train_labels = _labels(trainlabels, len(trainset), "trainlabels")
        if len(trainset) == 0:
            raise ValueError("trainset holds no images")
        if devset is not None:
            devset = self.preprocess(devset)
            _labels(devlabels, len(devset), "devlabels")
        permutation = np.random.permutation(len(trainset))
        train_data, train_labels = trainset[permutation], train_labels[permutation]
        own_backprop = type(self).backprop is SimpleCNN.backprop
        print("Training...")
        # A cold cache: a second process compiles the convolution's backward kernel (the
        # longest) while the first forward pass compiles the rest.
        announced = announce_if_cold()
        beside = compile_beside("float64", ("conv",)) if announced else None
        for epoch in range(int(epochs)):
            losses = np.empty(len(train_data))
            with compile_progress(announced=announced), one_blas_thread():
                samples = tqdm(zip(train_data, train_labels, strict=True), total=len(train_data))
                for n, (image, label) in enumerate(samples):
                    out = self.forward(image)
                    if beside is not None:  # before the first backprop: load, not compile
                        beside.wait()
                        beside = None
                    losses[n] = -np.log(out[label])
                    gradient = np.zeros(len(out))
                    gradient[label] = -1 / out[label]
                    if own_backprop:
                        self._backprop(gradient, learn_rate, False)
                    else:  # a subclass's backprop is called, as the notebook's train does
                        self.backprop(gradient, learn_rate)
            print(f"Epoch {epoch + 1}, loss: {np.mean(losses):.3f}")
            if devset is not None:
                print("Evaluating dev...")
                acc, f1 = self.predict(devset, devlabels, classes)
                print(f"Dev Accuracy: {acc:.3f}, Dev F1 Score: {f1:.3f}")
