"""What the benchmarks share when they run a peer trainer (TRL) beside rlhfkit.

- ``peer_order``: rlhfkit groups batches by length by default (``--group-by-length``); the peers sample
  at random. To check that both compute the same step-0 (and step-1) loss, the peer must see
  rlhfkit's first batches; after that it gets a plain random order, as its own default would.
- ``WORDS``, ``sentence``, ``write_pairs``, ``throughput``: the synthetic text every benchmark trains
  on, and the rate read from a per-step clock.
- ``TrainerClock``: a transformers ``TrainerCallback`` that records each optimizer step's end time
  (seconds since training began) and the logs of each step, so throughput is read from the peer's
  own per-step clock, as rlhfkit's is read from its ``metrics.jsonl``.
"""

from __future__ import annotations

import json
import random
import time
from pathlib import Path

from transformers import TrainerCallback

from rlhfkit.train.batches import BatchPlan, epoch_order

WORDS = [
    "the", "a", "river", "mountain", "city", "capital", "quickly", "slowly", "answer", "question",
    "people", "country", "north", "south", "east", "west", "small", "large", "bright", "dark", "water",
    "stone", "tree", "forest", "road", "bridge", "market", "garden", "window", "door", "light", "night",
    "day", "morning", "evening", "winter", "summer", "simple", "careful", "honest", "helpful", "clear",
    "wrong", "right", "true", "false", "because",
]


def sentence(rng: random.Random, low: int, high: int) -> str:
    """Between ``low`` and ``high`` random words."""
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(low, high)))


def write_pairs(path: Path, count: int, seed: int) -> None:
    """Synthetic preference pairs: a prompt of ~15 words ending in a newline, answers of ~20-40 words."""
    rng = random.Random(seed)
    with path.open("w") as handle:
        for _ in range(count):
            record = {"prompt": sentence(rng, 10, 20) + "?\n", "chosen": sentence(rng, 20, 40) + ".",
                      "rejected": sentence(rng, 20, 40) + "."}
            handle.write(json.dumps(record) + "\n")


def throughput(step_times: dict[int, float], warmup: int, last: int, batch_size: int) -> float:
    """Examples per second between the end of step ``warmup`` and the end of step ``last`` (1-based)."""
    return (last - warmup) * batch_size / (step_times[last] - step_times[warmup])


def peer_order(lengths: list[int], global_batch: int, seed: int, shared_batches: int = 2) -> list[int]:
    """rlhfkit's first ``shared_batches`` global batches (with length grouping: equal losses at steps 0
    and 1 can be checked), then the rest of the plain shuffled epoch."""
    plan = BatchPlan(len(lengths), global_batch, 1, 1, seed, tuple(lengths))
    first = [i for step in range(shared_batches) for i in plan.global_indices(step)]
    taken = set(first)
    return first + [i for i in epoch_order(len(lengths), seed, 0) if i not in taken]


class TrainerClock(TrainerCallback):
    """Per-step times (``times[step]``, seconds since training began) and logs (``logs[step]``)."""

    def __init__(self):
        self.started = 0.0
        self.times: dict[int, float] = {}
        self.logs: dict[int, dict] = {}

    def on_train_begin(self, _args, state, control, **kwargs):
        self.started = time.perf_counter()

    def on_step_end(self, _args, state, control, **kwargs):
        self.times[state.global_step] = time.perf_counter() - self.started

    def on_log(self, _args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:
            self.logs.setdefault(state.global_step, dict(logs))
