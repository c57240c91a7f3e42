"""Train the detection demo's teacher: an FCOS-style detector with a depthwise backbone (edgekd ``det-m``) on the
Fashion-MNIST detection set of ``examples/make_fmnist_detection.py``.

    python examples/make_fmnist_detection.py --out data/fmnist-det
    python examples/train_detector.py --data data/fmnist-det --out examples/fmnist_detector.pt2

The loss is :class:`edgekd.kd.detection_losses.FCOSLoss` (focal classification + GIoU on centre-sampled
locations); AdamW with a one-cycle schedule; horizontal flips (boxes flipped too). Trains on edgekd's train split
of the train folder (the same seeded split a run makes), reports val mAP (pycocotools) every few epochs, and test
mAP once, at the end. The result is committed — a ``torch.export`` program (no pickle) carrying input shape,
classes, strides, preprocessing and the measured mAP — so the demo and CI never retrain it.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from edgekd.data.detection import load_detection  # noqa: E402
from edgekd.kd.detection_losses import FCOSLoss  # noqa: E402
from edgekd.models.detector import build_detector  # noqa: E402
from edgekd.tasks.detection_metrics import dense_layout, score_dense  # noqa: E402


def flip(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Horizontal flip of half the batch, boxes mirrored (x1' = W − x2, x2' = W − x1)."""
    w = x.shape[-1]
    sel = torch.rand(len(x)) < 0.5
    x, y = x.clone(), y.clone()
    x[sel] = x[sel].flip(-1)
    yy = y[sel]
    valid = yy[..., 0] >= 0
    x1 = torch.where(valid, w - yy[..., 3], yy[..., 1])
    x2 = torch.where(valid, w - yy[..., 1], yy[..., 3])
    yy[..., 1], yy[..., 3] = x1, x2
    y[sel] = yy
    return x, y


def evaluate(model: torch.nn.Module, x: np.ndarray, y: np.ndarray) -> dict:
    model.eval()
    with torch.no_grad():
        out = torch.cat([model(torch.from_numpy(x[i : i + 256])) for i in range(0, len(x), 256)]).numpy()
    return score_dense(out, y, {"layout": dense_layout(out.shape)})


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default="data/fmnist-det")
    ap.add_argument("--arch", default="det-m")
    ap.add_argument("--strides", type=int, nargs="+", default=[8, 16])
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--wd", type=float, default=1e-4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--eval-every", type=int, default=5)
    ap.add_argument("--out", default="examples/fmnist_detector.pt2")
    a = ap.parse_args()
    torch.manual_seed(a.seed)
    np.random.seed(a.seed)
    measured = load_detection(a.data, channels=1, size=(96, 96)).meta["normalize"]  # the train split's statistics,
    mean = tuple(round(v, 4) for v in measured["mean"])                              # rounded: the values recorded
    std = tuple(round(v, 4) for v in measured["std"])                                # in the model file
    ds = load_detection(a.data, channels=1, size=(96, 96), mean=mean, std=std)
    h, w = ds.input_shape[1:]
    x, y = torch.from_numpy(ds.train.x), torch.from_numpy(ds.train.y)
    model = build_detector(a.arch, 1, ds.num_classes, strides=a.strides)
    layout = {"channels_first": True}
    loss_fn = FCOSLoss(a.strides, (h, w), layout)
    opt = torch.optim.AdamW(model.parameters(), lr=a.lr, weight_decay=a.wd)
    steps = a.epochs * ((len(x) + a.batch - 1) // a.batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=a.lr, total_steps=steps, pct_start=0.1)
    history = []
    for epoch in range(a.epochs):
        model.train()
        t0 = time.time()
        perm = torch.randperm(len(x))
        total = 0.0
        for i in range(0, len(x), a.batch):
            idx = perm[i : i + a.batch]
            xb, yb = flip(x[idx], y[idx])
            loss = loss_fn(model(xb), yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
        rec = {"epoch": epoch + 1, "loss": total / len(x), "seconds": round(time.time() - t0, 1)}
        if (epoch + 1) % a.eval_every == 0 or epoch + 1 == a.epochs:
            m = evaluate(model, ds.val.x, ds.val.y)
            rec.update(val_map=m["map"], val_map50=m["map50"])
        history.append(rec)
        print(json.dumps(rec), flush=True)
    test = evaluate(model, ds.test.x, ds.test.y)
    print(json.dumps({"test": test}), flush=True)
    model.eval()
    meta = {"edgekd": {"input_shape": [1, 1, h, w], "task": "detect", "num_classes": ds.num_classes,
                       "classes": ds.meta["classes"], "arch": a.arch, "strides": a.strides,
                       "output": "(batch, 4 + classes, anchors): cx, cy, w, h in input pixels, then class probabilities",
                       "normalize": {"mean": list(mean), "std": list(std)}, "dataset": "fmnist-det (examples/make_fmnist_detection.py)",
                       "test_map": test["map"], "test_map50": test["map50"], "history": history,
                       "settings": {k: v for k, v in vars(a).items() if k != "out"}}}
    ep = torch.export.export(model, (torch.randn(2, 1, h, w),),
                             dynamic_shapes={"x": {0: torch.export.Dim("batch", min=1, max=4096)}})
    torch.export.save(ep, a.out, extra_files={"edgekd.json": json.dumps(meta)})
    torch.save(model.state_dict(), a.out.replace(".pt2", ".state_dict.pt"))
    print("saved", a.out)


if __name__ == "__main__":
    main()
