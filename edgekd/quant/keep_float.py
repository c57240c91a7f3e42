"""Keep named layers of an already quantized model in float, without calibrating again.

The precision planner (:mod:`edgekd.quant.planner`) scores dozens of "these layers in float, the rest INT8"
variants; calibrating each from scratch (``quantize_static`` with ``nodes_to_exclude``, ``nncf.quantize`` with an
``ignored_scope``) costs a full PTQ run per variant — 75 to 290 s per model measured in ``benchmarks/planner.py``
before this module. The ranges a calibration finds for the other layers do not depend on which layers are kept
(calibration runs the float model; only NNCF's bias correction of the neighbours would shift a little), so every
variant is the one INT8 model with the named layers' quantizers removed and their float weights put back. NNCF's ``quantize_with_accuracy_control`` reverts layers the same way
(its ``revert_operations_to_floating_point_precision``, an internal API, OpenVINO and ONNX backends only); this is
our own small version of it, for both runtimes, so that the planner's variants and the shipped plan are the same
graph edit (the quantize stage builds a plan with :func:`float_inputs` / :func:`float_layers_openvino` too).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence

from edgekd.quant.ptq import WEIGHTED_OPS, ort_preprocess

#: (layer names, output path) → the variant's path
Reverter = Callable[[Sequence[str], Path], Path]


def float_inputs(model, original, names: Sequence[str]) -> int:  # noqa: ANN001
    """Make the named layers of a QDQ ``model`` compute in float: each input of theirs (activations, and the weights
    and bias ``quantize_static`` made INT8) is wired back to the float tensor of the ``original``
    (pre-quantization) graph, recomputing in float any non-weighted op between
    them and the nearest weighted layer that feeds only them (a ReLU, a pool, a reshape). Q/DQ pairs and ops nobody
    reads any more are dropped. Returns the number of inputs rewired.

    Why by hand: ``nodes_to_exclude`` keeps a node out of ``quantize_static``, but its input tensor is still
    quantized where its producer is (ORT puts a Q/DQ pair on every quantized node's output and folds a following ReLU
    into it), so the layer keeps reading INT8-rounded values — keeping a layer with an outlier-wide input "in float"
    then restores nothing. NNCF quantizes only the inputs of weighted ops, so its ``ignored_scope`` already means
    this; TensorRT builds a layer without Q/DQ around it in FP16."""
    from onnx import NodeProto

    g, og = model.graph, original.graph
    o_producer = {o: n for n in og.node for o in n.output}
    o_consumers: dict[str, list] = {}
    for n in og.node:
        for t in n.input:
            o_consumers.setdefault(t, []).append(n)
    o_inits = {i.name: i for i in og.initializer}
    q_inits = {i.name for i in g.initializer}
    graph_outputs = {o.name for o in g.output}
    wanted = set(names)
    floating = {n.name for n in og.node if n.name in wanted}
    # grow: a non-weighted op whose outputs feed only floating layers is recomputed in float too
    grew = True
    while grew:
        grew = False
        for n in og.node:
            if n.name in floating or n.op_type in WEIGHTED_OPS or not n.name or set(n.output) & graph_outputs:
                continue
            readers = [c for o in n.output for c in o_consumers.get(o, [])]
            if readers and all(c.name in floating for c in readers):
                floating.add(n.name)
                grew = True
    made: dict[str, str] = {}
    added: list = []
    by_name = {n.name: n for n in g.node}

    def restore(t: str) -> str:
        """The name, in ``model``, of a tensor holding the original graph's float value of ``t``."""
        if t in made:
            return made[t]
        p = o_producer.get(t)
        if p is None:  # a graph input or an initializer
            if t in o_inits and t not in q_inits and not any(t in n.output for n in g.node):
                g.initializer.append(o_inits[t])
                q_inits.add(t)
            return t
        if p.name in by_name and (p.name not in floating or p.name in wanted):
            # the same node in the quantized graph computes the same float value; its output may have been renamed
            # (ORT folds a ReLU after a quantized layer into the Q/DQ pair and gives the layer the ReLU's output name)
            return by_name[p.name].output[list(p.output).index(t)]
        # an op recomputed in float (it feeds only float layers), or one the quantizer folded away (that ReLU)
        copy = NodeProto()
        copy.CopyFrom(p)
        copy.name = f"{p.name}/float"
        del copy.input[:]
        copy.input.extend(restore(i) if i else i for i in p.input)
        del copy.output[:]
        copy.output.extend(f"{o}/float" for o in p.output)
        for o in p.output:
            made[o] = f"{o}/float"
        added.append(copy)
        return made[t]

    rewired = 0
    for name in wanted:
        src, dst = next((n for n in og.node if n.name == name), None), by_name.get(name)
        if src is None or dst is None:
            continue
        for i, t in enumerate(src.input):
            if not t:
                continue
            r = restore(t)  # an initializer (weights, bias) comes back as the original float tensor
            if dst.input[i] != r:
                dst.input[i] = r
                rewired += 1
    g.node.extend(added)
    pruned = True
    while pruned:  # drop what nobody reads any more (the bypassed Q/DQ pairs, the int8-fed copies of floated ops)
        used = {t for n in g.node for t in n.input} | graph_outputs
        dead = [n for n in g.node if not any(o in used for o in n.output)]
        for n in dead:
            g.node.remove(n)
        pruned = bool(dead)
    used = {t for n in g.node for t in n.input} | graph_outputs
    live = [i for i in g.initializer if i.name in used]  # the INT8 weights of the kept layers, now unread
    if len(live) != len(g.initializer):
        del g.initializer[:]
        g.initializer.extend(live)
    _topological_sort(g)
    return rewired


def _topological_sort(g) -> None:  # noqa: ANN001
    """Reorder ``g.node`` so that every node comes after the producers of its inputs (ONNX requires it)."""
    producer = {o: i for i, n in enumerate(g.node) for o in n.output}
    order: list[int] = []
    state = [0] * len(g.node)

    def visit(i: int) -> None:
        stack = [(i, False)]
        while stack:
            j, done = stack.pop()
            if done:
                if state[j] != 2:
                    state[j] = 2
                    order.append(j)
                continue
            if state[j]:
                continue
            state[j] = 1
            stack.append((j, True))
            stack.extend((producer[t], False) for t in g.node[j].input if t in producer and not state[producer[t]])

    for i in range(len(g.node)):
        visit(i)
    nodes = [g.node[i] for i in order]
    del g.node[:]
    g.node.extend(nodes)


def ort_reverter(int8_onnx: Path, fp32_onnx: Path, work: Path) -> Reverter:
    """A function making ONNX variants of the QDQ model ``int8_onnx`` with the named layers in float (names as
    ``quant_pre_process`` of ``fp32_onnx`` gives them, i.e. as ``nodes_to_exclude`` takes them)."""
    import onnx

    pre = work / "fp32-preprocessed.onnx"
    work.mkdir(parents=True, exist_ok=True)
    ort_preprocess(fp32_onnx, pre)
    original = onnx.load(str(pre))
    quantized = onnx.load(str(int8_onnx))

    def revert(names: Sequence[str], out: Path) -> Path:
        q = onnx.ModelProto()
        q.CopyFrom(quantized)
        float_inputs(q, original, names)
        out.parent.mkdir(parents=True, exist_ok=True)
        onnx.save(q, str(out))
        return out

    return revert


def float_layers_openvino(model: Any, original: Any, names: Sequence[str]) -> int:
    """Put the named operations of an NNCF-quantized OpenVINO ``model`` back in float, in place: every
    FakeQuantize in front of them is bypassed (for them only: another reader of the same quantizer keeps it), their
    compressed INT8 weights (Constant → Convert → [Subtract] → Multiply) are replaced by the ``original`` model's
    float constants, and a bias Add right after them gets its original (not bias-corrected) constant back. Returns
    the number of inputs changed.

    What the OpenVINO CPU plugin then runs: its low-precision transformations find no FakeQuantize on the
    operation's inputs and execute it in FP32, the rest in INT8 (the same as NNCF's ``ignored_scope`` up to where
    NNCF would have put the neighbouring quantizers)."""
    from openvino import opset13 as ops

    q_ops = {op.get_friendly_name(): op for op in model.get_ops()}
    o_ops = {op.get_friendly_name(): op for op in original.get_ops()}
    changed = 0
    for name in names:
        op, ref = q_ops.get(name), o_ops.get(name)
        if op is None or ref is None:
            continue
        for k in range(op.get_input_size()):
            src = op.input(k).get_source_output()
            o_src = ref.input(k).get_source_output().get_node()
            if o_src.get_type_name() == "Constant":  # weights: the original float constant
                if src.get_node().get_type_name() != "Constant" or src.get_node().get_element_type() != o_src.get_element_type():
                    op.input(k).replace_source_output(ops.constant(o_src.get_data().copy()).output(0))
                    changed += 1
            else:  # activations: the value before the quantizer
                # until none is left: NNCF may stack two (a pooled value quantized before and after ReduceMean)
                while (reader := _quantizer_reader(op.input(k))) is not None:
                    reader.replace_source_output(reader.get_source_output().get_node().input(0).get_source_output())
                    changed += 1
        for reader in op.output(0).get_target_inputs():  # the bias after a conv or matmul (BiasCorrection changed it)
            add = reader.get_node()
            o_add = o_ops.get(add.get_friendly_name())
            if add.get_type_name() != "Add" or o_add is None or o_add.get_type_name() != "Add":
                continue
            for k in range(2):
                c, oc = add.input(k).get_source_output().get_node(), o_add.input(k).get_source_output().get_node()
                if c.get_type_name() == "Constant" and oc.get_type_name() == "Constant" and \
                        tuple(c.get_output_shape(0)) == tuple(oc.get_output_shape(0)):
                    add.input(k).replace_source_output(ops.constant(oc.get_data().copy()).output(0))
    model.validate_nodes_and_infer_types()
    return changed


#: OpenVINO operations NNCF moves a quantizer above (they commute with per-tensor quantization: layout, pooling)
OV_AGNOSTIC_OPS = {"Reshape", "Transpose", "Squeeze", "Unsqueeze", "MaxPool", "AvgPool", "ReduceMean", "ReduceMax",
                   "StridedSlice", "Slice", "Gather", "DepthToSpace", "SpaceToDepth"}


def _quantizer_reader(port: Any) -> Any:
    """The input that reads the FakeQuantize quantizing ``port``'s value, found by walking up through the
    quantization-agnostic ops NNCF propagates quantizers across (:data:`OV_AGNOSTIC_OPS`) as long as each of them
    feeds only this path (bypassing a shared one would change other layers); None when there is none."""
    while True:
        node = port.get_source_output().get_node()
        kind = node.get_type_name()
        if kind == "FakeQuantize":
            return port
        if kind not in OV_AGNOSTIC_OPS or len(node.output(0).get_target_inputs()) != 1:
            return None
        port = node.input(0)


def openvino_reverter(int8_xml: Path, fp32_onnx: Path) -> Reverter:
    """A function making OpenVINO IR variants of ``int8_xml`` with the named operations in float."""
    import openvino as ov

    core = ov.Core()
    original = ov.convert_model(str(fp32_onnx))
    quantized = core.read_model(str(int8_xml))

    def revert(names: Sequence[str], out: Path) -> Path:
        m = quantized.clone()
        float_layers_openvino(m, original, names)
        save_ir(m, out)
        return out

    return revert


def save_ir(model: Any, out_xml: Path) -> None:
    """Write xml and bin under temporary names, then rename both (the pair is the artifact)."""
    import os

    import openvino as ov

    out_xml.parent.mkdir(parents=True, exist_ok=True)
    tmp_xml = out_xml.with_name(f".{out_xml.stem}.tmp.xml")
    ov.save_model(model, str(tmp_xml), compress_to_fp16=False)
    os.replace(tmp_xml.with_suffix(".bin"), out_xml.with_suffix(".bin"))
    os.replace(tmp_xml, out_xml)
