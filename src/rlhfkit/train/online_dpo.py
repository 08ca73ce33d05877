"""Online (iterative) DPO: sample from the current policy, pair its best answer with its worst, train.

Rounds are numbered from 1, as ``rlhfkit loop`` numbers its rounds: round r writes ``OUTPUT/round-00r/``.
With ``--engine vllm`` one vLLM engine samples every round: it starts on the initial model and gets
each round's policy before that round samples (every ``--sync-every`` rounds), checked by the probe.

Under torchrun with ``--fsdp`` each round trains sharded (the offline DPO of ``dpo_offline.py``), and
every process samples and scores every prompt, with the same seeds, from the round's policy loaded
whole for inference (2 bytes a parameter in bf16, beside the shards of training): all get the same
pairs, which process 0 writes, so a sharded run samples and trains what one process would.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
from pathlib import Path

import torch
import torch.distributed as dist
from transformers import set_seed

from rlhfkit.config import DPOConfig
from rlhfkit.console import console
from rlhfkit.data import load_prompts
from rlhfkit.data.chat import encode_prompt
from rlhfkit.models import (
    load_causal_lm,
    load_tokenizer,
    resolve_device,
    resolve_dtype,
)
from rlhfkit.rewards import load_reward_function
from rlhfkit.rollout.engines import policy_engine
from rlhfkit.rollout.sampler import HFSampler, SamplingSettings
from rlhfkit.train.dpo_offline import train_dpo_offline

log = logging.getLogger("rlhfkit.dpo")


def round_dir(output: str | Path, number: int) -> Path:
    """Round ``number``'s folder (rounds count from 1)."""
    return Path(output) / f"round-{number:03d}"


def round_is_finished(folder: Path) -> bool:
    return (folder / "round.json").exists()


def best_and_worst_pairs(prompts: list, answers: list[list[str]], scores: list[list[float]]) -> tuple[list, int]:
    """One pair per prompt, its best-scored answer over its worst; prompts whose scores all tie are
    skipped (they say nothing about which answer is better). Returns (pairs, skipped count)."""
    pairs, skipped = [], 0
    for prompt, texts, values in zip(prompts, answers, scores, strict=True):
        best = max(range(len(values)), key=values.__getitem__)
        worst = min(range(len(values)), key=values.__getitem__)
        if values[best] == values[worst]:
            skipped += 1
            continue
        pairs.append({"prompt": prompt, "chosen": texts[best], "rejected": texts[worst],
                      "chosen_score": values[best], "rejected_score": values[worst]})
    return pairs, skipped


class RoundSampler:
    """Samples each round's answers: with the HF engine on the round's policy, or with one vLLM engine for
    the whole run that takes each round's policy weights first (``rlhfkit.rollout.engines``)."""

    def __init__(self, config: DPOConfig):
        self.config, self.engine, self.sync = config, None, None

    def sample(self, model_path: str, prompts: list, count: int, number: int, seed: int):
        """``count`` answers per prompt from the model at ``model_path`` (round ``number``), and the sync's
        metrics."""
        config = self.config
        device = resolve_device(config.device)
        dtype = resolve_dtype(config.dtype, device)
        tokenizer = load_tokenizer(model_path)
        policy = load_causal_lm(model_path, tokenizer, dtype=dtype, device=device)
        ids = [encode_prompt(tokenizer, p) for p in prompts]
        metrics = {}
        if self.engine is None:
            self.engine, self.sync = policy_engine(config, policy, tokenizer, config.model, dtype, device, config.seed,
                                                   ids, Path(config.output) / "engine-start", config.max_length)
        if self.sync is None:  # the HF engine samples with the round's policy itself
            self.engine = HFSampler(policy, tokenizer)
        elif (number - 1) % config.sync_every == 0:
            metrics = self.sync.push(policy, number)
        settings = SamplingSettings(config.max_new_tokens, config.temperature, config.top_p,
                                    config.generation_batch_size, seed)
        samples = self.engine.sample(prompts, ids, count, settings)
        self.engine.sleep()
        del policy
        return samples, metrics

    def close(self) -> None:
        if self.sync is not None:
            self.engine.close()
            shutil.rmtree(Path(self.config.output) / "engine-start", ignore_errors=True)


def sample_and_score(sampler: RoundSampler, model_path: str, prompts: list, reward, config: DPOConfig, count: int,
                     number: int):
    """``count`` answers per prompt from the model at ``model_path``, their scores, the unfinished count and
    the engine's sync metrics."""
    set_seed(config.seed + number - 1)
    samples, metrics = sampler.sample(model_path, prompts, count, number, config.seed * 1_009 + number)
    answers = [[s.text for s in per_prompt] for per_prompt in samples]
    flat = reward([p for p, texts in zip(prompts, answers, strict=True) for _ in texts],
                  [t for texts in answers for t in texts])
    scores = [flat[i * count : (i + 1) * count] for i in range(len(prompts))]
    unfinished = sum(not s.finished for per_prompt in samples for s in per_prompt)
    return answers, scores, unfinished, metrics


def run_online_dpo(config: DPOConfig) -> Path:
    """Online DPO: ``rounds`` times, sample K answers per prompt from the current policy, score them with
    ``--reward``, pair each prompt's best answer with its worst, and train on those pairs.

    Round r (from 1) writes ``OUTPUT/round-00r/``: ``pairs.jsonl``, the loop's ``metrics.jsonl`` and
    checkpoints, the round's model and ``round.json`` (written last: the round is finished).
    ``OUTPUT/rounds.jsonl`` has each round's mean sample reward, and after the last round that of the final
    policy. The reference is the initial model in every round. With ``--resume`` finished rounds are
    skipped, an unfinished round reuses its pairs and resumes from its last checkpoint. Answers are
    re-tokenized from their text for training (unfinished answers then end with EOS like any other); the
    DPO loss uses the policy at temperature 1.
    """
    output = Path(config.output)
    main = start_processes(config)
    if main:
        output.mkdir(parents=True, exist_ok=True)
        if not config.resume:
            for old in output.glob("round-*"):
                shutil.rmtree(old)
            (output / "rounds.jsonl").unlink(missing_ok=True)
    everyone_here()
    prompts = [record.prompt for record in load_prompts(config.prompts, skip_invalid=config.skip_invalid)]
    reward = load_reward_function(config.reward, device=config.device, dtype=config.dtype,
                                  batch_size=config.generation_batch_size, max_length=config.max_length)
    policy_path = config.model
    sampler = RoundSampler(config)
    try:
        for number in range(1, config.rounds + 1):
            folder = round_dir(output, number)
            if not round_is_finished(folder):
                run_round(config, sampler, number, folder, policy_path, prompts, reward)
            policy_path = str(folder)
        _, scores, _, _ = sample_and_score(sampler, policy_path, prompts, reward, config, config.samples_per_prompt,
                                           config.rounds + 1)
    finally:
        sampler.close()
    final = {"round": "final", "mean_reward": sum(map(sum, scores)) / (len(prompts) * config.samples_per_prompt)}
    if main:
        append_round(output, final)
        copy_model_files(Path(policy_path), output)
        console.print(f"online dpo: final policy mean reward {final['mean_reward']:.4f}; model saved to {output}")
    everyone_here()
    return output


def start_processes(config: DPOConfig) -> bool:
    """Under ``--fsdp``, join the process group (the rounds' files are written by process 0, the others
    wait for them); returns whether this is process 0."""
    if not config.fsdp:
        return True
    from rlhfkit.train.sharding import start_process_group

    device = resolve_device(config.device)
    start_process_group(device, config.dist_timeout)
    if device.type == "cuda":  # each process samples on its own GPU
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    return dist.get_rank() == 0


def everyone_here() -> None:
    """Wait until every process got here (nothing without a process group)."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def run_round(config: DPOConfig, sampler: RoundSampler, number: int, folder: Path, policy_path: str, prompts: list,
              reward) -> None:
    """One round: its pairs (sampled now, or kept from an interrupted run), then DPO on them."""
    main = not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0
    folder.mkdir(parents=True, exist_ok=True)
    pairs_file = folder / "pairs.jsonl"
    if not pairs_file.exists():  # (every process samples the same answers; process 0 writes them)
        write_round_pairs(config, sampler, number, folder, policy_path, prompts, reward, write=main)
    everyone_here()
    summary = json.loads((folder / "samples.json").read_text())
    if main:
        console.print(f"online dpo: round {number}: mean reward {summary['mean_reward']:.4f}, {summary['pairs']} "
                      f"pairs ({summary['tied_prompts']} prompts with tied scores skipped)")
    if summary["pairs"]:
        round_config = dataclasses.replace(config, online=False, model=policy_path, data=str(pairs_file),
                                           output=str(folder), reference=config.reference or config.model,
                                           eval_data=None)
        train_dpo_offline(round_config)
    elif main:
        log.warning("online dpo: round %d has no pairs (all scores tied); the policy is unchanged", number)
        copy_model_files(Path(policy_path), folder)
    if main:
        (folder / "round.json").write_text(json.dumps(summary))
        append_round(folder.parent, summary)
    everyone_here()


def write_round_pairs(config: DPOConfig, sampler: RoundSampler, number: int, folder: Path, policy_path: str,
                      prompts: list, reward, write: bool = True) -> None:
    """Sample and score the round's answers; write (with ``write``) its pairs (atomically) and its summary."""
    answers, scores, unfinished, sync = sample_and_score(sampler, policy_path, prompts, reward, config,
                                                         config.samples_per_prompt, number)
    pairs, skipped = best_and_worst_pairs(prompts, answers, scores)
    mean_reward = sum(map(sum, scores)) / (len(prompts) * config.samples_per_prompt)
    summary = {"round": number, "mean_reward": mean_reward, "pairs": len(pairs), "tied_prompts": skipped,
               "unfinished_answers": unfinished, **sync}
    if not write:
        return
    (folder / "samples.json").write_text(json.dumps(summary))
    tmp = folder / "pairs.tmp"
    tmp.write_text("".join(json.dumps(p) + "\n" for p in pairs))
    tmp.replace(folder / "pairs.jsonl")


def append_round(output: Path, summary: dict) -> None:
    with (output / "rounds.jsonl").open("a") as handle:
        handle.write(json.dumps(summary) + "\n")


def copy_model_files(source: Path, destination: Path) -> None:
    """Copy an HF model folder's files (not its subfolders such as checkpoints) into ``destination``."""
    destination.mkdir(parents=True, exist_ok=True)
    for path in source.iterdir():
        if path.is_file() and path.name not in ("metrics.jsonl", "round.json", "samples.json", "pairs.jsonl",
                                                "reference_logps.json", "config.yaml", "eval.json"):
            shutil.copy2(path, destination / path.name)

