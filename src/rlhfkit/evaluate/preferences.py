"""How well scores agree with preference labels: accuracy, margin, calibration, per source."""

from __future__ import annotations

import math
from collections import defaultdict

CALIBRATION_EDGES = (0.5, 0.6, 0.7, 0.8, 0.9, 1.0)


def pairwise_report(differences: list[float], sources: list[str | None] | None = None) -> dict:
    """Report on score differences ``d = r(chosen) - r(rejected)`` of labelled pairs.

    - accuracy: share of pairs with d > 0 (a tie, d = 0, counts as wrong);
    - mean_margin: mean of d;
    - calibration: the model's confidence in its own pick, σ(|d|) under Bradley–Terry, bucketed
      (0.5-0.6, ..., 0.9-1.0) with the accuracy in each bucket; a calibrated model's accuracy in a
      bucket matches its mean confidence there;
    - by_source: accuracy and margin per ``source`` value, when sources are given.
    """
    if not differences:
        raise ValueError("no pairs to evaluate")
    sources = sources if sources is not None else [None] * len(differences)

    def summary(values: list[float]) -> dict:
        return {"pairs": len(values), "accuracy": sum(d > 0 for d in values) / len(values),
                "mean_margin": sum(values) / len(values)}

    buckets = []
    for low, high in zip(CALIBRATION_EDGES, CALIBRATION_EDGES[1:], strict=False):
        inside = [d for d in differences if low <= _confidence(d) < high or (high == 1.0 and _confidence(d) == 1.0)]
        buckets.append({
            "range": f"{low:.1f}-{high:.1f}",
            "pairs": len(inside),
            "accuracy": sum(d > 0 for d in inside) / len(inside) if inside else None,
            "mean_confidence": sum(_confidence(d) for d in inside) / len(inside) if inside else None,
        })
    by_source: dict[str, list[float]] = defaultdict(list)
    for difference, source in zip(differences, sources, strict=True):
        if source is not None:
            by_source[source].append(difference)
    return {**summary(differences), "calibration": buckets,
            "by_source": {source: summary(values) for source, values in sorted(by_source.items())}}


def _confidence(difference: float) -> float:
    return 1.0 / (1.0 + math.exp(-min(abs(difference), 50.0)))
