"""Numba kernels: flat functions over C-contiguous NCHW arrays, arrays in, arrays out.

Installed as ``fastcnn.kernels``. They do no validation (Numba does no bounds
checks): call them through ``fastcnn.functional`` unless the arguments are known good.
"""

from .activation import activation_backward, activation_forward
from .augment import shift_flip
from .avgpool import (
    avgpool2d_backward,
    avgpool2d_forward,
    global_avgpool2d_backward,
    global_avgpool2d_forward,
)
from .batchnorm import batchnorm_backward, batchnorm_forward, batchnorm_inference
from .conv import (
    conv2d_backward,
    conv2d_backward_input,
    conv2d_backward_parts,
    conv2d_backward_weight,
    conv2d_forward,
    conv2d_pool_backward,
    conv2d_pool_backward_parts,
    conv2d_pool_forward,
    conv2d_pool_forward_with_indices,
    sum_parts,
)
from .dense import dense_backward, dense_forward
from .dropout import dropout_apply
from .loss import softmax_cross_entropy
from .pool import maxpool2d_backward, maxpool2d_forward

__all__ = [
    "conv2d_forward",
    "conv2d_pool_forward",
    "conv2d_pool_forward_with_indices",
    "conv2d_pool_backward",
    "conv2d_pool_backward_parts",
    "conv2d_backward_parts",
    "sum_parts",
    "conv2d_backward",
    "conv2d_backward_input",
    "conv2d_backward_weight",
    "dense_forward",
    "dense_backward",
    "maxpool2d_forward",
    "maxpool2d_backward",
    "softmax_cross_entropy",
    "avgpool2d_forward",
    "avgpool2d_backward",
    "global_avgpool2d_forward",
    "global_avgpool2d_backward",
    "dropout_apply",
    "activation_forward",
    "activation_backward",
    "batchnorm_forward",
    "batchnorm_inference",
    "batchnorm_backward",
    "shift_flip",
]
