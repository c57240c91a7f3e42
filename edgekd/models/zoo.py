"""Built-in model zoo: ResNet-style and MobileNet-style families with width/depth knobs.

Registered by name (``resnet-s``, ``mobilenet-m``, ...). Every builder takes the input channel count and the number
of classes, which edgekd reads off the teacher, so a zoo student fits any image classifier teacher.

    build_model("resnet-s", in_channels=1, num_classes=10)
    build_model("resnet", in_channels=3, num_classes=100, width=24, depth=2)   # explicit knobs
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from edgekd.models.layers import MatMul
from edgekd.registry import Registry

MODELS: Registry[Callable[..., nn.Module]] = Registry("model")


def stem_kernel(stride: int) -> int:
    """3×3, or a kernel as wide as the stride (rounded up to odd) for the strides that scale the zoo to large
    inputs (4, 8): a 3×3 kernel at stride 4 would never read some pixels."""
    return 3 if stride <= 2 else stride + 1 - stride % 2


def conv_bn(cin: int, cout: int, k: int = 3, stride: int = 1, groups: int = 1, act: bool = True,
            dim: int = 2) -> nn.Sequential:
    """conv (no bias) → BatchNorm → [ReLU], in 2-D (images) or 1-D (``dim=1``: audio, sequences)."""
    conv, bn = (nn.Conv2d, nn.BatchNorm2d) if dim == 2 else (nn.Conv1d, nn.BatchNorm1d)
    layers: list[nn.Module] = [conv(cin, cout, k, stride, k // 2, groups=groups, bias=False), bn(cout)]
    if act:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class BasicBlock(nn.Module):
    """He et al. 2016 basic residual block: y = ReLU(BN(conv(ReLU(BN(conv(x))))) + shortcut(x))."""

    def __init__(self, cin: int, cout: int, stride: int = 1, dim: int = 2) -> None:
        super().__init__()
        self.conv1 = conv_bn(cin, cout, 3, stride, dim=dim)
        self.conv2 = conv_bn(cout, cout, 3, 1, act=False, dim=dim)
        self.shortcut = (nn.Identity() if stride == 1 and cin == cout
                         else conv_bn(cin, cout, 1, stride, act=False, dim=dim))
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.conv2(self.conv1(x)) + self.shortcut(x))


class ResNet(nn.Module):
    """Small ResNet for low-resolution images: stem → 3 stages (width w, 2w, 4w; strides s,2,2) → GAP → FC.

    ``stem_stride=2`` halves the resolution up front, which cuts the cost of the widest-resolution stage by 4× —
    the main lever for batch-1 latency on small CPUs.
    """

    def __init__(self, in_channels: int, num_classes: int, width: int = 16, depth: int = 1, stem_stride: int = 1,
                 dim: int = 2) -> None:
        super().__init__()
        w = [width, width * 2, width * 4]
        # 1-D inputs (audio) get a stem kernel of 2s + 1 samples, images the 3×3 (or stride-wide) one
        k = stem_kernel(stem_stride) if dim == 2 else (2 * stem_stride + 1 if stem_stride > 1 else 3)
        self.stem = conv_bn(in_channels, w[0], k, stem_stride, dim=dim)
        stages = []
        cin = w[0]
        for i, cout in enumerate(w):
            blocks = []
            for j in range(depth):
                blocks.append(BasicBlock(cin, cout, stride=2 if (i > 0 and j == 0) else 1, dim=dim))
                cin = cout
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.pool = nn.AdaptiveAvgPool2d(1) if dim == 2 else nn.AdaptiveAvgPool1d(1)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer3(self.layer2(self.layer1(self.stem(x))))
        return self.fc(torch.flatten(self.pool(x), 1))


class SqueezeExcite(nn.Module):
    """Hu et al. 2018: x · σ(W2 ReLU(W1 GAP(x)))."""

    def __init__(self, c: int, reduction: int = 4) -> None:
        super().__init__()
        hidden = max(8, c // reduction)
        self.fc1 = nn.Conv2d(c, hidden, 1)
        self.fc2 = nn.Conv2d(hidden, c, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x.mean((2, 3), keepdim=True)
        return x * torch.sigmoid(self.fc2(torch.relu(self.fc1(s))))


class InvertedResidual(nn.Module):
    """Sandler et al. 2018 (MobileNetV2): 1×1 expand → 3×3 depthwise → [SE] → 1×1 project, residual if shapes match."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int, se: bool) -> None:
        super().__init__()
        hidden = cin * expand
        layers: list[nn.Module] = []
        if expand != 1:
            layers.append(conv_bn(cin, hidden, 1))
        layers.append(conv_bn(hidden, hidden, 3, stride, groups=hidden))
        if se:
            layers.append(SqueezeExcite(hidden))
        layers.append(conv_bn(hidden, cout, 1, act=False))
        self.block = nn.Sequential(*layers)
        self.use_res = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.block(x)
        return x + y if self.use_res else y


class MobileNet(nn.Module):
    """MobileNetV2-style net for small images: stem → inverted-residual stages (w, 2w, 4w) → 1×1 head → GAP → FC."""

    def __init__(self, in_channels: int, num_classes: int, width: int = 16, depth: int = 1, expand: int = 4,
                 se: bool = False, stem_stride: int = 1) -> None:
        super().__init__()
        w = [width, width * 2, width * 4]
        self.stem = conv_bn(in_channels, w[0], stem_kernel(stem_stride), stem_stride)
        blocks: list[nn.Module] = []
        cin = w[0]
        for i, cout in enumerate(w):
            for j in range(depth):
                blocks.append(InvertedResidual(cin, cout, 2 if (i > 0 and j == 0) else 1, expand, se))
                cin = cout
        self.blocks = nn.Sequential(*blocks)
        self.head = conv_bn(cin, cin * 2, 1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin * 2, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.head(self.blocks(self.stem(x)))
        return self.fc(torch.flatten(self.pool(x), 1))


class Attention(nn.Module):
    """Multi-head self-attention with every sub-layer a named module, so Teacher Intervention and quantizers reach
    them by path: q, k, v (Linear) → scores = q·kᵀ (MatMul) → softmax(scores/√d) → context = A·v (MatMul) → proj.
    """

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads, self.scale = heads, (dim // heads) ** -0.5
        self.q, self.k, self.v = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.scores, self.context = MatMul(), MatMul()
        self.softmax = nn.Softmax(dim=-1)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        h = self.heads

        def split(t: torch.Tensor) -> torch.Tensor:
            return t.reshape(b, n, h, c // h).transpose(1, 2)

        q, k, v = split(self.q(x)), split(self.k(x)), split(self.v(x))
        attn = self.softmax(self.scores(q, k.transpose(-2, -1)) * self.scale)
        ctx = self.context(attn, v).transpose(1, 2).reshape(b, n, c)
        return self.proj(ctx)


class Block(nn.Module):
    """Pre-LN transformer block: x + Attn(LN(x)), then x + MLP(LN(x))."""

    def __init__(self, dim: int, heads: int, mlp_ratio: int = 2) -> None:
        super().__init__()
        self.norm1, self.attn = nn.LayerNorm(dim), Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, dim * mlp_ratio), nn.GELU(), nn.Linear(dim * mlp_ratio, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class ViT(nn.Module):
    """Dosovitskiy et al. 2021 ViT for small images: patch embedding (conv), [CLS] token, learned positions,
    pre-LN blocks, LN + linear head on [CLS]. The image side must be divisible by ``patch``."""

    def __init__(self, in_channels: int, num_classes: int, width: int = 64, depth: int = 4, heads: int = 4,
                 patch: int = 4, image: int = 28) -> None:
        super().__init__()
        self.patch_embed = nn.Conv2d(in_channels, width, patch, patch)
        n = (image // patch) ** 2
        self.cls_token = nn.Parameter(torch.zeros(1, 1, width))
        self.pos_embed = nn.Parameter(torch.randn(1, n + 1, width) * 0.02)
        self.blocks = nn.Sequential(*[Block(width, heads) for _ in range(depth)])
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], 1) + self.pos_embed
        x = self.norm(self.blocks(x))
        return self.head(x[:, 0])


@dataclass(frozen=True)
class Preset:
    family: str
    width: int
    depth: int
    stem_stride: int = 1
    se: bool = False


PRESETS: dict[str, Preset] = {
    "resnet-xs": Preset("resnet", 8, 1, 2),
    "resnet-s": Preset("resnet", 16, 1, 2),
    "resnet-m": Preset("resnet", 24, 1, 1),
    "resnet-l": Preset("resnet", 32, 1, 1),  # the demo teacher's architecture
    "mobilenet-xs": Preset("mobilenet", 8, 1, 2),
    "mobilenet-s": Preset("mobilenet", 16, 1, 2),
    "mobilenet-m": Preset("mobilenet", 16, 2, 1),
    "mobilenet-se-s": Preset("mobilenet", 16, 1, 2, se=True),
    "vit-tiny": Preset("vit", 64, 4),
    "vit-tiny-d6": Preset("vit", 64, 6),  # vit-tiny's width at 6 blocks: the deeper ViT of the TI benchmark
    "vit-s": Preset("vit", 96, 6),
}


def _make(preset: Preset) -> Callable[..., nn.Module]:
    def build(in_channels: int, num_classes: int, width: int | None = None, depth: int | None = None,
              stem_stride: int | None = None) -> nn.Module:
        w = width or preset.width
        d = depth or preset.depth
        st = stem_stride or preset.stem_stride
        if preset.family == "resnet":
            return ResNet(in_channels, num_classes, w, d, st)
        if preset.family == "vit":
            return ViT(in_channels, num_classes, w, d)
        return MobileNet(in_channels, num_classes, w, d, se=preset.se, stem_stride=st)

    build.__doc__ = f"{preset.family} width={preset.width} depth={preset.depth} stem_stride={preset.stem_stride}"
    return build


for _name, _preset in PRESETS.items():
    MODELS.add(_name, _make(_preset))
MODELS.add("resnet", _make(Preset("resnet", 16, 1, 1)))
MODELS.add("mobilenet", _make(Preset("mobilenet", 16, 1, 1)))


def build_model(name: str, in_channels: int, num_classes: int, width: int | None = None,
                depth: int | None = None, stem_stride: int | None = None) -> nn.Module:
    """Build a zoo model by registered name; ``width``/``depth``/``stem_stride`` override the preset's knobs
    (``stem_stride`` applies to the CNN families)."""
    kw = {"stem_stride": stem_stride} if stem_stride else {}
    return MODELS.get(name)(in_channels, num_classes, width=width, depth=depth, **kw)


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def input_kind(name: str) -> str:
    """What a zoo model takes: ``image`` (C, H, W) for the 2-D families, ``sequence`` (L,) or (C, L) for ``conv1d-*``."""
    return str(getattr(MODELS.get(name.removeprefix("zoo:")), "input_kind", "image"))


from edgekd.models import zoo1d as _zoo1d  # noqa: E402, F401 - registers the 1-D students (conv1d-*)
