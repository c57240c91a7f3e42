"""Post-process a Q/DQ ONNX graph so weights are stored as int8 with a DequantizeLinear in front of each layer.

The TorchScript exporter constant-folds ``fake_quantize(weight)`` into a float constant, which loses the weight's
quantization (OpenVINO then runs the layer in fp32, and the file is as large as the fp32 model). Each quantized
weight sits on its layer's grid, W = k·s with integer k, so we find every Conv/Gemm/MatMul weight constant that is
value-for-value one of the model's frozen quantized weights, store k as an int8 initializer, and insert
``DequantizeLinear(k, s, 0, axis=0)`` — the canonical explicit-quantization form TensorRT, ONNX Runtime and
OpenVINO expect. Written by hand: no ONNX tool recovers Q/DQ from folded constants.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper
from torch import nn


def prune(graph: onnx.GraphProto, nodes: list[onnx.NodeProto] | None = None) -> None:
    """Set ``nodes`` (default: the graph's) and drop Constant/Cast/DequantizeLinear nodes and initializers that
    nothing consumes any more (a rewrite orphans chains of them)."""
    nodes = list(graph.node if nodes is None else nodes)
    for _ in range(4):
        used = {i for n in nodes for i in n.input} | {o.name for o in graph.output}
        nodes = [n for n in nodes if not (n.op_type in ("Constant", "Cast", "DequantizeLinear") and n.output[0] not in used)]
    used = {i for n in nodes for i in n.input} | {o.name for o in graph.output}
    del graph.node[:]
    graph.node.extend(nodes)
    alive = [i for i in graph.initializer if i.name in used]
    del graph.initializer[:]
    graph.initializer.extend(alive)


def frozen_weights(module: nn.Module) -> list[tuple[np.ndarray, np.ndarray]]:
    """(quantized float weight, per-output-channel scale) for every fake-quantized Conv/Linear in export mode."""
    from edgekd.quant.quantizers import LSQ, TWN

    out = []
    for m in module.modules():
        fq = getattr(m, "weight_fake_quant", None)
        if fq is None or not hasattr(fq, "export_weight"):
            continue
        w = fq.export_weight.detach().cpu().numpy().astype(np.float32)
        if isinstance(fq, LSQ):
            s = fq.step.detach().abs().clamp_min(1e-8).cpu().numpy().astype(np.float32)
        elif isinstance(fq, TWN):
            s = fq.alpha_delta(m.weight)[0].detach().clamp_min(1e-8).cpu().numpy().astype(np.float32)
        else:
            continue
        if s.size == 1:
            s = np.full(w.shape[0], float(s.reshape(-1)[0]), np.float32)
        out.append((w, s))
    return out


def insert_weight_dequantize(model: onnx.ModelProto, weights: list[tuple[np.ndarray, np.ndarray]]) -> int:
    """Rewrite matching weight constants as int8 + DequantizeLinear; returns how many were rewritten."""
    g = model.graph
    consts = _const_map(g)
    done = 0
    new_nodes: list[onnx.NodeProto] = []
    for n in g.node:
        if n.op_type in ("Conv", "Gemm", "MatMul") and len(n.input) > 1 and n.input[1] in consts:
            name = n.input[1]
            arr = consts[name]
            transposed = False
            match = next((ws for ws in weights if ws[0].shape == arr.shape and np.allclose(ws[0], arr, rtol=1e-6, atol=0)), None)
            if match is None and arr.ndim == 2:  # Gemm(transB=0) / MatMul store Wᵀ
                match = next((ws for ws in weights if ws[0].shape == arr.T.shape and np.allclose(ws[0], arr.T, rtol=1e-6, atol=0)), None)
                transposed = match is not None
            if match is not None:
                w, s = match
                q = np.clip(np.rint(w / s.reshape(-1, *([1] * (w.ndim - 1)))), -127, 127).astype(np.int8)
                base = f"{name}_quantized"
                inits = [numpy_helper.from_array(q.T.copy() if transposed else q, base),
                         numpy_helper.from_array(s.astype(np.float32), f"{base}_scale"),
                         numpy_helper.from_array(np.zeros(s.shape, np.int8), f"{base}_zero_point")]
                g.initializer.extend(inits)
                deq_out = f"{base}_dequantized"
                new_nodes.append(helper.make_node("DequantizeLinear", [base, f"{base}_scale", f"{base}_zero_point"],
                                                  [deq_out], axis=1 if transposed else 0, name=f"{base}_DequantizeLinear"))
                n.input[1] = deq_out
                done += 1
        new_nodes.append(n)
    if done:
        prune(g, new_nodes)
    return done


def _const_map(graph: onnx.GraphProto) -> dict[str, np.ndarray]:
    """Initializers, Constant nodes, and Casts of those (the exporter casts zero-points with a Cast node)."""
    out = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    for n in graph.node:  # nodes are topologically sorted
        if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value":
            out[n.output[0]] = numpy_helper.to_array(n.attribute[0].t)
        elif n.op_type == "Cast" and n.input[0] in out:
            to = next(a.i for a in n.attribute if a.name == "to")
            out[n.output[0]] = out[n.input[0]].astype(helper.tensor_dtype_to_np_dtype(to))
    return out


def fold_weight_quantize(model: onnx.ModelProto) -> int:
    """``QuantizeLinear(constant)`` → int8/uint8 initializer (ONNX formula: saturate(round_half_even(x/s) + zp)), and
    ``DequantizeLinear(int8 W) → Transpose`` → ``DequantizeLinear(int8 Wᵀ)``; returns the number of folded Q nodes.

    The exporter leaves some weight Q/DQ pairs unfolded (e.g. ternary weights), with the float weight in the file."""
    g = model.graph
    consts = _const_map(g)
    folded = 0
    nodes = []
    for n in g.node:
        if n.op_type == "QuantizeLinear" and all(i in consts for i in n.input if i):
            x = consts[n.input[0]].astype(np.float32)
            scale = consts[n.input[1]].astype(np.float32)
            zp = consts[n.input[2]] if len(n.input) > 2 and n.input[2] else np.zeros((), np.uint8)
            axis = next((a.i for a in n.attribute if a.name == "axis"), 1)
            if scale.ndim == 1 and scale.size > 1:
                shape = [1] * x.ndim
                shape[axis] = scale.size
                scale, zpb = scale.reshape(shape), zp.reshape(shape).astype(np.int32)
            else:
                zpb = zp.astype(np.int32)
            info = np.iinfo(zp.dtype)
            q = np.clip(np.rint(x / scale) + zpb, info.min, info.max).astype(zp.dtype)
            g.initializer.append(numpy_helper.from_array(q, n.output[0]))
            folded += 1
            continue
        nodes.append(n)
    # DQ(int8 W) → Transpose(perm 1,0): store Wᵀ and dequantize along the other axis
    inits = {i.name: i for i in g.initializer}
    producers = {o: n for n in nodes for o in n.output}
    final = []
    for n in nodes:
        dq = producers.get(n.input[0]) if n.op_type == "Transpose" else None
        perm = next((list(a.ints) for a in n.attribute if a.name == "perm"), None) if dq is not None else None
        if dq is not None and dq.op_type == "DequantizeLinear" and dq.input[0] in inits and perm == [1, 0]:
            w = numpy_helper.to_array(inits[dq.input[0]])
            if w.ndim == 2:
                axis = next((a.i for a in dq.attribute if a.name == "axis"), 1)
                name = f"{dq.input[0]}_T"
                g.initializer.append(numpy_helper.from_array(np.ascontiguousarray(w.T), name))
                final.append(helper.make_node("DequantizeLinear", [name, *dq.input[1:]], [n.output[0]], axis=1 - axis,
                                              name=f"{name}_DequantizeLinear"))
                continue
        final.append(n)
    prune(g, final)
    return folded
