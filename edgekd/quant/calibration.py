"""Calibration-set recipes (``calibration/*.yaml``): which real samples feed post-training quantization.

A recipe names the source split, the count, the selection rule and a seed, so the calibration set is reproducible
and recorded in the manifest. ``stratified`` takes the same number of samples per class (round-robin), which keeps
rare classes' activation ranges in the estimate.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Literal

import numpy as np
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from edgekd.data import Dataset
from edgekd.errors import UsageError


class Recipe(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    description: str = ""
    source: Literal["train", "val"] = "train"
    count: int = Field(300, ge=1)
    selection: Literal["stratified", "random", "first"] = "stratified"
    seed: int = 0


def builtin_dir() -> Path:
    repo = Path(__file__).resolve().parents[2] / "calibration"
    if repo.is_dir() and (repo.parent / "pyproject.toml").is_file():  # a source checkout
        return repo
    return Path(str(resources.files("edgekd") / "_calibration"))


def load_recipe(name_or_path: str) -> Recipe:
    p = Path(name_or_path)
    if not (p.suffix in (".yaml", ".yml") and p.is_file()):
        p = builtin_dir() / f"{name_or_path}.yaml"
    if not p.is_file():
        known = ", ".join(sorted(f.stem for f in builtin_dir().glob("*.yaml")))
        raise UsageError(f"unknown calibration recipe {name_or_path!r}", f"choose one of: {known}, or pass a recipe .yaml")
    try:
        return Recipe.model_validate(yaml.safe_load(p.read_text()))
    except ValidationError as e:
        first = e.errors()[0]
        raise UsageError(f"calibration recipe {p.name}: {'.'.join(map(str, first['loc']))}: {first['msg']}", "fix the recipe") from None


def select_unstratified(data: Dataset, recipe: Recipe, count: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """:func:`select` for data without classes to balance: a ``stratified`` recipe takes random samples instead."""
    return select(data, recipe.model_copy(update={"selection": "random"}) if recipe.selection == "stratified" else recipe,
                  count)


def select(data: Dataset, recipe: Recipe, count: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The calibration samples (x, y) for ``recipe``."""
    split = data.train if recipe.source == "train" else data.val
    n = min(count or recipe.count, len(split))
    rng = np.random.default_rng(recipe.seed)
    if recipe.selection == "first":
        idx = np.arange(n)
    elif recipe.selection == "random":
        idx = rng.permutation(len(split))[:n]
    else:
        per_class = [rng.permutation(np.flatnonzero(split.y == c)) for c in np.unique(split.y)]
        picked: list[int] = []
        depth = 0
        while len(picked) < n:
            row = [int(ix[depth]) for ix in per_class if depth < len(ix)]
            if not row:
                break
            picked += row[: n - len(picked)]
            depth += 1
        idx = np.array(picked)
    from edgekd.data.arrays import NormalizedArray

    # a uint8 split stays lazy: the quantizers read the calibration set batch by batch
    return (split.x.subset(idx) if isinstance(split.x, NormalizedArray) else split.x[idx]), split.y[idx]
