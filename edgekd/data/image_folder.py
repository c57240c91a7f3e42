"""Image folders: ``root/<class>/<image>`` listed, decoded with Pillow and fitted to the model's input size
(stretch, letterbox or centre crop)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from edgekd import progress
from edgekd.errors import DataError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}


def fit_image(im, size: tuple[int, int], mode: str):  # noqa: ANN001, ANN201
    """Resize a PIL image to ``size`` (H, W): ``stretch`` (ignore the aspect ratio), ``letterbox`` (scale to fit,
    pad the rest with black, centred) or ``center-crop`` (scale the short side to fit, crop the centre)."""
    from PIL import Image

    h, w = size
    if (im.height, im.width) == (h, w):
        return im
    if mode == "stretch":
        return im.resize((w, h))
    if mode == "letterbox":
        s = min(w / im.width, h / im.height)
        nw, nh = max(1, round(im.width * s)), max(1, round(im.height * s))
        canvas = Image.new(im.mode, (w, h))
        canvas.paste(im.resize((nw, nh)), ((w - nw) // 2, (h - nh) // 2))
        return canvas
    s = max(w / im.width, h / im.height)
    nw, nh = max(w, round(im.width * s)), max(h, round(im.height * s))
    big = im.resize((nw, nh))
    left, top = (nw - w) // 2, (nh - h) // 2
    return big.crop((left, top, left + w, top + h))


def list_image_folder(root: Path) -> tuple[list[Path], np.ndarray, list[str]]:
    """``root/<class>/<image>`` → (files, labels, classes); classes are the sorted subfolder names, a label is the
    index of its folder. Nothing is decoded (:func:`decode_images` does that, for the files a run uses)."""
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    files: list[tuple[Path, int]] = []
    for ci, c in enumerate(classes):
        files += [(p, ci) for p in sorted((root / c).rglob("*")) if p.suffix.lower() in IMAGE_SUFFIXES]
    if not classes or not files:
        raise DataError(f"image folder {root} has no images", "use one subfolder per class holding .png/.jpg files")
    return [p for p, _ in files], np.array([c for _, c in files], dtype=np.int64), classes


def decode_images(files: Sequence[Path], channels: int | None, size: tuple[int, int] | None, resize: str,
                  where: str) -> np.ndarray:
    """Decode ``files`` to one uint8 array (N, H, W) or (N, H, W, 3), converted to the model's channels and fitted
    to ``size`` with ``resize`` (:func:`fit_image`; the first image's size when None), saying how many were."""
    from PIL import Image  # pillow comes with matplotlib

    images = []
    mode = None
    resized = 0
    converted: dict[str, int] = {}
    for p in files:
        try:
            with Image.open(p) as im:
                if mode is None:
                    mode = "L" if (channels == 1 or (channels is None and im.mode in ("L", "1", "I;16"))) else "RGB"
                    if size is None:
                        size = (im.height, im.width)
                if im.mode != mode and not (mode == "L" and im.mode in ("1", "I;16", "P")):
                    converted[im.mode] = converted.get(im.mode, 0) + 1
                im = im.convert(mode)
                if (im.height, im.width) != size:
                    resized += 1
                    im = fit_image(im, size, resize)
                images.append(np.asarray(im, dtype=np.uint8))
        except (OSError, ValueError, SyntaxError) as e:  # PIL raises these for damaged or non-image files
            raise DataError(f"cannot read image {p}: {str(e)[:80]}", "remove or replace the damaged file") from None
    if resized:
        progress.log(f"data: {resized} image(s) in {where} fitted to {size[0]}×{size[1]} ({resize})")
    if converted:
        what = ", ".join(f"{n} {m}" for m, n in converted.items())
        progress.warn(f"converted {what} image(s) in {where} to {'grayscale' if mode == 'L' else 'RGB'} "
                      f"for a {1 if mode == 'L' else 3}-channel model")
    return np.stack(images)
