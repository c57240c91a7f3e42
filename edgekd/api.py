"""The public verbs. The CLI is a thin layer over these; these are a thin layer over the stages.

    import edgekd
    summary = edgekd.compress("teacher.pt2", targets=["x86-cpu", "intel-cpu"], data="fashion-mnist")
    edgekd.bench("runs/teacher")          # re-measure an existing run
    edgekd.report("runs/teacher")

Every verb takes a run directory (default ``runs/<model stem>``). Calling a later stage brings the earlier ones up
to date first (:class:`edgekd.runner.Runner`), so MLOps pipelines can call ``distill``, ``export``, ``quantize``,
``lower`` and ``bench`` one by one, or all at once with ``compress``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgekd import progress
from edgekd.config import PipelineConfig, build_config, deep_merge, load_config_file
from edgekd.context import RunContext, open_run
from edgekd.errors import GateError, UsageError
from edgekd.rundir import RunDir
from edgekd.targets import Profile, list_profiles

STAGES = ("distill", "export", "quantize", "lower", "bench")


def run_all(ctx: RunContext, force_bench: bool = False) -> dict[str, Any]:
    """Every stage for every target, then the report. A failed gate (parity, INT8 accuracy) stops only what depends
    on it: the other targets still run, the report is written with the failure, then GateError (exit 3)."""
    assert ctx.runner is not None
    failed: list[tuple[str, GateError]] = []
    for p in ctx.profiles:
        try:
            ctx.runner.ensure("bench", p, force=force_bench)
        except GateError as e:
            failed.append((p.name, e))
            progress.log(f"{p.name}: {e.one_line()}")
            if (ctx.run.record("export") or {}).get("status") == "failed":
                break  # the export gate failed: no target can go on
    report = write_report(ctx.run.root)
    t = ctx.cfg.tracking
    if t.mlflow:
        from edgekd.tracking import log_to_mlflow

        report["mlflow_run_id"] = log_to_mlflow(ctx.run.root, ctx.cfg.model_dump(), report, uri=t.mlflow_uri,
                                                experiment=t.experiment)
        progress.log(f"mlflow: logged run {report['mlflow_run_id']} to experiment {t.experiment}")
    if failed:
        name, err = failed[0]
        more = f" (and {len(failed) - 1} more target(s))" if len(failed) > 1 else ""
        raise GateError(f"{name}: {err.message}{more}", f"see {ctx.run.root / 'report.md'} (what passed is kept); "
                        f"{err.hint or 're-run after fixing'}")
    return report


def write_report(run_dir: str | Path) -> dict[str, Any]:
    from edgekd.benchmark.report import render

    return render(RunDir(run_dir, create=False))


# -------------------------------------------------------------------------------- configs


def _config(model: str | None = None, config: str | Path | PipelineConfig | None = None, **kw: Any) -> PipelineConfig:
    if isinstance(config, PipelineConfig):
        return config
    overrides = {k: v for k, v in kw.items() if v is not None}
    if model is not None:
        overrides["model"] = str(model)
    if config is not None:
        return load_config_file(config, overrides)
    if "model" not in overrides:
        raise UsageError("no model given", "pass the model file, or --config pipeline.yaml")
    return build_config(**overrides)


def _nest(kw: dict[str, Any]) -> dict[str, Any]:
    """Turn flat keyword overrides like ``distill__epochs=3`` into nested config sections."""
    out: dict[str, Any] = {}
    for k, v in kw.items():
        if v is None:
            continue
        *sections, key = k.split("__")  # quantize__plan__max_drop → {"quantize": {"plan": {"max_drop": …}}}
        node = out
        for section in sections:
            node = node.setdefault(section, {})
        node[key] = v
    return out


def config_from_run(run_dir: str | Path, **overrides: Any) -> PipelineConfig:
    """The config a run was made with, and the caller's overrides. Opt-ins and code names come from the person
    running this command, never from a file on disk: the manifest's ``allow_pickle`` is dropped, and a factory it
    names (not a zoo model) must be named again (``--arch``, ``--student``)."""
    run = RunDir(run_dir, create=False)
    raw = dict(run.manifest.get("config") or {})
    if not raw:
        raise UsageError(f"{run_dir} records no config", "re-run edgekd compress")
    given = _nest(overrides)
    raw["allow_pickle"] = bool(given.pop("allow_pickle", False))
    for flag, section, key in (("--arch", None, "arch"), ("--student", "distill", "student"), ("--metric", None, "metric")):
        recorded = (raw.get(section) or {}).get(key) if section else raw.get(key)
        named = (given.get(section) or {}).get(key) if section else given.get(key)
        if recorded and named is None and not _is_zoo_name(str(recorded)):
            raise UsageError(f"this run was made with the factory {str(recorded)[:80]!r}; edgekd imports code only when "
                             "you name it", f"if you trust it, add {flag} {str(recorded)[:80]}")
    raw = deep_merge(raw, given)
    raw["run_dir"] = str(run_dir)
    return build_config(**raw)


def _is_zoo_name(name: str) -> bool:
    """A zoo classifier or detector, or ``auto`` (the zoo student sized by measurement): names, not code."""
    from edgekd.models.detector import DETECTORS
    from edgekd.models.zoo import MODELS

    bare = name.removeprefix("zoo:")
    return name == "auto" or bare in MODELS or bare in DETECTORS


def _open(model: str | Path | None, config: Any, run_dir: str | Path | None, kw: dict[str, Any]) -> RunContext:
    if model is None and config is None and run_dir is not None:
        return open_run(config_from_run(run_dir, **kw))
    return open_run(_config(model, config, run_dir=str(run_dir) if run_dir else None, **_nest(kw)))


# -------------------------------------------------------------------------------- public verbs


def compress(model: str | Path | None = None, *, config: str | Path | PipelineConfig | None = None, **kw: Any) -> dict[str, Any]:
    """Run every stage for every target and write the report; returns the report dict."""
    return run_all(open_run(_config(model, config, **_nest(kw))))


def _until(stage: str, model: str | Path | None, config: Any, run_dir: str | Path | None, kw: dict[str, Any]) -> dict[str, Any]:
    ctx = _open(model, config, run_dir, kw)
    assert ctx.runner is not None
    if stage in ("distill", "export"):
        return ctx.runner.ensure(stage)
    return {p.name: ctx.runner.ensure(stage, p) for p in ctx.profiles}


def distill(model: str | Path | None = None, *, config: Any = None, run_dir: str | Path | None = None, **kw: Any) -> dict[str, Any]:
    return _until("distill", model, config, run_dir, kw)


def export(model: str | Path | None = None, *, config: Any = None, run_dir: str | Path | None = None, **kw: Any) -> dict[str, Any]:
    return _until("export", model, config, run_dir, kw)


def quantize(model: str | Path | None = None, *, config: Any = None, run_dir: str | Path | None = None, **kw: Any) -> dict[str, Any]:
    return _until("quantize", model, config, run_dir, kw)


def lower(model: str | Path | None = None, *, config: Any = None, run_dir: str | Path | None = None, **kw: Any) -> dict[str, Any]:
    return _until("lower", model, config, run_dir, kw)


def sensitivity(run_dir: str | Path, target: str | None = None, ranking: str | None = None, **kw: Any) -> dict[str, Any]:
    """Per-layer INT8 sensitivity of a run's student on one of its targets (the run's first when not named), measured
    on that target's runtime; returns ``sensitivity.json``'s content and where the chart is. ``ranking``
    ("measured" | "proxy") overrides a planned run's ``quantize.plan.ranking``; a run without a plan is always
    measured."""
    import json

    from edgekd.targets import resolve

    if ranking is not None:
        planned = ((RunDir(run_dir, create=False).manifest.get("config") or {}).get("quantize") or {}).get("plan")
        if planned:
            kw["quantize__plan__ranking"] = ranking
        elif ranking != "measured":
            raise UsageError("the ranking proxy orders a plan's search, and this run has no plan",
                             "drop --ranking (each layer is measured), or plan first: edgekd compress ... --max-drop N")
    ctx = open_run(config_from_run(run_dir, **kw))
    assert ctx.runner is not None
    p = ctx.profiles[0]
    if target is not None:
        want = resolve(target).name
        match = [q for q in ctx.profiles if q.name == want]
        if not match:
            raise UsageError(f"target {want} is not one of this run's targets ({', '.join(q.name for q in ctx.profiles)})",
                             f"pass one of them, or add it first: edgekd compress ... -t {want} --run-dir {run_dir}")
        p = match[0]
    rec = ctx.runner.ensure("sensitivity", p)
    res = json.loads((ctx.run.root / rec["outputs"]["sensitivity"]).read_text())
    res["chart"] = str(ctx.run.root / rec["outputs"]["chart"])
    return res


def bench(run_dir: str | Path, **kw: Any) -> dict[str, Any]:
    """Re-measure an existing run (the bench stage always re-runs; earlier stages are reused)."""
    return run_all(open_run(config_from_run(run_dir, **kw)), force_bench=True)


def bench_file(artifact: str | Path, profile: str, data: str | Path | None = None, threads: int | None = None,
               out_dir: str | Path | None = None, metric: str | None = None) -> dict[str, Any]:
    """Measure one artifact on this machine (no torch needed): :func:`edgekd.benchmark.device.bench_artifact`."""
    from edgekd.benchmark.device import bench_artifact

    return bench_artifact(artifact, profile, data, threads, out_dir, metric)


def report(run_dir: str | Path) -> dict[str, Any]:
    return write_report(run_dir)


def compare(run_a: str | Path, run_b: str | Path) -> dict[str, Any]:
    """Two runs side by side (top-1 and p50 per target, model and precision)."""
    from edgekd.benchmark.report import compare as compare_runs

    return compare_runs(RunDir(run_a, create=False), RunDir(run_b, create=False))


def inspect(model: str | Path, *, arch: str | None = None, input_shape: str | None = None,
            allow_pickle: bool = False, inputs: dict[str, Any] | None = None,
            consts: dict[str, Any] | None = None) -> dict[str, Any]:
    """A model file's format, input shape, hash and module paths (for ``--feature`` and intervention points); a model
    with several inputs needs them bound (``inputs``/``consts``, as for ``compress``)."""
    from edgekd.models.loading import load_model

    lm = load_model(model, arch=arch, input_shape=input_shape, allow_pickle=allow_pickle, inputs=inputs, consts=consts)
    return {"format": lm.format, "input_shape": lm.input_shape, "sha256": lm.sha256, "input_name": lm.input_name,
            "modules": [(name, type(mod).__name__) for name, mod in lm.module.named_modules() if name]}


def synth(model: str | Path, *, out: str | Path = "synth.npz", n: int = 2048, method: str = "auto", iterations: int | None = None,
          batch_size: int | None = None, lr: float | None = None, seed: int = 0, arch: str | None = None,
          input_shape: str | None = None, allow_pickle: bool = False, mean: list[float] | None = None,
          std: list[float] | None = None) -> dict[str, Any]:
    """Synthesize ``n`` images from the teacher alone and write ``out`` (.npz: x, y, meta), a preview PNG and a JSON
    record. Under ``torchrun`` the batches are shared between ranks and rank 0 writes."""
    from edgekd.data.synth import synthesize
    from edgekd.data.synth.engine import valid_range
    from edgekd.data.synth.io import write_set
    from edgekd.distributed import maybe_init_distributed
    from edgekd.models.loading import load_model, probe, require_input_shape

    out = Path(out)
    if out.suffix != ".npz":
        raise UsageError(f"--out {out} must end in .npz", "e.g. --out synth.npz")
    lm = load_model(str(model), arch=arch, input_shape=input_shape, allow_pickle=allow_pickle)
    shape = require_input_shape(lm)
    k = probe(lm.module, shape)["num_classes"]
    norm = lm.meta.get("normalize") or {}
    mean = mean if mean is not None else norm.get("mean")
    std = std if std is not None else norm.get("std")
    vr = valid_range(mean, std)
    distributed = maybe_init_distributed()
    res = synthesize(lm.module, n, shape[1:], k, method=method, seed=seed, valid_range=vr,
                     work_dir=out.parent / f".{out.stem}.work", iterations=iterations, batch_size=batch_size, lr=lr)
    rank = 0
    if distributed:
        import torch.distributed as dist

        rank = dist.get_rank()
    if rank != 0:
        return {"written": False, **{k_: res.meta[k_] for k_ in ("method", "n", "seconds")}}
    meta = {**res.meta, "teacher": {"path": lm.path, "sha256": lm.sha256}, "normalize": {"mean": mean, "std": std}}
    png = out.with_suffix(".png")
    write_set(out, png, out.with_suffix(".json"), res, mean, std, title=f"{res.meta['method']}: labels = teacher top-1", meta=meta)
    import shutil

    shutil.rmtree(out.parent / f".{out.stem}.work", ignore_errors=True)  # per-batch shards, kept only for resuming
    return {"written": True, "out": str(out), "preview": str(png), **{k_: res.meta[k_] for k_ in
                                                                     ("method", "n", "seconds", "seconds_per_1000_images")}}


def targets(pattern: str = "*") -> list[Profile]:
    return list_profiles(pattern)
