"""Device-side benchmarking of one artifact, with no torch: ``edgekd bench model.onnx --profile x86-cpu --data s.npz``.

This is what runs on a Jetson, a Raspberry Pi or an Intel box after ``pip install 'edgekd[runtime]'``: it needs
numpy and the runtime of the artifact (ONNX Runtime, OpenVINO, or TensorRT + cuda-python) and nothing else. The
measurement is the same worker the pipeline uses (a fresh process per artifact), so numbers are comparable.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgekd.errors import UsageError
from edgekd.fileio import write_json, write_text
from edgekd.targets import Profile, resolve

def backend_for(artifact: Path, profile: Profile) -> str:
    """The backend that runs ``artifact``: by suffix (``.xml`` OpenVINO, ``.engine``/``.plan`` TensorRT), and for
    ``.onnx`` the profile's runtime (ONNX Runtime for TensorRT profiles: how a bundle's ONNX is checked before the
    engine exists)."""
    from edgekd.backends import BACKEND_NAMES, get_backend

    for name in BACKEND_NAMES:
        if name != "onnxruntime" and artifact.suffix in get_backend(name).suffixes:
            return name
    if artifact.suffix != ".onnx":
        raise UsageError(f"cannot benchmark {artifact.name}: unknown artifact type",
                         "pass a .onnx, an OpenVINO .xml or a TensorRT .engine file")
    return "openvino" if profile.backend == "openvino" else "onnxruntime"


def settings_for(backend: str, profile: Profile, threads: int | None) -> dict[str, Any]:
    """The runner settings of the artifact's backend for the profile (the backend's own: one place for them)."""
    from edgekd.backends import get_backend

    s = dict(get_backend(backend).settings(profile))
    if threads:
        s["threads"] = threads
    s["warmup_seconds"] = profile.measure.warmup_seconds
    s["max_seconds"] = profile.measure.max_seconds
    return s


def check_artifact(art: Path) -> None:
    """One line for an artifact that cannot be read, before a worker process is started for it."""
    if art.suffix == ".xml":
        if not art.with_suffix(".bin").is_file():
            raise UsageError(f"{art.name} has no weights file {art.with_suffix('.bin').name} next to it",
                             "copy the .bin that was saved with the .xml into the same folder")
    elif art.suffix == ".onnx":
        import onnx

        try:
            onnx.checker.check_model(str(art))
        except Exception as e:  # noqa: BLE001 - onnx raises several types for damaged files
            line = next((ln for ln in str(e).splitlines() if ln.strip()), type(e).__name__)
            raise UsageError(f"{art.name} is not a valid ONNX model: {line[:100]}",
                             "re-export it, or check the file was copied whole") from None


def check_npz(path: Path) -> None:
    import zipfile

    import numpy as np

    try:
        with np.load(path, allow_pickle=False) as z:
            if "x" not in z.files:
                raise UsageError(f"{path.name} has no array 'x' (has {sorted(z.files)})", "save with np.savez(path, x=inputs, y=labels)")
    except (OSError, ValueError, zipfile.BadZipFile) as e:
        raise UsageError(f"cannot read {path.name}: {str(e)[:100]}", "pass a .npz written by np.savez") from None


def _input_shape(artifact: Path, data: Path | None, backend: str) -> list[int]:
    import numpy as np

    if data is not None:
        with np.load(data) as z:
            return [1, *z["x"].shape[1:]]
    if backend == "onnxruntime" or artifact.suffix == ".onnx":
        import onnx

        g = onnx.load(str(artifact), load_external_data=False).graph
        dims = [d.dim_value or 1 for d in g.input[0].type.tensor_type.shape.dim]
        return [1, *dims[1:]]
    raise UsageError(f"cannot tell the input shape of {artifact.name}", "pass --data samples.npz (arrays x and y)")


def task_of(data: Path | None) -> str:
    """How the eval file's outputs are scored: the task a run recorded in it (``edgekd compress`` writes ``task``),
    else ``classify`` — a hand-made ``.npz`` of x and integer labels y."""
    import numpy as np

    if data is None:
        return "classify"
    with np.load(data, allow_pickle=False) as z:
        return str(z["task"]) if "task" in z.files else "classify"


def bench_artifact(artifact: str | Path, profile: str, data: str | Path | None = None, threads: int | None = None,
                   out_dir: str | Path | None = None, metric: str | None = None) -> dict[str, Any]:
    """Measure one artifact on this machine with the profile's settings; write result.json/result.md (+ latency.png)
    to ``out_dir`` when given; score it with the eval file's task and, when given, the user's metric. Returns the
    result."""
    from edgekd.benchmark.subprocess_worker import run_worker
    from edgekd.benchmark.envinfo import capture
    from edgekd.benchmark.charts import latency_png

    art = Path(artifact)
    if not art.is_file():
        raise UsageError(f"artifact {art} does not exist", "pass the .onnx/.xml/.engine file to benchmark")
    prof = resolve(profile)
    dpath = Path(data) if data else None
    if dpath is not None and not dpath.is_file():
        raise UsageError(f"data file {dpath} does not exist", "pass a .npz with arrays x (inputs) and y (labels)")
    backend = backend_for(art, prof)
    check_artifact(art)
    if dpath is not None:
        check_npz(dpath)
    settings = settings_for(backend, prof, threads)
    settings["input_shape"] = _input_shape(art, dpath, backend)
    task = task_of(dpath)
    res = run_worker(backend, art, dpath, settings, prof.measure.warmup, prof.measure.iterations, prof.measure.batch_sizes,
                     None, task, metric)
    res.update(profile=prof.name, artifact=str(art), environment=capture())
    l1 = res["latency"].get("1", {})
    acc = res.get("accuracy", {})
    from edgekd.benchmark.charts import METRIC_LABELS
    from edgekd.tasks import get_task
    primary = acc.get("metric_primary") or get_task(task).primary  # the user metric's, when it scored
    label = METRIC_LABELS.get(primary, primary)
    md = (f"# {art.name} on {prof.name} ({backend})\n\n| {label} | p50 ms | p90 ms | p95 ms | p99 ms | mean ms | CoV | outliers | "
          "throughput/s | size KB | peak RSS MB |\n|---|---|---|---|---|---|---|---|---|---|---|\n"
          f"| {acc.get(primary, float('nan')):.4f} | {l1.get('p50_ms', 0):.3f} | {l1.get('p90_ms', 0):.3f} | {l1.get('p95_ms', 0):.3f} | "
          f"{l1.get('p99_ms', 0):.3f} | {l1.get('mean_ms', 0):.3f} | {l1.get('cov', 0):.3f} | {l1.get('outliers', 0)} | "
          f"{l1.get('throughput_per_s', 0):.0f} | {res['size_bytes'] / 1024:.0f} | {res['peak_rss_mb']:.0f} |\n")
    for b, st in res["latency"].items():
        if b != "1":
            md += f"\nbatch {b}: p50 {st['p50_ms']:.3f} ms, {st['throughput_per_s']:.0f} samples/s"
    res["markdown"] = md
    if out_dir:
        od = Path(out_dir)
        od.mkdir(parents=True, exist_ok=True)
        write_json(od / "result.json", {k: v for k, v in res.items() if k != "markdown"})
        write_text(od / "result.md", md)
        latency_png([{"target": prof.name, "model": art.stem, "precision": "", "times_ms": l1.get("times_ms")}],
                    od / "latency.png")
    return res
