"""Pipeline configuration: pydantic models in which unknown keys are errors.

The same object drives the Python API, the CLI and config files (``edgekd compress --config pipeline.yaml``).
Each stage hashes only its own section (plus its inputs' hashes), so changing ``bench`` never re-runs ``distill``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from edgekd.errors import ConfigError


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DataConfig(Strict):
    """Where the real data comes from and how it is split and normalised."""

    path: str | None = Field(None, description="IDX folder, image folder, .npz, or 'fashion-mnist'")
    val_fraction: float = Field(1 / 12, gt=0, lt=1)
    split_seed: int = 0
    mean: list[float] | None = Field(None, description="per-channel mean on the [0,1] scale; default: from the model file, else the train split")
    std: list[float] | None = None
    limit: int | None = Field(None, gt=0, description="use only the first N training samples")
    eval_limit: int | None = Field(None, gt=0, description="score on only the first N test samples")
    resize: Literal["stretch", "letterbox", "center-crop"] = Field(
        "stretch", description="images of another size than the model's: stretch to it, letterbox (keep the aspect, "
                               "pad with black), or scale the short side and crop the centre")


class FeaturePairConfig(Strict):
    student: str
    teacher: str
    weight: float = 1.0


class DistillConfig(Strict):
    """Stage 1: train a student from the teacher."""

    enabled: bool = True
    student: str = Field("resnet-s", description="zoo name, module:factory / file.py:factory, or auto: the largest zoo "
                         "student timed ≥ speed_goal× faster than the teacher on the first target (edgekd.models.sizing)")
    speed_goal: float = Field(3.0, gt=1, description="student: auto — the batch-1 speed-up over the teacher a candidate "
                              "must reach on the first target (its FP32 or INT8, whichever is faster)")
    max_drop: float = Field(3.0, ge=0, description="points of the primary metric the FP32 student may lose against "
                            "the teacher on the test split; a student beyond it is flagged in the report and its "
                            "speed-up is not headlined")
    width: int | None = None
    depth: int | None = None
    loss: str = "kd"
    loss_params: dict[str, float] = Field(default_factory=dict)
    ce_weight: float | None = None
    features: list[FeaturePairConfig] = Field(default_factory=list)
    output_loss: dict[str, Literal["mse", "cosine", "bce"]] = Field(
        default_factory=dict, description="outputs task: the loss per output name (default by the output's kind: "
        "real-valued mse, unit-norm cosine, probabilities bce)")
    epochs: int = Field(10, ge=1)
    batch_size: int = Field(128, ge=1)
    optimizer: Literal["sgd", "adamw"] = "sgd"
    lr: float = Field(0.1, gt=0)
    weight_decay: float = Field(5e-4, ge=0)
    warmup_epochs: float = Field(0.5, ge=0)
    augment: bool = False
    ema: float = Field(0.0, ge=0.0, lt=1.0, description="decay of an exponential moving average of the student's "
                       "weights and BN statistics (0 = off); the average is what the stage returns and scores")
    mixup: float = Field(0.0, ge=0, description="Beta(α, α) mixup of the transfer inputs, teacher queried on the mixed "
                         "images (function matching); 0 = off. Helps small and synthetic transfer sets")
    teacher_cache: Literal["auto", "on", "off"] = "auto"
    eval_every: int | None = Field(None, ge=1, description="score the val split every N epochs and after the last; "
                                   "default: every epoch up to 20 epochs, else about 20 times per run")
    seed: int = 0
    threads: int | None = None

    def eval_interval(self) -> int:
        """Epochs between val evaluations: ``eval_every`` or max(1, epochs // 20)."""
        return self.eval_every or max(1, self.epochs // 20)


class ExportConfig(Strict):
    """Stage 2: ONNX export with a parity check against PyTorch."""

    opset: int = Field(17, ge=13)
    exporter: Literal["legacy", "dynamo"] = "legacy"
    parity_samples: int = Field(512, ge=256)
    atol: float = Field(1e-3, gt=0)
    min_top1_agreement: float = Field(0.995, ge=0, le=1)


class PlanConfig(Strict):
    """The precision planner (``edgekd/quant/planner.py``): per-layer sensitivity measured on the target runtime's own
    INT8 artifact, then the fewest layers kept in float such that the task's primary metric loses at most
    ``max_drop`` points against the FP32 export on the val split, and the fastest plan (FP32 included) within both
    budgets. The plan replaces the quantize stage's agreement gate with ``max_drop``."""

    max_drop: float = Field(..., ge=0, description="points of the primary metric (×100 for top-1, mAP, R²; a user "
                            "metric's own units) INT8 may lose against the FP32 export on val")
    latency_budget_ms: float | None = Field(None, gt=0, description="batch-1 p50 on the target; none: the fastest plan")
    samples: int | None = Field(None, ge=1, description="val samples scored per candidate (default: the whole val split)")
    ranking_samples: int = Field(300, ge=1, description="val samples each layer's sensitivity is scored on (the first "
                                 "of the plan's; NNCF's ranking_subset_size default): they only order the search, "
                                 "every plan is judged on `samples`")
    ranking: Literal["proxy", "measured"] = Field("proxy", description="how layers are ordered for the search: "
                                                   "proxy = the quantization error each layer adds at its output, from "
                                                   "one pass of the INT8 and FP32 models (edgekd/quant/layer_error.py); "
                                                   "measured = each layer kept in float alone and scored on "
                                                   "ranking_samples (one variant per layer: slower, in points)")
    proxy_samples: int = Field(64, ge=1, description="val samples the proxy's error sums run over (the first of the plan's)")
    shortlist: int = Field(3, ge=1, description="with the proxy: at each greedy step still over budget, the layers "
                           "it proposes first, each tried in float and scored on ranking_samples; the one that "
                           "recovers most is kept (1 = follow the proxy alone)")
    extra: int = Field(2, ge=0, description="greedy steps past the first plan within budget (a float layer can be faster)")
    max_kept: int | None = Field(None, ge=1, description="most layers kept in float (default: any number)")
    rounds: int = Field(3, ge=1, le=20, description="alternating timing rounds, every candidate in one process")
    iterations: int = Field(300, ge=10, description="timed batch-1 calls per candidate and round")
    min_speedup: float = Field(1.05, ge=1, description="an INT8 plan ships only if at least this many times faster "
                               "than FP32 at batch 1 (FP32 loses nothing; a 1–2 % gain is within timing noise)")
    speed_probe: int = Field(3, ge=0, description="layers the runtime's kernel profile finds slower in INT8 than in "
                             "float (a 1- or 3-channel stem), each tried in float on top of the plan and timed with "
                             "the other candidates; 0 = off (ONNX Runtime targets only)")
    speed_margin: float = Field(1.25, ge=0, description="a layer is tried in float for speed when its INT8 kernel "
                                "takes more than this many times its float kernel's time in the profile")
    rank_all: bool = Field(False, description="rank every layer even when all-INT8 already meets max_drop (by "
                           "default the ranking is skipped then: the plan is all-INT8 or FP32, whichever is faster)")


class QuantizeConfig(Strict):
    """Stage 3: post-training quantization with the target runtime's own tools."""

    precision: Literal["int8", "fp32"] | None = Field(None, description="default: the profile's default_precision")
    calibration: str = Field("default", description="a recipe name from calibration/ or a path to a recipe .yaml")
    calibration_size: int | None = Field(None, gt=0)
    min_top1_agreement: float = Field(0.95, ge=0, le=1, description="int8 vs fp32 student on the val split; lower fails the stage")
    min_fidelity_r2: float = Field(0.95, le=1, description="the outputs task's INT8 gate: R² of the int8 model's outputs "
                                   "against the fp32 export's on the val split (the minimum over outputs)")
    max_map_drop: float = Field(1.0, ge=0, le=100, description="the detect task's INT8 gate: the most mAP@[.5:.95] "
                                "points the int8 model may lose against the fp32 export on the val split")
    qat: Literal["none", "kd", "ti"] = Field("none", description="quantization-aware training instead of PTQ")
    bits: str = Field("w8a8", description="QAT bit widths: w8a8, w4a8, w2a8, ternary, w4a4")
    ti_mode: Literal["auto", "g", "o", "c", "m", "rg", "ro", "rm", "br", "b"] = Field(
        "auto", description="auto: g for attention models, br for CNNs. g/o/c/m: attention TI (Kim et al. 2023); "
                            "rg/ro/rm: residual-branch TI for CNNs; br: block reconstruction (b: its old name)")
    ti_steps: int | None = Field(None, ge=1, description="TI step-1 length (default 10% of qat_steps)")
    ti_blocks: list[str] | None = Field(None, description="block module paths for feature losses and TI (default: found by class name)")
    qat_loss_set: Literal["auto", "ternarybert", "edgekd"] = Field(
        "auto", description="auto: ternarybert (the TI paper's: soft CE at T=1 + hidden, score and attention-output "
                            "MSE) with --qat ti, edgekd (KL at τ=4 + block and score MSE) with --qat kd")
    ternary_scale: Literal["row", "layer"] = Field("row", description="ternary weights: one scale per output row or "
                                                                     "per layer (TernaryBERT's)")
    qat_steps: int = Field(600, ge=1)
    qat_lr: float = Field(5e-4, gt=0)
    qat_batch_size: int = Field(64, ge=1)
    act_quantizer: Literal["lsq", "pact"] = "lsq"
    first_last: Literal["8bit", "fp", "same"] = "8bit"
    keep_fp: list[str] = Field(default_factory=list, description="module paths kept in floating point")
    input_layers_float: Literal["auto", "never"] = Field(
        "auto", description="PTQ: keep the layers that read the model's input in float where the target's kernel "
                            "profile finds them slower in INT8 and the whole model, timed, is faster so (ONNX Runtime; "
                            "edgekd/quant/input_float.py); never: all INT8")
    plan: PlanConfig | None = Field(None, description="mixed precision by the planner (--max-drop); PTQ only")
    qat_parity_min_agreement: float = Field(0.995, ge=0, le=1)

    @field_validator("bits")
    @classmethod
    def _bits(cls, v: str) -> str:
        return _check_bits(v)


def _check_bits(v: str) -> str:
    import re

    if v.lower() in ("ternary", "twn") or re.fullmatch(r"w[2-8]a[2-8]", v.lower()):
        return v.lower()
    raise ValueError(f"bad bits {v!r}: use w8a8, w4a8, w2a8, ternary or w4a4")


#: the presets of edgekd.data.synth (listed here so that reading a config never imports torch; a test keeps them equal)
SYNTH_METHODS = ("adi", "deepinversion", "dfad", "dfad-balanced", "dfad-bn", "genie", "zeroq")


class SynthConfig(Strict):
    """Stage 0 (data-free): synthesize calibration and transfer data from the teacher (algorithms.md §2).

    Runs when no real data is given (``data.path`` unset), or with ``mix: true`` to add synthetic samples to a few
    real ones (``--data DIR --data-limit 100 --synth genie``)."""

    method: str = Field("auto", description="auto | " + " | ".join(SYNTH_METHODS) + "; auto: with BatchNorm, adi (Adaptive "
                        "DeepInversion) when a student is distilled on the set, genie when it only calibrates; without, dfad-balanced / dfad")
    n: int = Field(2048, ge=16, description="number of synthetic images")
    iterations: int | None = Field(None, ge=1, description="per batch (pixel/generator presets) or DFAD rounds; default: the preset's")
    batch_size: int | None = Field(None, ge=2)
    lr: float | None = Field(None, gt=0)
    seed: int = 0
    mix: bool = Field(False, description="with real data: add the synthetic samples to the real training split")
    holdout: float = Field(0.2, gt=0, lt=0.9, description="data-free only: fraction held out as val/test (half each)")

    @field_validator("method")
    @classmethod
    def _method(cls, v: str) -> str:
        v = v.lower()
        if v != "auto" and v not in SYNTH_METHODS:
            raise ValueError(f"unknown synthesis method {v!r}: use auto, {', '.join(SYNTH_METHODS)}")
        return v


class BenchConfig(Strict):
    """Stage 5: latency, memory, size and accuracy."""

    warmup: int | None = Field(None, ge=0, description="default: the profile's")
    warmup_seconds: float | None = Field(None, ge=0)
    iterations: int | None = Field(None, ge=10)
    threads: int | None = Field(None, ge=1)
    ci_width: float = Field(0.01, ge=0, lt=1, description="stop timing an artifact once its p50's 95 % confidence "
                            "interval is within ± this fraction of it (0: run the full count or time budget)")
    rounds: int = Field(3, ge=1, le=20, description="alternating rounds: artifacts timed A B C, C B A, … in one run, each "
                        "round a fresh process; the speed-up is the median of the per-round ratios, with their range")
    include_teacher: bool = True
    include_student_fp32: bool = True
    thread_sweep: bool = Field(True, description="also time every artifact at 1, the powers of two up to the core "
                               "count and the profile's thread count (CPU runtimes), and report the fastest")


class TrackingConfig(Strict):
    """Opt-in experiment tracking (edgekd/tracking.py)."""

    mlflow: bool = False
    mlflow_uri: str | None = Field(None, description="default: $MLFLOW_TRACKING_URI, else ./mlruns")
    experiment: str = "edgekd"


#: the tasks of edgekd.tasks (listed here so that reading a config never imports them; a test keeps them equal)
TASK_NAMES = ("classify", "detect", "outputs")


class PipelineConfig(Strict):
    model: str
    task: str = Field("auto", description="auto | " + " | ".join(TASK_NAMES) + ": what the model's outputs mean and how "
                      "they are scored (auto: decided from the model's outputs and the data's labels)")
    metric: str | None = Field(None, description="a user metric, path/to/file.py:fn or package.module:fn, "
                               "fn(outputs: dict[str, ndarray], targets) -> dict[str, float]; its primary key (fn.primary, "
                               "else the first key) headlines the report (edgekd.tasks.user_metric). Runs your code.")
    arch: str | None = None
    input_shape: str | None = None
    inputs: dict[str, Any] | None = Field(None, description="{name: shape} of the input the data feed, for a model "
                                          "with several inputs (edgekd.models.inputs); at most one")
    consts: dict[str, Any] | None = Field(None, description="{name: value} constants bound to the model's other "
                                          "inputs: a number, a list, or a .npy file")
    allow_pickle: bool = False
    targets: list[str] = Field(default_factory=lambda: ["x86-cpu"])
    run_dir: str | None = None
    data: DataConfig = Field(default_factory=DataConfig)
    synth: SynthConfig = Field(default_factory=SynthConfig)
    distill: DistillConfig = Field(default_factory=DistillConfig)
    export: ExportConfig = Field(default_factory=ExportConfig)
    quantize: QuantizeConfig = Field(default_factory=QuantizeConfig)
    bench: BenchConfig = Field(default_factory=BenchConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)

    @field_validator("task")
    @classmethod
    def _task(cls, v: str) -> str:
        if v != "auto" and v not in TASK_NAMES:
            raise ValueError(f"unknown task {v!r}: use auto or one of {', '.join(TASK_NAMES)}")
        return v

    @model_validator(mode="after")
    def _data_free_distill_defaults(self) -> "PipelineConfig":
        """With no real data the transfer set is a fixed synthetic sample: distil by function matching (flips/shifts
        plus mixup, the teacher queried on every augmented batch) for a long schedule, unless the user chose
        otherwise. Measured on the demo CNN, resnet-s on 1024 synthetic images (benchmarks/results/datafree.md, real
        test top-1), Genie / DeepInversion / ADI (300 iterations a batch): 49.0 / 63.8 / 70.6 % after 30 plain epochs,
        74.9 / 84.3 / 85.5 % after 300 with mixup (3 seeds), 80.0 / 87.1 / 88.5 % after 1000 (seed 0; ADI 88.3 on 3
        seeds); on real images 83.0 / 90.1 / 91.1 %. ADI at 1000 iterations a batch: 87.4 % after 300 epochs, 89.4 %
        after 1000 (3 seeds). Patience pays ≈ 2–3 points on synthetic sets (≈ 1 on real ones), and the epochs are cheap
        next to the synthesis (minutes vs hours on a CPU), hence 1000."""
        if self.data.path is None:
            defaults = (("mixup", 1.0), ("augment", True), ("epochs", 1000))
            upd = {k: v for k, v in defaults if k not in self.distill.model_fields_set}
            if upd:
                self.distill = self.distill.model_copy(update=upd)
        return self

    @field_validator("targets", mode="before")
    @classmethod
    def _split_targets(cls, v: Any) -> Any:
        if isinstance(v, str):
            return [t.strip() for t in v.split(",") if t.strip()]
        return v


def format_validation_error(err: ValidationError, source: str) -> ConfigError:
    first = err.errors()[0]
    where = ".".join(str(p) for p in first["loc"]) or "(top level)"
    if first["type"] == "extra_forbidden":
        return ConfigError(f"{source}: unknown key {where!r}", "remove it or check the spelling (see README, config file)")
    return ConfigError(f"{source}: {where}: {first['msg']}", "fix the value in the config")


def load_config_file(path: str | Path, overrides: dict[str, Any] | None = None) -> PipelineConfig:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist", "check the path")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path.name} is not valid YAML: {str(e).splitlines()[0]}", "fix the syntax") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path.name} must hold a mapping at the top level", "see the example in README")
    # Paths in a config file are relative to the file, like every build tool does it; paths given on the command
    # line or to the API (the overrides) are the caller's, relative to the working directory — so they are merged
    # after the file's own paths are resolved (`-o runs/x` with a config in examples/ writes ./runs/x).
    for key in ("model", "run_dir"):
        if isinstance(raw.get(key), str) and not Path(raw[key]).is_absolute() and raw[key] not in ("",):
            candidate = path.parent / raw[key]
            if candidate.exists() or key == "run_dir":
                raw[key] = str(candidate)
    for name, value in (raw.get("consts") or {}).items() if isinstance(raw.get("consts"), dict) else ():
        if isinstance(value, str) and value.endswith(".npy") and not Path(value).is_absolute():
            raw["consts"][name] = str(path.parent / value)
    data = raw.get("data")
    if isinstance(data, dict) and isinstance(data.get("path"), str):
        candidate = path.parent / data["path"]
        if candidate.exists():
            data["path"] = str(candidate)
    raw = deep_merge(raw, overrides or {})  # an override of one key in a section keeps the file's other keys
    try:
        return PipelineConfig.model_validate(raw)
    except ValidationError as e:
        raise format_validation_error(e, path.name) from None


def deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``over``'s keys; nested sections are merged key by key, so ``quantize.plan.max_drop`` from the
    command line keeps the file's ``quantize.plan.latency_budget_ms``."""
    out = dict(base)
    for k, v in over.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def build_config(**kwargs: Any) -> PipelineConfig:
    try:
        return PipelineConfig.model_validate(kwargs)
    except ValidationError as e:
        raise format_validation_error(e, "config") from None
