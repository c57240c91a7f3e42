"""Train the demo teacher: a ResNet-style CNN (edgekd zoo ``resnet-l``, 308k params) on real Fashion-MNIST.

    python examples/train_teacher.py --epochs 12 --out examples/fmnist_teacher.pt2
    python examples/train_teacher.py --arch vit-tiny --optimizer adamw --lr 2e-3 --wd 0.05 --epochs 15 \
        --label-smoothing 0 --out examples/fmnist_vit_teacher.pt2      # the small ViT teacher for TI benchmarks
    python examples/train_teacher.py --arch mobilenet-se-s --epochs 12 \
        --out examples/fmnist_mobilenet_se_teacher.pt2                  # depthwise + squeeze-excite (90.32 %, 4.5 min)
    python examples/train_teacher.py --arch vit-tiny-d6 --optimizer adamw --lr 2e-3 --wd 0.05 --epochs 15 \
        --label-smoothing 0 --out examples/fmnist_vit_d6_teacher.pt2    # the 6-block ViT of the TI benchmark's deeper arm

Takes about 20 minutes on 2 CPU cores. The result is committed, so the demo and CI never retrain it. The file is a
``torch.export`` program (safe to load, no pickle) and carries the input shape, class count and the preprocessing
the teacher was trained with, which edgekd reads back so students see exactly the same inputs.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch
import torch.nn.functional as F

from edgekd.data import load_dataset
from edgekd.models.zoo import build_model

MEAN, STD = (0.2860,), (0.3530,)  # Fashion-MNIST train-set statistics (rounded)


def augment(x: torch.Tensor, pad: int = 2) -> torch.Tensor:
    """Random crop (padded with the background value) and random horizontal flip, on the whole batch."""
    n, _, h, w = x.shape
    bg = float(x.min())
    xp = F.pad(x, (pad, pad, pad, pad), value=bg)
    dx, dy = torch.randint(0, 2 * pad + 1, (2,)).tolist()
    x = xp[:, :, dy : dy + h, dx : dx + w]
    flip = torch.rand(n) < 0.5
    x[flip] = x[flip].flip(-1)
    return x


def evaluate(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    correct = 0
    with torch.no_grad():
        for i in range(0, len(y), 1000):
            correct += (model(x[i : i + 1000]).argmax(1) == y[i : i + 1000]).sum().item()
    return correct / len(y)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=12)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--lr", type=float, default=0.1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--arch", default="resnet-l")
    ap.add_argument("--out", default="examples/fmnist_teacher.pt2")
    ap.add_argument("--optimizer", choices=["sgd", "adamw"], default="sgd")
    ap.add_argument("--wd", type=float, default=5e-4)
    ap.add_argument("--label-smoothing", type=float, default=0.1)
    args = ap.parse_args()
    torch.manual_seed(args.seed)
    ds = load_dataset("fashion-mnist", mean=MEAN, std=STD)
    # The teacher trains on train+val: edgekd's own val split is for the student; the test split stays held out.
    x = torch.from_numpy(np.asarray(ds.train.x)).clone()
    y = torch.from_numpy(ds.train.y)
    xt, yt = torch.from_numpy(np.asarray(ds.test.x)), torch.from_numpy(ds.test.y)
    model = build_model(args.arch, 1, 10)
    if args.optimizer == "sgd":
        opt = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9, nesterov=True, weight_decay=args.wd)
    else:
        opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.wd)
    steps = args.epochs * ((len(y) + args.batch - 1) // args.batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=steps, pct_start=0.2)
    history = []
    for epoch in range(args.epochs):
        model.train()
        t0 = time.time()
        perm = torch.randperm(len(y))
        total = 0.0
        for i in range(0, len(y), args.batch):
            idx = perm[i : i + args.batch]
            loss = F.cross_entropy(model(augment(x[idx])), y[idx], label_smoothing=args.label_smoothing)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
        acc = evaluate(model, xt, yt)
        history.append({"epoch": epoch + 1, "loss": total / len(y), "test_top1": acc, "seconds": time.time() - t0})
        print(json.dumps(history[-1]), flush=True)
    model.eval()
    meta = {"edgekd": {"input_shape": [1, 1, 28, 28], "num_classes": 10, "arch": args.arch,
                       "normalize": {"mean": list(MEAN), "std": list(STD)}, "dataset": "fashion-mnist",
                       "test_top1": history[-1]["test_top1"], "history": history}}
    ep = torch.export.export(model, (torch.randn(2, 1, 28, 28),),  # batch 2: a batch of 1 would be specialised
                             dynamic_shapes={"x": {0: torch.export.Dim("batch", min=1, max=4096)}})
    torch.export.save(ep, args.out, extra_files={"edgekd.json": json.dumps(meta)})
    torch.save(model.state_dict(), args.out.replace(".pt2", ".state_dict.pt"))
    print("saved", args.out)


if __name__ == "__main__":
    main()
