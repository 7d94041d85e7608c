"""python -m fastcnn.train: train a CNN (SEED-ARCH unless --model or --model-config
says otherwise) on Fashion-MNIST and report test metrics.

With --checkpoint-dir DIR the run writes DIR/checkpoint.npz at the end of every epoch
(and every N batches with --checkpoint-every N); Ctrl-C or SIGTERM writes one more at
the next batch boundary and exits (130 or 143). --resume DIR continues from it, and
ends with the same weights, bit for bit, as a run that was never stopped.

With --distributed, under ``mpiexec -n K``, the K processes train together over MPI
(`fastcnn.distributed`) and end with the same weights, bit for bit, as one process; rank
0 alone prints and writes files, and a checkpoint resumes with any K.

Test-only hooks (environment variables, not a supported interface):
FASTCNN_TEST_STOP_AT="E:B[:ACTION]" acts when the trainer has done B batches of epoch E
(B = 0: before epoch E starts). ACTION INT or TERM (default INT) sends that signal to
itself; KILL sends SIGKILL before that point's checkpoint is written; PAUSE writes the
checkpoint due there, then sleeps until killed. FASTCNN_TEST_BATCH_DELAY=SECONDS sleeps
after every batch. Together they let a test kill the trainer at a known point. With
--distributed, FASTCNN_TEST_STOP_AT acts on the last rank only.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import shlex
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from . import checkpoint as ckpt
from . import optim, plots
from .augment import Augmentation
from .cli import ArgumentParser, CLIError, run_cli, threads_option
from .compiling import (
    announce_if_cold,
    backward_kernels,
    compile_beside,
    compile_progress,
    usable_cpus,
)
from .data import DataError, load_dataset
from .distributed import (
    DEFAULT_TIMEOUT,
    DataParallel,
    DistributedError,
    RanksDisagree,
    agree_max,
    require_mpi,
    wait,
)
from .fileio import atomic_write_text
from .model import (
    EarlyStopping,
    FitState,
    History,
    Sequential,
    TrainingDiverged,
    check_fit_state,
)
from .models import MODELS, describe_models
from .training import split_index

# Settings that change the result: a checkpoint only resumes with exactly these.
RESULT_SETTINGS = ("epochs", "batch_size", "optimizer", "lr", "momentum", "schedule", "seed",
                   "dataset", "limit", "backend", "model", "model_config", "weight_decay",
                   "val_split", "early_stop", "monitor", "augment", "flip")
# What checkpoints written before a setting existed ran with.
OLD_CHECKPOINT_DEFAULTS = {"model": "seed_arch", "model_config": None, "weight_decay": None,
                           "val_split": 0.0, "early_stop": None, "monitor": None,
                           "augment": None, "flip": None}
# Options that do not: taken from the checkpoint unless given again.
RUN_OPTIONS = ("data_dir", "threads", "out", "metrics_json", "plots", "quiet",
               "checkpoint_every")


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="python -m fastcnn.train", description=__doc__.split("\n\n")[0])
    p.add_argument("--epochs", type=int, default=3, help="passes over the training data (3)")
    p.add_argument("--batch-size", type=int, default=64, help="samples per step (64)")
    p.add_argument("--lr", type=float, default=None,
                   help="peak learning rate (0.002 for adam, 0.05 for sgd)")
    p.add_argument("--momentum", type=float, default=0.9, help="SGD momentum (0.9)")
    p.add_argument("--optimizer", choices=("adam", "adamw", "sgd"), default="adam",
                   help="adam (default) or sgd with momentum")
    p.add_argument("--schedule", choices=("cosine", "step", "constant"), default="cosine",
                   help="learning-rate schedule over the whole run (cosine decay to zero)")
    p.add_argument("--weight-decay", type=float, default=None,
                   help="AdamW's decoupled weight decay (0.01)")
    p.add_argument("--val-split", metavar="FRAC", type=float, default=0.0,
                   help="hold out this fraction of the training images (the last ones) "
                        "for validation; the test set is then scored once, at the end")
    p.add_argument("--early-stop", metavar="PATIENCE", type=int, default=None,
                   help="stop when --monitor has not improved for PATIENCE epochs, keeping "
                        "the best epoch's weights (needs --val-split)")
    p.add_argument("--monitor", choices=("val_loss", "val_accuracy", "val_macro_f1"),
                   default="val_loss", help="what --early-stop watches (val_loss)")
    p.add_argument("--augment", metavar="SHIFT", type=int, nargs="?", const=2, default=None,
                   help="augment the training images: random shifts of up to SHIFT pixels "
                        "(2 if not given) with zero fill, and horizontal flips")
    p.add_argument("--no-flip", dest="flip", action="store_false",
                   help="with --augment: shifts only, no flips")
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
    p.add_argument("--checkpoint-dir", metavar="DIR", default=None,
                   help="write DIR/checkpoint.npz after every epoch, and on Ctrl-C/SIGTERM")
    p.add_argument("--checkpoint-every", metavar="N", type=int, default=None,
                   help="also checkpoint every N batches")
    p.add_argument("--resume", metavar="DIR", default=None,
                   help="continue the run checkpointed in DIR (its settings unless given)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--model", choices=sorted(MODELS), default="seed_arch",
                   help="a network of the model zoo (seed_arch); see --list-models")
    p.add_argument("--model-config", metavar="FILE.json", default=None,
                   help="the architecture as JSON, as Sequential.get_config() gives it and "
                        "model.npz stores it (instead of --model)")
    p.add_argument("--list-models", action="store_true",
                   help="print the model zoo and exit")
    p.add_argument("--distributed", action="store_true",
                   help="train over MPI, under mpiexec -n K (needs the mpi extra): the same "
                        "weights as one process; --threads defaults to cores / local ranks")
    p.add_argument("--mpi-timeout", metavar="SECONDS", type=float, default=DEFAULT_TIMEOUT,
                   help=f"with --distributed: how long a rank waits for the others before "
                        f"giving up with an error ({DEFAULT_TIMEOUT:g})")
    return p


def given_options(argv: list[str] | None) -> set[str]:
    """The dests of the options that appear on the command line."""
    parser, unset = build_parser(), object()
    # argparse fills in a default only where the namespace has no value yet.
    namespace = argparse.Namespace(**{k: unset for k in vars(parser.parse_args([]))})
    return {k for k, v in vars(parser.parse_args(argv, namespace)).items() if v is not unset}


def check_args(args: argparse.Namespace, combinations: bool = True) -> None:
    """Each option's value, and (``combinations``) what options need of each other: a
    resumed run checks those once the checkpoint's settings are filled in."""
    for name in ("epochs", "batch_size"):
        if getattr(args, name) < 1:
            raise CLIError(f"--{name.replace('_', '-')} must be >= 1")
    if args.limit is not None and args.limit < 1:
        raise CLIError("--limit must be >= 1")
    if args.lr is not None and not (math.isfinite(args.lr) and args.lr > 0):
        raise CLIError("--lr must be a positive number")
    if not 0 <= args.momentum < 1:
        raise CLIError("--momentum must be in [0, 1)")
    if args.checkpoint_every is not None:
        if args.checkpoint_every < 1:
            raise CLIError("--checkpoint-every must be >= 1")
        if not (args.checkpoint_dir or args.resume):
            raise CLIError("--checkpoint-every needs --checkpoint-dir (or --resume)")
    if args.weight_decay is not None and not (math.isfinite(args.weight_decay)
                                              and args.weight_decay >= 0):
        raise CLIError("--weight-decay must be a number >= 0")
    if not 0 <= args.val_split < 1:
        raise CLIError("--val-split must be in [0, 1)")
    if args.early_stop is not None and args.early_stop < 1:
        raise CLIError("--early-stop must be >= 1")
    if args.augment is not None and not 0 <= args.augment < 28:
        raise CLIError("--augment SHIFT must be in [0, 28): the images are 28 x 28")
    if not combinations:
        return
    if args.weight_decay is not None and args.optimizer != "adamw":
        raise CLIError("--weight-decay is AdamW's: give --optimizer adamw")
    if args.early_stop is not None and not args.val_split:
        raise CLIError("--early-stop needs --val-split: stopping on the test set would "
                       "choose the model by its test score")


def resolved_lr(args: argparse.Namespace) -> float:
    return args.lr if args.lr is not None else (0.05 if args.optimizer == "sgd" else 0.002)


def resolved_weight_decay(args: argparse.Namespace) -> float | None:
    if args.optimizer != "adamw":
        return None
    return 0.01 if args.weight_decay is None else args.weight_decay


def make_optimizer(args: argparse.Namespace, steps_per_epoch: int) -> optim.Optimizer:
    lr = resolved_lr(args)
    total = args.epochs * steps_per_epoch
    schedule = {
        "constant": lambda: optim.Constant(lr),
        "step": lambda: optim.StepDecay(lr, step_size=max(1, total // 3), gamma=0.1),
        "cosine": lambda: optim.CosineDecay(lr, decay_steps=total),
    }[args.schedule]()
    if args.optimizer == "adam":
        return optim.Adam(schedule)
    if args.optimizer == "adamw":
        return optim.AdamW(schedule, weight_decay=resolved_weight_decay(args))
    return optim.SGD(schedule, momentum=args.momentum)


def settings(args: argparse.Namespace) -> dict:
    return {k: v for k, v in vars(args).items() if k not in ("quiet", "list_models")}


def build_model(args: argparse.Namespace, input_shape: tuple[int, ...] = (1, 28, 28),
                classes: int = 10) -> tuple[Sequential, str]:
    """The model --model or --model-config names, its weights drawn from --seed, and
    what to call it; exit 2 if it cannot be built or does not fit the data."""
    if args.model_config is None:
        model = MODELS[args.model](args.seed, backend=args.backend, input_shape=input_shape,
                                   classes=classes)
        return model, "SEED-ARCH" if args.model == "seed_arch" else args.model
    path = args.model_config
    try:
        config = json.loads(Path(path).read_text())
        model = Sequential.from_config(config, args.backend, seed=args.seed)
    except OSError as exc:
        raise CLIError(f"--model-config {path}: {exc.strerror or exc}") from None
    except (KeyError, TypeError, ValueError, RecursionError) as exc:
        raise CLIError(f"--model-config {path}: not a model configuration ({exc})") from None
    if model.input_shape != tuple(input_shape) or model.output_shape != (classes,):
        raise CLIError(f"--model-config {path}: the model maps {model.input_shape} to "
                       f"{model.output_shape}; the data need {tuple(input_shape)} to "
                       f"({classes},)")
    return model, Path(path).name


def checkpoint_settings(args: argparse.Namespace) -> dict:
    """What a checkpoint records about its run: RESULT_SETTINGS (lr resolved; momentum
    only where it is used) and RUN_OPTIONS."""
    out = {k: getattr(args, k) for k in RESULT_SETTINGS + RUN_OPTIONS}
    out["lr"] = resolved_lr(args)
    out["weight_decay"] = resolved_weight_decay(args)
    if args.optimizer != "sgd":
        out["momentum"] = None
    if args.early_stop is None:
        out["monitor"] = None
    if args.augment is None:
        out["flip"] = None
    return out


def data_fingerprint(x: np.ndarray, y: np.ndarray) -> str:
    """SHA-256 of the training images and labels: a checkpoint resumes on the same data."""
    h = hashlib.sha256()
    for a in (x, y):
        h.update(f"{a.dtype.str}{a.shape}".encode())
        h.update(np.ascontiguousarray(a).data)
    return h.hexdigest()


def where(state: FitState, epochs: int) -> str:
    """A FitState's position in words."""
    if state.batch == 0:
        return f"after epoch {state.epoch}/{epochs}" if state.epoch else "before epoch 1"
    return f"at epoch {state.epoch + 1}/{epochs}, batch {state.batch}/{state.steps}"


class _ForcedStop(BaseException):
    """A second SIGINT/SIGTERM: stop at once, without another checkpoint."""


class _Stopper:
    """Turns SIGINT/SIGTERM into a request to stop at the next batch boundary."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, object] = {}

    def __enter__(self) -> _Stopper:
        if threading.current_thread() is threading.main_thread():  # signal.signal needs it
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum: int, frame: object) -> None:
        if self.signum is not None:
            raise _ForcedStop(signum)
        self.signum = signum


def _test_hooks() -> tuple[tuple[int, int, int] | None, float]:
    """FASTCNN_TEST_STOP_AT and FASTCNN_TEST_BATCH_DELAY (see the module docstring)."""
    stop, delay = os.environ.get("FASTCNN_TEST_STOP_AT"), os.environ.get(
        "FASTCNN_TEST_BATCH_DELAY")
    try:
        at = None
        if stop:
            parts = stop.split(":")
            action = {"INT": int(signal.SIGINT), "TERM": int(signal.SIGTERM),
                      "KILL": int(getattr(signal, "SIGKILL", signal.SIGTERM)), "PAUSE": 0}[
                          parts[2] if len(parts) > 2 else "INT"]
            at = (int(parts[0]), int(parts[1]), action)
        return at, float(delay) if delay else 0.0
    except (ValueError, KeyError, IndexError):
        raise CLIError(f"bad FASTCNN_TEST_STOP_AT={stop!r} or FASTCNN_TEST_BATCH_DELAY="
                       f"{delay!r}") from None


# How long a failing rank lets its reason line reach mpiexec before aborting the job.
ABORT_GRACE_SECONDS = 1.0


def _silent(*args: object, **kwargs: object) -> None:
    """`print` on the ranks other than 0."""


def _world(args: argparse.Namespace, given: set[str]) -> Any:
    """MPI's world communicator with --distributed (exit 2 without mpi4py), else None."""
    if not args.distributed:
        if "mpi_timeout" in given:
            raise CLIError("--mpi-timeout needs --distributed")
        return None
    if not (args.mpi_timeout > 0 and math.isfinite(args.mpi_timeout)):
        raise CLIError(f"--mpi-timeout must be a positive number of seconds, got "
                       f"{args.mpi_timeout}")
    try:
        return require_mpi().COMM_WORLD
    except DistributedError as exc:
        raise CLIError(f"--distributed: {exc}") from None


def _threads_per_rank(comm: Any) -> int:
    """Numba threads per rank by default: this machine's cores shared by its ranks."""
    local = comm.Split_type(require_mpi().COMM_TYPE_SHARED).Get_size()
    return max(1, usable_cpus() // local)


# How long the other ranks wait for rank 0 to compile the kernels into a cold cache.
COMPILE_TIMEOUT = 1800.0


def _resume_command(directory: str, comm: Any = None) -> str:
    # Every setting and output option comes back from the checkpoint (any number of
    # ranks, or one process, resumes a distributed run's).
    command = ["python", "-m", "fastcnn.train", "--resume", directory]
    if comm is not None:
        command = ["mpiexec", "-n", str(comm.Get_size()), *command, "--distributed"]
    return shlex.join(command)


def _load_for_resume(args: argparse.Namespace, given: set[str]) -> ckpt.Checkpoint:
    """Load --resume's checkpoint and fill in every setting not given on the command line;
    exit 2 if a given one differs from the checkpoint's."""
    path = ckpt.checkpoint_path(args.resume)
    if not path.exists():
        raise CLIError(f"{path}: no checkpoint to resume from")
    try:
        saved = ckpt.load_checkpoint(path, backend="numba")
    except ValueError as exc:
        raise CLIError(f"cannot resume: {exc}") from None
    recorded = {**OLD_CHECKPOINT_DEFAULTS, **saved.settings}
    missing = [k for k in RESULT_SETTINGS + RUN_OPTIONS if k not in recorded]
    if missing:
        raise CLIError(f"{path}: checkpoint lacks the settings {missing}")
    for key in RESULT_SETTINGS + RUN_OPTIONS:
        if key not in given and not (key == "momentum" and recorded[key] is None):
            setattr(args, key, recorded[key])
    if args.checkpoint_dir is None:
        args.checkpoint_dir = args.resume
    try:
        check_args(args)
    except CLIError as exc:
        raise CLIError(f"{path}: bad recorded settings: {exc}") from None
    now = checkpoint_settings(args)
    diffs = [f"{k} {recorded[k]!r} there, {now[k]!r} here" for k in RESULT_SETTINGS
             if recorded[k] != now[k]]
    if diffs:
        raise CLIError(f"{path} was written with other settings ({'; '.join(diffs)}); "
                       "resume with the checkpoint's settings (omit those options), or start "
                       "a new run with another --checkpoint-dir")
    expected, name = build_model(args)
    if saved.model.get_config() != expected.get_config():
        raise CLIError(f"{path}: the checkpoint's architecture is not {name}")
    return saved


def main(argv: list[str] | None = None) -> int:
    return run_cli(_main, argv)


def _main(argv: list[str] | None) -> int:
    args = build_parser().parse_args(argv)
    if args.list_models:
        print(describe_models())
        return 0
    given = given_options(argv)
    if "model" in given and "model_config" in given:
        raise CLIError("give --model or --model-config, not both")
    if "model_config" in given:
        args.model = None
    check_args(args, combinations=not args.resume)
    comm = _world(args, given)
    if comm is None:
        return _train(args, given, None)
    # An error on some ranks only would leave the others waiting in an exchange: whatever
    # ends a rank ends the whole job (MPI_Abort), after its one-line reason.
    try:
        return _train(args, given, comm)
    except CLIError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        code = exc.code
    except BaseException as exc:
        print(f"error: rank {comm.Get_rank()}: {type(exc).__name__}: {exc}", file=sys.stderr,
              flush=True)
        code = 1
    # mpiexec forwards a rank's output asynchronously, and the abort can end the job
    # before the line above got through (seen in CI: a failed job with empty stderr).
    time.sleep(ABORT_GRACE_SECONDS)
    comm.Abort(code)
    return code  # not reached: Abort ends the process


def _train(args: argparse.Namespace, given: set[str], comm: Any) -> int:
    """The training run, after the command line is checked (comm: MPI's world, or None)."""
    lead = comm is None or comm.Get_rank() == 0  # prints and writes files
    stop_at, batch_delay = _test_hooks()
    if comm is not None and comm.Get_rank() != comm.Get_size() - 1:
        stop_at = None
    resumed = _load_for_resume(args, given) if args.resume else None
    if comm is not None:
        per_rank = _threads_per_rank(comm)  # collective: every rank calls it
    threads = threads_option(args.threads if args.threads is not None or comm is None
                             else per_rank)
    model, model_name = build_model(args)
    if args.plots:
        try:  # fail now, not after a long training run
            plots.check_ready(args.plots)
        except (ImportError, OSError) as exc:
            raise CLIError(f"--plots: {exc}") from None
    ckpt_file = ckpt.checkpoint_path(args.checkpoint_dir) if args.checkpoint_dir else None
    # Never overwrite a checkpoint this run did not come from.
    if ckpt_file is not None and ckpt_file.exists() and (
            resumed is None or ckpt_file.resolve() != ckpt.checkpoint_path(args.resume).resolve()):
        raise CLIError(f"{ckpt_file} already exists; continue that run with --resume "
                       f"{args.checkpoint_dir}, or delete it to start afresh")
    # First, before the data load: a fresh install should hear at once why it waits.
    announced = lead and args.backend == "numba" and announce_if_cold()
    # A cold cache: a second process compiles the model's backward kernels meanwhile;
    # this one compiles the rest.
    beside = compile_beside("float32", backward_kernels(model)) if announced else None
    try:
        x_train, y_train = load_dataset(args.dataset, "train", args.data_dir, args.limit)
        x_test, y_test = load_dataset(args.dataset, "test", args.data_dir)
    except DataError as exc:
        raise CLIError(str(exc)) from None

    # With --val-split, fit trains on the first n_train images only.
    n_train = split_index(len(x_train), args.val_split)
    if args.val_split and not 0 < n_train < len(x_train):
        raise CLIError(f"--val-split {args.val_split} of {len(x_train)} images leaves no "
                       "training or no validation images")
    steps = math.ceil(n_train / args.batch_size)
    optimizer = make_optimizer(args, steps)
    run_settings = None
    if ckpt_file is not None:
        run_settings = {**checkpoint_settings(args), "train_size": len(x_train),
                        "train_sha256": data_fingerprint(x_train, y_train)}
        if lead:
            ckpt.remove_stale_temporaries(ckpt_file.parent)
    initial_state = None
    if resumed is not None:
        model = resumed.model
        if args.backend != "numba":  # the checkpoint was loaded before the settings were known
            model = Sequential.from_config(model.get_config(), args.backend)
            model.load_state_arrays(resumed.model.state_arrays())
        for key in ("train_size", "train_sha256"):
            if resumed.settings.get(key) != run_settings[key]:
                raise CLIError(f"{args.resume}: the training data differ from the "
                               f"checkpoint's ({key})")
        try:
            optimizer.load_state(resumed.optimizer_state, resumed.iterations,
                                 model.parameters())
            initial_state = check_fit_state(resumed.state, args.epochs, steps, optimizer, True)
        except (TypeError, ValueError) as exc:
            raise CLIError(f"cannot resume from {ckpt_file}: {exc}") from None

    if not lead:  # rank 0 compiles into the cache; the others then load from it
        wait(comm.Ibarrier(), max(args.mpi_timeout, COMPILE_TIMEOUT), comm.Get_rank(),
             "waiting for rank 0 to compile the kernels")
    with compile_progress(quiet=args.quiet or not lead, announced=announced) as compile_log:
        compile_seconds = model.warmup(optimizer, None if beside is None else beside.wait)
    if lead and comm is not None:
        wait(comm.Ibarrier(), args.mpi_timeout, 0, "after compiling the kernels")
    if beside is not None:
        compile_log.kernels.extend(beside.kernels)
    say = print if lead else _silent
    say(model.summary())
    say(f"fastcnn: {model_name} on {args.dataset} ({len(x_train)} train, {len(x_test)} test), "
        f"{args.optimizer} lr {resolved_lr(args):g}, batch {args.batch_size}, {threads} threads"
        f"{'' if comm is None else f' x {comm.Get_size()} processes'}, "
        f"kernels ready in {compile_seconds:.2f} s")
    if initial_state is not None:
        say(f"resuming from {ckpt_file} {where(initial_state, args.epochs)}", flush=True)

    augment = None if args.augment is None else Augmentation(args.augment, args.flip)
    # Scored each epoch: the held-out images with --val-split, else the test set.
    scored = "val" if args.val_split else "test"
    early_stopping = None if args.early_stop is None else EarlyStopping(
        args.monitor, patience=args.early_stop)

    def report(epoch: int, h: History) -> None:
        say(f"epoch {epoch + 1}/{args.epochs}  loss {h.loss[-1]:.4f}  "
            f"{scored}_accuracy {h.val_accuracy[-1]:.4f}  macro_f1 {h.val_macro_f1[-1]:.4f}  "
            f"{h.epoch_seconds[-1]:.1f} s ({h.samples_per_s[-1]:.0f} samples/s)", flush=True)

    saved: list[FitState] = []  # the last checkpointed state
    stopped: list[tuple[FitState, int]] = []  # where, and by which signal

    def on_progress(state: FitState) -> bool:
        if batch_delay:
            time.sleep(batch_delay)
        test_stop = stop_at is not None and (state.epoch + 1, state.batch) == stop_at[:2]
        if test_stop and stop_at[2]:
            signal.raise_signal(stop_at[2])  # runs the handler before returning
        every = args.checkpoint_every
        signum = stopper.signum or 0
        if comm is not None:  # every rank stops at the same batch, if any was signalled
            signum = agree_max(comm, signum, args.mpi_timeout)
        due = state.batch == 0 or signum or (
            every is not None and optimizer.iterations % every == 0)
        if ckpt_file is not None and due:
            # Every rank checks (their weights are the same), so all stop together.
            if not (ckpt.all_finite(model.parameters())
                    and ckpt.all_finite(list(optimizer.state().values()))):
                raise TrainingDiverged(
                    f"weights became NaN or infinite {where(state, args.epochs)}; "
                    f"try a lower learning rate (now {optimizer.lr:g})")
            if lead:
                ckpt.save_checkpoint(ckpt_file, model, optimizer, state, run_settings)
            saved[:] = [state]
        while test_stop and not stop_at[2]:
            time.sleep(1)  # PAUSE: wait to be killed
        if signum:
            stopped.append((state, signum))
            return True
        return False

    start = time.perf_counter()
    try:
        # Overflow warnings would only precede the one-line divergence report.
        with _Stopper() as stopper, np.errstate(over="ignore", invalid="ignore",
                                                divide="ignore"):
            history = model.fit(x_train, y_train, epochs=args.epochs,
                                batch_size=args.batch_size, optimizer=optimizer,
                                validation_data=None if args.val_split else (x_test, y_test),
                                validation_split=args.val_split,
                                early_stopping=early_stopping, augment=augment,
                                seed=args.seed,
                                verbose=not args.quiet, on_epoch_end=report,
                                on_progress=on_progress, initial_state=initial_state,
                                comm=comm,
                                timeout=None if comm is None else args.mpi_timeout)
    except RanksDisagree as exc:
        raise CLIError(str(exc)) from None
    except DistributedError as exc:  # a rank died or hangs: _main ends the job
        raise CLIError(str(exc), code=1) from None
    except TrainingDiverged as exc:
        kept = ""
        if ckpt_file is not None and ckpt_file.exists():
            last = saved[0] if saved else initial_state
            position = f" ({where(last, args.epochs)})" if last is not None else ""
            kept = f"; the last good checkpoint{position} is kept in {ckpt_file}"
        raise CLIError(" ".join(f"{exc}{kept}".split()), code=1) from None
    except _ForcedStop as exc:
        sig = signal.Signals(exc.args[0])
        note = f"; the last checkpoint is intact in {ckpt_file}" if ckpt_file else ""
        print(f"stopped by a second {sig.name} without a new checkpoint{note}",
              file=sys.stderr)
        return 128 + sig.value
    if stopped:
        state, signum = stopped[0]
        sig = signal.Signals(signum)
        if not lead:
            return 128 + sig.value
        if ckpt_file is not None:
            tail = (f"checkpoint saved to {ckpt_file}; resume with: "
                    f"{_resume_command(str(args.checkpoint_dir), comm)}")
        else:
            tail = "nothing saved (run with --checkpoint-dir DIR to be able to resume)"
        print(f"interrupted by {sig.name} {where(state, args.epochs)}: {tail}", file=sys.stderr)
        return 128 + sig.value

    if early_stopping is not None:
        best = early_stopping.best_epoch(history)
        value = getattr(history, args.monitor)[best]
        how = ("stopped early" if early_stopping.should_stop(history)
               else "did not stop early")
        say(f"{how} after epoch {len(history.loss)}; kept the weights of epoch {best + 1} "
            f"({args.monitor} {value:.4f})")
    if args.val_split:  # the test set, scored once with the final (or best) weights
        scorer = model if comm is None else DataParallel(model, comm, args.mpi_timeout)
        test = scorer.evaluate(x_test, y_test)
    else:
        test = {"accuracy": history.val_accuracy[-1], "macro_f1": history.val_macro_f1[-1],
                "loss": history.val_loss[-1]}
    epochs_run = len(history.epoch_seconds)
    metrics = {
        "test_accuracy": test["accuracy"],
        "macro_f1": test["macro_f1"],
        "test_loss": test["loss"],
        "train_loss": history.loss,
        f"{scored}_accuracy_per_epoch": history.val_accuracy,
        "macro_f1_per_epoch" if scored == "test" else "val_macro_f1_per_epoch":
            history.val_macro_f1,
        f"{scored}_loss_per_epoch": history.val_loss,
        "epochs_run": epochs_run,
        "best_epoch": None if early_stopping is None
        else early_stopping.best_epoch(history) + 1,
        "epoch_seconds": history.epoch_seconds,
        "train_samples_per_s": float(n_train * epochs_run / np.sum(history.epoch_seconds)),
        "compile_seconds": compile_seconds,
        "compiled_kernels": compile_log.table(),
        "compiled_in_second_process": [name for name, _, _ in beside.kernels] if beside else [],
        "total_seconds": time.perf_counter() - start,
        "resumed_from": None if initial_state is None else {
            "epoch": initial_state.epoch, "batch": initial_state.batch},
        "settings": {**settings(args), "threads": threads},
    }
    if not lead:
        return 0
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
