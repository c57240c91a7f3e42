"""Keep a model's input layers in float where the target's kernels run them faster so (``quantize.input_layers_float``).

A convolution that reads the image itself, with one or three input channels, does little arithmetic per output
pixel, and an INT8 kernel's input packing and requantization can cost more than they save: on the example detector
(96×96 grayscale, ``x86-cpu-vnni``) the stem takes 39 µs as a ``QLinearConv`` and 11 µs as a float ``Conv``
(``benchmarks/results/detection.json``) — and yet the whole model with it in float was only 1.04× as fast there. Unlike a layer inside the graph, a layer that reads a graph input costs no DequantizeLinear when
kept in float (its input is the float input already); the QuantizeLinear the INT8 graph had in front of it moves
behind it. So, per target:

    candidates = the weighted layers whose data input is a graph input
    proposed   = candidates with t_int8(L) > margin · t_fp32(L) in the target runtime's own kernel profile
                 (:func:`edgekd.quant.layer_speed.slower_in_int8`; runtimes without one propose nothing)
    shipped    = the INT8 model with the proposed layers put back in float (the same calibration, the same graph
                 edit as the precision planner's), iff its batch-1 p50 beats the all-INT8 model's by
                 ``min_speedup`` in alternating rounds in one process; otherwise the all-INT8 model

The kernel profile only proposes; the timed artifact decides. Accuracy is not traded: the quantize stage's INT8 gate
scores whichever model ships, and a layer in float is at least as precise as in INT8.
"""

from __future__ import annotations

import shutil
import statistics
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

#: ``t_int8 > MARGIN · t_fp32`` proposes a layer: a clear loss in the profile, not its noise
MARGIN = 2.0
#: the variant ships only if its p50 is at least this many times lower than the all-INT8 model's
MIN_SPEEDUP = 1.05


def input_layers(fp32_onnx: Path, layers: Sequence[str]) -> list[str]:
    """The layers of ``layers`` (quantizable weighted layers, in graph order) whose first input is a graph input."""
    import onnx

    g = onnx.load(str(fp32_onnx), load_external_data=False).graph
    inputs = {i.name for i in g.input} - {i.name for i in g.initializer}
    reads_input = {n.name for n in g.node if n.input and n.input[0] in inputs}
    return [n for n in layers if n in reads_input]


def choose_input_layers_float(backend: Any, profile: Any, fp32_onnx: Path, int8_onnx: Path, x1: Any, work: Path,
                              time_models: Callable[[list[Path]], list[list[float]]], margin: float = MARGIN,
                              min_speedup: float = MIN_SPEEDUP) -> dict[str, Any]:
    """Try the input layers in float (see the module docstring); when the variant wins it replaces ``int8_onnx``.

    ``time_models(paths)`` returns each model's batch-1 p50 per alternating round (ms). Returns the record written
    to ``calibration.json``: the layers profiled and proposed, the rounds, the decision and why."""
    rec: dict[str, Any] = {"margin": margin, "min_speedup": min_speedup, "kept_float": []}
    if not backend.profiles_layers:
        return {**rec, "reason": f"{backend.name}: no per-layer kernel profile here"}
    names = input_layers(fp32_onnx, [r["name"] for r in backend.plan_layers(fp32_onnx, profile)])
    rec["candidates"] = names
    if not names:
        return {**rec, "reason": "no quantized layer reads a graph input"}
    rows = backend.slower_in_int8(int8_onnx, fp32_onnx, names, np.asarray(x1, np.float32), profile, margin) or []
    rec["slower_in_int8"] = rows
    if not rows:
        return {**rec, "reason": f"no input layer is more than {margin:g}× slower in INT8 in the kernel profile"}
    variant = work / "input-layers-float.onnx"
    proposed = [r["name"] for r in rows]
    backend.float_reverter(int8_onnx, fp32_onnx, work / "revert")(proposed, variant)
    rounds = time_models([int8_onnx, variant])
    p50 = [statistics.median(r) for r in rounds]
    rec.update(proposed=proposed, p50_rounds_ms={"int8": rounds[0], "input layers in float": rounds[1]},
               speedup=round(p50[0] / p50[1], 4))
    if p50[0] >= min_speedup * p50[1]:
        shutil.copyfile(variant, int8_onnx)
        rec["kept_float"] = proposed
        rec["reason"] = (f"{', '.join(proposed)} in float: {p50[0] / p50[1]:.2f}× faster than all-INT8 "
                         f"({p50[1]:.3f} vs {p50[0]:.3f} ms p50)")
    else:
        rec["reason"] = (f"{', '.join(proposed)} slower in INT8 in the profile, but the whole model with them in float "
                         f"is {p50[0] / p50[1]:.2f}× as fast (needs {min_speedup:g}×): all-INT8 ships")
    shutil.rmtree(work, ignore_errors=True)
    return rec
