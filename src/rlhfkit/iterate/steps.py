"""The round's steps other than the labels: generate (1), the reward model (3), the policy (4) and the
evaluation (5). Each takes (context, round paths, starting policy, fresh) and returns its record for
``round.json``, with a ``message`` for the console."""

from __future__ import annotations

import gc
import json
import os
import random
import shutil
from datetime import UTC, datetime
from pathlib import Path

from rlhfkit.config import ConfigError
from rlhfkit.data import to_jsonl
from rlhfkit.iterate.settings import eval_judge_spec, stage_config
from rlhfkit.iterate.state import LoopContext, RoundPaths, read_jsonl, write_atomic, write_json
from rlhfkit.iterate.summary import number_text, win_rate_text

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
    """A prompt as the round's prompts.jsonl holds it."""
    row = {"prompt": record.prompt}
    if record.harmful is not None:
        row["harmful"] = record.harmful
    return row


def step_generate(ctx: LoopContext, paths: RoundPaths, start_policy: str, fresh: bool) -> dict:
    """K answers to each of the round's prompts from the starting policy (``samples.jsonl``)."""
    from rlhfkit.rollout.generate_command import run_generate

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
    """The round's reward model, trained on all labels so far."""
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
    """The last row of a trainer's metrics.jsonl ({} when there is none)."""
    path = folder / "metrics.jsonl"
    if not path.is_file():
        return {}
    rows = read_jsonl(path)
    return rows[-1] if rows else {}


def step_policy(ctx: LoopContext, paths: RoundPaths, start_policy: str, fresh: bool) -> dict:
    """The round's policy: PPO against the round's reward model, or DPO on the labels."""
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


def step_eval(ctx: LoopContext, paths: RoundPaths, start_policy: str, fresh: bool) -> dict:
    """The round's policy against the initial one on the evaluation prompts (``eval/eval.json``)."""
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
