"""The pipeline's stages, one module each; importing this package registers them all (:data:`edgekd.runner.STAGES`).

    synth → distill → export → [qat] → quantize/<target> → lower/<target> → bench/<target>
"""

from edgekd.stages import bench, distill, export, lower, qat, quantize, synth  # noqa: F401

__all__ = ["bench", "distill", "export", "lower", "qat", "quantize", "synth"]
