"""``rlhfkit loop``: iterated RLHF rounds, composed from the stages that exist on their own.

One round, top to bottom (:func:`run_round`), each step one existing function:

1. **generate** (:func:`~rlhfkit.rollout.generate.run_generate`): K answers to each of the round's
   prompts from the current policy (round 1: ``--policy``; round r: round r-1's policy).
2. **labels**, from one of three sources:

   * ``judge``: :func:`~rlhfkit.judge.run.run_judge` (pairs for K = 2, rankings for K > 2);
   * ``people``: the answer sets go into the feedback project ``{project}-round-{r}`` (the importing
     services, lexicon flagging included, as ``rlhfkit label import`` does); the loop then waits,
     polling the database every ``--poll-seconds`` with a progress bar, until ``--quota`` items (by
     default all) have all their labels, and exports them (:func:`~rlhfkit.feedback.export.write_exports`);
   * ``semi-ai``: :mod:`rlhfkit.feedback.semi_ai`: the judge labels everything, a share goes to people,
     the loop waits for them as above and merges (human labels win).

3. **rm** (:func:`~rlhfkit.train.rm.run_rm`): a reward model trained from the backbone (``--policy``
   unless ``rm: {model: ...}``) on *all* labels so far (``labels/all.jsonl``, every round's
   ``labels/labels.jsonl`` concatenated). Its held-out accuracy is the "RM accuracy" of the report
   (against the labels, i.e. the annotators or the judge: there is no gold here).
4. **policy**: :func:`~rlhfkit.train.ppo.run_ppo` against the round's reward model, or
   :func:`~rlhfkit.train.dpo.run_dpo` on the round's labels (``--dpo-data all``: all labels so far).
   Round r starts from round r-1's policy.
5. **eval** (:func:`~rlhfkit.evaluate.compare.evaluate_policies`): the round's policy against the
   initial policy on ``--eval-prompts``, judged by ``--eval-judge``, with the KL to the initial policy,
   refusal rates where prompts carry ``harmful``, and the mean score under the round's reward model.

After every round, ``OUTPUT/report/`` (:func:`~rlhfkit.evaluate.report.write_report`) shows all rounds
so far (win rate and RM accuracy across rounds) and the latest round's policies and answers.

**The KL anchor.** ``PPOConfig`` has no reference of its own: PPO's frozen reference is the policy it
starts from, so each PPO round's KL penalty anchors to the *previous round's* policy (the drift from
the initial policy can grow by up to one round's budget per round; the evaluation reports the KL to
the initial policy, so it stays visible). ``DPOConfig.reference`` is separate from the start policy,
so DPO rounds anchor to the *initial* policy by default (``--dpo-reference previous`` for the
previous round's; ``dpo: {reference: ...}`` for any other model).

**Layout and resumption.** ::

    OUTPUT/loop.json                      the config (and input fingerprints) of the run
    OUTPUT/round-001/prompts.jsonl        the round's prompts
                     samples.jsonl        {prompt, responses}: K answers per prompt
                     labels/labels.jsonl  the round's labels (pairs or rankings); labels/all.jsonl: all so far
                     rm/  policy/         the trainers' output folders (HF models, checkpoints, metrics)
                     eval/eval.json       the evaluation (eval/samples.jsonl: the answers compared)
                     round.json           the steps done, with their numbers and seconds
    OUTPUT/report/                        report.html, plots/, summary.json

``round.json`` is the marker: a step counts as done when it is recorded there *and* its artifact
exists (files are written to a temporary name and renamed, so an artifact is never half-written). A
rerun with the same config skips done steps and complete rounds; the interrupted trainer (rm or
policy) is rerun with its own ``resume=True`` when its folder holds a checkpoint (save them with
``rm: {save_every: N}`` / ``ppo: {save_every: N}``). A step that has to run again (its artifact was
deleted) makes the later steps of its round run again too, from scratch. A people round waiting for
labels resumes waiting on the same project. ``loop.json`` refuses a rerun whose config changed in a
way that would make earlier rounds inconsistent (anything but ``rounds``, ``poll_seconds``, ``quota``
and ``device``; the prompt files are compared by content), so raise ``--rounds`` to extend a finished
loop.

Simplified on purpose: one process (the trainers themselves may use accelerate), the stages run one
after another in this process, and the round's prompts are a seeded walk through the prompt file.
"""

from __future__ import annotations

import dataclasses
import difflib
import gc
import hashlib
import json
import os
import random
import shutil
import time
import typing
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from rich.table import Table

from rlhfkit.config import (
    ConfigError,
    DPOConfig,
    EvalConfig,
    GenerateConfig,
    JudgeConfig,
    LoopConfig,
    PPOConfig,
    RMConfig,
    coerce,
    config_to_dict,
)
from rlhfkit.console import console, progress_bar
from rlhfkit.data import to_jsonl

STEPS = ("generate", "labels", "rm", "policy", "eval")
LABEL_SOURCES = ("judge", "people", "semi-ai")
OPTIMIZERS = ("ppo", "dpo")

SECTIONS: dict[str, type] = {"generate": GenerateConfig, "judge_options": JudgeConfig, "rm": RMConfig,
                             "ppo": PPOConfig, "dpo": DPOConfig, "eval": EvalConfig}
"""Each mapping field of :class:`LoopConfig` and the stage config its keys are applied to."""

SET_BY_LOOP: dict[str, dict[str, str]] = {
    "generate": {"model": "the round's starting policy", "prompts": "the round's prompts",
                 "output": "the round's samples.jsonl", "num_samples": "samples_per_prompt"},
    "judge_options": {"judge": "judge", "data": "the round's samples", "output": "the round's labels folder"},
    "rm": {"data": "all labels so far", "output": "the round's rm/ folder", "resume": "the loop's resumption"},
    "ppo": {"policy": "the round's starting policy", "reward": "the round's reward model",
            "output": "the round's policy/ folder", "resume": "the loop's resumption"},
    "dpo": {"model": "the round's starting policy", "data": "the round's labels (dpo_data)",
            "output": "the round's policy/ folder", "resume": "the loop's resumption",
            "online": "offline DPO on the round's labels"},
    "eval": {"policy": "the round's policy", "baseline": "the initial policy", "prompts": "eval_prompts",
             "judge": "eval_judge", "output": "the round's eval/ folder", "reference": "the initial policy",
             "db": "not used", "project": "not used", "overlap": "not used"},
}
"""Keys of each section that the loop sets itself (a section that sets them is an error)."""

MAY_CHANGE = ("rounds", "poll_seconds", "quota", "device")
"""Config fields a rerun may change: they do not change what earlier rounds computed."""

LOOP_FILE, ROUND_FILE = "loop.json", "round.json"


# ---------------------------------------------------------------------------------------------------
# The config: checking it, and turning its sections into stage configs


def section_values(config: LoopConfig, section: str) -> dict[str, typing.Any]:
    """The settings of the mapping field ``section``, checked against its stage config (unknown keys,
    keys the loop sets, wrong types: ConfigError naming the section and the key)."""
    cls = SECTIONS[section]
    hints = typing.get_type_hints(cls)
    known = {f.name: hints[f.name] for f in dataclasses.fields(cls)}
    where = f"loop config, section '{section}'"
    values = {}
    for key, value in (getattr(config, section) or {}).items():
        if key not in known:
            hint = difflib.get_close_matches(key.replace("-", "_"), known, n=1)
            suggestion = f" (did you mean '{hint[0]}'?)" if hint else ""
            allowed = sorted(set(known) - set(SET_BY_LOOP[section]))
            raise ConfigError(f"{where}: unknown key '{key}'{suggestion}; known keys: {', '.join(allowed)}")
        if key in SET_BY_LOOP[section]:
            raise ConfigError(f"{where}: key '{key}' is set by the loop ({SET_BY_LOOP[section][key]}); "
                              "leave it out")
        values[key] = coerce(value, known[key], key, where)
    return values


def stage_config(config: LoopConfig, section: str, defaults: dict, **loop_values):
    """The stage config of ``section``: the loop's defaults (device, dtype, seed, ...) < the section's
    settings < the values the loop sets."""
    values = {"device": config.device, "dtype": config.dtype, **defaults, **section_values(config, section),
              **loop_values}
    return SECTIONS[section](**values)


def eval_judge_spec(config: LoopConfig) -> str:
    spec = config.eval_judge or config.judge
    if not spec:
        raise ConfigError("loop: --eval-judge is required (or --judge, which it defaults to)")
    return spec


def check_config(config: LoopConfig) -> None:
    """Every setting checked before any work starts."""
    choices = {"labels": LABEL_SOURCES, "optimizer": OPTIMIZERS, "task": ("rank", "pairwise"),
               "dpo_data": ("round", "all"), "dpo_reference": ("initial", "previous")}
    for key, allowed in choices.items():
        if getattr(config, key) not in allowed:
            raise ConfigError(f"loop: --{key.replace('_', '-')}: expected one of {', '.join(allowed)}, "
                              f"got {getattr(config, key)!r}")
    minimums = {"rounds": 1, "samples_per_prompt": 2, "prompts_per_round": 0, "overlap": 1, "quota": 0}
    for key, least in minimums.items():
        if getattr(config, key) < least:
            raise ConfigError(f"loop: --{key.replace('_', '-')} must be at least {least}, got {getattr(config, key)}")
    if config.poll_seconds <= 0:
        raise ConfigError(f"loop: --poll-seconds must be positive, got {config.poll_seconds}")
    if config.labels in ("judge", "semi-ai") and not config.judge:
        raise ConfigError(f"loop: --labels {config.labels} needs --judge (a judge spec)")
    if config.labels in ("people", "semi-ai") and not (config.db and config.project):
        raise ConfigError(f"loop: --labels {config.labels} needs --db (the feedback app's database) and "
                          "--project (the projects' name prefix)")
    if config.labels == "semi-ai":
        from rlhfkit.feedback.semi_ai import check_fractions

        try:
            check_fractions(config.human_share, config.random_fraction)
        except ValueError as err:
            raise ConfigError(f"loop: {err}") from err
    if eval_judge_spec(config) == "people":
        raise ConfigError("loop: --eval-judge people is not supported (the loop does not wait for evaluation "
                          "labels); use a reward model, a function or a judge model")
    if config.guidelines and not Path(config.guidelines).is_file():
        raise ConfigError(f"loop: --guidelines {config.guidelines}: no such file")
    for section in SECTIONS:
        section_values(config, section)


# ---------------------------------------------------------------------------------------------------
# Files


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file, so the file is complete or absent."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(text, encoding="utf-8")
    os.replace(temporary, path)


def write_json(path: Path, value) -> None:
    write_atomic(path, json.dumps(value, indent=2, ensure_ascii=False) + "\n")


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def fingerprint(path: str) -> str | None:
    """The SHA-256 of a file's bytes (None for folders, e.g. HF datasets, and missing paths)."""
    file = Path(path)
    if not file.is_file():
        return None
    digest = hashlib.sha256()
    with file.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def loop_state(config: LoopConfig) -> dict:
    return {"config": config_to_dict(config),
            "inputs": {"prompts": fingerprint(config.prompts), "eval_prompts": fingerprint(config.eval_prompts)}}


def check_resumable(config: LoopConfig, output: Path) -> None:
    """Refuse to continue rounds that were computed with another config; then store this one."""
    path = output / LOOP_FILE
    current = loop_state(config)
    started = any(output.glob("round-*/" + ROUND_FILE))
    if path.is_file() and started:
        stored = json.loads(path.read_text())
        changed = [f"{key}: {stored['config'].get(key)!r} before, {value!r} now"
                   for key, value in current["config"].items()
                   if key not in MAY_CHANGE and stored["config"].get(key) != value]
        changed += [f"the content of --{name.replace('_', '-')} ({config_to_dict(config)[name]})"
                    for name, digest in current["inputs"].items() if stored.get("inputs", {}).get(name) != digest]
        if changed:
            raise ConfigError(f"{output} holds rounds of a loop with other settings, which this run would mix with "
                              f"its own: {'; '.join(changed)}. Restore them, or use another --output (only "
                              f"{', '.join(MAY_CHANGE)} may change between runs).")
    write_json(path, {**current, "updated": datetime.now(UTC).isoformat(timespec="seconds")})


class RoundPaths:
    """Where round ``number`` keeps its files."""

    def __init__(self, output: Path, number: int):
        self.number = number
        self.folder = output / f"round-{number:03d}"
        self.prompts = self.folder / "prompts.jsonl"
        self.samples = self.folder / "samples.jsonl"
        self.labels_dir = self.folder / "labels"
        self.labels = self.labels_dir / "labels.jsonl"
        self.all_labels = self.labels_dir / "all.jsonl"
        self.rm = self.folder / "rm"
        self.policy = self.folder / "policy"
        self.eval_dir = self.folder / "eval"
        self.eval = self.eval_dir / "eval.json"
        self.record = self.folder / ROUND_FILE

    def artifact(self, step: str) -> Path:
        return {"generate": self.samples, "labels": self.labels, "rm": self.rm / "config.json",
                "policy": self.policy / "config.json", "eval": self.eval}[step]


def read_round(paths: RoundPaths) -> dict | None:
    return json.loads(paths.record.read_text()) if paths.record.is_file() else None


def project_name(config: LoopConfig, number: int) -> str:
    return f"{config.project}-round-{number}"


# ---------------------------------------------------------------------------------------------------
# Step 1: generate


def round_prompts(records: list, per_round: int, seed: int, number: int) -> list:
    """The prompts of round ``number``: all of them (``per_round`` 0 or at least all), else the next
    ``per_round`` of one seeded shuffled order, wrapping around, so rounds see different prompts."""
    if per_round == 0 or per_round >= len(records):
        return list(records)
    order = random.Random(seed).sample(range(len(records)), len(records))
    start = (number - 1) * per_round
    return [records[order[(start + i) % len(records)]] for i in range(per_round)]


def prompt_record(record) -> dict:
    row = {"prompt": record.prompt}
    if record.harmful is not None:
        row["harmful"] = record.harmful
    return row


def step_generate(ctx: LoopContext, paths: RoundPaths, start_policy: str, fresh: bool) -> dict:
    from rlhfkit.rollout.generate import run_generate

    config = ctx.config
    chosen = round_prompts(ctx.prompts, config.prompts_per_round, config.seed, paths.number)
    write_atomic(paths.prompts, to_jsonl([prompt_record(r) for r in chosen]))
    temporary = paths.samples.with_name(paths.samples.name + ".tmp")
    run_generate(stage_config(config, "generate", {"seed": config.seed + paths.number}, model=start_policy,
                              prompts=str(paths.prompts), output=str(temporary),
                              num_samples=config.samples_per_prompt))
    os.replace(temporary, paths.samples)
    return {"prompts": len(chosen), "answers": len(chosen) * config.samples_per_prompt,
            "message": f"{len(chosen) * config.samples_per_prompt} answers to {len(chosen)} prompts "
                       f"from {start_policy}"}


# ---------------------------------------------------------------------------------------------------
# Step 2: labels


def judge_config(config: LoopConfig, data: Path, output: Path) -> JudgeConfig:
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
    source = {"judge": labels_from_judge, "people": labels_from_people, "semi-ai": labels_from_semi_ai}
    return source[ctx.config.labels](ctx, paths)


# ---------------------------------------------------------------------------------------------------
# Steps 3 and 4: the trainers


def trainer_resume(folder: Path, fresh: bool) -> bool:
    """Whether the trainer writing ``folder`` resumes: yes when it holds a checkpoint of this round's
    inputs. ``fresh`` (an earlier step of the round ran again) discards the folder instead."""
    from rlhfkit.train.checkpoints import latest_checkpoint

    if fresh:
        if folder.exists():
            shutil.rmtree(folder)
        return False
    return latest_checkpoint(folder) is not None


def combine_labels(ctx: LoopContext, paths: RoundPaths) -> int:
    """Write every round's labels so far into ``labels/all.jsonl``; returns the record count."""
    records = []
    for number in range(1, paths.number + 1):
        records.extend(read_jsonl(RoundPaths(ctx.output, number).labels))
    if not records:
        raise ConfigError(f"round {paths.number}: no labelled comparisons so far (every judgement a tie, or "
                          "nothing labelled); the reward model has nothing to learn from")
    write_atomic(paths.all_labels, to_jsonl(records))
    return len(records)


def step_rm(ctx: LoopContext, paths: RoundPaths, start_policy: str, fresh: bool) -> dict:
    from rlhfkit.train.rm import run_rm

    config = ctx.config
    records = combine_labels(ctx, paths)
    resume = trainer_resume(paths.rm, fresh)
    run_rm(stage_config(config, "rm", {"model": config.policy, "seed": config.seed + paths.number},
                        data=str(paths.all_labels), output=str(paths.rm), resume=resume))
    report_path = paths.rm / "eval.json"
    report = json.loads(report_path.read_text()) if report_path.is_file() else {}
    accuracy = report.get("accuracy")
    held = f"held-out accuracy {accuracy:.1%} on {report.get('pairs')} pairs" if accuracy is not None else \
        "no held-out pairs (set rm: {eval_split: ...})"
    return {"records": records, "accuracy": accuracy, "pairs": report.get("pairs"), "resumed": resume,
            "message": f"trained on {records} records (all rounds so far){', resumed' if resume else ''}; {held}"}


def last_metrics(folder: Path) -> dict:
    path = folder / "metrics.jsonl"
    if not path.is_file():
        return {}
    rows = read_jsonl(path)
    return rows[-1] if rows else {}


def step_policy(ctx: LoopContext, paths: RoundPaths, start_policy: str, fresh: bool) -> dict:
    config = ctx.config
    resume = trainer_resume(paths.policy, fresh)
    seed = config.seed + paths.number
    if config.optimizer == "ppo":
        from rlhfkit.train.ppo import run_ppo

        run_ppo(stage_config(config, "ppo", {"prompts": config.prompts, "seed": seed}, policy=start_policy,
                             reward=str(paths.rm), output=str(paths.policy), resume=resume))
        anchor = start_policy
    else:
        from rlhfkit.train.dpo import run_dpo

        data = paths.labels if config.dpo_data == "round" else paths.all_labels
        reference = config.policy if config.dpo_reference == "initial" else None
        dpo = stage_config(config, "dpo", {"reference": reference, "seed": seed}, model=start_policy,
                           data=str(data), output=str(paths.policy), resume=resume, online=False)
        run_dpo(dpo)
        anchor = dpo.reference or start_policy
    return {"optimizer": config.optimizer, "start": start_policy, "kl_anchor": anchor, "resumed": resume,
            "metrics": last_metrics(paths.policy),
            "message": f"{config.optimizer} from {start_policy}{', resumed' if resume else ''}, KL anchored to "
                       f"{anchor}; policy saved to {paths.policy}"}


# ---------------------------------------------------------------------------------------------------
# Step 5: evaluation


def policy_name(config: LoopConfig) -> str:
    return f"{config.optimizer} policy"


def step_eval(ctx: LoopContext, paths: RoundPaths, start_policy: str, fresh: bool) -> dict:
    from rlhfkit.evaluate.compare import evaluate_policies
    from rlhfkit.evaluate.run import load_eval_judge, load_models
    from rlhfkit.rewards import load_reward_function

    config = ctx.config
    settings = stage_config(config, "eval", {"seed": config.seed}, policy=str(paths.policy), baseline=config.policy,
                            prompts=config.eval_prompts, judge=eval_judge_spec(config), output=str(paths.eval_dir),
                            reference=None)
    paths.eval_dir.mkdir(parents=True, exist_ok=True)
    models = load_models(settings)
    (policy, tokenizer), (baseline, baseline_tokenizer) = models["policy"], models["baseline"]
    same_vocab = baseline_tokenizer.get_vocab() == tokenizer.get_vocab()
    judge, judge_name = load_eval_judge(settings, paths.eval_dir)
    rm_score = load_reward_function(str(paths.rm), device=config.device, dtype=config.dtype,
                                    batch_size=settings.batch_size, max_length=settings.max_length)
    names = (f"round {paths.number}", "initial")
    result = evaluate_policies(
        policy, baseline, tokenizer, [r.prompt for r in ctx.eval_prompts], judge,
        reference=models["reference"][0] if same_vocab else None, harmful=[r.harmful for r in ctx.eval_prompts],
        baseline_tokenizer=None if same_vocab else baseline_tokenizer, samples_per_prompt=settings.samples_per_prompt,
        max_new_tokens=settings.max_new_tokens, temperature=settings.temperature, top_p=settings.top_p,
        seed=settings.seed, batch_size=settings.batch_size, names=names, judge_name=judge_name,
        scorers={"rm_score": rm_score})
    del models, policy, baseline, judge, rm_score
    gc.collect()
    result = {"created": datetime.now(UTC).isoformat(timespec="seconds"), "round": paths.number,
              "policy_path": str(paths.policy), "baseline_path": config.policy, **result}
    write_atomic(paths.eval_dir / "samples.jsonl", to_jsonl(result["samples"]))
    write_json(paths.eval, {key: value for key, value in result.items() if key != "samples"})
    mine = result["policies"][names[0]]
    return {"judge": result["judge"], "win_rate": result["win_rate"], "kl": mine["kl"],
            "policies": result["policies"], "message": f"{names[0]} vs the initial policy: {win_rate_text(mine)}, "
                                                       f"KL {number_text(mine['kl'])} nats (judge {judge_name})"}


# ---------------------------------------------------------------------------------------------------
# Rounds, the report and the tables


class LoopContext:
    """What every round reads: the config, the output folder, the prompts."""

    def __init__(self, config: LoopConfig, output: Path, prompts: list, eval_prompts: list):
        self.config, self.output, self.prompts, self.eval_prompts = config, output, prompts, eval_prompts


RUNNERS = {"generate": step_generate, "labels": step_labels, "rm": step_rm, "policy": step_policy,
           "eval": step_eval}


def run_round(ctx: LoopContext, number: int, start_policy: str) -> dict:
    """Run round ``number`` from ``start_policy``, skipping the steps done before; returns its record."""
    paths = RoundPaths(ctx.output, number)
    state = read_round(paths) or {"round": number, "start_policy": start_policy, "steps": {}, "complete": False}
    head = f"[bold cyan]round {number}/{ctx.config.rounds}[/]"
    if state["complete"] and all(paths.artifact(step).exists() for step in STEPS):
        console.print(f"{head}: complete, skipped")
        return state
    state["complete"] = False
    ran = False
    for index, step in enumerate(STEPS):
        if step in state["steps"] and paths.artifact(step).exists() and not ran:
            console.print(f"{head} {step}: done earlier, skipped")
            continue
        console.print(f"{head} {step} ...")
        started = time.perf_counter()
        info = RUNNERS[step](ctx, paths, start_policy, ran)
        info["seconds"] = round(time.perf_counter() - started, 2)
        message = info.pop("message", "")
        state["steps"][step] = info
        for later in STEPS[index + 1 :]:
            state["steps"].pop(later, None)
        write_json(paths.record, state)
        console.print(f"{head} {step}: {message} [dim]({info['seconds']:.1f} s)[/]")
        ran = True
    state["complete"] = True
    write_json(paths.record, state)
    return state


def round_entry(config: LoopConfig, state: dict) -> dict:
    """A round as the report's ``rounds`` list holds it."""
    evaluation, rm = state["steps"]["eval"], state["steps"]["rm"]
    mine = evaluation["policies"][f"round {state['round']}"]
    return {"round": state["round"], "policies": {policy_name(config): mine},
            "reward_model": {"accuracy_vs_annotators": rm.get("accuracy"), "pairs": rm.get("pairs")}}


def write_loop_report(ctx: LoopContext, states: list[dict]) -> Path:
    """``OUTPUT/report/``: all rounds so far and the latest round's policies and answers."""
    from rlhfkit.evaluate.compare import report_summary
    from rlhfkit.evaluate.report import write_report
    from rlhfkit.evaluate.run import read_results

    config, latest = ctx.config, states[-1]
    result = read_results(RoundPaths(ctx.output, latest["round"]).eval_dir)
    summary = report_summary(result, title=f"rlhfkit loop: {len(states)} of {config.rounds} rounds "
                                           f"({config.labels} labels, {config.optimizer})")
    rm = latest["steps"]["rm"]
    summary["created"] = datetime.now(UTC).isoformat(timespec="seconds")
    summary["reward_model"] = {"accuracy_vs_annotators": rm.get("accuracy"), "pairs": rm.get("pairs")}
    summary["rounds"] = [round_entry(config, state) for state in states]
    summary["stage_seconds"] = {f"round {state['round']}: {step}": info.get("seconds")
                                for state in states for step, info in state["steps"].items()}
    summary["notes"] = [
        f"Round {latest['round']}'s policy against the initial policy ({config.policy}) on {config.eval_prompts}. "
        + summary["notes"][0],
        *summary["notes"][1:],
        f"Labels: {config.labels}. The reward model of round r is trained on the labels of rounds 1..r; its "
        "accuracy is on held-out labels (annotators or judge), not on gold.",
        "KL is measured to the initial policy. " + (
            "PPO's KL penalty anchors each round to the previous round's policy (its starting point)."
            if config.optimizer == "ppo" else
            f"DPO's reference is {'the initial policy' if config.dpo_reference == 'initial' else 'the previous round policy'}"
            + (" (or the one in dpo: {reference})" if config.dpo.get("reference") else "") + "."),
    ]
    return write_report(ctx.output / "report", summary)


def number_text(value) -> str:
    return "n/a" if value is None else f"{value:.3g}"


def win_rate_text(policy: dict) -> str:
    rate = policy.get("win_rate")
    if not rate or rate.get("rate") is None:
        return "win rate n/a"
    return f"win rate {rate['rate']:.1%} [{rate['low']:.1%}, {rate['high']:.1%}] (n = {rate['n']})"


def print_rounds(config: LoopConfig, states: list[dict]) -> None:
    table = Table(title=f"rlhfkit loop: {config.labels} labels, {config.optimizer}")
    for column in ("round", "labels", "RM held-out acc.", "win rate vs initial", "95% CI", "KL to initial",
                   "seconds"):
        table.add_column(column)
    for state in states:
        steps = state["steps"]
        mine = steps["eval"]["policies"][f"round {state['round']}"]
        rate = mine.get("win_rate") or {}
        accuracy = steps["rm"].get("accuracy")
        table.add_row(str(state["round"]), str(steps["labels"].get("records")),
                      "n/a" if accuracy is None else f"{accuracy:.1%}",
                      "n/a" if rate.get("rate") is None else f"{rate['rate']:.1%}",
                      "n/a" if rate.get("low") is None else f"[{rate['low']:.1%}, {rate['high']:.1%}]",
                      number_text(mine.get("kl")), f"{sum(s.get('seconds') or 0 for s in steps.values()):.0f}")
    console.print(table)


def run_loop(config: LoopConfig) -> Path:
    """Run (or resume) ``config.rounds`` rounds into ``config.output``; returns the output folder."""
    from rlhfkit.data import load_prompts

    check_config(config)
    prompts = load_prompts(config.prompts)
    eval_prompts = load_prompts(config.eval_prompts)
    if not prompts or not eval_prompts:
        raise ConfigError("loop: --prompts and --eval-prompts need at least one prompt each")
    output = Path(config.output)
    output.mkdir(parents=True, exist_ok=True)
    check_resumable(config, output)
    ctx = LoopContext(config, output, prompts, eval_prompts)
    console.rule(f"[bold]rlhfkit loop: {config.rounds} rounds into {output}")
    states: list[dict] = []
    policy = config.policy
    try:
        for number in range(1, config.rounds + 1):
            state = run_round(ctx, number, policy)
            states.append(state)
            policy = str(RoundPaths(output, number).policy)
            report = write_loop_report(ctx, states)
            print_rounds(config, states)
    except KeyboardInterrupt:
        console.print(f"[yellow]loop interrupted; run the same command again to resume from {output}[/]")
        raise
    console.print(f"loop: {config.rounds} rounds done; the report is {report}")
    return output
