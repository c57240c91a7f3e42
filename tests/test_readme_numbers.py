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
    """Change one number the peers bullet quotes (whatever it is today) to a value no result file holds."""
    from readme_numbers import NUMBER

    readme = (REPO / "README.md").read_text()
    text = dict(benchmark_bullets(readme))["peers.py"]
    token = NUMBER.findall(text)[0]
    drifted = text.replace(token, "4321.987", 1)
    problems = unbacked(readme.replace(text, drifted))
    assert problems == ["peers.py: 4321.987 is in README but in no result file of peers.py"]
