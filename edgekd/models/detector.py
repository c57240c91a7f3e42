"""Small anchor-free detectors (FCOS-style, depthwise backbone) that export their decoded boxes.

FCOS (Tian et al., ICCV 2019) predicts, at every location p = ((i + ½)·s, (j + ½)·s) of a feature map of stride s,
the class scores and the distances (l, t, r, b) from p to the box sides. Here

    (l, t, r, b) = softplus(α_s · reg) · s         (α_s a learned scale per level, as FCOS's "scale" layers)
    box          = (p_x − l, p_y − t, p_x + r, p_y + b)        → written as (cx, cy, w, h)
    scores       = σ(cls)

and the model returns one dense tensor in the layout Ultralytics' YOLOv8/11 exports use, ``(B, 4 + C, N)`` with N
the locations of every level, level by level (stride ascending), row-major — so a student built here lines up
location by location with a YOLO-style teacher of the same strides (dense distillation needs that), and one
decoder (:mod:`edgekd.tasks.detection_metrics`) scores both.

Backbone: a stem and MobileNetV2 inverted-residual (depthwise) stages, one per stride up to the largest level. The
stem is a 3×3 stride-2 conv followed by a stride-4 stage (``stem="conv"``), or a 4×4 stride-4 "patchify" conv
(``stem="patch"``, as ConvNeXt's stem, Liu et al. CVPR 2022) that replaces both: the layers at ½ and ¼ of the input
resolution are most of a small detector's batch-1 time on CPU runtimes (a 1-channel INT8 conv packs its input badly),
so the patch stem is what gets a det-s-sized student past 3× the teacher's speed on ONNX Runtime (see ``det-sp``); neck: an FPN-lite top-down path (1×1 laterals, nearest upsampling, sum); head: one depthwise-separable conv
block shared by the levels, then 1×1 convs for classes and box.

``channels_first=False`` returns (B, N, 4 + C); ``parts=["boxes", "scores"]`` (either order) returns the two as separate
tensors, (B, N, 4) and (B, N, C) (channels first: (B, 4, N), (B, C, N)); ``box_format="xyxy"`` writes corners; ``scores="logits"`` skips the
sigmoid: a student takes the teacher's output conventions (:meth:`edgekd.tasks.detect.Detect.build_student`).
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from edgekd.models.zoo import InvertedResidual, conv_bn
from edgekd.registry import Registry

DETECTORS: Registry[Callable[..., nn.Module]] = Registry("detector")


class Detector(nn.Module):
    def __init__(self, in_channels: int, num_classes: int, width: int = 16, depth: int = 1,
                 strides: Sequence[int] = (8, 16), *, channels_first: bool = True, box_format: str = "cxcywh",
                 scores: str = "probabilities", parts: Sequence[str] | None = None, stem: str = "conv") -> None:
        super().__init__()
        strides = [int(s) for s in strides]
        if not strides or strides != sorted(strides) or any(s < 4 or s & (s - 1) for s in strides):
            raise ValueError(f"strides must be ascending powers of two ≥ 4, got {strides}")
        self.strides = strides
        self.num_classes = num_classes
        self.channels_first, self.box_format, self.scores = channels_first, box_format, scores
        if parts is not None and sorted(parts) != ["boxes", "scores"]:
            raise ValueError(f"parts names the two outputs of a split detector, 'boxes' and 'scores'; got {parts}")
        self.parts = list(parts) if parts is not None else None
        if stem not in ("conv", "patch"):
            raise ValueError(f"stem is 'conv' (3×3 stride 2, then a stride-4 stage) or 'patch' (4×4 stride 4), got {stem!r}")
        self.patch = stem == "patch"
        # patch: conv k=4 s=4 without padding (the input is padded to a multiple of 4 first, so each side has
        # ceil(side / 4) locations, as the conv stem's two stride-2 convs give: the same grid as a conv-stem teacher)
        self.stem = conv_bn(in_channels, width * 2, 4, 4) if self.patch else conv_bn(in_channels, width, 3, 2)
        if self.patch:
            self.stem[0].padding = (0, 0)
        stages: list[nn.Module] = []
        chans: list[int] = []
        cin, s = width, 2
        while s < strides[-1]:
            s *= 2
            cout = min(width * s // 2, width * 8)
            extra = depth - 1 if s < 8 else depth
            if self.patch and s == 4:  # the stem did this stage's downsampling
                blocks: list[nn.Module] = [InvertedResidual(cout, cout, 1, 2, False) for _ in range(extra)]
                stages.append(nn.Sequential(*blocks) if blocks else nn.Identity())
                chans.append(cout)
                cin = cout
                continue
            blocks = [InvertedResidual(cin, cout, 2, 2, False)]
            blocks += [InvertedResidual(cout, cout, 1, 2, False) for _ in range(extra)]
            stages.append(nn.Sequential(*blocks))
            chans.append(cout)
            cin = cout
        self.stages = nn.ModuleList(stages)
        # the stage index of each level's feature map: stage k has stride 2^(k+2)
        self.level_stage = [stages_index(s_) for s_ in strides]
        neck = width * 4
        self.lateral = nn.ModuleList(conv_bn(chans[k], neck, 1) for k in self.level_stage)
        self.head = nn.Sequential(conv_bn(neck, neck, 3, groups=neck), conv_bn(neck, neck, 1))
        self.cls = nn.Conv2d(neck, num_classes, 1)
        self.reg = nn.Conv2d(neck, 4, 1)
        self.scale = nn.Parameter(torch.ones(len(strides)))
        nn.init.constant_(self.cls.bias, -4.6)  # σ⁻¹(0.01): the focal-loss prior of Lin et al. 2017
        nn.init.zeros_(self.reg.bias)

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The neck's output per level, stride ascending."""
        feats = []
        if self.patch:
            h, w = int(x.shape[-2]), int(x.shape[-1])
            if h % 4 or w % 4:  # constant pads: the input size is fixed at export
                x = F.pad(x, (0, -w % 4, 0, -h % 4))
        x = self.stem(x)
        for stage in self.stages:
            x = stage(x)
            feats.append(x)
        lat = [lateral(feats[k]) for lateral, k in zip(self.lateral, self.level_stage)]
        for i in range(len(lat) - 2, -1, -1):  # top-down: coarse levels refine the finer ones
            size = (int(lat[i].shape[-2]), int(lat[i].shape[-1]))
            coarse = lat[i + 1]
            if size == (2 * int(coarse.shape[-2]), 2 * int(coarse.shape[-1])):
                # an exact 2x: a Resize with constant scales when exported; `size=` is exported as a target shape
                # built from the tensor's Shape at every call (Shape, Slice, Concat: ~8 % of an INT8 det-s's time)
                up = F.interpolate(coarse, scale_factor=2.0, mode="nearest")
            else:  # an odd size rounds up at each stride-2 conv: the finer map is not 2x the coarse one
                up = F.interpolate(coarse, size=size, mode="nearest")
            lat[i] = lat[i] + up
        return lat

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        regs, logits, grids, strides = [], [], [], []
        for level, (f, s) in enumerate(zip(self.features(x), self.strides)):
            h = self.head(f)
            # the feature map's size as Python ints: the grid below is then a constant of the exported graph (ONNX
            # Runtime folds it), not ~50 Shape/Gather/Range/Expand nodes per level computed at every call — 13 % of
            # an INT8 det-s's batch-1 latency on ONNX Runtime (0.253 → 0.219 ms). The input size is fixed anyway.
            fh, fw = int(h.shape[-2]), int(h.shape[-1])
            # reshape to a constant (-1, C, h·w): flatten(2) is exported as Shape, Slice, Concat, Reshape per call
            regs.append((self.reg(h) * self.scale[level]).reshape(-1, 4, fh * fw))  # l, t, r, b before softplus
            logits.append(self.cls(h).reshape(-1, self.cls.out_channels, fh * fw))
            ys = (torch.arange(fh, dtype=x.dtype, device=x.device) + 0.5) * s
            xs = (torch.arange(fw, dtype=x.dtype, device=x.device) + 0.5) * s
            grids.append(torch.stack([xs.view(1, fw).expand(fh, fw).reshape(-1), ys.view(fh, 1).expand(fh, fw).reshape(-1)]))
            strides.append(torch.full((fh * fw,), float(s), dtype=x.dtype, device=x.device))
        p = torch.cat(grids, 1).unsqueeze(0)  # (1, 2, N): p_x, p_y of every location, level by level
        dist = F.softplus(torch.cat(regs, 2)) * torch.cat(strides).view(1, 1, -1)  # (B, 4, N): l, t, r, b in pixels
        lt, rb = dist[:, :2], dist[:, 2:]
        # element-wise only (no MatMul): PTQ keeps everything after the last weighted layer in float (ptq.float_tail)
        b = torch.cat([p + (rb - lt) / 2, lt + rb], 1) if self.box_format == "cxcywh" else torch.cat([p - lt, p + rb], 1)
        c = torch.cat(logits, 2)
        sc = torch.sigmoid(c) if self.scores == "probabilities" else c
        if self.parts is not None:  # two outputs, as a teacher that returns boxes and scores apart does
            by_kind = {"boxes": b, "scores": sc} if self.channels_first else {"boxes": b.transpose(1, 2), "scores": sc.transpose(1, 2)}
            return tuple(by_kind[k] for k in self.parts)
        out = torch.cat([b, sc], 1)
        return out if self.channels_first else out.transpose(1, 2)


def stages_index(stride: int) -> int:
    """Stage k of the backbone has stride 2^(k + 2) (the stem has stride 2)."""
    return stride.bit_length() - 3


def anchor_count(strides: Sequence[int], height: int, width: int) -> int:
    """Locations of all levels for an input of height × width (each stride-2 conv rounds up)."""
    n = 0
    for s in strides:
        h, w = height, width
        while s > 1:
            h, w, s = (h + 1) // 2, (w + 1) // 2, s // 2
        n += h * w
    return n


def infer_strides(anchors: int, height: int, width: int) -> list[int] | None:
    """The consecutive strides (of 4…128) whose locations add up to ``anchors``, smallest first; None if none."""
    cands = [4, 8, 16, 32, 64, 128]
    best = None
    for i in range(len(cands)):
        for j in range(i + 1, len(cands) + 1):
            if anchor_count(cands[i:j], height, width) == anchors:
                best = best or cands[i:j]
    return best


def _preset(width: int, depth: int, stem: str = "conv") -> Callable[..., nn.Module]:
    def build(in_channels: int, num_classes: int, width_: int | None = None, depth_: int | None = None,
              **kwargs: Any) -> nn.Module:
        return Detector(in_channels, num_classes, width_ or width, depth_ or depth, stem=stem, **kwargs)

    build.__doc__ = f"FCOS-style detector, depthwise backbone, width={width} depth={depth}, {stem} stem"
    return build


DETECTORS.add("det-xs", _preset(8, 1))
DETECTORS.add("det-s", _preset(12, 1))
# det-s's widths with the 4×4 patch stem: 1-thread INT8 batch-1 3.3× (ONNX Runtime) and 4.0× (OpenVINO) faster than the
# det-m teacher in FP32, vs det-s's 2.2× / 3.3× (untrained graphs, 96×96 grayscale, one alternating-rounds probe)
DETECTORS.add("det-sp", _preset(12, 1, "patch"))
DETECTORS.add("det-m", _preset(16, 2))  # the example teacher's architecture
DETECTORS.add("det-l", _preset(24, 2))


def build_detector(name: str, in_channels: int, num_classes: int, width: int | None = None, depth: int | None = None,
                   **kwargs: Any) -> nn.Module:
    return DETECTORS.get(name)(in_channels, num_classes, width, depth, **kwargs)
