"""KD helps: the demo student trained with Hinton KD vs the same student trained on labels alone.

    python benchmarks/kd_vs_labels.py [--seeds 0 1 2] [--epochs 12]
    python benchmarks/kd_vs_labels.py --limit 5000 --losses ce kd dkd dist nkd --name kd_vs_labels_5k

Same architecture (resnet-s), same epochs, schedule, batch and data (the 55k Fashion-MNIST training split); only
the loss differs. Top-1 on the held-out 10k test set, mean ± std over seeds. Teacher logits are computed once.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from _common import REPO, md_table, save

from edgekd.config import DistillConfig
from edgekd.data import load_dataset
from edgekd.kd.trainer import accuracy, predict_logits, train_student
from edgekd.models.loading import load_model
from edgekd.models.zoo import build_model


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--epochs", type=int, default=12)
    ap.add_argument("--student", default="resnet-s")
    ap.add_argument("--losses", nargs="+", default=["ce", "kd"])
    ap.add_argument("--limit", type=int, default=None, help="train on the first N training samples only")
    ap.add_argument("--name", default="kd_vs_labels")
    a = ap.parse_args()
    torch.set_num_threads(2)
    lm = load_model(REPO / "examples" / "fmnist_teacher.pt2")
    data = load_dataset("fashion-mnist", mean=lm.meta["normalize"]["mean"], std=lm.meta["normalize"]["std"], limit=a.limit)
    t0 = time.time()
    t_logits = predict_logits(lm.module, data.train.x)
    teacher_test = accuracy(predict_logits(lm.module, data.test.x), data.test.y)
    print(f"teacher logits in {time.time() - t0:.0f}s; teacher test top-1 {teacher_test:.4f}")
    res: dict[str, list[float]] = {l: [] for l in a.losses}
    runs = []
    for seed in a.seeds:
        for loss in a.losses:
            torch.manual_seed(seed)
            student = build_model(a.student, 1, 10)
            # DKD's warm-up as a fraction of the run: 1/6 (2 of the 12 epochs the committed results used)
            params = {"warmup": 1 / 6} if loss == "dkd" else {}
            cfg = DistillConfig(loss=loss, loss_params=params, epochs=a.epochs, seed=seed, batch_size=128, lr=0.1)
            t1 = time.time()
            out = train_student(lm.module, student, data, cfg, teacher_logits=t_logits)
            top1 = accuracy(predict_logits(out.student, data.test.x), data.test.y)
            res[loss].append(top1)
            runs.append({"seed": seed, "loss": loss, "test_top1": top1, "val_top1": out.history[-1]["val_top1"],
                         "seconds": time.time() - t1})
            print(runs[-1], flush=True)
    summary = {l: {"mean": statistics.mean(v), "std": statistics.stdev(v) if len(v) > 1 else 0.0, "runs": v} for l, v in res.items()}
    rows = [[l, f"{100 * s['mean']:.2f} ± {100 * s['std']:.2f}", ", ".join(f"{100 * x:.2f}" for x in s["runs"])] for l, s in summary.items()]
    lines = []
    for l in a.losses:
        if l == "ce" or "ce" not in res:
            continue
        paired = [100 * (k - c) for k, c in zip(res[l], res["ce"])]
        lines.append(f"- {l} − ce: {statistics.mean(paired):+.2f} points on average; per seed: "
                     + ", ".join(f"{d:+.2f}" for d in paired))
    n_train = len(data.train)
    md = (f"# KD vs labels alone — student `{a.student}` on Fashion-MNIST, {n_train:,} training images\n\n"
          f"Teacher `resnet-l` test top-1 {100 * teacher_test:.2f} %. {a.epochs} epochs each, same schedule and seeds "
          f"{a.seeds}; top-1 on the 10k test set.\n\n" + md_table(["loss", "test top-1 % (mean ± std)", "per seed"], rows)
          + "\n\n" + "\n".join(lines) + "\n")
    save(a.name, {"student": a.student, "epochs": a.epochs, "seeds": a.seeds, "train_samples": n_train,
                  "teacher_test_top1": teacher_test, "summary": summary, "runs": runs}, md)


if __name__ == "__main__":
    main()
