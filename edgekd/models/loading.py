"""Load a model file: TorchScript, ``torch.export`` programs (``.pt2``), state_dicts with ``--arch``, and — only with
an explicit opt-in — whole pickled modules.

Loading a pickle runs arbitrary code, so ``torch.load`` is always called with ``weights_only=True`` unless the
user passed ``allow_pickle=True`` (CLI ``--allow-pickle``). The input shape comes from the file where it is
recorded (``.pt2`` example inputs, or edgekd's own metadata), else from ``input_shape``.
"""

from __future__ import annotations

import contextlib
import json
import pickle
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from edgekd.code_import import import_callable
from edgekd.errors import ModelLoadError
from edgekd.fileio import sha256_file
from edgekd.models.batching import PerSample, accepts_batch
from edgekd.models.safe_load import (UnsafeUnpickling, no_unsafe_unpickling, pt2_pickled_members, pt2_problem,
                                     torch_file_kind)
from edgekd.models.zoo import MODELS

STATE_DICT_WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "net", "weights")


@dataclass
class LoadedModel:
    module: nn.Module
    input_shape: tuple[int, ...] | None
    format: str
    path: str
    sha256: str
    meta: dict[str, Any] = field(default_factory=dict)
    program: Any = None  # the torch.export program of a .pt2 file (exported to ONNX directly)
    onnx_bytes: bytes | None = None  # an ONNX teacher: the graph the pipeline exports as is (batch made symbolic)
    notes: list[str] = field(default_factory=list)
    #: the input the data feed and the constants bound to the others (:mod:`edgekd.models.inputs`); None: one input
    bindings: dict[str, Any] | None = None

    @property
    def input_name(self) -> str:
        """The data input's name: the exported ONNX keeps it."""
        from edgekd.models.inputs import DEFAULT_INPUT_NAME

        return str((self.bindings or {}).get("data_input") or DEFAULT_INPUT_NAME)

    @property
    def identity(self) -> str:
        """What identifies the model in cache keys: the file's hash, with the bound constants when there are any."""
        from edgekd.models.inputs import identity

        return identity(self.sha256, self.bindings)

    def write_onnx(self, path: Path, input_shape: tuple[int, ...], opset: int, exporter: str,
                   output_names: list[str] | None = None) -> dict[str, Any]:
        """This model as ONNX at ``path``: an ONNX file's own graph as it is, anything else exported (its
        ``torch.export`` program when it has one). Returns the export record; ``as_is`` is True for an ONNX file,
        which has no PyTorch reference to check parity against. Formats own this, so the export stage and the
        student sizing need not know them."""
        from edgekd.fileio import atomic_path

        if self.onnx_bytes is not None:
            with atomic_path(path) as tmp:
                tmp.write_bytes(self.onnx_bytes)
            return {"exporter": "none (an ONNX file)", "source": self.path, "notes": self.notes, "as_is": True,
                    "batch_dynamic": getattr(self.module, "batch_dynamic", None)}
        from edgekd.exporters.onnx_export import export_onnx

        info = export_onnx(self.module, input_shape, path, opset, exporter, program=self.program,
                           output_names=output_names, input_name=self.input_name)
        return {**info, "as_is": False}


def parse_shape(text: str | None) -> tuple[int, ...] | None:
    """``"1x1x28x28"`` or ``"1,1,28,28"`` → (1, 1, 28, 28)."""
    if text is None:
        return None
    if isinstance(text, (list, tuple)):
        return tuple(int(v) for v in text)
    try:
        dims = tuple(int(v) for v in str(text).lower().replace(",", "x").split("x") if v.strip())
    except ValueError:
        raise ModelLoadError(f"bad input shape {text!r}", "write it as NxCxHxW, e.g. 1x1x28x28") from None
    if len(dims) < 2 or any(d <= 0 for d in dims):
        raise ModelLoadError(f"bad input shape {text!r}", "write it as NxCxHxW, e.g. 1x1x28x28")
    return dims


def resolve_factory(arch: str) -> Callable[..., nn.Module]:
    """``pkg.module:factory``, ``path/to/file.py:factory`` or a zoo name (``zoo:resnet-s`` / ``resnet-s``)."""
    if arch.startswith("zoo:") or (":" not in arch and arch in MODELS):
        return MODELS.get(arch.removeprefix("zoo:"))
    if ":" not in arch:
        raise ModelLoadError(f"bad --arch {arch!r}", "use module.path:factory, file.py:factory, or a zoo name")
    try:
        return import_callable(arch)
    except (ImportError, AttributeError, FileNotFoundError) as e:
        raise ModelLoadError(f"cannot import --arch {arch!r}: {e}", "check the module path and the factory name") from None


def sidecar_path(path: Path) -> Path:
    """``model.onnx`` → ``model.edgekd.json``: metadata for formats that cannot carry edgekd's own (a ``.pt2`` holds it
    in its ``edgekd.json`` extra file)."""
    return path.with_name(f"{path.name.split('.')[0]}.edgekd.json")


def read_sidecar(path: Path) -> dict[str, Any]:
    """The sidecar's ``edgekd`` section (normalize, class names, input_shape, …), or {} when there is none."""
    side = sidecar_path(path)
    if not side.is_file():
        return {}
    try:
        doc = json.loads(side.read_text())
    except (ValueError, OSError) as e:
        raise ModelLoadError(f"cannot read {side.name}: {str(e)[:80]}", "fix the JSON, or remove the file") from None
    meta = doc.get("edgekd", doc) if isinstance(doc, dict) else None
    if not isinstance(meta, dict):
        raise ModelLoadError(f"{side.name} does not hold a JSON object", 'write {"edgekd": {"normalize": {...}}}')
    return meta


def _first_line(e: BaseException, limit: int = 160) -> str:
    """The first non-empty line of an exception's text, cut to ``limit`` characters (torch's errors run to pages)."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    if lines and "TorchScript" in lines[0]:  # the interpreter's traceback comes first; the reason is the last line
        lines = [lines[-1]]
    line = lines[0] if lines else type(e).__name__
    return line if len(line) <= limit else line[: limit - 1] + "…"


@contextlib.contextmanager
def _quiet_torch_logs():  # noqa: ANN202
    """torch.export logs warnings (e.g. its pickle fallback) straight to stderr; edgekd reports in one line instead."""
    import logging

    loggers = [logging.getLogger(n) for n in ("torch.export", "torch._export", "torch._export.serde.serialize")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, lvl in zip(loggers, levels):
            lg.setLevel(lvl)


def _is_torchscript(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as z:
        names = z.namelist()
    return any("/code/" in n for n in names) and any(n.endswith("constants.pkl") for n in names)


def _is_exported_program(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as z:
        return any(n.endswith("serialized_exported_program.json") or "/models/" in n and n.endswith(".json") for n in z.namelist())


def _extract_state_dict(obj: Any) -> dict[str, torch.Tensor] | None:
    if isinstance(obj, dict):
        if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            return obj  # type: ignore[return-value]
        for k in STATE_DICT_WRAPPER_KEYS:
            if k in obj and isinstance(obj[k], dict):
                return _extract_state_dict(obj[k])
    return None


def _build_from_arch(arch: str, sd: dict[str, torch.Tensor]) -> nn.Module:
    factory = resolve_factory(arch)
    name = arch.removeprefix("zoo:")
    if name in MODELS:
        # zoo builders need (in_channels, num_classes): read them off the weights.
        first_conv = next((v for k, v in sd.items() if v.ndim == 4), None)
        last_linear = [v for k, v in sd.items() if v.ndim == 2]
        if first_conv is None or not last_linear:
            raise ModelLoadError(f"state_dict does not look like zoo model {name!r}", "pass --arch module:factory")
        return factory(int(first_conv.shape[1]), int(last_linear[-1].shape[0]))
    try:
        module = factory()
    except Exception as e:  # noqa: BLE001 - the user's factory: report its failure in one line
        raise ModelLoadError(f"the factory {arch} failed: {_first_line(e)}", "check it builds the model with no arguments") from None
    if not isinstance(module, nn.Module):
        raise ModelLoadError(f"the factory {arch} returned {type(module).__name__}, not a torch.nn.Module",
                             "make it return the model")
    return module


def load_model(
    path: str | Path,
    *,
    arch: str | None = None,
    input_shape: str | tuple[int, ...] | None = None,
    allow_pickle: bool = False,
    inputs: dict[str, Any] | None = None,
    consts: dict[str, Any] | None = None,
) -> LoadedModel:
    """Load any supported model file and return it in eval mode with its input shape and metadata.

    ``inputs`` (``{name: shape}``, at most one) names the input the data feed; ``consts`` (``{name: value}``) binds
    the model's other inputs to constants (:mod:`edgekd.models.inputs`), so the result is a one-input model."""
    from edgekd.models.inputs import bind_torch, bindings_record, const_value

    path = Path(path).expanduser()
    inputs = dict(inputs or {})
    consts = {n: const_value(n, v) for n, v in (consts or {}).items()}
    if not path.exists():
        raise ModelLoadError(f"model file {path} does not exist", "check the path")
    if path.is_dir():
        raise ModelLoadError(f"{path} is a folder, not a model file", "pass a .pt/.pt2/.pth file")
    shape = parse_shape(input_shape) if input_shape is not None else None
    if inputs:
        given = parse_shape(next(iter(inputs.values())))
        if shape is not None and given != shape:
            raise ModelLoadError(f"--input-shape {'x'.join(map(str, shape))} and --input "
                                 f"{next(iter(inputs))}={'x'.join(map(str, given or ()))} disagree", "pass one of them")
        shape = given
    if path.suffix.lower() == ".onnx":
        from edgekd.models.onnx_teacher import load_onnx_teacher

        teacher, data, file_shape, meta, note, data_name = load_onnx_teacher(path, inputs, consts)
        meta = {**read_sidecar(path), **meta}
        return LoadedModel(module=teacher, input_shape=shape or file_shape, format="onnx", path=str(path),
                           sha256=sha256_file(path), meta=meta, onnx_bytes=data, notes=[note],
                           bindings=bindings_record(data_name, consts) if (consts or inputs) else None)
    meta: dict[str, Any] = {}
    program = None

    if path.suffix.lower() == ".pt2" or _is_exported_program(path):
        problem = pt2_problem(path)
        if problem:
            raise ModelLoadError(f"{path.name} {problem}", "re-save the model with torch.export.save")
        pickled = pt2_pickled_members(path)
        if pickled and not allow_pickle:
            raise ModelLoadError(
                f"{path.name} stores {len(pickled)} pickled member(s) (e.g. {pickled[0]}); loading them would run code "
                "from the file", "if you trust the file, add --allow-pickle; better, re-save it from plain tensors")
        extra = {"edgekd.json": ""}
        guard = contextlib.nullcontext() if allow_pickle else no_unsafe_unpickling()
        try:
            with guard, _quiet_torch_logs():
                ep = torch.export.load(str(path), extra_files=extra)
        except UnsafeUnpickling as e:
            raise ModelLoadError(f"{path.name} asked to unpickle objects ({e}); that would run code from the file",
                                 "if you trust the file, add --allow-pickle") from None
        except Exception as e:  # noqa: BLE001 - any failure here means "not a readable .pt2"
            raise ModelLoadError(f"cannot read torch.export program {path.name}: {_first_line(e)}",
                                 "re-save it with torch.export.save") from None
        if extra.get("edgekd.json"):
            try:
                meta = json.loads(extra["edgekd.json"]).get("edgekd", {})
            except (ValueError, AttributeError):
                raise ModelLoadError(f"{path.name} has an unreadable edgekd.json extra file",
                                     "re-save it with valid JSON metadata") from None
        example = tuple(ep.example_inputs[0]) if ep.example_inputs else ()
        fmt = "torch.export"
        program = ep
        if len(example) > 1 or consts or inputs:
            # several inputs: bound through the program's own module (its forward names them); exported by tracing
            # the binding, since the program itself still takes every input
            module, data_name, pos = bind_torch(ep.module(), path.name, inputs, consts, example)
            program = None
        else:
            try:
                # unflatten keeps the module hierarchy, so forward hooks on module paths (feature KD) fire.
                module = torch.export.unflatten(ep)
            except Exception:  # noqa: BLE001
                module = ep.module()
            data_name, pos = None, 0
        if shape is None:
            if meta.get("input_shape"):
                shape = tuple(meta["input_shape"])
            elif pos < len(example) and isinstance(example[pos], torch.Tensor):
                shape = (1, *example[pos].shape[1:])
    elif _is_torchscript(path):
        try:
            module = torch.jit.load(str(path), map_location="cpu")
        except Exception as e:  # noqa: BLE001
            raise ModelLoadError(f"cannot read TorchScript file {path.name}: {_first_line(e)}", "re-save it with torch.jit.save") from None
        extra_meta = getattr(module, "edgekd_meta", None)
        if isinstance(extra_meta, str):
            try:
                meta = json.loads(extra_meta)
            except ValueError:
                meta = {}
        fmt = "torchscript"
    else:
        if torch_file_kind(path) == "unknown":
            raise ModelLoadError(f"{path.name} is not a model file edgekd can read (not TorchScript, .pt2 or torch.save "
                                 "output; it may be truncated or corrupt)", "pass a TorchScript, .pt2 or torch.save'd file")
        try:
            obj = torch.load(str(path), map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as e:
            if "weights only load failed" not in str(e).lower():  # a damaged stream, not a pickle of Python objects
                raise ModelLoadError(f"cannot read {path.name}: {_first_line(e)}",
                                     "the file may be truncated or corrupt; save it again") from None
            if allow_pickle:  # the user's explicit opt-in (--allow-pickle): only then may the pickle run its code
                obj = torch.load(str(path), map_location="cpu", weights_only=False)
            else:
                raise ModelLoadError(
                    f"{path.name} is a pickled Python object; loading it would run code from the file",
                    "if you trust it, add --allow-pickle; better, save a state_dict (+ --arch), TorchScript or .pt2",
                ) from None
        except Exception as e:  # noqa: BLE001
            raise ModelLoadError(f"cannot read {path.name}: {_first_line(e)}", "pass a TorchScript, .pt2 or torch.save'd file") from None
        if isinstance(obj, nn.Module):
            module, fmt = obj, "pickled-module"
        else:
            sd = _extract_state_dict(obj)
            if sd is None:
                raise ModelLoadError(f"{path.name} holds neither a module nor a state_dict", "save model.state_dict()")
            if isinstance(obj, dict) and isinstance(obj.get("edgekd"), dict):
                meta = obj["edgekd"]
            if arch is None:
                recorded = meta.get("arch")
                if isinstance(recorded, str) and recorded.removeprefix("zoo:") in MODELS:
                    arch = recorded  # a zoo name runs no code from anywhere but edgekd itself
                elif recorded:
                    # a factory named by the file (module:fn, file.py:fn) is code the file chose: never run it unasked
                    raise ModelLoadError(f"{path.name} names the factory {str(recorded)[:80]!r}; edgekd imports code only "
                                         "when you name it", f"if you trust it, pass --arch {str(recorded)[:80]}")
            if arch is None:
                raise ModelLoadError(f"{path.name} is a state_dict, which holds no architecture",
                                     "pass --arch module.path:factory (or a zoo name such as resnet-l)")
            module = _build_from_arch(arch, sd)
            try:
                missing, unexpected = module.load_state_dict(sd, strict=False)
            except RuntimeError as e:  # shape mismatches
                raise ModelLoadError(f"state_dict does not fit --arch {arch}: {_first_line(e)}",
                                     "pass the factory that built these weights") from None
            if missing or unexpected:
                raise ModelLoadError(
                    f"state_dict does not fit --arch {arch}: {len(missing)} missing keys (e.g. {missing[:2]}), "
                    f"{len(unexpected)} unexpected (e.g. {unexpected[:2]})", "pass the factory that built these weights")
            fmt = "state_dict"
            meta.setdefault("arch", arch)

    if fmt != "torch.export":
        module, data_name, _ = bind_torch(module, path.name, inputs, consts)
    bindings = bindings_record(data_name, consts) if (consts or inputs) else None
    meta = {**read_sidecar(path), **meta}
    if shape is None and meta.get("input_shape"):
        shape = tuple(meta["input_shape"])
    module.eval()
    notes: list[str] = []
    if shape is not None and not accepts_batch(module, shape, 2) and accepts_batch(module, shape, 1):
        # saved with a batch-1 example (torch.export specialises it): correct at any batch, one sample at a time
        module = PerSample(module)
        notes.append(f"{path.name} was saved with a fixed batch of 1: it runs one sample at a time here (slower); "
                     "re-export it with a dynamic batch (torch.export.Dim) for speed")
    return LoadedModel(module=module, input_shape=shape, format=fmt, path=str(path), sha256=sha256_file(path), meta=meta,
                       program=program, notes=notes, bindings=bindings)


def require_input_shape(lm: LoadedModel) -> tuple[int, ...]:
    if lm.input_shape is None:
        raise ModelLoadError(f"{Path(lm.path).name} does not record its input shape", "pass --input-shape, e.g. 1x1x28x28")
    return lm.input_shape


@torch.no_grad()
def probe_outputs(module: nn.Module, input_shape: tuple[int, ...]) -> Any:
    """The model's outputs on one dummy batch of 2; fail clearly when it does not accept the input shape."""
    x = torch.zeros((2, *input_shape[1:]))
    try:
        return module(x)
    except Exception as e:  # noqa: BLE001
        raise ModelLoadError(f"the model does not accept input of shape {tuple(input_shape)}: {_first_line(e)}",
                             "pass the right --input-shape") from None


def probe(module: nn.Module, input_shape: tuple[int, ...], task: str = "classify") -> dict[str, Any]:
    """What the task needs to know about the model's outputs (classification: ``num_classes``)."""
    from edgekd.tasks import get_task

    return get_task(task).probe(probe_outputs(module, input_shape))
