"""Which layers run slower in INT8 than in float on ONNX Runtime, read from the runtime's own kernel profile.

Keeping a layer in float can make the whole model faster. A convolution with one or three input channels (the stem
of a grayscale or RGB model) does little work per output pixel, so the int8 kernel's input packing and
requantization cost more than they save; measured on the distilled det-s detector (96×96 grayscale, ONNX Runtime,
1 thread): its stem takes 60 µs as a QLinearConv and 24 µs as a float Conv, and keeping that one layer in float
makes the INT8 model 1.15× faster. Whether a layer is such a layer depends on the model, the CPU and the runtime
version, so it is measured, not guessed: for each weighted layer L

    t_X(L) = median over profiled runs of the kernel time of the node(s) computing L in artifact X's optimized
             session (ONNX Runtime ``enable_profiling``, the session settings the target ships with)
    L is slower in INT8  ⇔  t_int8(L) > margin · t_fp32(L)

The precision planner (:mod:`edgekd.stages.plan`) turns these layers into one more candidate plan and times it
whole against the others in alternating rounds; a per-kernel profile only proposes, the timed artifact decides (a
layer kept in float adds a Q/DQ pair around it, which the profile does not charge to the layer).

Why by hand: ONNX Runtime writes the profile but has no API that maps an optimized node back to the layer it came
from. Quantized nodes keep the layer's name plus ``_token_N`` suffixes (QDQ fusion); float convolutions fused
into the NCHWc layout are named after the tensor they write plus ``_nchwc``, so they are traced back through the
activation they absorbed to their convolution in the original graph.
"""

from __future__ import annotations

import json
import re
import statistics
import tempfile
from collections import defaultdict
from pathlib import Path
from typing import Any, Sequence

import numpy as np

#: element-wise ops ONNX Runtime fuses into the convolution before them (the fused node is named after their output)
FUSED_AFTER = {"Relu", "Clip", "LeakyRelu", "Sigmoid", "HardSigmoid", "HardSwish", "Add", "Sum", "BatchNormalization"}


def kernel_times(model: Path, x: np.ndarray, settings: dict[str, Any], runs: int = 200) -> dict[str, float]:
    """{profiled node name: median kernel µs per run} of ``model`` on ``x`` (one batch), in a session opened with
    the target's ``settings`` (threads, graph optimization level); the median drops the first runs' warm-up."""
    from edgekd.runtimes import ort_session

    with tempfile.TemporaryDirectory() as td:
        sess = ort_session(model, settings.get("threads"), settings.get("graph_optimization", "all"),
                           profile_prefix=str(Path(td) / "profile"))
        feed = {sess.get_inputs()[0].name: x}
        for _ in range(runs):
            sess.run(None, feed)
        events = json.loads(Path(sess.end_profiling()).read_text())
    durations: dict[str, list[float]] = defaultdict(list)
    for e in events:
        if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time"):
            durations[e["name"][: -len("_kernel_time")]].append(float(e["dur"]))
    return {name: statistics.median(d) for name, d in durations.items()}


def layer_of(node_name: str, layers: set[str], producer: dict[str, Any]) -> str | None:
    """The weighted layer of the original graph that a profiled node computes, or None (a Q/DQ, a reorder, an op
    that is not a layer, or a fusion that cannot be traced to exactly one layer)."""
    name = re.sub(r"(_token_\d+)+$", "", node_name)
    if name in layers:
        return name
    tensor = name[: -len("_nchwc")] if name.endswith("_nchwc") else name
    node = producer.get(tensor)
    for _ in range(3):  # back through the activations (and a residual Add) the convolution absorbed
        if node is None:
            return None
        if node.name in layers:
            return node.name
        if node.op_type not in FUSED_AFTER:
            return None
        found = [producer.get(i) for i in node.input if producer.get(i) is not None]
        weighted = [n for n in found if n.name in layers]
        if len(weighted) == 1:
            return weighted[0].name
        if len(weighted) > 1:
            return None  # an Add of two layers' outputs: which one absorbed it is not knowable from the name
        node = found[0] if len(found) == 1 else None
    return None


def per_layer(times: dict[str, float], layers: set[str], producer: dict[str, Any]) -> dict[str, float]:
    """{layer: µs} summing the profiled nodes that map to each layer."""
    out: dict[str, float] = defaultdict(float)
    for name, us in times.items():
        layer = layer_of(name, layers, producer)
        if layer is not None:
            out[layer] += us
    return dict(out)


def slower_in_int8(int8_onnx: Path, fp32_onnx: Path, layers: Sequence[str], x: np.ndarray, settings: dict[str, Any],
                   margin: float = 1.25, runs: int = 200) -> list[dict[str, Any]]:
    """Layers of ``layers`` whose INT8 kernel takes more than ``margin`` × their float kernel's time, most time
    saved first: ``{"name", "int8_us", "fp32_us", "ratio"}``. Layers the profile cannot attribute are left out."""
    import onnx

    graph = onnx.load(str(fp32_onnx), load_external_data=False).graph
    if len({i.name for i in graph.input} - {i.name for i in graph.initializer}) != 1:
        return []  # profiled on one data input only
    producer = {o: n for n in graph.node for o in n.output}
    wanted = set(layers)
    t8 = per_layer(kernel_times(int8_onnx, x, settings, runs), wanted, producer)
    t32 = per_layer(kernel_times(fp32_onnx, x, settings, runs), wanted, producer)
    rows = [{"name": n, "int8_us": round(t8[n], 2), "fp32_us": round(t32[n], 2), "ratio": round(t8[n] / t32[n], 3)}
            for n in layers if n in t8 and t32.get(n, 0) > 0 and t8[n] > margin * t32[n]]
    return sorted(rows, key=lambda r: r["fp32_us"] - r["int8_us"])
