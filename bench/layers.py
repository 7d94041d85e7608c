"""Every convolution of the suite, pass by pass, in GFLOP/s beside the sgemm roofline.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python bench/layers.py --markdown

For each convolution of `suite.ARCHS` (each distinct shape once) at one batch size and
each thread count: the forward pass (with its fused ReLU, as training runs it), the
input gradient and the weight gradient (with the bias's) separately, in GFLOP/s of
direct-convolution FLOPs (2 N F C KH KW OH OW per pass, whatever the algorithm), for
fastcnn and, where installed, PyTorch (`aten.convolution_backward` with one output at a
time). The roofline is OpenBLAS sgemm (NumPy's float32 matmul, 2048^3) on the same
threads, measured in the same run. These machines set OPENBLAS_CORETYPE=Haswell and
OPENBLAS_L2_SIZE, which halve sgemm on AVX-512 CPUs: unset both in this command alone
(never in tests or CI); the report names the kernel threadpoolctl says runs.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass

import numpy as np
import suite
from compare import machine_info
from harness import CORES
from threadpoolctl import threadpool_info, threadpool_limits

import fastcnn
from fastcnn import kernels
from fastcnn.layers import Conv2D

PASSES = ("forward", "input", "weight")


@dataclass(frozen=True)
class ConvShape:
    channels: int
    height: int
    width: int
    filters: int
    kernel: tuple[int, int]
    stride: tuple[int, int]
    geometry: tuple[int, int, int, int]  # pad_top, pad_left, out_h, out_w
    relu: bool

    @property
    def label(self) -> str:
        (kh, kw), (sh, sw) = self.kernel, self.stride
        stride = "" if (sh, sw) == (1, 1) else f" s{sh}"
        return (f"{self.channels}->{self.filters} {kh}x{kw}{stride} on {self.height}x"
                f"{self.width}")

    @property
    def taps(self) -> int:
        return self.channels * self.kernel[0] * self.kernel[1]

    def flops(self, batch: int) -> float:
        _, _, oh, ow = self.geometry
        return 2.0 * batch * self.filters * self.taps * oh * ow

    def algorithm(self) -> str:
        _, _, oh, ow = self.geometry
        return kernels.conv.algorithm(self.channels, *self.kernel, *self.stride, oh, ow)


def suite_convolutions() -> list[tuple[list[str], ConvShape]]:
    """Each distinct convolution of the suite, with the networks that have it."""
    found: dict[ConvShape, list[str]] = {}
    for arch in suite.ARCHS:
        for layer in suite.build(arch).layers:
            if isinstance(layer, Conv2D):
                c, h, w = layer.input_shape
                geo = fastcnn.functional.conv_geometry(h, w, layer.kernel_size, layer.stride,
                                                       layer.padding)
                shape = ConvShape(c, h, w, layer.filters, layer.kernel_size, layer.stride, geo,
                                  layer.activation == "relu")
                found.setdefault(shape, []).append(arch)
    return [(archs, shape) for shape, archs in found.items()]


def best_seconds(fn, repeats: int, min_time: float = 0.05) -> float:
    """The fastest of `repeats` timings, each of enough calls to take min_time."""
    fn()
    start = time.perf_counter()
    fn()
    calls = max(1, int(min_time / max(time.perf_counter() - start, 1e-6)))
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        best = min(best, (time.perf_counter() - start) / calls)
    return best


def fastcnn_passes(shape: ConvShape, batch: int, rng) -> dict[str, object]:
    pt, pl, oh, ow = shape.geometry
    sh, sw = shape.stride
    kh, kw = shape.kernel
    x = rng.standard_normal((batch, shape.channels, shape.height, shape.width), np.float32)
    w = (rng.standard_normal((shape.filters, shape.channels, kh, kw)) * 0.1).astype(np.float32)
    b = np.zeros(shape.filters, np.float32)
    dy = rng.standard_normal((batch, shape.filters, oh, ow), np.float32)
    return {
        "forward": lambda: kernels.conv2d_forward(x, w, b, sh, sw, pt, pl, oh, ow, shape.relu),
        "input": lambda: kernels.conv2d_backward_input(dy, w, shape.height, shape.width, sh, sw,
                                                       pt, pl),
        "weight": lambda: kernels.conv2d_backward_weight(x, dy, kh, kw, sh, sw, pt, pl),
    }


def torch_passes(shape: ConvShape, batch: int, rng) -> dict[str, object] | None:
    try:
        import torch
    except ImportError:
        return None
    pt, pl, oh, ow = shape.geometry
    kh, kw = shape.kernel
    # The suite's paddings are symmetric; PyTorch's padding= takes one per side pair.
    x = torch.from_numpy(rng.standard_normal((batch, shape.channels, shape.height, shape.width),
                                             np.float32))
    w = torch.from_numpy(rng.standard_normal((shape.filters, shape.channels, kh, kw),
                                             np.float32))
    b = torch.zeros(shape.filters)
    dy = torch.from_numpy(rng.standard_normal((batch, shape.filters, oh, ow), np.float32))
    args = (list(shape.stride), [pt, pl])
    backward = torch.ops.aten.convolution_backward

    def forward():
        with torch.no_grad():
            y = torch.nn.functional.conv2d(x, w, b, shape.stride, (pt, pl))
            return torch.relu_(y) if shape.relu else y

    return {
        "forward": forward,
        "input": lambda: backward(dy, x, w, [shape.filters], *args, [1, 1], False, [0, 0], 1,
                                  [True, False, False]),
        "weight": lambda: backward(dy, x, w, [shape.filters], *args, [1, 1], False, [0, 0], 1,
                                   [False, True, True]),
    }


def sgemm_gflops(threads: int, repeats: int, n: int = 2048) -> float:
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), np.float32)
    b = rng.standard_normal((n, n), np.float32)
    out = np.empty((n, n), np.float32)
    with threadpool_limits(limits=threads, user_api="blas"):
        seconds = best_seconds(lambda: np.matmul(a, b, out=out), repeats, 0.2)
    return 2.0 * n**3 / seconds / 1e9


def measure(batch: int, threads: list[int], repeats: int, with_torch: bool) -> dict:
    rng = np.random.default_rng(0)
    convs = suite_convolutions()
    result = {"machine": machine_info(), "batch": batch, "blas": [
        {k: info.get(k) for k in ("internal_api", "version", "architecture", "filepath")}
        for info in threadpool_info() if info.get("user_api") == "blas"], "runs": []}
    for t in threads:
        fastcnn.set_threads(t)
        run = {"threads": t, "sgemm_gflops": sgemm_gflops(t, repeats), "layers": []}
        if with_torch:
            import torch
            torch.set_num_threads(t)
        for archs, shape in convs:
            row = {"layer": shape.label, "networks": archs, "taps": shape.taps,
                   "algorithm": shape.algorithm(), "fastcnn": {}, "torch": {}}
            systems = {"fastcnn": fastcnn_passes(shape, batch, rng)}
            if with_torch:
                systems["torch"] = torch_passes(shape, batch, rng)
            for name, passes in systems.items():
                for p in PASSES:
                    seconds = best_seconds(passes[p], repeats)
                    row[name][p] = shape.flops(batch) / seconds / 1e9
            run["layers"].append(row)
            print(f"threads {t}: {shape.label}: " + ", ".join(
                f"{name} " + "/".join(f"{row[name][p]:.0f}" for p in PASSES)
                for name in systems), file=sys.stderr, flush=True)
        result["runs"].append(run)
    return result


def markdown(result: dict) -> str:
    blas = ", ".join(f"{b['internal_api']} {b['version']} ({b['architecture']})"
                     for b in result["blas"])
    m = result["machine"]
    lines = [f"CPU: {m['cpu']} (LLVM {m['llvm_cpu']}, {m['vectors']}); batch "
             f"{result['batch']}; float32; sgemm: {blas}", ""]
    for run in result["runs"]:
        roof = run["sgemm_gflops"]
        with_torch = any(row["torch"] for row in run["layers"])
        lines += [f"{run['threads']} thread(s), sgemm roofline {roof:.0f} GFLOP/s; GFLOP/s "
                  "forward / input gradient / weight gradient, and % of the roofline:", ""]
        head = "| layer (networks) | taps | algorithm | fastcnn | % of roofline |"
        rule = "|---|---|---|---|---|"
        if with_torch:
            head += " PyTorch | fastcnn / PyTorch |"
            rule += "---|---|"
        lines += [head, rule]
        for row in run["layers"]:
            ours = [row["fastcnn"][p] for p in PASSES]
            cells = [f"{row['layer']} ({', '.join(row['networks'])})", str(row["taps"]),
                     row["algorithm"], " / ".join(f"{v:.0f}" for v in ours),
                     " / ".join(f"{100 * v / roof:.0f}" for v in ours)]
            if with_torch:
                theirs = [row["torch"][p] for p in PASSES]
                cells += [" / ".join(f"{v:.0f}" for v in theirs),
                          " / ".join(f"{a / b:.2f}" for a, b in zip(ours, theirs, strict=True))]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--threads", default=",".join(str(t) for t in (1, 2) if t <= CORES),
                   help="comma-separated thread counts (default 1,2)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--no-torch", action="store_true", help="fastcnn and the roofline only")
    p.add_argument("--markdown", action="store_true", help="print tables, not JSON")
    p.add_argument("--out", default=None, help="also write the JSON here")
    args = p.parse_args(argv)
    threads = [int(t) for t in args.threads.split(",")]
    result = measure(args.batch, threads, args.repeats, not args.no_torch)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)
    print(markdown(result) if args.markdown else json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
