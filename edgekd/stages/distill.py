"""Stage ``distill``: train the student from the teacher on the data (``01-distill/student.pt``, ``history.json``).

Resumes from its last epoch checkpoint (``ckpt/last.pt``) when re-run with the same key. With distillation off
(``--no-distill``) it records the teacher's val score and ships no student: later stages use the teacher itself.
"""

from __future__ import annotations

from typing import Any

from edgekd import progress
from edgekd.fileio import write_json
from edgekd.rundir import StageResult
from edgekd.runner import Stage, register
from edgekd.stages.synth import is_adversarial


@register
class Distill(Stage):
    name = "distill"
    reads_data = True

    def needs(self, ctx, profile):  # noqa: ANN001, ANN201
        return [("synth", None)] if ctx.data_free or ctx.cfg.synth.mix else []

    def config(self, ctx, profile) -> dict[str, Any]:  # noqa: ANN001
        return {"distill": ctx.cfg.distill.model_dump()}

    def run(self, ctx, profile, key: str) -> StageResult:  # noqa: ANN001
        import torch

        from edgekd.fileio import atomic_path
        from edgekd.models.student import load_student, save_student
        from edgekd.models.zoo import count_params

        cfg = ctx.cfg.distill
        ckpt_dir = ctx.run.stage_dir("distill") / "ckpt"
        key_file = ckpt_dir / "key.txt"
        keep = ("ckpt",) if key_file.exists() and key_file.read_text() == key else ()
        out = ctx.run.fresh_dir("distill", keep=keep)
        ckpt_dir.mkdir(exist_ok=True)
        key_file.write_text(key)
        data, task = ctx.data, ctx.task.base  # training selects and reports with the task's own metric
        teacher = ctx.teacher.module
        t_val = task.evaluate(teacher, data.val.x, data.val.y, ctx.info)[task.primary]
        check_teacher_score(ctx, t_val)
        metrics: dict[str, Any] = {f"teacher_val_{task.primary}": t_val, "teacher_params": count_params(teacher)}
        student = None
        history: list[dict[str, Any]] = []
        if cfg.enabled:
            from edgekd.data.arrays import is_image_shape

            if cfg.augment and not is_image_shape(ctx.input_shape[1:]):
                cfg = cfg.model_copy(update={"augment": False})
                progress.log("distill: flips and shifts skipped (the input is not an image)")
            spec, stem = cfg.student, None
            if spec == "auto":  # sized by measurement on the first target (edgekd.models.sizing)
                from edgekd.models.sizing import choose_student

                choice = choose_student(ctx, ctx.profiles[0], out / "sizing")
                write_json(out / "student_choice.json", choice)
                spec, stem = choice["student"], choice["stem_stride"]
                progress.log(f"distill: student {spec}" + (f" (stem stride {stem})" if stem else "") + f": {choice['reason']}")
                metrics.update(student_choice=choice["reason"], student_expected_speedup=next(
                    c["speedup"] for c in choice["candidates"] if c["name"] == spec))
            torch.manual_seed(cfg.seed)
            student, recipe = task.build_student(spec, ctx.input_shape, ctx.info, cfg.width, cfg.depth, stem_stride=stem)
            if ctx.data_free and is_adversarial(ctx.synth_method()):
                # DFAD trains the student inside the synthesis game (stage synth); take that student as is
                student = load_student(str(ctx.run.output("synth", "dfad_student")), cfg.student)[0]
                val = task.evaluate(student, data.val.x, data.val.y, ctx.info)[task.primary]
                history, resumed = [{"epoch": 1, f"val_{task.primary}": val, "source": "DFAD game (stage synth)"}], 0
            else:
                res = task.distill(teacher, student, data, cfg, ckpt_dir, ctx.info)
                student, history, resumed = res.student, res.history, res.resumed_from_epoch
            metrics.update({f"student_val_{task.primary}": history[-1][f"val_{task.primary}"]},
                           student_params=count_params(student), resumed_from_epoch=resumed, student=recipe["arch"])
        outputs: dict[str, str] = {}
        if student is not None:
            extra = {"input_shape": list(ctx.input_shape), "normalize": data.meta["normalize"]}
            with atomic_path(out / "student.pt") as tmp:
                save_student(str(tmp), student, recipe, extra)
            outputs["student"] = ctx.run.rel(out / "student.pt")
        write_json(out / "history.json", history)
        outputs["history"] = ctx.run.rel(out / "history.json")
        if (out / "student_choice.json").exists():
            outputs["student_choice"] = ctx.run.rel(out / "student_choice.json")
        return StageResult(outputs, metrics)


def check_teacher_score(ctx, score: float) -> None:  # noqa: ANN001
    """Say so, loudly, when the teacher scores near chance on the user's data or far below the accuracy its file
    records: a wrong normalisation or class order makes every later number wrong while everything runs."""
    task = ctx.task.base
    recorded = ctx.teacher.meta.get(f"test_{task.primary}", ctx.teacher.meta.get(task.primary))
    causes = ("check the normalisation (--mean/--std, or the model file's metadata) and the class order (folder "
              "names sort alphabetically) match what the teacher was trained with")
    if task.primary == "top1" and score < 1.5 / ctx.info["num_classes"]:
        progress.warn(f"the teacher scores {score:.3f} top-1 on the val split, near chance: {causes}")
    elif isinstance(recorded, (int, float)) and score < recorded - 0.10:
        progress.warn(f"the teacher scores {score:.3f} {task.primary} on the val split, but its file records "
                      f"{recorded:.3f}: {causes}")
