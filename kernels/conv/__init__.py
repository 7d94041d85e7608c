"""2-D convolution kernels over NCHW mini-batches (cross-correlation, as in PyTorch).

Geometry is explicit: the caller passes strides, the top/left zero padding and
the output size, so 'same', 'valid', symmetric and asymmetric padding all reduce
to one kernel. Padding beyond the input on the bottom/right is implied by the
output size. Inputs must be C-contiguous and of one float dtype; the Python layer
(`fastcnn.functional`) checks that before calling.

One module per algorithm: `flat` (stride 1, over flat rows, with `taps` and `planes`
as its loops and copies), `phases` (a strided convolution as a stride-1 one over the
input's phase planes, run by `flat`) and `gemm` (im2col and matrix products, any
stride). This module, plain Python, picks one for each shape (`algorithm`) and works out
its buffers' geometry.

Each parallel loop runs over samples or over fixed-size chunks of samples (for small
batches, each chunk's filters are shared out between tasks, every output still computed
the same way), so a result never depends on the number of threads.
"""

import numba
import numpy as np

from .. import pool
from .._tuning import DOT_FILTERS, FORWARD_CHUNK, GRAD_CHUNK, SPLIT_WORK
from .flat import conv2d_backward_s1, conv2d_forward_s1
from .gemm import conv2d_backward_gemm, conv2d_forward_gemm
from .phases import (
    all_finite,
    from_phases,
    phase_kernel,
    phase_weight,
    to_phases,
    unphase_weight,
    worth_phases,
)
from .planes import sum_parts, unpooled, window_of


def _s1_geometry(H, W, out_h, out_w, KH, KW, pad_top, pad_left):
    """(Hp, Wp) of the flat stride-1 layout: rows and row pitch of a padded plane."""
    return max(H + pad_top, out_h + KH - 1), max(W + pad_left, out_w + KW - 1)


# Thresholds of `algorithm`, from bench/README.md's per-layer table (Zen 4/5): below
# GEMM_MIN_TAPS taps (C * KH * KW) the products are too short for the matrix path; above
# GEMM_MAX_PIXELS output pixels the flat kernels' rows are long enough to win.
GEMM_MIN_TAPS = 256
GEMM_MAX_PIXELS = 256
GEMM_MIN_TAPS_STRIDED = 128


def algorithm(channels, kernel_h, kernel_w, stride_h, stride_w, out_h, out_w):
    """The algorithm that runs a convolution of this shape, chosen once per shape (the
    layer's, as oneDNN does):

    - "flat": stride 1, over the padded planes' flat rows (`flat`);
    - "gemm": im2col columns and register-blocked products (`gemm`), for deep inputs on
      small output planes (at most GEMM_MAX_PIXELS pixels, at least GEMM_MIN_TAPS taps,
      GEMM_MIN_TAPS_STRIDED when strided), and every stride `phases` does not take;
    - "phases": strided, as a stride-1 convolution over the input's phase planes
      (`phases`), when that adds at most MAX_TAP_GROWTH times the taps (2x2 to 7x7 with
      stride 2; any kernel the stride divides).
    """
    taps = channels * kernel_h * kernel_w
    small_plane = out_h * out_w <= GEMM_MAX_PIXELS
    if stride_h == 1 and stride_w == 1:
        return "gemm" if small_plane and taps >= GEMM_MIN_TAPS else "flat"
    if worth_phases(kernel_h, kernel_w, stride_h, stride_w) and not (
            small_plane and taps >= GEMM_MIN_TAPS_STRIDED):
        return "phases"
    return "gemm"


def _kind(weight, stride_h, stride_w, out_h, out_w, data=None):
    """The shape's algorithm, but "gemm" for "phases" unless data (the array whose values
    the phase form's zero taps multiply: x forward, dy for the input gradient) is all
    finite (see `phases`)."""
    F, C, KH, KW = weight.shape
    kind = algorithm(C, KH, KW, stride_h, stride_w, out_h, out_w)
    if kind == "phases" and data is not None and not all_finite(data):
        return "gemm"
    return kind


def _phase_geometry(out_h, out_w, KH, KW, stride_h, stride_w):
    """(KH', KW', Hq, Wq): the phase kernel and the phase planes' size."""
    kh, kw = phase_kernel(KH, KW, stride_h, stride_w)
    return kh, kw, out_h + kh - 1, out_w + kw - 1


def _groups(n, chunk, passes, work):
    """Tasks per chunk of a batch of n samples: enough to give every Numba thread one
    when the batch has fewer chunks than threads and a chunk is worth splitting (work
    multiply-adds per sample), at most one per pass. No result depends on it."""
    chunks = -(-n // chunk)
    threads = numba.get_num_threads()
    if chunks >= threads or min(n, chunk) * work < SPLIT_WORK:
        return 1
    return max(1, min(passes, -(-threads // chunks)))


def _forward_s1(x, weight, bias, pad_top, pad_left, Hp, Wp, out_h, out_w, relu, pool_h, pool_w,
                want_indices):
    """conv2d_forward_s1, its tasks split for small batches."""
    F, C, KH, KW = weight.shape
    groups = _groups(len(x), FORWARD_CHUNK, -(-F // 3), F * C * KH * KW * out_h * out_w)
    return conv2d_forward_s1(x, weight, bias, pad_top, pad_left, Hp, Wp, out_h, out_w, relu,
                              pool_h, pool_w, want_indices, groups)


def conv2d_forward(x, weight, bias, stride_h, stride_w, pad_top, pad_left, out_h, out_w, relu):
    """y = conv(x, weight) + bias, optionally followed by ReLU.

    x: (N, C, H, W); weight: (F, C, KH, KW); bias: (F,); all one float dtype.
    Returns y: (N, F, out_h, out_w).
    """
    return _conv_pool(x, weight, bias, stride_h, stride_w, pad_top, pad_left, out_h, out_w,
                      relu, 1, 1, False)[0]


def _conv_pool(x, weight, bias, stride_h, stride_w, pad_top, pad_left, out_h, out_w, relu,
               pool_h, pool_w, want_indices):
    """(y, indices or None) of conv2d_pool_forward_with_indices, for any stride."""
    F, _, KH, KW = weight.shape
    kind = _kind(weight, stride_h, stride_w, out_h, out_w, x)
    if kind == "phases":
        kh, kw, Hq, Wq = _phase_geometry(out_h, out_w, KH, KW, stride_h, stride_w)
        xq = to_phases(x, stride_h, stride_w, pad_top, pad_left, Hq, Wq)
        return _forward_s1(xq, phase_weight(weight, stride_h, stride_w), bias, 0, 0, Hq, Wq,
                           out_h, out_w, relu, pool_h, pool_w, want_indices)
    if kind == "gemm":
        y = conv2d_forward_gemm(x, weight.reshape(F, -1), bias, KH, KW, stride_h, stride_w,
                                pad_top, pad_left, out_h, out_w, relu)
        if pool_h == 1 and pool_w == 1 and not want_indices:
            return y, None
        pooled, argmax = pool.maxpool2d_forward(y, pool_h, pool_w, pool_h, pool_w)
        return pooled, (window_of(argmax, out_w, pool_h, pool_w) if want_indices else None)
    _, _, H, W = x.shape
    Hp, Wp = _s1_geometry(H, W, out_h, out_w, KH, KW, pad_top, pad_left)
    return _forward_s1(x, weight, bias, pad_top, pad_left, Hp, Wp, out_h, out_w, relu, pool_h,
                       pool_w, want_indices)


def conv2d_pool_forward(x, weight, bias, stride_h, stride_w, pad_top, pad_left, out_h, out_w,
                        relu, pool_h, pool_w):
    """conv2d_forward, then max-pooling over non-overlapping pool_h x pool_w windows
    (floor): the inference path, which never stores the unpooled output.

    Returns y: (N, F, out_h // pool_h, out_w // pool_w); the same values as
    maxpool2d_forward(conv2d_forward(...), pool_h, pool_w, pool_h, pool_w)[0].
    """
    return _conv_pool(x, weight, bias, stride_h, stride_w, pad_top, pad_left, out_h, out_w,
                      relu, pool_h, pool_w, False)[0]


def conv2d_pool_forward_with_indices(x, weight, bias, stride_h, stride_w, pad_top, pad_left,
                                     out_h, out_w, relu, pool_h, pool_w):
    """conv2d_pool_forward, and where each maximum was: the training path.

    Returns (y, indices), both (N, F, out_h // pool_h, out_w // pool_w); indices (uint8)
    holds a * pool_w + b, the offset (a, b) of each maximum inside its window, as
    maxpool2d_forward's argmax finds it. pool_h * pool_w must be at most 256.
    """
    return _conv_pool(x, weight, bias, stride_h, stride_w, pad_top, pad_left, out_h, out_w,
                      relu, pool_h, pool_w, True)


def _flipped(weight):
    return np.ascontiguousarray(weight[:, :, :, ::-1])


def _backward_s1(x, weight, dy, mask, relu, indices, pool_h, pool_w, in_h, in_w, pad_top,
                 pad_left, out_h, out_w, need_weight_grad, need_input_grad, parts):
    """The stride-1 kernel with its geometry; returns (dx or None, dw, db) in dy's dtype,
    or with parts (dx or None, dw_parts, db_parts), the parts in float64."""
    _, _, KH, KW = weight.shape
    Hp, Wp = _s1_geometry(in_h, in_w, out_h, out_w, KH, KW, pad_top, pad_left)
    # Only the input gradient reads the (flipped) weight; otherwise just its shape.
    flipped = _flipped(weight) if need_input_grad else weight
    F, C = weight.shape[:2]
    groups = _groups(len(dy), GRAD_CHUNK, max(-(-F // DOT_FILTERS), -(-C // 3)),
                     F * C * KH * KW * out_h * out_w * (need_weight_grad + need_input_grad))
    dx, dw_parts, db_parts, dw, db = conv2d_backward_s1(
        x, dy, mask, relu, indices, pool_h, pool_w, flipped, in_h, in_w, pad_top, pad_left, Hp,
        Wp, out_h, need_weight_grad, need_input_grad, DOT_FILTERS, groups)
    dx = dx if need_input_grad else None
    if parts:
        return dx, dw_parts, db_parts
    return dx, dw.astype(dy.dtype), db.astype(dy.dtype)


_NO_INDICES = np.zeros((1, 1, 1, 1), dtype=np.uint8)  # the window argument when not pooled


def _backward_phases(x, weight, dy, y, relu, indices, pool_h, pool_w, in_h, in_w, stride_h,
                     stride_w, pad_top, pad_left, out_h, out_w, need_weight_grad,
                     need_input_grad, parts):
    """_backward_s1 of the phase form: the same results, mapped back to the input's
    and the weight's shapes."""
    F, C, KH, KW = weight.shape
    kh, kw, Hq, Wq = _phase_geometry(out_h, out_w, KH, KW, stride_h, stride_w)
    # The input-gradient-only path passes dy for x, which it never reads.
    xq = to_phases(x, stride_h, stride_w, pad_top, pad_left, Hq, Wq) if need_weight_grad else x
    wq = (phase_weight(weight, stride_h, stride_w) if need_input_grad else
          np.empty((F, C * stride_h * stride_w, kh, kw), dtype=weight.dtype))
    dxq, dwq, db = _backward_s1(xq, wq, dy, y, relu, indices, pool_h, pool_w, Hq, Wq, 0, 0,
                                out_h, out_w, need_weight_grad, need_input_grad, parts)
    dx = None
    if need_input_grad:
        dx = from_phases(dxq, C, stride_h, stride_w, pad_top, pad_left, in_h, in_w)
    dw = unphase_weight(dwq, KH, KW, stride_h, stride_w) if need_weight_grad else dwq
    return dx, dw, db


def _backward_gemm(x, weight, dy, mask, relu, stride_h, stride_w, pad_top, pad_left,
                   need_weight_grad, need_input_grad, parts):
    """conv2d_backward_gemm with the weight laid out for it; results as _backward_s1's."""
    F, C, KH, KW = weight.shape
    wt = (np.ascontiguousarray(weight.reshape(F, -1).T) if need_input_grad else
          np.empty((C * KH * KW, F), dtype=weight.dtype))
    dx, dw_parts, db_parts = conv2d_backward_gemm(x, wt, dy, mask, relu, KH, KW, stride_h,
                                                  stride_w, pad_top, pad_left, need_weight_grad,
                                                  need_input_grad)
    dx = dx if need_input_grad else None
    if parts:
        return dx, dw_parts, db_parts
    return dx, sum_parts(dw_parts).astype(dy.dtype), sum_parts(db_parts).astype(dy.dtype)


def _backward(x, weight, dy, y, relu, stride_h, stride_w, pad_top, pad_left, need_input_grad,
              parts):
    """conv2d_backward, or with parts conv2d_backward_parts."""
    _, _, H, W = x.shape
    _, _, KH, KW = weight.shape
    _, _, OH, OW = dy.shape
    kind = _kind(weight, stride_h, stride_w, OH, OW, dy if need_input_grad else None)
    if kind == "phases":
        return _backward_phases(x, weight, dy, y, relu, _NO_INDICES, 1, 1, H, W, stride_h,
                                stride_w, pad_top, pad_left, OH, OW, True, need_input_grad,
                                parts)
    if kind == "gemm":
        return _backward_gemm(x, weight, dy, y, relu, stride_h, stride_w, pad_top, pad_left,
                              True, need_input_grad, parts)
    return _backward_s1(x, weight, dy, y, relu, _NO_INDICES, 1, 1, H, W, pad_top, pad_left, OH,
                        OW, True, need_input_grad, parts)


def conv2d_backward(x, weight, dy, y, relu, stride_h, stride_w, pad_top, pad_left, need_input_grad):
    """All gradients of a convolution in one pass over shared buffers.

    x: (N, C, H, W); weight: (F, C, KH, KW); dy, y: (N, F, OH, OW). With relu, y is the
    fused conv + ReLU output and dy is first zeroed where y <= 0. Returns
    (dx: (N, C, H, W) or None when not need_input_grad, dw: (F, C, KH, KW), db: (F,)).
    """
    return _backward(x, weight, dy, y, relu, stride_h, stride_w, pad_top, pad_left,
                     need_input_grad, False)


def conv2d_backward_parts(x, weight, dy, y, relu, stride_h, stride_w, pad_top, pad_left,
                          need_input_grad):
    """conv2d_backward with the weight and bias gradients of each chunk of GRAD_CHUNK
    samples apart: (dx or None, dw_parts: (chunks, F, C, KH, KW), db_parts: (chunks, F)),
    in float64. `sum_parts` of each, cast to dy's dtype,
    is conv2d_backward's dw and db, bit for bit; the parts of consecutive batches, stacked,
    sum to the gradient of the whole (what distributed training relies on)."""
    return _backward(x, weight, dy, y, relu, stride_h, stride_w, pad_top, pad_left,
                     need_input_grad, True)


def _pool_backward(x, weight, dy, y, indices, relu, stride_h, stride_w, pad_top, pad_left,
                   out_h, out_w, pool_h, pool_w, need_input_grad, parts):
    """conv2d_pool_backward, or with parts conv2d_pool_backward_parts."""
    _, _, H, W = x.shape
    kind = _kind(weight, stride_h, stride_w, out_h, out_w, dy if need_input_grad else None)
    if kind == "phases":
        return _backward_phases(x, weight, dy, y, relu, indices, pool_h, pool_w, H, W, stride_h,
                                stride_w, pad_top, pad_left, out_h, out_w, True,
                                need_input_grad, parts)
    if kind == "gemm":
        full = unpooled(dy, y, relu, indices, out_h, out_w, pool_h, pool_w)
        return _backward(x, weight, full, full, False, stride_h, stride_w, pad_top, pad_left,
                         need_input_grad, parts)
    return _backward_s1(x, weight, dy, y, relu, indices, pool_h, pool_w, H, W, pad_top,
                        pad_left, out_h, out_w, True, need_input_grad, parts)


def conv2d_pool_backward(x, weight, dy, y, indices, relu, stride_h, stride_w, pad_top, pad_left,
                         out_h, out_w, pool_h, pool_w, need_input_grad):
    """conv2d_backward through the max-pool after the convolution, in one pass: the
    backward of conv2d_pool_forward_with_indices.

    x: (N, C, H, W); weight: (F, C, KH, KW); dy, y, indices: (N, F, out_h // pool_h,
    out_w // pool_w), the pooled output's gradient, the pooled output and the window
    indices (each < pool_h * pool_w). With relu, the gradient reaches each maximum only
    where y > 0. Returns (dx or None, dw, db) as conv2d_backward does.
    """
    return _pool_backward(x, weight, dy, y, indices, relu, stride_h, stride_w, pad_top,
                          pad_left, out_h, out_w, pool_h, pool_w, need_input_grad, False)


def conv2d_pool_backward_parts(x, weight, dy, y, indices, relu, stride_h, stride_w, pad_top,
                               pad_left, out_h, out_w, pool_h, pool_w, need_input_grad):
    """conv2d_pool_backward with per-chunk weight and bias gradients, as
    conv2d_backward_parts returns them."""
    return _pool_backward(x, weight, dy, y, indices, relu, stride_h, stride_w, pad_top,
                          pad_left, out_h, out_w, pool_h, pool_w, need_input_grad, True)


def conv2d_backward_input(dy, weight, in_h, in_w, stride_h, stride_w, pad_top, pad_left):
    """Gradient of the loss with respect to the convolution's input.

    dy: (N, F, OH, OW); weight: (F, C, KH, KW). Returns dx: (N, C, in_h, in_w).
    """
    _, _, OH, OW = dy.shape
    F, C, _, _ = weight.shape
    kind = _kind(weight, stride_h, stride_w, OH, OW, dy)
    if kind == "phases":
        return _backward_phases(dy, weight, dy, dy, False, _NO_INDICES, 1, 1, in_h, in_w,
                                stride_h, stride_w, pad_top, pad_left, OH, OW, False, True,
                                False)[0]
    if kind == "gemm":
        # The kernel reads x's shape only, for dx's.
        shape = np.empty((len(dy), C, in_h, in_w), dtype=dy.dtype)
        return _backward_gemm(shape, weight, dy, dy, False, stride_h, stride_w, pad_top,
                              pad_left, False, True, False)[0]
    return _backward_s1(dy, weight, dy, dy, False, _NO_INDICES, 1, 1, in_h, in_w, pad_top,
                        pad_left, OH, OW, False, True, False)[0]


def conv2d_backward_weight(x, dy, kernel_h, kernel_w, stride_h, stride_w, pad_top, pad_left):
    """Gradients of the loss with respect to the weight and the bias.

    x: (N, C, H, W); dy: (N, F, OH, OW). Returns (dw: (F, C, KH, KW), db: (F,)).
    """
    _, C, H, W = x.shape
    _, F, OH, OW = dy.shape
    # The kernels read only the weight's shape on this path.
    shape = np.empty((F, C, kernel_h, kernel_w), dtype=x.dtype)
    kind = _kind(shape, stride_h, stride_w, OH, OW)
    if kind == "phases":
        return _backward_phases(x, shape, dy, dy, False, _NO_INDICES, 1, 1, H, W, stride_h,
                                stride_w, pad_top, pad_left, OH, OW, True, False, False)[1:]
    if kind == "gemm":
        return _backward_gemm(x, shape, dy, dy, False, stride_h, stride_w, pad_top, pad_left,
                              True, False, False)[1:]
    return _backward_s1(x, shape, dy, dy, False, _NO_INDICES, 1, 1, H, W, pad_top, pad_left, OH,
                        OW, True, False, False)[1:]
