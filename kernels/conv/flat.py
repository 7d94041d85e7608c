"""Stride-1 convolution over flat rows: forward (optionally fused with ReLU and a
max-pool) and all three gradients in one pass (optionally through the ReLU and pool).

Each task pads its samples into flat planes of pitch Wp (see `taps` for why), in buffers
of its own allocated once per task; three filters (or channels) share every load of the
source. Weight gradients are summed per fixed chunk of GRAD_CHUNK samples and the chunks
added in order, so no result depends on the thread count or the number of groups.
"""

import numpy as np

from .._jit import FASTMATH, jit
from .._tasks import run_tasks
from .._tuning import FORWARD_CHUNK, GRAD_CHUNK
from .planes import crop_rows, flat_plane, pool_rows, sum_parts, unpool_plane, window_offsets
from .taps import add_taps, add_taps3, dot_taps, dot_taps2, dot_taps3


@jit(fastmath=FASTMATH)
def _forward_s1_task(x, weight, bias, pad_top, pad_left, Hp, Wp, out_h, relu, pool_h, pool_w,
                     want_indices, y, indices, groups, task):
    """Task `task` of conv2d_forward_s1: samples t * FORWARD_CHUNK ... (t = task // groups)
    into y and indices; of their filter triples, those numbered g, g + groups, ...
    (g = task % groups; each sample is padded by each group)."""
    t, g = task // groups, task % groups
    N, C, _, _ = x.shape
    F, _, KH, KW = weight.shape
    L = out_h * Wp
    pooled = pool_h > 1 or pool_w > 1 or want_indices
    xp = np.empty((C, Hp * Wp + KW), dtype=x.dtype)
    acc = np.empty((3, L), dtype=x.dtype)
    no_indices = np.empty((1, 1), dtype=np.uint8)  # stands in when not want_indices
    for n in range(t * FORWARD_CHUNK, min(N, (t + 1) * FORWARD_CHUNK)):
        for c in range(C):
            flat_plane(xp[c], x[n, c], x[n, c], False, 0, pad_top, pad_left, Wp)
        for f0 in range(3 * g, F, 3 * groups):
            nf = min(3, F - f0)
            for k in range(nf):
                b = bias[f0 + k]
                for p in range(L):
                    acc[k, p] = b
            for c in range(C):
                for ki in range(KH):
                    src = xp[c, ki * Wp:]
                    if nf == 3:
                        add_taps3(acc[0], acc[1], acc[2], src, weight[f0, c, ki],
                                   weight[f0 + 1, c, ki], weight[f0 + 2, c, ki], L)
                    else:
                        for k in range(nf):
                            add_taps(acc[k], src, weight[f0 + k, c, ki], L)
            for k in range(nf):
                if pooled:
                    win = indices[n, f0 + k] if want_indices else no_indices
                    pool_rows(y[n, f0 + k], win, acc[k], Wp, relu, pool_h, pool_w,
                               want_indices)
                else:
                    crop_rows(y[n, f0 + k], acc[k], 0, Wp, relu)


def conv2d_forward_s1(x, weight, bias, pad_top, pad_left, Hp, Wp, out_h, out_w, relu, pool_h,
                      pool_w, want_indices, groups):
    """Stride 1: y = conv(x, weight) + bias, optionally followed by ReLU, then max-pooled
    over non-overlapping pool_h x pool_w windows (1 x 1: no pooling).

    x: (N, C, H, W); weight: (F, C, KH, KW); bias: (F,).
    Returns (y: (N, F, out_h // pool_h, out_w // pool_w), indices: the same shape, uint8,
    the index of each pool window's maximum when want_indices, else of size 0).
    One task per FORWARD_CHUNK samples and group (1 to ceil(F / 3) groups): it pads each
    sample once into buffers of its own (flat planes of pitch Wp), allocated once per task,
    which stay in cache; three filters share every load of the input. Groups split a
    chunk's filter triples between tasks, for batches too small to keep every thread
    busy; each output is computed the same way for any number of groups.
    """
    N = x.shape[0]
    F = weight.shape[0]
    y = np.empty((N, F, out_h // pool_h, out_w // pool_w), dtype=x.dtype)
    indices = np.empty((N if want_indices else 0, F, out_h // pool_h, out_w // pool_w),
                       dtype=np.uint8)
    run_tasks(_forward_s1_task, -(-N // FORWARD_CHUNK) * groups, x, weight, bias, pad_top,
              pad_left, Hp, Wp, out_h, relu, pool_h, pool_w, want_indices, y, indices, groups)
    return y, indices


@jit(fastmath=FASTMATH)
def _backward_s1_task(x, dy, mask, relu, indices, pool_h, pool_w, weight_flipped, in_h, in_w,
                      pad_top, pad_left, Hp, Wp, out_h, need_weight_grad, need_input_grad,
                      dot_filters, dx, dw_parts, db_parts, groups, task):
    """Task `task` of conv2d_backward_s1, for chunk k = task // groups (samples
    k * GRAD_CHUNK ...): its input gradients into dx, its weight and bias gradients into
    dw_parts[k] and db_parts[k]; of the weight gradient's passes (dot_filters filters
    each) and the input gradient's channel triples, those numbered g, g + groups, ...
    (g = task % groups)."""
    k, g = task // groups, task % groups
    N, F, _, _ = dy.shape
    _, C, KH, KW = weight_flipped.shape
    pooled = pool_h * pool_w > 1
    margin = (KH - 1) * Wp + KW - 1
    L = out_h * Wp  # weight gradient: one pass over dy's rows
    Lin = in_h * Wp  # input gradient: one pass over dx's rows
    q0 = pad_top * Wp
    xp = np.empty((C if need_weight_grad else 0, Hp * Wp + KW), dtype=dy.dtype)
    dz = np.empty((F, margin + Hp * Wp), dtype=dy.dtype)
    acc = np.empty((3, Lin if need_input_grad else 0), dtype=dy.dtype)
    scratch = np.zeros(1, dtype=dy.dtype)  # the data dtype for in-plane partial sums
    offsets = window_offsets(pool_h, pool_w, Wp)
    dw = dw_parts[k]
    for n in range(k * GRAD_CHUNK, min(N, (k + 1) * GRAD_CHUNK)):
        for f in range(F):
            if pooled:
                unpool_plane(dz[f], dy[n, f], mask[n, f], relu, indices[n, f],
                              offsets, margin, Wp, pool_h, pool_w)
            else:
                flat_plane(dz[f], dy[n, f], mask[n, f], relu, margin, 0, 0, Wp)
        if need_weight_grad:
            for c in range(C):
                flat_plane(xp[c], x[n, c], x[n, c], False, 0, pad_top, pad_left, Wp)
            for f in range(F):
                if (f // dot_filters) % groups != g:
                    continue  # another group's filter
                s = scratch[0]
                d = dz[f, margin:]
                for p in range(L):
                    s += d[p]
                db_parts[k, f] += s
            # dot_filters filters per pass (then fewer) share the five source loads
            # of a kernel row.
            for f0 in range(dot_filters * g, F, dot_filters * groups):
                nf = min(dot_filters, F - f0)
                for c in range(C):
                    for ki in range(KH):
                        src = xp[c, ki * Wp:]
                        if nf == 3:
                            dot_taps3(dw[f0, c, ki], dw[f0 + 1, c, ki], dw[f0 + 2, c, ki],
                                       dz[f0, margin:], dz[f0 + 1, margin:],
                                       dz[f0 + 2, margin:], src, L, scratch)
                        elif nf == 2:
                            dot_taps2(dw[f0, c, ki], dw[f0 + 1, c, ki], dz[f0, margin:],
                                       dz[f0 + 1, margin:], src, L, scratch)
                        else:
                            dot_taps(dw[f0, c, ki], dz[f0, margin:], src, L, scratch)
        if need_input_grad:
            # dx[q] gathers dy[q - ki * Wp - kj]: a correlation with the flipped kernel
            # rows, three input channels per pass sharing each load of dy.
            for c0 in range(3 * g, C, 3 * groups):
                nc = min(3, C - c0)
                for j in range(nc):
                    for p in range(Lin):
                        acc[j, p] = 0
                for f in range(F):
                    for ki in range(KH):
                        src = dz[f, margin + q0 - ki * Wp - (KW - 1):]
                        if nc == 3:
                            add_taps3(acc[0], acc[1], acc[2], src,
                                       weight_flipped[f, c0, ki],
                                       weight_flipped[f, c0 + 1, ki],
                                       weight_flipped[f, c0 + 2, ki], Lin)
                        else:
                            for j in range(nc):
                                add_taps(acc[j], src, weight_flipped[f, c0 + j, ki], Lin)
                for j in range(nc):
                    crop_rows(dx[n, c0 + j], acc[j], pad_left, Wp, False)


def conv2d_backward_s1(x, dy, mask, relu, indices, pool_h, pool_w, weight_flipped, in_h,
                       in_w, pad_top, pad_left, Hp, Wp, out_h, need_weight_grad, need_input_grad,
                       dot_filters, groups):
    """Stride 1: the weight, bias and input gradients in one pass over the batch.

    dy: (N, F, out_h, OW), taken as zero where relu and mask (same shape) <= 0 (the
    fused ReLU). With a pool (pool_h * pool_w > 1), dy and mask are instead the gradient
    and output of the max-pool after the convolution, (N, F, PH, PW), and indices (same
    shape, uint8, each < pool_h * pool_w) says where in its window each maximum was: the
    pool's backward pass, fused into the same copy. x: (N, C, in_h, in_w), read only when
    need_weight_grad (pass dy otherwise).
    weight_flipped: weight[:, :, :, ::-1] (F, C, KH, KW), contiguous, read only when
    need_input_grad. Returns dx: (N, C, in_h, in_w) (size 0 when not need_input_grad);
    dw_parts: (chunks, F, C, KH, KW) and db_parts: (chunks, F), the weight and bias
    gradients of each chunk; and dw: (F, C, KH, KW) and db: (F,), their sums in chunk order
    (`sum_parts`, which training spread over processes applies to the parts of a whole
    batch); all float64 and zero when not need_weight_grad.

    dot_filters (1 to 3): filters per pass of the weight gradient (`_tuning.DOT_FILTERS`).
    groups (>= 1): tasks per chunk, which share its passes and channel triples out.

    One task per fixed chunk of GRAD_CHUNK samples and group. Per sample it pads x and
    masks dy into buffers of its own, once for every filter and channel; dy gets pitch Wp
    and a leading margin, so the input gradient gathers without negative indices. Each
    chunk sums its own weight gradient (its groups write disjoint filters) and the chunks
    are added in order at the end, so every bit of the result is the same for any thread
    count and any number of groups.
    """
    N, F, _, _ = dy.shape
    _, C, KH, KW = weight_flipped.shape
    chunks = -(-N // GRAD_CHUNK)
    dw_parts = np.zeros((chunks, F, C, KH, KW))  # float64 across samples
    db_parts = np.zeros((chunks, F))
    dx = np.empty((N if need_input_grad else 0, C, in_h, in_w), dtype=dy.dtype)
    run_tasks(_backward_s1_task, chunks * groups, x, dy, mask, relu, indices, pool_h, pool_w,
              weight_flipped, in_h, in_w, pad_top, pad_left, Hp, Wp, out_h, need_weight_grad,
              need_input_grad, dot_filters, dx, dw_parts, db_parts, groups)
    return dx, dw_parts, db_parts, sum_parts(dw_parts), sum_parts(db_parts)
