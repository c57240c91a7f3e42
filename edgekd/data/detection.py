"""Detection data: COCO JSON and YOLO txt layouts, letterboxed to the model's input with the boxes transformed.

Layouts (``--data`` names the folder, or the COCO JSON file itself):

    COCO   annotations.json (or instances*.json) + images/   bbox [x, y, w, h] in pixels, category ids any integers
    YOLO   images/ + labels/ (one .txt per image: ``class cx cy w h``, normalised to [0, 1]); class names from
           classes.txt or data.yaml ``names`` when present

A ``train/`` and ``val/`` (or ``test/``) pair of such folders gives the test split from the source; otherwise a
seeded split as for every other dataset. Every image is letterboxed to the model's H×W — scaled by
``s = min(W/w, H/h)`` and centred on a grey (114) canvas, as YOLO's validation does — and each box follows:

    x' = s·x + (W − s·w) / 2,    y' = s·y + (H − s·h) / 2

Targets are padded to one array (N, M, 5) of ``[class, x1, y1, x2, y2]`` in input pixels, class −1 for padding, so
they travel through splits, calibration and the eval file like any other labels. Category ids are mapped to
0..C−1 in ascending id order; the mapping is recorded.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from edgekd import progress
from edgekd.data.arrays import normalization
from edgekd.data.datasets import ArraySplit, Dataset, resolve_data_path, split_indices
from edgekd.data.image_folder import IMAGE_SUFFIXES
from edgekd.errors import DataError

PAD_VALUE = 114


def letterbox(im, size: tuple[int, int]) -> tuple[Any, float, float, float]:  # noqa: ANN001
    """A PIL image fitted into ``size`` (H, W) keeping its aspect ratio → (image, scale, pad_x, pad_y)."""
    from PIL import Image

    h, w = size
    s = min(w / im.width, h / im.height)
    nw, nh = max(1, round(im.width * s)), max(1, round(im.height * s))
    px, py = (w - nw) / 2, (h - nh) / 2
    if (nw, nh) == (im.width, im.height) and (nw, nh) == (w, h):
        return im, 1.0, 0.0, 0.0
    canvas = Image.new(im.mode, (w, h), (PAD_VALUE,) * len(im.getbands()))
    canvas.paste(im.resize((nw, nh), Image.BILINEAR), (int(px), int(py)))
    return canvas, s, float(int(px)), float(int(py))


def transform_boxes(boxes: np.ndarray, scale: float, pad_x: float, pad_y: float) -> np.ndarray:
    """xyxy boxes of the source image → xyxy boxes on the letterboxed canvas."""
    b = np.asarray(boxes, np.float32).reshape(-1, 4).copy()
    b[:, [0, 2]] = b[:, [0, 2]] * scale + pad_x
    b[:, [1, 3]] = b[:, [1, 3]] * scale + pad_y
    return b


def is_detection_data(path: str | Path) -> bool:
    """A COCO JSON file, or a folder with a COCO JSON or YOLO ``labels/`` (directly or under train/)."""
    try:
        root = resolve_data_path(path)
    except DataError:
        return False
    return _layout(root) is not None


def _coco_json(folder: Path) -> Path | None:
    for name in ("annotations.json", "instances.json"):
        if (folder / name).is_file():
            return folder / name
    found = sorted(folder.glob("instances*.json")) + sorted((folder / "annotations").glob("*.json") if
                                                            (folder / "annotations").is_dir() else [])
    return found[0] if found else None


def _layout(root: Path) -> str | None:
    if root.is_file():
        return "coco" if root.suffix == ".json" else None
    for base in (root, root / "train"):
        if base.is_dir() and _coco_json(base):
            return "coco"
        if (base / "labels").is_dir() and (base / "images").is_dir():
            return "yolo"
    return None


# ---------------------------------------------------------------------------------------------------- readers


def _read_image(path: Path, mode: str, size: tuple[int, int]) -> tuple[np.ndarray, float, float, float, int, int]:
    from PIL import Image

    try:
        with Image.open(path) as im:
            im = im.convert(mode)
            w0, h0 = im.width, im.height
            im, s, px, py = letterbox(im, size)
            return np.asarray(im, np.uint8), s, px, py, w0, h0
    except (OSError, ValueError, SyntaxError) as e:
        raise DataError(f"cannot read image {path}: {str(e)[:80]}", "remove or replace the damaged file") from None


def read_coco(json_path: Path, channels: int, size: tuple[int, int]) -> tuple[np.ndarray, list[np.ndarray], dict[str, Any]]:
    """Images (N, H, W[, C]) uint8 letterboxed, per-image targets (K, 5) and the category mapping."""
    try:
        doc = json.loads(json_path.read_text())
    except (OSError, ValueError) as e:
        raise DataError(f"cannot read COCO annotations {json_path}: {str(e)[:80]}", "pass a valid COCO JSON file") from None
    if not isinstance(doc, dict) or "images" not in doc or "annotations" not in doc:
        raise DataError(f"{json_path.name} is not COCO detection JSON (needs 'images' and 'annotations')",
                        "write images/annotations/categories as in COCO's instances_*.json")
    cats = sorted({int(c["id"]) for c in doc.get("categories", [])} | {int(a["category_id"]) for a in doc["annotations"]})
    cat_index = {c: i for i, c in enumerate(cats)}
    names = {int(c["id"]): str(c.get("name", c["id"])) for c in doc.get("categories", [])}
    folder = json_path.parent
    img_dir = next((d for d in (folder / "images", folder, folder.parent / "images") if d.is_dir()), folder)
    by_image: dict[int, list[list[float]]] = {}
    for a in doc["annotations"]:
        if a.get("iscrowd", 0):
            continue
        x, y, w, h = (float(v) for v in a["bbox"])
        if w <= 0 or h <= 0:
            continue
        by_image.setdefault(int(a["image_id"]), []).append([cat_index[int(a["category_id"])], x, y, x + w, y + h])
    mode = "L" if channels == 1 else "RGB"
    images, targets = [], []
    for im in sorted(doc["images"], key=lambda d: int(d["id"])):
        p = img_dir / im["file_name"]
        if not p.is_file():
            raise DataError(f"image {im['file_name']} listed in {json_path.name} is not in {img_dir}",
                            "put the images in images/ next to the JSON")
        arr, s, px, py, _, _ = _read_image(p, mode, size)
        t = np.asarray(by_image.get(int(im["id"]), []), np.float32).reshape(-1, 5)
        t[:, 1:] = transform_boxes(t[:, 1:], s, px, py)
        images.append(arr)
        targets.append(t)
    if not images:
        raise DataError(f"{json_path.name} lists no images", "add images to the annotations")
    return np.stack(images), targets, {"classes": [names.get(c, str(c)) for c in cats], "category_ids": cats}


def read_yolo(folder: Path, channels: int, size: tuple[int, int]) -> tuple[np.ndarray, list[np.ndarray], dict[str, Any]]:
    files = sorted(p for p in (folder / "images").rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise DataError(f"{folder / 'images'} has no images", "put .png/.jpg files in images/ and .txt labels in labels/")
    mode = "L" if channels == 1 else "RGB"
    images, targets = [], []
    top = -1
    for p in files:
        arr, s, px, py, w0, h0 = _read_image(p, mode, size)
        lab = folder / "labels" / p.relative_to(folder / "images").with_suffix(".txt")
        rows: list[list[float]] = []
        if lab.is_file():
            for ln, line in enumerate(lab.read_text().splitlines(), 1):
                if not line.strip():
                    continue
                parts = line.split()
                try:
                    c, cx, cy, w, h = int(parts[0]), *(float(v) for v in parts[1:5])
                except (ValueError, IndexError):
                    raise DataError(f"{lab.name} line {ln} is not 'class cx cy w h'", "fix the YOLO label file") from None
                rows.append([c, (cx - w / 2) * w0, (cy - h / 2) * h0, (cx + w / 2) * w0, (cy + h / 2) * h0])
                top = max(top, c)
        t = np.asarray(rows, np.float32).reshape(-1, 5)
        t[:, 1:] = transform_boxes(t[:, 1:], s, px, py)
        images.append(arr)
        targets.append(t)
    names = _yolo_names(folder) or [str(i) for i in range(top + 1)]
    return np.stack(images), targets, {"classes": names, "category_ids": list(range(len(names)))}


def _yolo_names(folder: Path) -> list[str] | None:
    for base in (folder, folder.parent):
        if (base / "classes.txt").is_file():
            return [n.strip() for n in (base / "classes.txt").read_text().splitlines() if n.strip()]
        if (base / "data.yaml").is_file():
            import yaml

            names = (yaml.safe_load((base / "data.yaml").read_text()) or {}).get("names")
            if isinstance(names, dict):
                return [str(names[k]) for k in sorted(names)]
            if isinstance(names, list):
                return [str(n) for n in names]
    return None


def _read(base: Path, kind: str, channels: int, size: tuple[int, int]):  # noqa: ANN202
    if kind == "coco":
        path = base if base.is_file() else _coco_json(base)
        assert path is not None
        return read_coco(path, channels, size)
    return read_yolo(base, channels, size)


def pad_targets(targets: list[np.ndarray], width: int | None = None) -> np.ndarray:
    m = max([1, width or 0] + [len(t) for t in targets])
    y = np.full((len(targets), m, 5), -1.0, np.float32)
    for i, t in enumerate(targets):
        y[i, : len(t)] = t
    return y


# ---------------------------------------------------------------------------------------------------- entry point


def load_detection(spec: str | Path, *, channels: int, size: tuple[int, int], val_fraction: float = 1 / 12,
                   test_fraction: float = 0.1, seed: int = 0, mean: Sequence[float] | None = None,
                   std: Sequence[float] | None = None, limit: int | None = None) -> Dataset:
    """A COCO or YOLO detection set as normalised splits with padded targets (see the module docstring)."""
    root = resolve_data_path(spec)
    kind = _layout(root)
    if kind is None:
        raise DataError(f"{root} is not a detection dataset", "pass a COCO folder (annotations.json + images/) or a "
                        "YOLO folder (images/ + labels/)")
    x_test = t_test = None
    if root.is_dir() and (root / "train").is_dir() and _layout(root / "train"):
        x, t, cats = _read(root / "train", kind, channels, size)
        held = next((root / d for d in ("test", "val") if (root / d).is_dir()), None)
        if held is not None:
            x_test, t_test, cats_t = _read(held, kind, channels, size)
            if cats_t["category_ids"] != cats["category_ids"] and kind == "coco":
                raise DataError(f"{held.name}/ has other categories than train/", "use one category list for both")
    else:
        x, t, cats = _read(root, kind, channels, size)
    if x.ndim == 3:
        x = x[:, None]
        x_test = None if x_test is None else x_test[:, None]
    else:
        x = x.transpose(0, 3, 1, 2)
        x_test = None if x_test is None else x_test.transpose(0, 3, 1, 2)
    n_obj = sum(len(a) for a in t)
    if not n_obj:
        raise DataError(f"{root} has images but no boxes", "add annotations")
    from_source = x_test is not None
    test_idx, val_idx, train_idx = split_indices(len(x), seed, val_fraction, test_fraction, not from_source, limit, root)
    if test_idx is not None:
        x_test, t_test = x[test_idx], [t[i] for i in test_idx]
    mean, std, norm_source, norm = normalization(x[train_idx].astype(np.float32) / 255.0, mean, std)

    width = max(len(a) for a in t + list(t_test or []))
    ds = Dataset(train=ArraySplit(norm(x[train_idx]), pad_targets([t[i] for i in train_idx], width)),
                 val=ArraySplit(norm(x[val_idx]), pad_targets([t[i] for i in val_idx], width)),
                 test=ArraySplit(norm(x_test), pad_targets(list(t_test), width)),  # type: ignore[arg-type]
                 num_classes=len(cats["classes"]))
    objects = np.concatenate([a for a in t if len(a)])
    side = np.maximum(objects[:, 3] - objects[:, 1], objects[:, 4] - objects[:, 2])
    ds.meta = {
        "source": str(root), "format": f"detection-{kind}", "classes": cats["classes"],
        "category_ids": cats["category_ids"], "num_classes": len(cats["classes"]), "input_shape": list(ds.input_shape),
        "sizes": {"train": len(ds.train), "val": len(ds.val), "test": len(ds.test)}, "split_seed": seed,
        "val_fraction": val_fraction,
        "test_split": "source" if from_source else f"seeded {test_fraction}",
        "normalize": {"mean": [float(v) for v in mean], "std": [float(v) for v in std], "source": norm_source},
        "resize": "letterbox (pad 114)",
        "labels": f"boxes: {n_obj} objects, ≤ {width} per image, side {float(side.min()):.0f}–{float(side.max()):.0f} px",
    }
    progress.log(f"data: {ds.meta['labels']} in {len(x)} images ({kind} layout)")
    return ds
