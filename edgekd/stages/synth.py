"""Stage ``synth`` (data-free): images synthesized from the teacher alone, for distillation and calibration.

Runs when no real data is given, or with ``synth.mix`` to add synthetic samples to a few real ones. Writes
``00-synth/synth.npz`` (x, y = the teacher's top-1), a preview grid and a JSON record; adversarial presets also keep
the student the game trained (``dfad_student.pt``), which the distill stage then ships as is.
"""

from __future__ import annotations

from typing import Any

from edgekd import progress
from edgekd.errors import StageError
from edgekd.rundir import StageResult
from edgekd.runner import Stage, register


def is_adversarial(method: str) -> bool:
    """Lazy: the synthesis presets live under edgekd.data, which imports torch (the device-side runner must not)."""
    from edgekd.data.synth.presets import is_adversarial as _is_adv

    return _is_adv(method)


def uses_student(method: str) -> bool:
    """True for presets that need a student during synthesis: the adversarial games and Adaptive DeepInversion."""
    from edgekd.data.synth.presets import get_preset

    return is_adversarial(method) or bool(get_preset(method).adi_weight)


@register
class Synth(Stage):
    name = "synth"

    def config(self, ctx, profile) -> dict[str, Any]:  # noqa: ANN001
        method = ctx.synth_method()
        cfg = {"synth": ctx.cfg.synth.model_dump(exclude={"mix", "holdout"}), "method": method,
               "input_shape": list(ctx.input_shape), "normalize": ctx.known_normalize()}
        if uses_student(method):  # the game trains (ADI: competes against) the pipeline's own student
            cfg["student"] = ctx.cfg.distill.model_dump(include={"student", "width", "depth", "seed"})
        return cfg

    def run(self, ctx, profile, key: str) -> StageResult:  # noqa: ANN001
        import torch

        from edgekd.data.synth import synthesize
        from edgekd.data.synth.engine import valid_range
        from edgekd.data.synth.io import write_set
        from edgekd.fileio import atomic_path

        s = ctx.cfg.synth
        method = ctx.synth_method()
        out = ctx.run.fresh_dir("synth", keep=("work",))
        norm = ctx.known_normalize()
        mean, std = (norm["mean"], norm["std"]) if norm else (None, None)
        student = recipe = None
        if uses_student(method):  # DFAD plays, and ADI competes, against the pipeline's student
            if ctx.cfg.distill.student == "auto":
                from edgekd.errors import ConfigError

                raise ConfigError(f"--student auto is chosen after synthesis, but {method} synthesizes against the "
                                  "student", "name the student (e.g. --student resnet-s), or pick --synth genie")
            torch.manual_seed(ctx.cfg.distill.seed)
            student, recipe = ctx.task.build_student(ctx.cfg.distill.student, ctx.input_shape, ctx.info,
                                                     ctx.cfg.distill.width, ctx.cfg.distill.depth)
        progress.log(f"synth: data-free, {s.n} images with {method} (no real data given)" if ctx.data_free
                     else f"synth: {s.n} images with {method}, mixed into the real training split")
        res = synthesize(ctx.teacher.module, s.n, ctx.input_shape[1:], ctx.num_classes, method=method, seed=s.seed,
                         valid_range=valid_range(mean, std), work_dir=out / "work", student=student,
                         iterations=s.iterations, batch_size=s.batch_size, lr=s.lr)
        if not res.meta["finite"]:
            raise StageError("synthetic images contain NaN/inf", "lower --synth-lr or the iterations")
        write_set(out / "synth.npz", out / "preview.png", out / "synth.json", res, mean, std,
                  title=f"{method}: {s.n} images, labels = teacher top-1")
        outputs = {"data": ctx.run.rel(out / "synth.npz"), "preview": ctx.run.rel(out / "preview.png"),
                   "report": ctx.run.rel(out / "synth.json")}
        if student is not None and is_adversarial(method):  # ADI's student only steered synthesis
            from edgekd.models.student import save_student

            with atomic_path(out / "dfad_student.pt") as tmp:
                save_student(str(tmp), student, recipe, {"input_shape": list(ctx.input_shape), "normalize": norm})
            outputs["dfad_student"] = ctx.run.rel(out / "dfad_student.pt")
        metrics = {k: res.meta[k] for k in ("method", "n", "seconds", "seconds_per_1000_images", "teacher_confidence_mean")}
        return StageResult(outputs, metrics)
