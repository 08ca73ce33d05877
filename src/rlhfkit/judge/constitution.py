"""Constitutions: the principles a judge weighs, read from YAML.

A constitution file holds ``principles:``, a list of ``{name, text, weight}`` (weight optional,
default 1). The judge either asks about all principles at once, or samples one principle per
comparison in proportion to the weights (Constitutional AI, Bai et al. 2022).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import yaml

from rlhfkit.data import DataError

DEFAULT_CONSTITUTION = Path(__file__).with_name("default_constitution.yaml")


@dataclass(frozen=True)
class Principle:
    name: str
    text: str
    weight: float = 1.0


def load_constitution(path: str | Path = DEFAULT_CONSTITUTION) -> list[Principle]:
    """The principles in a constitution YAML file; errors name the file, the principle and the field."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise DataError(f"{path}: not valid YAML: {err}") from err
    items = raw.get("principles") if isinstance(raw, dict) else None
    if not isinstance(items, list) or not items:
        raise DataError(f"{path}: expected a mapping with 'principles': a non-empty list of {{name, text, weight}}")
    principles = []
    for index, item in enumerate(items):
        where = f"{path}: principles[{index}]"
        if not isinstance(item, dict):
            raise DataError(f"{where}: expected a mapping {{name, text, weight}}, got {item!r}")
        for field in ("name", "text"):
            if not isinstance(item.get(field), str) or not item[field].strip():
                raise DataError(f"{where}: field '{field}': expected a non-empty string, got {item.get(field)!r}")
        weight = item.get("weight", 1.0)
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or weight <= 0:
            raise DataError(f"{where}: field 'weight': expected a positive number, got {weight!r}")
        principles.append(Principle(item["name"].strip(), " ".join(item["text"].split()), float(weight)))
    return principles


def principles_for(constitution: list[Principle], mode: str, rng: random.Random) -> list[Principle]:
    """The principles for one comparison: all of them (``all``) or one drawn by weight (``sample``)."""
    if mode == "all":
        return constitution
    if mode == "sample":
        return rng.choices(constitution, weights=[p.weight for p in constitution], k=1)
    raise ValueError(f"principles mode {mode!r}: expected 'all' or 'sample'")
