"""Compare fastcnn with PyTorch, Keras and the naive per-sample NumPy loops on SEED-ARCH,
and with PyTorch on the other networks of the performance suite (`suite.py`).

    python bench/compare.py [--arch NAME,...|all] [--quick] [--out FILE] [--markdown]

One network at a time; its systems run side by side, one after another (never at once):
every repeat times each configuration in turn (rotating the order), and a result is
the median over repeats. Each system lives in a worker process of its own, so that no
library's threads, allocator settings or thread limits (fastcnn pins BLAS and tunes
glibc malloc; TensorFlow and PyTorch start thread pools) touch another's numbers. Each
trains on the same pre-normalised float32 images, already in memory in its own layout.
Progress goes to stderr, the report to stdout.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import shlex
import statistics
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from importlib.util import find_spec
from pathlib import Path

import numba
import numpy as np
from harness import (
    CORES,
    TF_HINT,
    TORCH_HINT,
    CeilingSystem,
    FastcnnSystem,
    KerasSystem,
    NaiveSystem,
    TorchSystem,
    load_images,
    startup_time,
    versions,
)
from llvmlite.binding import get_host_cpu_features, get_host_cpu_name
from suite import ARCHS, synthetic

EPOCH = 60_000
PREDICT_BATCH = 1000
BATCHES = (1, 64, 256)
KERAS_EXTRA_BATCHES = (32, 128, 512, 1024)  # searched for Keras' best batch size
THREADS = tuple(t for t in (1, 2) if t <= CORES)
REF_BATCH = 64  # fastcnn's default batch size: the reference where batches differ
# Samples per timed repeat, so that small and large batches get similar wall time.
TARGET_SAMPLES, MIN_STEPS, MAX_STEPS = 4096, 30, 200
POOL = 8  # distinct batches cycled through per configuration
SYSTEMS = ("fastcnn", "torch", "torch-malloc", "keras", "naive", "ceiling")
SEED_ONLY = ("keras", "naive", "ceiling")  # built for SEED-ARCH alone
# glibc's malloc as fastcnn.set_threads leaves it (keep freed memory, no mmap below
# 32 MB), set through glibc's environment variables for the "torch-malloc" worker: with
# the defaults, PyTorch maps and unmaps its large buffers on every call.
TUNED_MALLOC = {"MALLOC_MMAP_THRESHOLD_": str(32 << 20), "MALLOC_TRIM_THRESHOLD_": str(1 << 30)}
TORCH_TUNED = "PyTorch, malloc tuned"


@dataclass
class Config:
    """One thing to time: `steps` train steps at `batch`, or `steps` predict calls."""

    system: object
    label: str
    batch: int
    threads: int
    steps: int
    kind: str = "train"  # or "predict", or "ceiling" (timed like "train", not a network)
    inputs: list = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)

    @property
    def key(self) -> str:
        return f"{self.label} {self.kind} b{self.batch} t{self.threads}"

    def run(self) -> float:
        """Seconds for `steps` calls; the system's threads are set before the clock."""
        self.system.activate()
        call = self.system.predict if self.kind == "predict" else self.system.train_step
        inputs, n = self.inputs, len(self.inputs)
        start = time.perf_counter()
        for i in range(self.steps):
            out = call(*inputs[i % n])
        elapsed = time.perf_counter() - start
        if self.kind == "train" and not np.isfinite(out):
            raise RuntimeError(f"{self.key}: loss is {out}")
        return elapsed

    @property
    def samples_per_s(self) -> float:
        return self.batch * self.steps / statistics.median(self.seconds)


@dataclass
class RemoteConfig:
    """A Config living in a worker process: run() asks the worker to time it."""

    worker: Worker
    index: int
    label: str
    batch: int
    threads: int
    steps: int
    kind: str
    seconds: list[float] = field(default_factory=list)

    key = Config.key
    samples_per_s = Config.samples_per_s

    def run(self) -> float:
        return self.worker.call(self.index)


# Pause between timed runs, so that the threads a system leaves spinning (OpenMP,
# TensorFlow's pools) have gone to sleep before the next system starts.
SETTLE_S = 0.2


class Worker:
    """One system in a process of its own (spawned, so nothing is inherited)."""

    def __init__(self, system: str, args: argparse.Namespace) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(target=_serve, args=(child, system, vars(args)),
                                   daemon=True)
        env = TUNED_MALLOC if system == "torch-malloc" else {}
        saved = {k: os.environ.get(k) for k in env}
        os.environ.update(env)  # the spawned process starts with this environment
        try:
            self.process.start()
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
        child.close()
        self.info = self._receive()
        self.configs = [RemoteConfig(self, i, *c) for i, c in enumerate(self.info["configs"])]

    def _receive(self):
        try:
            status, value = self.conn.recv()
        except EOFError:
            raise RuntimeError("a benchmark worker died (see its messages above)") from None
        if status == "error":
            raise RuntimeError(f"a benchmark worker failed:\n{value}")
        return value

    def call(self, index: int) -> float:
        self.conn.send(index)
        return self._receive()

    def close(self) -> None:
        try:
            self.conn.send(None)
        except OSError:
            pass
        self.process.join(timeout=30)
        if self.process.is_alive():
            self.process.terminate()


def _serve(conn, system: str, settings: dict) -> None:
    """Worker process: build one system's configurations, then time them on request."""
    try:
        args = argparse.Namespace(**settings)
        biggest = max(args.batches + (() if args.quick else KERAS_EXTRA_BATCHES))
        n = max(biggest * POOL, PREDICT_BATCH)
        x, y = load_images(n) if args.arch == "seed_arch" else synthetic(args.arch, n)
        train, predict, notes = build_configs(args, x, y, (system,))
        configs = train + predict
        try:
            layer = numba.threading_layer()
        except ValueError:  # no parallel kernel ran
            layer = None
        conn.send(("ok", {"notes": notes, "threading_layer": layer,
                          "configs": [(c.label, c.batch, c.threads, c.steps, c.kind)
                                      for c in configs]}))
        while (index := conn.recv()) is not None:
            conn.send(("ok", configs[index].run()))
    except Exception:
        conn.send(("error", traceback.format_exc()))


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true",
                   help="few steps and repeats: checks that everything runs, numbers are noise")
    p.add_argument("--out", type=Path, help="also write every timing as JSON here")
    p.add_argument("--markdown", action="store_true", help="print the report as Markdown")
    p.add_argument("--arch", default="seed_arch",
                   help=f"comma-separated networks of the suite, or all: {', '.join(ARCHS)} "
                        "(default: seed_arch; the others against PyTorch only, on "
                        "synthetic images)")
    p.add_argument("--systems", default=",".join(SYSTEMS),
                   help=f"comma-separated subset of {','.join(SYSTEMS)} (default: all)")
    p.add_argument("--repeats", type=int, help="timed repeats per configuration (9; quick 2)")
    p.add_argument("--naive-samples", type=int,
                   help="samples the naive loops train on, in all (300; quick 2)")
    p.add_argument("--no-startup", action="store_true",
                   help="skip the cold/warm start-up measurement (compiles every kernel)")
    p.add_argument("--batches", default=",".join(map(str, BATCHES)),
                   help=f"comma-separated training batch sizes (default: "
                        f"{','.join(map(str, BATCHES))}; Keras also searches "
                        f"{','.join(map(str, KERAS_EXTRA_BATCHES))})")
    args = p.parse_args(argv)
    try:
        args.batches = tuple(int(b) for b in args.batches.split(",") if b.strip())
    except ValueError:
        p.error(f"--batches takes comma-separated integers, got {args.batches!r}")
    if not args.batches or min(args.batches) < 1:
        p.error("--batches needs at least one batch size >= 1")
    args.systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    unknown = set(args.systems) - set(SYSTEMS)
    if unknown:
        p.error(f"unknown systems {sorted(unknown)}; choose from {SYSTEMS}")
    args.archs = list(ARCHS) if args.arch == "all" else [
        a.strip() for a in args.arch.split(",") if a.strip()]
    unknown = set(args.archs) - set(ARCHS)
    if unknown or not args.archs:
        p.error(f"unknown networks {sorted(unknown)}; choose from {', '.join(ARCHS)} or all")
    args.repeats = args.repeats or (2 if args.quick else 9)
    args.naive_samples = args.naive_samples or (2 if args.quick else 300)
    if args.repeats < 1 or args.naive_samples < 1:
        p.error("--repeats and --naive-samples must be >= 1")
    return args


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def steps_for(batch: int, quick: bool) -> int:
    return 3 if quick else int(np.clip(round(TARGET_SAMPLES / batch), MIN_STEPS, MAX_STEPS))


def machine_info() -> dict:
    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    # The kernels' speed depends on the vector width Numba compiles for.
    features = get_host_cpu_features()
    vectors = ("AVX-512" if features.get("avx512f") else
               "AVX2" if features.get("avx2") else "no AVX2")
    return {"cpu": cpu, "llvm_cpu": get_host_cpu_name(), "vectors": vectors,
            "logical_cores": os.cpu_count(), "usable_cores": usable,
            "numba_threads": CORES, "platform": platform.platform(), "load_1min": load}


def measure_startup(quick: bool) -> dict:
    """Cold (empty Numba cache: every kernel compiles) then warm, in fresh processes."""
    with tempfile.TemporaryDirectory(prefix="fastcnn-numba-cache-") as cache:
        log("start-up: cold (compiling every kernel) ...")
        cold = startup_time(cache)
        warm_runs = [startup_time(cache) for _ in range(1 if quick else 3)]
    warm = min(warm_runs, key=lambda r: r["total_s"])  # least disturbed of the runs
    return {"cold": cold, "warm": warm, "warm_runs": warm_runs}


def build_configs(args, x, y, systems):
    """The given systems' configurations, warmed up, with their inputs already converted."""
    quick, train, predict, notes = args.quick, [], [], {}

    def add(system, label, batches, threads, warmup=1):
        system.activate()
        for b in batches:
            steps = steps_for(b, quick)
            inputs = [system.native(x[i * b:(i + 1) * b], y[i * b:(i + 1) * b])
                      for i in range(min(POOL, steps))]
            cfg = Config(system, label, b, threads, steps, inputs=inputs)
            for i in range(warmup):  # JIT compile / tf.function tracing, untimed
                system.train_step(*inputs[i % len(inputs)])
            train.append(cfg)
        xp = system.native(x[:PREDICT_BATCH], y[:PREDICT_BATCH])[0]
        system.predict(xp)
        predict.append(Config(system, label, PREDICT_BATCH, threads, 1 if quick else 3,
                              kind="predict", inputs=[(xp,)]))

    if "fastcnn" in systems:
        for t in THREADS:
            log(f"building fastcnn, {t} thread(s) ...")
            add(FastcnnSystem(t, arch=args.arch), "fastcnn", args.batches, t)
    for name, label in (("torch", "PyTorch"), ("torch-malloc", TORCH_TUNED)):
        if name not in systems:
            continue
        if find_spec("torch") is None:
            notes[name] = f"{label} skipped: {TORCH_HINT}"
            continue
        for t in THREADS:
            log(f"building {label}, {t} thread(s) ...")
            add(TorchSystem(t, arch=args.arch), label, args.batches, t)
        if name == "torch-malloc":
            notes[name] = (f"{label}: PyTorch in a process started with "
                           + " ".join(f"{k}={v}" for k, v in TUNED_MALLOC.items())
                           + ", glibc's malloc as fastcnn sets it for itself.")
    if "keras" in systems:
        if find_spec("tensorflow") is None or find_spec("keras") is None:
            notes["keras"] = f"Keras skipped: {TF_HINT}"
        else:
            log("building Keras (importing TensorFlow) ...")
            batches = args.batches if quick else args.batches + tuple(
                b for b in KERAS_EXTRA_BATCHES if b not in args.batches)
            # One model per batch size: each traces its own train function.
            for b in batches:
                system = KerasSystem()
                add(system, "Keras", (b,), system.threads, warmup=2)
                if b != batches[0]:
                    predict.pop()  # one inference measurement is enough
            notes["keras"] = (f"Keras {system.threads} thread(s) only: TensorFlow fixes its "
                              f"thread pools at start-up; compiled train_on_batch "
                              f"(jit_compile={system.jit_compile}) and predict_on_batch.")
    if "naive" in systems:
        log("building the naive loops ...")
        system = NaiveSystem()
        system.activate()
        per_repeat = max(1, args.naive_samples // args.repeats)
        inputs = [(x[i:i + 1], y[i:i + 1]) for i in range(POOL)]
        system.train_step(*inputs[0])
        train.append(Config(system, "naive", 1, 1, per_repeat, inputs=inputs))
        # Inference one sample at a time too: time a few, extrapolate to the batch.
        infer_n = max(1, per_repeat // 2)
        predict.append(Config(system, "naive", infer_n, 1, 1, kind="predict",
                              inputs=[(x[:infer_n],)]))
        notes["naive"] = (
            f"naive NumPy loops: `fastcnn.naive` loop kernels, one sample per step, float64; "
            f"extrapolated from {per_repeat * args.repeats} training and "
            f"{infer_n * args.repeats} inference samples.")
    if "ceiling" in systems and len(THREADS) > 1:
        log("building the machine ceiling ...")
        for t in THREADS:
            system = CeilingSystem(t)
            system.activate()
            system.train_step(None, None)  # compile
            train.append(Config(system, "ceiling", 1, t, 1 if quick else 10, kind="ceiling",
                                inputs=[(None, None)]))
    return train, predict, notes


def measure(configs: list, repeats: int, settle: float = SETTLE_S) -> None:
    for r in range(repeats):
        k = r % len(configs)
        for cfg in configs[k:] + configs[:k]:  # rotate so no system always goes first
            time.sleep(settle)
            cfg.seconds.append(cfg.run())
            log(f"[{r + 1}/{repeats}] {cfg.key}: {cfg.batch * cfg.steps / cfg.seconds[-1]:,.1f}"
                " samples/s")


def make_rows(train: list, predict: list, batches: tuple) -> list[dict]:
    infer = {(c.label, c.threads): c.samples_per_s for c in predict}
    fast = {(c.batch, c.threads): c.samples_per_s for c in train if c.label == "fastcnn"}
    keras = [c for c in train if c.label == "Keras"]
    best_keras = max(keras, key=lambda c: c.samples_per_s) if keras else None
    rows = []
    for c in train:
        if c.label == "Keras" and c.batch not in batches and c is not best_keras:
            continue  # searched for the best batch size only
        name = {"naive": f"naive NumPy loops (extrapolated from {c.steps * len(c.seconds)} "
                         "samples)"}.get(c.label, c.label)
        if c is best_keras:
            name += " (best batch)"
        ref = fast.get((c.batch, c.threads))
        fallback = ref is None
        if fallback:
            ref = fast.get((REF_BATCH, c.threads))
        rows.append({
            "system": name, "batch": c.batch, "threads": c.threads,
            "epoch_s": EPOCH / c.samples_per_s, "train_samples_per_s": c.samples_per_s,
            "infer_samples_per_s": infer.get((c.label, c.threads)),
            "vs_fastcnn": c.samples_per_s / ref if ref else None,
            "vs_fastcnn_batch": REF_BATCH if fallback else c.batch,
            "steps_per_repeat": c.steps, "seconds_per_repeat": c.seconds,
        })
    return rows


def num(v: float | None) -> str:
    if v is None:
        return "-"
    return f"{v:,.0f}" if v >= 100 else f"{v:.3g}"


def table(rows: list[dict], markdown: bool) -> str:
    head = ["system", "batch", "threads", "s / epoch (60k)", "train samples/s",
            f"inference samples/s (batch {PREDICT_BATCH})", "vs fastcnn"]
    body = []
    for r in rows:
        v = r["vs_fastcnn"]
        ratio = "-" if v is None else f"{v:.2f}x" if v >= 0.1 else f"{v:.2g}x"
        if r["vs_fastcnn"] is not None and r["vs_fastcnn_batch"] != r["batch"]:
            ratio += " †"
        body.append([r["system"], str(r["batch"]), str(r["threads"]), num(r["epoch_s"]),
                     num(r["train_samples_per_s"]), num(r["infer_samples_per_s"]), ratio])
    return _grid(head, body, markdown)


def _grid(head: list[str], body: list[list[str]], markdown: bool) -> str:
    if markdown:
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        lines += ["| " + " | ".join(cells) + " |" for cells in body]
        return "\n".join(lines)
    widths = [max(len(row[i]) for row in [head, *body]) for i in range(len(head))]
    fmt = "  ".join(f"{{:{'<' if i == 0 else '>'}{w}}}" for i, w in enumerate(widths))
    return "\n".join([fmt.format(*head), fmt.format(*("-" * w for w in widths)),
                      *(fmt.format(*cells) for cells in body)])


def ceiling_speedup(ceiling: list) -> tuple[float, float, float] | None:
    """The ceiling kernel's speed-up from 1 thread to the most threads measured: (from
    the medians, the lowest and the highest within one repeat); None without both."""
    by_threads = {c.threads: c for c in ceiling}
    if 1 not in by_threads or len(by_threads) < 2:
        return None
    one, most = by_threads[1], by_threads[max(by_threads)]
    ratios = [a / b for a, b in zip(one.seconds, most.seconds, strict=True)]
    return most.samples_per_s / one.samples_per_s, min(ratios), max(ratios)


def network_lines(args, rows, train, predict, notes, ceiling=()) -> list[str]:
    """What the report says about one network's measurements."""
    out = [f"vs fastcnn: training samples/s divided by fastcnn's at the same batch and "
           f"threads (> 1: faster than fastcnn); † against fastcnn at batch {REF_BATCH}."]
    out += [notes[k] for k in ("naive", "keras", "torch", "torch-malloc", "seed_only")
            if k in notes]
    fast = {(c.kind, c.batch, c.threads): c.samples_per_s for c in train + predict
            if c.label == "fastcnn"}
    if 2 in THREADS and ("predict", PREDICT_BATCH, 1) in fast:
        parts = [f"batch {b} {fast[('train', b, 2)] / fast[('train', b, 1)]:.2f}x"
                 for b in args.batches]
        parts.append("inference {:.2f}x".format(fast[("predict", PREDICT_BATCH, 2)]
                                                / fast[("predict", PREDICT_BATCH, 1)]))
        out.append("fastcnn speed-up from 1 to 2 threads, training step: " + ", ".join(parts))
    check = ceiling_speedup(ceiling)
    if check is not None:
        limit, lo, hi = check
        most = max(c.threads for c in ceiling)
        out.append(f"Machine check, in the same rotation: a compute-only Numba kernel with "
                   f"equal, independent, cache-resident tasks ran {limit:.2f}x faster on "
                   f"{most} threads than on 1 ({lo:.2f}-{hi:.2f}x from repeat to repeat): "
                   f"what the other core gave code that loses nothing to parallelism.")
    naive = next((r for r in rows if r["system"].startswith("naive")), None)
    t = max(THREADS)
    if naive and ("train", REF_BATCH, t) in fast:
        out.append(f"fastcnn at batch {REF_BATCH}, {t} thread(s), trains "
                   f"{fast[('train', REF_BATCH, t)] / naive['train_samples_per_s']:,.0f}x "
                   f"faster than the naive per-sample loops.")
    return out


def run_lines(args, startup, machine, vers, command) -> list[str]:
    """What the report says about the whole run: start-up, method, machine, versions."""
    out = []
    if startup:
        c, w = startup["cold"], startup["warm"]
        out.append(
            f"Start-up, `import fastcnn` + build SEED-ARCH + first training batch of 64, in a "
            f"fresh process: cold (empty Numba cache, JIT compiles every kernel) "
            f"{c['total_s']:.2f} s (first batch {c['first_batch_s']:.2f} s); warm cache "
            f"{w['total_s']:.2f} s (import {w['import_s']:.2f} s, first batch "
            f"{w['first_batch_s']:.2f} s); a later batch takes {w['second_batch_s']:.3f} s.")
    out.append(f"Each number: median of {args.repeats} repeats, systems alternating, each "
               f"system in a process of its own; a "
               f"training repeat is {MIN_STEPS}-{MAX_STEPS} steps (~{TARGET_SAMPLES} samples)"
               f"{' (quick: 3 steps, numbers are noise)' if args.quick else ''}, after "
               f"untimed warm-up; inference repeats call predict on {PREDICT_BATCH} images."
               + ("" if args.archs == ["seed_arch"] else " Networks other than SEED-ARCH "
                  "train on synthetic standard-normal images of their input shape."))
    load = machine["load_1min"]
    out.append(f"Machine: {machine['cpu']} (LLVM: {machine['llvm_cpu']}, {machine['vectors']}), "
               f"{machine['logical_cores']} logical cores "
               f"({machine['usable_cores']} usable), {machine['platform']}"
               + ("." if load is None else f"; load average before the run {load:.2f}."))
    out.append("Versions: " + ", ".join(f"{k} {v}" for k, v in vers.items()
                                        if v and k != "numba_threading_layer")
               + f"; Numba threading layer {vers.get('numba_threading_layer')}.")
    out.append(f"Command: `{command}`")
    return out


def suite_table(results: dict, markdown: bool) -> str | None:
    """One line per network, batch and threads: fastcnn against the faster PyTorch
    (None without PyTorch rows)."""
    head = ["network", "batch", "threads", "fastcnn train samples/s",
            "PyTorch train samples/s", "fastcnn / PyTorch", "inference fastcnn / PyTorch"]
    body = []
    for arch, r in results.items():
        by = {(row["system"], row["batch"], row["threads"]): row for row in r["rows"]}
        for row in r["rows"]:
            if row["system"] != "fastcnn":
                continue
            twins = [by.get((s, row["batch"], row["threads"])) for s in ("PyTorch", TORCH_TUNED)]
            twins = [t for t in twins if t]
            if not twins:
                continue
            torch = max(twins, key=lambda t: t["train_samples_per_s"])
            infer = [t["infer_samples_per_s"] for t in twins if t["infer_samples_per_s"]]
            inf_ratio = (row["infer_samples_per_s"] / max(infer)
                         if infer and row["infer_samples_per_s"] else None)
            body.append([arch, str(row["batch"]), str(row["threads"]),
                         num(row["train_samples_per_s"]), num(torch["train_samples_per_s"]),
                         f"{row['train_samples_per_s'] / torch['train_samples_per_s']:.2f}x",
                         "-" if inf_ratio is None else f"{inf_ratio:.2f}x"])
    return _grid(head, body, markdown) if body else None


def measure_network(args, arch: str) -> dict | None:
    """Build one network's systems, each in its worker, and time them side by side."""
    sub = argparse.Namespace(**{**vars(args), "arch": arch})
    systems = [s for s in args.systems if arch == "seed_arch" or s not in SEED_ONLY]
    workers, notes = [], {}
    if len(systems) < len(args.systems):
        notes["seed_only"] = (f"{', '.join(s for s in args.systems if s not in systems)}: "
                              "measured on SEED-ARCH only.")
    try:
        for system in systems:  # one at a time: builds compile and trace
            log(f"--- {arch}: {system}")
            workers.append(Worker(system, sub))
            notes.update(workers[-1].info["notes"])
        configs = [c for w in workers for c in w.configs]
        train = [c for c in configs if c.kind == "train"]
        predict = [c for c in configs if c.kind == "predict"]
        ceiling = [c for c in configs if c.kind == "ceiling"]
        if not train:
            log(f"{arch}: nothing to measure: " + "; ".join(notes.values()))
            return None
        measure(train + predict + ceiling, args.repeats)
    finally:
        for w in workers:
            w.close()
    layer = next((w.info["threading_layer"] for w in workers if w.info["threading_layer"]),
                 None)
    return {"train": train, "predict": predict, "ceiling": ceiling, "notes": notes,
            "threading_layer": layer, "rows": make_rows(train, predict, args.batches)}


def main(argv=None) -> int:
    args = parse_args(argv)
    command = "python bench/compare.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    command = command.strip()
    machine = machine_info()
    if machine["load_1min"] and machine["load_1min"] > 0.5:
        # Multi-threaded steps wait for their slowest thread: a busy core skews them most.
        log(f"warning: load average {machine['load_1min']:.2f} before start; other processes "
            "are running, so the numbers (above all at 2 threads) will be off")
    startup = None if args.no_startup else measure_startup(args.quick)
    results = {}
    for arch in args.archs:
        result = measure_network(args, arch)
        if result is not None:
            results[arch] = result
    if not results:
        print("nothing to measure", file=sys.stderr)
        return 2
    vers = versions()
    vers["numba_threading_layer"] = next(
        (r["threading_layer"] for r in results.values() if r["threading_layer"]), None)
    md = args.markdown
    parts = []
    for arch, r in results.items():
        lines = network_lines(args, r["rows"], r["train"], r["predict"], r["notes"],
                              r["ceiling"])
        text = table(r["rows"], md) + "\n\n" + "\n".join(f"- {x}" if md else x for x in lines)
        parts.append(text if len(results) == 1 else f"{'### ' if md else ''}{arch}\n\n{text}")
    suite_text = suite_table(results, md) if len(results) > 1 else None
    if suite_text:
        parts.append(f"{'### ' if md else ''}The suite: fastcnn against the faster PyTorch "
                     f"configuration\n\n{suite_text}")
    lines = run_lines(args, startup, machine, vers, command)
    parts.append("\n".join(f"- {x}" if md else x for x in lines))
    print("\n\n".join(parts))
    if args.out:
        ceiling = [c for r in results.values() for c in r["ceiling"]]
        check = ceiling_speedup(ceiling)
        result = {"command": command, "machine": machine, "versions": vers,
                  "settings": {"quick": args.quick, "repeats": args.repeats,
                               "epoch": EPOCH, "predict_batch": PREDICT_BATCH,
                               "networks": list(results)},
                  "startup": startup,
                  "rows": [{"network": a, **row} for a, r in results.items() for row in r["rows"]],
                  "notes": {a: r["notes"] for a, r in results.items()},
                  "ceiling": {"speedup": None if check is None else check[0],
                              "range": None if check is None else check[1:],
                              "seconds": {c.threads: c.seconds for c in ceiling}},
                  "inference": [{"network": a, "system": c.label, "threads": c.threads,
                                 "images": c.batch, "samples_per_s": c.samples_per_s,
                                 "seconds": c.seconds}
                                for a, r in results.items() for c in r["predict"]]}
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
        log(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
