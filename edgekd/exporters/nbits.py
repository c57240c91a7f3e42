"""Lower 4-bit (and ternary) Linear weights to ONNX Runtime's ``com.microsoft::MatMulNBits`` kernel.

After QAT, a ≤4-bit Linear weight is stored as int8 codes k ∈ [−7, 7] with one scale per output channel, feeding
``DequantizeLinear → MatMul``. MatMulNBits computes Y = A · dequant(B)ᵀ with B block-quantized along K:
dequant = (code − zero_point)·scale, 4-bit codes packed two per byte, low nibble first, default zero point 8. With
code = k + 8 and the channel's scale repeated for every K block, the rewrite is exact (no re-quantization), and ORT
runs its 4-bit kernel instead of an int8 one. Only MatMul is eligible (ORT has no n-bit convolution); Gemm and Conv
layers keep their int8 Q/DQ. Written by hand because ORT's ``MatMulNBitsQuantizer`` re-quantizes float weights
(RTN/HQQ/GPTQ) and would not keep the QAT-trained values.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper


def _pack4(codes: np.ndarray) -> np.ndarray:
    """(N, K_padded) codes in [0, 15] → (N, K/2) bytes, low nibble first."""
    lo, hi = codes[:, 0::2], codes[:, 1::2]
    return (lo | (hi << 4)).astype(np.uint8)


def to_matmul_nbits(model: onnx.ModelProto, block_size: int = 32) -> int:
    """Rewrite eligible ``DequantizeLinear(int8 W[K,N], axis=1) → MatMul`` pairs; returns how many."""
    from edgekd.exporters.qdq import _const_map, prune

    g = model.graph
    inits = {i.name: i for i in g.initializer}
    consts = _const_map(g)
    producers = {o: n for n in g.node for o in n.output}
    consumers: dict[str, int] = {}
    for n in g.node:
        for i in n.input:
            consumers[i] = consumers.get(i, 0) + 1
    replaced, drop = 0, set()
    new_nodes = []
    for n in g.node:
        dq = producers.get(n.input[1]) if n.op_type == "MatMul" and len(n.input) == 2 else None
        if dq is None or dq.op_type != "DequantizeLinear" or consumers.get(dq.output[0], 0) != 1 or dq.input[0] not in inits:
            new_nodes.append(n)
            continue
        q = numpy_helper.to_array(inits[dq.input[0]])
        axis = next((a.i for a in dq.attribute if a.name == "axis"), 1)
        scale = consts.get(dq.input[1])
        if q.dtype != np.int8 or q.ndim != 2 or axis != 1 or scale is None or scale.size != q.shape[1] or np.abs(q).max() > 7:
            new_nodes.append(n)
            continue
        k, nn_ = q.shape
        blocks = -(-k // block_size)
        codes = np.full((nn_, blocks * block_size), 8, np.uint8)  # pad with the zero code
        codes[:, :k] = (q.T.astype(np.int16) + 8).astype(np.uint8)
        packed = _pack4(codes).reshape(nn_, blocks, block_size // 2)
        scales = np.repeat(scale.astype(np.float32).reshape(nn_, 1), blocks, axis=1).reshape(-1)
        base = f"{dq.input[0]}_nbits"
        g.initializer.extend([numpy_helper.from_array(packed, base), numpy_helper.from_array(scales, f"{base}_scales")])
        new_nodes.append(helper.make_node("MatMulNBits", [n.input[0], base, f"{base}_scales"], list(n.output), domain="com.microsoft",
                                          name=f"{n.name or base}_MatMulNBits", K=k, N=nn_, bits=4, block_size=block_size))
        drop.add(id(dq))
        replaced += 1
    if replaced:
        prune(g, [n for n in new_nodes if id(n) not in drop])
        if not any(o.domain == "com.microsoft" for o in model.opset_import):
            model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    return replaced
