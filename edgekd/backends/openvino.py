"""OpenVINO lowering: IR xml/bin compiled for the profile's device; records the runtime precisions that executed."""

from __future__ import annotations

import collections
import os
import shutil
from pathlib import Path
from typing import Any

from edgekd.backends import BACKENDS
from edgekd.runtimes import ov_compile
from edgekd.targets import Profile


def compile_settings(profile: Profile) -> dict[str, Any]:
    s = profile.openvino
    return {"threads": profile.threads, "device": s.device, "performance_hint": s.performance_hint,
            "inference_precision": s.inference_precision}


@BACKENDS.register("openvino")
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
        ov.save_model(ov.Core().read_model(str(model)), str(tmp), compress_to_fp16=False)
        os.replace(tmp.with_suffix(".bin"), xml.with_suffix(".bin"))
        os.replace(tmp, xml)
    settings = compile_settings(profile)
    compiled = ov_compile(xml, settings["threads"], settings["device"], settings["performance_hint"], settings["inference_precision"])
    prec: collections.Counter[str] = collections.Counter()
    for op in compiled.get_runtime_model().get_ordered_ops():
        rt = op.get_rt_info()
        if "runtimePrecision" in rt and "layerType" in rt:
            layer = rt["layerType"].astype(str)
            if layer in ("Convolution", "FullyConnected", "MatMul", "GroupConvolution", "Eltwise"):
                prec[f"{layer}:{rt['runtimePrecision'].astype(str)}"] += 1
    return {"artifact": xml, "settings": settings, "executed_precisions": dict(prec),
            "int8_kernels": {k: v for k, v in prec.items() if k.endswith(("i8", "u8"))},
            # sub-8-bit QAT weights run as int8 here: OpenVINO's int4 path (nncf.compress_weights) re-quantizes
            # float weights and has no exact import of QAT codes, so it is not used
            "low_bit_kernels": {},
            "files": {"model": xml, "weights": xml.with_suffix(".bin")}}
