"""The ``rlhfkit`` command line: parse a stage's config, call that stage's one function.

Every stage takes ``--config FILE.yaml`` plus flags named after the config fields; see
``rlhfkit STAGE --help``.
"""

from __future__ import annotations

import argparse
import re
import sys

from rlhfkit import __version__
from rlhfkit.config import (
    ConfigError,
    DPOConfig,
    EvalConfig,
    GenerateConfig,
    JudgeConfig,
    LoopConfig,
    PPOConfig,
    ReviseConfig,
    RMConfig,
    ScoreConfig,
    ServeConfig,
    SFTConfig,
    TinyModelConfig,
)
from rlhfkit.config_parse import add_config_arguments, config_from_args


def _sft(config: SFTConfig) -> None:
    from rlhfkit.train.sft import run_sft

    run_sft(config)


def _rm(config: RMConfig) -> None:
    from rlhfkit.train.rm import run_rm

    run_rm(config)


def _dpo(config: DPOConfig) -> None:
    from rlhfkit.train.dpo import run_dpo

    run_dpo(config)


def _ppo(config: PPOConfig) -> None:
    from rlhfkit.train.ppo import run_ppo

    run_ppo(config)


def _judge(config: JudgeConfig) -> None:
    from rlhfkit.judge.run import run_judge

    run_judge(config)


def _revise(config: ReviseConfig) -> None:
    from rlhfkit.judge.revise import run_revise

    run_revise(config)


def _serve(config: ServeConfig) -> None:
    from rlhfkit.serve import run_serve

    run_serve(config)


def _score(config: ScoreConfig) -> None:
    from rlhfkit.evaluate.score import run_score

    run_score(config)


def _eval(config: EvalConfig) -> None:
    from rlhfkit.evaluate.run import run_eval

    run_eval(config)


def _generate(config: GenerateConfig) -> None:
    from rlhfkit.rollout.generate_command import run_generate

    run_generate(config)


def _loop(config: LoopConfig) -> None:
    from rlhfkit.iterate import run_loop

    run_loop(config)


def _tiny_model(config: TinyModelConfig) -> None:
    from rlhfkit.console import console
    from rlhfkit.models.tiny import write_tiny_model

    path = write_tiny_model(
        config.corpus, config.output, arch=config.arch, layers=config.layers, width=config.width,
        heads=config.heads, vocab_size=config.vocab_size, max_positions=config.max_positions, seed=config.seed,
    )
    console.print(f"tiny-model: {config.arch} with {config.layers} layers, width {config.width}, written to {path}")


def _demo(args: argparse.Namespace) -> None:
    if args.study:
        from rlhfkit.demo.study import run_study

        run_study(args.output, seed=args.seed, quick=args.quick)
        return
    from rlhfkit.demo.run import run_demo

    run_demo(args.output, quick=args.quick, seed=args.seed)


def _data_check(args: argparse.Namespace) -> None:
    from rlhfkit import data
    from rlhfkit.console import console

    loader = {
        "prompts": data.load_prompts,
        "demonstrations": data.load_demonstrations,
        "preferences": data.load_preferences,
        "rankings": data.load_rankings,
    }[args.kind]
    records = loader(args.file, skip_invalid=args.skip_invalid)
    console.print(f"{args.file}: {len(records)} valid {args.kind} records")


# name -> (config class, runner, one-line help)
STAGES = {
    "sft": (SFTConfig, _sft, "Supervised fine-tuning on demonstrations (loss on answers only)."),
    "rm": (RMConfig, _rm, "Train a reward model (Bradley-Terry) on comparisons and rankings."),
    "dpo": (DPOConfig, _dpo, "Preference optimisation without a reward model: DPO, IPO, cDPO, robust DPO, SimPO, "
                             "ORPO, KTO; --online for iterative DPO on the policy's own samples."),
    "ppo": (PPOConfig, _ppo, "RL against a reward with a KL penalty: PPO (GAE), GRPO, RLOO or REINFORCE++."),
    "judge": (JudgeConfig, _judge, "Label {prompt, responses} records with an AI judge (local LM, reward model, "
                                   "or a Python function); position swap; length-bias report."),
    "revise": (ReviseConfig, _revise, "Constitutional AI: critique answers against principles, revise them, "
                                      "write the revisions as SFT demonstrations."),
    "serve": (ServeConfig, _serve, "Serve a local model behind an OpenAI-compatible /v1/chat/completions API."),
    "score": (ScoreConfig, _score, "Score {prompt, response(s)} records with a reward model."),
    "generate": (GenerateConfig, _generate, "Sample K answers per prompt to JSONL {prompt, responses}."),
    "eval": (EvalConfig, _eval, "Compare policy A with policy B: win rate (reward model, judge, function or "
                                "people) with a 95%% interval, KL, length, refusal and over-refusal rates."),
    "loop": (LoopConfig, _loop, "Iterated RLHF rounds: generate, label (judge, people or semi-AI), retrain the "
                                "reward model, PPO or DPO, evaluate; resumable; a report across rounds."),
    "tiny-model": (TinyModelConfig, _tiny_model, "Train a tokenizer on a corpus and write a tiny random model."),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rlhfkit",
        description="rlhfkit: a complete RLHF system. Each subcommand is one stage; see 'rlhfkit STAGE --help'.",
    )
    parser.add_argument("--version", action="version", version=f"rlhfkit {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (cls, _, help_text) in STAGES.items():
        sub = commands.add_parser(name, help=help_text, description=help_text + " " + (cls.__doc__ or ""))
        add_config_arguments(sub, cls)

    demo = commands.add_parser("demo", help="RLHF end to end on a built-in assistant world (CPU, minutes).",
                               description="The whole loop on a built-in assistant world: tiny model, pre-training, "
                                           "SFT, simulated annotators in the feedback app, reward model, PPO and "
                                           "DPO, evaluation against a hidden gold preference, and an HTML report.")
    demo.add_argument("--output", default="demo-output", help="Folder for everything the demo writes.")
    demo.add_argument("--quick", action="store_true", help="A smaller, faster run (used by the tests).")
    demo.add_argument("--seed", type=int, default=0, help="Seed of the world, the models and the annotators.")
    demo.add_argument("--study", action="store_true",
                      help="After the demo (run first when --output has none), sweep PPO's KL penalty against the "
                           "round-1 reward model and add the over-optimisation picture to the report (minutes more).")

    data = commands.add_parser("data", help="Check data files.", description="Check data files.")
    data_commands = data.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    check = data_commands.add_parser("check", help="Validate a file of records; report the first problem.",
                                     description="Validate a file of records; report the first problem.")
    check.add_argument("file", help="JSONL, JSON, Parquet, CSV file or HF dataset folder (DIR or DIR:split).")
    check.add_argument("--kind", required=True, choices=["prompts", "demonstrations", "preferences", "rankings"])
    check.add_argument("--skip-invalid", action="store_true", help="Report all invalid records instead of the first.")

    from rlhfkit.feedback.cli import add_label_parser  # here, so that startup stays fast

    add_label_parser(commands)
    return parser


def collective_failure(error: RuntimeError) -> str | None:
    """What to say when ``error`` is a collective of a multi-process run (torchrun, --fsdp, Ray trainers)
    that failed because another process died or stopped answering; None for any other error."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return None
    text = str(error)
    if not (isinstance(error, dist.DistError) or any(s in text for s in ("Timed out", "timed out", "Connection closed",
                                                                          "Connection reset", "NCCL", "gloo"))):
        return None
    first = next((line.strip() for line in text.splitlines() if line.strip()), type(error).__name__)
    first = re.split(r"(?<=\.)\s", re.sub(r"^\[[^\]]*\]\s*", "", first))[0]  # gloo's source position, its advice
    return (f"process {dist.get_rank()} of {dist.get_world_size()}: a collective with the other processes failed "
            f"({first[:300]}). Another process died, failed or is stuck (a collective waits --dist-timeout "
            "seconds): see its own error above. The run stops here: rerun it with --resume to continue from its "
            "last checkpoint.")


def main(argv: list[str] | None = None) -> None:
    from rlhfkit.console import console, setup_logging
    from rlhfkit.data import DataError
    from rlhfkit.judge.http import JudgeRequestError
    from rlhfkit.rewards import RewardSpecError
    from rlhfkit.rollout.vllm_engine import EngineError
    from rlhfkit.rollout.weight_sync import SyncError
    from rlhfkit.train.optimizer import TrainingError

    args = build_parser().parse_args(argv)
    setup_logging()
    try:
        if args.command in STAGES:
            cls, run, _ = STAGES[args.command]
            run(config_from_args(cls, args))
        elif args.command == "demo":
            _demo(args)
        elif args.command == "data":
            _data_check(args)
        elif args.command == "label":
            from rlhfkit.feedback.cli import run_label

            run_label(args)
    except (ConfigError, DataError, EngineError, FileNotFoundError, JudgeRequestError, RewardSpecError, SyncError,
            TrainingError) as err:
        console.print(f"[red]error:[/] {err}", soft_wrap=True)
        sys.exit(2)
    except RuntimeError as err:
        stopped = collective_failure(err)
        if stopped is None:
            raise
        console.print(f"[red]error:[/] {stopped}", soft_wrap=True)
        sys.exit(2)
    except KeyboardInterrupt as interrupt:  # Ctrl-C: what the trainer noted (how far, how to resume), no traceback
        notes = getattr(interrupt, "__notes__", None) or ["interrupted"]
        console.print(f"[yellow]{notes[-1]}[/]", soft_wrap=True)
        sys.exit(130)
