"""How many samples to push through a model in one inference call (torch-free: the worker uses it too).

A fixed 256 is fine for 28-px images but not at 224 px: a ResNet-18's first activations for 256 RGB images at 224
are 0.8 GB, and ONNX Runtime's arena keeps its high-water mark for the session's life (measured: 3.3 GB peak for a
600-image ``--no-distill`` run, issue #19). So the batch is capped by the input's size as well.
"""

from __future__ import annotations

import math
from typing import Sequence

#: input elements per call: 4 Mi floats (16 MB of input; a CNN's widest activations are a few times that)
ELEMENT_BUDGET = 1 << 22


def inference_batch(sample_shape: Sequence[int], most: int = 256, budget: int = ELEMENT_BUDGET) -> int:
    """``min(most, budget // elements per sample)``, at least 1."""
    per = max(1, math.prod(int(d) for d in sample_shape))
    return max(1, min(most, budget // per))
