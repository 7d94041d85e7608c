"""Each convolution, pooling and dense kernel at SEED-ARCH shapes, in three implementations:
`fastcnn.kernels` (Numba), `fastcnn.reference` (vectorised NumPy) and `fastcnn.naive`
(loops, on a smaller batch). One group per operation; compare `per_sample_us`.

conv1: 1 -> 6 channels, conv2: 6 -> 6, both 5x5 'same' on 28x28; pool: 2x2 on 6x28x28;
dense1: 1176 -> 100 with ReLU. `conv2-forward-relu-pool` is the fused conv + ReLU + 2x2
max-pool that inference runs; `conv2-forward-relu-pool-indices` the same with the indices
of the maxima, as training runs it, and `conv2-backward-pooled` its backward pass
(`conv2d_pool_backward`). Only conv2 needs an input gradient: training skips it for the
first layer. `*-backward-fused` is `conv2d_backward` (`dense_backward`), what training
calls for conv1: ReLU mask, weight and bias gradients, and the input gradient, in one pass.
`loss-softmax-cross-entropy` is the loss and its gradient over 10 classes.
`activation-NAME` is the element-wise pass that `activation=NAME` runs after conv2
(float32 sigmoid and tanh are vectorised approximations, kernels/mathf.py).

`suite-LAYER-PASS` (test_suite_layer) is each distinct convolution of the performance
suite (`suite.py`; `layers.py` reports the same in GFLOP/s beside the sgemm roofline):
its forward pass with ReLU, input gradient and weight gradient, Numba and NumPy only.
"""

from __future__ import annotations

import numpy as np
import pytest
from harness import CORES, SAME_5x5, fast_mode
from layers import PASSES, suite_convolutions

from fastcnn import kernels, naive, reference
from fastcnn.ops import ACTIVATIONS

IMPLS = {"numba": kernels, "numpy": reference, "naive": naive}
BATCHES = (64, 256)
NAIVE_BATCH = 2
FAST_BATCH, FAST_NAIVE_BATCH = 8, 1
OPS = ("conv1-forward", "conv1-forward-relu", "conv2-forward", "conv2-forward-relu",
       "conv2-forward-relu-pool", "conv2-forward-relu-pool-indices", "conv2-backward-pooled",
       "conv2-backward-input", "conv1-backward-weight", "conv2-backward-weight",
       "conv1-backward-fused", "conv2-backward-fused", "pool-forward", "pool-backward",
       "dense1-forward-relu", "dense1-backward-fused", "loss-softmax-cross-entropy",
       "activation-leaky_relu", "activation-sigmoid", "activation-tanh")


def pytest_generate_tests(metafunc):
    if "impl" not in metafunc.fixturenames:
        return
    fast = fast_mode(metafunc.config)
    batches = (FAST_BATCH,) if fast else BATCHES
    cases = [("numba", b, t) for b in batches for t in (1, 2)]
    # NumPy and the loops don't use Numba threads; BLAS is pinned to one thread.
    cases += [("numpy", b, 1) for b in batches]
    if metafunc.function.__name__ != "test_suite_layer":  # the loops: SEED-ARCH's shapes
        cases.append(("naive", FAST_NAIVE_BATCH if fast else NAIVE_BATCH, 1))
    params = [pytest.param(*c, id=f"{c[0]}-b{c[1]}-t{c[2]}", marks=pytest.mark.skipif(
        c[2] > CORES, reason=f"needs {c[2]} cores, this machine has {CORES}")) for c in cases]
    # `threads` is the conftest fixture that sets (and restores) fastcnn's threads.
    metafunc.parametrize("impl,batch,threads", params, indirect=["threads"])


def make_case(op: str, batch: int):
    """(function name, args, expected output shapes) for one operation, float32 data."""
    rng = np.random.default_rng(0)

    def normal(*shape, scale=1.0):
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    if op == "loss-softmax-cross-entropy":
        labels = rng.integers(0, 10, batch)
        return "softmax_cross_entropy", (normal(batch, 10, scale=3.0), labels), [(), (batch, 10),
                                                                                ()]
    if op.startswith("activation-"):
        kind = ACTIVATIONS[op.removeprefix("activation-")]
        return "activation_forward", (normal(batch, 6, 28, 28, scale=3.0), kind, 0.01), [
            (batch, 6, 28, 28)]
    if op.startswith("dense1"):
        x, w, y = normal(batch, 1176), normal(1176, 100, scale=0.05), normal(batch, 100)
        if op == "dense1-forward-relu":
            return "dense_forward", (x, w, normal(100), True), [(batch, 100)]
        args = (x, w, normal(batch, 100), np.maximum(y, 0), True, True)
        return "dense_backward", args, [(batch, 1176), (1176, 100), (100,)]
    pt, pl, oh, ow = SAME_5x5
    cin = 1 if op.startswith("conv1") else 6
    x = normal(batch, cin, 28, 28)
    w = normal(6, cin, 5, 5, scale=0.2)
    dy = normal(batch, 6, 28, 28)
    full = (batch, 6, 28, 28)
    half = (batch, 6, 14, 14)
    if op.startswith("conv2-forward-relu-pool"):
        args = (x, w, normal(6), 1, 1, pt, pl, oh, ow, True, 2, 2)
        if op.endswith("indices"):
            return "conv2d_pool_forward_with_indices", args, [half, half]
        return "conv2d_pool_forward", args, [half]
    if op == "conv2-backward-pooled":
        y, window = reference.conv2d_pool_forward_with_indices(
            x, w, normal(6), 1, 1, pt, pl, oh, ow, True, 2, 2)
        args = (x, w, normal(*half), y.astype(np.float32), window, True, 1, 1, pt, pl, oh, ow,
                2, 2, True)
        return "conv2d_pool_backward", args, [full, (6, cin, 5, 5), (6,)]
    if op.endswith(("forward", "forward-relu")) and op.startswith("conv"):
        args = (x, w, normal(6), 1, 1, pt, pl, oh, ow, op.endswith("relu"))
        return "conv2d_forward", args, [full]
    if op == "conv2-backward-input":
        return "conv2d_backward_input", (dy, w, 28, 28, 1, 1, pt, pl), [full]
    if op.endswith("backward-fused"):
        y = np.maximum(normal(batch, 6, 28, 28), 0)  # a fused conv + ReLU output
        grad_in = op.startswith("conv2")
        shapes = [full if grad_in else None, (6, cin, 5, 5), (6,)]
        return "conv2d_backward", (x, w, dy, y, True, 1, 1, pt, pl, grad_in), shapes
    if op.endswith("backward-weight"):
        return ("conv2d_backward_weight", (x, dy, 5, 5, 1, 1, pt, pl),
                [(6, cin, 5, 5), (6,)])
    if op == "pool-forward":
        return "maxpool2d_forward", (x, 2, 2, 2, 2), [half, half]
    _, argmax = reference.maxpool2d_forward(x, 2, 2, 2, 2)
    return "maxpool2d_backward", (normal(*half), argmax, 28, 28), [full]


@pytest.mark.parametrize("op", OPS)
def test_kernel(run_benchmark, benchmark, op, impl, batch, threads):
    name, args, shapes = make_case(op, batch)
    benchmark.group = op
    out = run_benchmark(getattr(IMPLS[impl], name), *args, batch=batch, impl=impl,
                        threads=threads)
    outs = out if isinstance(out, tuple) else (out,)
    assert [None if o is None else np.shape(o) for o in outs] == shapes
    assert all(np.isfinite(o).all() for o in outs if isinstance(o, np.ndarray | np.floating))


SUITE_LAYERS = {shape.label.replace("->", "to").replace(" on ", "-").replace(" ", "-"): shape
                for _, shape in suite_convolutions()}


def suite_case(shape, conv_pass: str, batch: int):
    """(function name, args, expected output shapes) of one pass of a suite convolution."""
    rng = np.random.default_rng(0)
    pt, pl, oh, ow = shape.geometry
    (sh, sw), (kh, kw) = shape.stride, shape.kernel
    c, h, w, f = shape.channels, shape.height, shape.width, shape.filters
    x = rng.standard_normal((batch, c, h, w), np.float32)
    weight = (rng.standard_normal((f, c, kh, kw)) * 0.1).astype(np.float32)
    dy = rng.standard_normal((batch, f, oh, ow), np.float32)
    if conv_pass == "forward":
        return ("conv2d_forward", (x, weight, np.zeros(f, np.float32), sh, sw, pt, pl, oh, ow,
                                   shape.relu), [(batch, f, oh, ow)])
    if conv_pass == "input":
        return ("conv2d_backward_input", (dy, weight, h, w, sh, sw, pt, pl),
                [(batch, c, h, w)])
    return ("conv2d_backward_weight", (x, dy, kh, kw, sh, sw, pt, pl),
            [(f, c, kh, kw), (f,)])


@pytest.mark.parametrize("conv_pass", PASSES)
@pytest.mark.parametrize("layer", SUITE_LAYERS)
def test_suite_layer(run_benchmark, benchmark, layer, conv_pass, impl, batch, threads):
    name, args, shapes = suite_case(SUITE_LAYERS[layer], conv_pass, batch)
    benchmark.group = f"suite-{layer}-{conv_pass}"
    out = run_benchmark(getattr(IMPLS[impl], name), *args, batch=batch, impl=impl,
                        threads=threads)
    outs = out if isinstance(out, tuple) else (out,)
    assert [np.shape(o) for o in outs] == shapes
    assert all(np.isfinite(o).all() for o in outs)
