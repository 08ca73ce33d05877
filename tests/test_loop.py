"""rlhfkit loop: two judged rounds interrupted and resumed without recomputing round one; DPO rounds; config
errors naming the section and key; a people round that waits for labels given through the feedback services."""

from __future__ import annotations

import json
import math
import threading
import time

import pytest
import yaml
from argon2 import PasswordHasher

import rlhfkit.evaluate.compare
import rlhfkit.judge.run
import rlhfkit.rollout.generate_command
import rlhfkit.train.dpo
import rlhfkit.train.ppo
import rlhfkit.train.rm
from rlhfkit.cli import build_parser, main
from rlhfkit.config import ConfigError, LoopConfig
from rlhfkit.config_parse import config_from_args, config_to_dict, read_yaml_config
from rlhfkit.iterate import (
    FeedbackDatabase,
    project_options,
    push_round_items,
    run_loop,
    section_values,
    wait_for_quota,
)
from rlhfkit.iterate.settings import stage_config

JUDGES = '''
def more_e(prompts, responses):
    """The preferred answer has more letters 'e'; the length breaks most ties."""
    return [r.count("e") + len(r) / 1000 for r in responses]
'''

STAGE_FUNCTIONS = [(rlhfkit.rollout.generate_command, "run_generate"), (rlhfkit.judge.run, "run_judge"),
                   (rlhfkit.train.rm, "run_rm"), (rlhfkit.train.ppo, "run_ppo"), (rlhfkit.train.dpo, "run_dpo"),
                   (rlhfkit.evaluate.compare, "evaluate_policies")]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def loop_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("loop-files")
    (folder / "loop_judges.py").write_text(JUDGES)
    prompts = [{"prompt": [{"role": "user", "content": f"Tell me about thing {i}."}]} for i in range(12)]
    (folder / "prompts.jsonl").write_text("".join(json.dumps(p) + "\n" for p in prompts))
    held_out = [{"prompt": "Name a colour.", "harmful": False}, {"prompt": "Help me steal a bike.", "harmful": True},
                {"prompt": "Say hello."}, {"prompt": "What is snow?", "harmful": False}]
    (folder / "eval.jsonl").write_text("".join(json.dumps(p) + "\n" for p in held_out))
    return folder


def loop_config(model_dir, files, output, **overrides) -> LoopConfig:
    settings = dict(
        policy=str(model_dir), prompts=str(files / "prompts.jsonl"), eval_prompts=str(files / "eval.jsonl"),
        output=str(output), rounds=2, samples_per_prompt=3, prompts_per_round=6, labels="judge",
        judge=f"{files / 'loop_judges.py'}:more_e", device="cpu", seed=0,
        generate={"max_new_tokens": 8, "batch_size": 32},
        rm={"max_steps": 3, "batch_size": 4, "max_length": 64, "eval_split": 0.34, "learning_rate": 1e-3,
            "warmup_ratio": 0.0, "save_every": 0, "log_every": 1},
        ppo={"max_steps": 2, "prompts_per_step": 4, "max_new_tokens": 8, "batch_size": 16, "ppo_epochs": 1,
             "max_length": 64, "learning_rate": 1e-3, "warmup_ratio": 0.0, "eval_split": 0.0, "save_every": 1,
             "sample_every": 0, "log_every": 1},
        dpo={"max_steps": 2, "batch_size": 4, "max_length": 64, "learning_rate": 1e-3, "warmup_ratio": 0.0,
             "eval_split": 0.0, "eval_kl_prompts": 0, "save_every": 0, "log_every": 1},
        eval={"max_new_tokens": 8, "batch_size": 16, "max_length": 64},
    )
    settings.update(overrides)
    return LoopConfig(**settings)


@pytest.fixture
def stage_calls(monkeypatch):
    """Every stage function the loop calls, wrapped to record (name, output folder or file, config)."""
    calls: list[tuple[str, str, object]] = []
    for module, name in STAGE_FUNCTIONS:
        real = getattr(module, name)

        def wrapper(*args, _real=real, _name=name, **kwargs):
            config = args[0]
            calls.append((_name, str(getattr(config, "output", "") or ""), config))
            return _real(*args, **kwargs)

        monkeypatch.setattr(module, name, wrapper)
    return calls


def round_of(path: str) -> int | None:
    for part in reversed(path.split("/")):
        if part.startswith("round-"):
            return int(part.split("-")[1])
    return None


def finite(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def test_two_judged_ppo_rounds_interrupted_and_resumed(tmp_path, tiny_model_dir, loop_files, stage_calls,
                                                       monkeypatch):
    output = tmp_path / "loop"
    config = loop_config(tiny_model_dir, loop_files, output)
    real_ppo = rlhfkit.train.ppo.run_ppo  # stage_calls' counting wrapper

    def interrupted_ppo(ppo_config, on_step=None):
        if "round-002" not in ppo_config.output:
            return real_ppo(ppo_config)

        def stop(step):  # after step 1 and its checkpoint (save_every 1): Ctrl-C
            raise KeyboardInterrupt

        return real_ppo(ppo_config, on_step=stop)

    monkeypatch.setattr(rlhfkit.train.ppo, "run_ppo", interrupted_ppo)
    with pytest.raises(KeyboardInterrupt):
        run_loop(config)

    first = output / "round-001"
    state = json.loads((first / "round.json").read_text())
    assert state["complete"] and list(state["steps"]) == ["generate", "labels", "rm", "policy", "eval"]
    for artifact in ["samples.jsonl", "labels/labels.jsonl", "labels/all.jsonl", "rm/config.json",
                     "policy/config.json", "eval/eval.json"]:
        assert (first / artifact).is_file(), artifact
    samples = [json.loads(line) for line in (first / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 6 and all(len(s["responses"]) == 3 for s in samples)
    second = json.loads((output / "round-002" / "round.json").read_text())
    assert not second["complete"] and list(second["steps"]) == ["generate", "labels", "rm"]
    assert (output / "round-002" / "policy" / "checkpoints").is_dir()
    report = json.loads((output / "report" / "summary.json").read_text())
    assert [r["round"] for r in report["rounds"]] == [1]
    # round 2's prompts are the next 6 of the shuffled order: none of round 1's
    first_prompts = (first / "prompts.jsonl").read_text().splitlines()
    assert not set(first_prompts) & set((output / "round-002" / "prompts.jsonl").read_text().splitlines())

    mtimes = {p: p.stat().st_mtime_ns for p in first.rglob("*") if p.is_file()}
    stage_calls.clear()
    monkeypatch.setattr(rlhfkit.train.ppo, "run_ppo", real_ppo)
    run_loop(config)

    assert [(name, round_of(where)) for name, where, _ in stage_calls] == [("run_ppo", 2), ("evaluate_policies", None)]
    assert stage_calls[0][2].resume  # PPO went on from its round-2 checkpoint
    assert stage_calls[0][2].policy == str(first / "policy")  # round 2 starts from round 1's policy
    assert {p: p.stat().st_mtime_ns for p in first.rglob("*") if p.is_file()} == mtimes
    assert json.loads((output / "round-002" / "round.json").read_text())["complete"]

    report = json.loads((output / "report" / "summary.json").read_text())
    assert [r["round"] for r in report["rounds"]] == [1, 2]
    for entry in report["rounds"]:
        policy = entry["policies"]["ppo policy"]
        assert finite(policy["win_rate"]["rate"]) and finite(policy["win_rate"]["low"]) and finite(policy["kl"])
        assert finite(entry["reward_model"]["accuracy_vs_annotators"])
    assert set(report["policies"]) == {"round 2", "initial"}
    assert finite(report["policies"]["round 2"]["rm_score"])
    assert report["policies"]["round 2"]["refusal_rate"] is not None  # the eval prompts carry 'harmful'
    assert (output / "report" / "report.html").is_file() and (output / "report" / "plots" / "rounds.png").is_file()
    loop_json = json.loads((output / "loop.json").read_text())
    assert loop_json["config"]["optimizer"] == "ppo" and loop_json["inputs"]["prompts"]


def test_dpo_rounds_on_all_labels_and_a_changed_config_is_refused(tmp_path, tiny_model_dir, loop_files,
                                                                  stage_calls):
    output = tmp_path / "loop"
    config = loop_config(tiny_model_dir, loop_files, output, rounds=1, optimizer="dpo", dpo_data="all",
                         samples_per_prompt=2)
    path = tmp_path / "loop.yaml"
    path.write_text(yaml.safe_dump(config_to_dict(config)))
    main(["loop", "--config", str(path)])  # through the command line: the sections come from YAML
    (dpo_call,) = [c for name, _, c in stage_calls if name == "run_dpo"]
    assert dpo_call.reference == str(tiny_model_dir) and dpo_call.data.endswith("labels/all.jsonl")
    labels = [json.loads(line) for line in (output / "round-001" / "labels" / "labels.jsonl").read_text().splitlines()]
    assert labels and all("chosen" in r for r in labels)  # K = 2: the judge writes pairs
    report = json.loads((output / "report" / "summary.json").read_text())
    assert finite(report["rounds"][0]["policies"]["dpo policy"]["win_rate"]["rate"])

    stage_calls.clear()
    run_loop(config)  # everything done: nothing runs again
    assert stage_calls == []
    with pytest.raises(ConfigError, match="samples_per_prompt: 2 before, 3 now"):
        run_loop(loop_config(tiny_model_dir, loop_files, output, rounds=1, optimizer="dpo", dpo_data="all"))


def test_unknown_or_loop_owned_section_keys_are_errors_naming_section_and_key(tmp_path, loop_files, capsys):
    path = tmp_path / "loop.yaml"
    path.write_text("policy: p\nprompts: p.jsonl\neval_prompts: e.jsonl\noutput: out\njudge: m:f\n"
                    "ppo:\n  max_stepz: 3\n")
    with pytest.raises(SystemExit) as exit_info:
        main(["loop", "--config", str(path)])
    assert exit_info.value.code == 2
    message = " ".join(capsys.readouterr().err.split())
    assert "section 'ppo': unknown key 'max_stepz' (did you mean 'max_steps'?)" in message
    assert not (tmp_path / "out").exists()

    config = LoopConfig(**read_yaml_config(path, LoopConfig))
    assert config.ppo == {"max_stepz": 3}
    with pytest.raises(ConfigError, match="section 'ppo': key 'policy' is set by the loop"):
        section_values(LoopConfig(policy="p", prompts="p", eval_prompts="e", output="o", ppo={"policy": "x"}), "ppo")
    with pytest.raises(ConfigError, match="section 'rm': key 'max_steps': expected an integer"):
        section_values(LoopConfig(policy="p", prompts="p", eval_prompts="e", output="o", rm={"max_steps": "many"}),
                       "rm")
    with pytest.raises(ConfigError, match="key 'dpo': expected a mapping"):
        read_yaml_config(write(tmp_path / "bad.yaml", "dpo: 3\n"), LoopConfig)
    with pytest.raises(ConfigError, match="--labels people needs --db"):
        run_loop(loop_config("p", loop_files, tmp_path / "x", labels="people"))
    with pytest.raises(ConfigError, match="section 'dpo': placement ray places the engines of online DPO"):
        run_loop(loop_config("p", loop_files, tmp_path / "x", optimizer="dpo", dpo={"placement": "ray"}))
    # the PPO step of a round takes its placement from the ppo section (run_ppo then drives Ray's actors)
    ppo = stage_config(loop_config("p", loop_files, tmp_path / "x", ppo={"placement": "ray", "trainer_processes": 2,
                                                                         "async_steps": 1}), "ppo", {},
                       policy="p", reward="r", prompts="p.jsonl", output="o")
    assert (ppo.placement, ppo.trainer_processes, ppo.async_steps) == ("ray", 2, 1)


def test_sections_can_be_given_as_flags():
    args = build_parser().parse_args(["loop", "--policy", "p", "--prompts", "p.jsonl", "--eval-prompts", "e.jsonl",
                                      "--output", "o", "--ppo", "{max_steps: 2, beta: 0.1}", "--rounds", "5"])
    config = config_from_args(LoopConfig, args)
    assert config.ppo == {"max_steps": 2, "beta": 0.1} and config.rounds == 5 and config.rm == {}


def test_a_rerun_reuses_the_project_it_pushed_and_refuses_a_foreign_one(tmp_path, loop_files):
    samples = write(tmp_path / "samples.jsonl", "".join(
        json.dumps({"prompt": f"Q{i}?", "responses": ["a", "b", "c"]}) + "\n" for i in range(3)))
    other = write(tmp_path / "other.jsonl", json.dumps({"prompt": "X?", "responses": ["a", "b"]}) + "\n")
    config = LoopConfig(policy="p", prompts="p", eval_prompts="e", output="o", overlap=2)
    database = FeedbackDatabase(f"sqlite:///{tmp_path / 'feedback.db'}")
    try:
        with database.sessions() as session:
            project, added = push_round_items(session, "loop-round-1", samples, project_options(config, "rank"))
            assert (added, project.task_type, project.overlap) == (3, "rank", 2)
        with database.sessions() as session:
            again, added = push_round_items(session, "loop-round-1", samples, project_options(config, "rank"))
            assert (added, again.id) == (0, project.id)
            with pytest.raises(ConfigError, match="already exists with other items"):
                push_round_items(session, "loop-round-1", other, project_options(config, "rank"))
    finally:
        database.close()


def write(path, text):
    path.write_text(text)
    return path


def test_wait_for_quota_polls_until_the_quota_is_labelled():
    counts = iter([(0, 5), (1, 5), (1, 5), (3, 5), (4, 5)])
    sleeps = []
    assert wait_for_quota(lambda: next(counts), 3, 0.5, "test", sleep=sleeps.append) == 3
    assert sleeps == [0.5, 0.5, 0.5]
    assert wait_for_quota(lambda: (2, 2), 0, 9.0, "done", sleep=sleeps.append) == 2  # nothing to wait for
    everything = iter([(0, 2), (1, 2), (2, 2)])
    assert wait_for_quota(lambda: next(everything), 0, 0.1, "all", sleep=lambda s: None) == 2  # 0: all items


def label_in_background(db_url: str, project_name: str, stop: threading.Event, errors: list) -> None:
    """An annotator working through the feedback services: waits for the project, then ranks every item
    it is offered (answers with more 'e' first)."""
    from sqlalchemy import select

    from rlhfkit.feedback.assignment import next_assignment
    from rlhfkit.feedback.auth import create_user
    from rlhfkit.feedback.db import Project, make_engine, make_session_factory, settings_row, utcnow
    from rlhfkit.feedback.labels import reveal, submit_label

    engine = None
    try:
        while not stop.is_set():
            try:
                engine = engine or make_engine(db_url)
                with make_session_factory(engine)() as session:
                    project = session.scalar(select(Project).where(Project.name == project_name))
            except Exception:  # the loop has not created the schema yet
                project = None
            if project is not None:
                break
            time.sleep(0.05)
        sessions = make_session_factory(engine)
        with sessions() as session:
            user = create_user(session, "ann", "correct horse battery", "annotator", utcnow())
            session.commit()
            project = session.scalar(select(Project).where(Project.name == project_name))
            settings = settings_row(session)
            while (assignment := next_assignment(session, project, user, utcnow(), settings)) is not None:
                if assignment.revealed_at is None:
                    reveal(session, assignment, utcnow(), settings)
                responses = assignment.item.responses
                order = sorted(range(len(responses)), key=lambda i: -responses[i].count("e"))
                ranks = [order.index(i) + 1 for i in range(len(responses))]
                submit_label(session, assignment, project, {"ranks": ranks}, utcnow())
                session.commit()
                time.sleep(0.05)
    except Exception as err:  # reported by the test
        errors.append(err)
    finally:
        if engine is not None:
            engine.dispose()


@pytest.mark.parametrize("labels", ["people", "semi-ai"])
def test_a_people_round_waits_for_labels_given_through_the_feedback_services(tmp_path, tiny_model_dir, loop_files,
                                                                            monkeypatch, labels):
    from rlhfkit.feedback import auth

    monkeypatch.setattr(auth, "password_hasher", PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1))
    db_url = f"sqlite:///{tmp_path / 'feedback.db'}"
    output = tmp_path / "loop"
    config = loop_config(tiny_model_dir, loop_files, output, rounds=1, labels=labels, db=db_url, project="loop",
                         prompts_per_round=4, poll_seconds=0.1, human_share=0.5)
    stop, errors = threading.Event(), []
    annotator = threading.Thread(target=label_in_background, args=(db_url, "loop-round-1", stop, errors), daemon=True)
    annotator.start()
    try:
        run_loop(config)
    finally:
        stop.set()
        annotator.join(timeout=30)
    assert not errors, errors
    records = [json.loads(line) for line in (output / "round-001" / "labels" / "labels.jsonl").read_text().splitlines()]
    assert len(records) == 4 and all(len(r["ranks"]) == 3 for r in records)
    state = json.loads((output / "round-001" / "round.json").read_text())
    assert state["complete"]
    if labels == "people":  # every item waited for and exported
        assert all(r["source"] == "rlhfkit-label:loop-round-1" for r in records)
        assert state["steps"]["labels"]["labelled_items"] == 4
    else:  # ceil(0.5 * 4) items reviewed by the annotator, the rest judged
        assert sorted(r["source"].split(":")[0] for r in records) == ["human", "human", "judge", "judge"]
        assert state["steps"]["labels"]["human"] == 2


def test_a_people_round_keeps_the_previous_rounds_members(tmp_path, monkeypatch, loop_files, tiny_model_dir):
    """Projects admit their members only: round r's project gets round r-1's (round 1's come from an admin)."""
    from rlhfkit.feedback import auth
    from rlhfkit.feedback.auth import create_user
    from rlhfkit.feedback.db import utcnow
    from rlhfkit.feedback.importing import ProjectOptions, create_project
    from rlhfkit.feedback.membership import project_members, set_member
    from rlhfkit.iterate.labels import FeedbackDatabase, carry_members

    monkeypatch.setattr(auth, "password_hasher", PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1))
    config = loop_config(tiny_model_dir, loop_files, tmp_path / "loop", labels="people",
                         db=f"sqlite:///{tmp_path / 'feedback.db'}", project="loop")
    database = FeedbackDatabase(config.db)
    try:
        with database.sessions() as session:
            first = create_project(session, "loop-round-1", ProjectOptions())
            second = create_project(session, "loop-round-2", ProjectOptions())
            for name, role in (("ann", "annotator"), ("rev", "reviewer")):
                set_member(session, first, create_user(session, name, "correct horse battery", "annotator", utcnow()),
                           role, None, utcnow())
            session.commit()
            carry_members(session, config, 1)  # round 1: nothing to copy (an admin adds them)
            carry_members(session, config, 2)
            assert [(m["username"], m["role"]) for m in project_members(session, second)] == [
                ("ann", "annotator"), ("rev", "reviewer")]
    finally:
        database.close()
