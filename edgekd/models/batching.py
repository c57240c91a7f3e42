"""Models whose batch axis was fixed at 1 when they were saved (a ``torch.export`` program or an ONNX file exported
from a single example): run them at any batch, and make their ONNX batch axis symbolic when that is safe.

The issue (#19): a ``.pt2`` saved with a batch-1 example was refused with a hint (``--input-shape``) that could not
fix it. :class:`PerSample` runs such a module one sample at a time (correct, slower); :func:`make_batch_dynamic`
rewrites an ONNX graph's leading input/output dimension to a symbol and keeps the rewrite only when ONNX Runtime then
computes a batch of two exactly as two batches of one.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn


class PerSample(nn.Module):
    """Run ``module`` on one sample at a time and stack the outputs (tensors, or tuples/lists of tensors)."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, x: torch.Tensor) -> Any:
        outs = [self.module(x[i : i + 1]) for i in range(x.shape[0])]
        if isinstance(outs[0], (tuple, list)):
            return type(outs[0])(torch.cat([o[j] for o in outs]) for j in range(len(outs[0])))
        return torch.cat(outs)


def accepts_batch(module: nn.Module, input_shape: tuple[int, ...], batch: int) -> bool:
    try:
        with torch.no_grad():
            module(torch.zeros((batch, *input_shape[1:])))
        return True
    except Exception:  # noqa: BLE001 - any failure means "not at this batch"
        return False


def onnx_batch_fixed(model: Any) -> bool:
    """Is the first graph input's leading dimension a fixed number?"""
    inits = {i.name for i in model.graph.initializer}
    first = next(i for i in model.graph.input if i.name not in inits)
    dims = first.type.tensor_type.shape.dim
    return bool(dims) and dims[0].HasField("dim_value")


def make_batch_dynamic(data: bytes) -> tuple[bytes, bool]:
    """(model bytes, batch is dynamic): the leading dimension of the first input and every output made symbolic when
    ONNX Runtime then runs a batch of 2 like two batches of 1; else the model as it was and False."""
    import onnx
    import onnxruntime as ort

    model = onnx.load_from_string(data)
    if not onnx_batch_fixed(model):
        return data, True
    inits = {i.name for i in model.graph.initializer}
    first = next(i for i in model.graph.input if i.name not in inits)
    shape = [d.dim_value or 1 for d in first.type.tensor_type.shape.dim]
    for vi in [first, *model.graph.output]:
        dims = vi.type.tensor_type.shape.dim
        if dims and dims[0].HasField("dim_value"):
            dims[0].dim_param = "batch"
    del model.graph.value_info[:]  # intermediate shapes inferred at batch 1
    _free_reshape_batch(model)
    candidate = model.SerializeToString()
    x = np.random.default_rng(0).standard_normal((2, *shape[1:])).astype(np.float32)
    so = ort.SessionOptions()
    so.log_severity_level = 4  # a failed check is an answer here, not an error to print
    try:
        two = ort.InferenceSession(candidate, so, providers=["CPUExecutionProvider"]).run(None, {first.name: x})[0]
        old = ort.InferenceSession(data, so, providers=["CPUExecutionProvider"])
        ones = np.concatenate([old.run(None, {first.name: x[i : i + 1]})[0] for i in range(2)])
        if two.shape == ones.shape and np.allclose(two, ones, atol=1e-4, rtol=1e-4):
            return candidate, True
    except Exception:  # noqa: BLE001 - the graph hard-codes its batch (e.g. in a Reshape)
        pass
    return data, False


def _free_reshape_batch(model: Any) -> int:
    """Reshape targets that spell the batch out as 1 (a flatten exported from a batch-1 example: [1, 32]) get −1 there
    (inferred: the batch) when no other dimension is −1, else 0 ("the input's own size", without ``allowzero``).
    Returns how many were changed. Only a hint: :func:`make_batch_dynamic` keeps the result only if the outputs
    check."""
    from onnx import numpy_helper

    consts = {i.name: i for i in model.graph.initializer}
    for n in model.graph.node:
        if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value":
            consts[n.output[0]] = n.attribute[0].t
    changed = 0
    for n in model.graph.node:
        if n.op_type != "Reshape" or len(n.input) < 2 or n.input[1] not in consts:
            continue
        t = consts[n.input[1]]
        shape = numpy_helper.to_array(t).copy()
        if shape.ndim != 1 or not len(shape) or shape[0] != 1:
            continue
        if -1 not in shape:
            shape[0] = -1
        elif any(a.name == "allowzero" and a.i == 1 for a in n.attribute):
            continue  # 0 would mean a literal zero here
        else:
            shape[0] = 0
        t.CopyFrom(numpy_helper.from_array(shape.astype(np.int64), t.name))
        changed += 1
    return changed
