"""``rlhfkit demo --study``: the over-optimisation picture of Gao et al. (2022) on the demo's world.

PPO runs against the round-1 reward model from the same SFT policy, one per KL penalty β in
:data:`BETAS`. Each run's held-out answers are scored by that reward model and by the hidden gold
preference and their KL to SFT is measured: as β falls the policy moves further (more KL) and the
reward-model score keeps rising, while the gold score rises, peaks and falls (reward hacking). The
points go into the demo's report (a section and a plot) and ``summary.json`` (``"kl_sweep"``).

It needs a finished demo in the output folder (run first when there is none) and takes a few
minutes more: it is not part of the default demo.
"""

from __future__ import annotations

import json
from pathlib import Path

from rlhfkit.console import console
from rlhfkit.demo.evaluation import against_sft, sample_held_out
from rlhfkit.demo.run import FULL, QUICK, run_demo, train_ppo, training_defaults
from rlhfkit.demo.world import World
from rlhfkit.evaluate.report import write_report
from rlhfkit.models import load_causal_lm, load_tokenizer
from rlhfkit.rewards import load_reward_function

BETAS = (1.0, 0.3, 0.1, 0.03, 0.01)
"""The KL penalties swept, strongest first."""


def run_study(output: str | Path, seed: int = 0, quick: bool = False) -> list[dict]:
    """Sweep :data:`BETAS` against the demo in ``output`` (running the demo first if it is not there);
    returns the points, also added to the report. ``quick``: the demo's quick sizes (tests)."""
    size = QUICK if quick else FULL
    output = Path(output)
    summary_path = output / "report" / "summary.json"
    if not summary_path.exists() or not (output / "rm").exists():
        run_demo(output, quick=quick, seed=seed)
    summary = json.loads(summary_path.read_text(encoding="utf-8"))
    world = World(seed=seed)
    held_out = world.prompts("held_out")
    prompts = [p["prompt"] for p in held_out]
    tokenizer = load_tokenizer(str(output / "sft"))
    sft = load_causal_lm(str(output / "sft"), tokenizer).eval()
    reward = load_reward_function(str(output / "rm"), device="cpu")
    sft_answers = sample_held_out(sft, tokenizer, prompts, size, seed)
    points = []
    for beta in BETAS:
        name = f"study/beta-{beta:g}"
        console.rule(f"[bold]study: PPO against the round-1 reward model, β = {beta:g}")
        train_ppo(output, "rm", name, size.ppo_round_1_steps + size.ppo_steps, beta, size, training_defaults(seed))
        policy = load_causal_lm(str(output / name), tokenizer).eval()
        result = against_sft(policy, "policy", sft, sft_answers, {"rm_score": reward}, tokenizer, held_out, size,
                             seed)
        row = result["policies"]["policy"]
        points.append({"beta": beta, "kl": row["kl"], "rm_score": row["rm_score"], "gold_score": row["gold_score"],
                       "win_rate": result["win_rate"]["rate"]})
        console.print(f"β = {beta:g}: KL {row['kl']:.2f} nats, RM score {row['rm_score']:.2f}, "
                      f"gold score {row['gold_score']:.2f}, win rate {result['win_rate']['rate']:.1%}")
    summary["kl_sweep"] = points
    write_report(output / "report", summary)
    console.print(f"study added to the report: [bold]{output / 'report' / 'report.html'}[/]")
    return points
