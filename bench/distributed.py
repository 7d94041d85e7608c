"""Data-parallel training over MPI on one machine: training samples/s of K ranks x T
threads, and what each step exchanges and how long that takes.

    python bench/distributed.py --network seed_arch --threads 2           # one process
    mpiexec -n 2 python bench/distributed.py --network seed_arch --threads 1

Synthetic uint8 images of the network's input shape. Prints one JSON object (rank 0):
samples/s (best of --repeats epochs of --samples images), the bytes a step gathers
(activations at the cut, per-chunk weight-gradient parts), the measured time of those
exchanges alone (--exchanges repetitions, between barriers), and for comparison a plain
float32 Allreduce of all the gradients (what a not bit-identical scheme would send), and
the time of the head's forward and backward passes on the whole batch (which every rank
runs).
Measurements go to bench/README.md.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time

import numpy as np

import fastcnn as fc
from fastcnn import distributed
from fastcnn.kernels._tuning import GRAD_CHUNK
from fastcnn.models import MODELS


def cifar_vgg() -> fc.Sequential:
    """The CIFAR VGG-style network of the performance suite (issue 15)."""
    def conv(filters: int) -> fc.Conv2D:
        return fc.Conv2D(filters, 3, padding="same", activation="relu")
    return fc.Sequential([conv(32), conv(32), fc.MaxPool2D(2), conv(64), conv(64),
                          fc.MaxPool2D(2), fc.Flatten(), fc.Dense(128, activation="relu"),
                          fc.Dense(10)], input_shape=(3, 32, 32), seed=0,
                         input_mean=(0.5,) * 3, input_std=(0.25,) * 3)


NETWORKS = {"seed_arch": lambda: MODELS["seed_arch"](seed=0), "cifar_vgg": cifar_vgg}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--network", choices=sorted(NETWORKS), default="seed_arch")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--samples", type=int, default=3200)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--exchanges", type=int, default=200)
    args = p.parse_args()
    MPI = distributed.require_mpi()
    comm = MPI.COMM_WORLD
    fc.set_threads(args.threads)
    model = NETWORKS[args.network]()
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (args.samples, *model.input_shape), dtype=np.uint8)
    y = rng.integers(0, 10, args.samples).astype(np.int64)
    optimizer = fc.SGD(0.01, momentum=0.9)
    model.warmup(optimizer)
    dp = distributed.DataParallel(model, comm)
    steps = math.ceil(args.samples / args.batch)
    best = math.inf
    for _ in range(args.repeats):
        comm.Barrier()
        dp.comm_seconds = 0.0
        start = time.perf_counter()
        for b in range(steps):
            idx = slice(b * args.batch, (b + 1) * args.batch)
            if comm.Get_size() == 1:  # one process: the plain training step
                model.train_step(model.prepare(x[idx]), y[idx], optimizer)
            else:
                dp.train_step(x[idx], y[idx], optimizer, None)
        seconds = time.perf_counter() - start
        if seconds < best:
            best, waited = seconds, dp.comm_seconds
    # The exchanges of one full step alone, between barriers.
    plan = model._plans[True]
    cut = dp.cut[True]
    first = plan[cut].first if cut < len(plan) else len(model.layers)
    at_cut = model.layers[first - 1].output_shape
    lo, hi = distributed.shard(args.batch, comm.Get_size(), comm.Get_rank(), GRAD_CHUNK)
    rows = np.zeros((hi - lo, *at_cut), dtype=model.dtype)
    conv_params = sum(p.size for layer in dp.convs for p in layer.params.values())
    parts = np.zeros((-(-(hi - lo) // GRAD_CHUNK), conv_params))
    counts = dp._counts(args.batch, GRAD_CHUNK)
    chunk_counts = [-(-c // GRAD_CHUNK) for c in counts]
    comm.Barrier()
    start = time.perf_counter()
    for _ in range(args.exchanges):
        dp._allgather_rows(rows, counts, "bench")
        dp._allgather_rows(parts, chunk_counts, "bench")
    exchange = (time.perf_counter() - start) / args.exchanges
    # The head (every rank runs it on the whole batch): forward, loss and backward alone.
    acts = model.prepare(x[:args.batch])
    for step in plan[:cut]:
        acts = step.forward(acts, True, None)
    labels = y[:args.batch]
    start = time.perf_counter()
    for _ in range(20):
        a = acts
        for step in plan[cut:]:
            a = step.forward(a, True, None)
        model.loss(a, labels)
        d = model.loss.backward()
        for step in reversed(plan[cut:]):
            d = step.backward(d, step.first > 0)
    head = (time.perf_counter() - start) / 20
    grads = np.zeros(sum(p.size for p in model.parameters()), dtype=np.float32)
    total = np.empty_like(grads)
    comm.Barrier()
    start = time.perf_counter()
    for _ in range(args.exchanges):
        comm.Allreduce(grads, total, op=MPI.SUM)
    allreduce = (time.perf_counter() - start) / args.exchanges
    if comm.Get_rank() == 0:
        step = best / steps
        print(json.dumps({
            "network": args.network, "cpu": platform.processor() or platform.machine(),
            "ranks": comm.Get_size(), "threads": args.threads, "batch": args.batch,
            "samples_per_s": round(args.samples / best, 1), "step_ms": round(1e3 * step, 3),
            "waited_in_exchanges_ms_per_step": round(1e3 * waited / steps, 3),
            "gathered_bytes_per_step": {
                "activations": args.batch * int(np.prod(at_cut)) * model.dtype.itemsize,
                "gradient_parts": -(-args.batch // GRAD_CHUNK) * conv_params * 8},
            "exchange_ms_per_step": round(1e3 * exchange, 3),
            "head_ms_per_step": round(1e3 * head, 3),
            "allreduce_bytes": grads.nbytes, "allreduce_ms": round(1e3 * allreduce, 3),
        }))


if __name__ == "__main__":
    main()
