"""Models with more than one input (issue #19): the data feed one of them, constants the rest.

An audio model ``forward(audio, sr)``, or an image model with a fixed ``mask``: the user names the input the data
feed (``--input audio=1x1024``, optional when the model has one input left) and binds the others to constants
(``--const sr=16000``; a number, a YAML list, or a ``.npy`` file). Every stage then sees a one-input model:

- a PyTorch model is wrapped in :class:`BoundInputs`, which calls it with the data at the data input's position and
  the constants at theirs; export traces the wrapper, so the constants become constants of the ONNX graph;
- an ONNX model has each bound input turned into an initializer of the input's own type (:func:`bind_onnx_inputs`),
  so ONNX Runtime and OpenVINO fold it like any weight.

The exported ONNX keeps the data input's name. Several *data* inputs (image + a per-sample mask from the data) are
not supported yet and are refused in one line. Constants are data, never code: nothing here imports or unpickles.
"""

from __future__ import annotations

import hashlib
import inspect
import json
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch
from torch import nn

from edgekd.errors import ModelLoadError

DEFAULT_INPUT_NAME = "input"


# ---------------------------------------------------------------------------------------------------- parsing


def parse_assignments(items: Iterable[str] | None, flag: str) -> dict[str, str]:
    """``["sr=16000", "audio=1x1024"]`` → ``{"sr": "16000", ...}``; one-line error for a malformed item."""
    out: dict[str, str] = {}
    for item in items or []:
        name, eq, value = str(item).partition("=")
        if not eq or not name.strip() or not value.strip():
            raise ModelLoadError(f"bad {flag} {item!r}", f"write it as {flag} NAME=VALUE")
        out[name.strip()] = value.strip()
    return out


def const_value(name: str, value: Any) -> np.ndarray:
    """A constant as a numpy array: a number or nested list (from YAML / the command line), or the path of a ``.npy``
    file (loaded with ``allow_pickle=False``). Integers become int64, floats float32, booleans stay bool."""
    import yaml

    if isinstance(value, str):
        if value.endswith(".npy"):
            path = Path(value).expanduser()
            if not path.is_file():
                raise ModelLoadError(f"--const {name}: {path} does not exist", "pass a number, a list or a .npy file")
            try:
                value = np.load(path, allow_pickle=False)
            except (ValueError, OSError, EOFError) as e:  # pickled (refused), damaged or truncated
                raise ModelLoadError(f"--const {name}: cannot read {path.name}: {str(e)[:80]}",
                                     "save it with np.save (numeric arrays only)") from None
        else:
            try:
                value = yaml.safe_load(value)
            except yaml.YAMLError:
                raise ModelLoadError(f"--const {name}={value!r} is not a number or a list",
                                     "pass a number (16000), a list ([1, 2]) or a .npy file") from None
    try:
        arr = np.asarray(value)
    except ValueError:
        arr = np.asarray([], dtype=object)
    if arr.dtype.kind not in "biuf" or arr.size == 0:
        raise ModelLoadError(f"--const {name}={str(value)[:40]!r} is not a number or an array of numbers",
                             "pass a number (16000), a list ([1, 2]) or a .npy file")
    if arr.dtype.kind in "iu":
        return arr.astype(np.int64)
    return arr.astype(np.float32) if arr.dtype.kind == "f" else arr


# ---------------------------------------------------------------------------------------------------- torch


def torch_inputs(module: nn.Module, example: tuple[Any, ...] | None = None) -> list[tuple[str, str, bool]] | None:
    """The model's positional inputs as (name, kind, required), kind ``tensor`` / ``int`` / ``float``, from its
    TorchScript schema, its ``forward`` signature, or a ``.pt2`` example; None when they cannot be told (``*args``).
    An input with a default is not required: the model runs without it unless ``--const`` sets it."""
    if isinstance(module, torch.jit.ScriptModule):
        try:
            args = module.forward.schema.arguments[1:]  # type: ignore[union-attr]
        except (AttributeError, RuntimeError):
            return None
        kinds = {"int": "int", "float": "float"}
        return [(a.name, kinds.get(str(a.type), "tensor"), not a.has_default_value()) for a in args]
    try:
        sig = inspect.signature(module.forward)
    except (TypeError, ValueError):
        return None
    params = [p for p in sig.parameters.values() if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if any(p.kind == p.VAR_POSITIONAL for p in sig.parameters.values()) and not params:
        return None
    out = []
    for i, p in enumerate(params):
        ex = example[i] if example is not None and i < len(example) else None
        if isinstance(ex, bool) or p.annotation is bool:
            kind = "tensor"
        elif isinstance(ex, int) or p.annotation is int:
            kind = "int"
        elif isinstance(ex, float) or p.annotation is float:
            kind = "float"
        else:
            kind = "tensor"
        out.append((p.name, kind, p.default is inspect.Parameter.empty))
    return out


class BoundInputs(nn.Module):
    """``module`` called as ``module(*args)`` with the data at ``data_name``'s position and every other input bound
    to its constant (tensor constants are non-persistent buffers, so they follow ``.to()`` and are traced as graph
    constants; ``int``/``float`` inputs get Python numbers, as a TorchScript ``int`` argument needs)."""

    def __init__(self, module: nn.Module, inputs: list[tuple[str, str, bool]], data_name: str,
                 consts: dict[str, np.ndarray], dtypes: dict[str, torch.dtype] | None = None) -> None:
        super().__init__()
        self.module = module
        self.order = [n for n, _, required in inputs if required]  # passed by position
        self.keywords = [n for n, _, required in inputs if not required]  # optional inputs a constant sets: by name
        self.data_name = data_name
        self._numbers: dict[str, int | float] = {}
        self._buffer_of: dict[str, str] = {}
        for i, (n, kind, _) in enumerate(inputs):
            if n == data_name:
                continue
            v = consts[n]
            if kind in ("int", "float"):
                if v.size != 1:
                    raise ModelLoadError(f"--const {n} must be one number (the model takes {kind} {n})",
                                         f"pass --const {n}=VALUE")
                self._numbers[n] = int(v.item()) if kind == "int" else float(v.item())
            else:
                t = torch.from_numpy(np.ascontiguousarray(v))
                if dtypes and n in dtypes:
                    t = t.to(dtypes[n])
                self.register_buffer(f"const_{i}", t, persistent=False)
                self._buffer_of[n] = f"const_{i}"

    def train(self, mode: bool = True) -> "BoundInputs":
        self.training = mode
        try:
            self.module.train(mode)
        except NotImplementedError:  # a .pt2 program's module: fixed in the mode it was exported in (eval)
            pass
        return self

    def _value(self, n: str, x: torch.Tensor) -> Any:
        return x if n == self.data_name else self._numbers[n] if n in self._numbers else getattr(self, self._buffer_of[n])

    def forward(self, x: torch.Tensor) -> Any:
        return self.module(*(self._value(n, x) for n in self.order), **{n: self._value(n, x) for n in self.keywords})


def choose_data_input(names: list[str], consts: dict[str, np.ndarray], inputs: dict[str, Any], where: str) -> str:
    """The one input the data feed: the one ``--input`` names, else the only one no constant binds. One-line errors
    name the model's inputs and the flag that fixes each problem."""
    listed = ", ".join(names)
    if len(inputs) > 1:
        raise ModelLoadError(f"--input names {len(inputs)} data inputs ({', '.join(inputs)}); edgekd feeds one input "
                             "from the data today", "bind the others to constants with --const NAME=VALUE")
    unknown = [n for n in [*consts, *inputs] if n not in names]
    if unknown:
        raise ModelLoadError(f"{where} has no input {unknown[0]!r} (its inputs: {listed})", "use one of those names")
    if inputs:
        data = next(iter(inputs))
        if data in consts:
            raise ModelLoadError(f"input {data!r} is given both --input and --const", "drop one of them")
        free = [n for n in names if n not in consts and n != data]
        if free:
            raise ModelLoadError(f"{where} takes {len(names)} inputs ({listed}); {', '.join(free)} "
                                 f"{'is' if len(free) == 1 else 'are'} neither the data input nor bound",
                                 f"bind {'it' if len(free) == 1 else 'them'} with --const {free[0]}=VALUE")
        return data
    free = [n for n in names if n not in consts]
    if len(free) == 1:
        return free[0]
    if not free:
        raise ModelLoadError(f"every input of {where} ({listed}) is bound by --const; none is left for the data",
                             "drop the --const of the input the data feed")
    raise ModelLoadError(f"{where} takes {len(names)} inputs ({listed}); edgekd feeds one from the data",
                         f"name it with --input {free[0]}=SHAPE and bind the others with --const "
                         f"{free[1]}=VALUE")


def bind_torch(module: nn.Module, where: str, inputs: dict[str, Any], consts: dict[str, np.ndarray],
               example: tuple[Any, ...] | None = None) -> tuple[nn.Module, str | None, int]:
    """(the module as a one-input model, the data input's name, the data input's position in the signature). A
    one-input model with nothing to bind comes back unchanged; so does one whose other inputs all have defaults. ``example`` (a ``.pt2``'s example inputs) gives tensor constants their
    dtype."""
    sig = torch_inputs(module, example)
    if sig is None:
        if consts or inputs:
            raise ModelLoadError(f"cannot tell the input names of {where} (its forward takes *args)",
                                 "wrap it in a module whose forward names its inputs")
        return module, None, 0
    unknown = [n for n in [*consts, *inputs] if n not in {s_[0] for s_ in sig}]
    if unknown:
        raise ModelLoadError(f"{where} has no input {unknown[0]!r} (its inputs: {', '.join(s_[0] for s_ in sig)})",
                             "use one of those names")
    every = [n for n, _, _ in sig]
    dtypes = {n: ex.dtype for (n, _, _), ex in zip(sig, example or ()) if isinstance(ex, torch.Tensor)}
    # optional inputs (with a default) take part only when a constant or --input names them
    sig = [s_ for s_ in sig if s_[2] or s_[0] in consts or s_[0] in inputs]
    names = [n for n, _, _ in sig]
    if len(names) <= 1 and not consts:
        if inputs and names and next(iter(inputs)) != names[0]:
            raise ModelLoadError(f"{where} has no input {next(iter(inputs))!r} (its input: {names[0]})", "use that name")
        return module, (names[0] if names else None), (every.index(names[0]) if names else 0)
    data = choose_data_input(names, consts, inputs, where)
    return BoundInputs(module, sig, data, consts, dtypes), data, every.index(data)


# ---------------------------------------------------------------------------------------------------- ONNX


def bind_onnx_inputs(model: Any, where: str, inputs: dict[str, Any], consts: dict[str, np.ndarray]) -> str:
    """Turn every input of ``model`` (an ``onnx.ModelProto``, changed in place) that ``consts`` binds into an
    initializer of the input's element type and declared shape; return the data input's name."""
    from onnx import helper, numpy_helper

    inits = {i.name for i in model.graph.initializer}
    graph_inputs = [i for i in model.graph.input if i.name not in inits]
    names = [i.name for i in graph_inputs]
    if len(names) <= 1 and not consts:
        if inputs and names and next(iter(inputs)) != names[0]:
            raise ModelLoadError(f"{where} has no input {next(iter(inputs))!r} (its input: {names[0]})", "use that name")
        return names[0] if names else DEFAULT_INPUT_NAME
    data = choose_data_input(names, consts, inputs, where)
    for vi in graph_inputs:
        if vi.name not in consts:
            continue
        dtype = helper.tensor_dtype_to_np_dtype(vi.type.tensor_type.elem_type)
        dims = [d.dim_value if d.HasField("dim_value") else None for d in vi.type.tensor_type.shape.dim]
        arr = consts[vi.name].astype(dtype)
        if None not in dims and int(np.prod(dims, dtype=np.int64)) == arr.size:
            arr = arr.reshape(dims)
        elif len(dims) != arr.ndim:
            raise ModelLoadError(f"--const {vi.name} has shape {list(arr.shape)}; the model's input {vi.name} is "
                                 f"{['?' if d is None else d for d in dims]}", "pass a value of that shape (.npy)")
        model.graph.initializer.append(numpy_helper.from_array(arr, vi.name))
        model.graph.input.remove(vi)
    return data


# ---------------------------------------------------------------------------------------------------- identity


def bindings_record(data_name: str | None, consts: dict[str, np.ndarray]) -> dict[str, Any]:
    """What the manifest records of the binding: the data input's name and each constant (small ones by value, all
    by hash), so that a changed constant changes every cache key that the model's identity enters."""
    rec: dict[str, Any] = {"data_input": data_name, "consts": {}}
    for n, v in sorted(consts.items()):
        digest = hashlib.sha256(v.tobytes() + str(v.dtype).encode() + str(v.shape).encode()).hexdigest()
        rec["consts"][n] = {"shape": list(v.shape), "dtype": str(v.dtype), "sha256": digest,
                            **({"value": v.tolist()} if v.size <= 16 else {})}
    return rec


def identity(file_sha256: str, record: dict[str, Any] | None) -> str:
    """The model's identity in cache keys: its file's hash, combined with its bound constants when it has any."""
    if not record or not record.get("consts"):
        return file_sha256
    return hashlib.sha256(json.dumps({"file": file_sha256, "bind": record}, sort_keys=True).encode()).hexdigest()
