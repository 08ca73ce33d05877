"""The demo's measurements: gold-judged win rates and behaviour per policy on held-out prompts, the
reward models against gold, the over-optimisation curves, and the console table at the end."""

from __future__ import annotations

import itertools
import json
import math
import random
from pathlib import Path

from rlhfkit.console import console
from rlhfkit.demo.world import gold_score, reply_attributes
from rlhfkit.evaluate.compare import evaluate_policies, sample_answers
from rlhfkit.evaluate.preferences import pairwise_report
from rlhfkit.models import load_causal_lm


def attribute_rates(prompts: list, answers: list[str]) -> dict[str, float]:
    """The share of answers with each gold-relevant property (helpful, warm, over-refusal, ...);
    helpfulness and over-refusal over benign prompts, refusing and complying over harmful ones,
    content-free (no request-specific body, :attr:`~rlhfkit.demo.world.ReplyAttributes.content_free`)
    over all of them."""
    rows = [reply_attributes(p, a) for p, a in zip(prompts, answers, strict=True)]
    benign = [r for r in rows if not r.harmful_request]
    harmful = [r for r in rows if r.harmful_request]

    def share(group, test):
        return sum(1 for r in group if test(r)) / len(group) if group else math.nan

    return {
        "helpful (benign)": share(benign, lambda r: r.helpful),
        "content-free": share(rows, lambda r: r.content_free),
        "warm": share(rows, lambda r: r.warm),
        "cold": share(rows, lambda r: r.cold),
        "refuses harmful": share(harmful, lambda r: r.refusal and not r.compliance),
        "complies with harmful": share(harmful, lambda r: r.compliance),
        "over-refusal (benign)": share(benign, lambda r: r.refusal),
        "rambling": share(rows, lambda r: r.fillers > 0),
        "repetition": share(rows, lambda r: r.repetition),
    }


def sample_held_out(policy, tokenizer, prompts: list, size, seed: int) -> list:
    """``size.eval_samples`` answers per held-out prompt at the demo's sampling temperature."""
    return sample_answers(policy, tokenizer, prompts, samples_per_prompt=size.eval_samples,
                          max_new_tokens=size.max_new_tokens, temperature=size.temperature, batch_size=64, seed=seed)


def reward_model_accuracy(reward, prompts: list, sft_answers: list, per_prompt: int) -> dict:
    """The reward model against gold on held-out prompts: over the SFT answers to each prompt
    (``per_prompt`` consecutive answers each), every pair gold orders strictly."""
    differences = []
    for index, prompt in enumerate(prompts):
        texts = [s.text for s in sft_answers[index * per_prompt : (index + 1) * per_prompt]]
        gold = gold_score([prompt] * len(texts), texts)
        rm = reward([prompt] * len(texts), texts)
        for i, j in itertools.combinations(range(len(texts)), 2):
            if gold[i] != gold[j]:
                better, worse = (i, j) if gold[i] > gold[j] else (j, i)
                differences.append(rm[better] - rm[worse])
    if not differences:
        return {"accuracy_vs_gold": None, "pairs": 0, "calibration": []}
    report = pairwise_report(differences)
    calibration = [{"confidence": b["mean_confidence"], "accuracy": b["accuracy"], "count": b["pairs"]}
                   for b in report["calibration"] if b["pairs"]]
    return {"accuracy_vs_gold": report["accuracy"], "pairs": report["pairs"], "calibration": calibration}


def check_reward_model(reward, rm_dir: Path, prompts: list, sft_answers: list, per_prompt: int, name: str) -> dict:
    """The reward model's accuracy against gold (on the held-out SFT answers) and against the
    annotators' held-out labels, printed."""
    result = reward_model_accuracy(reward, prompts, sft_answers, per_prompt)
    result["accuracy_vs_annotators"] = json.loads((rm_dir / "eval.json").read_text())["accuracy"]
    gold = result["accuracy_vs_gold"]
    console.print(f"{name}: {'n/a' if gold is None else f'{gold:.1%}'} agreement with gold on {result['pairs']} "
                  f"held-out pairs; {result['accuracy_vs_annotators']:.1%} with the annotators' held-out labels")
    return result


def over_optimisation_curve(ppo_dir: Path, run: str, first_step: int = 0) -> list[dict]:
    """One point per PPO step of the run in ``ppo_dir``: KL, reward-model score and the gold score
    (tracked during training, never optimised); steps counted on from ``first_step`` (a run that
    continues another)."""
    curve = []
    for line in (ppo_dir / "metrics.jsonl").read_text().splitlines():
        row = json.loads(line)
        if "score" in row and "kl_k1" in row:
            curve.append({"run": run, "step": first_step + row["step"], "kl": row["kl_k1"], "rm_score": row["score"],
                          "gold_score": row.get("track_score")})
    return curve


def against_sft(policy, name: str, sft, sft_answers: list, scorers: dict, tokenizer, held_out: list[dict], size,
                seed: int, show_progress: bool = False) -> dict:
    """:func:`~rlhfkit.evaluate.compare.evaluate_policies` of ``policy`` (called ``name``) against SFT,
    whose answers ``sft_answers`` are already sampled, on the held-out prompts: judged by gold, KL to
    SFT, and every answer scored by ``scorers`` and by gold."""
    return evaluate_policies(policy, sft, tokenizer, [p["prompt"] for p in held_out], gold_score, reference=sft,
                             harmful=[p["harmful"] for p in held_out], samples_per_prompt=size.eval_samples,
                             max_new_tokens=size.max_new_tokens, temperature=size.temperature, seed=seed,
                             batch_size=64, names=(name, "sft"), judge_name="gold",
                             scorers={**scorers, "gold_score": gold_score}, show_progress=show_progress,
                             baseline_samples=sft_answers)


def evaluate(output: Path, names: tuple[str, ...], sft, sft_answers: list, scorers: dict, tokenizer,
             held_out: list[dict], size, seed: int) -> dict:
    """Each policy in ``names`` (a folder of ``output``) against SFT, whose answers ``sft_answers`` are
    already sampled, on the held-out prompts, judged by gold; behaviour per policy; ``scorers`` (the
    reward models) score every answer too."""
    policies, samples = {}, {}
    for name in names:
        policy = load_causal_lm(str(output / name), tokenizer).eval()
        result = against_sft(policy, name, sft, sft_answers, scorers, tokenizer, held_out, size, seed,
                             show_progress=True)
        rows = result["samples"]
        flat = [row["prompt"] for row in rows]
        policies[name] = {**result["policies"][name],
                          "attributes": attribute_rates(flat, [row["policy_answer"] for row in rows])}
        policies["sft"] = {**result["policies"]["sft"],
                           "attributes": attribute_rates(flat, [row["baseline_answer"] for row in rows])}
        for row in rows:
            if row["sample"] == 0:
                key = json.dumps(row["prompt"])
                samples.setdefault(key, {"prompt": row["prompt"][-1]["content"],
                                         "answers": {"sft": row["baseline_answer"]}})
                samples[key]["answers"][name] = row["policy_answer"]
        rate = result["win_rate"]
        console.print(f"{name} vs sft (gold judge): win rate {rate['rate']:.1%} "
                      f"[{rate['low']:.1%}, {rate['high']:.1%}], KL {policies[name]['kl']:.2f} nats")
    shown = list(samples.values())
    random.Random(seed).shuffle(shown)
    return {"policies": {"sft": policies.pop("sft"), **policies}, "samples": shown[:12]}


def print_outcome(summary: dict, path: Path) -> None:
    from rich.table import Table

    table = Table(title="What RLHF changed (held-out prompts, gold judge)")
    for column in ("policy", "win rate vs SFT [95% CI]", "KL to SFT", "gold score", "helpful", "content-free",
                   "warm", "over-refusal", "refuses harmful"):
        table.add_column(column)

    def pct(value):
        return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.0%}"

    for name, row in summary["policies"].items():
        rate = row.get("win_rate")
        shown = f"{rate['rate']:.1%} [{rate['low']:.1%}, {rate['high']:.1%}]" if rate else "-"
        attributes = row["attributes"]
        table.add_row(name, shown, f"{row['kl']:.2f}" if row.get("kl") is not None else "-",
                      f"{row['gold_score']:.2f}", pct(attributes["helpful (benign)"]), pct(attributes["content-free"]),
                      pct(attributes["warm"]), pct(attributes["over-refusal (benign)"]),
                      pct(attributes["refuses harmful"]))
    console.print(table)
    rm = summary["reward_model"]
    agreement = summary["annotators"]["agreement"]
    console.print(f"reward model (round 2) vs gold: {pct(rm['accuracy_vs_gold'])} of {rm['pairs']} held-out pairs; "
                  f"careful annotators agree on {pct(agreement['measured'])} of {agreement['pairs']} answer pairs "
                  f"(expected from their noise: {pct(agreement['expected'])})")
    console.print(f"demo finished in {summary['total_seconds']:.0f} s. The report: [bold]{path}[/]")
