"""``rlhfkit demo``: the whole RLHF loop on the embedded assistant world, on a CPU, in minutes.

Stages (each timed, each with a progress bar; every artefact is a plain file in ``--output``):

1. **world**: prompts, a pre-training corpus and demonstrations drawn from :mod:`rlhfkit.demo.world`;
2. **tiny model**: a BPE tokenizer trained on the world's text and a small random GPT-2;
3. **pre-training** on the corpus (every kind of reply: the language of the world);
4. **SFT** on demonstrations by contractors of uneven quality: the starting policy;
5. **sampling**: K = 4 answers per training prompt from the SFT policy;
6. **labelling** (:mod:`rlhfkit.demo.labels`): *simulated* annotators (:mod:`rlhfkit.demo.annotators`)
   rank the answers in a real feedback-app database (SQLite), through the app's assignment, welfare,
   gold and export code; quality control drops the annotator whose gold accuracy shows careless work;
7. **reward model** on the exported rankings, checked against the hidden gold preference;
8. **PPO** against the reward model (the gold score is logged beside it, never optimised);
9. **DPO** on the same labels, without a reward model;
10. **evaluation** on held-out prompts: gold win rates against SFT with 95% intervals, KL to SFT,
    refusal and over-refusal, tone and helpfulness;
11. **the report**: ``report/report.html`` with plots, and ``report/summary.json`` with every number.
"""

from __future__ import annotations

import itertools
import json
import math
import random
import time
import unicodedata
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import torch

from rlhfkit.config import DPOConfig, PPOConfig, RMConfig, SFTConfig
from rlhfkit.console import console, setup_logging
from rlhfkit.data import write_jsonl
from rlhfkit.demo.labels import collect_labels
from rlhfkit.demo.world import World, gold_score, reply_attributes
from rlhfkit.evaluate.compare import evaluate_policies, sample_answers
from rlhfkit.evaluate.preferences import pairwise_report
from rlhfkit.evaluate.report import write_report
from rlhfkit.models import load_causal_lm, load_tokenizer
from rlhfkit.models.tiny import write_tiny_model
from rlhfkit.rewards import load_reward_function
from rlhfkit.rollout.generate import sample_responses
from rlhfkit.train.dpo import run_dpo
from rlhfkit.train.ppo import run_ppo
from rlhfkit.train.rm import run_rm
from rlhfkit.train.sft import run_sft

GOLD_SPEC = "rlhfkit.demo.world:gold_score"


@dataclass(frozen=True)
class DemoSize:
    """How big each stage is. ``FULL`` is the demo; ``QUICK`` checks the plumbing in tests."""

    layers: int = 4
    width: int = 128
    corpus_per_prompt: int = 6
    demos_per_prompt: int = 2
    pretrain_steps: int = 250
    sft_steps: int = 80
    samples_per_prompt: int = 4
    sample_rounds: int = 2
    rm_steps: int = 100
    ppo_steps: int = 25
    dpo_steps: int = 100
    eval_samples: int = 4
    max_new_tokens: int = 48


FULL = DemoSize()
QUICK = DemoSize(layers=2, width=64, corpus_per_prompt=1, demos_per_prompt=1, pretrain_steps=4, sft_steps=4,
                 samples_per_prompt=4, sample_rounds=1, rm_steps=4, ppo_steps=2, dpo_steps=4, eval_samples=2, max_new_tokens=16)

class StageClock:
    """Wall time per stage, printed as each stage ends."""

    def __init__(self):
        self.seconds: dict[str, float] = {}

    @contextmanager
    def stage(self, number: int, name: str, what: str):
        console.rule(f"[bold]{number}. {name}[/]: {what}")
        started = time.perf_counter()
        yield
        self.seconds[name] = round(time.perf_counter() - started, 2)
        console.print(f"[dim]{name}: {self.seconds[name]:.1f} s[/]")


# ---------------------------------------------------------------------------------------------------- evaluation


def attribute_rates(prompts: list, answers: list[str]) -> dict[str, float]:
    """The share of answers with each gold-relevant property (helpful, warm, over-refusal, ...);
    helpfulness and over-refusal over benign prompts, refusing and complying over harmful ones."""
    rows = [reply_attributes(p, a) for p, a in zip(prompts, answers, strict=True)]
    benign = [r for r in rows if not r.harmful_request]
    harmful = [r for r in rows if r.harmful_request]

    def share(group, test):
        return sum(1 for r in group if test(r)) / len(group) if group else math.nan

    return {
        "helpful (benign)": share(benign, lambda r: r.helpful),
        "warm": share(rows, lambda r: r.warm),
        "cold": share(rows, lambda r: r.cold),
        "refuses harmful": share(harmful, lambda r: r.refusal and not r.compliance),
        "complies with harmful": share(harmful, lambda r: r.compliance),
        "over-refusal (benign)": share(benign, lambda r: r.refusal),
        "rambling": share(rows, lambda r: r.fillers > 0),
        "repetition": share(rows, lambda r: r.repetition),
    }


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


def over_optimisation_curve(ppo_dir: Path) -> list[dict]:
    curve = []
    for line in (ppo_dir / "metrics.jsonl").read_text().splitlines():
        row = json.loads(line)
        if "score" in row and "kl_k1" in row:
            curve.append({"step": row["step"], "kl": row["kl_k1"], "rm_score": row["score"],
                          "gold_score": row.get("track_score")})
    return curve


# ---------------------------------------------------------------------------------------------------- the demo


def run_demo(output: str | Path = "demo-output", quick: bool = False, seed: int = 0) -> dict:
    """Run the demo into ``output``; returns the summary (also in ``output/report/summary.json``)."""
    setup_logging()
    size = QUICK if quick else FULL
    output = Path(output)
    data = output / "data"
    data.mkdir(parents=True, exist_ok=True)
    clock = StageClock()
    started = time.perf_counter()
    torch.manual_seed(seed)
    console.rule("[bold]rlhfkit demo: RLHF end to end on a small assistant world (CPU)")

    with clock.stage(1, "world", "requests, replies and a hidden gold preference"):
        world, train_prompts, held_out = write_world(data, size, seed)
    with clock.stage(2, "tiny model", "a BPE tokenizer on the world's text and a random GPT-2"):
        base = write_tiny_model(data / "tokenizer-corpus.txt", output / "tiny-model", layers=size.layers,
                                width=size.width, vocab_size=1024, max_positions=128, seed=seed)
    common = training_defaults(seed)
    with clock.stage(3, "pre-training", "language modelling on dialogues with every kind of reply"):
        pretrain(base, output, size, common)
    with clock.stage(4, "SFT", "demonstrations by contractors of uneven quality"):
        fine_tune_on_demonstrations(output, size, common)
    tokenizer = load_tokenizer(str(output / "sft"))
    sft = load_causal_lm(str(output / "sft"), tokenizer).eval()

    with clock.stage(5, "sampling", f"{size.sample_rounds} x {size.samples_per_prompt} answers per training prompt "
                                    "from the SFT policy"):
        samples = sample_for_labelling(sft, tokenizer, train_prompts, data, size, seed)
    with clock.stage(6, "labelling", "simulated annotators rank the answers in the feedback app's database"):
        annotators = collect_labels(output / "feedback", samples, world, seed, quick)
    with clock.stage(7, "reward model", "Bradley-Terry on the annotators' rankings"):
        train_reward_model(output, size, common)
        sft_held_out = sample_held_out_answers(sft, tokenizer, held_out, size, seed)
        reward = load_reward_function(str(output / "rm"), device="cpu")
        reward_model = check_reward_model(reward, output, held_out, sft_held_out, size)
    with clock.stage(8, "PPO", "against the reward model, KL to SFT; the gold score is only watched"):
        train_ppo(output, size, common)
    with clock.stage(9, "DPO", "on the same labels, no reward model"):
        train_dpo(output, size, common)
    with clock.stage(10, "evaluation", "held-out prompts, gold judge, KL to SFT"):
        evaluation = evaluate(output, sft, sft_held_out, reward, tokenizer, held_out, size, seed)

    summary = demo_summary(reward_model, annotators, evaluation, output)
    with clock.stage(11, "report", "HTML with plots, and summary.json"):
        summary["stage_seconds"] = {**clock.seconds, "report": 0.0}
        summary["total_seconds"] = round(time.perf_counter() - started, 2)
        path = write_report(output / "report", summary)
    summary["stage_seconds"]["report"] = clock.seconds["report"]
    (output / "report" / "summary.json").write_text(json.dumps(summary, indent=2, default=str), encoding="utf-8")
    print_outcome(summary, path)
    return summary


def write_world(data: Path, size: DemoSize, seed: int) -> tuple[World, list[dict], list[dict]]:
    """The world, with its tokenizer corpus, pre-training corpus, demonstrations and prompts written into
    ``data``; returns the world, the training prompts and the held-out prompts."""
    world = World(seed=seed)
    (data / "tokenizer-corpus.txt").write_text("\n".join(world.tokenizer_texts()) + "\n", encoding="utf-8")
    write_jsonl(data / "pretrain.jsonl", world.corpus(size.corpus_per_prompt))
    write_jsonl(data / "demonstrations.jsonl", world.demonstrations(size.demos_per_prompt))
    train_prompts, held_out = world.prompts("train"), world.prompts("held_out")
    write_jsonl(data / "prompts.jsonl", train_prompts)
    write_jsonl(data / "held-out-prompts.jsonl", held_out)
    console.print(f"{len(train_prompts)} training prompts, {len(held_out)} held-out prompts "
                  f"({sum(p['harmful'] for p in held_out)} harmful), in {data}")
    return world, train_prompts, held_out


def training_defaults(seed: int) -> dict:
    """Options every training stage shares: CPU, no checkpoints, the seed, the sequence length, logging."""
    return dict(device="cpu", save_every=0, seed=seed, max_length=96, log_every=25)


def pretrain(base: Path, output: Path, size: DemoSize, common: dict) -> None:
    """Language modelling of the random model on the world's corpus into ``output / "pretrained"``."""
    run_sft(SFTConfig(model=str(base), data=str(output / "data" / "pretrain.jsonl"),
                      output=str(output / "pretrained"), learning_rate=5e-3, max_steps=size.pretrain_steps,
                      batch_size=32, warmup_ratio=0.05, eval_split=0.0, **common))


def fine_tune_on_demonstrations(output: Path, size: DemoSize, common: dict) -> None:
    """SFT of the pre-trained model on the demonstrations into ``output / "sft"``."""
    run_sft(SFTConfig(model=str(output / "pretrained"), data=str(output / "data" / "demonstrations.jsonl"),
                      output=str(output / "sft"), learning_rate=1e-3, max_steps=size.sft_steps, batch_size=32,
                      warmup_ratio=0.05, eval_split=0.0, **common))


def without_control_characters(text: str) -> str:
    """``text`` with control characters other than newline and tab shown as U+FFFD: a barely trained model
    draws their byte-level tokens now and then, the world's text has none, and the feedback app refuses
    text that carries them (PostgreSQL cannot store NUL)."""
    return "".join("\ufffd" if unicodedata.category(c) == "Cc" and c not in "\n\t" else c for c in text)


def sample_for_labelling(sft, tokenizer, train_prompts: list[dict], data: Path, size: DemoSize,
                         seed: int) -> list[dict]:
    """The SFT policy's answers to the training prompts ({prompt, responses} records), also written
    to ``data / "sft-samples.jsonl"``."""
    torch.manual_seed(seed)
    prompts = [p["prompt"] for p in train_prompts] * size.sample_rounds
    answers = sample_responses(sft, tokenizer, prompts, num_samples=size.samples_per_prompt,
                               max_new_tokens=size.max_new_tokens, batch_size=64)
    samples = [{"prompt": p, "responses": [without_control_characters(s.text) for s in a]}
               for p, a in zip(prompts, answers, strict=True)]
    write_jsonl(data / "sft-samples.jsonl", samples)
    return samples


def train_reward_model(output: Path, size: DemoSize, common: dict) -> None:
    """A reward model on the exported rankings into ``output / "rm"``, normalised on the SFT samples."""
    run_rm(RMConfig(model=str(output / "sft"), data=str(output / "feedback" / "export" / "rankings.jsonl"),
                    output=str(output / "rm"), learning_rate=5e-4, max_steps=size.rm_steps, batch_size=16,
                    warmup_ratio=0.05, eval_split=0.1, normalize_with=str(output / "data" / "sft-samples.jsonl"),
                    **common))


def sample_held_out_answers(sft, tokenizer, held_out: list[dict], size: DemoSize, seed: int) -> list:
    """The SFT answers to the held-out prompts: for the RM's accuracy against gold, and as the
    baseline's answers in the evaluation (sampled once)."""
    return sample_answers(sft, tokenizer, [p["prompt"] for p in held_out], samples_per_prompt=size.eval_samples,
                          max_new_tokens=size.max_new_tokens, batch_size=64, seed=seed)


def check_reward_model(reward, output: Path, held_out: list[dict], sft_held_out: list, size: DemoSize) -> dict:
    """The reward model's accuracy against gold (on the held-out SFT answers) and against the
    annotators' held-out labels, printed."""
    reward_model = reward_model_accuracy(reward, [p["prompt"] for p in held_out], sft_held_out, size.eval_samples)
    rm_eval = json.loads((output / "rm" / "eval.json").read_text())
    reward_model["accuracy_vs_annotators"] = rm_eval["accuracy"]
    gold = reward_model["accuracy_vs_gold"]
    console.print(f"reward model: {'n/a' if gold is None else f'{gold:.1%}'} agreement with gold on "
                  f"{reward_model['pairs']} held-out pairs; {rm_eval['accuracy']:.1%} with the annotators' "
                  "held-out labels")
    return reward_model


def train_ppo(output: Path, size: DemoSize, common: dict) -> None:
    """PPO of the SFT policy against the reward model into ``output / "ppo"``; gold is only tracked."""
    run_ppo(PPOConfig(policy=str(output / "sft"), reward=str(output / "rm"),
                      prompts=str(output / "data" / "prompts.jsonl"), output=str(output / "ppo"), estimator="gae",
                      learning_rate=3e-4, max_steps=size.ppo_steps, prompts_per_step=64, samples_per_prompt=1,
                      ppo_epochs=2, batch_size=64, max_new_tokens=size.max_new_tokens, beta=0.3, kl_estimator="k1",
                      eval_split=0.0, sample_every=10, track_reward=GOLD_SPEC, **{**common, "log_every": 1}))


def train_dpo(output: Path, size: DemoSize, common: dict) -> None:
    """DPO of the SFT policy on the exported preferences into ``output / "dpo"``."""
    run_dpo(DPOConfig(model=str(output / "sft"), data=str(output / "feedback" / "export" / "preferences.jsonl"),
                      output=str(output / "dpo"), learning_rate=3e-4, beta=0.3, max_steps=size.dpo_steps,
                      batch_size=16, warmup_ratio=0.05, eval_split=0.05, eval_kl_prompts=0, **common))


def demo_summary(reward_model: dict, annotators: dict, evaluation: dict, output: Path) -> dict:
    """The summary the report draws (stage times are added as the report is written)."""
    return {
        "title": "rlhfkit demo: RLHF on a small assistant world",
        "created": datetime.now().isoformat(timespec="seconds"),
        "reward_model": reward_model,
        "annotators": annotators,
        **evaluation,
        "over_optimisation": over_optimisation_curve(output / "ppo"),
        "notes": [
            "Everything ran on CPU from a seed: the world, the tiny model, the simulated annotators.",
            "Win rates are judged by the world's hidden gold preference, which no training stage sees; "
            "ties count half; intervals are 95% Wilson score intervals.",
            "KL is per answer in nats, to the SFT policy, on the policy's own samples.",
            annotators["note"],
        ],
    }


def evaluate(output: Path, sft, sft_answers: list, rm, tokenizer, held_out: list[dict], size: DemoSize,
             seed: int) -> dict:
    """PPO and DPO against SFT (whose answers ``sft_answers`` are already sampled) on the held-out
    prompts, judged by gold; attributes per policy."""
    prompts = [p["prompt"] for p in held_out]
    harmful = [p["harmful"] for p in held_out]
    policies, samples = {}, {}
    for name in ("ppo", "dpo"):
        policy = load_causal_lm(str(output / name), tokenizer).eval()
        result = evaluate_policies(policy, sft, tokenizer, prompts, gold_score, reference=sft, harmful=harmful,
                                   samples_per_prompt=size.eval_samples, max_new_tokens=size.max_new_tokens,
                                   seed=seed, batch_size=64, names=(name, "sft"), judge_name="gold",
                                   scorers={"rm_score": rm, "gold_score": gold_score}, show_progress=True,
                                   baseline_samples=sft_answers)
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
    for column in ("policy", "win rate vs SFT [95% CI]", "KL to SFT", "gold score", "helpful", "warm",
                   "over-refusal", "refuses harmful"):
        table.add_column(column)

    def pct(value):
        return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.0%}"

    for name, row in summary["policies"].items():
        rate = row.get("win_rate")
        shown = f"{rate['rate']:.1%} [{rate['low']:.1%}, {rate['high']:.1%}]" if rate else "-"
        attributes = row["attributes"]
        table.add_row(name, shown, f"{row['kl']:.2f}" if row.get("kl") is not None else "-",
                      f"{row['gold_score']:.2f}", pct(attributes["helpful (benign)"]), pct(attributes["warm"]),
                      pct(attributes["over-refusal (benign)"]), pct(attributes["refuses harmful"]))
    console.print(table)
    rm = summary["reward_model"]
    console.print(f"reward model vs gold: {pct(rm['accuracy_vs_gold'])} of {rm['pairs']} held-out pairs; "
                  f"annotator agreement (careful pairs): {pct(summary['annotators']['pairwise_agreement'])}")
    console.print(f"demo finished in {summary['total_seconds']:.0f} s. The report: [bold]{path}[/]")
