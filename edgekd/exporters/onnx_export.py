"""Export a PyTorch model to ONNX and check it.

The legacy (TorchScript) exporter is the default: it supports opset 17 — which older TensorRT releases on Jetson
need — and it is the only one that exports NNCF-quantized models (env-feasibility §3). When it fails (some
transformer code), the dynamo exporter is tried, with ``external_data=False`` so the model stays one file.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import onnx
import torch
from torch import nn

from edgekd.errors import StageError
from edgekd.fileio import atomic_path


def _has_fake_quant(module: nn.Module) -> bool:
    from edgekd.quant.quantizers import FakeQuantizer

    return any(isinstance(m, FakeQuantizer) for m in module.modules())


def _legacy(module: nn.Module, x: torch.Tensor, opset: int, names: list[str], input_name: str = "input") -> bytes:
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if not isinstance(module, torch.jit.ScriptModule) and any(
                isinstance(m, torch.jit.ScriptModule) for m in module.modules()):
            # a Python wrapper around TorchScript (a model with bound inputs, edgekd.models.inputs): the legacy
            # exporter refuses to trace into the script module from the wrapper, but torch.jit.trace does it
            module = torch.jit.trace(module, (x,), check_trace=False)
        torch.onnx.export(module, (x,), buf, dynamo=False, opset_version=opset, input_names=[input_name],
                          output_names=names, dynamic_axes={input_name: {0: "batch"}, **{n: {0: "batch"} for n in names}},
                          do_constant_folding=True)
    return buf.getvalue()


def _dynamo(module: nn.Module, x: torch.Tensor, opset: int, names: list[str], input_name: str = "input") -> bytes:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prog = torch.onnx.export(module, (x,), dynamo=True, opset_version=max(opset, 18), input_names=[input_name],
                                 output_names=names, dynamic_shapes=({0: torch.export.Dim("batch")},),
                                 external_data=False, verbose=False)
    assert prog is not None
    return prog.model_proto.SerializeToString()


def _program(program: object, opset: int) -> bytes:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prog = torch.onnx.export(program, dynamo=True, opset_version=max(opset, 18), external_data=False, verbose=False)
    assert prog is not None
    return prog.model_proto.SerializeToString()


def export_onnx(module: nn.Module, input_shape: tuple[int, ...], path: Path, opset: int = 17,
                exporter: str = "legacy", program: object = None, output_names: list[str] | None = None,
                input_name: str = "input") -> dict[str, object]:
    """Write ``path`` (atomically) with a dynamic batch axis, the input named ``input_name`` (the teacher's data
    input, :mod:`edgekd.models.inputs`) and the outputs named ``output_names`` (the task's; default ``logits``);
    return what was used.

    A ``torch.export`` program (from a .pt2 file) is exported as it is, with the dynamo exporter: it already holds
    the graph, and its unflattened module cannot be traced again. A dict-output module is exported through
    :class:`edgekd.models.heads.AsTuple` (the exporters name tuple outputs, not dict keys).
    """
    names = list(output_names or ["logits"])
    module = module.eval()
    probe_out = None
    with torch.no_grad():
        try:
            probe_out = module(torch.zeros((2, *input_shape[1:])))
        except Exception:  # noqa: BLE001 - the exporters below report the failure
            pass
    if isinstance(probe_out, dict):
        from edgekd.models.heads import AsTuple

        module = AsTuple(module, names)
    x = torch.zeros((2, *input_shape[1:]))
    order = [exporter, "dynamo" if exporter == "legacy" else "legacy"]
    if program is not None:
        order = ["program"]
    errors: list[str] = []
    data = None
    used = None
    for name in order:
        try:
            if name == "program":
                data = _program(program, opset)
            else:
                data = (_legacy(module, x, opset, names, input_name) if name == "legacy"
                        else _dynamo(module, x, opset, names, input_name))
            used = name
            break
        except Exception as e:  # noqa: BLE001 - try the other exporter, report both if both fail
            errors.append(f"{name}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
    if data is None:
        raise StageError(f"ONNX export failed ({'; '.join(errors)})", "simplify the model's forward, or set export.exporter: dynamo in a config file")
    model = onnx.load_from_string(data)
    folded = 0
    if _has_fake_quant(module):
        from edgekd.exporters.qdq import fold_weight_quantize, frozen_weights, insert_weight_dequantize

        folded = insert_weight_dequantize(model, frozen_weights(module)) + fold_weight_quantize(model)
        data = model.SerializeToString()
    try:
        onnx.checker.check_model(model, full_check=True)
    except Exception as e:  # noqa: BLE001
        raise StageError(f"exported ONNX fails onnx.checker: {e}", "report this model to edgekd") from None
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    opset_used = max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=opset)
    return {"exporter": used, "opset": opset_used, "nodes": len(model.graph.node), "bytes": len(data),
            "int8_weight_initializers": folded, "fallback_errors": errors}
