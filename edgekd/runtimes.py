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
                providers: list[str] | None = None, optimized_model_path: str | None = None,
                profile_prefix: str | None = None) -> Any:
    """An ONNX Runtime session; ``profile_prefix``: write a kernel profile there (``end_profiling()`` returns it)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    if threads:
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
    so.graph_optimization_level = getattr(ort.GraphOptimizationLevel, OPT_LEVELS[graph_optimization])
    so.log_severity_level = 3
    if optimized_model_path:
        so.optimized_model_filepath = optimized_model_path
    if profile_prefix:
        so.enable_profiling = True
        so.profile_file_prefix = profile_prefix
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


class TensorrtRunner:
    """Run a serialized TensorRT engine (one input, one output) with the ``tensorrt`` and ``cuda-python`` packages
    only — no torch, no pycuda. ``runner(x)`` returns logits; ``prepare(x)`` + ``execute()`` time the engine alone."""

    def __init__(self, engine_path: str | Path) -> None:
        try:
            import tensorrt as trt
            from cuda import cudart  # cuda-python
        except ImportError as e:
            raise BackendUnavailableError(f"cannot run a TensorRT engine here: {e}",
                                          "run on the device, with TensorRT and cuda-python installed (pip install cuda-python)") from None
        self.trt, self.cudart = trt, cudart
        logger = trt.Logger(trt.Logger.WARNING)
        self.engine = trt.Runtime(logger).deserialize_cuda_engine(Path(engine_path).read_bytes())
        if self.engine is None:
            raise BackendUnavailableError(f"TensorRT could not load {Path(engine_path).name}",
                                          "engines only load on the GPU and TensorRT version that built them: rebuild with build.sh")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.inp = next(n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT)
        self.out = next(n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT)
        self.stream = self._ok(cudart.cudaStreamCreate())
        self._bufs: dict[str, tuple[int, int]] = {}
        self._host_out: np.ndarray | None = None

    def _ok(self, res: Any) -> Any:
        err, *rest = res if isinstance(res, tuple) else (res,)
        if int(err) != 0:
            raise RuntimeError(f"CUDA error {err}")
        return rest[0] if len(rest) == 1 else rest

    def _buffer(self, name: str, nbytes: int) -> int:
        ptr, size = self._bufs.get(name, (0, 0))
        if size < nbytes:
            if ptr:
                self.cudart.cudaFree(ptr)
            ptr = self._ok(self.cudart.cudaMalloc(nbytes))
            self._bufs[name] = (ptr, nbytes)
            self.context.set_tensor_address(name, ptr)
        return ptr

    def prepare(self, x: np.ndarray) -> None:
        x = np.ascontiguousarray(x, np.float32)
        self.context.set_input_shape(self.inp, x.shape)
        d_in = self._buffer(self.inp, x.nbytes)
        out_shape = tuple(self.context.get_tensor_shape(self.out))
        self._host_out = np.empty(out_shape, np.float32)
        self._buffer(self.out, self._host_out.nbytes)
        kind = self.cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
        self._ok(self.cudart.cudaMemcpy(d_in, x.ctypes.data, x.nbytes, kind))

    def execute(self) -> None:
        self.context.execute_async_v3(self.stream)
        self._ok(self.cudart.cudaStreamSynchronize(self.stream))

    def timed(self, x: np.ndarray) -> Callable[[], Any]:
        self.prepare(x)  # copy once; the loop times enqueue + sync only
        return self.execute

    def infer(self, x: np.ndarray) -> np.ndarray:
        return self(x)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        self.prepare(x)
        self.execute()
        assert self._host_out is not None
        kind = self.cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        self._ok(self.cudart.cudaMemcpy(self._host_out.ctypes.data, self._bufs[self.out][0], self._host_out.nbytes, kind))
        return self._host_out.copy()


def packed(outputs: list[np.ndarray]) -> np.ndarray:
    """One output as it is; several flattened per sample and set side by side in graph order, (N, Σ d_k) — the
    layout :func:`edgekd.tasks.output_metrics.split_packed` undoes."""
    if len(outputs) == 1:
        return outputs[0]
    return np.concatenate([np.asarray(o, np.float32).reshape(len(o), -1) for o in outputs], 1)


class OrtSession:
    """An ONNX Runtime session: ``infer(x)`` → the outputs (several packed, :func:`packed`); ``timed(x)`` → a zero-argument call for timing loops."""

    def __init__(self, path: str | Path, settings: dict[str, Any]) -> None:
        self.sess = ort_session(path, settings.get("threads"), settings.get("graph_optimization", "all"),
                                settings.get("execution_providers"))
        first = self.sess.get_inputs()[0]
        self.input = first.name
        self.batch_fixed = isinstance(first.shape[0], int)  # a graph saved with a fixed batch (of 1)

    def infer(self, x: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(x, np.float32)
        if self.batch_fixed and len(x) != 1:
            return np.concatenate([packed(self.sess.run(None, {self.input: x[i : i + 1]})) for i in range(len(x))])
        return packed(self.sess.run(None, {self.input: x}))

    def timed(self, x: np.ndarray) -> Callable[[], Any]:
        feed = {self.input: np.ascontiguousarray(x, np.float32)}
        return lambda: self.sess.run(None, feed)


class OvSession:
    """An OpenVINO compiled model: ``infer(x)`` → the outputs (several packed, :func:`packed`); ``timed(x)`` sets the input once and returns the
    request's ``infer`` (the loop times inference only)."""

    def __init__(self, path: str | Path, settings: dict[str, Any]) -> None:
        self.compiled = ov_compile(path, settings.get("threads"), settings.get("device", "CPU"),
                                   settings.get("performance_hint", "LATENCY"), settings.get("inference_precision", "f32"))
        self.req = self.compiled.create_infer_request()
        self.out = self.compiled.outputs[0]
        shape = self.compiled.inputs[0].get_partial_shape()
        self.batch_fixed = shape.rank.is_static and shape[0].is_static

    def infer(self, x: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(x, np.float32)
        if self.batch_fixed and len(x) != 1:
            return np.concatenate([self._all(x[i : i + 1]) for i in range(len(x))])
        return self._all(x)

    def _all(self, x: np.ndarray) -> np.ndarray:
        res = self.req.infer({0: x})
        return packed([np.array(res[o]) for o in self.compiled.outputs])

    def timed(self, x: np.ndarray) -> Callable[[], Any]:
        import openvino as ov

        timed = self.compiled.create_infer_request()
        timed.set_input_tensor(ov.Tensor(np.ascontiguousarray(x, np.float32), shared_memory=True))
        return timed.infer


SESSIONS: dict[str, Callable[[str | Path, dict[str, Any]], Any]] = {
    "onnxruntime": OrtSession, "openvino": OvSession, "tensorrt": lambda path, _settings: TensorrtRunner(path)}


def open_session(backend: str, path: str | Path, settings: dict[str, Any]) -> Any:
    """The one way every caller (pipeline, benchmark worker, device runner) opens an artifact: an object with
    ``infer(x)`` and ``timed(x)``."""
    if backend not in SESSIONS:
        raise BackendUnavailableError(f"no runner for backend {backend!r}", f"use one of: {', '.join(SESSIONS)}")
    return SESSIONS[backend](path, settings)


def make_runner(backend: str, path: str | Path, settings: dict[str, Any]) -> Callable[[np.ndarray], np.ndarray]:
    """A function mapping an input batch to the model's first output, for accuracy and parity."""
    return open_session(backend, path, settings).infer
