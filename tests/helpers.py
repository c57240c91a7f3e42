"""Small real models and data for tests (no mocks): a factory module importable as ``helpers:make_net``."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn


class TinyNet(nn.Module):
    def __init__(self, in_channels: int = 1, num_classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(in_channels, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                                      nn.AdaptiveAvgPool2d(4))
        self.head = nn.Linear(8 * 16, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.flatten(self.features(x), 1))


#: CLI flags that cut the benchmark stage's timing to one short round, for tests that check messages, reports and
#: metrics, not latency (tests/test_bench.py checks the timing protocol itself)
FAST_BENCH = ("--set", "bench.iterations=20", "--set", "bench.warmup=2", "--set", "bench.warmup_seconds=0.05",
              "--set", "bench.rounds=1")


def make_net() -> nn.Module:
    torch.manual_seed(0)
    return TinyNet()


def make_student(in_channels: int, num_classes: int) -> nn.Module:
    return TinyNet(in_channels, num_classes)


class Regressor(nn.Module):
    """One real-valued output per sample, (B, 1), far from zero (a head regressing e.g. a size in millimetres)."""

    def __init__(self) -> None:
        super().__init__()
        self.net = TinyNet(1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 50.0 + 10.0 * self.net(x)


class Embedder(nn.Module):
    """A 16-d L2-normalised embedding."""

    def __init__(self) -> None:
        super().__init__()
        self.net = TinyNet(1, 16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.normalize(self.net(x), dim=1)


class TwoHeads(nn.Module):
    """A dict of outputs: 5 multi-label probabilities and a 4-d box-like regression."""

    def __init__(self) -> None:
        super().__init__()
        self.features = TinyNet(1, 32)
        self.labels = nn.Linear(32, 5)
        self.box = nn.Linear(32, 4)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        h = torch.relu(self.features(x))
        return {"labels": torch.sigmoid(self.labels(h)), "box": self.box(h)}


def make_fragile_onnx(src_onnx: "Path", out: "Path", scale: float = 3000.0) -> tuple[str, str]:
    """The same function with one fragile layer: in the first Conv → Relu → Conv chain, output channel 0 of the first
    Conv is multiplied by ``scale`` and the second Conv's weights on that input channel divided by it (exact in real
    arithmetic, since relu(s·z) = s·relu(z) for s > 0). The second Conv's input then has one channel ``scale`` times
    wider than the rest, so a per-tensor INT8 range for it rounds every other channel to zero. Returns the ONNX names
    (first Conv, fragile Conv)."""
    import onnx
    from onnx import numpy_helper

    m = onnx.load(str(src_onnx))
    nodes = list(m.graph.node)
    consumers: dict[str, list] = {}
    for n in nodes:
        for t in n.input:
            consumers.setdefault(t, []).append(n)
    init = {i.name: i for i in m.graph.initializer}
    for a in nodes:
        if a.op_type != "Conv" or len(consumers.get(a.output[0], [])) != 1:
            continue
        relu = consumers[a.output[0]][0]
        nxt = consumers.get(relu.output[0], []) if relu.op_type == "Relu" else []
        if len(nxt) == 1 and nxt[0].op_type == "Conv" and len(a.input) == 3 and nxt[0].input[1] in init:
            b = nxt[0]
            wa, ba, wb = (numpy_helper.to_array(init[n]).copy() for n in (a.input[1], a.input[2], b.input[1]))
            wa[0] *= scale
            ba[0] *= scale
            wb[:, 0] /= scale
            for name, arr in ((a.input[1], wa), (a.input[2], ba), (b.input[1], wb)):
                init[name].CopyFrom(numpy_helper.from_array(arr, name))
            onnx.save(m, str(out))
            return a.name, b.name
    raise AssertionError("no Conv → Relu → Conv chain with single consumers in the model")
