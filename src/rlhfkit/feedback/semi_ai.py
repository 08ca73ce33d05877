"""``rlhfkit label semi-ai``: a judge labels everything, people review a share, the two are merged.

Three steps, each one function (``rlhfkit loop`` calls them) and one ``rlhfkit label semi-ai`` action.
Every file lives in one output folder ``DIR``.

1. :func:`send_for_review` (``send``). The judge compares every pair of answers of every
   ``{prompt, responses}`` record (the reading and judging code of ``rlhfkit judge``) and
   ``DIR/judge.jsonl`` keeps one line per item: its key, the pairwise verdicts, the judge's ranks and
   its confidence. Then ``n = ceil(human_share · N)`` of the N items go to people:
   ``ceil((1 − random_fraction) · n)`` of them the judge's *least confident* items (file order breaks
   ties), the rest a uniform random sample (``random.Random(seed).sample``, in file order) of the
   other items. An item's confidence is its **least** confident pairwise verdict (0 when any pair is
   a tie): a ranking is only as sure as its most doubtful pair, and that pair is what a person settles.

   Items are pushed with the importing services, so annotators get them exactly like imported items
   (content warnings, opt-outs, overlap, welfare limits). Records of 2 answers make a pairwise
   project; a file with any record of K > 2 answers makes a rank project (its 2-answer records are
   ranked too). An existing project is added to, keeping its options. ``DIR/selection.jsonl`` maps
   each sent item's key to its feedback item id, with why it was chosen (``low-confidence`` or
   ``random``).

   Idempotent: each pushed item carries its key in ``Item.source_location`` (``semi-ai KEY REASON
   LOCATION``; the database is the truth, ``selection.jsonl`` its copy), and an item whose key is
   already in the project is never pushed again. A rerun only tops the share up, e.g. after records
   were added to the file; it judges every record again (an HTTP judge answers from its cache).

2. :func:`review_progress` (``progress``): how many sent items have at least one human label.

3. :func:`merge_reviews` (``merge``) writes

   * ``DIR/merged.jsonl``: one record per item, a human label winning over the judge's: a pair
     ``{prompt, chosen, rejected}`` for 2 answers, a ranking ``{prompt, responses, ranks}`` for K, as
     ``rlhfkit judge`` writes them (``rlhfkit rm`` and ``rlhfkit dpo`` read both), each with ``key``
     and ``source``: ``"human"`` or ``"judge:NAME"`` (judge records also keep ``confidence``). Human
     labels are aggregated over an item's annotators as the export does (pairwise: A or B with
     strictly more votes than any other answer; rank: mean rank per answer). An item whose people
     found no preference (a majority of tie or both bad, a split vote, equal mean ranks) is left out,
     not given the judge's label: people looked and disagreed with any order. Items whose judge
     verdicts give no order (all ties) and no human label are left out too; both are counted.
   * ``DIR/agreement.json``: judge–human agreement over the pairs of the items that have both: a
     pair counts when the people's majority (per pair, over annotators) picks a winner, and agrees
     when the judge's pairwise winner is the same (a judge tie never agrees); by selection reason,
     with how many items are still waiting for people. The **random** sample is the unbiased
     estimate of the judge's accuracy on the items it was not least sure of; the low-confidence
     items understate it by design. ``estimated_judge_accuracy`` weights the two by their share of
     all items (every low-confidence item was sent; the rest is estimated from the random sample).

Item keys: the first 16 hex digits of the SHA-256 of the record's prompt and responses (canonical
JSON), so a key names the same content across reruns and files; the n-th repeat (n ≥ 2) of an
identical record in one file gets ``#n``.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
from collections import Counter
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from rlhfkit.config import JudgeConfig
from rlhfkit.data import DataError, write_jsonl
from rlhfkit.feedback.db import Item, Project, committed
from rlhfkit.feedback.export import labels_by_item, pairwise_winner, project_labels, ranks_from_means
from rlhfkit.feedback.importing import (
    ProjectOptions,
    add_items,
    create_project,
    item_specs,
    project_options_of,
)
from rlhfkit.judge.run import judge_answer_sets, load_configured_judge, read_answer_sets

JUDGE_FILE = "judge.jsonl"
SELECTION_FILE = "selection.jsonl"
MERGED_FILE = "merged.jsonl"
AGREEMENT_FILE = "agreement.json"

LOW_CONFIDENCE, RANDOM = "low-confidence", "random"
REASONS = (LOW_CONFIDENCE, RANDOM)
TAG = "semi-ai"
"""The first word of ``Item.source_location`` of every pushed item: ``semi-ai KEY REASON LOCATION``."""

RANDOM_SAMPLE_NOTE = (
    "The random sample is the unbiased estimate of the judge's accuracy (on the items it was not least "
    "sure of); low-confidence items were chosen where the judge is least sure, so their agreement "
    "understates it. estimated_judge_accuracy weights the two by their share of all items.")


@dataclass
class JudgedItem:
    """One record with the judge's labels: a line of ``judge.jsonl``."""

    key: str
    location: str
    prompt: object
    responses: list[str]
    ranks: list[int]  # the judge's, 1 = best, by pairwise wins; all equal when it found no order
    confidence: float  # the least confident pairwise verdict
    verdicts: list[dict]  # {"a", "b", "prob_a", "winner", "confidence", "consistent"}; winner "a", "b" or "tie"
    source: str  # "judge:NAME"


@dataclass
class SentItem:
    """An item sent to people: a line of ``selection.jsonl``."""

    key: str
    item_id: int
    reason: str  # "low-confidence" or "random"
    confidence: float
    location: str
    project: str


@dataclass
class SendSummary:
    project: str
    task_type: str
    items: int  # records judged
    target: int  # ceil(human_share · items)
    added: int  # items pushed by this call
    sent: int  # items of this file in the project (earlier calls included)


@dataclass
class ReviewProgress:
    sent: int
    labelled: int  # sent items with at least one human label

    @property
    def waiting(self) -> int:
        return self.sent - self.labelled


# ---------------------------------------------------------------- judging


def check_fractions(human_share: float, random_fraction: float) -> None:
    """Raise a ValueError naming the option that is not a fraction in [0, 1]."""
    for name, value in (("human share", human_share), ("random fraction", random_fraction)):
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 <= value <= 1.0:
            raise ValueError(f"{name}: expected a fraction in [0, 1], got {value!r}")


def item_keys(records: list[tuple[object, list[str], str]]) -> list[str]:
    """Each record's content key (see the module docstring)."""
    keys, seen = [], Counter()
    for prompt, answers, _ in records:
        text = json.dumps([prompt, answers], sort_keys=True, ensure_ascii=False, separators=(",", ":"))
        key = hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]
        seen[key] += 1
        keys.append(key if seen[key] == 1 else f"{key}#{seen[key]}")
    return keys


def judge_items(judge, records: list[tuple[object, list[str], str]]) -> list[JudgedItem]:
    """The judge's labels for every record (as :func:`rlhfkit.judge.run.read_answer_sets` reads them)."""
    judged = judge_answer_sets(judge, records)
    source = f"judge:{judge.name}"
    items = []
    for key, answers in zip(item_keys(records), judged, strict=True):
        verdicts = [{"a": i, "b": j, "prob_a": v.prob_a, "winner": v.winner, "confidence": v.confidence,
                     "consistent": v.consistent} for i, j, v in answers.verdicts]
        items.append(JudgedItem(key, answers.location, answers.prompt, answers.answers, answers.ranks(),
                                min(v["confidence"] for v in verdicts), verdicts, source))
    return items


# ---------------------------------------------------------------- choosing and sending


def share_count(fraction: float, total: int) -> int:
    """``ceil(fraction · total)``, without float noise (0.7 · 10 is 7, not 8)."""
    return math.ceil(round(fraction * total, 9))


def choose_for_people(items: list[JudgedItem], human_share: float, random_fraction: float, seed: int,
                      already: dict[str, str]) -> list[tuple[JudgedItem, str]]:
    """The items to add for people, with why, in file order; ``already`` maps the keys of items sent
    before to their reason, and they count towards the share."""
    target = share_count(human_share, len(items))
    low_target = share_count(1.0 - random_fraction, target)
    sent = Counter(already[item.key] for item in items if item.key in already)
    free = [item for item in items if item.key not in already]
    lowest = sorted(free, key=lambda item: item.confidence)[: max(0, low_target - sent[LOW_CONFIDENCE])]
    low_keys = {item.key for item in lowest}
    rest = [item for item in free if item.key not in low_keys]
    wanted = min(len(rest), max(0, target - low_target - sent[RANDOM]))
    random_keys = {item.key for item in random.Random(seed).sample(rest, wanted)}
    return [(item, LOW_CONFIDENCE if item.key in low_keys else RANDOM) for item in free
            if item.key in low_keys or item.key in random_keys]


def task_type_for(items: list[JudgedItem]) -> str:
    return "pairwise" if all(len(item.responses) == 2 for item in items) else "rank"


def find_project(session: Session, name: str) -> Project | None:
    return session.scalar(select(Project).where(Project.name == name.strip()))


def project_for(session: Session, name: str, items: list[JudgedItem], options: ProjectOptions | None) -> Project:
    """The project to send to: the existing one if its task fits the items, else a new one."""
    task_type = task_type_for(items)
    project = find_project(session, name)
    if project is None:
        return create_project(session, name, replace(options or ProjectOptions(), task_type=task_type))
    if project.task_type == "rating" or (project.task_type == "pairwise" and task_type == "rank"):
        raise ValueError(f"project {name!r} is a {project.task_type} project; these records need a "
                         f"{task_type} project (use another project name)")
    return project


def sent_in_project(session: Session, project: Project) -> dict[str, tuple[int, str]]:
    """Key -> (item id, reason) of every item ever pushed to the project by ``send``."""
    rows = session.execute(select(Item.id, Item.source_location).where(
        Item.project_id == project.id, Item.source_location.startswith(TAG + " ")).order_by(Item.id)).all()
    sent: dict[str, tuple[int, str]] = {}
    for item_id, location in rows:
        _, key, reason, *_ = location.split(" ", 3) + [""]
        sent.setdefault(key, (item_id, reason))
    return sent


def send_for_review(session: Session, judge, data: str | Path, output: str | Path, project: str, *,
                    human_share: float = 0.2, random_fraction: float = 0.25, seed: int = 0,
                    options: ProjectOptions | None = None, use_lexicon: bool = True) -> SendSummary:
    """Judge every record of ``data``, push the chosen share into the feedback project ``project``.

    ``judge``: a judge object (``judge(comparisons) -> verdicts``, ``name``) or a :class:`JudgeConfig`,
    loaded only after the data file has been read. ``options``: those of a new project (its task
    type follows the records). Writes ``judge.jsonl`` and ``selection.jsonl`` into ``output`` and
    commits; on an error nothing is stored in the database. Use one output folder per data set (a rerun
    may add records to the file).
    """
    check_fractions(human_share, random_fraction)
    records = read_answer_sets(str(data))  # a bad file fails before a judge is loaded
    if isinstance(judge, JudgeConfig):
        judge = load_configured_judge(judge)
    items = judge_items(judge, records)
    folder = Path(output)
    folder.mkdir(parents=True, exist_ok=True)
    write_jsonl(folder / JUDGE_FILE, [asdict(item) for item in items])
    with committed(session):
        target = project_for(session, project, items, options)
        already = {key: reason for key, (_, reason) in sent_in_project(session, target).items()}
        chosen = choose_for_people(items, human_share, random_fraction, seed, already)
        if chosen:
            rows = [(item.location, {"prompt": item.prompt, "responses": item.responses}) for item, _ in chosen]
            specs = item_specs(rows, project_options_of(target), use_lexicon)
            for spec, (item, reason) in zip(specs, chosen, strict=True):
                spec.location = f"{TAG} {item.key} {reason} {item.location}"
            add_items(session, target, specs)
    sent = sent_in_project(session, target)
    selection = [SentItem(item.key, *sent[item.key], item.confidence, item.location, target.name)
                 for item in items if item.key in sent]
    write_jsonl(folder / SELECTION_FILE, [asdict(row) for row in selection])
    return SendSummary(target.name, target.task_type, len(items), share_count(human_share, len(items)),
                       len(chosen), len(selection))


# ---------------------------------------------------------------- progress


def read_judge_file(output: str | Path) -> list[JudgedItem]:
    path = Path(output) / JUDGE_FILE
    if not path.exists():
        raise DataError(f"{path}: no such file; run 'rlhfkit label semi-ai send' with --output {output} first")
    return [JudgedItem(**json.loads(line)) for line in path.read_text(encoding="utf-8").splitlines() if line]


def read_selection(output: str | Path, project: str) -> list[SentItem]:
    """The sent items recorded in ``output``; a ValueError when they were sent to another project."""
    path = Path(output) / SELECTION_FILE
    if not path.exists():
        raise DataError(f"{path}: no such file; run 'rlhfkit label semi-ai send' with --output {output} first")
    rows = [SentItem(**json.loads(line)) for line in path.read_text(encoding="utf-8").splitlines() if line]
    others = {row.project for row in rows} - {project.strip()}
    if others:
        raise ValueError(f"{path}: its items were sent to project {sorted(others)[0]!r}, not {project!r}")
    return rows


def existing_project(session: Session, name: str) -> Project:
    project = find_project(session, name)
    if project is None:
        names = ", ".join(session.scalars(select(Project.name))) or "none"
        raise ValueError(f"no project called {name!r} (projects: {names})")
    return project


def review_progress(session: Session, project: str, output: str | Path) -> ReviewProgress:
    """How many of the items sent from ``output`` have at least one human label (cheap: for polling)."""
    selection = read_selection(output, project)
    target = existing_project(session, project)
    labelled = set(session.scalars(select(Item.id).where(Item.project_id == target.id, Item.done_count > 0)))
    return ReviewProgress(len(selection), sum(row.item_id in labelled for row in selection))


# ---------------------------------------------------------------- merging


def human_ranks(answers: list[dict], count: int) -> list[int] | None:
    """The annotators' aggregated ranks (1 = best), or None when they found no preference."""
    if "choice" in answers[0]:
        winner = pairwise_winner([answer["choice"] for answer in answers])
        return {"A": [1, 2], "B": [2, 1]}.get(winner)
    means = [sum(answer["ranks"][i] for answer in answers) / len(answers) for i in range(count)]
    return ranks_from_means(means)


def human_vote(answer: dict, i: int, j: int) -> str:
    """One annotator's answer on the pair (i, j): "a" (i better), "b" (j better) or "tie"."""
    if "choice" in answer:  # a pairwise item: i = 0 is A, j = 1 is B
        return {"A": "a", "B": "b"}.get(answer["choice"], "tie")
    ranks = answer["ranks"]
    return "a" if ranks[i] < ranks[j] else "b" if ranks[i] > ranks[j] else "tie"


def pairs_agreeing(item: JudgedItem, answers: list[dict]) -> tuple[int, int]:
    """(pairs with a human majority winner, of those the pairs the judge's winner matches)."""
    compared = agreed = 0
    for verdict in item.verdicts:
        majority = pairwise_winner([human_vote(answer, verdict["a"], verdict["b"]) for answer in answers])
        if majority in ("a", "b"):
            compared += 1
            agreed += verdict["winner"] == majority
    return compared, agreed


def training_record(item: JudgedItem, ranks: list[int] | None, source: str) -> dict | None:
    """A pair (2 answers) or a ranking (K) in the item's order ``ranks``; None when it has no order."""
    if ranks is None or len(set(ranks)) == 1:
        return None
    if len(item.responses) == 2:
        better, worse = (0, 1) if ranks[0] < ranks[1] else (1, 0)
        record = {"prompt": item.prompt, "chosen": item.responses[better], "rejected": item.responses[worse]}
    else:
        record = {"prompt": item.prompt, "responses": item.responses, "ranks": ranks}
    return {**record, "key": item.key, "source": source}


def agreement_row(sent: int, labelled: int, compared: int, agreed: int) -> dict:
    return {"sent": sent, "labelled": labelled, "pairs_compared": compared, "pairs_agreed": agreed,
            "agreement": agreed / compared if compared else None}


def estimated_accuracy(items: int, low_items: int, low: float | None, rest: float | None) -> float | None:
    """Judge accuracy over all items: the low-confidence stratum (every item sent) and the rest
    (estimated by the random sample), weighted by size; None when a non-empty stratum has no figure."""
    strata = [(low_items, low), (items - low_items, rest)]
    if not items or any(size and value is None for size, value in strata):
        return None
    return sum(size * value for size, value in strata if size) / items


def merge_reviews(session: Session, project: str, output: str | Path) -> dict:
    """Write ``merged.jsonl`` (human labels win) and ``agreement.json`` into ``output``; returns the report."""
    folder = Path(output)
    items = read_judge_file(folder)
    selection = {row.key: row for row in read_selection(folder, project)}
    target = existing_project(session, project)
    if target.task_type == "rating":
        raise ValueError(f"project {project!r} is a rating project; semi-AI labelling needs pairwise or rank")
    labelled = {item_id: [label.answer for label, _ in labels]
                for item_id, (_, labels) in labels_by_item(project_labels(session, target)).items()}

    merged, left_out = [], Counter()
    tallies = {reason: [0, 0, 0, 0] for reason in REASONS}  # sent, labelled, pairs compared, pairs agreed
    for item in items:
        sent = selection.get(item.key)
        answers = labelled.get(sent.item_id, []) if sent else []
        if sent:
            tally = tallies[sent.reason]
            tally[0] += 1
            if answers:
                compared, agreed = pairs_agreeing(item, answers)
                tally[1] += 1
                tally[2] += compared
                tally[3] += agreed
        if answers:
            record = training_record(item, human_ranks(answers, len(item.responses)), "human")
            left_out["human_no_preference"] += record is None
        else:
            record = training_record(item, item.ranks, item.source)
            if record is not None:
                record["confidence"] = round(item.confidence, 6)
            left_out["judge_no_preference"] += record is None
        if record is not None:
            merged.append(record)
    write_jsonl(folder / MERGED_FILE, merged)

    by_reason = {reason: agreement_row(*tallies[reason]) for reason in REASONS}
    total = agreement_row(*(sum(t[k] for t in tallies.values()) for k in range(4)))
    sources = Counter("human" if r["source"] == "human" else "judge" for r in merged)
    report = {
        "project": target.name, "judge": items[0].source if items else None, "items": len(items),
        "sent": total["sent"], "labelled": total["labelled"], "waiting": total["sent"] - total["labelled"],
        "records": {"written": len(merged), "human": sources["human"], "judge": sources["judge"],
                    "left_out_human_no_preference": left_out["human_no_preference"],
                    "left_out_judge_no_preference": left_out["judge_no_preference"]},
        "agreement": {**by_reason, "all": total},
        "estimated_judge_accuracy": estimated_accuracy(len(items), by_reason[LOW_CONFIDENCE]["sent"],
                                                       by_reason[LOW_CONFIDENCE]["agreement"],
                                                       by_reason[RANDOM]["agreement"]),
        "note": RANDOM_SAMPLE_NOTE,
    }
    (folder / AGREEMENT_FILE).write_text(json.dumps(report, indent=2), encoding="utf-8")
    return report


def print_agreement(report: dict, console) -> None:
    """The agreement report as a rich table and a few lines."""
    from rich.table import Table

    table = Table(title=f"Judge–human agreement ({report['judge']}, project {report['project']})")
    for column in ("selected as", "sent", "labelled", "pairs compared", "agreement"):
        table.add_column(column)
    for name, row in report["agreement"].items():
        value = "n/a" if row["agreement"] is None else f"{row['agreement']:.1%}"
        table.add_row(name, str(row["sent"]), str(row["labelled"]), str(row["pairs_compared"]), value)
    console.print(table)
    estimate, records = report["estimated_judge_accuracy"], report["records"]
    console.print(f"{report['waiting']} of {report['sent']} sent items still wait for people; estimated judge "
                  f"accuracy over all {report['items']} items: {'n/a' if estimate is None else f'{estimate:.1%}'}")
    console.print(f"merged: {records['written']} records ({records['human']} human, {records['judge']} judge); "
                  f"left out: {records['left_out_human_no_preference']} without a human preference, "
                  f"{records['left_out_judge_no_preference']} without a judge preference")
    console.print(report["note"], style="dim")
