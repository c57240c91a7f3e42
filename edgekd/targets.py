"""Device profiles: one YAML file per target in ``targets/`` (packaged), plus the user's own folders.

A profile names the backend, the device, supported precisions, the default precision, threads, latency budget,
backend settings (which ORT quantization types are fast on that CPU, OpenVINO device and hints) and how to
measure. Lookup order: folders in ``$EDGEKD_TARGETS_PATH`` (os.pathsep-separated), then the built-in ones, so a
user file with the same name overrides a built-in profile. Aliases (``jetson`` → ``jetson-orin-nano``) come from
each profile's ``aliases`` list.
"""

from __future__ import annotations

import fnmatch
import os
from importlib import resources
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from edgekd.errors import TargetError

class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DeviceInfo(_Strict):
    name: str
    arch: str = "x86_64"
    notes: str | None = None
    compute_capability: str | None = None
    jetpack: str | None = None
    tensorrt: str | None = None
    memory_gb: float | None = None
    power_modes: list[str] = Field(default_factory=list)
    dla_cores: int = 0


class MeasureSettings(_Strict):
    """Warm-up is at least ``warmup_seconds``, then on to ``warmup`` calls for at most as long again; timing stops at
    ``iterations`` calls, when the p50's 95 % CI is within ±``bench.ci_width``, or after ``max_seconds`` (split over
    the rounds), never before 50 calls (``edgekd.benchmark.worker._timed_loop``)."""

    warmup: int = Field(50, ge=0)
    warmup_seconds: float = Field(1.0, ge=0)
    iterations: int = Field(1000, ge=10)
    max_seconds: float = Field(30.0, gt=0)
    batch_sizes: list[int] = Field(default_factory=lambda: [1])


class OrtSettings(_Strict):
    """ONNX Runtime quantization and session settings.

    x86 without VNNI: U8 activations + S8 weights + ``reduce_range`` (7-bit weights) — ORT's int8 kernels saturate
    in the u8·s8 pair-sum without VNNI, and S8S8 gives no speed-up on x86 (measured: env-feasibility §6).
    ARM64: S8S8 runs on the dot-product kernels; reduce_range is not needed.
    """

    activation_type: Literal["uint8", "int8"] = "uint8"
    weight_type: Literal["int8", "uint8"] = "int8"
    reduce_range: bool = True
    per_channel: bool = True
    calibration_method: Literal["minmax", "mean-minmax", "entropy", "percentile"] = Field(
        "mean-minmax", description="activation ranges: minmax = the min and max over all calibration samples (one "
        "outlier widens the range); mean-minmax = the mean over samples of each sample's min and max (NNCF's default "
        "for per-tensor activations); entropy / percentile = ORT's histogram methods")
    activation_symmetric: bool = False
    quantize_bias: bool = Field(True, description="int32 bias Q/DQ (ORT fuses it); TensorRT wants float biases")
    graph_optimization: Literal["disable", "basic", "extended", "all"] = "all"
    execution_providers: list[str] = Field(default_factory=lambda: ["CPUExecutionProvider"])


class OpenvinoSettings(_Strict):
    """OpenVINO compile settings and NNCF PTQ settings.

    ``bias_correction: full`` runs NNCF's BiasCorrection instead of FastBiasCorrection: slower to quantize (seconds
    on small models) and more accurate (demo student: 91.87 → 92.52 % top-1, fp32 92.38 %).
    """

    device: str = "CPU"
    performance_hint: Literal["LATENCY", "THROUGHPUT"] = "LATENCY"
    inference_precision: str | None = "f32"
    preset: Literal["performance", "mixed"] = "performance"
    bias_correction: Literal["fast", "full"] = "full"
    int4_matmul: bool = Field(True, description="store ≤4-bit QAT MatMul weights as exact i4 constants (int4 FullyConnected kernel)")


class TensorrtSettings(_Strict):
    """TensorRT build settings (trtexec flags / builder config) and the INT8-vs-FP16 gate.

    ``max_opset``: the newest ONNX opset this TensorRT's parser reads (TensorRT support matrix: 8.5/8.6 → 17,
    10.x → 20 is a safe floor, 11.x → 25). ``dla_core``: run on this DLA core (profiles whose device has
    ``dla_cores``), with GPU fallback for layers DLA cannot run. Gate: keep INT8 only if FP16 p50 / INT8 p50 ≥
    ``int8_min_speedup`` and INT8 top-1 ≥ FP16 top-1 − ``accuracy_budget_points``."""

    max_opset: int = Field(17, ge=13)
    workspace_mb: int = Field(1024, ge=16)
    builder_optimization_level: int = Field(3, ge=0, le=5)
    dla_core: int | None = Field(None, ge=0)
    allow_gpu_fallback: bool = True
    sparsity: bool = False
    int8_min_speedup: float = Field(1.1, gt=0)
    accuracy_budget_points: float = Field(1.0, ge=0)


class Profile(_Strict):
    name: str
    description: str
    backend: Literal["onnxruntime", "openvino", "tensorrt"]
    device: DeviceInfo
    precisions: list[Literal["fp32", "fp16", "int8"]]
    default_precision: Literal["fp32", "fp16", "int8"]
    threads: int | None = Field(None, ge=1)
    latency_budget_ms: float | None = Field(None, gt=0)
    aliases: list[str] = Field(default_factory=list)
    measure: MeasureSettings = Field(default_factory=MeasureSettings)
    onnxruntime: OrtSettings = Field(default_factory=OrtSettings)
    openvino: OpenvinoSettings = Field(default_factory=OpenvinoSettings)
    tensorrt: TensorrtSettings = Field(default_factory=TensorrtSettings)
    source: str | None = None


def builtin_dir() -> Path:
    """The packaged profiles (``edgekd/_targets`` in a wheel), or ``targets/`` of a source checkout."""
    repo = Path(__file__).resolve().parent.parent / "targets"
    if repo.is_dir() and (repo.parent / "pyproject.toml").is_file():  # a source checkout
        return repo
    return Path(str(resources.files("edgekd") / "_targets"))


def search_dirs() -> list[Path]:
    extra = [Path(p) for p in os.environ.get("EDGEKD_TARGETS_PATH", "").split(os.pathsep) if p]
    return [*extra, builtin_dir()]


def load_profile_file(path: Path) -> Profile:
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise TargetError(f"profile {path} is not valid YAML: {str(e).splitlines()[0]}", "fix the file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise TargetError(f"cannot read profile {path}: {e}", "fix the file or its permissions") from None
    if not isinstance(raw, dict):
        raise TargetError(f"profile {path} must be a mapping", "see targets/x86-cpu.yaml for the schema")
    try:
        prof = Profile.model_validate(raw)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise TargetError(f"profile {path.name}: {where}: {first['msg']}", "see targets/x86-cpu.yaml for the schema") from None
    if prof.default_precision not in prof.precisions:
        raise TargetError(f"profile {path.name}: default_precision {prof.default_precision} is not in precisions", "fix the profile")
    if prof.tensorrt.dla_core is not None and prof.tensorrt.dla_core >= prof.device.dla_cores:
        raise TargetError(f"profile {path.name}: tensorrt.dla_core {prof.tensorrt.dla_core} but the device has "
                          f"{prof.device.dla_cores} DLA cores", "set dla_core below device.dla_cores, or remove it")
    prof.source = str(path)
    return prof


_WARNED: set[str] = set()


def all_profiles(broken: dict[str, TargetError] | None = None) -> dict[str, Profile]:
    """Every readable profile by name. A broken file in ``$EDGEKD_TARGETS_PATH`` is skipped (with one warning, and
    recorded in ``broken`` by file stem) so that it breaks only itself, not every other target."""
    found: dict[str, Profile] = {}
    for d in reversed(search_dirs()):  # user folders last, so they override built-ins
        if not d.is_dir():
            continue
        for f in sorted(d.glob("*.y*ml")):
            try:
                p = load_profile_file(f)
            except TargetError as e:
                if broken is not None:
                    broken[f.stem] = e
                if str(f) not in _WARNED:
                    _WARNED.add(str(f))
                    from edgekd import progress

                    progress.warn(f"skipping profile {f}: {e.message}")
                continue
            found[p.name] = p
    return found


VNNI_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")


def auto_profile_name(machine: str, isa: list[str]) -> tuple[str, str]:
    """(profile, why) for ``--target auto``: this machine's CPU profile. On x86-64 the choice that matters is VNNI:
    with it, full 8-bit weights are fast and accurate (``x86-cpu-vnni``); without it the u8·s8 AVX2 kernels
    saturate unless weights use 7 bits (``x86-cpu``, reduce_range). ARM64 takes the ARM CPU profile (S8S8)."""
    if machine in ("x86_64", "AMD64"):
        have = [f for f in VNNI_FLAGS if f in isa]
        if have:
            return "x86-cpu-vnni", f"this CPU has {have[0]}: full 8-bit weights"
        return "x86-cpu", "this CPU has no VNNI: 7-bit weights (reduce_range) keep AVX2's int8 kernels exact"
    if machine in ("aarch64", "arm64"):
        return "raspberry-pi-5", "an ARM64 CPU: ONNX Runtime with S8S8 int8"
    raise TargetError(f"--target auto does not know CPUs of type {machine!r}", "name a target (list: edgekd targets)")


def isa_advice(profile: Profile) -> str | None:
    """A warning when an x86 CPU profile's int8 settings do not fit the CPU this runs on (benchmark numbers would be
    for the wrong settings)."""
    from edgekd.benchmark.envinfo import cpu_info

    if profile.backend != "onnxruntime" or profile.device.arch != "x86_64":
        return None
    cpu = cpu_info()
    if cpu.get("machine") != "x86_64":
        return None
    vnni = any(f in cpu.get("isa", []) for f in VNNI_FLAGS)
    if vnni and profile.onnxruntime.reduce_range:
        return (f"this CPU has VNNI, but target {profile.name} quantizes weights to 7 bits (reduce_range, for CPUs "
                "without VNNI); x86-cpu-vnni (or --target auto) fits this machine")
    if not vnni and profile.onnxruntime.activation_type == "uint8" and not profile.onnxruntime.reduce_range:
        return (f"this CPU has no VNNI, so target {profile.name}'s full 8-bit weights can saturate AVX2's int8 "
                "kernels; x86-cpu (or --target auto) fits this machine")
    return None


def resolve(name: str) -> Profile:
    """A profile by name, alias or path to a profile file; ``auto`` is this machine's CPU profile."""
    if name.endswith((".yaml", ".yml")) and Path(name).is_file():
        return load_profile_file(Path(name))
    if name == "auto":
        from edgekd import progress
        from edgekd.benchmark.envinfo import cpu_info

        cpu = cpu_info()
        chosen, why = auto_profile_name(cpu.get("machine", ""), cpu.get("isa", []))
        progress.log(f"target auto → {chosen} ({why})")
        return resolve(chosen)
    broken: dict[str, TargetError] = {}
    profiles = all_profiles(broken)
    if name in profiles:
        return profiles[name]
    for p in profiles.values():
        if name in p.aliases:
            return p
    if name in broken:
        raise broken[name]
    import difflib

    close = difflib.get_close_matches(name, sorted(profiles), n=3)
    known = f"did you mean {', '.join(close)}? " if close else ""
    raise TargetError(f"unknown target {name!r}", f"{known}list them with: edgekd targets")


def list_profiles(pattern: str = "*") -> list[Profile]:
    return [p for n, p in sorted(all_profiles().items()) if fnmatch.fnmatch(n, pattern) or any(fnmatch.fnmatch(a, pattern) for a in p.aliases)]
