"""Win rates judged by people: pairs go into the feedback app, the labels come back as outcomes.

:func:`push_pairs` creates a pairwise project (``rlhfkit label``) with one item per comparison. Which
policy is shown as "A" is drawn at random per item (seeded), so a position bias of the annotators
cannot favour either policy; the draw is kept in the returned mapping (``people.json`` in the eval
folder), the only place that knows which answer is whose. Items are flagged by the app's sensitive
lexicon, as imported files are, so annotators get their warnings and opt-outs.

:func:`people_outcomes` reads the project's labels back. Per item, the annotators' majority decides
(:func:`rlhfkit.feedback.export.pairwise_winner`); "tie", "both bad" and a split vote count as a tie
(0.5), since none says which policy is better. Items nobody has labelled yet have no outcome (None)
and are counted as unlabelled.
"""

from __future__ import annotations

import random
from collections import defaultdict

from sqlalchemy import select
from sqlalchemy.orm import Session

from rlhfkit.feedback.db import Item, Project, committed, make_engine, make_session_factory, migrate
from rlhfkit.feedback.export import pairwise_winner, project_labels
from rlhfkit.feedback.importing import ProjectOptions, add_items, create_project, item_specs

GUIDELINES = """# Which answer is better?

Read the conversation and both answers. Choose the answer you would rather receive: the one that
answers the request helpfully, honestly and kindly, and declines requests that would cause harm.
Choose **tie** when they are equally good and **both bad** when neither is acceptable.
The answers come from two versions of an assistant, shown in a random order.
"""


def open_session(db_url: str) -> tuple[Session, object]:
    """A session on the feedback database (schema created or upgraded first) and its engine."""
    engine = make_engine(db_url)
    migrate(engine)
    return make_session_factory(engine)(), engine


def push_pairs(session: Session, project_name: str, rows: list[dict], *, seed: int = 0, overlap: int = 1,
               guidelines: str = GUIDELINES, use_lexicon: bool = True) -> dict:
    """Create the pairwise project ``project_name`` with one item per row (``{"prompt", "policy_answer",
    "baseline_answer"}``) and commit. Returns the mapping ``{"project", "items": [{"row", "item_id",
    "policy_shown_as": "A"|"B"}]}``. A ValueError when the project already exists."""
    rng = random.Random(seed)
    records, shown = [], []
    for index, row in enumerate(rows):
        policy_first = rng.random() < 0.5
        answers = ([row["policy_answer"], row["baseline_answer"]] if policy_first
                   else [row["baseline_answer"], row["policy_answer"]])
        records.append((f"eval:{index}", {"prompt": row["prompt"], "responses": answers}))
        shown.append("A" if policy_first else "B")
    options = ProjectOptions(task_type="pairwise", guidelines=guidelines, overlap=overlap)
    with committed(session):
        specs = item_specs(records, options, use_lexicon)  # checked and flagged as an import would be
        project = create_project(session, project_name, options)
        add_items(session, project, specs)
    items = session.scalars(select(Item).where(Item.project_id == project.id).order_by(Item.position)).all()
    return {"project": project.name, "project_id": project.id,
            "items": [{"row": index, "item_id": item.id, "policy_shown_as": side}
                      for index, (item, side) in enumerate(zip(items, shown, strict=True))]}


def outcome_of_choices(choices: list[str], policy_shown_as: str) -> float:
    """The policy's outcome from the annotators' choices ("A", "B", "tie", "both_bad") on one item."""
    winner = pairwise_winner(choices)
    if winner in ("A", "B"):
        return 1.0 if winner == policy_shown_as else 0.0
    return 0.5


def people_outcomes(session: Session, mapping: dict) -> tuple[list[float | None], dict]:
    """The outcome of each mapped row (None: not labelled yet) and counts
    ``{"items", "labelled", "unlabelled", "labels", "split_votes", "both_bad"}``."""
    project = session.scalar(select(Project).where(Project.name == mapping["project"]))
    if project is None:
        raise ValueError(f"the feedback database has no project {mapping['project']!r}")
    choices: dict[int, list[str]] = defaultdict(list)
    for label, item, _annotator in project_labels(session, project):
        choices[item.id].append(label.answer["choice"])
    outcomes: list[float | None] = [None] * len(mapping["items"])
    split = both_bad = 0
    for entry in mapping["items"]:
        given = choices.get(entry["item_id"])
        if not given:
            continue
        outcomes[entry["row"]] = outcome_of_choices(given, entry["policy_shown_as"])
        winner = pairwise_winner(given)
        split += winner is None
        both_bad += winner == "both_bad"
    labelled = sum(o is not None for o in outcomes)
    return outcomes, {"items": len(outcomes), "labelled": labelled, "unlabelled": len(outcomes) - labelled,
                      "labels": sum(len(c) for c in choices.values()), "split_votes": split, "both_bad": both_bad}
