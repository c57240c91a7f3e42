"""Detection scoring in numpy (no torch): box conversions, decoding of dense outputs, NMS and COCO mAP.

The torch-free benchmark worker and the device-side runner score a detector with this module alone, so every
deployed artifact gets its mAP from its own outputs.

Dense outputs (the layout Ultralytics' YOLOv8/11 ONNX exports and edgekd's detectors share)::

    (B, 4 + C, N)  or  (B, N, 4 + C)      rows 0–3: box centre x, y, width, height in input pixels;
                                          rows 4…: per-class scores (probabilities, or logits → sigmoid)

Decoding keeps, per image, the class-scores above ``score_threshold`` (every class a location scores, as YOLO's
validation does), runs class-aware greedy NMS at ``iou_threshold`` and keeps the ``max_detections`` best.

Ground truth travels as a padded array ``(N, M, 5)``: ``[class, x1, y1, x2, y2]`` in input pixels, class −1 for
padding. mAP@[.5:.95] and mAP@.5 are computed by ``pycocotools.COCOeval`` — the reference implementation (101-point
interpolated precision, maxDets 100) — not re-implemented here.
"""

from __future__ import annotations

import contextlib
import io
from typing import Any

import numpy as np

#: YOLO's validation settings (ultralytics val: conf 0.001, iou 0.7 → we use 0.65 as YOLOv5 val does; max_det 300 →
#: COCO counts 100 per image); the 300 best candidates per image enter NMS (on the example detector 300 vs 3000
#: changed test mAP by 4e-6 and decoding ran 4× faster)
DEFAULT_DECODE = {"score_threshold": 0.001, "iou_threshold": 0.65, "max_detections": 100, "pre_nms": 300}


def cxcywh_to_xyxy(b: np.ndarray) -> np.ndarray:
    cx, cy, w, h = b[..., 0], b[..., 1], b[..., 2], b[..., 3]
    return np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], -1)


def xyxy_to_cxcywh(b: np.ndarray) -> np.ndarray:
    x1, y1, x2, y2 = b[..., 0], b[..., 1], b[..., 2], b[..., 3]
    return np.stack([(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1], -1)


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box in ``a`` (K, 4) with every box in ``b`` (L, 4), xyxy → (K, L)."""
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(-1)
    area_a = np.clip(a[:, 2:] - a[:, :2], 0, None).prod(-1)
    area_b = np.clip(b[:, 2:] - b[:, :2], 0, None).prod(-1)
    return inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-12)


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float, max_keep: int | None = None) -> np.ndarray:
    """Greedy non-maximum suppression: indices of the kept boxes, best first. Each step keeps the best remaining box
    and drops the remaining boxes whose IoU with it exceeds ``iou_threshold``; stops after ``max_keep`` boxes."""
    order = np.argsort(-scores, kind="stable")
    b = boxes[order]
    over = box_iou(b, b) > iou_threshold  # one K × K matrix (K ≤ pre_nms), then a cheap greedy pass
    suppressed = np.zeros(len(order), bool)
    keep: list[int] = []
    for i in range(len(order)):
        if suppressed[i]:
            continue
        keep.append(int(order[i]))
        if max_keep is not None and len(keep) >= max_keep:
            break
        suppressed |= over[i]
    return np.asarray(keep, np.int64)


def batched_nms(boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray, iou_threshold: float,
                max_keep: int | None = None) -> np.ndarray:
    """Class-aware NMS: boxes of different classes never suppress each other. :func:`nms` within each class, then
    the survivors of every class best first (ties in input order), cut at ``max_keep`` — the same boxes as one greedy
    pass over all of them in score order, with one small IoU matrix per class instead of one K × K matrix (an
    all-pairs matrix of the 300 pre-NMS candidates was most of a detector's scoring time)."""
    if not len(boxes):
        return np.zeros(0, np.int64)
    kept = []
    for c in np.unique(classes):
        idx = np.flatnonzero(classes == c)
        kept.append(idx[nms(boxes[idx], scores[idx], iou_threshold, max_keep)])
    keep = np.concatenate(kept)
    keep = keep[np.lexsort((keep, -scores[keep]))]  # score descending, then input order (nms's stable sort)
    return keep if max_keep is None else keep[:max_keep]


def dense_layout(shape: tuple[int, ...], num_classes: int | None = None) -> dict[str, Any]:
    """How a (B, a, b) dense output lies: ``{"channels_first": …, "anchors": N, "num_classes": C}``. The shorter of
    the two axes carries 4 + C values (YOLO exports are (B, 4 + C, N)); with ``num_classes`` the axis of size
    4 + C is chosen."""
    if len(shape) != 3:
        raise ValueError(f"dense detections are (batch, 4 + classes, anchors); got shape {shape}")
    a, b = int(shape[1]), int(shape[2])
    if num_classes is not None and a == 4 + num_classes and b != a:
        cf = True
    elif num_classes is not None and b == 4 + num_classes:
        cf = False
    else:
        cf = a <= b
    c = (a if cf else b) - 4
    return {"channels_first": cf, "anchors": b if cf else a, "num_classes": c}


def split_layout(shapes: list[tuple[int, ...]], names: list[str]) -> dict[str, Any] | None:
    """How a detector that returns boxes and scores as two tensors lays them out, or None if its two outputs are not
    that: ``(B, N, 4)`` and ``(B, N, C)`` (or channels first, ``(B, 4, N)`` and ``(B, C, N)``), in either order. The
    layout is :func:`dense_layout`'s plus ``parts``, the outputs in the model's order (name and kind); the arrays
    runtimes return for such a model are the two outputs flattened and packed side by side (B, 4N + CN)."""
    if len(shapes) != 2 or any(len(s) != 3 for s in shapes):
        return None
    for cf in (False, True):
        ch, loc = (1, 2) if cf else (2, 1)
        if shapes[0][loc] != shapes[1][loc]:
            continue
        kinds = ["boxes" if int(s[ch]) == 4 else "scores" for s in shapes]
        if sorted(kinds) != ["boxes", "scores"]:
            continue
        c = int(next(s[ch] for s, k in zip(shapes, kinds) if k == "scores"))
        return {"channels_first": cf, "anchors": int(shapes[0][loc]), "num_classes": c,
                "parts": [{"name": n, "kind": k} for n, k in zip(names, kinds)]}
    return None


def split_dense(out: np.ndarray, layout: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """(B, ·, ·) dense outputs → boxes (B, N, 4) as given and scores (B, N, C); for a two-output detector
    (:func:`split_layout`), its packed (B, 4N + CN) outputs."""
    o = np.asarray(out, np.float32)
    if "parts" in layout and o.ndim == 2:
        n, c, cf = int(layout["anchors"]), int(layout["num_classes"]), bool(layout["channels_first"])
        got, start = {}, 0
        for part in layout["parts"]:
            d = 4 if part["kind"] == "boxes" else c
            a = o[:, start : start + n * d]
            start += n * d
            got[part["kind"]] = a.reshape(len(o), d, n).transpose(0, 2, 1) if cf else a.reshape(len(o), n, d)
        if start != o.shape[1]:
            raise ValueError(f"packed detections have {o.shape[1]} values an image; boxes and scores of "
                             f"{n} locations make {start}")
        return got["boxes"], got["scores"]
    if layout["channels_first"]:
        o = o.transpose(0, 2, 1)
    return o[..., :4], o[..., 4:]


def decode(out: np.ndarray, layout: dict[str, Any], *, box_format: str = "cxcywh", scores: str = "probabilities",
           score_threshold: float = DEFAULT_DECODE["score_threshold"], iou_threshold: float = DEFAULT_DECODE["iou_threshold"],
           max_detections: int = DEFAULT_DECODE["max_detections"], pre_nms: int = DEFAULT_DECODE["pre_nms"],
           **_: Any) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Per image: (boxes xyxy (K, 4), scores (K,), classes (K,)) after thresholding and class-aware NMS."""
    boxes, sc = split_dense(out, layout)
    if scores == "logits":
        sc = 1.0 / (1.0 + np.exp(-np.clip(sc, -60, 60)))
    if box_format == "cxcywh":
        boxes = cxcywh_to_xyxy(boxes)
    res = []
    for b, s in zip(boxes, sc):
        loc, cls = np.nonzero(s > score_threshold)
        conf = s[loc, cls]
        if len(conf) > pre_nms:
            top = np.argpartition(-conf, pre_nms)[:pre_nms]
            loc, cls, conf = loc[top], cls[top], conf[top]
        bb = b[loc]
        keep = batched_nms(bb, conf, cls, iou_threshold, max_detections)
        res.append((bb[keep].astype(np.float64), conf[keep].astype(np.float64), cls[keep].astype(np.int64)))
    return res


def ground_truth(y: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """Padded targets (N, M, 5) → per image (boxes xyxy (K, 4), classes (K,))."""
    out = []
    for t in np.asarray(y):
        t = t[t[:, 0] >= 0]
        out.append((t[:, 1:5].astype(np.float64), t[:, 0].astype(np.int64)))
    return out


def coco_map(detections: list[tuple[np.ndarray, np.ndarray, np.ndarray]], truth: list[tuple[np.ndarray, np.ndarray]],
             num_classes: int) -> dict[str, float]:
    """``map`` (mAP@[.5:.95]), ``map50``, ``map75`` and ``ar100`` by pycocotools' COCOeval on boxes in pixels.

    Every class in ``range(num_classes)`` is a category; classes absent from the ground truth are left out of the
    mean (COCOeval's convention: AP −1 is not averaged)."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    images, anns, dets = [], [], []
    for i, ((gb, gc), (db, ds, dc)) in enumerate(zip(truth, detections)):
        images.append({"id": i})
        for b, c in zip(gb, gc):
            w, h = float(b[2] - b[0]), float(b[3] - b[1])
            anns.append({"id": len(anns) + 1, "image_id": i, "category_id": int(c), "bbox": [float(b[0]), float(b[1]), w, h],
                         "area": w * h, "iscrowd": 0})
        for b, s, c in zip(db, ds, dc):
            dets.append({"image_id": i, "category_id": int(c), "score": float(s),
                         "bbox": [float(b[0]), float(b[1]), float(b[2] - b[0]), float(b[3] - b[1])]})
    if not anns:
        return {"map": float("nan"), "map50": float("nan"), "map75": float("nan"), "ar100": float("nan")}
    if not dets:
        return {"map": 0.0, "map50": 0.0, "map75": 0.0, "ar100": 0.0}
    with contextlib.redirect_stdout(io.StringIO()):  # COCO and COCOeval print their progress
        gt = COCO()
        gt.dataset = {"images": images, "annotations": anns, "categories": [{"id": c} for c in range(num_classes)]}
        gt.createIndex()
        dt = gt.loadRes(dets)
        ev = COCOeval(gt, dt, "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    s = ev.stats
    return {"map": float(s[0]), "map50": float(s[1]), "map75": float(s[2]), "ar100": float(s[8])}


def score_dense(out: np.ndarray, y: np.ndarray, info: dict[str, Any]) -> dict[str, Any]:
    """mAP of dense outputs against padded targets, decoded with ``info['decode']``."""
    dets = decode(out, info["layout"], **info.get("decode", {}))
    res = coco_map(dets, ground_truth(y), int(info["layout"]["num_classes"]))
    res["detections_per_image"] = float(np.mean([len(d[1]) for d in dets])) if dets else 0.0
    return res


def detections_as_truth(out: np.ndarray, info: dict[str, Any], min_score: float = 0.25) -> np.ndarray:
    """A model's own confident detections (score ≥ ``min_score``, YOLO's predict default) as padded targets: what
    another implementation of the same model is scored against."""
    dets = decode(out, info["layout"], **{**info.get("decode", {}), "score_threshold": min_score})
    m = max([1] + [len(d[1]) for d in dets])
    y = np.full((len(dets), m, 5), -1.0, np.float32)
    for i, (b, _, c) in enumerate(dets):
        y[i, : len(c), 0] = c
        y[i, : len(c), 1:] = b
    return y
