"""OpenVINO lowering: IR xml/bin compiled for the profile's device; records the runtime precisions that executed."""

from __future__ import annotations

import collections
import os
import shutil
from pathlib import Path
from typing import Any, Callable, Sequence

from edgekd.backends import Backend, LowerInputs, Quantized, register
from edgekd.runtimes import ov_compile
from edgekd.targets import Profile


def _feeds_matmul_weight(node: Any, depth: int = 0) -> bool:
    """Does this node's output reach a MatMul's second input through weight-decompression ops only?"""
    if depth > 6:
        return False
    for target in node.output(0).get_target_inputs():
        consumer = target.get_node()
        kind = consumer.get_type_name()
        if kind == "MatMul" and target.get_index() == 1:
            return True
        if kind in ("Convert", "Subtract", "Multiply", "Reshape", "Transpose", "Unsqueeze") and _feeds_matmul_weight(consumer, depth + 1):
            return True
    return False


def pack_int4_weights(model: Any) -> int:
    """Store int8 MatMul weight constants whose values all lie in [−8, 7] — the ≤4-bit codes of a QAT export — as
    OpenVINO ``i4`` constants. Exact (the same integers, the same scales), and the CPU plugin then runs its int4
    weight-compressed FullyConnected kernel on them. OpenVINO's own int4 path (``nncf.compress_weights``)
    re-quantizes float weights, which would not reproduce the QAT codes, hence this hand-written rewrite.
    Convolution weights stay int8: there is no int4 convolution kernel. Returns the number of constants packed."""
    import numpy as np
    import openvino as ov
    import openvino.opset13 as ops

    packed = 0
    for op in model.get_ordered_ops():
        if op.get_type_name() != "Constant" or op.get_output_element_type(0) != ov.Type.i8:
            continue
        data = op.get_data()
        if data.size < 2 or data.min() < -8 or data.max() > 7 or not _feeds_matmul_weight(op):
            continue
        flat = data.astype(np.int8).ravel()
        if flat.size % 2:
            flat = np.concatenate([flat, np.zeros(1, np.int8)])
        t = ov.Tensor(ov.Type.i4, list(data.shape))
        nibbles = ((flat[0::2] & 0x0F) | ((flat[1::2] & 0x0F) << 4)).astype(np.uint8)  # low nibble first
        t.data.view(np.uint8).reshape(-1)[:] = nibbles
        c = ops.constant(t)
        c.set_friendly_name(op.get_friendly_name())
        for target in list(op.output(0).get_target_inputs()):
            target.replace_source_output(c.output(0))
        packed += 1
    return packed


def compile_settings(profile: Profile) -> dict[str, Any]:
    s = profile.openvino
    return {"threads": profile.threads, "device": s.device, "performance_hint": s.performance_hint,
            "inference_precision": s.inference_precision}


def lower_openvino(model: Path, profile: Profile, out_dir: Path) -> dict[str, Any]:
    import openvino as ov

    out_dir.mkdir(parents=True, exist_ok=True)
    xml = out_dir / "model.xml"
    if model.suffix == ".xml":
        for src, dst in ((model, xml), (model.with_suffix(".bin"), xml.with_suffix(".bin"))):
            tmp = dst.with_name(f".{dst.name}.tmp")
            shutil.copyfile(src, tmp)
            os.replace(tmp, dst)
    else:  # an ONNX model (fp32 path): convert to IR
        tmp = out_dir / ".model.tmp.xml"
        # read_model (the ONNX frontend) turns Q/DQ pairs into FakeQuantize; convert_model's preprocessing pass
        # rejects per-channel DequantizeLinear on conv weights (OpenVINO 2026.4), so it is not used here.
        m = ov.Core().read_model(str(model))
        int4_packed = pack_int4_weights(m) if profile.openvino.int4_matmul else 0
        ov.save_model(m, str(tmp), compress_to_fp16=False)
        os.replace(tmp.with_suffix(".bin"), xml.with_suffix(".bin"))
        os.replace(tmp, xml)
    if model.suffix == ".xml":
        int4_packed = 0
    settings = compile_settings(profile)
    devices = ov.Core().available_devices
    if settings["device"].split(".")[0] not in {d.split(".")[0] for d in devices}:
        # an iGPU/NPU profile lowered on a machine without that device: the IR is device-independent; compiling
        # (and benchmarking) happens where the device is
        return {"artifact": xml, "settings": settings, "compiled": False, "int8_kernels": {}, "low_bit_kernels": {},
                "int4_weight_constants": int4_packed,
                "device_note": f"OpenVINO device {settings['device']} is not present here (available: {', '.join(devices)}); "
                               "compile and benchmark on the device (edgekd bench model.xml --profile ...)",
                "files": {"model": xml, "weights": xml.with_suffix(".bin")}}
    compiled = ov_compile(xml, settings["threads"], settings["device"], settings["performance_hint"], settings["inference_precision"])
    prec: collections.Counter[str] = collections.Counter()
    for op in compiled.get_runtime_model().get_ordered_ops():
        rt = op.get_rt_info()
        if "runtimePrecision" in rt and "layerType" in rt:
            layer = rt["layerType"].astype(str)
            if layer in ("Convolution", "FullyConnected", "MatMul", "GroupConvolution", "Eltwise"):
                prec[f"{layer}:{rt['runtimePrecision'].astype(str)}"] += 1
                # weight-compressed FullyConnected reports the weights' precision (i4/u4) as its runtime precision

    return {"artifact": xml, "settings": settings, "executed_precisions": dict(prec),
            "int8_kernels": {k: v for k, v in prec.items() if k.endswith(("i8", "u8"))},
            "low_bit_kernels": {k: v for k, v in prec.items() if k.endswith(("i4", "u4"))},
            "int4_weight_constants": int4_packed,
            "files": {"model": xml, "weights": xml.with_suffix(".bin")}}


@register
class OpenvinoBackend(Backend):
    """OpenVINO (Intel CPUs, iGPUs, NPUs): PTQ with NNCF on the OpenVINO model, lowered to IR compiled for the
    profile's device. An IR for a device that is not here (iGPU/NPU) is device-independent: its accuracy is
    measured on the CPU plugin, its latency on the device."""

    name = "openvino"
    suffixes = (".xml",)

    def settings(self, profile: Profile) -> dict[str, Any]:
        return compile_settings(profile)

    def can_time(self, profile: Profile) -> bool:
        import openvino as ov

        want = profile.openvino.device.split(".")[0]
        return want in {d.split(".")[0] for d in ov.Core().available_devices}

    def quantize(self, fp32_onnx: Path, out_dir: Path, calib_x: Any, profile: Profile,
                 keep_float: Sequence[str] = ()) -> Quantized:
        from edgekd.quant.ptq import nncf_quantize_openvino

        art = out_dir / "model.xml"
        info = nncf_quantize_openvino(fp32_onnx, art, calib_x, profile.openvino, keep_float=keep_float)
        return Quantized(info, {"model": art, "weights": art.with_suffix(".bin")}, "openvino", {"threads": profile.threads})

    def plan_layers(self, fp32_onnx: Path, profile: Profile) -> list[dict[str, str]]:
        from edgekd.quant.ptq import nncf_plan_layers

        return nncf_plan_layers(fp32_onnx)

    def float_reverter(self, int8_model: Path, fp32_onnx: Path, work: Path) -> Callable[[Sequence[str], Path], Path]:
        from edgekd.quant.keep_float import openvino_reverter

        return openvino_reverter(int8_model, fp32_onnx)

    def layer_errors(self, int8_model: Path, fp32_onnx: Path, layers: Sequence[str], x: Any, profile: Profile,
                     work: Path) -> list[dict[str, Any]] | None:
        from edgekd.quant.layer_error import openvino_layer_errors

        return openvino_layer_errors(int8_model, fp32_onnx, layers, x, {"threads": profile.threads})

    def lower(self, model: Path, profile: Profile, out_dir: Path, inputs: LowerInputs | None = None) -> dict[str, Any]:
        return lower_openvino(model, profile, out_dir)

    def unmeasured(self, profile: Profile, build: dict[str, Any], test: tuple[Any, Any],
                   artifact: Path) -> tuple[str, list[dict[str, Any]]] | None:
        if build.get("compiled") is not False:
            return None
        from edgekd.exporters.parity import run_batched
        from edgekd.runtimes import make_runner

        x, y = test
        logits = run_batched(make_runner("openvino", artifact, {"device": "CPU", "inference_precision": "f32"}), x)
        rows = [{"role": "student", "precision": build.get("precision"), "top1": float((logits.argmax(1) == y).mean()),
                 "samples": int(len(y)), "measured_on": "OpenVINO CPU plugin (expected accuracy on the device)"}]
        return build["device_note"], rows
