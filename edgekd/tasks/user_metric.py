"""A user metric: ``--metric path.py:fn`` or ``module:fn`` (config ``metric:``), scored on every artifact.

    fn(outputs: dict[str, np.ndarray], targets: np.ndarray) -> dict[str, float]

``outputs`` maps each model output's name (as exported: ``logits``, ``detections``, or the model's own names) to the
artifact's raw outputs on the test split; ``targets`` are the data's targets (class labels, boxes ``(N, M, 5)`` as
``[class, x1, y1, x2, y2]`` padded with −1, or the user's target columns). The function declares its primary key
with an attribute, ``fn.primary = "f1"``, else the first key it returns is primary; ``fn.higher_is_better = False``
marks an error metric. It must use numpy only (no torch): the benchmark worker and the device runner call it too.

The primary key replaces the task's in the report, the Pareto plot, ``edgekd report --compare`` and the run's
metrics; the task's own metrics stay beside it. The INT8 gates keep the task's agreement measure (a user metric
has no notion of "the same prediction").

Safety: the function is the user's code, so it runs only when the person running the command names it
(see :mod:`edgekd.code_import`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from edgekd.tasks.base import Task


@dataclass
class UserMetric:
    spec: str
    fn: Callable[..., dict[str, float]]
    primary: str | None
    higher_is_better: bool

    def __call__(self, outputs: dict[str, np.ndarray], targets: np.ndarray) -> dict[str, float]:
        from edgekd.errors import ConfigError

        try:
            res = self.fn(outputs, targets)
        except Exception as e:  # noqa: BLE001 - the user's code: any failure is one line naming it
            raise ConfigError(f"--metric {self.spec} failed: {type(e).__name__}: {str(e)[:120]}",
                              "fix the function (it gets a dict of numpy outputs and the targets)") from None
        if not isinstance(res, dict) or not res:
            raise ConfigError(f"--metric {self.spec} returned {type(res).__name__}, not a non-empty dict of floats",
                              "return e.g. {'f1': 0.8}")
        out: dict[str, float] = {}
        for k, v in res.items():
            try:
                out[str(k)] = float(v)
            except (TypeError, ValueError):
                raise ConfigError(f"--metric {self.spec} returned {k!r}: {type(v).__name__}, not a number",
                                  "return floats") from None
        key = self.primary or next(iter(out))
        if key not in out:
            raise ConfigError(f"--metric {self.spec} declares primary {key!r} but returned {sorted(out)}",
                              "return the primary key, or fix fn.primary")
        if self.primary is None:
            self.primary = key
        return out


def load_user_metric(spec: str) -> UserMetric:
    """Import the function (the user named it) and read its declarations."""
    from edgekd.code_import import import_callable
    from edgekd.errors import ConfigError

    if ":" not in spec:
        raise ConfigError(f"bad --metric {spec!r}", "write path/to/file.py:function or package.module:function")
    try:
        fn = import_callable(spec)
    except (ImportError, AttributeError, FileNotFoundError, SyntaxError) as e:
        raise ConfigError(f"cannot import --metric {spec!r}: {e}", "check the file or module and the function name") from None
    if not callable(fn):
        raise ConfigError(f"--metric {spec!r} is not a function", "name a function")
    primary = getattr(fn, "primary", None)
    return UserMetric(spec, fn, str(primary) if primary else None, bool(getattr(fn, "higher_is_better", True)))


class WithUserMetric(Task):
    """A task whose scores also carry the user metric, which becomes the primary metric; everything else is the
    task's own."""

    def __init__(self, task: Task, metric: UserMetric) -> None:
        self.task, self.metric = task, metric
        self.name, self.agreement_name = task.name, task.agreement_name

    @property
    def primary(self) -> str:  # type: ignore[override]
        return self.metric.primary or self.task.primary

    @property
    def base(self) -> Task:
        return self.task

    @property
    def higher_is_better(self) -> bool:  # type: ignore[override]
        return self.metric.higher_is_better

    #: a user metric's budget is in its own units
    points_scale = 1.0

    def __getattr__(self, item: str) -> Any:
        return getattr(self.task, item)

    def score(self, outputs: np.ndarray, targets: np.ndarray, info: dict[str, Any] | None = None) -> dict[str, Any]:
        res = dict(self.task.score(outputs, targets, info))
        named, user_targets = self.task.named_outputs(outputs, targets, info)
        mine = self.metric(named, user_targets) if len(targets) else {self.metric.primary or "metric": math.nan}
        clash = sorted(set(mine) & set(res))
        if clash:
            from edgekd.errors import ConfigError

            raise ConfigError(f"--metric {self.metric.spec} returns {clash}, which the {self.name} task reports "
                              "itself", "rename those keys (e.g. user_" + clash[0] + ")")
        res.update(mine)
        res["metric_source"], res["metric_primary"] = self.metric.spec, self.primary
        return res

    def evaluate(self, model: Any, x: np.ndarray, y: np.ndarray, info: dict[str, Any] | None = None) -> dict[str, float]:
        return self.score(self.task.predict(model, x, info), y, info)

    # the remaining Task methods are the task's (delegated explicitly: Task defines them, so __getattr__ would not)
    def probe(self, outputs: Any) -> dict[str, Any]:
        return self.task.probe(outputs)

    def output_names(self, info: dict[str, Any]) -> list[str]:
        return self.task.output_names(info)

    def load_data(self, spec: str, **kw: Any) -> Any:  # type: ignore[override]
        return self.task.load_data(spec, **kw)

    def prepare(self, teacher: Any, data: Any, info: dict[str, Any]) -> None:
        self.task.prepare(teacher, data, info)

    def synth_classes(self, info: dict[str, Any]) -> int:
        return self.task.synth_classes(info)

    def build_student(self, *a: Any, **kw: Any) -> tuple[Any, dict[str, Any]]:  # type: ignore[override]
        return self.task.build_student(*a, **kw)

    def predict(self, model: Any, x: np.ndarray, info: dict[str, Any] | None = None) -> np.ndarray:
        return self.task.predict(model, x, info)

    def distill(self, *a: Any, **kw: Any) -> Any:  # type: ignore[override]
        return self.task.distill(*a, **kw)

    def agreement(self, reference: np.ndarray, outputs: np.ndarray, info: dict[str, Any] | None = None) -> float:
        return self.task.agreement(reference, outputs, info)

    def parity(self, reference: np.ndarray, outputs: np.ndarray, info: dict[str, Any] | None = None,
               targets: np.ndarray | None = None) -> dict[str, Any]:
        return self.task.parity(reference, outputs, info, targets)

    def int8_gate(self, quantize_cfg: Any) -> float:
        return self.task.int8_gate(quantize_cfg)

    def calibration(self, *a: Any, **kw: Any) -> tuple[np.ndarray, np.ndarray]:  # type: ignore[override]
        return self.task.calibration(*a, **kw)

    def describe_calibration(self, targets: np.ndarray, info: dict[str, Any]) -> dict[str, Any]:
        return self.task.describe_calibration(targets, info)

    def named_outputs(self, outputs: np.ndarray, targets: np.ndarray,
                      info: dict[str, Any] | None = None) -> tuple[dict[str, np.ndarray], np.ndarray]:
        return self.task.named_outputs(outputs, targets, info)


def with_metric(task: Task, spec: str | None) -> Task:
    """``task`` scored also by the user metric ``spec`` (None: the task itself)."""
    return task if not spec else WithUserMetric(task, load_user_metric(spec))
