"""The INT8 gate, one rule for every backend and every place it is applied (issue #16).

Keep INT8 only if it is within the accuracy budget of the higher-precision reference (FP16 on TensorRT, FP32 on CPU
runtimes) and at least ``min_speedup`` times faster than it; otherwise ship the reference. Each half is applied
where its evidence exists: the accuracy half when the bundle or artifact is made (ONNX Runtime's reference kernels
compute what the engine will), the speed half where the device times both engines (``build.sh`` embeds this very
function's source, so the device decides by the same rule), and both when bench measures both here.

    decide(ref_metric=0.90, int8_metric=0.895, ref_p50=1.0, int8_p50=0.5, budget_points=1.0, min_speedup=1.1)
    → ("int8", "INT8 is 2.00× faster than FP16 and within 1 pt (-0.50 pt)")

Pure Python with no imports, so that :mod:`edgekd.backends.tensorrt` can copy it into the bundle.
"""


def decide(ref_metric=None, int8_metric=None, ref_p50=None, int8_p50=None, budget_points=1.0, min_speedup=1.0,  # noqa: ANN001, ANN201
           reference="fp16"):
    """(precision, reason): ``"int8"`` or ``reference``. A metric or latency that is None is not judged here."""
    ref_name = reference.upper()
    drop = None
    if ref_metric is not None and int8_metric is not None:
        drop = 100 * (ref_metric - int8_metric)
        if drop > budget_points:
            return reference, f"INT8 loses {drop:.2f} pt vs {ref_name} (budget {budget_points:g} pt)"
    if ref_p50 is not None and int8_p50 is not None:
        speedup = ref_p50 / int8_p50
        if speedup < min_speedup:
            return reference, f"INT8 is only {speedup:.2f}× faster than {ref_name} (needs ≥ {min_speedup:g}×)"
        tail = f" and within {budget_points:g} pt ({-drop:+.2f} pt)" if drop is not None else ""
        return "int8", f"INT8 is {speedup:.2f}× faster than {ref_name}{tail}"
    if drop is not None:
        return "int8", f"INT8 within the accuracy budget ({-drop:+.2f} pt vs {ref_name}, budget {budget_points:g} pt)"
    return "int8", "no evidence against INT8 yet"
