"""Build a seeded detection set from the real Fashion-MNIST images, in COCO layout.

Each canvas (black, ``--size`` × ``--size``) holds 1–6 Fashion-MNIST items, each scaled to a random side of
``--min-side``…``--max-side`` pixels and placed at a random position; two items may overlap, up to an IoU of
``--max-iou`` between their boxes. Items are composited by the pixel-wise maximum, and each box is the tight box
of the item's visible pixels (value > 24 of 255 after scaling), so boxes match what the image shows. Train canvases
use the Fashion-MNIST train images, test canvases the t10k images: no item is in both.

    python examples/make_fmnist_detection.py --out data/fmnist-det          # train/ and test/, COCO JSON + PNGs

Writes ``OUT/{train,test}/annotations.json`` and ``OUT/{train,test}/images/*.png``, and ``OUT/README.txt`` with the
settings. Deterministic for a given ``--seed`` (same files byte for byte).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]


def box_iou(a: list[float], b: list[float]) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def make_split(images: np.ndarray, labels: np.ndarray, n: int, out: Path, rng: np.random.Generator, size: int,
               min_side: int, max_side: int, max_items: int, max_iou: float) -> dict[str, int]:
    from PIL import Image

    (out / "images").mkdir(parents=True, exist_ok=True)
    doc: dict = {"images": [], "annotations": [], "categories": [{"id": i, "name": c} for i, c in enumerate(CLASSES)]}
    for i in range(n):
        canvas = np.zeros((size, size), np.uint8)
        boxes: list[list[float]] = []
        for _ in range(int(rng.integers(1, max_items + 1))):
            for _try in range(20):  # find a place that overlaps the others little enough
                k = int(rng.integers(len(images)))
                side = int(rng.integers(min_side, max_side + 1))
                item = np.asarray(Image.fromarray(images[k]).resize((side, side), Image.BILINEAR))
                ys, xs = np.nonzero(item > 24)
                if not len(xs):
                    continue
                x0, y0 = int(rng.integers(0, size - side + 1)), int(rng.integers(0, size - side + 1))
                box = [float(x0 + xs.min()), float(y0 + ys.min()), float(x0 + xs.max() + 1), float(y0 + ys.max() + 1)]
                if all(box_iou(box, b) <= max_iou for b in boxes):
                    region = canvas[y0 : y0 + side, x0 : x0 + side]
                    np.maximum(region, item, out=region)
                    boxes.append(box)
                    doc["annotations"].append({"id": len(doc["annotations"]) + 1, "image_id": i, "category_id": int(labels[k]),
                                               "bbox": [box[0], box[1], box[2] - box[0], box[3] - box[1]],
                                               "area": (box[2] - box[0]) * (box[3] - box[1]), "iscrowd": 0})
                    break
        name = f"{i:05d}.png"
        Image.fromarray(canvas).save(out / "images" / name, optimize=False)
        doc["images"].append({"id": i, "file_name": name, "width": size, "height": size})
    (out / "annotations.json").write_text(json.dumps(doc))
    return {"images": n, "objects": len(doc["annotations"])}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="data/fmnist-det")
    ap.add_argument("--data", default="fashion-mnist", help="Fashion-MNIST IDX folder (default: the Debian package)")
    ap.add_argument("--train", type=int, default=3000, help="train canvases")
    ap.add_argument("--test", type=int, default=500, help="test canvases")
    ap.add_argument("--size", type=int, default=96, help="canvas side in pixels (96 or 128)")
    ap.add_argument("--min-side", type=int, default=18)
    ap.add_argument("--max-side", type=int, default=44)
    ap.add_argument("--max-items", type=int, default=6)
    ap.add_argument("--max-iou", type=float, default=0.25)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)

    from edgekd.data.datasets import load_idx_folder, resolve_data_path

    xs, ys, xt, yt = load_idx_folder(resolve_data_path(a.data))
    out = Path(a.out)
    rng = np.random.default_rng(a.seed)
    stats = {"train": make_split(xs, ys, a.train, out / "train", rng, a.size, a.min_side, a.max_side, a.max_items, a.max_iou),
             "test": make_split(xt, yt, a.test, out / "test", rng, a.size, a.min_side, a.max_side, a.max_items, a.max_iou)}
    settings = {k: v for k, v in vars(a).items() if k != "out"}
    (out / "README.txt").write_text("Fashion-MNIST detection set, made by examples/make_fmnist_detection.py\n"
                                    + json.dumps({"settings": settings, "splits": stats}, indent=1) + "\n")
    print(json.dumps(stats))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
