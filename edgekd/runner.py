"""The stage runner: orders the stages, derives every cache key in one place, skips what is up to date.

A stage (``edgekd/stages/<name>.py``, after Olive's Pass) declares what it needs and which config it reads; it never
calls another stage. The runner brings its needs up to date first, then derives its key — once, here, for every
stage — from

    (the stage's name, the config it reads, the output hashes of the stages it needs, the teacher's hash,
     the data's identity when it reads data, the device profile when it is per target)

and runs it through :meth:`edgekd.rundir.RunDir.run_stage`, which skips it when the manifest holds a finished
record with the same key whose outputs are unchanged on disk. A key built by hand per stage drifted before (the QAT
stage left out the export opset and the seed it used, issue #16); here a stage cannot leave out an input it
declared, and what it reads from the config is the section it names.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from edgekd.fileio import sha256_json
from edgekd.rundir import StageResult
from edgekd.registry import Registry

if TYPE_CHECKING:
    from pathlib import Path

    from edgekd.context import RunContext
    from edgekd.targets import Profile

#: bumped when keys or the layout change: an older run directory is refused with one line instead of half-reused
RUN_FORMAT = 2


class Stage:
    """Base class. Subclasses set ``name`` (and ``per_target``, ``reads_data``) and implement :meth:`config`,
    :meth:`run`, and :meth:`needs` when they depend on other stages."""

    name: str = ""
    per_target: bool = False
    reads_data: bool = False

    def stage_id(self, profile: Profile | None) -> str:
        return f"{self.name}/{profile.name}" if self.per_target and profile is not None else self.name

    def needs(self, ctx: RunContext, profile: Profile | None) -> list[tuple[str, Profile | None]]:
        """(stage name, profile) pairs that must be up to date first."""
        return []

    def config(self, ctx: RunContext, profile: Profile | None) -> dict[str, Any]:
        """The configuration this stage reads (its section, plus any other key it uses)."""
        raise NotImplementedError

    def run(self, ctx: RunContext, profile: Profile | None, key: str) -> StageResult:
        raise NotImplementedError


STAGES: Registry[Stage] = Registry("stage")


def register(cls: type[Stage]) -> type[Stage]:
    STAGES.add(cls.name, cls())
    return cls


class Runner:
    """Runs stages for one :class:`~edgekd.context.RunContext`."""

    def __init__(self, ctx: RunContext) -> None:
        self.ctx = ctx
        ctx.runner = self

    def key_material(self, stage: Stage, profile: Profile | None) -> dict[str, Any]:
        ctx = self.ctx
        deps = stage.needs(ctx, profile)
        return {
            "stage": stage.name, "format": RUN_FORMAT, "config": stage.config(ctx, profile),
            "inputs": {STAGES.get(n).stage_id(p): ctx.run.output_hash(STAGES.get(n).stage_id(p)) for n, p in deps},
            "teacher": ctx.teacher.identity,
            "data": ctx.data_key() if stage.reads_data else None,
            "profile": profile.model_dump(exclude={"source"}) if stage.per_target and profile is not None else None,
        }

    def ensure(self, name: str, profile: Profile | None = None, force: bool = False) -> dict[str, Any]:
        """Bring stage ``name`` (for ``profile`` when per target) up to date and return its record."""
        stage = STAGES.get(name)
        for dep, dep_profile in stage.needs(self.ctx, profile):
            self.ensure(dep, dep_profile)
        material = self.key_material(stage, profile)
        key = sha256_json(material)
        return self.ctx.run.run_stage(stage.stage_id(profile), material, lambda: stage.run(self.ctx, profile, key),
                                      force=force)

    def out_dir(self, stage: str, sub: str | None = None, keep: tuple[str, ...] = ()) -> Path:
        """The stage's folder, emptied (but for ``keep`` names)."""
        return self.ctx.run.fresh_dir(stage, sub, keep=keep)


from edgekd import stages as _stages  # noqa: E402, F401 - registers every stage (they import Stage and register above)
