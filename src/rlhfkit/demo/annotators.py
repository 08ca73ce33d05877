"""Simulated annotators for the demo: they label through the feedback app's own services.

**These annotators are simulated.** No person labels anything in the demo. Each simulated annotator
ranks the K answers of an item by the world's hidden gold preference with Bradley–Terry noise: it
sorts the answers by ``gold / noise + Gumbel``, which is a Plackett–Luce draw, so any two answers i, j
come out in the order i before j with probability σ((gold_i − gold_j) / noise), exactly the
Bradley–Terry model the reward model assumes. ``noise`` is calibrated (:func:`calibrate_noise`) so
that two careful annotators agree on about 73% of pairs, the agreement InstructGPT reports between its
labelers. One annotator is careless (random rankings), so quality control has something to catch: the
gold items show it.

They work as people would in the app, through the same code: :func:`~rlhfkit.feedback.assignment.
next_assignment` (overlap, gold items, opt-outs, welfare limits), :func:`~rlhfkit.feedback.labels.reveal`
for items behind a content warning, :func:`~rlhfkit.feedback.labels.submit_label`. Each has a clock of
its own that advances by the time an item takes; when the server refuses work (a break is due, or the
daily cap is reached), the annotator waits until the time the refusal names, as a person would.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy.orm import Session

from rlhfkit.feedback.assignment import FeedbackError, next_assignment
from rlhfkit.feedback.db import Project, User, settings_row
from rlhfkit.feedback.labels import reveal, submit_label

INSTRUCTGPT_AGREEMENT = 0.73
"""Pairwise agreement between InstructGPT's labelers (Ouyang et al. 2022)."""


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x)) if x >= 0 else math.exp(x) / (1.0 + math.exp(x))


def expected_agreement(differences: list[float], noise: float) -> float:
    """How often two independent Bradley–Terry annotators order a pair the same way, averaged over
    pairs whose gold scores differ by ``differences``: p² + (1 − p)² with p = σ(Δ / noise)."""
    if not differences:
        return 1.0
    total = 0.0
    for difference in differences:
        p = sigmoid(difference / noise)
        total += p * p + (1 - p) * (1 - p)
    return total / len(differences)


def calibrate_noise(differences: list[float], target: float = INSTRUCTGPT_AGREEMENT) -> float:
    """The noise at which :func:`expected_agreement` equals ``target`` (bisection in log space).

    Agreement falls from its noise-free value (1 on strict pairs, 1/2 on gold ties) towards 1/2 as the
    noise grows; when even a tiny noise cannot reach ``target`` (too many gold ties), the tiny noise is
    returned.
    """
    low, high = 1e-3, 1e3
    if expected_agreement(differences, low) <= target:
        return low
    for _ in range(60):
        middle = math.sqrt(low * high)
        if expected_agreement(differences, middle) > target:
            low = middle
        else:
            high = middle
    return math.sqrt(low * high)


def noisy_ranks(scores: list[float], noise: float, rng: random.Random) -> list[int]:
    """Ranks (1 = best) from sorting ``scores / noise`` plus Gumbel noise: a Plackett–Luce sample."""
    keys = [s / noise - math.log(-math.log(rng.random() or 1e-12)) for s in scores]
    order = sorted(range(len(scores)), key=lambda i: -keys[i])
    ranks = [0] * len(scores)
    for position, index in enumerate(order):
        ranks[index] = position + 1
    return ranks


@dataclass
class SimulatedAnnotator:
    """One simulated labeller: an account in the app, a noise level, a pace and opt-outs."""

    name: str
    careless: bool = False
    opted_out: list[str] = field(default_factory=list)
    seconds_per_item: tuple[float, float] = (40.0, 90.0)

    def ranks(self, gold: list[float], noise: float, rng: random.Random) -> list[int]:
        if self.careless:
            order = list(range(1, len(gold) + 1))
            rng.shuffle(order)
            return order
        return noisy_ranks(gold, noise, rng)


@dataclass
class WorkLog:
    """What one simulated annotator did."""

    labels: int = 0
    gold_labels: int = 0
    revealed_warnings: int = 0
    breaks: int = 0
    days: int = 1
    finished_at: datetime | None = None


def label_project(session: Session, project: Project, annotators: list[tuple[SimulatedAnnotator, User]],
                  gold_of, noise: float, start: datetime, seed: int = 0, progress=None) -> dict[str, WorkLog]:
    """Let the annotators label the project through the app's services until no item is left for them.

    ``gold_of(prompt, responses) -> scores`` is the hidden preference. Annotators take turns (the one
    whose clock is earliest goes next), so the work is shared as it would be among people working at
    the same time. ``progress(n)`` is called after each label. Commits after every label.
    """
    rng = random.Random(seed)
    settings = settings_row(session)
    clocks = {annotator.name: start for annotator, _ in annotators}
    logs = {annotator.name: WorkLog() for annotator, _ in annotators}
    active = list(annotators)
    while active:
        annotator, user = min(active, key=lambda pair: clocks[pair[0].name])
        now, log = clocks[annotator.name], logs[annotator.name]
        try:
            assignment = next_assignment(session, project, user, now, settings)
            if assignment is not None and assignment.revealed_at is None:
                reveal(session, assignment, now, settings)  # the annotator read the warning and chose to see it
                log.revealed_warnings += 1
        except FeedbackError as refusal:  # welfare: a break or the day's cap; come back when allowed
            session.rollback()
            resume = datetime.fromisoformat(refusal.extra["resume_at"]).replace(tzinfo=None)
            log.breaks += 1
            log.days += resume.date() != now.date()
            clocks[annotator.name] = max(resume, now + timedelta(minutes=1))
            continue
        if assignment is None:
            session.rollback()
            log.finished_at = now
            active.remove((annotator, user))
            continue
        item = assignment.item
        done = now + timedelta(seconds=rng.uniform(*annotator.seconds_per_item))
        ranks = annotator.ranks(gold_of(item.prompt, item.responses), noise, rng)
        submit_label(session, assignment, project, {"ranks": ranks}, done)
        session.commit()
        log.labels += 1
        log.gold_labels += item.is_gold
        clocks[annotator.name] = done + timedelta(seconds=rng.uniform(2.0, 10.0))
        if progress is not None:
            progress(1)
    return logs
