"""RunContext: what every stage reads — config, run directory, teacher, data, shapes, targets — passed explicitly.

Built by :func:`open_run`, which checks every input (targets, data path, loss, the model file, the data itself)
*before* the run directory is touched: a bad input leaves an existing run exactly as it was and creates no folder.
Stages read earlier stages' results only through the run directory (``ctx.run.output(stage_id, name)``), never
through each other.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgekd import progress
from edgekd.config import PipelineConfig
from edgekd.errors import ConfigError, UsageError
from edgekd.fileio import sha256_file
from edgekd.rundir import RunDir, RunDirError
from edgekd.targets import Profile, isa_advice, resolve
from edgekd.tasks import Task, get_task

if TYPE_CHECKING:
    from edgekd.data import Dataset
    from edgekd.models.loading import LoadedModel
    from edgekd.runner import Runner


@dataclass
class RunContext:
    cfg: PipelineConfig
    run: RunDir
    teacher: LoadedModel
    input_shape: tuple[int, ...]
    #: what the task's probe found out about the teacher's outputs (classification: num_classes)
    info: dict[str, Any]
    profiles: list[Profile]
    task: Task
    real_data: Dataset | None = None
    runner: Runner | None = None
    _data: Dataset | None = field(default=None, repr=False)

    @property
    def num_classes(self) -> int:
        """The classes data-free synthesis covers (the task refuses when it has none)."""
        return self.task.synth_classes(self.info)

    # ------------------------------------------------------------------ data
    @property
    def data_free(self) -> bool:
        return self.cfg.data.path is None

    def known_normalize(self) -> dict[str, list[float]] | None:
        return known_normalize(self.cfg, self.teacher)

    def synth_method(self) -> str:
        from edgekd.data.synth import choose_method

        # the synthetic set is the distillation transfer set too when a student is trained (auto picks accordingly)
        return choose_method(self.teacher.module, self.cfg.synth.method, transfer=self.cfg.distill.enabled)

    @property
    def data(self) -> Dataset:
        """The data every stage uses: the user's (checked at start), with synthetic samples mixed in when asked, or
        the synthetic set split three ways in a data-free run (the ``synth`` stage is brought up to date first)."""
        if self._data is None:
            if self.data_free:
                self._data = self._synthetic_dataset()
            else:
                ds = self.real_data
                assert ds is not None
                if self.cfg.synth.mix:
                    from edgekd.data import ArraySplit

                    sx, sy, smeta = self._synthetic_arrays()
                    ds.train = ArraySplit(np.concatenate([ds.train.x, sx]), np.concatenate([ds.train.y, sy]))
                    ds.meta["sizes"]["train"] = len(ds.train)
                    ds.meta["synthetic"] = {"method": smeta["method"], "n": len(sy), "sha256": smeta["sha256"],
                                            "mixed_into": "train"}
                self._data = ds
            self.run.manifest.setdefault("inputs", {})["data"] = self._data.meta
            self.run.save()
        return self._data

    def data_key(self) -> dict[str, Any]:
        m = dict(self.data.meta)
        key = {k: m.get(k) for k in ("source", "format", "sizes", "split_seed", "normalize", "val_fraction", "synthetic",
                                     "resize")}
        key["limit"], key["eval_limit"] = self.cfg.data.limit, self.cfg.data.eval_limit
        return key

    def _synthetic_arrays(self) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
        assert self.runner is not None
        self.runner.ensure("synth")
        path = self.run.output("synth", "data")
        with np.load(path, allow_pickle=False) as z:
            x, y = z["x"], z["y"]
        meta = json.loads((self.run.output("synth", "report")).read_text())
        meta["sha256"] = sha256_file(path)
        return x, y, meta

    def _synthetic_dataset(self) -> Dataset:
        """Data-free: the synthetic set split into train / val / test (labels are the teacher's top-1)."""
        from edgekd.data import ArraySplit, Dataset

        x, y, smeta = self._synthetic_arrays()
        d, s = self.cfg.data, self.cfg.synth
        order = np.random.default_rng(d.split_seed).permutation(len(y))
        h = max(2, int(round(len(y) * s.holdout)))
        val_idx, test_idx, train_idx = order[: h // 2], order[h // 2 : h], order[h:]
        if d.limit:
            train_idx = train_idx[: d.limit]
        if d.eval_limit:
            test_idx = test_idx[: d.eval_limit]
        ds = Dataset(ArraySplit(x[train_idx], y[train_idx]), ArraySplit(x[val_idx], y[val_idx]),
                     ArraySplit(x[test_idx], y[test_idx]), num_classes=self.num_classes)
        norm = self.known_normalize()
        ds.meta = {"source": f"synthetic:{smeta['method']}", "format": "synthetic", "data_free": True,
                   "labels": "the teacher's top-1 (no real labels: top-1 = agreement with the teacher)",
                   "classes": None, "num_classes": self.num_classes, "input_shape": list(self.input_shape[1:]),
                   "sizes": {"train": len(train_idx), "val": len(val_idx), "test": len(test_idx)},
                   "split_seed": d.split_seed, "val_fraction": s.holdout / 2,
                   "normalize": {**(norm or {"mean": None, "std": None}), "source": "synthesized in the teacher's input space"},
                   "synthetic": {"method": smeta["method"], "n": int(len(y)), "sha256": smeta["sha256"],
                                 "seconds": smeta["seconds"]}}
        return ds

    # ------------------------------------------------------------------ models and targets
    def student_module(self):  # noqa: ANN201
        """The distilled student, or the teacher itself when distillation is off."""
        from edgekd.models.student import load_student

        rec = self.run.record("distill") or {}
        if "student" not in rec.get("outputs", {}):
            return self.teacher.module
        return load_student(str(self.run.output("distill", "student")), self.cfg.distill.student)[0]

    def distilled(self) -> bool:
        return "student" in (self.run.record("distill") or {}).get("outputs", {})

    def requested_precision(self, p: Profile) -> str:
        """The precision the config asks for (else the profile's default), before any plan."""
        prec = self.cfg.quantize.precision or p.default_precision
        if prec not in p.precisions:
            raise UsageError(f"target {p.name} does not support precision {prec}", f"choose one of {p.precisions}")
        return prec

    def planned(self, p: Profile) -> bool:
        """Whether the precision planner decides this target's INT8 (``quantize.plan``, PTQ to INT8 only)."""
        return self.cfg.quantize.plan is not None and self.cfg.quantize.qat == "none" and self.requested_precision(p) == "int8"

    def precision(self, p: Profile) -> str:
        """The precision shipped: the requested one, or the plan's (its reference precision when no INT8 plan is
        within both budgets or faster). Read after the plan stage has run (stages that need it come after it)."""
        prec = self.requested_precision(p)
        if self.planned(p):
            rec = self.run.record(f"plan/{p.name}") or {}
            if rec.get("status") == "done":
                return str(rec["metrics"]["precision"])
        return prec

    def eval_file(self) -> Path:
        """The test split as an .npz for the benchmark worker (rewritten only when the split changes)."""
        from edgekd.fileio import savez_streamed

        path = self.run.stage_dir("bench") / "eval.npz"
        want = f"{len(self.data.test)}:{self.data.meta['normalize']}:{self.task.name}:{self.data.test.y.shape}:{self.teacher.identity}"
        marker = path.with_suffix(".key")
        if not path.exists() or not marker.exists() or marker.read_text() != want:
            path.parent.mkdir(parents=True, exist_ok=True)
            # task_info: what the torch-free worker needs to score the outputs; x streamed (a uint8 split stays uint8)
            savez_streamed(path, x=self.data.test.x, y=self.data.test.y, task_info=np.array(json.dumps(self.info)),
                           task=np.array(self.task.name))
            marker.write_text(want)
        return path


def known_normalize(cfg: PipelineConfig, teacher: LoadedModel) -> dict[str, list[float]] | None:
    """The teacher's input normalisation when known (config, else the model file's metadata)."""
    norm = teacher.meta.get("normalize") or {}
    mean = cfg.data.mean if cfg.data.mean is not None else norm.get("mean")
    std = cfg.data.std if cfg.data.std is not None else norm.get("std")
    return {"mean": list(mean), "std": list(std)} if mean is not None and std is not None else None


def open_run(cfg: PipelineConfig) -> RunContext:
    """Check every input, then open (create or resume) the run directory and return the context."""
    from edgekd.benchmark.envinfo import capture as describe_environment
    from edgekd.models.loading import load_model, probe_outputs, require_input_shape
    from edgekd.runner import RUN_FORMAT, Runner

    cfg = cfg.model_copy(deep=True)
    # absolute paths, so `edgekd bench RUN` works from any folder later
    if Path(cfg.model).expanduser().exists():
        cfg.model = str(Path(cfg.model).expanduser().resolve())
    if cfg.data.path and Path(cfg.data.path).expanduser().exists():
        cfg.data.path = str(Path(cfg.data.path).expanduser().resolve())
    if cfg.run_dir:
        cfg.run_dir = str(Path(cfg.run_dir).expanduser().resolve())
    if not Path(cfg.model).expanduser().is_file():
        from edgekd.errors import ModelLoadError

        raise ModelLoadError(f"model file {cfg.model} does not exist", "check the path")
    profiles = [resolve(t) for t in cfg.targets]
    if not profiles:
        raise UsageError("no target given", "pass --target, e.g. --target x86-cpu (list: edgekd targets)")
    for p in profiles:
        advice = isa_advice(p)
        if advice:
            progress.warn(advice)
    validate_config(cfg)
    lm = load_model(cfg.model, arch=cfg.arch, input_shape=cfg.input_shape, allow_pickle=cfg.allow_pickle,
                    inputs=cfg.inputs, consts=cfg.consts)
    shape = require_input_shape(lm)
    if lm.bindings:
        bound = ", ".join(f"{n}={c.get('value', 'array ' + 'x'.join(map(str, c['shape'])))}"
                          for n, c in lm.bindings["consts"].items())
        progress.log(f"inputs: the data feed {lm.input_name}" + (f"; bound: {bound}" if bound else ""))
    from edgekd.input_fit import fit_to_input

    cfg = fit_to_input(cfg, shape)
    if lm.format == "onnx":
        check_onnx_teacher(cfg)
    for note in lm.notes:
        progress.log(f"model: {note}")
    raw_outputs = probe_outputs(lm.module, shape)
    if cfg.task == "auto":
        from edgekd.tasks.auto import choose_task

        name, why = choose_task(raw_outputs, cfg.data.path)
    else:
        name, why = cfg.task, "--task"
    task = get_task(name.rstrip("?"))
    info = task.probe(raw_outputs)
    check_backends_score(task, profiles)
    if cfg.quantize.qat != "none" and not task.trains_qat:
        raise UsageError(f"QAT is implemented for classifiers and detectors; this run's task is {task.name}",
                         "use post-training quantization (drop --qat)")
    if cfg.quantize.qat == "ti" and task.base.name != "classify":
        raise UsageError(f"Teacher Intervention is built and measured for classifiers; this run's task is {task.name}",
                         "use --qat kd (QAT with the task's own distillation loss)")
    real = load_real_data(cfg, lm, shape, task, info) if cfg.data.path is not None else None
    if name.endswith("?"):  # fewer label classes than outputs: is it a classifier? its own predictions tell
        from edgekd.tasks.auto import confirm_classifier

        assert real is not None
        why = confirm_classifier(lm.module, real.val.x, real.val.y, info["num_classes"])
    if cfg.task == "auto":
        progress.log(f"task: {task.name} ({why}; --task to choose another)")
    if real is not None:
        task.prepare(lm.module, real, info)
    elif task.name != "classify":
        task.synth_classes(info)  # raises: data-free synthesis inverts a classifier
    if cfg.metric:
        task = user_metric_task(task, cfg.metric, lm, real, info)
    if real is not None:
        norm = real.meta.get("normalize", {})
        classes = real.meta.get("classes")
        progress.log(f"preprocessing: input {list(shape)}, mean {_short(norm.get('mean'))}, std {_short(norm.get('std'))} "
                     f"({norm.get('source')}); resize {real.meta.get('resize') or 'none'}"
                     + (f"; classes {', '.join(classes[:5])}{', …' if len(classes) > 5 else ''}" if classes else ""))
        recorded = lm.meta.get("classes")
        if classes and recorded and list(map(str, recorded)) != list(classes):
            same = sorted(map(str, recorded)) == sorted(classes)
            progress.warn("the data's classes " + ("are the model's in another order" if same else "differ from the "
                          "model's") + f" (data: {', '.join(classes[:4])}, …; model file: "
                          f"{', '.join(map(str, recorded[:4]))}, …): labels are folder indices in sorted order, so "
                          "every score would be wrong; rename the folders so they sort in the model's class order")

    root = Path(cfg.run_dir) if cfg.run_dir else Path("runs") / Path(cfg.model).stem.split(".")[0]
    run = RunDir(root)
    if run.manifest.get("stages") and int(run.manifest.get("edgekd_run", 1)) < RUN_FORMAT:
        raise RunDirError(f"{root} was written by an earlier edgekd (run format {run.manifest.get('edgekd_run', 1)})",
                          "start a new run with another --run-dir (its report is still readable: edgekd report)")
    progress.log(f"run directory: {run.root}")
    run.manifest["edgekd_run"] = RUN_FORMAT
    run.manifest["config"] = cfg.model_dump()
    run.manifest["environment"] = describe_environment()
    run.manifest["inputs"] = {"model": {"path": lm.path, "sha256": lm.sha256, "format": lm.format,
                                        "input_shape": list(shape), **info, "task": task.name,
                                        **({"bindings": lm.bindings} if lm.bindings else {})}}
    if cfg.metric:
        run.manifest["inputs"]["model"].update(metric=cfg.metric, metric_primary=task.primary,
                                               metric_higher_is_better=task.metric.higher_is_better,
                                               metric_sha256=metric_hash(cfg.metric))
    run.save()
    ctx = RunContext(cfg=cfg, run=run, teacher=lm, input_shape=shape, info=info, profiles=profiles, task=task,
                     real_data=real)
    Runner(ctx)
    return ctx


def user_metric_task(task: Task, spec: str, lm: LoadedModel, real: Dataset | None, info: dict[str, Any]) -> Task:
    """``task`` with the user metric (:mod:`edgekd.tasks.user_metric`), called once on the teacher's outputs for up to
    64 test samples so that a broken metric fails here, in one line, before any training."""
    from edgekd.tasks.user_metric import with_metric

    if real is None:
        raise ConfigError("--metric scores outputs against the data's targets; a data-free run has none",
                          "pass real data with --data, or drop --metric")
    wrapped = with_metric(task, spec)
    n = min(64, len(real.test))
    res = wrapped.score(task.predict(lm.module, real.test.x[:n], info), real.test.y[:n], info)
    progress.log(f"metric: {spec} (primary {wrapped.primary} = {res[wrapped.primary]:.4f} for the teacher on {n} test "
                 "samples)")
    return wrapped


def metric_hash(spec: str) -> str:
    """What identifies a user metric in cache keys: its name, and its file's content when it names a file."""
    path = Path(spec.rpartition(":")[0])
    return sha256_file(path) if path.suffix == ".py" and path.is_file() else spec


def _short(values: Any) -> str:
    return "[" + ", ".join(f"{v:.3f}" for v in values) + "]" if values else "none"


def check_backends_score(task: Task, profiles: list[Profile]) -> None:
    """A backend whose lowering or gate scores only some tasks is refused for the others, in one line (never a
    top-1 computed on outputs that are not logits)."""
    from edgekd.backends import get_backend

    for p in profiles:
        allowed = get_backend(p.backend).tasks
        if allowed is not None and task.name not in allowed:
            raise UsageError(f"target {p.name} ({p.backend}) scores {', '.join(allowed)} models only today; this "
                             f"run's task is {task.name}", "use an onnxruntime or openvino target for this model")


def check_onnx_teacher(cfg: PipelineConfig) -> None:
    """What needs gradients through the teacher, or its module paths, cannot use an ONNX teacher: one line each."""
    hint = "pass the PyTorch model (TorchScript, .pt2, state_dict + --arch) for this"
    if cfg.data.path is None or cfg.synth.mix:
        raise UsageError("data-free synthesis optimises images through the teacher's gradients; an ONNX teacher has "
                         "none", "pass real data with --data, or " + hint)
    if cfg.distill.enabled and cfg.distill.features:
        raise UsageError("feature distillation reads the teacher's module paths; an ONNX teacher has none", hint)
    if cfg.quantize.qat != "none" and not cfg.distill.enabled:
        raise UsageError("QAT trains a quantized copy of the model in PyTorch; an ONNX teacher cannot be copied",
                         "distil a student first (drop --no-distill), or " + hint)


def validate_config(cfg: PipelineConfig) -> None:
    """Checks that need no model or data loaded: the data path exists, the KD loss and its parameters build."""
    from edgekd.data.datasets import resolve_data_path

    if cfg.data.path is not None:
        resolve_data_path(cfg.data.path)  # raises DataError naming the path
    if cfg.quantize.plan is not None and cfg.quantize.qat != "none":
        from edgekd.errors import ConfigError

        raise ConfigError("the precision planner (--max-drop, quantize.plan) plans post-training quantization; it "
                          "cannot be combined with --qat", "drop --qat, or drop --max-drop / quantize.plan")
    if cfg.distill.enabled:
        from edgekd.kd.losses import build_loss
        from edgekd.models.detector import DETECTORS
        from edgekd.models.zoo import MODELS
        from edgekd.tasks.detect import DETECTION_LOSS_PARAMS

        # a detector's loss has its own parameters (Detect.distill_objective checks them); under task auto the
        # detection ones are let through here and checked once the task is known
        detection_params = set(cfg.distill.loss_params) <= DETECTION_LOSS_PARAMS
        if cfg.task != "detect" and not (cfg.task == "auto" and detection_params and cfg.distill.loss_params):
            build_loss(cfg.distill.loss, **cfg.distill.loss_params)
        spec = cfg.distill.student
        if spec == "auto":
            if cfg.synth.method in ("dfad", "dfad-bn", "dfad-balanced"):
                raise ConfigError("--student auto cannot be combined with adversarial synthesis (the student is "
                                  "trained inside the synthesis game)", "name the student, e.g. --student resnet-s")
        elif ":" not in spec and spec.removeprefix("zoo:") not in MODELS and spec.removeprefix("zoo:") not in DETECTORS:
            MODELS.get(spec.removeprefix("zoo:"))  # raises: unknown student, with the zoo's names


def load_real_data(cfg: PipelineConfig, lm: LoadedModel, shape: tuple[int, ...], task: Task, info: dict[str, Any]) -> Dataset:
    """The user's data, loaded by the task and checked against the model before the run directory is touched."""
    d = cfg.data
    norm = known_normalize(cfg, lm)
    mean, std = (norm["mean"], norm["std"]) if norm else (None, None)
    ds = task.load_data(d.path, input_shape=shape, info=info, mean=mean, std=std, val_fraction=d.val_fraction,
                        seed=d.split_seed, limit=d.limit, resize=d.resize, test_limit=d.eval_limit)
    if d.eval_limit:
        ds.test = ds.test.take(d.eval_limit)
        ds.meta["sizes"]["test"] = len(ds.test)
    return ds
