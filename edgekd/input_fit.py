"""What the pipeline does with a model whose input is not an image (issue #19), decided from the config and the
model's input shape before the run directory is touched."""

from __future__ import annotations

from edgekd import progress
from edgekd.config import PipelineConfig
from edgekd.errors import UsageError


def fit_to_input(cfg: PipelineConfig, shape: tuple[int, ...]) -> PipelineConfig:
    """For a model whose input is not an image (audio, sequences, tabular rows): the default student becomes the 1-D
    ``conv1d-s`` (said; ``--student auto`` times the 1-D presets), and what only works on images is refused in one
    line — a 2-D zoo student named by the user, data-free synthesis (it makes images), QAT (it quantizes Conv2d and
    Linear). Image models pass unchanged."""
    from edgekd.data.arrays import is_image_shape
    from edgekd.models.zoo import MODELS, input_kind

    sample = tuple(shape[1:])
    if is_image_shape(sample):
        return cfg
    what = f"this model's input is {sample} per sample, not an image"
    if cfg.data.path is None:
        raise UsageError(f"data-free synthesis makes images; {what}", "pass real data with --data")
    d = cfg.distill
    if d.enabled and cfg.quantize.qat != "none":
        raise UsageError(f"QAT quantizes image students' Conv2d layers; {what}", "drop --qat (post-training "
                         "quantization works on any input)")
    if not d.enabled or ":" in d.student:
        return cfg
    if len(sample) > 2:
        raise UsageError(f"the zoo's students take images (C, H, W) or sequences (L,) / (C, L); {what}",
                         "pass your own student (--student file.py:factory), or --no-distill")
    name = d.student.removeprefix("zoo:")
    if name != "auto" and name in MODELS and input_kind(name) == "image":
        if "student" in d.model_fields_set:
            raise UsageError(f"--student {d.student} takes images; {what}",
                             "use a 1-D student: --student conv1d-s (or conv1d-xs, conv1d-m, conv1d-l)")
        cfg.distill = d.model_copy(update={"student": "conv1d-s"})
        progress.log(f"student: conv1d-s (the default for inputs that are not images: {sample}; --student to choose)")
    return cfg
