"""The training loop of the offline trainers (SFT, reward model, DPO): examples in, optimizer steps out.

A stage hands the loop a list of examples and three functions (collate, loss, weight); the loop owns
everything else: data order and micro-batches (``batches.py``), gradient accumulation and data
parallelism (``optimizer.py``), the learning-rate schedule, checkpoints and resume
(``checkpoints.py``), metrics and the progress bar.

The loss of every micro-batch is divided by the *global* normaliser (e.g. the target-token count of
the whole global batch, which every process can compute since all hold the data), so 2 processes and
1 process give the same training curve at equal global batch. Resuming at step ``s`` replays exactly
the batches an uninterrupted run would have seen: the final weights are the same.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from transformers import get_cosine_schedule_with_warmup

from rlhfkit.config import TrainConfig
from rlhfkit.config_parse import save_config
from rlhfkit.console import console, progress_bar
from rlhfkit.train.batches import BatchPlan, total_steps
from rlhfkit.train.checkpoints import CHECKPOINTS, interruption_note, resume_from_latest, save_checkpoint
from rlhfkit.train.metrics import MetricsLog
from rlhfkit.train.optimizer import make_optimizer, optimizer_step
from rlhfkit.train.run_record import run_record


@dataclass
class Stage:
    """What a trainer supplies to the loop."""

    examples: Sequence[Any]
    collate: Callable[[list[Any]], dict[str, torch.Tensor]]
    # loss(model, batch, normalizer) -> (loss tensor, {metric: tensor}); the loss and the metrics must be
    # sums over the batch divided by ``normalizer`` (the global batch's total weight)
    loss: Callable[[torch.nn.Module, dict[str, torch.Tensor], float], tuple[torch.Tensor, dict[str, torch.Tensor]]]
    weight: Callable[[Any], float]  # an example's share of the normaliser (e.g. its target tokens)
    evaluate: Callable[[torch.nn.Module], dict[str, float]] | None = None
    name: str = "train"
    length: Callable[[Any], int] | None = None  # an example's padded cost in tokens, for --group-by-length


def train(config: TrainConfig, accelerator: Accelerator, model: torch.nn.Module, stage: Stage,
          on_step: Callable[[int], None] | None = None) -> torch.nn.Module:
    """Run the optimizer steps of ``config`` over ``stage``; returns the unwrapped trained model.

    ``on_step(step)`` is called after each completed step (after any checkpoint of that step).
    """
    output = Path(config.output)
    output.mkdir(parents=True, exist_ok=True)
    if accelerator.is_main_process:
        save_config(config, output / "config.yaml")

    lengths = tuple(stage.length(e) for e in stage.examples) if config.group_by_length and stage.length else None
    plan = BatchPlan(len(stage.examples), config.batch_size, config.grad_accum, accelerator.num_processes,
                     config.seed, lengths)
    steps = total_steps(config, plan)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = make_optimizer([{"params": params}], lr=config.learning_rate, weight_decay=config.weight_decay)
    scheduler = get_cosine_schedule_with_warmup(optimizer, int(config.warmup_ratio * steps), steps)
    model, optimizer = accelerator.prepare(model, optimizer)

    record = run_record(config)
    state = resume_from_latest(accelerator, output, scheduler, record) if config.resume else None
    start = state["step"] if state else 0
    log = MetricsLog(output, accelerator.is_main_process, resume=start > 0)
    if accelerator.is_main_process and start == 0:
        console.print(
            f"{stage.name}: {plan.num_examples} examples, global batch {plan.global_batch} "
            f"({config.batch_size} x {config.grad_accum} accumulation x {accelerator.num_processes} processes), "
            f"{steps} steps ({plan.steps_per_epoch} per epoch)"
        )

    model.train()
    started = time.perf_counter()
    done = start
    with progress_bar(stage.name, total=steps, completed=start, enabled=accelerator.is_main_process) as advance, \
            interruption_note(output, lambda: done, steps):
        for step in range(start, steps):
            metrics = _optimizer_step(config, accelerator, model, optimizer, scheduler, stage, plan, step)
            done = step + 1
            advance()
            if done % config.log_every == 0 or done == steps:
                elapsed = time.perf_counter() - started
                log.write({"step": done, "epoch": round(done / plan.steps_per_epoch, 4), **metrics,
                           "lr": scheduler.get_last_lr()[0], "seconds": round(elapsed, 2)})
            if stage.evaluate is not None and config.eval_every and done % config.eval_every == 0 and done != steps:
                log.write({"step": done, **_evaluate(stage, model)})
            if config.save_every and done % config.save_every == 0 and done != steps:
                save_checkpoint(accelerator, output, done, scheduler, {"epoch": done / plan.steps_per_epoch, **record})
            if on_step is not None:
                on_step(done)
    if stage.evaluate is not None:
        log.write({"step": steps, **_evaluate(stage, model)})
    save_checkpoint(accelerator, output, steps, scheduler, {"epoch": steps / plan.steps_per_epoch, **record})
    return accelerator.unwrap_model(model)


def _evaluate(stage: Stage, model: torch.nn.Module) -> dict[str, float]:
    model.eval()
    with torch.no_grad():
        result = stage.evaluate(model)
    model.train()
    return result


def _optimizer_step(config, accelerator, model, optimizer, scheduler, stage, plan, step) -> dict[str, float]:
    micro_batches = plan.micro_batches(step, accelerator.process_index)
    everyone = [i for process in range(plan.num_processes) for mb in plan.micro_batches(step, process) for i in mb]
    normalizer = max(sum(stage.weight(stage.examples[i]) for i in everyone), 1e-8)

    def micro_batch_loss(indices: list[int]):
        batch = stage.collate([stage.examples[i] for i in indices])
        loss, metrics = stage.loss(model, {key: value.to(accelerator.device) for key, value in batch.items()},
                                   normalizer)
        return loss, {"loss": loss, **metrics}

    totals, norms = optimizer_step(
        accelerator, [model], optimizer, scheduler,
        [lambda indices=indices: micro_batch_loss(indices) for indices in micro_batches], config.max_grad_norm,
        lambda loss: (f"non-finite loss ({loss.item()}) at step {step + 1}; the last good checkpoint is kept in "
                      f"{Path(config.output) / CHECKPOINTS}. Lower --learning-rate or check the data."))
    if norms:
        totals["grad_norm"] = torch.as_tensor(norms[0], dtype=torch.float32, device=accelerator.device) / (
            accelerator.num_processes)
    names = sorted(totals)
    stacked = torch.stack([torch.as_tensor(totals[n], device=accelerator.device) for n in names])
    summed = accelerator.reduce(stacked, reduction="sum") if accelerator.num_processes > 1 else stacked
    return {name: float(value) for name, value in zip(names, summed.tolist(), strict=True)}
