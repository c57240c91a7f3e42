"""ONNX Runtime lowering: the QDQ model plus the session settings from the profile.

The artifact stays a portable QDQ ``.onnx`` (ORT's graph optimiser fuses it into int8 kernels at session
creation, per machine). We also record which node types the optimised graph executes (e.g. ``QLinearConv``), so
the report says what actually ran in int8.
"""

from __future__ import annotations

import collections
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Sequence

import onnx

from edgekd.backends import Backend, LowerInputs, Quantized, register
from edgekd.exporters.nbits import to_matmul_nbits
from edgekd.fileio import atomic_path, write_json
from edgekd.runtimes import ort_session
from edgekd.targets import Profile


def session_settings(profile: Profile) -> dict[str, Any]:
    s = profile.onnxruntime
    return {"threads": profile.threads, "graph_optimization": s.graph_optimization, "execution_providers": s.execution_providers}


def executed_ops(model: Path, settings: dict[str, Any]) -> dict[str, int]:
    with tempfile.TemporaryDirectory() as td:
        opt = Path(td) / "optimized.onnx"
        ort_session(model, settings["threads"], settings["graph_optimization"], settings["execution_providers"], str(opt))
        g = onnx.load(str(opt))
    return dict(collections.Counter(n.op_type for n in g.graph.node).most_common())


def lower_onnxruntime(model: Path, profile: Profile, out_dir: Path) -> dict[str, Any]:
    out_dir.mkdir(parents=True, exist_ok=True)
    artifact = out_dir / "model.onnx"
    m = onnx.load(str(model))
    # ≤4-bit Linear weights (from QAT) run on ORT's 4-bit MatMulNBits kernel; exact, see exporters/nbits.py
    n_nbits = to_matmul_nbits(m) if any(n.op_type == "DequantizeLinear" for n in m.graph.node) else 0
    with atomic_path(artifact) as tmp:
        if n_nbits:
            onnx.save(m, str(tmp))
        else:
            shutil.copyfile(model, tmp)
    settings = session_settings(profile)
    write_json(out_dir / "session.json", settings)
    ops = executed_ops(artifact, settings)
    int8_ops = {k: v for k, v in ops.items() if k.startswith(("QLinear", "MatMulInteger", "ConvInteger", "DynamicQuantize", "MatMulNBits"))}
    low_bit = {"MatMulNBits (4-bit weights)": n_nbits} if n_nbits else {}
    return {"artifact": artifact, "settings": settings, "executed_ops": ops, "int8_kernels": int8_ops, "low_bit_kernels": low_bit,
            "files": {"model": artifact, "session": out_dir / "session.json"}}


@register
class OnnxruntimeBackend(Backend):
    """ONNX Runtime (x86/ARM CPUs): PTQ with ``quantize_static`` to a QDQ graph, lowered as that graph plus the
    session settings; ORT fuses it into int8 kernels per machine when the session opens."""

    name = "onnxruntime"
    suffixes = (".onnx",)
    profiles_layers = True

    def settings(self, profile: Profile) -> dict[str, Any]:
        return session_settings(profile)

    def quantize(self, fp32_onnx: Path, out_dir: Path, calib_x: Any, profile: Profile,
                 keep_float: Sequence[str] = ()) -> Quantized:
        from edgekd.quant.ptq import ort_quantize

        art = out_dir / "model.onnx"
        info = ort_quantize(fp32_onnx, art, calib_x, profile.onnxruntime, keep_float=keep_float)
        return Quantized(info, {"model": art}, "onnxruntime", {"graph_optimization": "all", "threads": profile.threads})

    def plan_layers(self, fp32_onnx: Path, profile: Profile) -> list[dict[str, str]]:
        from edgekd.quant.ptq import ort_plan_layers

        return ort_plan_layers(fp32_onnx, profile.onnxruntime)

    def float_reverter(self, int8_model: Path, fp32_onnx: Path, work: Path) -> Callable[[Sequence[str], Path], Path]:
        from edgekd.quant.keep_float import ort_reverter

        return ort_reverter(int8_model, fp32_onnx, work)

    def layer_errors(self, int8_model: Path, fp32_onnx: Path, layers: Sequence[str], x: Any, profile: Profile,
                     work: Path) -> list[dict[str, Any]] | None:
        from edgekd.quant.layer_error import ort_layer_errors

        return ort_layer_errors(int8_model, fp32_onnx, layers, x, work)

    def slower_in_int8(self, int8_model: Path, fp32_onnx: Path, layers: Sequence[str], x: Any,
                       profile: Profile, margin: float = 1.25) -> list[dict[str, Any]] | None:
        from edgekd.quant.layer_speed import slower_in_int8

        return slower_in_int8(int8_model, fp32_onnx, layers, x, session_settings(profile), margin)

    def lower(self, model: Path, profile: Profile, out_dir: Path, inputs: LowerInputs | None = None) -> dict[str, Any]:
        return lower_onnxruntime(model, profile, out_dir)
