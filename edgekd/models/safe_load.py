"""What in a model file would run code when loaded, found before anything is loaded (issue #15).

Unpickling runs code named by the file. edgekd unpickles only with the opt-in of the person at the keyboard
(``--allow-pickle`` on the command line or ``allow_pickle: true`` in their own config), so every loader here first
*inspects* the file:

- ``.pt2`` (``torch.export.save``): a zip archive. ``torch.export.load`` in torch 2.13 unpickles with
  ``weights_only=False`` any weight or constant whose config says ``use_pickle``, any ``custom_obj_``/``opaque_obj_``
  constant, legacy ``data/weights|constants/<model>.pt`` members, and the sample inputs whenever the safe
  (``weights_only=True``) read of them fails. :func:`pt2_pickled_members` lists those members; the load itself then
  runs under :func:`no_unsafe_unpickling`, a second line of defence that turns any remaining unsafe unpickling into
  an error.
- ``torch.save`` files: :func:`torch_file_kind` tells a real torch file (zip with ``data.pkl``, or a legacy pickle
  stream) from random or truncated bytes, so a corrupt file is reported as corrupt, not as "a pickle: add
  --allow-pickle".
"""

from __future__ import annotations

import contextlib
import io
import json
import pickle
import warnings
import zipfile
from collections.abc import Iterator
from pathlib import Path

PICKLE_PROTOCOL_HEADER = b"\x80"


class UnsafeUnpickling(Exception):
    """Raised inside :func:`no_unsafe_unpickling` where a loader tried to unpickle arbitrary objects."""


def _relative(name: str) -> str:
    """Archive member name below the archive's root folder (``model/data/weights/x`` → ``data/weights/x``)."""
    return name.split("/", 1)[1] if "/" in name else name


def pt2_pickled_members(path: str | Path) -> list[str]:
    """Members of a ``.pt2`` archive that ``torch.export.load`` would unpickle with code execution ([] when none)."""
    import torch

    found: list[str] = []
    with zipfile.ZipFile(path) as z:
        for name in z.namelist():
            rel = _relative(name)
            if rel.endswith("_weights_config.json") or rel.endswith("_constants_config.json"):
                try:
                    config = json.loads(z.read(name)).get("config", {})
                except (ValueError, AttributeError):
                    found.append(f"{rel} (unreadable)")
                    continue
                for fqn, meta in config.items():
                    path_name = str(meta.get("path_name", "")) if isinstance(meta, dict) else ""
                    if not isinstance(meta, dict) or meta.get("use_pickle") or path_name.startswith(("custom_obj_", "opaque_obj_")):
                        found.append(f"{rel}: {fqn}")
            elif rel.startswith(("data/weights/", "data/constants/")) and rel.endswith(".pt"):
                found.append(rel)  # the legacy layout: one pickled file of all weights or constants
            elif rel.startswith("data/sample_inputs/") and z.getinfo(name).file_size:
                try:
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        torch.load(io.BytesIO(z.read(name)), weights_only=True)
                except Exception:  # noqa: BLE001 - torch would retry this one with weights_only=False
                    found.append(rel)
    return found


def pt2_problem(path: str | Path) -> str | None:
    """Why ``path`` is not a readable zip archive (truncated, not a zip, bad CRC), or None when it is one."""
    if not zipfile.is_zipfile(path):
        return "is not a zip archive (a .pt2 from torch.export.save is one): truncated or not a .pt2"
    try:
        with zipfile.ZipFile(path) as z:
            bad = z.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as e:
        return f"is a damaged zip archive ({e})"
    return f"is damaged (member {bad} fails its CRC check)" if bad else None


@contextlib.contextmanager
def no_unsafe_unpickling() -> Iterator[None]:
    """Within the block, ``torch.load(weights_only=False)``, ``pickle.loads`` and TorchScript's object unpickler
    raise :class:`UnsafeUnpickling` instead of running; ``torch.load`` is forced to ``weights_only=True``."""
    import torch

    real_load, real_loads = torch.load, pickle.loads
    real_obj = getattr(torch._C, "_pickle_load_obj", None)

    def safe_load(*args, weights_only=None, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        if weights_only is False:
            raise UnsafeUnpickling("torch.load(weights_only=False)")
        return real_load(*args, weights_only=True, **kwargs)

    def refuse(*_a, **_k):  # noqa: ANN002, ANN003, ANN202
        raise UnsafeUnpickling("pickle.loads")

    torch.load, pickle.loads = safe_load, refuse
    if real_obj is not None:
        torch._C._pickle_load_obj = refuse
    try:
        yield
    finally:
        torch.load, pickle.loads = real_load, real_loads
        if real_obj is not None:
            torch._C._pickle_load_obj = real_obj


def torch_file_kind(path: str | Path) -> str:
    """``"zip"`` (torch.save's zip format), ``"legacy-pickle"`` (an old-format pickle stream) or ``"unknown"``."""
    p = Path(path)
    if zipfile.is_zipfile(p):
        try:
            with zipfile.ZipFile(p) as z:
                names = z.namelist()
        except (zipfile.BadZipFile, OSError):
            return "unknown"
        return "zip" if any(n.endswith("data.pkl") for n in names) else "unknown"
    with open(p, "rb") as f:
        head = f.read(2)
    if len(head) == 2 and head[:1] == PICKLE_PROTOCOL_HEADER and 2 <= head[1] <= 5:
        return "legacy-pickle"
    return "unknown"
