"""An ONNX file as a teacher: quantized, lowered and benchmarked as it is, or distilled from (issue #19).

Knowledge distillation needs only the teacher's outputs, which ONNX Runtime computes, so :class:`OnnxTeacher` wraps an
ORT session as a ``torch.nn.Module`` whose forward runs the session (no gradients flow through it; it has no
parameters to freeze). What needs gradients *through* the teacher — data-free synthesis, feature distillation,
Teacher Intervention, QAT from the teacher itself — is refused for ONNX teachers with one line.

A batch axis fixed at 1 in the file is made symbolic in memory (the user's file is never changed) when ONNX Runtime
then runs a batch of 2 correctly (:mod:`edgekd.models.batching`); otherwise the teacher runs sample by sample and
the exported copy keeps batch 1.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from edgekd.errors import ModelLoadError
from edgekd.models.batching import make_batch_dynamic, onnx_batch_fixed


class OnnxTeacher(nn.Module):
    def __init__(self, model_bytes: bytes, batch_dynamic: bool, threads: int | None = None) -> None:
        super().__init__()
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.log_severity_level = 3
        if threads:
            so.intra_op_num_threads = threads
        self.session = ort.InferenceSession(model_bytes, so, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name
        self.batch_dynamic = batch_dynamic

    def forward(self, x: torch.Tensor) -> "torch.Tensor | NamedOutputs":
        """The first output for a one-output model; every output, by the graph's order and names, otherwise (a
        model's outputs decide how it is scored: a second output is never dropped unseen)."""
        a = np.ascontiguousarray(x.detach().cpu().numpy(), np.float32)
        if self.batch_dynamic:
            outs = self.session.run(None, {self.input_name: a})
        else:
            runs = [self.session.run(None, {self.input_name: a[i : i + 1]}) for i in range(len(a))]
            outs = [np.concatenate([r[k] for r in runs]) for k in range(len(runs[0]))]
        tensors = [torch.from_numpy(np.asarray(o)) for o in outs]
        if len(tensors) == 1:
            return tensors[0]
        return NamedOutputs(tensors, [o.name for o in self.session.get_outputs()])


class NamedOutputs(tuple):
    """A model's several outputs as a tuple (what every tuple-reading path expects) that also carries their names
    (``names``), so that a student's outputs are exported under the teacher's names."""

    names: list[str]

    def __new__(cls, items: list[torch.Tensor], names: list[str]) -> "NamedOutputs":
        obj = super().__new__(cls, items)
        obj.names = list(names)
        return obj


def load_onnx_teacher(path: Path, inputs: dict[str, Any] | None = None, consts: dict[str, np.ndarray] | None = None,
                      ) -> tuple[OnnxTeacher, bytes, tuple[int, ...], dict[str, Any], str, str]:
    """(teacher, model bytes to export, input shape (1, …), edgekd metadata, batch note, the data input's name).
    ``consts`` bind the model's other inputs (made initializers: :func:`edgekd.models.inputs.bind_onnx_inputs`)."""
    import onnx

    from edgekd.models.inputs import bind_onnx_inputs

    try:
        model = onnx.load(str(path))
        onnx.checker.check_model(model)
    except Exception as e:  # noqa: BLE001 - onnx raises several types for damaged files
        line = next((ln for ln in str(e).splitlines() if ln.strip()), type(e).__name__)
        raise ModelLoadError(f"{path.name} is not a valid ONNX model: {line[:100]}", "re-export it") from None
    data_name = bind_onnx_inputs(model, path.name, dict(inputs or {}), dict(consts or {}))
    inits = {i.name for i in model.graph.initializer}
    data_input = next(i for i in model.graph.input if i.name not in inits)
    dims = data_input.type.tensor_type.shape.dim
    shape = tuple(int(d.dim_value) if d.HasField("dim_value") else 1 for d in dims)
    if len(shape) < 2 or any(d <= 0 for d in shape[1:]):
        raise ModelLoadError(f"{path.name}'s input has no fixed shape {shape}", "pass --input-shape")
    meta: dict[str, Any] = {}
    for p in model.metadata_props:
        if p.key == "edgekd":
            try:
                meta = json.loads(p.value)
            except ValueError:
                raise ModelLoadError(f"{path.name} has unreadable edgekd metadata", "store valid JSON under the key edgekd") from None
    original = model.SerializeToString()
    data, batch_dynamic = make_batch_dynamic(original)
    if not onnx_batch_fixed(model):
        note = "batch axis dynamic in the file"
    elif batch_dynamic:
        note = "the file's batch of 1 made symbolic (checked at batch 2)"
    else:
        note = "the file hard-codes batch 1: the teacher runs sample by sample"
    original = data
    return OnnxTeacher(original, batch_dynamic), original, (1, *shape[1:]), meta, note, data_name
