"""Data-free synthesis: make calibration and distillation data from the teacher alone.

Presets (see :mod:`edgekd.data.synth.presets`): ``genie`` (default with BatchNorm), ``deepinversion``, ``zeroq``,
``dfad`` (default without BatchNorm), ``dfad-bn`` (DFAD with BN-statistics and class-balance terms), ``dfad-balanced`` (DFAD with the class-balance term only). Specs: ../shared/research/algorithms.md §2.
"""

from edgekd.data.synth.engine import SynthResult, choose_method, synthesize, teacher_fingerprint
from edgekd.data.synth.hooks import bn_layers
from edgekd.data.synth.losses import bn_statistics_gap
from edgekd.data.synth.presets import PRESETS, SynthPreset, get_preset

__all__ = ["PRESETS", "SynthPreset", "SynthResult", "bn_layers", "bn_statistics_gap", "choose_method", "get_preset",
           "synthesize", "teacher_fingerprint"]
