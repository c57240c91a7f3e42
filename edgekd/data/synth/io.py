"""Saving synthetic sets: ``.npz`` (x, y and the recipe as JSON) and a preview grid PNG."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from edgekd.fileio import atomic_path


def save_npz(path: str | Path, x: np.ndarray, y: np.ndarray, meta: dict[str, Any]) -> Path:
    """``x`` float32 NCHW in the teacher's normalised input space, ``y`` the teacher's labels; ``meta`` as JSON text.
    The file loads with ``--data synth.npz``: its ``normalized`` flag tells the loader the inputs are already in the
    model's input space (mean 0 / std 1 applied)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, x=x.astype(np.float32), y=y.astype(np.int64), meta=np.array(json.dumps(meta)), normalized=np.array(True))
    return path


def write_set(npz: Path, png: Path, json_path: Path, res: Any, mean: Sequence[float] | None, std: Sequence[float] | None,
              title: str, meta: dict[str, Any] | None = None) -> None:
    """Write a :class:`~edgekd.data.synth.engine.SynthResult` as .npz, preview grid .png and .json record."""
    from edgekd.fileio import write_json

    meta = meta if meta is not None else res.meta
    save_npz(npz, res.x, res.y, meta)
    preview_grid(png, res.x, res.y, mean, std, title=title)
    write_json(json_path, meta)


def preview_grid(path: str | Path, x: np.ndarray, y: np.ndarray | None = None, mean: Sequence[float] | None = None,
                 std: Sequence[float] | None = None, max_images: int = 64, title: str | None = None) -> Path:
    """A grid of up to ``max_images`` images (de-normalised when mean/std are known, else min-max scaled per image),
    sorted by label, with the label above each."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    order = np.argsort(y, kind="stable")[:max_images] if y is not None else np.arange(min(len(x), max_images))
    imgs = x[order]
    if mean is not None and std is not None:
        imgs = imgs * np.asarray(std).reshape(1, -1, 1, 1) + np.asarray(mean).reshape(1, -1, 1, 1)
    else:
        lo = imgs.min(axis=(1, 2, 3), keepdims=True)
        hi = imgs.max(axis=(1, 2, 3), keepdims=True)
        imgs = (imgs - lo) / np.maximum(hi - lo, 1e-8)
    imgs = np.clip(imgs, 0, 1)
    k = len(imgs)
    cols = int(np.ceil(np.sqrt(k)))
    rows = int(np.ceil(k / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 1.0, rows * 1.1 + (0.4 if title else 0)))
    for ax in np.atleast_1d(axes).ravel():
        ax.axis("off")
    for j, (ax, im) in enumerate(zip(np.atleast_1d(axes).ravel(), imgs)):
        ax.imshow(im[0] if im.shape[0] == 1 else im.transpose(1, 2, 0), cmap="gray" if im.shape[0] == 1 else None, vmin=0, vmax=1)
        if y is not None:
            ax.set_title(str(int(y[order[j]])), fontsize=7, pad=1)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=80, format="png")
    plt.close(fig)
    return path
