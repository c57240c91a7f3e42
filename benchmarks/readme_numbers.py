"""README's benchmark figures, from the result files — so text and data cannot drift apart (issue #14 §5).

    python benchmarks/readme_numbers.py            # print each result's tables (what README may quote)
    python benchmarks/readme_numbers.py --check    # list README numbers that no result file of their bullet holds

Each bullet of README's "Benchmarks" section starts with the script it reports (`` `peers.py` — …``). Every decimal
number in that bullet must appear, up to the rounding README shows, in that script's result files
(``benchmarks/results/<name>*.md|json``); ``tests/test_readme_numbers.py`` runs the check.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"

#: script → the result-file name prefixes it writes
SOURCES = {
    "int8_speed_accuracy.py": ["int8_speed_accuracy"],
    "kd_vs_labels.py": ["kd_vs_labels"],
    "ti_vs_qat_kd.py": ["ti_vs_qat_kd"],
    "datafree.py": ["datafree.", "datafree_samples"],
    "datafree_arch.py": ["datafree_mobilenet-se-s"],
    "peers.py": ["peers"],
    "calibration_range.py": ["calibration_range"],
    "detection.py": ["detection."],
    "detection_kd_terms.py": ["detection_kd_terms"],
    "detection_students.py": ["detection_students"],
    "detector_robustness.py": ["detector_robustness"],
    "planner.py": ["planner"],
    "byom.py": ["byom"],
}
NUMBER = re.compile(r"(?<![\w.])[-−]?\d+\.\d+(?![\w.])")


def benchmark_bullets(readme: str) -> list[tuple[str, str]]:
    """(script, bullet text) for each bullet of the Benchmarks section."""
    start = readme.index("## Benchmarks")
    end = readme.index("\n## ", start + 1)
    section = readme[start:end]
    out = []
    for bullet in re.split(r"\n- ", section)[1:]:
        m = re.match(r"`([\w.]+\.py)`", bullet)
        if m:
            out.append((m.group(1), bullet))
    return out


def _float(token: str) -> float:
    return float(token.replace("−", "-"))


def result_numbers(prefixes: list[str]) -> list[float]:
    values: list[float] = []
    for p in sorted(RESULTS.iterdir()):
        if p.suffix in (".md", ".json") and any(p.name.startswith(x) for x in prefixes):
            found = [_float(v) for v in NUMBER.findall(p.read_text())]
            values += found
            if p.suffix == ".json":  # fractions in JSON are percentages in README
                values += [100 * v for v in found if abs(v) <= 1]
    return values


def unbacked(readme: str) -> list[str]:
    """README numbers that no result file of their bullet's script holds (to README's rounding)."""
    problems = []
    for script, text in benchmark_bullets(readme):
        if script not in SOURCES:
            problems.append(f"{script}: no result files registered in benchmarks/readme_numbers.py SOURCES")
            continue
        have = result_numbers(SOURCES[script])
        for tok in NUMBER.findall(text):
            n = _float(tok)
            decimals = len(tok.split(".")[1])
            tol = 0.5 * 10 ** -decimals + 1e-9
            if not any(abs(abs(n) - abs(v)) <= tol for v in have):
                problems.append(f"{script}: {tok} is in README but in no result file of {script}")
    return problems


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--check", action="store_true")
    a = ap.parse_args()
    readme = (REPO / "README.md").read_text()
    if a.check:
        problems = unbacked(readme)
        print("\n".join(problems) or "every README benchmark number is in a result file")
        sys.exit(1 if problems else 0)
    for script, prefixes in SOURCES.items():
        for p in sorted(RESULTS.glob("*.md")):
            if any(p.name.startswith(x) for x in prefixes):
                print(f"\n===== {script} → results/{p.name}\n")
                print("\n".join(ln for ln in p.read_text().splitlines() if ln.startswith(("|", "#", "- "))))
        for p in sorted(RESULTS.glob("*.json")):
            if any(p.name.startswith(x) for x in prefixes) and not p.name.endswith(".partial.json"):
                env = json.loads(p.read_text()).get("environment", {})
                print(f"(results/{p.name}: measured on {env.get('cpu', {}).get('model', '?')})")


if __name__ == "__main__":
    main()
