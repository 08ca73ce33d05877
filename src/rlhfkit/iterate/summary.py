"""The loop's report (``OUTPUT/report/``) and the table of rounds printed after each round."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from rich.table import Table

from rlhfkit.config import LoopConfig
from rlhfkit.console import console
from rlhfkit.iterate.state import LoopContext, RoundPaths


def policy_name(config: LoopConfig) -> str:
    """The name of the rounds' policies in the report."""
    return f"{config.optimizer} policy"


def number_text(value) -> str:
    return "n/a" if value is None else f"{value:.3g}"


def win_rate_text(policy: dict) -> str:
    """A policy's win rate with its 95% interval, for the console."""
    rate = policy.get("win_rate")
    if not rate or rate.get("rate") is None:
        return "win rate n/a"
    return f"win rate {rate['rate']:.1%} [{rate['low']:.1%}, {rate['high']:.1%}] (n = {rate['n']})"


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

def print_rounds(config: LoopConfig, states: list[dict]) -> None:
    """The table of rounds: labels, RM accuracy, win rate, KL and seconds of each."""
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

