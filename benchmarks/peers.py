"""What the benchmarks share when they run a peer trainer (TRL) beside rlhfkit.

- ``peer_order``: rlhfkit groups batches by length by default (``--group-by-length``); the peers sample
  at random. To check that both compute the same step-0 (and step-1) loss, the peer must see
  rlhfkit's first batches; after that it gets a plain random order, as its own default would.
- ``TrainerClock``: a transformers ``TrainerCallback`` that records each optimizer step's end time
  (seconds since training began) and the logs of each step, so throughput is read from the peer's
  own per-step clock, as rlhfkit's is read from its ``metrics.jsonl``.
"""

from __future__ import annotations

import time

from transformers import TrainerCallback

from rlhfkit.train.loop import BatchPlan, epoch_order


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
