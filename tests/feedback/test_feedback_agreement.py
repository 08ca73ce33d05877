"""Agreement statistics against values worked out by hand and against published worked examples."""

from __future__ import annotations

import pytest

from rlhfkit.feedback.agreement import (
    cohens_kappa,
    fleiss_kappa,
    krippendorff_alpha,
    pairwise_ranking_agreement,
    percent_agreement,
)
from rlhfkit.feedback.export import pairwise_winner, ranks_from_means


def test_percent_agreement_counts_pairs_of_labels_per_item():
    # item 1: A, A, B -> pairs (A,A) yes, (A,B) no, (A,B) no; item 2: B, B -> 1 yes. 2 of 4 agree.
    assert percent_agreement([["A", "A", "B"], ["B", "B"], ["A"]]) == pytest.approx(0.5)
    assert percent_agreement([["A"]]) is None


def test_pairwise_ranking_agreement_compares_rankings_pair_by_pair():
    # Item 1: [1,2,3] vs [2,1,3]: pairs (0,1) disagree, (0,2) and (1,2) agree -> 2 of 3.
    # Item 2: [1,1,2] vs [1,2,3]: pair (0,1) is a tie in the first, skipped; (0,2), (1,2) agree -> 2 of 2.
    # Item 3: one ranking only, no pair.
    rankings = [[[1, 2, 3], [2, 1, 3]], [[1, 1, 2], [1, 2, 3]], [[1, 2]]]
    assert pairwise_ranking_agreement(rankings) == 4 / 5
    # three annotators give three pairs of rankings: [1,2] [1,2] [2,1] -> 1 of 3 agree
    assert pairwise_ranking_agreement([[[1, 2], [1, 2], [2, 1]]]) == 1 / 3
    assert pairwise_ranking_agreement([[[1, 2]]]) is None


def test_cohens_kappa_hand_computed():
    # 50 items: both yes 20, first yes / second no 5, first no / second yes 10, both no 15.
    # p_o = 35/50 = 0.7; p_e = (25/50)(30/50) + (25/50)(20/50) = 0.3 + 0.2 = 0.5; kappa = 0.2/0.5 = 0.4
    first = ["yes"] * 25 + ["no"] * 25
    second = ["yes"] * 20 + ["no"] * 5 + ["yes"] * 10 + ["no"] * 15
    assert cohens_kappa(first, second) == pytest.approx(0.4)
    # 4 items: A B A B vs A B B B: p_o = 3/4; p_e = (2/4)(1/4) + (2/4)(3/4) = 0.5; kappa = 0.25/0.5 = 0.5
    assert cohens_kappa(list("ABAB"), list("ABBB")) == pytest.approx(0.5)
    assert cohens_kappa(list("AAA"), list("AAA")) is None  # no variation: chance agreement is 1
    with pytest.raises(ValueError):
        cohens_kappa(["A"], ["A", "B"])


def test_fleiss_kappa_hand_computed_and_published_example():
    # 3 items x 3 raters: [A,A,A], [A,A,B], [B,B,B]
    # P_i = 1, (2*1 + 1*0)/(3*2) = 1/3, 1 -> mean 7/9; p_A = 5/9, p_B = 4/9 -> P_e = 41/81
    # kappa = (7/9 - 41/81) / (1 - 41/81) = (63 - 41) / (81 - 41) = 22/40 = 0.55
    assert fleiss_kappa([["A", "A", "A"], ["A", "A", "B"], ["B", "B", "B"]]) == pytest.approx(0.55)
    # Fleiss (1971) as worked on Wikipedia: 10 subjects, 14 raters, 5 categories -> kappa 0.210
    table = [[0, 0, 0, 0, 14], [0, 2, 6, 4, 2], [0, 0, 3, 5, 6], [0, 3, 9, 2, 0], [2, 2, 8, 1, 1],
             [7, 7, 0, 0, 0], [3, 2, 6, 3, 0], [2, 5, 3, 2, 2], [6, 5, 2, 1, 0], [0, 2, 2, 3, 7]]
    items = [[category for category, count in enumerate(row) for _ in range(count)] for row in table]
    assert fleiss_kappa(items) == pytest.approx(0.20993, abs=1e-5)
    assert fleiss_kappa([["A"], ["B"]]) is None


def test_krippendorff_alpha_hand_computed():
    # Two units, two coders, nominal: unit 1 (a, a), unit 2 (a, b).
    # Coincidences: o_aa = 2, o_ab = o_ba = 1; n_a = 3, n_b = 1, n = 4.
    # D_o = (o_ab + o_ba)/n = 2/4; D_e = (n_a n_b + n_b n_a)/(n(n-1)) = 6/12 -> alpha = 1 - 0.5/0.5 = 0
    assert krippendorff_alpha([["a", "a"], ["a", "b"]], "nominal") == pytest.approx(0.0)
    # Interval, units (1, 2) and (3, 3): o_12 = o_21 = 1, o_33 = 2; n = 4, values 1, 2, 3, 3
    # D_o = 2 * 1^2 / 4 = 0.5; D_e = sum over ordered pairs of distinct values of (c-k)^2 / (4*3)
    #     = 2 * [(1-2)^2 + 2 (1-3)^2 + 2 (2-3)^2] / 12 = 2 * 11 / 12 = 11/6 -> alpha = 1 - 0.5 / (11/6) = 8/11
    assert krippendorff_alpha([[1, 2], [3, 3]], "interval") == pytest.approx(8 / 11)
    assert krippendorff_alpha([[1, 1], [2, 2], [3]], "ordinal") == pytest.approx(1.0)
    assert krippendorff_alpha([[1], [2]], "ordinal") is None


def test_krippendorff_alpha_published_example():
    # Krippendorff (2011), "Computing Krippendorff's alpha-reliability": 4 observers, 12 units, missing
    # values; alpha = 0.743 nominal, 0.815 ordinal, 0.849 interval.
    observers = [[1, 2, 3, 3, 2, 1, 4, 1, 2, None, None, None],
                 [1, 2, 3, 3, 2, 2, 4, 1, 2, 5, None, 3],
                 [None, 3, 3, 3, 2, 3, 4, 2, 2, 5, 1, None],
                 [1, 2, 3, 3, 2, 4, 4, 1, 2, 5, 1, None]]
    units = [[row[unit] for row in observers if row[unit] is not None] for unit in range(12)]
    assert krippendorff_alpha(units, "nominal") == pytest.approx(0.743, abs=5e-4)
    assert krippendorff_alpha(units, "ordinal") == pytest.approx(0.815, abs=5e-4)
    assert krippendorff_alpha(units, "interval") == pytest.approx(0.849, abs=5e-4)
    with pytest.raises(ValueError):
        krippendorff_alpha(units, "ratio")


def test_aggregation_rules_of_the_export():
    assert pairwise_winner(["A", "A", "B"]) == "A"
    assert pairwise_winner(["A", "B"]) is None  # a split vote gives no pair
    assert pairwise_winner(["tie", "tie", "A"]) == "tie"
    assert ranks_from_means([1.5, 1.0, 1.5, 3.0]) == [2, 1, 2, 4]
