"""What every judge returns, and the position-swap wrapper that removes position bias.

A judge compares two answers A and B to one prompt and returns a :class:`Verdict`: the probability
that A is the better answer. The winner, the confidence and ties all follow from that one number, so
judges of very different kinds (a language model's next-token log-probs, a reward model's score
difference, a rule) are combined and tested the same way.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class Comparison:
    """Which of two answers to ``prompt`` is better?"""

    prompt: object  # a string or a list of messages
    a: str
    b: str


@dataclass(frozen=True)
class Verdict:
    """A judge's answer: ``prob_a`` is its probability that A is better than B.

    ``consistent`` is False when a position-swapped judgement disagreed with itself (see
    :class:`PositionSwap`); such verdicts are ties.
    """

    prob_a: float
    rationale: str | None = None
    consistent: bool = True

    @property
    def winner(self) -> str:
        """"a", "b" or "tie" (exactly 0.5, or inconsistent across positions)."""
        if not self.consistent or self.prob_a == 0.5:
            return "tie"
        return "a" if self.prob_a > 0.5 else "b"

    @property
    def confidence(self) -> float:
        """How sure the judge is of its winner, from 0 (a coin flip) to 1."""
        return 0.0 if self.winner == "tie" else abs(2 * self.prob_a - 1)


class Judge(Protocol):
    """Anything with ``judge(comparisons) -> verdicts`` (one verdict per comparison, same order)."""

    name: str

    def judge(self, comparisons: list[Comparison]) -> list[Verdict]: ...


class PositionSwap:
    """Ask ``inner`` about both orders, (A, B) and (B, A), and combine.

    Language-model judges favour a position (often the first). With both orders asked, a judge that
    prefers the same *answer* both times gives ``prob_a`` = the mean of its two estimates; one that
    prefers the same *position* both times (its two winners disagree) gives a tie (``consistent`` False).
    """

    def __init__(self, inner: Judge):
        self.inner = inner
        self.name = f"{inner.name}+swap"

    def judge(self, comparisons: list[Comparison]) -> list[Verdict]:
        swapped = [Comparison(c.prompt, c.b, c.a) for c in comparisons]
        verdicts = self.inner.judge(list(comparisons) + swapped)
        forward, backward = verdicts[: len(comparisons)], verdicts[len(comparisons) :]
        combined = []
        for first, second in zip(forward, backward, strict=True):
            prob_a = (first.prob_a + (1.0 - second.prob_a)) / 2
            second_winner = {"a": "b", "b": "a", "tie": "tie"}[second.winner]  # in the original order
            consistent = "tie" in (first.winner, second_winner) or first.winner == second_winner
            rationale = "\n---\n".join(r for r in (first.rationale, second.rationale) if r) or None
            combined.append(Verdict(prob_a, rationale, consistent))
        return combined
