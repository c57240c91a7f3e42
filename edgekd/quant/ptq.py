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
from typing import Sequence

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
            self.batches = iter([{input_name: calib_x[i : i + batch]} for i in range(0, len(calib_x), batch)])

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
                            nodes_to_exclude=tail + heads + [n for n in keep_float if n not in heads])
            if keep_float:
                q = onnx.load(str(tmp))
                float_inputs(q, graph, keep_float)
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
    ignored += [n for n in keep_float if n not in ignored]
    items = [calib_x[i : i + batch] for i in range(0, len(calib_x), batch)]
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
    # Write xml and bin under temporary names, then rename both (the pair is the artifact).
    out_xml.parent.mkdir(parents=True, exist_ok=True)
    tmp_xml = out_xml.with_name(f".{out_xml.stem}.tmp.xml")
    ov.save_model(q, str(tmp_xml), compress_to_fp16=False)
    os.replace(tmp_xml.with_suffix(".bin"), out_xml.with_suffix(".bin"))
    os.replace(tmp_xml, out_xml)
    return {"tool": "nncf.quantize (OpenVINO backend)", "format": "OpenVINO IR with FakeQuantize",
            "preset": s.preset, "bias_correction": s.bias_correction, "subset_size": len(items), "nncf": nncf.__version__,
            "float_tail_nodes": len(ignored) - len(keep_float), "kept_float": list(keep_float)}


#: the layers whose inputs PTQ quantizes for speed; everything after the last of them on every path to an output is
#: the model's output tail (box decoding, sigmoid, concatenation of boxes with scores)
WEIGHTED_OPS = {"Conv", "ConvTranspose", "Gemm", "MatMul", "ConvInteger", "MatMulInteger"}


#: bumped whenever edgekd's use of quantize_static changes what it produces (part of the quantize stage's cache key)
ORT_RECIPE = "qdq-float-tail/2: mean-minmax ranges keep the output layers in float"


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


def float_inputs(model, original, names: Sequence[str]) -> int:  # noqa: ANN001
    """Make the named layers of a QDQ ``model`` read float inputs: each activation input of theirs is wired back to
    the float tensor of the ``original`` (pre-quantization) graph, recomputing in float any non-weighted op between
    them and the nearest weighted layer that feeds only them (a ReLU, a pool, a reshape). Q/DQ pairs and ops nobody
    reads any more are dropped. Returns the number of inputs rewired.

    Why by hand: ``nodes_to_exclude`` keeps a node out of ``quantize_static``, but its input tensor is still
    quantized where its producer is (ORT puts a Q/DQ pair on every quantized node's output and folds a following ReLU
    into it), so the layer keeps reading INT8-rounded values — keeping a layer with an outlier-wide input "in float"
    then restores nothing. NNCF quantizes only the inputs of weighted ops, so its ``ignored_scope`` already means
    this; TensorRT builds a layer without Q/DQ around it in FP16."""
    from onnx import NodeProto

    g, og = model.graph, original.graph
    o_producer = {o: n for n in og.node for o in n.output}
    o_consumers: dict[str, list] = {}
    for n in og.node:
        for t in n.input:
            o_consumers.setdefault(t, []).append(n)
    o_inits = {i.name: i for i in og.initializer}
    q_inits = {i.name for i in g.initializer}
    graph_outputs = {o.name for o in g.output}
    wanted = set(names)
    floating = {n.name for n in og.node if n.name in wanted}
    # grow: a non-weighted op whose outputs feed only floating layers is recomputed in float too
    grew = True
    while grew:
        grew = False
        for n in og.node:
            if n.name in floating or n.op_type in WEIGHTED_OPS or not n.name or set(n.output) & graph_outputs:
                continue
            readers = [c for o in n.output for c in o_consumers.get(o, [])]
            if readers and all(c.name in floating for c in readers):
                floating.add(n.name)
                grew = True
    made: dict[str, str] = {}
    added: list = []
    by_name = {n.name: n for n in g.node}

    def restore(t: str) -> str:
        """The name, in ``model``, of a tensor holding the original graph's float value of ``t``."""
        if t in made:
            return made[t]
        p = o_producer.get(t)
        if p is None:  # a graph input or an initializer
            if t in o_inits and t not in q_inits and not any(t in n.output for n in g.node):
                g.initializer.append(o_inits[t])
                q_inits.add(t)
            return t
        if p.name in by_name and (p.name not in floating or p.name in wanted):
            # the same node in the quantized graph computes the same float value; its output may have been renamed
            # (ORT folds a ReLU after a quantized layer into the Q/DQ pair and gives the layer the ReLU's output name)
            return by_name[p.name].output[list(p.output).index(t)]
        # an op recomputed in float (it feeds only float layers), or one the quantizer folded away (that ReLU)
        copy = NodeProto()
        copy.CopyFrom(p)
        copy.name = f"{p.name}/float"
        del copy.input[:]
        copy.input.extend(restore(i) if i else i for i in p.input)
        del copy.output[:]
        copy.output.extend(f"{o}/float" for o in p.output)
        for o in p.output:
            made[o] = f"{o}/float"
        added.append(copy)
        return made[t]

    rewired = 0
    for name in wanted:
        src, dst = next((n for n in og.node if n.name == name), None), by_name.get(name)
        if src is None or dst is None:
            continue
        for i, t in enumerate(src.input):
            if not t or t in o_inits:
                continue
            r = restore(t)
            if dst.input[i] != r:
                dst.input[i] = r
                rewired += 1
    g.node.extend(added)
    pruned = True
    while pruned:  # drop what nobody reads any more (the bypassed Q/DQ pairs, the int8-fed copies of floated ops)
        used = {t for n in g.node for t in n.input} | graph_outputs
        dead = [n for n in g.node if not any(o in used for o in n.output)]
        for n in dead:
            g.node.remove(n)
        pruned = bool(dead)
    _topological_sort(g)
    return rewired


def _topological_sort(g) -> None:  # noqa: ANN001
    """Reorder ``g.node`` so that every node comes after the producers of its inputs (ONNX requires it)."""
    producer = {o: i for i, n in enumerate(g.node) for o in n.output}
    order: list[int] = []
    state = [0] * len(g.node)

    def visit(i: int) -> None:
        stack = [(i, False)]
        while stack:
            j, done = stack.pop()
            if done:
                if state[j] != 2:
                    state[j] = 2
                    order.append(j)
                continue
            if state[j]:
                continue
            state[j] = 1
            stack.append((j, True))
            stack.extend((producer[t], False) for t in g.node[j].input if t in producer and not state[producer[t]])

    for i in range(len(g.node)):
        visit(i)
    nodes = [g.node[i] for i in order]
    del g.node[:]
    g.node.extend(nodes)


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
