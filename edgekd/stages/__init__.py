"""The pipeline's stages, one module each; importing this package registers them all (:data:`edgekd.runner.STAGES`).

    synth → distill → export → [qat] → [sensitivity/<target> → plan/<target>] → quantize/<target> → lower/<target>
    → bench/<target>
"""

from edgekd.stages import bench, distill, export, lower, plan, qat, quantize, sensitivity, synth  # noqa: F401

__all__ = ["bench", "distill", "export", "lower", "plan", "qat", "quantize", "sensitivity", "synth"]
