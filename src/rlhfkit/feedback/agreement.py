"""Inter-annotator agreement, as pure functions over plain Python values.

* :func:`percent_agreement`: over every pair of annotators who labelled the same item, the share
  that gave the same label.
* :func:`pairwise_ranking_agreement`: rankings compared pair by pair: over every two annotators of an
  item and every two responses both ordered strictly, the share ordered the same way (the figure
  InstructGPT reports, 73% between its labelers).
* :func:`cohens_kappa`: two annotators over the same items, chance-corrected (Cohen 1960).
* :func:`fleiss_kappa`: any number of annotators per item (Fleiss 1971); items may have different
  numbers of annotators (each item's agreement uses its own count), items with fewer than 2 are left
  out.
* :func:`krippendorff_alpha`: any number of annotators, missing values allowed, with a nominal,
  ordinal or interval distance (Krippendorff 2011, coincidence-matrix form). For rankings, each
  (item, response) is a unit whose values are the ranks annotators gave it, with the ordinal metric.

Each function returns ``None`` when the statistic is undefined (too little data, or no variation at
all, which makes chance agreement 1).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Hashable, Sequence
from itertools import combinations


def percent_agreement(labels_per_item: Sequence[Sequence[Hashable]]) -> float | None:
    """The share of agreeing pairs among all pairs of labels given to the same item."""
    agreeing = total = 0
    for labels in labels_per_item:
        for a, b in combinations(labels, 2):
            agreeing += a == b
            total += 1
    return agreeing / total if total else None


def pairwise_ranking_agreement(rankings_per_item: Sequence[Sequence[Sequence[int]]]) -> float | None:
    """The share of agreeing response pairs: for every two rankings of the same item (ranks, 1 = best)
    and every two responses both rankings order strictly, whether they order them the same way."""
    agreeing = total = 0
    for rankings in rankings_per_item:
        for first, second in combinations(rankings, 2):
            for i, j in combinations(range(len(first)), 2):
                if first[i] != first[j] and second[i] != second[j]:
                    agreeing += (first[i] < first[j]) == (second[i] < second[j])
                    total += 1
    return agreeing / total if total else None


def cohens_kappa(first: Sequence[Hashable], second: Sequence[Hashable]) -> float | None:
    """Cohen's kappa of two annotators' labels of the same items (``first[i]`` and ``second[i]``)."""
    if len(first) != len(second):
        raise ValueError(f"expected labels of the same items, got {len(first)} and {len(second)}")
    n = len(first)
    if n == 0:
        return None
    observed = sum(a == b for a, b in zip(first, second, strict=True)) / n
    counts_a, counts_b = Counter(first), Counter(second)
    expected = sum(counts_a[c] * counts_b[c] for c in counts_a) / (n * n)
    if expected == 1.0:
        return None
    return (observed - expected) / (1.0 - expected)


def fleiss_kappa(labels_per_item: Sequence[Sequence[Hashable]]) -> float | None:
    """Fleiss' kappa over items each labelled by two or more annotators."""
    items = [Counter(labels) for labels in labels_per_item if len(labels) >= 2]
    if not items:
        return None
    item_agreements = []
    category_totals: Counter = Counter()
    for counts in items:
        raters = sum(counts.values())
        item_agreements.append((sum(c * c for c in counts.values()) - raters) / (raters * (raters - 1)))
        category_totals.update(counts)
    all_labels = sum(category_totals.values())
    mean_agreement = sum(item_agreements) / len(items)
    chance = sum((total / all_labels) ** 2 for total in category_totals.values())
    if chance == 1.0:
        return None
    return (mean_agreement - chance) / (1.0 - chance)


def _distance(metric: str, values: list, totals: dict) -> dict:
    """Squared distance delta^2(c, k) between every two values, for the metric."""
    distances = {}
    for c in values:
        for k in values:
            if metric == "nominal":
                distances[c, k] = 0.0 if c == k else 1.0
            elif metric == "interval":
                distances[c, k] = float(c - k) ** 2
            elif metric == "ordinal":
                low, high = (c, k) if c <= k else (k, c)
                between = sum(totals[g] for g in values if low <= g <= high)
                distances[c, k] = (between - (totals[c] + totals[k]) / 2.0) ** 2
            else:
                raise ValueError(f"metric: expected nominal, ordinal or interval, got {metric!r}")
    return distances


def krippendorff_alpha(units: Sequence[Sequence], metric: str = "nominal") -> float | None:
    """Krippendorff's alpha of units, each the list of values annotators gave it (missing ones left out).

    Units with fewer than two values are not pairable and are left out.
    """
    coincidences: Counter = Counter()
    for unit in units:
        if len(unit) < 2:
            continue
        for i, a in enumerate(unit):
            for j, b in enumerate(unit):
                if i != j:
                    coincidences[a, b] += 1.0 / (len(unit) - 1)
    totals: Counter = Counter()
    for (a, _), weight in coincidences.items():
        totals[a] += weight
    n = sum(totals.values())
    if n <= 1:
        return None
    values = sorted(totals)
    distances = _distance(metric, values, totals)
    observed = sum(weight * distances[pair] for pair, weight in coincidences.items()) / n
    expected = sum(totals[c] * totals[k] * distances[c, k] for c in values for k in values) / (n * (n - 1))
    if expected == 0.0:
        return None
    return 1.0 - observed / expected
