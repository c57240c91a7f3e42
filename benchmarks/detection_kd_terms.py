"""How the detect task's distillation default was chosen: which loss terms train the best student, on val.

    python benchmarks/detection_kd_terms.py [--seeds 0] [--data data/fmnist-det]

The detection demo's settings (``examples/demo-detect.yaml``: the example teacher ``det-m``, student ``det-s`` (pinned:
the demo's student is det-sp since ``benchmarks/detection_students.py``; the loss was chosen on det-s), 30
epochs, AdamW 3e-3, weight EMA 0.998, box-aware random shifts and flips), one ``edgekd distill`` run per variant of
the loss (``edgekd/kd/detection_losses.py``; weights in ``distill.ce_weight`` and ``distill.loss_params``):
- labels + class KD: the FCOS ground-truth term and the Quality Focal Loss on the teacher's class scores (the default);
- labels only: the ground-truth term alone (``cls_weight: 0``);
- labels + class KD + box KD: and GIoU to the teacher's decoded boxes weighted by its confidence (``box_weight: 2``);
- KD only: class and box KD, no labels (``ce_weight: 0``), the only choice for data without boxes.
Scored by mAP@[.5:.95] on the pipeline's val split (the test split is not used: this chooses a default); the first
and last epoch's training loss are recorded to show each run trained.

Why the teacher's boxes make poor targets is measured beside it: on the val canvases, the teacher's decoded box at
every location against the true box it overlaps most (IoU), grouped by the teacher's confidence max_c p_t (the
weight the box KD gives that location), and at the locations the FCOS assignment labels positive.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np

from _common import REPO, md_table, save

CONFIG = REPO / "examples" / "demo-detect.yaml"
VARIANTS: dict[str, dict[str, Any]] = {
    "labels + class KD (default)": {},
    "labels only": {"distill__loss_params": {"cls_weight": 0.0}},
    "labels + class KD + box KD": {"distill__loss_params": {"box_weight": 2.0}},
    "KD only (class + box)": {"distill__ce_weight": 0.0},
}
CONFIDENCE_BINS = ((0.0, 0.05), (0.05, 0.2), (0.2, 0.5), (0.5, 1.01))


def distill(variant: str, seed: int, data: Path, runs: Path) -> dict[str, Any]:
    run_dir = runs / f"{variant.split(' (')[0].replace(' + ', '+').replace(' ', '-')}-seed{seed}"
    return distilled_val_map(run_dir, data, {"variant": variant, "seed": seed}, distill__seed=seed,
                             distill__student="det-s", **VARIANTS[variant])


def distilled_val_map(run_dir: Path, data: Path, tags: dict[str, Any], **overrides: Any) -> dict[str, Any]:
    """``edgekd distill`` of the demo config with ``overrides`` into ``run_dir`` (reused when it has finished): the
    student's final val mAP, its curve, and the first and last epoch's loss (to show it trained), with ``tags``."""
    from edgekd import api, progress

    if not (run_dir / "01-distill" / "history.json").exists():
        progress.set_quiet(True)
        api.distill(config=CONFIG, data={"path": str(data)}, run_dir=run_dir, **overrides)
    history = json.loads((run_dir / "01-distill" / "history.json").read_text())
    res = {**tags, "val_map": history[-1]["val_map"],
           "val_map_by_epoch": [round(h["val_map"], 4) for h in history if "val_map" in h],
           "loss_first_epoch": history[0]["loss_total"], "loss_last_epoch": history[-1]["loss_total"],
           "run_dir": str(run_dir.relative_to(REPO)) if run_dir.is_relative_to(REPO) else str(run_dir)}
    print(json.dumps({k: v for k, v in res.items() if k != "val_map_by_epoch"}), flush=True)
    return res


def teacher_box_quality(data: Path) -> dict[str, Any]:
    """IoU of the teacher's decoded box at each val location with the true box it overlaps most, by confidence."""
    import torch

    from edgekd.data.detection import load_detection
    from edgekd.kd.detection_losses import FCOSLoss, dense_parts
    from edgekd.models.loading import load_model

    model = load_model(str(REPO / "examples" / "fmnist_detector.pt2"))
    norm = model.meta["normalize"]
    ds = load_detection(data, channels=1, size=(96, 96), mean=tuple(norm["mean"]), std=tuple(norm["std"]))
    x, y = torch.from_numpy(np.asarray(ds.val.x)), torch.from_numpy(ds.val.y)
    with torch.no_grad():
        out = model.module.eval()(x)
    layout = {"channels_first": True}
    boxes, scores = dense_parts(out, layout)
    _, positive = FCOSLoss(model.meta["strides"], (96, 96), layout).assign(y)
    w = scores.max(-1).values
    truth, valid = y[..., 1:5], y[..., 0] >= 0
    a, b = boxes[:, :, None, :], truth[:, None, :, :]
    inter = (torch.minimum(a[..., 2:], b[..., 2:]) - torch.maximum(a[..., :2], b[..., :2])).clamp(min=0).prod(-1)
    union = (a[..., 2:] - a[..., :2]).clamp(min=0).prod(-1) + (b[..., 2:] - b[..., :2]).clamp(min=0).prod(-1) - inter
    iou = torch.where(valid[:, None, :], inter / (union + 1e-7), torch.zeros_like(inter)).max(-1).values
    total = float(w.sum())
    bins = []
    for lo, hi in CONFIDENCE_BINS:
        sel = (w >= lo) & (w < hi)
        bins.append({"confidence": [lo, min(hi, 1.0)], "locations": int(sel.sum()), "weight_share": float(w[sel].sum()) / total,
                     "weighted_mean_iou": float((w[sel] * iou[sel]).sum() / w[sel].sum()),
                     "labelled_positive_share": float(positive[sel].float().mean())})
    return {"images": int(len(x)), "bins": bins, "mean_iou_at_labelled_positives": float(iou[positive].mean()),
            "weight_share_at_labelled_positives": float(w[positive].sum()) / total}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=str(REPO / "data" / "fmnist-det"))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--runs", default=str(REPO / "runs" / "bench-kd-terms"), help="where the runs go (reused)")
    a = ap.parse_args()
    data, runs = Path(a.data), Path(a.runs)
    rows = [distill(v, s, data, runs) for s in a.seeds for v in VARIANTS]
    quality = teacher_box_quality(data)
    table = []
    for v in VARIANTS:
        got = [r for r in rows if r["variant"] == v]
        vals = [r["val_map"] for r in got]
        spread = f" ± {np.std(vals, ddof=1):.3f}" if len(vals) > 1 else ""
        table.append([v, f"{np.mean(vals):.3f}{spread}", ", ".join(f"{x:.3f}" for x in vals),
                      ", ".join(f"{r['loss_first_epoch']:.3f} → {r['loss_last_epoch']:.3f}" for r in got)])
    qtable = [[f"{b['confidence'][0]:.2f}–{b['confidence'][1]:.2f}", b["locations"], f"{b['weight_share']:.3f}",
               f"{b['weighted_mean_iou']:.3f}", f"{b['labelled_positive_share']:.3f}"] for b in quality["bins"]]
    md = ("# Detection distillation: which loss terms (val, chooses the default)\n\n"
          f"`examples/demo-detect.yaml` (teacher det-m → student det-s, 30 epochs, box-aware shifts/flips, EMA), seeds "
          f"{', '.join(map(str, a.seeds))}; mAP@[.5:.95] of the distilled student on the pipeline's val split "
          "(never test).\n\n"
          + md_table(["loss terms", "val mAP", "per seed", "training loss, epoch 1 → last"], table) + "\n\n"
          f"The teacher's decoded boxes as targets ({quality['images']} val canvases): IoU of the box at each location "
          "with the true box it overlaps most, weighted by the teacher's confidence max_c p_t (the box KD's weight), "
          f"by confidence. At the locations the FCOS assignment labels positive the mean IoU is "
          f"{quality['mean_iou_at_labelled_positives']:.3f}; they carry {quality['weight_share_at_labelled_positives']:.3f} "
          "of the box KD's weight.\n\n"
          + md_table(["teacher confidence", "locations", "share of box-KD weight", "weighted mean IoU",
                      "labelled positive"], qtable) + "\n\n"
          "With labels, the labels are the better box targets (the teacher's boxes reach IoU "
          f"{quality['mean_iou_at_labelled_positives']:.2f} with the truth where labelled, {quality['bins'][0]['weighted_mean_iou']:.2f} "
          "where it is least sure); the teacher's class scores still help. Without labels the teacher's boxes are the "
          "only box signal (KD only).\n")
    save("detection_kd_terms", {"config": str(CONFIG.relative_to(REPO)), "seeds": a.seeds, "results": rows,
                                "teacher_box_quality": quality}, md)


if __name__ == "__main__":
    main()
