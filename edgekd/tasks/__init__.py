"""Tasks: what a model's outputs mean and how they are scored — a plug-in per kind of model (issue #16).

A task probes the model's outputs, names them for export, scores outputs against targets (numpy only, so the
torch-free benchmark worker and the device-side runner score any task), measures a student's agreement with its
teacher, and samples calibration data: ``classify`` (logits, top-1), ``detect`` (dense YOLO-style boxes and scores,
mAP by pycocotools) and ``outputs`` (any tensors, scored by fidelity to the teacher and by the data's targets). ``--task auto`` (:mod:`edgekd.tasks.auto`) decides from the model's
outputs and the data's labels, and refuses what it cannot tell. A metric never falls back silently to top-1.
"""

from __future__ import annotations

from edgekd.registry import Registry
from edgekd.tasks.base import Task

TASK_NAMES = ("classify", "detect", "outputs")
TASKS: Registry[Task] = Registry("task", lazy={n: f"edgekd.tasks.{n}" for n in TASK_NAMES})


def register(cls: type[Task]) -> type[Task]:
    TASKS.add(cls.name, cls())
    return cls


def get_task(name: str) -> Task:
    """The task called ``name``, its module imported on first use."""
    return TASKS.get(name)


__all__ = ["TASKS", "TASK_NAMES", "Task", "get_task", "register"]
