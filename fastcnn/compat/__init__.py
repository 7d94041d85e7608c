"""Drop-in, faster layers for the tutorial notebook ``cnn-from-scratch.ipynb``.

Change the notebook's class definitions to one import,
``from fastcnn.compat import ConvLayer, ReLU, MaxPool, FeedForward, Softmax, SimpleCNN``,
and its model cell runs unchanged on fastcnn's Numba kernels: the same class names,
constructor signatures and defaults, attribute names (``d``, ``h``, ``w``,
``kernels``, ``bias``, ``prev_input``, ``output``, ``size``, ``weights``,
``prev_totals``, ``ConvLayer_1`` ... ``OutputLayer``), methods and return values,
printed lines, float64 arithmetic, and the same ``np.random`` draws in the same
order, so ``np.random.seed(s)`` gives the same initial weights and training
trajectory (``tests/test_compat.py`` checks it against a literal replica).

Deliberate differences, only where the original crashes or returns garbage:

- Inputs or gradients of the wrong shape or dtype, parameters reassigned with
  another shape, ``backprop`` before ``forward``, labels that are not integers
  >= 0, and train/dev sets without as many labels as images raise ValueError,
  TypeError or RuntimeError up front. The original crashes somewhere inside, or
  silently crops a larger image.
- Even kernel sizes are refused: the notebook's padding then gives no 'same'
  output, and its input gradient is one pixel off.
- ``Softmax`` subtracts the largest logit when ``exp`` would overflow, so huge
  logits give probabilities and gradients instead of NaN (otherwise the same bits),
  and ``Softmax.forward`` flattens an input of ``input_len`` values of any shape.
- ``SimpleCNN.train`` accepts ``devset=None`` (no evaluation) and labels as lists,
  and sizes the loss gradient to the output layer (the original's has 10 entries).
- ``avg_f1_score`` with no class that has both precision and recall returns NaN
  without NumPy's empty-mean warning.
"""

from .layers import ConvLayer, FeedForward, MaxPool, ReLU, Softmax
from .network import SimpleCNN, preprocess

__all__ = ["ConvLayer", "FeedForward", "MaxPool", "ReLU", "SimpleCNN", "Softmax", "preprocess"]
