"""Thin, torch-free wrappers that open an artifact in its runtime and return a batch → logits function.

Kept free of torch so the device-side runner (bench worker) can run where only a runtime is installed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np

from edgekd.errors import BackendUnavailableError

OPT_LEVELS = {"disable": "ORT_DISABLE_ALL", "basic": "ORT_ENABLE_BASIC", "extended": "ORT_ENABLE_EXTENDED", "all": "ORT_ENABLE_ALL"}


def ort_session(path: str | Path, threads: int | None = None, graph_optimization: str = "all",
                providers: list[str] | None = None, optimized_model_path: str | None = None) -> Any:
    import onnxruntime as ort

    so = ort.SessionOptions()
    if threads:
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
    so.graph_optimization_level = getattr(ort.GraphOptimizationLevel, OPT_LEVELS[graph_optimization])
    so.log_severity_level = 3
    if optimized_model_path:
        so.optimized_model_filepath = optimized_model_path
    return ort.InferenceSession(str(path), so, providers=providers or ["CPUExecutionProvider"])


def ov_compile(path: str | Path, threads: int | None = None, device: str = "CPU", performance_hint: str = "LATENCY",
               inference_precision: str | None = "f32") -> Any:
    try:
        import openvino as ov
    except ImportError:
        raise BackendUnavailableError("OpenVINO is not installed", "pip install 'edgekd[openvino]'") from None
    core = ov.Core()
    cfg: dict[str, Any] = {"PERFORMANCE_HINT": performance_hint}
    if threads:
        cfg["INFERENCE_NUM_THREADS"] = threads
    if inference_precision and device == "CPU":
        cfg["INFERENCE_PRECISION_HINT"] = inference_precision
    return core.compile_model(core.read_model(str(path)), device, cfg)


def make_runner(backend: str, path: str | Path, settings: dict[str, Any]) -> Callable[[np.ndarray], np.ndarray]:
    """A function mapping an input batch to logits, for accuracy and parity."""
    threads = settings.get("threads")
    if backend == "onnxruntime":
        sess = ort_session(path, threads, settings.get("graph_optimization", "all"), settings.get("execution_providers"))
        name = sess.get_inputs()[0].name
        return lambda x: sess.run(None, {name: np.ascontiguousarray(x, np.float32)})[0]
    if backend == "openvino":
        compiled = ov_compile(path, threads, settings.get("device", "CPU"), settings.get("performance_hint", "LATENCY"),
                              settings.get("inference_precision", "f32"))
        req = compiled.create_infer_request()

        def run(x: np.ndarray) -> np.ndarray:
            return np.array(req.infer({0: np.ascontiguousarray(x, np.float32)})[compiled.outputs[0]])

        return run
    raise BackendUnavailableError(f"no runner for backend {backend!r}", "use onnxruntime or openvino")
