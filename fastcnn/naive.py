"""Naive-loop oracles shaped like the original per-sample NumPy CNN.

Same names and arguments as ``fastcnn.kernels`` and ``fastcnn.reference``; float64
results. They iterate over image regions one at a time, as the original code does
(forward over all filters of a region at once, backward one filter at a time), and
serve as the slow baseline in the benchmarks.
"""

import math

import numpy as np

from .reference import (
    _padded,
    fused_backward,
    in_parts,
    pooled_backward,
    pooled_forward,
    pooled_forward_with_indices,
)


def conv2d_forward(x, weight, bias, stride_h, stride_w, pad_top, pad_left, out_h, out_w, relu):
    F, C, KH, KW = weight.shape
    xp = _padded(x, pad_top, pad_left, out_h, out_w, stride_h, stride_w, KH, KW)
    w = weight.astype(np.float64)
    y = np.zeros((x.shape[0], F, out_h, out_w))
    for n in range(x.shape[0]):
        for i in range(out_h):
            for j in range(out_w):
                region = xp[n, :, i * stride_h:i * stride_h + KH, j * stride_w:j * stride_w + KW]
                # All filters at once, as the original does for each region.
                y[n, :, i, j] = np.sum(region * w, axis=(1, 2, 3)) + bias
    return np.maximum(y, 0.0) if relu else y


def conv2d_backward_input(dy, weight, in_h, in_w, stride_h, stride_w, pad_top, pad_left):
    N, F, OH, OW = dy.shape
    _, C, KH, KW = weight.shape
    w = weight.astype(np.float64)
    Hp = max(in_h + pad_top, (OH - 1) * stride_h + KH)
    Wp = max(in_w + pad_left, (OW - 1) * stride_w + KW)
    dxp = np.zeros((N, C, Hp, Wp))
    for n in range(N):
        for i in range(OH):
            for j in range(OW):
                for f in range(F):
                    dxp[n, :, i * stride_h:i * stride_h + KH,
                        j * stride_w:j * stride_w + KW] += dy[n, f, i, j] * w[f]
    return dxp[:, :, pad_top:pad_top + in_h, pad_left:pad_left + in_w].copy()


def conv2d_backward_weight(x, dy, kernel_h, kernel_w, stride_h, stride_w, pad_top, pad_left):
    N, F, OH, OW = dy.shape
    xp = _padded(x, pad_top, pad_left, OH, OW, stride_h, stride_w, kernel_h, kernel_w)
    dw = np.zeros((F, x.shape[1], kernel_h, kernel_w))
    db = np.zeros(F)
    for n in range(N):
        for i in range(OH):
            for j in range(OW):
                region = xp[n, :, i * stride_h:i * stride_h + kernel_h,
                            j * stride_w:j * stride_w + kernel_w]
                for f in range(F):
                    dw[f] += dy[n, f, i, j] * region
                    db[f] += dy[n, f, i, j]
    return dw, db


def maxpool2d_forward(x, pool_h, pool_w, stride_h, stride_w):
    N, C, H, W = x.shape
    OH = (H - pool_h) // stride_h + 1
    OW = (W - pool_w) // stride_w + 1
    y = np.zeros((N, C, OH, OW))
    argmax = np.zeros((N, C, OH, OW), dtype=np.int64)
    for n in range(N):
        for c in range(C):
            for i in range(OH):
                for j in range(OW):
                    region = x[n, c, i * stride_h:i * stride_h + pool_h,
                               j * stride_w:j * stride_w + pool_w]
                    a, b = divmod(int(np.argmax(region)), pool_w)
                    y[n, c, i, j] = region[a, b]
                    argmax[n, c, i, j] = (i * stride_h + a) * W + j * stride_w + b
    return y, argmax


def maxpool2d_backward(dy, argmax, in_h, in_w):
    N, C, OH, OW = dy.shape
    dx = np.zeros((N, C, in_h * in_w))
    for n in range(N):
        for c in range(C):
            for i in range(OH):
                for j in range(OW):
                    dx[n, c, argmax[n, c, i, j]] += dy[n, c, i, j]
    return dx.reshape(N, C, in_h, in_w)


def dense_forward(x, weight, bias, relu):
    w = weight.astype(np.float64)
    y = np.zeros((x.shape[0], w.shape[1]))
    for n in range(x.shape[0]):  # one sample at a time, as the original FeedForward
        y[n] = np.dot(x[n], w) + bias
    return np.maximum(y, 0.0) if relu else y


def dense_backward(x, weight, dy, y, relu, need_input_grad):
    w = weight.astype(np.float64)
    dx = np.zeros(x.shape) if need_input_grad else None
    dw = np.zeros(w.shape)
    db = np.zeros(w.shape[1])
    for n in range(x.shape[0]):
        g = np.where(y[n] > 0, dy[n], 0.0) if relu else dy[n].astype(np.float64)
        dw += np.outer(x[n], g)
        db += g
        if need_input_grad:
            dx[n] = np.dot(w, g)
    return dx, dw, db


conv2d_backward = fused_backward(conv2d_backward_input, conv2d_backward_weight)


conv2d_pool_forward = pooled_forward(conv2d_forward, maxpool2d_forward)
conv2d_pool_forward_with_indices = pooled_forward_with_indices(conv2d_forward,
                                                               maxpool2d_forward)
conv2d_pool_backward = pooled_backward(conv2d_backward, maxpool2d_backward)
conv2d_backward_parts = in_parts(conv2d_backward)
conv2d_pool_backward_parts = in_parts(conv2d_pool_backward)


def softmax_cross_entropy(logits, labels):
    N, K = logits.shape
    grad = np.zeros((N, K))
    total = 0.0
    for n in range(N):  # one sample at a time, as the original Softmax layer
        if not 0 <= labels[n] < K:
            return np.nan, grad, n
        z = logits[n].astype(np.float64)
        probs = np.exp(z - z.max())
        probs /= probs.sum()
        total -= np.log(probs[labels[n]])
        grad[n] = probs
        grad[n, labels[n]] -= 1
    return total / N, grad / N, -1


def avgpool2d_forward(x, pool_h, pool_w, stride_h, stride_w):
    N, C, H, W = x.shape
    OH = (H - pool_h) // stride_h + 1
    OW = (W - pool_w) // stride_w + 1
    y = np.zeros((N, C, OH, OW))
    for n in range(N):
        for c in range(C):
            for i in range(OH):
                for j in range(OW):
                    region = x[n, c, i * stride_h:i * stride_h + pool_h,
                               j * stride_w:j * stride_w + pool_w]
                    y[n, c, i, j] = np.sum(region, dtype=np.float64) / (pool_h * pool_w)
    return y


def avgpool2d_backward(dy, pool_h, pool_w, stride_h, stride_w, in_h, in_w):
    N, C, OH, OW = dy.shape
    dx = np.zeros((N, C, in_h, in_w))
    for n in range(N):
        for c in range(C):
            for i in range(OH):
                for j in range(OW):
                    dx[n, c, i * stride_h:i * stride_h + pool_h,
                       j * stride_w:j * stride_w + pool_w] += dy[n, c, i, j] / (pool_h * pool_w)
    return dx


def global_avgpool2d_forward(x):
    N, C, H, W = x.shape
    y = np.zeros((N, C))
    for n in range(N):
        for c in range(C):
            y[n, c] = np.sum(x[n, c], dtype=np.float64) / (H * W)
    return y


def global_avgpool2d_backward(dy, in_h, in_w):
    N, C = dy.shape
    dx = np.zeros((N, C, in_h, in_w))
    for n in range(N):
        for c in range(C):
            dx[n, c] = dy[n, c] / (in_h * in_w)
    return dx


def dropout_apply(x, keep, scale):
    out = np.zeros(x.shape)
    for p in np.ndindex(x.shape):
        out[p] = float(x[p]) * (scale if keep[p] else 0.0)
    return out


def activation_forward(x, kind, slope):
    out = np.zeros(x.shape)
    for p in np.ndindex(x.shape):
        v = float(x[p])
        if kind == 0:
            out[p] = 0.0 if v < 0 else v
        elif kind == 1:
            out[p] = v * slope if v < 0 else v
        elif kind == 2:
            out[p] = 1 / (1 + math.exp(-v)) if v >= 0 else math.exp(v) / (1 + math.exp(v))
        else:
            out[p] = math.tanh(v)
    return out


def activation_backward(dy, saved, kind, slope):
    out = np.zeros(dy.shape)
    for p in np.ndindex(dy.shape):
        d, v = float(dy[p]), float(saved[p])
        if kind == 0:
            out[p] = d if v > 0 else 0.0
        elif kind == 1:
            out[p] = d if v > 0 else d * slope
        elif kind == 2:
            out[p] = d * v * (1 - v)
        else:
            out[p] = d * (1 - v * v)
    return out


def batchnorm_forward(x, gamma, beta, eps, relu):
    N, C, L = x.shape
    y = np.zeros(x.shape)
    mean, var, invstd = np.zeros(C), np.zeros(C), np.zeros(C)
    for c in range(C):
        values = [float(x[n, c, p]) for n in range(N) for p in range(L)]
        mean[c] = sum(values) / len(values)
        var[c] = sum((v - mean[c]) ** 2 for v in values) / len(values)
        invstd[c] = 1 / math.sqrt(var[c] + eps)
        for n in range(N):
            for p in range(L):
                t = gamma[c] * (float(x[n, c, p]) - mean[c]) * invstd[c] + beta[c]
                y[n, c, p] = max(t, 0.0) if relu else t
    return y, mean, var, invstd


def batchnorm_inference(x, scale, shift, relu):
    y = np.zeros(x.shape)
    for n, c, p in np.ndindex(x.shape):
        t = float(x[n, c, p]) * scale[c] + shift[c]
        y[n, c, p] = max(t, 0.0) if relu else t
    return y


def batchnorm_backward(dy, x, y, mean, invstd, gamma, relu, need_input_grad):
    # The textbook chain rule: through x-hat, then the variance, then the mean.
    N, C, L = x.shape
    count = N * L
    dx = np.zeros(x.shape) if need_input_grad else None
    dgamma, dbeta = np.zeros(C), np.zeros(C)
    for c in range(C):
        g = np.zeros((N, L))
        xc = np.zeros((N, L))
        for n in range(N):
            for p in range(L):
                g[n, p] = float(dy[n, c, p]) if not relu or y[n, c, p] > 0 else 0.0
                xc[n, p] = float(x[n, c, p]) - mean[c]
        dbeta[c] = g.sum()
        dgamma[c] = (g * xc * invstd[c]).sum()
        if need_input_grad:
            dxhat = g * gamma[c]
            dvar = (dxhat * xc).sum() * -0.5 * invstd[c] ** 3
            dmean = -(dxhat * invstd[c]).sum() - 2 * dvar * xc.sum() / count
            for n in range(N):
                for p in range(L):
                    dx[n, c, p] = (dxhat[n, p] * invstd[c] + dvar * 2 * xc[n, p] / count
                                   + dmean / count)
    return dx, dgamma, dbeta


def shift_flip(images, shifts, flips):
    N, C, H, W = images.shape
    out = np.zeros_like(images)
    for n, c, h, w in np.ndindex(images.shape):
        dy, dx = shifts[n]
        r, v = h + dy, (W - 1 - w if flips[n] else w) + dx
        if 0 <= r < H and 0 <= v < W:
            out[n, c, h, w] = images[n, c, r, v]
    return out
