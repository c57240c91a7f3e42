"""``--task auto``: decide how a model is scored from its outputs and the data's labels, or refuse in one line.

    boxes (batch, N, 4) and scores (batch, N, C) apart,
    and COCO / YOLO box data                                → detect
    several outputs (tuple / dict)                         → outputs
    one (batch, a, b) output and COCO / YOLO box data      → detect
    one output that is not (batch, K ≥ 2)                  → outputs   (a scalar regression, a map, a sequence)
    (batch, K) and no real data (data-free)                → classify  (synthesis inverts a classifier)
    (batch, K) and labels that are class ids covering K    → classify
    (batch, K) and float / multi-dimensional / no targets  → outputs
    (batch, K) and class ids of fewer than K classes       → classify if the teacher's argmax matches the labels
                                                             at least twice as often as chance (a classifier scored
                                                             on some of its classes), else refused (an embedding with
                                                             class labels?): ``--task`` says which

Reading the labels takes the ``.npz``'s ``y`` only (no images are decoded); an IDX or image folder holds class ids by
construction.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from edgekd.errors import DataError


def label_summary(path: str) -> dict[str, Any]:
    """What the data's labels are, without loading the samples: ``{"kind": "classes", "n": …, "max": …}``,
    ``{"kind": "targets"}`` or ``{"kind": "none"}``."""
    from edgekd.data.datasets import _find_idx, resolve_data_path

    root = resolve_data_path(path)
    if root.is_file() and root.suffix == ".npz":
        with np.load(root, allow_pickle=False) as z:
            if "y" not in z.files:
                return {"kind": "none"}
            y = z["y"]
        if y.ndim == 1 and np.issubdtype(y.dtype, np.integer) and len(y):
            return {"kind": "classes", "n": int(len(np.unique(y))), "max": int(y.max())}
        if y.ndim == 1 and np.issubdtype(y.dtype, np.floating) and len(y) and np.all(y == np.round(y)):
            return {"kind": "float_ids", "n": int(len(np.unique(y))), "max": int(y.max())}  # ids saved as floats
        return {"kind": "targets", "shape": list(y.shape[1:]), "dtype": str(y.dtype)}
    if root.is_dir() and _find_idx(root, "train", "images") is None:
        base = root / "train" if (root / "train").is_dir() else root
        n = sum(1 for d in base.iterdir() if d.is_dir())
        return {"kind": "classes", "n": n, "max": n - 1}
    return {"kind": "classes", "n": None, "max": None}  # IDX: integer class ids


def choose_task(outputs: Any, data_path: str | None) -> tuple[str, str]:
    """(task name, why) for a model's outputs on a dummy batch and the data it will be scored on."""
    if isinstance(outputs, (tuple, list, dict)) and len(outputs) == 2 and data_path is not None:
        from edgekd.data.detection import is_detection_data
        from edgekd.tasks.detection_metrics import split_layout

        parts = list(outputs.values()) if isinstance(outputs, dict) else list(outputs)
        shapes = [tuple(getattr(o, "shape", ())) for o in parts]
        if split_layout(shapes, ["a", "b"]) is not None and is_detection_data(data_path):
            return "detect", f"it returns boxes and scores {shapes} and the data hold boxes"
    if isinstance(outputs, (tuple, list, dict)) and len(outputs) != 1:
        return "outputs", f"the model returns {len(outputs)} outputs"
    out = next(iter(outputs.values())) if isinstance(outputs, dict) else outputs
    out = out[0] if isinstance(out, (tuple, list)) else out
    shape = tuple(getattr(out, "shape", ()))
    if len(shape) == 3 and data_path is not None:
        from edgekd.data.detection import is_detection_data

        if is_detection_data(data_path):
            return "detect", f"its output has shape {shape} and the data hold boxes"
    if len(shape) != 2 or shape[1] < 2:
        return "outputs", f"its output has shape {shape}, not (batch, classes)"
    k = int(shape[1])
    if data_path is None:
        return "classify", f"data-free: synthesis inverts a classifier of its {k} outputs"
    labels = label_summary(data_path)
    if labels["kind"] == "targets" and labels["shape"] in ([], [1]) and k > 1:
        raise DataError(f"the data's y holds one {labels['dtype']} value a sample: not integer class ids for a "
                        f"classifier, nor targets of the model's (batch, {k}) output",
                        f"save y as integer class ids, or as targets of shape (N, {k})")
    if labels["kind"] not in ("classes", "float_ids"):
        return "outputs", ("the data carry no labels" if labels["kind"] == "none"
                           else "the data's targets are not class ids")
    n, top = labels["n"], labels["max"]
    if labels["kind"] == "float_ids" or n is None or n < 2 or n == k or top == k - 1 or top >= k:
        # class ids stored as floats, one class, more classes than outputs: the classifier's own checks name them
        return "classify", f"(batch, {k}) outputs and class-id labels"
    return "classify?", f"(batch, {k}) outputs, class ids of {n} classes"


def confirm_classifier(teacher: Any, x: np.ndarray, y: np.ndarray, k: int) -> str:
    """For labels of fewer classes than the model has outputs: classify when the teacher's argmax agrees with the
    labels at least twice as often as chance, else refuse (the outputs may be an embedding)."""
    import torch

    with torch.no_grad():
        out = teacher(torch.from_numpy(x[:512]))
    out = out[0] if isinstance(out, (tuple, list)) else out
    top1 = float((out.argmax(1).numpy() == y[:512]).mean())
    n = len(np.unique(y))
    if top1 >= 2.0 / n:
        return f"the teacher's argmax matches {top1:.0%} of the labels ({n} classes, chance {1 / n:.0%})"
    raise DataError(f"--task auto cannot tell: {k} outputs, {n} label classes, and the argmax matches only {top1:.0%}",
                    "--task classify (a classifier on some of its classes) or --task outputs (an embedding)")

