"""The PyTorch twin of the vgg_small recipe in README, for a side-by-side run.

The same network (torch's own default initialisation), AdamW (weight decay 0.01), the
same per-step cosine schedule, batch size, epochs, standardisation and augmentation
(fastcnn's Augmentation on the same uint8 batches: torchvision is not a dependency),
on the same Fashion-MNIST arrays, with the same number of threads. Prints one line per
epoch, then JSON with the time of each epoch and the final test accuracy and macro F1,
also written to --out.

    python bench/vgg_torch_twin.py [--epochs 20] [--lr 0.003] [--augment 1] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time
from pathlib import Path

import numpy as np

import fastcnn as fc
from fastcnn.data import MEAN, STD
from fastcnn.metrics import accuracy, macro_f1


def twin(torch):
    nn = torch.nn

    def block(c_in: int, c_out: int) -> list:
        return [nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU()]

    return nn.Sequential(
        *block(1, 32), *block(32, 32), nn.MaxPool2d(2), nn.Dropout(0.25),
        *block(32, 64), *block(64, 64), nn.MaxPool2d(2), nn.Dropout(0.25),
        *block(64, 128), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.25),
        nn.Linear(128, 10))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--lr", type=float, default=0.003)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--augment", type=int, default=1, help="shift in pixels (flips too)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data-dir", default=None)
    p.add_argument("--out", default=None)
    args = p.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    x, y = fc.load_dataset("fashion-mnist", "train", args.data_dir)
    xt, yt = fc.load_dataset("fashion-mnist", "test", args.data_dir)
    x, xt = x.reshape(-1, 1, 28, 28), xt.reshape(-1, 1, 28, 28)

    def prepare(images: np.ndarray):
        return torch.from_numpy(((images / 255.0 - MEAN) / STD).astype(np.float32))

    model = twin(torch)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)
    steps = math.ceil(len(x) / args.batch_size)
    total = args.epochs * steps
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda t: 0.5 * (1 + math.cos(math.pi * min(t, total) / total)))
    augment = fc.Augmentation(args.augment)
    rng = np.random.default_rng(args.seed)
    loss_fn = torch.nn.CrossEntropyLoss()
    epochs = []
    for epoch in range(args.epochs):
        model.train()
        start = time.perf_counter()
        order = rng.permutation(len(x))
        running = 0.0
        for b in range(steps):
            idx = order[b * args.batch_size:(b + 1) * args.batch_size]
            xb = prepare(augment.apply(x[idx], rng))
            opt.zero_grad()
            loss = loss_fn(model(xb), torch.from_numpy(y[idx].astype(np.int64)))
            loss.backward()
            opt.step()
            sched.step()
            running += loss.item() * len(idx)
        seconds = time.perf_counter() - start
        model.eval()
        with torch.inference_mode():
            pred = np.concatenate([model(prepare(xt[i:i + 1000])).argmax(1).numpy()
                                   for i in range(0, len(xt), 1000)])
        epochs.append({"seconds": seconds, "loss": running / len(x),
                       "test_accuracy": accuracy(yt, pred), "macro_f1": macro_f1(yt, pred)})
        print(f"epoch {epoch + 1}/{args.epochs}  loss {running / len(x):.4f}  test_accuracy "
              f"{epochs[-1]['test_accuracy']:.4f}  macro_f1 {epochs[-1]['macro_f1']:.4f}  "
              f"{seconds:.1f} s", flush=True)
    result = {"torch": torch.__version__, "threads": args.threads,
              "cpu": platform.processor() or platform.machine(), "settings": vars(args),
              "epochs": epochs, "test_accuracy": epochs[-1]["test_accuracy"],
              "macro_f1": epochs[-1]["macro_f1"]}
    print(json.dumps(result, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
