"""Win rates with 95% confidence intervals.

An *outcome* is one comparison of policy A's answer with policy B's: 1 (A wins), 0 (B wins) or 0.5
(a tie). The win rate counts a tie as half a win: ``rate = (wins + ties / 2) / n``, so two equally good
policies sit at 0.5 whether their comparisons end in ties or in split decisions.

The interval is the Wilson score interval (Wilson 1927) on that rate, with n comparisons:

    centre = (p + z²/2n) / (1 + z²/n),  half-width = z/(1 + z²/n) · sqrt(p(1-p)/n + z²/4n²),  z = 1.96

It stays inside [0, 1] and behaves at small n and at rates near 0 or 1, where the normal ("Wald")
interval collapses to a point. Treating a tie as a Bernoulli half-outcome is conservative: a tie is
less variable than a coin flip, so the interval is a little wider than it strictly needs to be.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass

Z_95 = 1.959963984540054
"""The standard normal's 97.5% quantile: a two-sided 95% interval."""

OUTCOMES = (0.0, 0.5, 1.0)


@dataclass(frozen=True)
class WinRate:
    """A's win rate against B: ties count half; ``low``/``high`` bound the 95% interval. With no
    comparisons (n = 0) the rate and the bounds are None."""

    rate: float | None
    low: float | None
    high: float | None
    wins: int
    losses: int
    ties: int
    n: int

    def as_dict(self) -> dict:
        return asdict(self)


def wilson_interval(rate: float, n: int, z: float = Z_95) -> tuple[float, float]:
    """The Wilson score interval of a proportion ``rate`` observed over ``n`` trials."""
    if n <= 0:
        raise ValueError("the Wilson interval needs at least one trial")
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"a proportion must lie in [0, 1], got {rate}")
    z2 = z * z
    denominator = 1.0 + z2 / n
    centre = (rate + z2 / (2 * n)) / denominator
    half = z / denominator * math.sqrt(rate * (1.0 - rate) / n + z2 / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


def win_rate(outcomes: Iterable[float]) -> WinRate:
    """Win rate and 95% Wilson interval of outcomes 1 (A wins), 0 (B wins), 0.5 (tie)."""
    wins = losses = ties = 0
    for outcome in outcomes:
        if outcome == 1:
            wins += 1
        elif outcome == 0:
            losses += 1
        elif outcome == 0.5:
            ties += 1
        else:
            raise ValueError(f"an outcome must be 1 (A wins), 0 (B wins) or 0.5 (tie), got {outcome!r}")
    n = wins + losses + ties
    if n == 0:
        return WinRate(None, None, None, 0, 0, 0, 0)
    rate = (wins + 0.5 * ties) / n
    low, high = wilson_interval(rate, n)
    return WinRate(rate, low, high, wins, losses, ties, n)


def outcome_of_scores(score_a: float, score_b: float) -> float:
    """1 when A scores higher, 0 when B does, 0.5 when they score the same."""
    return 1.0 if score_a > score_b else 0.0 if score_a < score_b else 0.5


def outcome_of_winner(winner: str) -> float:
    """The outcome of a judge's winner "a", "b" or "tie" (see :class:`rlhfkit.judge.base.Verdict`)."""
    return {"a": 1.0, "b": 0.0, "tie": 0.5}[winner]
