"""The numbers on the admin dashboard and in ``rlhfkit label stats``.

Per project: progress, per-annotator counts and time per item, too-fast answers, gold accuracy and
agreement. Per annotator, site-wide: today's work and sensitive exposure (welfare). Skips are shown
only as a count of items handed back; they lower no figure. Labels a reviewer rejected do not count
as labels of the project (progress, agreement) but stay in the annotator's own figures (time, gold,
position bias, over the annotator's own answers), with a count of its rejected and corrected labels.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from datetime import datetime
from itertools import combinations

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from rlhfkit.feedback.agreement import (
    cohens_kappa,
    fleiss_kappa,
    krippendorff_alpha,
    pairwise_ranking_agreement,
    percent_agreement,
)
from rlhfkit.feedback.assignment import limits_of, user_welfare
from rlhfkit.feedback.db import Assignment, Item, Label, Project, SiteSettings, User
from rlhfkit.feedback.export import grouped_for_agreement
from rlhfkit.feedback.labels import chose_first_shown

MIN_SHARED_ITEMS_FOR_COHEN = 2
"""Annotator pairs with fewer shared items are left out of the mean Cohen's kappa."""


def project_progress(session: Session, project: Project) -> dict:
    """Items (gold apart), items with all their labels, labels, and skips of the project."""
    items, complete = session.execute(
        select(func.count(Item.id), func.count(Item.id).filter(Item.done_count >= project.overlap))
        .where(Item.project_id == project.id, Item.is_gold.is_(False))).one()
    gold_items = session.scalar(select(func.count(Item.id)).where(Item.project_id == project.id, Item.is_gold))
    labels, rejected = session.execute(
        select(func.count(Label.id).filter(Label.review_status != "rejected"),
               func.count(Label.id).filter(Label.review_status == "rejected"))
        .where(Label.project_id == project.id)).one()
    skips = session.scalar(select(func.count(Assignment.id)).where(
        Assignment.project_id == project.id, Assignment.status == "skipped"))
    return {"items": items, "complete_items": complete, "gold_items": gold_items, "labels": labels,
            "rejected_labels": rejected, "labels_needed": items * project.overlap, "skips": skips,
            "percent_complete": round(100.0 * complete / items, 1) if items else 0.0}


def annotator_progress(session: Session, project: Project, user: User) -> dict:
    """The annotator's label count (rejected ones apart) and the project's completed items (gold apart)."""
    mine = (select(func.count(Label.id)).where(Label.project_id == project.id, Label.user_id == user.id,
                                               Label.review_status != "rejected")
            .scalar_subquery())
    items, complete, my_labels = session.execute(
        select(func.count(Item.id), func.count(Item.id).filter(Item.done_count >= project.overlap), mine)
        .where(Item.project_id == project.id, Item.is_gold.is_(False))).one()
    return {"my_labels": my_labels, "items": items, "complete_items": complete}


def own_answer(label) -> dict:
    """The annotator's own answer of a label (a reviewer's correction apart)."""
    return label.original_answer if label.original_answer is not None else label.answer


def annotator_rows(session: Session, project: Project, too_fast_seconds: float) -> list[dict]:
    """Per annotator of the project: labels, median and mean seconds per item, too fast, gold accuracy,
    and (pairwise) the share of A-or-B choices that went to the answer shown first: 0.5 is no
    position bias (meaningful where the order is shuffled, or random in the data)."""
    labels = session.execute(select(User.username, Label.duration_seconds, Label.is_gold, Label.gold_correct,
                                    Label.answer, Label.original_answer, Label.review_status,
                                    Assignment.shown_order)
                             .join(User, Label.user_id == User.id).join(Assignment, Label.assignment_id == Assignment.id)
                             .where(Label.project_id == project.id)).all()
    skips = dict(session.execute(select(User.username, func.count(Assignment.id))
                                 .join(User, Assignment.user_id == User.id)
                                 .where(Assignment.project_id == project.id, Assignment.status == "skipped")
                                 .group_by(User.username)).all())
    by_user: dict[str, list] = defaultdict(list)
    for row in labels:
        by_user[row.username].append(row)
    rows = []
    for username in sorted(set(by_user) | set(skips)):
        mine = by_user.get(username, [])
        durations = [row.duration_seconds for row in mine]
        gold = [row.gold_correct for row in mine if row.is_gold]
        first = [f for row in mine if (f := chose_first_shown(own_answer(row), row.shown_order)) is not None]
        rows.append({
            "annotator": username, "labels": len(mine), "skips": skips.get(username, 0),
            "median_seconds": round(statistics.median(durations), 1) if durations else None,
            "mean_seconds": round(statistics.fmean(durations), 1) if durations else None,
            "too_fast": sum(d < too_fast_seconds for d in durations),
            "gold_answered": len(gold), "gold_accuracy": round(sum(gold) / len(gold), 3) if gold else None,
            "first_shown_share": round(sum(first) / len(first), 3) if first else None,
            "rejected": sum(row.review_status == "rejected" for row in mine),
            "corrected": sum(row.review_status == "corrected" for row in mine),
        })
    return rows


def mean_cohens_kappa(answers_per_item: list[list[tuple[str, object]]]) -> tuple[float | None, int]:
    """Cohen's kappa averaged over annotator pairs (weighted by their shared items), and how many pairs."""
    shared: dict[tuple[str, str], tuple[list, list]] = defaultdict(lambda: ([], []))
    for answers in answers_per_item:
        for (a, label_a), (b, label_b) in combinations(sorted(answers, key=lambda x: x[0]), 2):
            shared[a, b][0].append(label_a)
            shared[a, b][1].append(label_b)
    weighted, weight, pairs = 0.0, 0, 0
    for first, second in shared.values():
        if len(first) < MIN_SHARED_ITEMS_FOR_COHEN:
            continue
        kappa = cohens_kappa(first, second)
        if kappa is not None:
            weighted += kappa * len(first)
            weight += len(first)
            pairs += 1
    return (weighted / weight if weight else None), pairs


def project_agreement(session: Session, project: Project) -> dict:
    """Agreement figures for the project's task type (None where undefined)."""
    grouped = [answers for answers in grouped_for_agreement(session, project).values() if len(answers) >= 2]
    result: dict = {"items_with_2_or_more_labels": len(grouped)}
    if project.task_type == "pairwise":
        categorical = [[(a, answer["choice"]) for a, answer in answers] for answers in grouped]
        result["krippendorff_alpha_nominal"] = krippendorff_alpha([[label for _, label in answers]
                                                                   for answers in categorical], "nominal")
    elif project.task_type == "rank":
        categorical = [[(a, answer["ranks"].index(1)) for a, answer in answers] for answers in grouped]
        units = [[answer["ranks"][i] for _, answer in answers]
                 for answers in grouped for i in range(len(answers[0][1]["ranks"]))]
        result["krippendorff_alpha_ordinal"] = krippendorff_alpha(units, "ordinal")
        result["categorical_label"] = "best response"
        result["pairwise_agreement"] = pairwise_ranking_agreement([[answer["ranks"] for _, answer in answers]
                                                                   for answers in grouped])
    else:
        categorical = [[(a, tuple(answer["ratings"])) for a, answer in answers] for answers in grouped]
        units = [[answer["ratings"][i] for _, answer in answers]
                 for answers in grouped for i in range(len(answers[0][1]["ratings"]))]
        result["krippendorff_alpha_ordinal"] = krippendorff_alpha(units, "ordinal")
        result["categorical_label"] = "all ratings equal"
    labels_only = [[label for _, label in answers] for answers in categorical]
    result["percent_agreement"] = percent_agreement(labels_only)
    result["fleiss_kappa"] = fleiss_kappa(labels_only)
    result["cohens_kappa_mean"], result["cohens_kappa_pairs"] = mean_cohens_kappa(categorical)
    return result


def exposure_rows(session: Session, now: datetime, settings: SiteSettings) -> list[dict]:
    """Per annotator: today's minutes of work and of sensitive content, and whether they may work now."""
    limits = limits_of(settings)
    sensitive_totals = dict(session.execute(
        select(Assignment.user_id, func.count(Assignment.id))
        .where(Assignment.sensitive, Assignment.revealed_at.is_not(None)).group_by(Assignment.user_id)).all())
    rows = []
    for user in session.scalars(select(User).order_by(User.username)):
        status = user_welfare(session, user.id, now, limits)
        rows.append({
            "annotator": user.username, "role": user.role,
            "worked_today_minutes": round(status.worked_today_minutes, 1),
            "sensitive_today_minutes": round(status.sensitive_today_minutes, 1),
            "sensitive_items_revealed": sensitive_totals.get(user.id, 0),
            "opted_out": ", ".join(user.opted_out_categories) or "-",
            "status": "working allowed" if status.may_work else status.reason,
        })
    return rows


def project_report(session: Session, project: Project, settings: SiteSettings) -> dict:
    return {"project": project.name, "task_type": project.task_type, "overlap": project.overlap,
            "progress": project_progress(session, project),
            "annotators": annotator_rows(session, project, settings.too_fast_seconds),
            "agreement": project_agreement(session, project)}
