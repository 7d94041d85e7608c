"""Convolution and pooling geometry: output sizes, padding, and the largest buffers a
kernel allocates, worked out (and checked) in Python before any kernel runs."""

from __future__ import annotations

import math

from .validation import check_budget, pair

# Pool-window offsets are stored as uint8.
MAX_POOL_WINDOW = 256


def _axis_geometry(size: int, k: int, stride: int, pad: object) -> tuple[int, int]:
    """(pad_before, out_size) along one axis."""
    if pad == "valid":
        pad_before, out = 0, (size - k) // stride + 1 if size >= k else 0
    elif pad == "same":
        # Keras/TensorFlow convention: out = ceil(size / stride), extra padding at the end.
        out = math.ceil(size / stride)
        pad_before = max((out - 1) * stride + k - size, 0) // 2
    else:
        pad_before = pad
        padded = size + 2 * pad
        out = (padded - k) // stride + 1 if padded >= k else 0
    return pad_before, out


def conv_geometry(
    in_h: int, in_w: int, kernel_size: tuple[int, int], stride: tuple[int, int], padding: object
) -> tuple[int, int, int, int]:
    """(pad_top, pad_left, out_h, out_w) of a convolution."""
    if isinstance(padding, str):
        if padding not in ("same", "valid"):
            raise ValueError(f"padding must be 'same', 'valid', an int or a pair, got {padding!r}")
        pads: tuple[object, object] = (padding, padding)
    else:
        pads = pair(padding, "padding", minimum=0)
    pad_top, out_h = _axis_geometry(in_h, kernel_size[0], stride[0], pads[0])
    pad_left, out_w = _axis_geometry(in_w, kernel_size[1], stride[1], pads[1])
    if out_h < 1 or out_w < 1:
        raise ValueError(
            f"kernel {kernel_size} is larger than the padded input {(in_h, in_w)} "
            f"(padding={padding!r})"
        )
    return pad_top, pad_left, out_h, out_w


def conv_buffer_shapes(x_shape: tuple[int, int, int, int], weight_shape: tuple[int, int, int, int],
                       stride: tuple[int, int], geo: tuple[int, int, int, int]
                       ) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(output shape, padded input shape): the largest arrays a convolution kernel
    allocates for x of x_shape (N, C, H, W)."""
    N, C, H, W = x_shape
    F, _, KH, KW = weight_shape
    pad_top, pad_left, out_h, out_w = geo
    # The kernels pad x (and dy) into planes at least this large.
    hp = max(H + pad_top, (out_h - 1) * stride[0] + KH)
    wp = max(W + pad_left, (out_w - 1) * stride[1] + KW) + KW
    return (N, F, out_h, out_w), (N, max(C, F), hp, wp)


def check_conv_budget(x_shape: tuple[int, int, int, int], weight_shape: tuple[int, int, int, int],
                      stride: tuple[int, int], geo: tuple[int, int, int, int]) -> None:
    """Refuse geometry whose output or padded copies would be absurdly large."""
    output, padded = conv_buffer_shapes(x_shape, weight_shape, stride, geo)
    check_budget(output, "the output")
    check_budget(padded, "the padded input")




def pooled_geometry(x_shape: tuple[int, int, int, int], weight_shape: tuple[int, int, int, int],
                    stride: object, padding: object, pool_size: object
                    ) -> tuple[tuple[int, int], tuple[int, int], tuple[int, int, int, int]]:
    """((sh, sw), (ph, pw), conv geometry) of a convolution followed by a max-pool with
    non-overlapping windows, checked."""
    sh, sw = pair(stride, "stride")
    ph, pw = pair(pool_size, "pool_size")
    geo = conv_geometry(x_shape[2], x_shape[3], weight_shape[2:], (sh, sw), padding)
    check_conv_budget(x_shape, weight_shape, (sh, sw), geo)
    if ph > geo[2] or pw > geo[3]:
        raise ValueError(f"pool_size {(ph, pw)} is larger than the convolution's output "
                         f"{geo[2:]}")
    return (sh, sw), (ph, pw), geo
