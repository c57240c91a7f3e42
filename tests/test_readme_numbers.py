"""Every number README's Benchmarks section quotes is in a result file of the script its bullet names (#14 §5)."""

from __future__ import annotations

import sys

from conftest import REPO

sys.path.insert(0, str(REPO / "benchmarks"))
from readme_numbers import benchmark_bullets, unbacked  # noqa: E402


def test_readme_benchmark_numbers_come_from_result_files() -> None:
    readme = (REPO / "README.md").read_text()
    assert len(benchmark_bullets(readme)) >= 5
    assert unbacked(readme) == []


def test_the_check_catches_a_drifted_number() -> None:
    readme = (REPO / "README.md").read_text()
    assert "93.29 % INT8" in readme
    problems = unbacked(readme.replace("93.29 % INT8", "93.92 % INT8"))
    assert problems == ["peers.py: 93.92 is in README but in no result file of peers.py"]
