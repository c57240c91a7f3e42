"""The planner's cheap ranking proxy (issue #18): how much quantization error each layer of an INT8 model adds, from
one pass of the INT8 model and one of the FP32 model with every layer's input and output exposed.

For a layer L with output y_L, the outputs u_L,k of the weighted layers it reads from (through quantizers and ops
without weights — what keeping L in float rewires it to), and the FP32 model's values y*, u* of the same tensors,
on the samples S:

    e(t)     = mean over channels c of  Σ_S ‖t_c − t*_c‖² / Σ_S ‖t*_c‖²     (per-channel 1/SQNR against FP32)
    added(L) = e(y_L) − max_k e(u_L,k)                                  (the error L's own quantizers add)

The error reaching L's inputs is charged to the layers upstream; what is left is the noise of the quantizers
between them and L (on its inputs, and on a ReLU or pool in between when the runtime quantizes it) and of its
weights, as it shows at L's output — after L mixed its channels, which is where a per-tensor input range too wide
for most channels (an outlier channel the weights scale back down) shows as a large error while the quantizer's own
SQNR, dominated by the outlier, looks fine. Per channel (the channel axis of a convolution, the last axis of a
MatMul), because one loud channel would otherwise hide the error of all the quiet ones — the stem of a detector whose
output carries such an outlier channel adds 1e-4 of the tensor's energy but 3 % per channel. Keeping L in float
(:mod:`edgekd.quant.keep_float`) removes exactly those quantizers, so ``added`` orders the layers like the measured
one-variant-per-layer ranking at the cost of two passes instead of one per layer. Once a layer destroys the signal,
every later layer's ``added`` is noise on top of it; the planner therefore ranks again on each candidate it keeps
(:func:`edgekd.quant.planner.greedy_candidates` with ``rerank``), as NNCF's accuracy control ranks again after each
revert. The proxy only orders the search — every plan is judged on the deployed artifact's metric.

Why by hand: ONNX Runtime has no per-layer error tool for QDQ models (``onnxruntime.quantization.qdq_loss_debug``
compares activations of matching names, but needs the float model re-saved with every tensor an output and does not
attribute error to a layer); NNCF's ranking in ``quantize_with_accuracy_control`` reverts one group at a time. Both
runtimes here take extra outputs cheaply, so the statistics are accumulated batch by batch (no activations kept).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np

#: (tensor in the INT8 model, the same value in the FP32 model): each side names something its runtime can expose
Tap = tuple[Any, Any]


class ErrorSums:
    """Per tapped tensor and channel: Σ(t − t*)² and Σ t*², accumulated over batches."""

    def __init__(self, axes: Sequence[int]) -> None:
        self.axes = list(axes)
        self.err: list[np.ndarray | None] = [None] * len(axes)
        self.ref: list[np.ndarray | None] = [None] * len(axes)

    def add(self, i: int, value: np.ndarray, reference: np.ndarray) -> None:
        a, b = np.asarray(value, np.float32), np.asarray(reference, np.float32)
        if a.shape != b.shape:
            raise ValueError(f"tapped tensor {i}: INT8 shape {a.shape}, FP32 {b.shape}")
        axis = self.axes[i] % max(a.ndim, 1) if a.ndim else 0
        d = np.moveaxis(a - b, axis, 0).reshape(a.shape[axis] if a.ndim else 1, -1)
        r = np.moveaxis(b, axis, 0).reshape(d.shape)
        err, ref = np.einsum("ij,ij->i", d, d, dtype=np.float64), np.einsum("ij,ij->i", r, r, dtype=np.float64)
        if self.err[i] is None:
            self.err[i], self.ref[i] = err, ref
        else:
            self.err[i] += err  # type: ignore[operator]
            self.ref[i] += ref  # type: ignore[operator]

    def relative(self) -> np.ndarray:
        """Per tensor: the mean over its channels of Σ(t − t*)²/Σ t*² — per channel, so that a channel carrying
        little energy (the ones a too-wide range rounds away) counts as much as one carrying a lot; channels without
        signal (< 1e-12 of the strongest) are left out."""
        out = np.zeros(len(self.axes))
        for i, (e, r) in enumerate(zip(self.err, self.ref)):
            if e is None or r is None or not r.size:
                continue
            live = r > 1e-12 * max(float(r.max()), 1e-30)
            out[i] = float((e[live] / r[live]).mean()) if live.any() else 0.0
        return out


def added_errors(layers: Sequence[str], outputs: dict[str, int], inputs: dict[str, list[int]], rel: np.ndarray
                 ) -> list[dict[str, Any]]:
    """Per layer: ``output_error`` e(y_L), ``input_error`` max_k e(u_L,k) over the weighted layers upstream (0 for a
    layer that reads only the model's inputs) and ``added_error`` = their difference, from the tapped tensors'
    relative errors ``rel`` (``outputs``/``inputs``: indices into it)."""
    rows = []
    for name in layers:
        if name not in outputs:
            continue
        out = float(rel[outputs[name]])
        inp = max((float(rel[i]) for i in inputs.get(name, [])), default=0.0)
        rows.append({"name": name, "output_error": out, "input_error": inp, "added_error": out - inp})
    return rows


def _batches(x: np.ndarray, batch: int) -> Iterable[np.ndarray]:
    for i in range(0, len(x), batch):
        yield np.ascontiguousarray(x[i: i + batch], np.float32)


def _accumulate(run_int8: Callable[[np.ndarray], list[np.ndarray]], run_fp32: Callable[[np.ndarray], list[np.ndarray]],
                axes: Sequence[int], x: np.ndarray, batch: int) -> np.ndarray:
    sums = ErrorSums(axes)
    for xb in _batches(x, batch):
        for i, (a, b) in enumerate(zip(run_int8(xb), run_fp32(xb))):
            sums.add(i, a, b)
    return sums.relative()


# ---------------------------------------------------------------- ONNX Runtime (QDQ models of quantize_static)

def ort_layer_errors(int8_onnx: Path, fp32_onnx: Path, layers: Sequence[str], x: np.ndarray, work: Path,
                     batch: int = 32) -> list[dict[str, Any]]:
    """:func:`added_errors` of the named layers of a QDQ model (names as :func:`edgekd.quant.ptq.ort_plan_layers`
    gives them), both models run on ONNX Runtime's reference kernels (graph optimisations off: the QDQ arithmetic as
    written, no fusion around the exposed tensors).

    A layer's input error is taken at the outputs of the weighted layers upstream of it (through Q/DQ pairs and ops
    without weights); every tapped tensor is matched to the FP32 graph by the node that produces it (ORT may rename
    a tensor when it folds a ReLU into the quantizer, never a node)."""
    import onnx

    from edgekd.quant.ptq import WEIGHTED_OPS, ort_preprocess

    work.mkdir(parents=True, exist_ok=True)
    pre = work / "fp32-preprocessed.onnx"
    ort_preprocess(fp32_onnx, pre)
    q, f = onnx.load(str(int8_onnx)), onnx.load(str(pre))
    q_prod = {t: n for n in q.graph.node for t in n.output}
    f_nodes = {n.name: n for n in f.graph.node}
    q_nodes = {n.name: n for n in q.graph.node}
    inits = {i.name for i in q.graph.initializer} | {i.name for i in f.graph.initializer}

    taps: list[Tap] = []
    axes: list[int] = []
    index: dict[Tap, int] = {}

    def tap(q_tensor: str) -> int | None:
        """The tap of a layer's output ``q_tensor`` with its FP32 counterpart (same producing node, same output
        slot)."""
        p = q_prod[q_tensor]
        fp = f_nodes.get(p.name)
        if fp is None:
            return None
        pair = (q_tensor, fp.output[list(p.output).index(q_tensor)])
        if pair not in index:
            index[pair] = len(taps)
            taps.append(pair)
            axes.append(1 if p.op_type.startswith("Conv") else -1)  # channels: NC… for convolutions, last for MatMul
        return index[pair]

    def upstream(tensor: str) -> list[str]:
        """The weighted layers' outputs ``tensor`` is computed from, through Q/DQ pairs and ops without weights (a
        ReLU, a pool, a residual Add): what keeping the reading layer in float rewires it to
        (:func:`edgekd.quant.keep_float.float_inputs`), so the quantizers in between are charged to that layer."""
        found, stack, seen = [], [tensor], set()
        while stack:
            t = stack.pop()
            p = q_prod.get(t)
            if not t or t in inits or t in seen or p is None or p.op_type == "Constant":
                continue  # a graph input, a constant, or walked already
            seen.add(t)
            if p.op_type in WEIGHTED_OPS:
                found.append(t)
            else:
                stack.extend(p.input)
        return found

    outputs: dict[str, int] = {}
    inputs: dict[str, list[int]] = {}
    for name in layers:
        node = q_nodes.get(name)
        if node is None or name not in f_nodes:
            continue
        t = tap(node.output[0])
        if t is None:
            continue
        outputs[name] = t
        inputs[name] = [i for tensor in node.input for u in upstream(tensor) if (i := tap(u)) is not None]

    def exposing(model: Any, names: list[str], path: Path) -> Path:
        m = onnx.ModelProto()
        m.CopyFrom(model)
        del m.graph.output[:]  # only the taps: the original outputs would be computed for nothing
        m.graph.output.extend(onnx.helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, None) for n in names)
        onnx.save(m, str(path))
        return path

    from edgekd.runtimes import ort_session

    qs = ort_session(exposing(q, [a for a, _ in taps], work / "int8-taps.onnx"), graph_optimization="disable")
    fs = ort_session(exposing(f, [b for _, b in taps], work / "fp32-taps.onnx"), graph_optimization="disable")
    qi, fi = qs.get_inputs()[0], fs.get_inputs()[0]
    fixed = isinstance(qi.shape[0], int) or isinstance(fi.shape[0], int)
    rel = _accumulate(lambda xb: qs.run(None, {qi.name: xb}), lambda xb: fs.run(None, {fi.name: xb}), axes, x,
                      1 if fixed else batch)
    return added_errors(layers, outputs, inputs, rel)


# ---------------------------------------------------------------- OpenVINO (NNCF-quantized IR)

def openvino_layer_errors(int8_xml: Path, fp32_onnx: Path, layers: Sequence[str], x: np.ndarray,
                          settings: dict[str, Any] | None = None, batch: int = 32) -> list[dict[str, Any]]:
    """:func:`added_errors` of the named operations of an NNCF-quantized IR (names as
    :func:`edgekd.quant.ptq.nncf_plan_layers` gives them) against ``ov.convert_model`` of the FP32 ONNX (the same
    operation names). A layer's output is read after its bias Add when it has one (bias correction changes it); its
    input error at the outputs of the weighted layers upstream of it (through FakeQuantize and ops without
    weights)."""
    import openvino as ov

    from edgekd.quant.ptq import OV_WEIGHTED_OPS

    core = ov.Core()
    q = core.read_model(str(int8_xml))
    f = ov.convert_model(str(fp32_onnx))
    q_ops = {op.get_friendly_name(): op for op in q.get_ops()}
    f_ops = {op.get_friendly_name(): op for op in f.get_ops()}

    taps: list[Tap] = []
    axes: list[int] = []
    index: dict[tuple[str, int], int] = {}

    def tap(port: Any, axis: int) -> int | None:
        """The tap of an output port of the INT8 model with the FP32 model's output of the same operation."""
        node = port.get_node()
        fop = f_ops.get(node.get_friendly_name())
        if fop is None or port.get_index() >= fop.get_output_size():
            return None
        key = (node.get_friendly_name(), port.get_index())
        if key not in index:
            index[key] = len(taps)
            taps.append((port, fop.output(port.get_index())))
            axes.append(axis)
        return index[key]

    def layer_output(node: Any) -> tuple[Any, int] | None:
        """(the output a weighted layer's value is read at, its channel axis) when ``node`` is a weighted operation
        or the bias Add right after one (after the bias: bias correction changes it); None otherwise."""
        kind = node.get_type_name()
        if kind == "Add":
            srcs = [node.input(k).get_source_output().get_node() for k in range(2)]
            if any(n.get_type_name() == "Constant" for n in srcs):
                w = next((n for n in srcs if n.get_type_name() in OV_WEIGHTED_OPS), None)
                return (node.output(0), -1 if w.get_type_name() == "MatMul" else 1) if w is not None else None
            return None
        return (node.output(0), -1 if kind == "MatMul" else 1) if kind in OV_WEIGHTED_OPS else None

    def upstream(out: Any) -> list[tuple[Any, int]]:
        """The weighted layers' outputs ``out`` is computed from, through FakeQuantize and ops without weights:
        what keeping the reading layer in float leaves it reading, so the quantizers in between are its own."""
        found, stack, seen = [], [out], set()
        while stack:
            o = stack.pop()
            node = o.get_node()
            key = (node.get_friendly_name(), o.get_index())
            if key in seen or node.get_type_name() in ("Parameter", "Constant"):
                continue
            seen.add(key)
            lo = layer_output(node)
            if lo is not None:
                found.append(lo)
            else:
                stack.extend(node.input(k).get_source_output() for k in range(node.get_input_size()))
        return found

    outputs: dict[str, int] = {}
    inputs: dict[str, list[int]] = {}
    for name in layers:
        op, ref = q_ops.get(name), f_ops.get(name)
        if op is None or ref is None:
            continue
        readers = [r.get_node() for r in op.output(0).get_target_inputs()]
        own = layer_output(readers[0]) if len(readers) == 1 else None
        t = tap(*(own or layer_output(op)))  # type: ignore[misc]
        if t is None:
            continue
        outputs[name] = t
        ins = []
        for k in range(op.get_input_size()):
            if ref.input(k).get_source_output().get_node().get_type_name() == "Constant":
                continue  # weights
            ins += [i for port, axis in upstream(op.input(k).get_source_output()) if (i := tap(port, axis)) is not None]
        inputs[name] = ins

    def compiled(model: Any, ports: list[Any]) -> Any:
        m = ov.Model(list(ports), model.get_parameters(), "taps")
        cfg: dict[str, Any] = {"PERFORMANCE_HINT": "THROUGHPUT", "INFERENCE_PRECISION_HINT": "f32"}
        if settings and settings.get("threads"):
            cfg["INFERENCE_NUM_THREADS"] = settings["threads"]
        return core.compile_model(m, "CPU", cfg)

    qc, fc = compiled(q, [a for a, _ in taps]), compiled(f, [b for _, b in taps])
    shape = qc.inputs[0].get_partial_shape()
    fixed = shape.rank.is_static and shape[0].is_static and shape[0].get_length() == 1

    def runner(c: Any) -> Callable[[np.ndarray], list[np.ndarray]]:
        req = c.create_infer_request()

        def run(xb: np.ndarray) -> list[np.ndarray]:
            res = req.infer({0: xb})
            return [np.asarray(res[o]) for o in c.outputs]

        return run

    rel = _accumulate(runner(qc), runner(fc), axes, x, 1 if fixed else batch)
    return added_errors(layers, outputs, inputs, rel)
