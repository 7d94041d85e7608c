"""python -m fastcnn.train: train SEED-ARCH on Fashion-MNIST and report test metrics."""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

from . import optim, plots
from .cli import ArgumentParser, CLIError, run_cli
from .data import DataError, load_dataset
from .fileio import atomic_write_text
from .model import History, TrainingDiverged, seed_arch
from .threads import set_threads


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="python -m fastcnn.train", description=__doc__)
    p.add_argument("--epochs", type=int, default=3, help="passes over the training data (3)")
    p.add_argument("--batch-size", type=int, default=64, help="samples per step (64)")
    p.add_argument("--lr", type=float, default=None,
                   help="peak learning rate (0.002 for adam, 0.05 for sgd)")
    p.add_argument("--momentum", type=float, default=0.9, help="SGD momentum (0.9)")
    p.add_argument("--optimizer", choices=("adam", "sgd"), default="adam",
                   help="adam (default) or sgd with momentum")
    p.add_argument("--schedule", choices=("cosine", "step", "constant"), default="cosine",
                   help="learning-rate schedule over the whole run (cosine decay to zero)")
    p.add_argument("--seed", type=int, default=0, help="weights and data order (0)")
    p.add_argument("--threads", type=int, default=None, help="Numba threads (all cores)")
    p.add_argument("--dataset", choices=("fashion-mnist", "sample"), default="fashion-mnist",
                   help="full Fashion-MNIST, or the small sample shipped with fastcnn")
    p.add_argument("--data-dir", default=None, help="folder holding the *-ubyte.gz files")
    p.add_argument("--limit", type=int, default=None, help="use only the first N training images")
    p.add_argument("--backend", choices=("numba", "numpy"), default="numba",
                   help="numba kernels, or the (slow) NumPy reference implementation")
    p.add_argument("--out", default=None, help="folder for model.npz and metrics.json")
    p.add_argument("--metrics-json", default=None, help="write the metrics to this JSON file")
    p.add_argument("--plots", metavar="DIR", default=None,
                   help="write training-curve, confusion-matrix and prediction PNGs here")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def check_args(args: argparse.Namespace) -> None:
    for name in ("epochs", "batch_size"):
        if getattr(args, name) < 1:
            raise CLIError(f"--{name.replace('_', '-')} must be >= 1")
    if args.limit is not None and args.limit < 1:
        raise CLIError("--limit must be >= 1")
    if args.lr is not None and not (math.isfinite(args.lr) and args.lr > 0):
        raise CLIError("--lr must be a positive number")
    if not 0 <= args.momentum < 1:
        raise CLIError("--momentum must be in [0, 1)")


def make_optimizer(args: argparse.Namespace, steps_per_epoch: int) -> optim.Optimizer:
    lr = args.lr if args.lr is not None else (0.05 if args.optimizer == "sgd" else 0.002)
    total = args.epochs * steps_per_epoch
    schedule = {
        "constant": lambda: optim.Constant(lr),
        "step": lambda: optim.StepDecay(lr, step_size=max(1, total // 3), gamma=0.1),
        "cosine": lambda: optim.CosineDecay(lr, decay_steps=total),
    }[args.schedule]()
    if args.optimizer == "adam":
        return optim.Adam(schedule)
    return optim.SGD(schedule, momentum=args.momentum)


def settings(args: argparse.Namespace) -> dict:
    return {k: v for k, v in vars(args).items() if k not in ("quiet",)}


def main(argv: list[str] | None = None) -> int:
    return run_cli(_main, argv)


def _main(argv: list[str] | None) -> int:
    args = build_parser().parse_args(argv)
    check_args(args)
    try:
        threads = set_threads(args.threads)
    except ValueError as exc:
        raise CLIError(f"--threads: {exc}") from None
    if args.plots:
        try:  # fail now, not after a long training run
            plots.check_ready(args.plots)
        except (ImportError, OSError) as exc:
            raise CLIError(f"--plots: {exc}") from None
    try:
        x_train, y_train = load_dataset(args.dataset, "train", args.data_dir, args.limit)
        x_test, y_test = load_dataset(args.dataset, "test", args.data_dir)
    except DataError as exc:
        raise CLIError(str(exc)) from None

    model = seed_arch(args.seed, backend=args.backend)
    compile_seconds = model.warmup()
    steps = math.ceil(len(x_train) / args.batch_size)
    optimizer = make_optimizer(args, steps)
    say = print
    say(f"fastcnn: SEED-ARCH on {args.dataset} ({len(x_train)} train, {len(x_test)} test), "
        f"{args.optimizer} lr {optimizer.lr:g}, batch {args.batch_size}, {threads} threads, "
        f"kernels ready in {compile_seconds:.2f} s")

    def report(epoch: int, h: History) -> None:
        say(f"epoch {epoch + 1}/{args.epochs}  loss {h.loss[-1]:.4f}  "
            f"test_accuracy {h.val_accuracy[-1]:.4f}  macro_f1 {h.val_macro_f1[-1]:.4f}  "
            f"{h.epoch_seconds[-1]:.1f} s ({h.samples_per_s[-1]:.0f} samples/s)", flush=True)

    start = time.perf_counter()
    try:
        history = model.fit(x_train, y_train, epochs=args.epochs, batch_size=args.batch_size,
                            optimizer=optimizer, validation_data=(x_test, y_test),
                            seed=args.seed, verbose=not args.quiet, on_epoch_end=report)
    except TrainingDiverged as exc:
        raise CLIError(str(exc), code=1) from None
    metrics = {
        "test_accuracy": history.val_accuracy[-1],
        "macro_f1": history.val_macro_f1[-1],
        "test_loss": history.val_loss[-1],
        "train_loss": history.loss,
        "epoch_seconds": history.epoch_seconds,
        "train_samples_per_s": float(np.sum([len(x_train)] * args.epochs)
                                     / np.sum(history.epoch_seconds)),
        "compile_seconds": compile_seconds,
        "total_seconds": time.perf_counter() - start,
        "settings": {**settings(args), "threads": threads},
    }
    if args.out:
        out = Path(args.out)
        model.save(out / "model.npz")
        atomic_write_text(out / "metrics.json", json.dumps(metrics, indent=2) + "\n")
        say(f"saved {out / 'model.npz'} and {out / 'metrics.json'}")
    if args.metrics_json:
        atomic_write_text(args.metrics_json, json.dumps(metrics, indent=2) + "\n")
    if args.plots:
        for path in plots.write_plots(model, history, x_test, y_test, args.plots):
            say(f"wrote {path}")
    say(f"test accuracy {metrics['test_accuracy']:.4f}, macro F1 {metrics['macro_f1']:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
