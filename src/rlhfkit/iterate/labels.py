"""Step 2, the round's labels: from the judge, from people in the feedback app (the loop waits for
them), or semi-AI (the judge labels everything, people review a share)."""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Callable
from pathlib import Path

from rlhfkit.config import ConfigError, JudgeConfig, LoopConfig
from rlhfkit.console import console, progress_bar
from rlhfkit.data import to_jsonl
from rlhfkit.iterate.settings import stage_config
from rlhfkit.iterate.state import LoopContext, RoundPaths, read_jsonl, write_atomic, write_json


def project_name(config: LoopConfig, number: int) -> str:
    """The feedback project of round ``number``."""
    return f"{config.project}-round-{number}"


def judge_config(config: LoopConfig, data: Path, output: Path) -> JudgeConfig:
    """The judge of the round's labels, reading ``data`` and writing ``output``."""
    return stage_config(config, "judge_options", {"seed": config.seed}, judge=config.judge, data=str(data),
                        output=str(output))


def labels_from_judge(ctx: LoopContext, paths: RoundPaths) -> dict:
    from rlhfkit.judge.run import run_judge

    judged = paths.labels_dir / "judge.jsonl"
    run_judge(judge_config(ctx.config, paths.samples, judged))
    records = read_jsonl(judged)
    write_atomic(paths.labels, to_jsonl(records))
    report = json.loads(judged.with_name(judged.name + ".report.json").read_text())
    return {"records": len(records), "source": f"judge:{report['judge']}",
            "message": f"{len(records)} records from the judge ({report['all_ties']} left out: all ties)"}


class FeedbackDatabase:
    """The feedback app's database: a fresh session per use, so that every poll sees new labels."""

    def __init__(self, url: str):
        from rlhfkit.feedback.db import make_engine, make_session_factory, migrate

        self.url = url
        self.engine = make_engine(url)
        migrate(self.engine)
        self.sessions = make_session_factory(self.engine)

    def close(self) -> None:
        self.engine.dispose()


def wait_for_quota(progress: Callable[[], tuple[int, int]], quota: int, poll_seconds: float, description: str,
                   sleep: Callable[[float], None] = time.sleep) -> int:
    """Poll ``progress() -> (done, total)`` every ``poll_seconds`` until ``done`` reaches ``quota``
    (0: ``total``; never more than ``total``), showing a progress bar; returns the last ``done``."""
    done, total = progress()
    target = min(quota or total, total)
    if done >= target:
        return done
    console.print(f"{description}: waiting until {target} of {total} items are labelled ({done} so far); "
                  f"looking every {poll_seconds:g} s (Ctrl-C stops; a rerun waits again)")
    bar_hidden = bool(os.environ.get("RLHFKIT_NO_PROGRESS"))
    with progress_bar(description, total=target, completed=min(done, target)) as advance:
        shown = min(done, target)
        while done < target:
            sleep(poll_seconds)
            done, total = progress()
            target = min(quota or total, total)
            if min(done, target) != shown:
                advance(min(done, target) - shown)
                shown = min(done, target)
                if bar_hidden:
                    console.print(f"{description}: {done} of {target} items labelled")
    return done


def push_round_items(session, name: str, samples: Path, options) -> tuple[object, int]:
    """Create project ``name`` with the round's answer sets (lexicon-flagged, as ``rlhfkit label import``
    does); returns (project, items added). A project that already holds exactly these items was
    pushed by an earlier run of this round and is reused; one with other items is an error."""
    from sqlalchemy import select

    from rlhfkit.data.readers import file_rows
    from rlhfkit.feedback.db import Item, Project, committed
    from rlhfkit.feedback.importing import add_items, create_project, item_specs

    specs = item_specs(file_rows(samples), options, use_lexicon=True)
    project = session.scalar(select(Project).where(Project.name == name))
    if project is not None:
        items = session.scalars(select(Item).where(Item.project_id == project.id, Item.is_gold.is_(False))
                                .order_by(Item.position)).all()
        if [(i.prompt, i.responses) for i in items] == [(s.prompt, s.responses) for s in specs]:
            return project, 0
        raise ConfigError(f"the feedback project {name!r} already exists with other items; choose another "
                          "--project (round r uses '{project}-round-{r}')")
    with committed(session):
        project = create_project(session, name, options)
        count = add_items(session, project, specs)
    return project, count


def carry_members(session, config: LoopConfig, number: int) -> None:
    """Round ``number``'s project gets the members of the previous round's (people keep access from round to
    round); round 1's members are added by an admin, which the message says."""
    from sqlalchemy import select

    from rlhfkit.feedback.db import Project, committed, utcnow
    from rlhfkit.feedback.membership import copy_members, project_members

    def find(name: str):
        return session.scalar(select(Project).where(Project.name == name))

    project = find(project_name(config, number))
    previous = find(project_name(config, number - 1)) if number > 1 else None
    if project is None or project_members(session, project):
        return
    if previous is not None:
        with committed(session):
            copied = copy_members(session, previous, project, None, utcnow())
        console.print(f"round {number} labels: the {copied} members of {previous.name!r} can work on {project.name!r}")
    else:
        console.print(f"[yellow]round {number} labels: {project.name!r} has no members yet; an admin adds them "
                      f"('rlhfkit label member --db {config.db} --project {project.name} --add NAME ...' or the "
                      f"project's admin page), and later rounds keep them[/]")


def project_options(config: LoopConfig, task_type: str):
    from rlhfkit.feedback.importing import ProjectOptions

    guidelines = Path(config.guidelines).read_text(encoding="utf-8") if config.guidelines else ""
    return ProjectOptions(task_type=task_type, guidelines=guidelines, overlap=config.overlap)


def labels_from_people(ctx: LoopContext, paths: RoundPaths) -> dict:
    from sqlalchemy import select

    from rlhfkit.feedback.db import Project
    from rlhfkit.feedback.export import write_exports
    from rlhfkit.feedback.stats import project_progress

    config = ctx.config
    name = project_name(config, paths.number)
    database = FeedbackDatabase(config.db)
    try:
        with database.sessions() as session:
            project, added = push_round_items(session, name, paths.samples, project_options(config, config.task))
            carry_members(session, config, paths.number)
        console.print(f"round {paths.number} labels: {added} items added to the feedback project {name!r} "
                      f"({config.task}) in {config.db}; annotators label them in 'rlhfkit label serve'"
                      if added else f"round {paths.number} labels: the feedback project {name!r} is there already")

        def progress() -> tuple[int, int]:
            with database.sessions() as session:
                counts = project_progress(session, session.scalar(select(Project).where(Project.name == name)))
            return counts["complete_items"], counts["items"]

        done = wait_for_quota(progress, config.quota, config.poll_seconds, f"round {paths.number} labels ({name})")
        with database.sessions() as session:
            project = session.scalar(select(Project).where(Project.name == name))
            written = write_exports(session, project, paths.labels_dir / "export")
    finally:
        database.close()
    kind = "rankings" if config.task == "rank" else "preferences"
    exported = paths.labels_dir / "export" / f"{kind}.jsonl"
    records = read_jsonl(exported) if exported.is_file() else []
    write_atomic(paths.labels, to_jsonl(records))
    return {"records": len(records), "source": f"people:{name}", "labelled_items": done,
            "message": f"{len(records)} {kind} exported from {name!r} ({done} items complete; "
                       f"{written.get('labels', 0)} labels)"}


def labels_from_semi_ai(ctx: LoopContext, paths: RoundPaths) -> dict:
    from rlhfkit.feedback import semi_ai

    config = ctx.config
    name = project_name(config, paths.number)
    folder = paths.labels_dir / "semi-ai"
    sent_marker = paths.labels_dir / "sent.json"
    database = FeedbackDatabase(config.db)
    try:
        if not sent_marker.is_file():
            with database.sessions() as session:
                summary = semi_ai.send_for_review(
                    session, judge_config(config, paths.samples, folder / semi_ai.JUDGE_FILE), paths.samples,
                    folder, name, human_share=config.human_share, random_fraction=config.random_fraction,
                    seed=config.seed + paths.number, options=project_options(config, "pairwise"))
                carry_members(session, config, paths.number)
            write_json(sent_marker, dataclasses.asdict(summary))
            console.print(f"round {paths.number} labels: the judge labelled {summary.items} items; {summary.sent} "
                          f"sent to people in the feedback project {name!r} ({summary.task_type})")

        def progress() -> tuple[int, int]:
            with database.sessions() as session:
                counts = semi_ai.review_progress(session, name, folder)
            return counts.labelled, counts.sent

        wait_for_quota(progress, config.quota, config.poll_seconds, f"round {paths.number} reviews ({name})")
        with database.sessions() as session:
            report = semi_ai.merge_reviews(session, name, folder)
    finally:
        database.close()
    records = read_jsonl(folder / semi_ai.MERGED_FILE)
    write_atomic(paths.labels, to_jsonl(records))
    counts = report["records"]
    return {"records": len(records), "source": f"semi-ai:{name}", "human": counts["human"],
            "judge_records": counts["judge"], "judge_human_agreement": report["agreement"]["all"]["agreement"],
            "message": f"{len(records)} merged records ({counts['human']} from people, {counts['judge']} from "
                       "the judge)"}


def step_labels(ctx: LoopContext, paths: RoundPaths, start_policy: str, fresh: bool) -> dict:
    """The round's labels (``labels/labels.jsonl``) from the configured source."""
    source = {"judge": labels_from_judge, "people": labels_from_people, "semi-ai": labels_from_semi_ai}
    return source[ctx.config.labels](ctx, paths)
