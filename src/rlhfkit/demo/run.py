"""``rlhfkit demo``: the whole RLHF loop on the embedded assistant world, on a CPU, in minutes.

Stages (each timed, each with a progress bar; every artefact is a plain file in ``--output``):

1. **world**: prompts, a pre-training corpus and demonstrations drawn from :mod:`rlhfkit.demo.world`;
2. **tiny model**: a BPE tokenizer trained on the world's text and a small random GPT-2;
3. **pre-training** on the corpus (every kind of reply: the language of the world);
4. **SFT** on demonstrations by contractors of uneven quality: the starting policy;
5. **sampling**: K = 4 answers per training prompt from the SFT policy, and a red-teaming batch (more
   answers to the harmful prompts, so the labels teach refusing them as well as not over-refusing);
6. **labelling, round 1** (:mod:`rlhfkit.demo.labels`): *simulated* annotators
   (:mod:`rlhfkit.demo.annotators`) rank the answers in a real feedback-app database (SQLite), through
   the app's assignment, welfare, gold and export code; quality control drops the annotator whose gold
   accuracy shows careless work;
7. **reward model, round 1** on the exported rankings, checked against the hidden gold preference;
8. **PPO, round 1** against it (the gold score is logged beside it, never optimised): it finds what
   the reward model pays for that people do not (reward hacking);
9. **labelling, round 2**: the annotators rank round-1 PPO answers beside SFT answers, the reward
   model is trained again on both rounds' labels (iterated RLHF, as InstructGPT and Anthropic did);
10. **PPO, round 2**: round 1's policy trained on against the new reward model (the KL still to SFT):
    the demo's PPO policy;
11. **DPO** on both rounds' labels (each ranking's best answer over its worst), without a reward
    model, with the chosen answers' log-likelihood added to the loss (RPO, as Llama 3's recipe does);
12. **evaluation** on held-out prompts: gold win rates against SFT with 95% intervals, KL to SFT,
    helpfulness, content-free answers, refusal and over-refusal, tone;
13. **the report**: ``report/report.html`` with plots, and ``report/summary.json`` with every number.

Answers are sampled at temperature 0.7 for PPO and evaluation (1.0 for labelling, where variety helps).
"""

from __future__ import annotations

import json
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
from rlhfkit.demo.evaluation import (
    check_reward_model,
    evaluate,
    over_optimisation_curve,
    print_outcome,
    sample_held_out,
)
from rlhfkit.demo.labels import collect_labels
from rlhfkit.demo.world import World
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
    red_team_rounds: int = 8  # extra rounds of answers to the harmful training prompts
    round_2_samples: int = 2  # round-1 PPO answers per training prompt (beside as many SFT answers)
    rm_steps: int = 100
    ppo_round_1_steps: int = 12
    beta: float = 0.2  # PPO's KL penalty (both rounds)
    dpo_beta: float = 0.3
    dpo_nll: float = 0.5  # weight of the chosen answers' NLL added to DPO's loss (RPO)
    ppo_steps: int = 20  # round 2, after round 1's steps
    dpo_steps: int = 200
    dpo_rounds: int = 2  # DPO learns from the labels of rounds 1..dpo_rounds (1 or 2)
    eval_samples: int = 4
    max_new_tokens: int = 48
    temperature: float = 0.7  # PPO rollouts and evaluation


FULL = DemoSize()
QUICK = DemoSize(layers=2, width=64, corpus_per_prompt=1, demos_per_prompt=1, pretrain_steps=4, sft_steps=4,
                 samples_per_prompt=4, sample_rounds=1, red_team_rounds=1, round_2_samples=2, rm_steps=4,
                 ppo_round_1_steps=2, ppo_steps=2, dpo_steps=4, eval_samples=2, max_new_tokens=16)


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
    prompts = [p["prompt"] for p in held_out]

    with clock.stage(5, "sampling", f"{size.sample_rounds} x {size.samples_per_prompt} answers per training prompt "
                                    f"from the SFT policy, {size.red_team_rounds} more per harmful prompt"):
        samples = sample_for_labelling(sft, tokenizer, train_prompts, data, size, seed)
    with clock.stage(6, "labelling", "round 1: simulated annotators rank the answers in the feedback app"):
        round_1 = collect_labels(output / "feedback", samples, world, seed, quick)
    with clock.stage(7, "reward model", "round 1: Bradley-Terry on the annotators' rankings"):
        train_reward_model(output, "rm", [output / "feedback" / "export-round-1"], size, common)
        sft_held_out = sample_held_out(sft, tokenizer, prompts, size, seed)
        rm_1 = load_reward_function(str(output / "rm"), device="cpu")
        checks = {1: check_reward_model(rm_1, output / "rm", prompts, sft_held_out, size.eval_samples, "round-1 RM")}
    with clock.stage(8, "PPO round 1", "against the round-1 reward model; the gold score is only watched"):
        train_ppo(output, "rm", "ppo-round-1", size.ppo_round_1_steps, size.beta, size, common)
    with clock.stage(9, "labelling round 2", "the annotators rank round-1 PPO answers beside SFT answers; "
                                             "the reward model learns from both rounds"):
        ppo_1 = load_causal_lm(str(output / "ppo-round-1"), tokenizer).eval()
        round_2_items = round_2_samples(ppo_1, tokenizer, samples, train_prompts, data, size, seed)
        round_2 = collect_labels(output / "feedback", round_2_items, world, seed + 1, quick, round_number=2,
                                 noise=round_1["noise"])
        train_reward_model(output, "rm-round-2", [output / "feedback" / f"export-round-{n}" for n in (1, 2)],
                           size, common)
        rm_2 = load_reward_function(str(output / "rm-round-2"), device="cpu")
        checks[2] = check_reward_model(rm_2, output / "rm-round-2", prompts, sft_held_out, size.eval_samples,
                                       "round-2 RM")
    with clock.stage(10, "PPO", "round 2: round 1's policy trained on against the round-2 reward model"):
        train_ppo(output, "rm-round-2", "ppo", size.ppo_steps, size.beta, size, common, start="ppo-round-1")
    with clock.stage(11, "DPO", "on both rounds' labels, no reward model"):
        train_dpo(output, size, common)
    with clock.stage(12, "evaluation", "held-out prompts, gold judge, KL to SFT"):
        evaluation = evaluate(output, ("ppo-round-1", "ppo", "dpo"), sft, sft_held_out,
                              {"rm_score": rm_1, "rm_round_2_score": rm_2}, tokenizer, held_out, size, seed)

    summary = demo_summary(checks, round_1, round_2, evaluation, output, size)
    with clock.stage(13, "report", "HTML with plots, and summary.json"):
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
    """Round 1's items ({prompt, responses} records, also written to ``data / "sft-samples.jsonl"``): the
    SFT policy's answers (at temperature 1) to the training prompts, ``size.sample_rounds`` times, and
    to the harmful ones ``size.red_team_rounds`` times more."""
    torch.manual_seed(seed)
    prompts = [p["prompt"] for p in train_prompts] * size.sample_rounds
    prompts += [p["prompt"] for p in train_prompts if p["harmful"]] * size.red_team_rounds
    answers = sample_responses(sft, tokenizer, prompts, num_samples=size.samples_per_prompt,
                               max_new_tokens=size.max_new_tokens, batch_size=64)
    samples = [{"prompt": p, "responses": [without_control_characters(s.text) for s in a]}
               for p, a in zip(prompts, answers, strict=True)]
    write_jsonl(data / "sft-samples.jsonl", samples)
    return samples


def round_2_samples(policy, tokenizer, sft_samples: list[dict], train_prompts: list[dict], data: Path,
                    size: DemoSize, seed: int) -> list[dict]:
    """Round 2's items: per training prompt, ``size.round_2_samples`` answers of the round-1 PPO policy
    (at its training temperature) beside as many of the SFT answers labelled in round 1, shuffled; also
    written to ``data / "round-2-samples.jsonl"``."""
    torch.manual_seed(seed + 1)
    prompts = [p["prompt"] for p in train_prompts]
    answers = sample_responses(policy, tokenizer, prompts, num_samples=size.round_2_samples,
                               max_new_tokens=size.max_new_tokens, temperature=size.temperature, batch_size=64)
    rng = random.Random(seed)
    items = []
    for prompt, new, old in zip(prompts, answers, sft_samples, strict=False):  # the first SFT round: same order
        responses = [without_control_characters(s.text) for s in new] + old["responses"][: size.round_2_samples]
        rng.shuffle(responses)
        items.append({"prompt": prompt, "responses": responses})
    write_jsonl(data / "round-2-samples.jsonl", items)
    return items


def train_reward_model(output: Path, name: str, exports: list[Path], size: DemoSize, common: dict) -> None:
    """A reward model on the rankings exported in ``exports`` (concatenated) into ``output / name``,
    normalised on the SFT samples."""
    rankings = output / "data" / f"{name}-rankings.jsonl"
    rankings.write_text("".join((folder / "rankings.jsonl").read_text(encoding="utf-8") for folder in exports),
                        encoding="utf-8")
    run_rm(RMConfig(model=str(output / "sft"), data=str(rankings), output=str(output / name), learning_rate=2e-3,
                    max_steps=size.rm_steps, batch_size=16, warmup_ratio=0.05, eval_split=0.1,
                    normalize_with=str(output / "data" / "sft-samples.jsonl"), **common))


def train_ppo(output: Path, reward: str, name: str, steps: int, beta: float, size: DemoSize, common: dict,
              start: str = "sft") -> None:
    """PPO of the policy ``output / start`` against the reward model ``output / reward`` into
    ``output / name`` with KL penalty ``beta`` to SFT; gold is only tracked."""
    run_ppo(PPOConfig(policy=str(output / start), reference=str(output / "sft"), reward=str(output / reward),
                      prompts=str(output / "data" / "prompts.jsonl"), output=str(output / name), estimator="gae",
                      learning_rate=3e-4, max_steps=steps, prompts_per_step=64, samples_per_prompt=1, ppo_epochs=2,
                      batch_size=64, max_new_tokens=size.max_new_tokens, temperature=size.temperature, beta=beta,
                      kl_estimator="k1", eval_split=0.0, sample_every=10, track_reward=GOLD_SPEC,
                      **{**common, "log_every": 1}))


def best_versus_worst_pairs(rankings: list[Path], pairs: Path) -> int:
    """One preference pair per ranking exported in the ``rankings`` files, its best answer (rank 1)
    over its worst, written to ``pairs``; returns how many. Of the six pairs of a ranking of four it is
    the one whose order the annotators' noise is least likely to have flipped, and its chosen answer is
    the one worth imitating (the NLL term of :func:`train_dpo`)."""
    records = []
    for path in rankings:
        for line in path.read_text(encoding="utf-8").splitlines():
            ranking = json.loads(line)
            ranks = ranking["ranks"]
            if min(ranks) == max(ranks):
                continue
            records.append({"prompt": ranking["prompt"], "chosen": ranking["responses"][ranks.index(min(ranks))],
                            "rejected": ranking["responses"][ranks.index(max(ranks))]})
    write_jsonl(pairs, records)
    return len(records)


def train_dpo(output: Path, size: DemoSize, common: dict) -> None:
    """DPO of the SFT policy on the exported rankings of rounds 1 to ``size.dpo_rounds`` (the best over
    the worst answer of each) into ``output / "dpo"``, with the chosen answers' negative log-likelihood
    added (RPO, weight ``size.dpo_nll``): plain DPO only pushes a pair apart, and on this world the mass
    it takes from the rejected answers goes to garbled text and to answers of other requests. Round 2's
    rankings put round-1 PPO answers beside SFT ones, so DPO also learns from answers off the SFT
    policy's beaten track."""
    pairs = output / "data" / "dpo-pairs.jsonl"
    exports = [output / "feedback" / f"export-round-{n}" / "rankings.jsonl" for n in range(1, size.dpo_rounds + 1)]
    count = best_versus_worst_pairs(exports, pairs)
    console.print(f"{count} pairs (the best and the worst answer of each ranking) in {pairs}")
    run_dpo(DPOConfig(model=str(output / "sft"), data=str(pairs), output=str(output / "dpo"), learning_rate=3e-4,
                      loss="rpo", rpo_alpha=size.dpo_nll, beta=size.dpo_beta, max_steps=size.dpo_steps,
                      batch_size=16, warmup_ratio=0.05, eval_split=0.05, eval_kl_prompts=0, **common))


def rounds_record(checks: dict, policies: dict) -> list[dict]:
    """The report's rounds table: each round's PPO policy and reward model."""
    names = {1: "ppo-round-1", 2: "ppo"}
    return [{"round": n, "policies": {"ppo": {k: policies[names[n]].get(k) for k in ("win_rate", "kl")}},
             "reward_model": checks[n]} for n in (1, 2)]


def demo_summary(checks: dict, round_1: dict, round_2: dict, evaluation: dict, output: Path, size: DemoSize) -> dict:
    """The summary the report draws (stage times are added as the report is written)."""
    return {
        "title": "rlhfkit demo: RLHF on a small assistant world",
        "created": datetime.now().isoformat(timespec="seconds"),
        "reward_model": checks[2],
        "annotators": {**round_1, "round_2": {k: round_2[k] for k in ("agreement", "excluded", "exported")}},
        **evaluation,
        "rounds": rounds_record(checks, evaluation["policies"]),
        "over_optimisation": (over_optimisation_curve(output / "ppo-round-1", "round 1")
                              + over_optimisation_curve(output / "ppo", "round 2", size.ppo_round_1_steps)),
        "notes": [
            "Everything ran on CPU from a seed: the world, the tiny model, the simulated annotators.",
            "Win rates are judged by the world's hidden gold preference, which no training stage sees; "
            "ties count half; intervals are 95% Wilson score intervals.",
            "KL is per answer in nats, to the SFT policy, on the policy's own samples; answers are sampled at "
            "temperature 0.7.",
            "Content-free: an answer with no request-specific body (neither the request's answer nor a "
            "refusal), such as 'Happy to help!' alone or another request's answer.",
            "ppo-round-1 is PPO against the round-1 reward model; ppo is round 2, against the reward model "
            "retrained with labels on ppo-round-1's answers; dpo learns from the "
            f"labels of {'both rounds' if size.dpo_rounds == 2 else 'round 1'} (the best over the worst answer "
            "of each ranking), its loss DPO's plus the chosen answers' negative log-likelihood "
            f"(RPO, weight {size.dpo_nll:g}).",
            round_1["note"],
        ],
    }
