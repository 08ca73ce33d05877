"""The demo's labelling stages: simulated annotators rank answers in a real feedback-app database
(SQLite), one project per round, through the app's assignment, welfare, gold and export code; quality
control then leaves out the annotator whose gold accuracy shows careless work (:func:`collect_labels`).
Their agreement is measured on the pairs two careful annotators both ranked, beside what their noise
predicts for those same pairs (:func:`careful_agreement`)."""

from __future__ import annotations

import itertools
import random
from datetime import datetime, timedelta
from pathlib import Path

from sqlalchemy import select

from rlhfkit.console import console, progress_bar
from rlhfkit.demo.annotators import (
    INSTRUCTGPT_AGREEMENT,
    SimulatedAnnotator,
    calibrate_noise,
    expected_agreement,
    label_project,
)
from rlhfkit.demo.world import ReplyStyle, World, gold_score, prompt_text, render_reply
from rlhfkit.feedback.agreement import pairwise_ranking_agreement
from rlhfkit.feedback.auth import create_user
from rlhfkit.feedback.cli import open_database
from rlhfkit.feedback.db import User
from rlhfkit.feedback.export import labels_by_item, project_labels, write_exports
from rlhfkit.feedback.importing import ProjectOptions, add_items, create_project, item_specs
from rlhfkit.feedback.stats import annotator_rows, project_agreement

ANNOTATORS = (
    SimulatedAnnotator("sim-alice"),
    SimulatedAnnotator("sim-bashir", opted_out=["violence"]),
    SimulatedAnnotator("sim-chen"),
    SimulatedAnnotator("sim-dana", careless=True, seconds_per_item=(25.0, 50.0)),
)
GOLD_ACCURACY_FLOOR = 0.5
"""Quality control: annotators whose best-answer accuracy on gold items is below this are excluded."""

GUIDELINES = ("Rank the answers from best (1) to worst. Prefer answers that help, are kind and are safe. "
              "(In this demo the annotators are simulated.)")
SIMULATION_NOTE = ("The annotators are simulated: they rank by the world's hidden gold preference with "
                   "Bradley-Terry noise, set so that two careful annotators are expected to order 73% of the "
                   "answer pairs of round 1 the same way (InstructGPT's labelers agreed on 73%); gold ties are "
                   "coin flips. One annotator is careless on purpose.")


def gold_items(world: World, count: int, seed: int) -> list[dict]:
    """Gold items: four answers of clearly different quality, the gold ranking known."""
    rng = random.Random(seed)
    styles = [ReplyStyle("helpful", "warm"), ReplyStyle("vague", "neutral", fillers=1),
              ReplyStyle("off_topic", "cold"), ReplyStyle("refusal", "cold", repeat=True)]
    items = []
    for request, phrasing in rng.sample([pair for pair in world.train if not pair[0].harmful], count):
        prompt = [{"role": "user", "content": prompt_text(request, phrasing)}]
        responses = [render_reply(request, style, rng) for style in styles]
        order = list(range(4))
        rng.shuffle(order)
        responses = [responses[i] for i in order]
        gold = gold_score([prompt] * 4, responses)
        ranking = sorted(range(4), key=lambda i: -gold[i])
        ranks = [ranking.index(i) + 1 for i in range(4)]
        items.append({"prompt": prompt, "responses": responses, "gold": ranks})
    return items


def gold_of(prompt, responses) -> list[float]:
    """The gold score of each of ``responses`` to one ``prompt``."""
    return gold_score([prompt] * len(responses), responses)


def open_fresh_database(folder: Path):
    """A session on a new, empty ``folder / "feedback.db"`` (an old one is deleted)."""
    folder.mkdir(parents=True, exist_ok=True)
    database = folder / "feedback.db"
    database.unlink(missing_ok=True)
    return open_database(f"sqlite:///{database}")


def create_demo_project(session, samples: list[dict], world: World, seed: int, quick: bool, round_number: int):
    """The round's ranking project (two annotators per item), holding the samples and a few gold items."""
    options = ProjectOptions(task_type="rank", overlap=2, gold_rate=0.05, guidelines=GUIDELINES)
    project = create_project(session, f"demo-round-{round_number}", options)
    rows = [(f"samples.jsonl:{i + 1}", record) for i, record in enumerate(samples)]
    rows += [(f"gold:{i + 1}", record) for i, record in enumerate(gold_items(world, 2 if quick else 8, seed))]
    add_items(session, project, item_specs(rows, options, use_lexicon=True))
    return project


def annotator_accounts(session, start: datetime) -> list[tuple[SimulatedAnnotator, object]]:
    """The app account of each simulated annotator (with its opt-outs), created the first time, committed."""
    users = []
    for annotator in ANNOTATORS:
        user = session.scalar(select(User).where(User.username == annotator.name))
        if user is None:
            user = create_user(session, annotator.name, "simulated-annotator-password", "annotator", start)
            user.opted_out_categories = list(annotator.opted_out)
        users.append((annotator, user))
    session.commit()
    return users


def calibrated_noise(samples: list[dict]) -> float:
    """The annotators' Bradley-Terry noise, calibrated on the gold differences of every pair of answers."""
    differences = []
    for record in samples:
        gold = gold_of(record["prompt"], record["responses"])
        differences += [a - b for i, a in enumerate(gold) for b in gold[i + 1:]]
    noise = calibrate_noise(differences)
    console.print(f"annotator noise calibrated to {noise:.3f} (expected agreement of two careful annotators "
                  f"{INSTRUCTGPT_AGREEMENT:.0%}, as InstructGPT's labelers)")
    return noise


def run_annotators(session, project, users: list, noise: float, start: datetime, seed: int, total: int) -> dict:
    """The simulated annotators label the project, with a progress bar; returns their logs by name."""
    with progress_bar("simulated annotators", total=total) as advance:
        return label_project(session, project, users, gold_of, noise, start, seed, progress=advance)


def excluded_by_quality_control(rows: list[dict]) -> frozenset[str]:
    """Annotators whose gold accuracy is below :data:`GOLD_ACCURACY_FLOOR`."""
    return frozenset(r["annotator"] for r in rows
                     if r["gold_accuracy"] is not None and r["gold_accuracy"] < GOLD_ACCURACY_FLOOR)


def careful_agreement(session, project, careful: set[str], noise: float) -> dict:
    """How often two careful annotators ordered an answer pair the same way, over every pair of answers
    of every (non-gold) item two of them ranked (``measured``, :func:`pairwise_ranking_agreement`),
    beside the agreement their noise predicts for those same pairs (``expected``,
    :func:`~rlhfkit.demo.annotators.expected_agreement`)."""
    rankings_per_item, differences = [], []
    for item, labels in labels_by_item(project_labels(session, project)).values():  # gold items left out
        rankings = [label.answer["ranks"] for label, name in labels if name in careful]
        gold = gold_of(item.prompt, item.responses)
        pairs_of_rankings = len(rankings) * (len(rankings) - 1) // 2
        differences += [a - b for a, b in itertools.combinations(gold, 2)] * pairs_of_rankings
        rankings_per_item.append(rankings)
    return {"measured": pairwise_ranking_agreement(rankings_per_item),
            "expected": expected_agreement(differences, noise) if differences else None,
            "pairs": len(differences), "target": INSTRUCTGPT_AGREEMENT}


def annotator_table(rows: list[dict], logs: dict, careful: set[str], excluded: frozenset[str]) -> list[dict]:
    """One row per annotator: labels, gold accuracy, QC verdict and welfare (breaks, warnings revealed)."""
    table_rows = []
    for row in rows:
        log = logs[row["annotator"]]
        table_rows.append({"name": row["annotator"], "labels": row["labels"], "gold_accuracy": row["gold_accuracy"],
                           "simulated": True, "careless": row["annotator"] not in careful,
                           "excluded_by_qc": row["annotator"] in excluded, "breaks": log.breaks,
                           "warnings_revealed": log.revealed_warnings, "median_seconds": row["median_seconds"]})
    return table_rows


def print_annotator_table(table_rows: list[dict]) -> None:
    for row in table_rows:
        console.print(f"  {row['name']}: {row['labels']} labels, gold accuracy {row['gold_accuracy']}, "
                      f"{row['breaks']} enforced breaks, {row['warnings_revealed']} content warnings revealed"
                      + (" [red]excluded by quality control[/]" if row["excluded_by_qc"] else ""))


def collect_labels(folder: Path, samples: list[dict], world: World, seed: int, quick: bool, round_number: int = 1,
                   noise: float | None = None) -> dict:
    """Simulated annotators rank the samples in the round's project of the feedback-app database in
    ``folder`` (a new database in round 1); returns their statistics and writes the round's export (QC
    applied) into ``folder / f"export-round-{round_number}"``. ``noise``: the annotators' noise (None:
    calibrated on these samples, as in round 1)."""
    session = open_fresh_database(folder) if round_number == 1 else open_database(f"sqlite:///{folder / 'feedback.db'}")
    start = datetime(2026, 1, 5, 9, 0) + timedelta(days=7 * (round_number - 1))
    project = create_demo_project(session, samples, world, seed, quick, round_number)
    users = annotator_accounts(session, start)
    noise = calibrated_noise(samples) if noise is None else noise
    logs = run_annotators(session, project, users, noise, start, seed, total=len(samples) * project.overlap)

    rows = annotator_rows(session, project, too_fast_seconds=10.0)
    excluded = excluded_by_quality_control(rows)
    careful = {a.name for a in ANNOTATORS if not a.careless}
    agreement = careful_agreement(session, project, careful, noise)
    alpha = project_agreement(session, project).get("krippendorff_alpha_ordinal")
    written = write_exports(session, project, folder / f"export-round-{round_number}", exclude=excluded)
    session.close()

    table_rows = annotator_table(rows, logs, careful, excluded)
    print_annotator_table(table_rows)
    console.print(f"careful annotators ordered {agreement['measured']:.1%} of {agreement['pairs']} answer pairs "
                  f"the same way (their noise predicts {agreement['expected']:.1%} on those pairs)")
    return {
        "round": round_number,
        "agreement": agreement,
        "pairwise_agreement": agreement["measured"],  # non-gold items, pairs of careful annotators
        "krippendorff_alpha": alpha,
        "noise": noise,
        "annotators": table_rows,
        "excluded": sorted(excluded),
        "exported": written,
        "note": SIMULATION_NOTE,
    }
