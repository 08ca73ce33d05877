"""The loop config: checking it before any work starts, and turning its sections into stage configs."""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path

from rlhfkit.config import (
    ConfigError,
    DPOConfig,
    EvalConfig,
    GenerateConfig,
    JudgeConfig,
    LoopConfig,
    PPOConfig,
    RMConfig,
)
from rlhfkit.config_parse import check_known_key, coerce

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


def section_values(config: LoopConfig, section: str) -> dict[str, typing.Any]:
    """The settings of the mapping field ``section``, checked against its stage config (unknown keys,
    keys the loop sets, wrong types: ConfigError naming the section and the key)."""
    cls = SECTIONS[section]
    hints = typing.get_type_hints(cls)
    known = {f.name: hints[f.name] for f in dataclasses.fields(cls)}
    set_by_loop = SET_BY_LOOP[section]
    where = f"loop config, section '{section}'"
    values = {}
    for key, value in (getattr(config, section) or {}).items():
        check_known_key(key, known, where, allowed=set(known) - set(set_by_loop))
        if key in set_by_loop:
            raise ConfigError(f"{where}: key '{key}' is set by the loop ({set_by_loop[key]}); leave it out")
        values[key] = coerce(value, known[key], key, where)
    return values


def stage_config(config: LoopConfig, section: str, defaults: dict, **loop_values):
    """The stage config of ``section``: the loop's defaults (device, dtype, seed, ...) < the section's
    settings < the values the loop sets."""
    cls = SECTIONS[section]
    shared = {"device": config.device, "dtype": config.dtype}
    if "engine" in {f.name for f in dataclasses.fields(cls)}:  # the stages that sample
        shared["engine"] = config.engine
    values = {**shared, **defaults, **section_values(config, section), **loop_values}
    return cls(**values)


def eval_judge_spec(config: LoopConfig) -> str:
    """The evaluation's judge: ``--eval-judge``, else ``--judge``."""
    spec = config.eval_judge or config.judge
    if not spec:
        raise ConfigError("loop: --eval-judge is required (or --judge, which it defaults to)")
    return spec


def check_config(config: LoopConfig) -> None:
    """Every setting checked before any work starts. The choice fields (labels, task, optimizer, ...) are
    checked when the config is made, and so are the numbers' ranges (``check_choices``); these are the
    cross-field rules."""
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
    if section_values(config, "dpo").get("placement") == "ray":
        raise ConfigError("loop, section 'dpo': placement ray places the engines of online DPO; the loop's DPO "
                          "trains offline on the round's labels (put placement: ray in the ppo section, or "
                          "launch the loop under torchrun with fsdp)")
