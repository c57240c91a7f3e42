"""INT8 post-training quantization with each runtime's own, well-kept tool (we do not rewrite them).

ONNX Runtime targets — ``onnxruntime.quantization.quantize_static`` → QDQ ONNX:
  * QDQ format (portable: ORT fuses it into QLinearConv/QLinearMatMul; OpenVINO and TensorRT read it too);
  * per-channel int8 weights;
  * activation/weight types and ``reduce_range`` from the profile. On x86 without VNNI the fast and accurate choice
    is U8 activations × S8 weights with reduce_range (7-bit weights): the u8·s8 pair-sum of the AVX2 kernels
    saturates with full 8-bit weights (−4.5 pt measured), and S8S8 gives no speed-up on x86 (env-feasibility §6).
    ARM profiles use S8S8 without reduce_range.
  * activation ranges by the profile's ``calibration_method``, default ``mean-minmax``: the mean over calibration
    samples of each sample's min and max (NNCF's default for per-tensor activations). ORT's own default, the global
    min and max, lets one outlier sample set a range: the example detector's INT8 fell from 42.8 to 20.6
    mAP@[.5:.95] with it (``benchmarks/results/calibration_range.md``);
  * ``quant_pre_process`` first (shape inference + graph optimisation), as the ORT docs recommend.

OpenVINO targets — NNCF ``nncf.quantize`` on the OpenVINO model (``ov.convert_model`` of the fp32 ONNX), preset
PERFORMANCE (symmetric), full BiasCorrection by default (more accurate than the fast variant), saved as IR
xml/bin. This is NNCF's fastest path and needs no
C++ build (env-feasibility §4).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import tempfile
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from edgekd import progress
from edgekd.fileio import atomic_path
from edgekd.targets import OpenvinoSettings, OrtSettings


def ort_preprocess(fp32_onnx: Path, out: Path) -> None:
    """``quant_pre_process`` (shape inference + ORT's basic graph optimisation), as the ORT docs recommend before
    ``quantize_static``; its node names are the ones ``nodes_to_exclude`` (and the planner) name."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    logging.getLogger("root").setLevel(logging.ERROR)
    quant_pre_process(str(fp32_onnx), str(out), skip_symbolic_shape=True)


def ort_plan_layers(fp32_onnx: Path, s: OrtSettings) -> list[dict[str, str]]:
    """The weighted layers ``quantize_static`` makes INT8 (those edgekd keeps in float left out), in graph order."""
    import onnx

    with tempfile.TemporaryDirectory() as td:
        pre = Path(td) / "pre.onnx"
        ort_preprocess(fp32_onnx, pre)
        graph = onnx.load(str(pre), load_external_data=False)
    heads = set(output_layers(graph)) if s.calibration_method == "mean-minmax" else set()
    return [{"name": n.name, "op": n.op_type} for n in graph.graph.node
            if n.op_type in WEIGHTED_OPS and n.name and n.name not in heads]


class Batches:
    """``x`` in batches of ``batch``, sliced each time it is iterated (NNCF iterates its dataset once per pass), so a
    uint8 split (:class:`edgekd.data.arrays.NormalizedArray`) is normalised one batch at a time."""

    def __init__(self, x: Any, batch: int) -> None:
        self.x, self.batch = x, batch

    def __len__(self) -> int:
        return -(-len(self.x) // self.batch)

    def __iter__(self) -> Iterator[np.ndarray]:
        return (self.x[i : i + self.batch] for i in range(0, len(self.x), self.batch))


def ort_quantize(fp32_onnx: Path, out_path: Path, calib_x: np.ndarray, s: OrtSettings, batch: int = 32,
                 keep_float: Sequence[str] = ()) -> dict[str, object]:
    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static

    import onnx

    first = onnx.load(str(fp32_onnx), load_external_data=False).graph.input[0]
    input_name = first.name
    dims = first.type.tensor_type.shape.dim
    if dims and dims[0].HasField("dim_value"):  # a graph with a fixed batch (of 1) takes its samples one at a time
        batch = int(dims[0].dim_value)
    elif s.calibration_method != "minmax":
        # per-sample statistics: "mean-minmax" averages each sample's min and max (NNCF's MEAN_MINMAX needs one
        # sample per batch), and ORT's histogram calibrators stack per-batch arrays, which fails on a ragged last batch
        batch = 1

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            # sliced as read: a uint8 split (NormalizedArray) is normalised one batch at a time
            self.batches = ({input_name: calib_x[i : i + batch]} for i in range(0, len(calib_x), batch))

        def get_next(self):  # noqa: ANN201
            return next(self.batches, None)

    qtype = {"uint8": QuantType.QUInt8, "int8": QuantType.QInt8}
    method = {"minmax": CalibrationMethod.MinMax, "mean-minmax": CalibrationMethod.MinMax,
              "entropy": CalibrationMethod.Entropy, "percentile": CalibrationMethod.Percentile}[s.calibration_method]
    extra = {"ActivationSymmetric": s.activation_symmetric, "WeightSymmetric": True, "QuantizeBias": s.quantize_bias}
    if s.calibration_method == "mean-minmax":
        # ORT's "moving average" MinMax takes the mean over batches of each batch's min and max (calibrate.py,
        # compute_data); with one sample per batch that is NNCF's default range for per-tensor activations
        extra["CalibMovingAverage"] = True
    with tempfile.TemporaryDirectory() as td:
        pre = Path(td) / "pre.onnx"
        ort_preprocess(fp32_onnx, pre)
        graph = onnx.load(str(pre), load_external_data=False)
        unknown = sorted(set(keep_float) - {n.name for n in graph.graph.node})
        if unknown:
            from edgekd.errors import ConfigError

            raise ConfigError(f"layers to keep in float are not in the model: {', '.join(unknown[:3])}",
                              "name layers as `edgekd sensitivity` lists them (re-plan after changing the model)")
        tail = float_tail(graph)
        # per-sample ranges of a layer that writes the model's outputs would clip them: a regression head's one
        # value per sample has min = max, so the mean range shrinks to a point. Those layers stay in float, as
        # NNCF leaves the outputs of a model's last layers unquantized (it quantizes inputs of weighted ops only).
        heads = output_layers(graph) if s.calibration_method == "mean-minmax" else []
        with atomic_path(out_path) as tmp:
            quantize_static(str(pre), str(tmp), Reader(), quant_format=QuantFormat.QDQ, per_channel=s.per_channel,
                            reduce_range=s.reduce_range, activation_type=qtype[s.activation_type],
                            weight_type=qtype[s.weight_type], calibrate_method=method, extra_options=extra,
                            nodes_to_exclude=tail + heads)
            if keep_float:  # the same graph edit the planner scored (edgekd.quant.keep_float), not a new calibration
                from edgekd.quant.keep_float import float_inputs

                q = onnx.load(str(tmp))
                float_inputs(q, graph, [n for n in keep_float if n not in heads])
                onnx.save(q, str(tmp))
    return {"tool": "onnxruntime.quantization.quantize_static", "format": "QDQ", "activation_type": s.activation_type,
            "weight_type": s.weight_type, "reduce_range": s.reduce_range, "per_channel": s.per_channel,
            "calibration_method": s.calibration_method, "activation_symmetric": s.activation_symmetric,
            "quantize_bias": s.quantize_bias, "float_tail_nodes": len(tail), "float_output_layers": heads,
            "kept_float": list(keep_float), "recipe": ORT_RECIPE}


#: OpenVINO operations whose inputs NNCF quantizes (the weighted ones): what ``ignored_scope`` and the planner name
OV_WEIGHTED_OPS = {"Convolution", "GroupConvolution", "ConvolutionBackpropData", "GroupConvolutionBackpropData", "MatMul"}


def nncf_plan_layers(fp32_onnx: Path) -> list[dict[str, str]]:
    """The weighted OpenVINO operations of the converted model NNCF makes INT8, in topological order."""
    import openvino as ov

    model = ov.convert_model(str(fp32_onnx))
    return [{"name": op.get_friendly_name(), "op": op.get_type_name()} for op in model.get_ordered_ops()
            if op.get_type_name() in OV_WEIGHTED_OPS]


def nncf_quantize_openvino(fp32_onnx: Path, out_xml: Path, calib_x: np.ndarray, s: OpenvinoSettings,
                           batch: int = 1, keep_float: Sequence[str] = ()) -> dict[str, object]:
    os.environ.setdefault("NNCF_EXTENSION_LOAD_TIMEOUT", "300")
    import nncf
    import openvino as ov

    nncf.set_log_level(logging.ERROR)
    import onnx

    model = ov.convert_model(str(fp32_onnx))
    # the output tail stays in float (see float_tail); OpenVINO keeps ONNX node names as operation names
    tail = set(float_tail(onnx.load(str(fp32_onnx), load_external_data=False)))
    ignored = [op.get_friendly_name() for op in model.get_ops() if op.get_friendly_name() in tail]
    unknown = sorted(set(keep_float) - {op.get_friendly_name() for op in model.get_ops()})
    if unknown:
        from edgekd.errors import ConfigError

        raise ConfigError(f"layers to keep in float are not in the model: {', '.join(unknown[:3])}",
                          "name layers as `edgekd sensitivity` lists them (re-plan after changing the model)")
    items = Batches(calib_x, batch)
    preset = nncf.QuantizationPreset.PERFORMANCE if s.preset == "performance" else nncf.QuantizationPreset.MIXED
    # NNCF draws its progress bars on stdout; stdout is for results, so send them to stderr (or nowhere if quiet).
    sink = open(os.devnull, "w") if progress.is_quiet() else sys.stderr  # noqa: SIM115
    try:
        with contextlib.redirect_stdout(sink):
            q = nncf.quantize(model, nncf.Dataset(items), preset=preset, subset_size=len(items),
                              fast_bias_correction=s.bias_correction == "fast",
                              ignored_scope=nncf.IgnoredScope(names=ignored, validate=False) if ignored else None)
    finally:
        if sink is not sys.stderr:
            sink.close()
    from edgekd.quant.keep_float import float_layers_openvino, save_ir

    keep = [n for n in keep_float if n not in ignored]
    if keep:  # the same graph edit the planner scored (edgekd.quant.keep_float), not a new calibration
        float_layers_openvino(q, ov.convert_model(str(fp32_onnx)), keep)
    save_ir(q, out_xml)
    return {"tool": "nncf.quantize (OpenVINO backend)", "format": "OpenVINO IR with FakeQuantize",
            "preset": s.preset, "bias_correction": s.bias_correction, "subset_size": len(items), "nncf": nncf.__version__,
            "float_tail_nodes": len(ignored), "kept_float": list(keep_float)}


#: the layers whose inputs PTQ quantizes for speed; everything after the last of them on every path to an output is
#: the model's output tail (box decoding, sigmoid, concatenation of boxes with scores)
WEIGHTED_OPS = {"Conv", "ConvTranspose", "Gemm", "MatMul", "ConvInteger", "MatMulInteger"}


#: bumped whenever edgekd's use of quantize_static changes what it produces (part of the quantize stage's cache key)
ORT_RECIPE = "qdq-float-tail/3: mean-minmax ranges keep the output layers in float; kept layers by graph edit"


def output_layers(model) -> list[str]:  # noqa: ANN001
    """Names of the weighted layers (:data:`WEIGHTED_OPS`) with no weighted layer downstream: the ones that write
    the model's outputs (a classifier's last Gemm, a detector's class and box convolutions)."""
    nodes = list(model.graph.node)
    feeds_weighted = _feeds_weighted(nodes)
    return [n.name for i, n in enumerate(nodes) if n.op_type in WEIGHTED_OPS and not feeds_weighted[i] and n.name]


def _feeds_weighted(nodes: list) -> list[bool]:
    """Per node: whether a weighted layer lies downstream of it (reverse topological order: ONNX graphs are sorted)."""
    consumers: dict[str, list[int]] = {}
    for i, n in enumerate(nodes):
        for t in n.input:
            consumers.setdefault(t, []).append(i)
    feeds = [False] * len(nodes)
    for i in range(len(nodes) - 1, -1, -1):
        feeds[i] = any(nodes[j].op_type in WEIGHTED_OPS or feeds[j] for t in nodes[i].output for j in consumers.get(t, []))
    return feeds


def float_tail(model) -> list[str]:  # noqa: ANN001
    """Names of the nodes that lie after the last weighted layer (:data:`WEIGHTED_OPS`) on every path to a graph
    output, and after at least one weighted layer: they are kept in float.

    Why: a detector's head ends by decoding boxes (pixels, 0…640) and concatenating them with class probabilities
    (0…1) into one tensor; a per-tensor INT8 scale for that tensor is ≈ 640/255 ≈ 2.5, so every probability rounds to
    0 or 2.5 — the mAP collapse users report for INT8 YOLO exports (Ultralytics' Jetson table: YOLO11n 0.61 → 0.32).
    NNCF's own YOLOv8 example ignores the same subgraph. The tail holds no weights, so keeping it in float costs
    little time. A classifier's tail (nothing after its last Gemm, or a Softmax) is unaffected."""
    nodes = list(model.graph.node)
    producer = {t: i for i, n in enumerate(nodes) for t in n.output}
    feeds_weighted = _feeds_weighted(nodes)
    after_weighted = [False] * len(nodes)
    for i, n in enumerate(nodes):
        after_weighted[i] = any(p is not None and (nodes[p].op_type in WEIGHTED_OPS or after_weighted[p])
                                for p in (producer.get(t) for t in n.input))
    return [n.name for i, n in enumerate(nodes) if after_weighted[i] and not feeds_weighted[i]
            and n.op_type not in WEIGHTED_OPS and n.name]
