"""Training-time augmentation of the transfer set: a random shift and horizontal flips, with the targets that must
move with the pixels (a detector's boxes) moved too.

A teacher queried online sees the augmented images, so plain KD needs nothing but the images
(:func:`augment_batch`). A ground-truth term on boxes does (:func:`augment_detection_batch`): for targets ``y`` of
shape (B, M, 5) = (class, x1, y1, x2, y2) in input pixels (class −1: padding),

    shift    the crop at (dx, dy) of the edge-padded image moves the content by (pad − dx, pad − dy):
             x' = clip(x + pad − dx, 0, W),  y' = clip(y + pad − dy, 0, H)
    flip     x1' = W − x2,  x2' = W − x1

The detection demo's 2,400 training canvases overfit without them: ``examples/train_detector.py`` (ground truth
only; its flip is this one without the shift) trains ``det-s`` to a val mAP that peaks mid-run and falls back
without flips, and climbs to the end with them.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def shift_and_flip(x: torch.Tensor, pad: int = 2) -> tuple[torch.Tensor, tuple[int, int], torch.Tensor]:
    """One random translation of the batch by up to ``pad`` pixels (edge padding), then a horizontal flip of a random
    half → (images, (dx, dy) of the crop in the padded image, flipped mask (B,)). NumPy's global generator."""
    n, _, h, w = x.shape
    xp = F.pad(x, (pad, pad, pad, pad), mode="replicate")
    dx, dy = (int(v) for v in np.random.randint(0, 2 * pad + 1, size=2))
    x = xp[:, :, dy : dy + h, dx : dx + w].clone()
    flip = torch.from_numpy(np.random.rand(n) < 0.5)
    x[flip] = x[flip].flip(-1)
    return x, (dx, dy), flip


def augment_batch(x: torch.Tensor, pad: int = 2) -> torch.Tensor:
    """Random translation by up to ``pad`` pixels (edge padding) and random horizontal flip, per batch."""
    return shift_and_flip(x, pad)[0]


def augment_detection_batch(x: torch.Tensor, y: torch.Tensor, pad: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    """(images (B, C, H, W), boxes (B, M, 5)) → the batch of :func:`augment_batch` (the same random draws) with every
    box moved as its pixels moved, clipped to the image; padding rows (class < 0) left alone."""
    h, w = x.shape[-2:]
    x, (dx, dy), flip = shift_and_flip(x, pad)
    y = y.clone()
    box = y[..., 1:5].clone()
    box[..., 0::2] = (box[..., 0::2] + float(pad - dx)).clamp(0, w)
    box[..., 1::2] = (box[..., 1::2] + float(pad - dy)).clamp(0, h)
    mirrored = torch.stack([w - box[..., 2], box[..., 1], w - box[..., 0], box[..., 3]], -1)
    box = torch.where(flip[:, None, None], mirrored, box)
    y[..., 1:5] = torch.where((y[..., 0] >= 0)[..., None], box, y[..., 1:5])
    return x, y
