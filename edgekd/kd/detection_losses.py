"""Detection losses on dense outputs (B, 4 + C, N): distillation from a teacher's dense predictions, and the
ground-truth loss of an FCOS-style detector.

Distillation (:class:`DetectionKD`), per location i with teacher class scores p_t and student scores p_s:

    classification   L_cls = Σ_i,c |p_t − p_s|^γ · BCE(p_s, p_t) / Σ_i max_c p_t
                     the Quality Focal Loss of GFL (Li et al., NeurIPS 2020) with the teacher's scores as the soft
                     target, as Localization Distillation (Zheng et al., CVPR 2022) distils the classification
                     head; γ = 2; the |·|^γ factor stops the many easy background locations from dominating
    box              L_box = Σ_i w_i · (1 − GIoU(b_s,i, b_t,i)) / Σ_i w_i,    w_i = max_c p_t,i
                     the teacher's decoded boxes as targets (GIoU: Rezatofighi et al., CVPR 2019), weighted by how
                     sure the teacher is that location i holds an object
    total            L = λ_cls · L_cls + λ_box · L_box + λ_gt · L_gt
                     (λ_cls = 1; λ_box = 2 as GFL weights its GIoU term; the detect task drops the box term when
                     the labels are used, λ_gt = 1: see :meth:`edgekd.tasks.detect.Detect.distill_objective`)

Ground truth (:class:`FCOSLoss`): each object is assigned to the locations of one level whose centre lies inside the
box and within r·s of its centre (FCOS centre sampling, r = 1.5); the level is chosen by the object's largest
regression distance, m = max(l, t, r, b) ∈ (2·s_prev, 4·s] (open-ended at the last level); a location inside two
objects takes the smaller. L_gt = focal(p_s, one-hot of the assigned class; α = 0.25, γ = 2) / #positives +
2 · mean over positives of (1 − GIoU).
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn.functional as F

from edgekd.kd.losses import LogitLoss


def dense_parts(out: torch.Tensor, layout: dict[str, Any], box_format: str = "cxcywh",
                scores: str = "probabilities") -> tuple[torch.Tensor, torch.Tensor]:
    """(B, ·, ·) dense outputs — or a two-output detector's (boxes, scores) in its ``layout["parts"]`` order — →
    boxes xyxy (B, N, 4) and class probabilities (B, N, C)."""
    cf = layout.get("channels_first", True)
    if isinstance(out, (tuple, list)) and "parts" not in layout:
        out = out[0]  # one dense tensor returned in a tuple (the task probed the first output)
    if isinstance(out, (tuple, list)):
        parts = {p["kind"]: (o.transpose(1, 2) if cf else o) for p, o in zip(layout["parts"], out)}
        b, s = parts["boxes"], parts["scores"]
    else:
        o = out.transpose(1, 2) if cf else out
        b, s = o[..., :4], o[..., 4:]
    if box_format == "cxcywh":
        b = torch.cat([b[..., :2] - b[..., 2:] / 2, b[..., :2] + b[..., 2:] / 2], -1)
    if scores == "logits":
        s = torch.sigmoid(s)
    return b, s


def giou(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """Generalised IoU of paired xyxy boxes (…, 4): IoU − |C ∖ (A ∪ B)| / |C|, C the smallest enclosing box."""
    lt, rb = torch.maximum(a[..., :2], b[..., :2]), torch.minimum(a[..., 2:], b[..., 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    area_a = (a[..., 2:] - a[..., :2]).clamp(min=0).prod(-1)
    area_b = (b[..., 2:] - b[..., :2]).clamp(min=0).prod(-1)
    union = area_a + area_b - inter
    iou = inter / (union + eps)
    clt, crb = torch.minimum(a[..., :2], b[..., :2]), torch.maximum(a[..., 2:], b[..., 2:])
    hull = (crb - clt).clamp(min=0).prod(-1)
    return iou - (hull - union) / (hull + eps)


def quality_focal_bce(ps: torch.Tensor, pt: torch.Tensor, gamma: float = 2.0) -> torch.Tensor:
    """|p_t − p_s|^γ · BCE(p_s, p_t), elementwise (GFL's QFL with a soft target)."""
    ps = ps.clamp(1e-6, 1 - 1e-6)
    return (pt - ps).abs().pow(gamma) * F.binary_cross_entropy(ps, pt, reduction="none")


class DetectionKD(LogitLoss):
    """Dense detection distillation (see the module docstring); ``gt`` adds the ground-truth term."""

    ce_weight = 0.0
    #: the trainer passes a two-output detector's (boxes, scores) whole, not its first output
    takes_structure = True

    def __init__(self, layout: dict[str, Any], decode: dict[str, Any], box_weight: float = 2.0,
                 gt: "FCOSLoss | None" = None, gt_weight: float = 0.0, cls_weight: float = 1.0) -> None:
        super().__init__()
        self.layout, self.box_format, self.scores = layout, decode.get("box_format", "cxcywh"), decode.get("scores", "probabilities")
        self.box_weight, self.gt, self.gt_weight, self.cls_weight = box_weight, gt, gt_weight, cls_weight

    def forward(self, zs: Any, zt: Any, y: torch.Tensor, progress: float = 1.0) -> torch.Tensor:
        bs, ps = dense_parts(zs, self.layout, self.box_format, self.scores)
        zt = [t.detach() for t in zt] if isinstance(zt, (tuple, list)) else zt.detach()
        bt, pt = dense_parts(zt, self.layout, self.box_format, self.scores)
        w = pt.max(-1).values
        norm = w.sum().clamp_min(1.0)
        cls = quality_focal_bce(ps, pt.clamp(0, 1)).sum() / norm
        box = (w * (1 - giou(bs, bt))).sum() / norm
        total = self.cls_weight * cls + self.box_weight * box
        if self.gt is not None and self.gt_weight:
            total = total + self.gt_weight * self.gt(zs, y)
        return total


def sigmoid_focal(p: torch.Tensor, target: torch.Tensor, alpha: float = 0.25, gamma: float = 2.0) -> torch.Tensor:
    """Lin et al. 2017 focal loss on probabilities, elementwise: −α_t (1 − p_t)^γ log p_t."""
    p = p.clamp(1e-6, 1 - 1e-6)
    ce = F.binary_cross_entropy(p, target, reduction="none")
    p_t = p * target + (1 - p) * (1 - target)
    a_t = alpha * target + (1 - alpha) * (1 - target)
    return a_t * (1 - p_t).pow(gamma) * ce


class FCOSLoss(torch.nn.Module):
    """The ground-truth loss of an FCOS-style detector on dense outputs (see the module docstring)."""

    def __init__(self, strides: Sequence[int], image_hw: tuple[int, int], layout: dict[str, Any],
                 decode: dict[str, Any] | None = None, radius: float = 1.5) -> None:
        super().__init__()
        decode = decode or {}
        self.layout, self.box_format, self.scores = layout, decode.get("box_format", "cxcywh"), decode.get("scores", "probabilities")
        pts, lo, hi, st = [], [], [], []
        h, w = image_hw
        prev = None
        for k, s in enumerate(strides):
            fh, fw = -(-h // s), -(-w // s)
            ys, xs = torch.meshgrid((torch.arange(fh) + 0.5) * s, (torch.arange(fw) + 0.5) * s, indexing="ij")
            pts.append(torch.stack([xs.reshape(-1), ys.reshape(-1)], 1))
            n = fh * fw
            lo.append(torch.full((n,), 0.0 if prev is None else 2.0 * prev))
            hi.append(torch.full((n,), float("inf") if k == len(strides) - 1 else 4.0 * s))
            st.append(torch.full((n,), float(s)))
            prev = s
        self.register_buffer("points", torch.cat(pts).float())
        self.register_buffer("lo", torch.cat(lo))
        self.register_buffer("hi", torch.cat(hi))
        self.register_buffer("stride", torch.cat(st))
        self.radius = radius

    def assign(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per image and location: the assigned object's index into y (−1: background) → (index (B, N), valid)."""
        gt = y[..., 1:5]  # (B, M, 4)
        valid = y[..., 0] >= 0  # (B, M)
        p = self.points[None, :, None, :]  # (1, N, 1, 2)
        g = gt[:, None]  # (B, 1, M, 4)
        ltrb = torch.cat([p - g[..., :2], g[..., 2:] - p], -1)  # (B, N, M, 4)
        inside = ltrb.min(-1).values > 0
        centre = (g[..., :2] + g[..., 2:]) / 2
        near = ((p - centre).abs().max(-1).values <= self.radius * self.stride[None, :, None])
        m = ltrb.max(-1).values
        level = (m > self.lo[None, :, None]) & (m <= self.hi[None, :, None])
        ok = inside & near & level & valid[:, None, :]
        area = ((g[..., 2] - g[..., 0]) * (g[..., 3] - g[..., 1])).expand_as(m)
        area = torch.where(ok, area, torch.full_like(area, float("inf")))
        best = area.argmin(-1)  # (B, N)
        pos = ok.any(-1)
        return torch.where(pos, best, torch.full_like(best, -1)), pos

    def forward(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        boxes, probs = dense_parts(out, self.layout, self.box_format, self.scores)
        idx, pos = self.assign(y)
        cls_t = torch.zeros_like(probs)
        safe = idx.clamp(min=0)
        labels = torch.gather(y[..., 0], 1, safe).long().clamp(min=0)  # (B, N)
        cls_t[pos] = F.one_hot(labels[pos], probs.shape[-1]).to(probs.dtype)
        n_pos = pos.sum().clamp_min(1)
        loss = sigmoid_focal(probs, cls_t).sum() / n_pos
        if pos.any():
            tb = torch.gather(y[..., 1:5], 1, safe[..., None].expand(-1, -1, 4))
            loss = loss + 2.0 * (1 - giou(boxes[pos], tb[pos])).mean()
        return loss
