"""INT8 post-training quantization with each runtime's own, well-kept tool (we do not rewrite them).

ONNX Runtime targets — ``onnxruntime.quantization.quantize_static`` → QDQ ONNX:
  * QDQ format (portable: ORT fuses it into QLinearConv/QLinearMatMul; OpenVINO and TensorRT read it too);
  * per-channel int8 weights;
  * activation/weight types and ``reduce_range`` from the profile. On x86 without VNNI the fast and accurate choice
    is U8 activations × S8 weights with reduce_range (7-bit weights): the u8·s8 pair-sum of the AVX2 kernels
    saturates with full 8-bit weights (−4.5 pt measured), and S8S8 gives no speed-up on x86 (env-feasibility §6).
    ARM profiles use S8S8 without reduce_range.
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

import numpy as np

from edgekd import progress
from edgekd.fileio import atomic_path
from edgekd.targets import OpenvinoSettings, OrtSettings


def ort_quantize(fp32_onnx: Path, out_path: Path, calib_x: np.ndarray, s: OrtSettings, batch: int = 32) -> dict[str, object]:
    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    import onnx

    first = onnx.load(str(fp32_onnx), load_external_data=False).graph.input[0]
    input_name = first.name
    dims = first.type.tensor_type.shape.dim
    if dims and dims[0].HasField("dim_value"):  # a graph with a fixed batch (of 1) takes its samples one at a time
        batch = int(dims[0].dim_value)

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter([{input_name: calib_x[i : i + batch]} for i in range(0, len(calib_x), batch)])

        def get_next(self):  # noqa: ANN201
            return next(self.batches, None)

    qtype = {"uint8": QuantType.QUInt8, "int8": QuantType.QInt8}
    method = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
              "percentile": CalibrationMethod.Percentile}[s.calibration_method]
    extra = {"ActivationSymmetric": s.activation_symmetric, "WeightSymmetric": True, "QuantizeBias": s.quantize_bias}
    with tempfile.TemporaryDirectory() as td:
        pre = Path(td) / "pre.onnx"
        logging.getLogger("root").setLevel(logging.ERROR)
        quant_pre_process(str(fp32_onnx), str(pre), skip_symbolic_shape=True)
        with atomic_path(out_path) as tmp:
            quantize_static(str(pre), str(tmp), Reader(), quant_format=QuantFormat.QDQ, per_channel=s.per_channel,
                            reduce_range=s.reduce_range, activation_type=qtype[s.activation_type],
                            weight_type=qtype[s.weight_type], calibrate_method=method, extra_options=extra)
    return {"tool": "onnxruntime.quantization.quantize_static", "format": "QDQ", "activation_type": s.activation_type,
            "weight_type": s.weight_type, "reduce_range": s.reduce_range, "per_channel": s.per_channel,
            "calibration_method": s.calibration_method, "activation_symmetric": s.activation_symmetric,
            "quantize_bias": s.quantize_bias}


def nncf_quantize_openvino(fp32_onnx: Path, out_xml: Path, calib_x: np.ndarray, s: OpenvinoSettings,
                           batch: int = 1) -> dict[str, object]:
    os.environ.setdefault("NNCF_EXTENSION_LOAD_TIMEOUT", "300")
    import nncf
    import openvino as ov

    nncf.set_log_level(logging.ERROR)
    model = ov.convert_model(str(fp32_onnx))
    items = [calib_x[i : i + batch] for i in range(0, len(calib_x), batch)]
    preset = nncf.QuantizationPreset.PERFORMANCE if s.preset == "performance" else nncf.QuantizationPreset.MIXED
    # NNCF draws its progress bars on stdout; stdout is for results, so send them to stderr (or nowhere if quiet).
    sink = open(os.devnull, "w") if progress.is_quiet() else sys.stderr  # noqa: SIM115
    try:
        with contextlib.redirect_stdout(sink):
            q = nncf.quantize(model, nncf.Dataset(items), preset=preset, subset_size=len(items),
                              fast_bias_correction=s.bias_correction == "fast")
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
            "preset": s.preset, "bias_correction": s.bias_correction, "subset_size": len(items), "nncf": nncf.__version__}
