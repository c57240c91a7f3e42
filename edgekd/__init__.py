"""edgekd: distill, quantize, export, lower and benchmark a PyTorch model for one edge device.

    import edgekd
    edgekd.compress("teacher.pt2", targets=["x86-cpu"], data__path="fashion-mnist")

The verbs are imported lazily so that ``edgekd.benchmark.worker`` (the device-side runner) never imports torch.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
VERBS = ("compress", "distill", "export", "quantize", "lower", "bench", "bench_file", "report", "compare", "targets",
         "inspect", "synth")
__all__ = [*VERBS, "load_model"]


def __getattr__(name: str) -> Any:
    if name in VERBS:
        from edgekd import api

        return getattr(api, name)
    if name == "load_model":
        from edgekd.models.loading import load_model

        return load_model
    raise AttributeError(name)
