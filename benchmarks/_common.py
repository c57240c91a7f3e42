"""Shared helpers for benchmark scripts: results folder, Markdown tables, environment capture."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
sys.path.insert(0, str(REPO))

from edgekd.benchmark.envinfo import capture  # noqa: E402
from edgekd.fileio import write_json, write_text  # noqa: E402


def md_table(header: list[str], rows: list[list[Any]]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(out)


def save(name: str, payload: dict[str, Any], markdown: str) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    payload = {**payload, "environment": capture()}
    write_json(RESULTS / f"{name}.json", payload)
    write_text(RESULTS / f"{name}.md", markdown.rstrip() + "\n")
    print(markdown)
