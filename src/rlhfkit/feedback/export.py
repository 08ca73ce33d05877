"""Exports: the project's labels as the JSONL files rlhfkit's trainers read directly.

=================  ===========================================  ======================================
file               records                                      read by
=================  ===========================================  ======================================
preferences.jsonl  ``{"prompt", "chosen", "rejected", "source"}`` ``rlhfkit rm``, ``rlhfkit dpo``
rankings.jsonl     ``{"prompt", "responses", "ranks"}``          ``rlhfkit rm`` (one comparison group)
sft.jsonl          ``{"prompt", "completion"}``                  ``rlhfkit sft``
kto.jsonl          ``{"prompt", "completion", "label"}``         ``rlhfkit dpo --loss kto``
labels.jsonl       every label of every annotator, raw           people, other tools
=================  ===========================================  ======================================

Aggregation over the annotators of an item (the default; ``aggregate=False`` writes one record per
label instead, with the annotator as ``source``):

* **pairwise**: an item gives the pair (winner chosen) when its most common answer is A or B with
  strictly more votes than any other answer. **Ties** and **both bad** give no pair: Bradley–Terry
  and DPO have no term for "equally good", and "both bad" says nothing about which is better. A
  both-bad item instead gives both responses to kto.jsonl as undesirable (``label: false``).
* **rank**: each response's mean rank over annotators; equal means are equal ranks (a tie). The
  ranking goes to rankings.jsonl and, expanded to its C(K,2) pairs with ties skipped, to
  preferences.jsonl.
* **rating**: each response's mean rating; above the scale's midpoint is desirable, below it
  undesirable, exactly on it gives no record (kto.jsonl).
* **edits**: every edited answer is its own demonstration in sft.jsonl (never aggregated).

**Reviews** (see :mod:`.review`): a label a reviewer **rejected** is left out of every file but
labels.jsonl, where it is marked ``"review_status": "rejected"``; the trainers read only the other
files, so they never see it, and :func:`project_labels` (which semi-AI merging and the evaluation
also read) leaves it out unless asked. A **corrected** label counts with the reviewer's answer;
labels.jsonl gives both (``answer`` and the annotator's ``original_answer``).

Gold items measure annotators; they are left out of every file but labels.jsonl. Every record
carries the imported record's own ``id`` and ``metadata`` where it had them (labels.jsonl always,
null where absent), so a label can be traced back to its source.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from pathlib import Path
from urllib.parse import quote

from sqlalchemy import select
from sqlalchemy.orm import Session, selectinload

from rlhfkit.data.records import ranked_index_pairs
from rlhfkit.data.writers import to_jsonl
from rlhfkit.feedback.db import Assignment, Item, Label, Project, User

EXPORT_KINDS = ("preferences", "rankings", "sft", "kto", "labels")
"""The files an export writes, as ``KIND.jsonl``."""


def project_labels(session: Session, project: Project, *, rejected: bool = False) -> list[tuple[Label, Item, str]]:
    """(label, item, annotator name) for every label of the project, in submission order; labels a
    reviewer rejected only with ``rejected=True``."""
    query = (select(Label, Item, User.username).join(Item, Label.item_id == Item.id)
             .join(User, Label.user_id == User.id).options(selectinload(Item.categories))
             .where(Label.project_id == project.id).order_by(Label.id))
    if not rejected:
        query = query.where(Label.review_status != "rejected")
    return [tuple(row) for row in session.execute(query).all()]


def labels_by_item(rows: list[tuple[Label, Item, str]]) -> dict[int, tuple[Item, list[tuple[Label, str]]]]:
    """The non-gold labels grouped by item, items in import order."""
    grouped: dict[int, tuple[Item, list]] = {}
    for label, item, annotator in sorted(rows, key=lambda row: row[1].position):
        if not item.is_gold:
            grouped.setdefault(item.id, (item, []))[1].append((label, annotator))
    return grouped


def pairwise_winner(choices: list[str]) -> str | None:
    """The answer with strictly more votes than any other, or None when the vote is split."""
    ranked = Counter(choices).most_common()
    if len(ranked) > 1 and ranked[0][1] == ranked[1][1]:
        return None
    return ranked[0][0]


def ranks_from_means(means: list[float]) -> list[int]:
    """Competition ranks (1 = best = smallest mean); equal means share a rank: [1.5, 1.0, 1.5] -> [2, 1, 2]."""
    return [1 + sum(other < mean for other in means) for mean in means]


def identity(item: Item) -> dict:
    """The imported record's own ``id`` and ``metadata``, where it had them (for every export record)."""
    fields = {}
    if item.external_id is not None:
        fields["id"] = item.external_id
    if item.record_metadata is not None:
        fields["metadata"] = item.record_metadata
    return fields


def pair_record(item: Item, chosen: int, rejected: int, source: str) -> dict:
    return {"prompt": item.prompt, "chosen": item.responses[chosen], "rejected": item.responses[rejected],
            "source": source, **identity(item)}


def kto_record(item: Item, index: int, desirable: bool, source: str) -> dict:
    return {"prompt": item.prompt, "completion": item.responses[index], "label": desirable, "source": source,
            **identity(item)}


def export_records(session: Session, project: Project, aggregate: bool = True,
                   exclude: frozenset[str] = frozenset()) -> dict[str, list[dict]]:
    """Every export file's records, by kind (see the module docstring). ``exclude``: annotators whose
    labels are left out of the training files (e.g. those quality control caught); labels.jsonl keeps them."""
    rows = project_labels(session, project, rejected=True)
    records: dict[str, list[dict]] = {kind: [] for kind in EXPORT_KINDS}
    orders = dict(session.execute(select(Assignment.id, Assignment.shown_order)
                                  .where(Assignment.project_id == project.id)).all())
    records["labels"] = [raw_label_record(label, item, annotator, project, orders.get(label.assignment_id))
                         for label, item, annotator in rows]
    source = f"rlhfkit-label:{project.name}"
    kept = [(label, item, annotator) for label, item, annotator in rows
            if annotator not in exclude and label.review_status != "rejected"]
    for item, labels in labels_by_item(kept).values():
        for label, annotator in labels:
            if label.edited_response is not None:
                records["sft"].append({"prompt": item.prompt, "completion": label.edited_response,
                                       "source": f"{source}:{annotator}", **identity(item)})
        groups = [(source, labels)] if aggregate else [(f"{source}:{a}", [(lab, a)]) for lab, a in labels]
        for group_source, group in groups:
            answers = [label.answer for label, _ in group]
            if project.task_type == "pairwise":
                add_pairwise(records, item, [a["choice"] for a in answers], group_source)
            elif project.task_type == "rank":
                add_ranking(records, item, [a["ranks"] for a in answers], group_source)
            else:
                add_ratings(records, item, [a["ratings"] for a in answers], project.rating_scale, group_source)
    return records


def add_pairwise(records: dict, item: Item, choices: list[str], source: str) -> None:
    winner = pairwise_winner(choices)
    if winner == "A":
        records["preferences"].append(pair_record(item, 0, 1, source))
    elif winner == "B":
        records["preferences"].append(pair_record(item, 1, 0, source))
    elif winner == "both_bad":
        records["kto"].extend(kto_record(item, index, False, source) for index in (0, 1))


def add_ranking(records: dict, item: Item, rankings: list[list[int]], source: str) -> None:
    means = [sum(ranks[i] for ranks in rankings) / len(rankings) for i in range(len(item.responses))]
    ranks = ranks_from_means(means)
    records["rankings"].append({"prompt": item.prompt, "responses": item.responses, "ranks": ranks,
                                "source": source, **identity(item)})
    records["preferences"].extend(pair_record(item, better, worse, source)
                                  for better, worse in ranked_index_pairs(ranks))


def add_ratings(records: dict, item: Item, ratings: list[list[int]], scale: int, source: str) -> None:
    midpoint = (scale + 1) / 2
    for index in range(len(item.responses)):
        mean = sum(r[index] for r in ratings) / len(ratings)
        if mean != midpoint:
            records["kto"].append(kto_record(item, index, mean > midpoint, source))


def raw_label_record(label: Label, item: Item, annotator: str, project: Project,
                     shown_order: list[int] | None = None) -> dict:
    """One label (its answer in the item's order, a reviewer's where corrected) with its review status,
    the annotator's own answer, its item and the order the responses were shown in (null: the item's
    order), for labels.jsonl."""
    return {
        "project": project.name, "task_type": project.task_type, "item_id": item.id, "item_position": item.position,
        "annotator": annotator, "answer": label.answer, "review_status": label.review_status,
        "original_answer": label.original_answer if label.original_answer is not None else label.answer,
        "rationale": label.rationale,
        "edited_response": label.edited_response, "edited_index": label.edited_index,
        "duration_seconds": round(label.duration_seconds, 3), "submitted_at": label.submitted_at.isoformat() + "Z",
        "is_gold": label.is_gold, "gold_correct": label.gold_correct, "categories": item.category_names,
        "prompt": item.prompt, "responses": item.responses, "shown_order": shown_order,
        "id": item.external_id, "metadata": item.record_metadata,
    }


def write_exports(session: Session, project: Project, output: str | Path, aggregate: bool = True,
                  exclude: frozenset[str] = frozenset()) -> dict[str, int]:
    """Write the export files into the folder ``output``; returns the record count per file written.

    Files with no records are not written (the loaders refuse empty files), except labels.jsonl.
    """
    folder = Path(output)
    folder.mkdir(parents=True, exist_ok=True)
    written = {}
    for kind, records in export_records(session, project, aggregate, frozenset(exclude)).items():
        if records or kind == "labels":
            (folder / f"{kind}.jsonl").write_text(to_jsonl(records), encoding="utf-8")
            written[kind] = len(records)
    return written


def export_file(session: Session, project: Project, kind: str, aggregate: bool = True) -> tuple[str, str]:
    """(file name, JSONL text) of one export kind of the project, for a download."""
    records = export_records(session, project, aggregate)[kind]
    filename = f"{project.name}-{kind}.jsonl".replace('"', "").replace("/", "_")
    return filename, to_jsonl(records)


def content_disposition(filename: str) -> str:
    """The download header for any file name (RFC 6266): an ASCII stand-in, then the name itself in
    UTF-8 (RFC 5987's ``filename*``), which browsers prefer. Pure ASCII either way: no CR/LF gets in."""
    fallback = "".join(c if " " <= c <= "~" and c not in '"\\;%' else "_" for c in filename)
    encoded = quote(filename.encode("utf-8", errors="replace"), safe="")
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{encoded}"


def grouped_for_agreement(session: Session, project: Project) -> dict[int, list[tuple[str, dict]]]:
    """Item id -> [(annotator, the annotator's own answer)] over every item, gold ones included, rejected
    labels left out (for agreement figures: they measure the annotators, not their reviewers)."""
    grouped: dict[int, list] = defaultdict(list)
    for label, item, annotator in project_labels(session, project):
        grouped[item.id].append((annotator, label.original_answer if label.original_answer is not None
                                 else label.answer))
    return grouped
