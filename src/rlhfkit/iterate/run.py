"""Running the loop: each round's steps in order, skipping those done before, then the report."""

from __future__ import annotations

import time
from pathlib import Path

from rlhfkit.config import ConfigError, LoopConfig
from rlhfkit.console import console
from rlhfkit.iterate.labels import step_labels
from rlhfkit.iterate.settings import check_config
from rlhfkit.iterate.state import STEPS, LoopContext, RoundPaths, check_resumable, read_round, write_json
from rlhfkit.iterate.steps import step_eval, step_generate, step_policy, step_rm
from rlhfkit.iterate.summary import print_rounds, write_loop_report

RUNNERS = {"generate": step_generate, "labels": step_labels, "rm": step_rm, "policy": step_policy,
           "eval": step_eval}
"""The function that runs each step."""


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
