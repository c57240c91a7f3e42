"""The TensorRT-ready lint of a Q/DQ ONNX graph (:func:`lint_qdq`): what TensorRT's explicit-quantization parser
needs, checked without TensorRT, so the bundle says before the device does whether its INT8 graph will build."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

#: ops that exist only in ONNX Runtime's contrib domain; TensorRT's parser rejects them
ORT_ONLY_DOMAINS = ("com.microsoft",)


@dataclass
class LintReport:
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    stats: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.errors

    def as_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "errors": self.errors, "warnings": self.warnings, "stats": self.stats}


def lint_qdq(model_path: str | Path, max_opset: int) -> LintReport:
    """Check that a Q/DQ ONNX graph builds as *explicit* INT8 in TensorRT (TensorRT developer guide, "Explicit
    Quantization"): signed int8 Q/DQ with zero-point 0 (TensorRT supports symmetric quantization only), per-tensor
    scales on activations, per-channel weight scales on the output-channel axis (0 for Conv, the N axis for
    MatMul/Gemm), positive finite scales, an opset between 13 (per-channel Q/DQ) and what the profile's TensorRT
    parses, and no ONNX Runtime-only ops (e.g. MatMulNBits)."""
    import onnx
    from onnx import TensorProto, numpy_helper

    m = onnx.load(str(model_path))
    rep = LintReport()
    g = m.graph
    opset = next((o.version for o in m.opset_import if o.domain in ("", "ai.onnx")), None)
    rep.stats["opset"] = opset
    if opset is None or opset < 13:
        rep.errors.append(f"opset {opset} < 13: per-channel QuantizeLinear/DequantizeLinear needs opset ≥ 13")
    elif opset > max_opset:
        rep.errors.append(f"opset {opset} is newer than this TensorRT parses (≤ {max_opset}): export with --opset {max_opset}")
    inits = {t.name: t for t in g.initializer}
    consts = dict(inits)
    for n in g.node:
        if n.op_type == "Constant" and n.attribute:
            consts[n.output[0]] = n.attribute[0].t
    producers = {o: n for n in g.node for o in n.output}
    foreign = sorted({f"{n.domain}::{n.op_type}" for n in g.node if n.domain in ORT_ONLY_DOMAINS})
    if foreign:
        rep.errors.append(f"ONNX Runtime-only ops TensorRT cannot parse: {', '.join(foreign)} (use the int8 Q/DQ form)")
    n_q = n_dq = 0
    for n in g.node:
        if n.op_type not in ("QuantizeLinear", "DequantizeLinear"):
            continue
        n_q += n.op_type == "QuantizeLinear"
        n_dq += n.op_type == "DequantizeLinear"
        scale = consts.get(n.input[1]) if len(n.input) > 1 else None
        if scale is None:
            rep.errors.append(f"{n.name or n.op_type}: scale is not a constant (TensorRT needs build-time scales)")
            continue
        s = numpy_helper.to_array(scale)
        if not (np.isfinite(s).all() and (s > 0).all()):
            rep.errors.append(f"{n.name}: scales must be positive and finite")
        if len(n.input) < 3 or not n.input[2]:
            if n.op_type == "QuantizeLinear":
                rep.errors.append(f"{n.name}: no zero-point, so the output is uint8 by the ONNX default; TensorRT needs int8")
        else:
            zp = consts.get(n.input[2])
            if zp is None:
                rep.errors.append(f"{n.name}: zero-point is not a constant")
            else:
                if zp.data_type != TensorProto.INT8:
                    rep.errors.append(f"{n.name}: {TensorProto.DataType.Name(zp.data_type).lower()} zero-point; TensorRT "
                                      "supports signed int8 only (quantize with activation_type=int8)")
                if np.any(numpy_helper.to_array(zp) != 0):
                    rep.errors.append(f"{n.name}: non-zero zero-point (asymmetric); TensorRT supports symmetric only")
        axis = next((a.i for a in n.attribute if a.name == "axis"), 1)
        per_channel = s.size > 1
        is_weight = n.op_type == "DequantizeLinear" and (n.input[0] in inits or
                                                          (n.input[0] in producers and producers[n.input[0]].op_type == "QuantizeLinear"
                                                           and producers[n.input[0]].input[0] in inits))
        if per_channel and not is_weight:
            rep.errors.append(f"{n.name}: per-channel scales on an activation; TensorRT needs per-tensor activation scales")
        if is_weight:
            src = n.input[0]
            if src in producers and producers[src].op_type == "QuantizeLinear":
                src = producers[src].input[0]
            w = inits.get(src)
            consumers = [c for c in g.node if n.output[0] in c.input]
            for c in consumers:
                if c.op_type in ("Conv", "ConvTranspose") and c.input[1] == n.output[0]:
                    want = 1 if c.op_type == "ConvTranspose" else 0
                    if per_channel and axis != want:
                        rep.errors.append(f"{n.name}: per-channel weight scales on axis {axis}; {c.op_type} needs axis {want}")
                elif c.op_type in ("MatMul", "Gemm") and len(c.input) > 1 and c.input[1] == n.output[0] and w is not None:
                    trans_b = next((a.i for a in c.attribute if a.name == "transB"), 0) if c.op_type == "Gemm" else 0
                    want = 0 if trans_b else len(w.dims) - 1
                    if per_channel and axis % max(1, len(w.dims)) != want:
                        rep.errors.append(f"{n.name}: per-channel weight scales on axis {axis}; {c.op_type} needs the output axis {want}")
            if not per_channel:
                rep.warnings.append(f"{n.name}: per-tensor weight scale (per-channel keeps more accuracy)")
    convs = [n for n in g.node if n.op_type in ("Conv", "MatMul", "Gemm")]
    quantized = [n for n in convs if len(n.input) > 1 and n.input[1] in producers and producers[n.input[1]].op_type == "DequantizeLinear"]
    rep.stats.update(quantize_linear=n_q, dequantize_linear=n_dq, compute_ops=len(convs), quantized_compute_ops=len(quantized))
    if n_dq == 0:
        rep.warnings.append("no Q/DQ nodes: the engine will be FP16/FP32, not INT8")
    elif len(quantized) < len(convs):
        rep.warnings.append(f"{len(convs) - len(quantized)} of {len(convs)} Conv/MatMul/Gemm ops have float weights and run in FP16")
    return rep
