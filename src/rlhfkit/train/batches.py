"""Which examples make each optimizer step: the data order, micro-batches and the held-out split.

One optimizer step consumes a *global batch* of ``batch_size x grad_accum x processes`` examples, taken
in order from a permutation of the data seeded by ``(seed, epoch)``. Each process takes its share as
``grad_accum`` micro-batches. The data order is a pure function of (seed, epoch), so resuming at step
``s`` replays exactly the batches an uninterrupted run would have seen.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from rlhfkit.config import TrainConfig


@functools.lru_cache(maxsize=4)
def epoch_order(num_examples: int, seed: int, epoch: int) -> tuple[int, ...]:
    """The shuffled example order of one epoch, a pure function of (seed, epoch); cached, since every
    step (and every process's share of it) reads it."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return tuple(torch.randperm(num_examples, generator=generator).tolist())


GROUP_BATCHES = 32

"""With lengths, each run of this many global batches is sorted by length (see ``length_grouped_order``)."""


def length_grouped_order(order: Sequence[int], lengths: Sequence[int], global_batch: int, seed: int,
                         epoch: int) -> tuple[int, ...]:
    """``order`` rearranged so that each global batch holds examples of similar length (less padding).

    The shuffled order is cut into groups of ``GROUP_BATCHES`` global batches; each group is sorted by
    length, longest first, and cut into batches; the full batches of the epoch are then shuffled (the
    short last batch stays last). Which examples share an epoch is unchanged, and the result is still a
    pure function of (seed, epoch).
    """
    group = global_batch * GROUP_BATCHES
    arranged: list[int] = []
    for start in range(0, len(order), group):
        arranged.extend(sorted(order[start : start + group], key=lambda i: -lengths[i]))
    full = len(arranged) // global_batch
    batches = [arranged[b * global_batch : (b + 1) * global_batch] for b in range(full)]
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch + 7_919)
    shuffled = [i for b in torch.randperm(full, generator=generator).tolist() for i in batches[b]]
    return tuple(shuffled + arranged[full * global_batch :])


@dataclass
class BatchPlan:
    """How examples map to optimizer steps. With ``lengths`` (one per example), batches are grouped by
    length (:func:`length_grouped_order`)."""

    num_examples: int
    batch_size: int
    grad_accum: int
    num_processes: int
    seed: int
    lengths: tuple[int, ...] | None = None

    def epoch_order(self, epoch: int) -> tuple[int, ...]:
        """The example order of ``epoch``."""
        order = epoch_order(self.num_examples, self.seed, epoch)
        if self.lengths is None:
            return order
        cache = self.__dict__.setdefault("_grouped", {})
        if epoch not in cache:
            cache.clear()
            cache[epoch] = length_grouped_order(order, self.lengths, self.global_batch, self.seed, epoch)
        return cache[epoch]

    @property
    def global_batch(self) -> int:
        return self.batch_size * self.grad_accum * self.num_processes

    @property
    def steps_per_epoch(self) -> int:
        return math.ceil(self.num_examples / self.global_batch)

    def global_indices(self, step: int) -> list[int]:
        """Examples of optimizer step ``step`` (0-based). The last batch of an epoch may be smaller."""
        epoch, position = divmod(step, self.steps_per_epoch)
        order = self.epoch_order(epoch)
        return list(order[position * self.global_batch : (position + 1) * self.global_batch])

    def micro_batches(self, step: int, process_index: int) -> list[list[int]]:
        """This process's ``grad_accum`` micro-batches of step ``step``.

        A short last batch is split as evenly as possible; when it has fewer examples than there are
        micro-batches, it is topped up from the start of the epoch so that every process runs the
        same number of forward passes (data parallelism needs that).
        """
        indices = self.global_indices(step)
        slots = self.grad_accum * self.num_processes
        if len(indices) < slots:
            order = self.epoch_order(step // self.steps_per_epoch)
            indices = indices + [order[i % len(order)] for i in range(slots - len(indices))]
        base, extra = divmod(len(indices), slots)
        chunks, start = [], 0
        for slot in range(slots):
            size = base + (1 if slot < extra else 0)
            chunks.append(indices[start : start + size])
            start += size
        # slot = micro * processes + process: each micro-batch round spans all processes
        return [chunks[micro * self.num_processes + process_index] for micro in range(self.grad_accum)]


def split_held_out(records: list, fraction: float, seed: int) -> tuple[list, list]:
    """A seeded random split: (train, held_out) with ``int(len * fraction)`` held out."""
    count = int(len(records) * fraction)
    if count == 0:
        return list(records), []
    order = torch.randperm(len(records), generator=torch.Generator().manual_seed(seed)).tolist()
    held = set(order[:count])
    return [r for i, r in enumerate(records) if i not in held], [r for i, r in enumerate(records) if i in held]


def load_train_and_held_out(load: Callable[..., list], config: TrainConfig) -> tuple[list, list]:
    """(training, held-out) records: ``config.eval_data`` when given, else a seeded ``eval_split`` share
    of ``config.data``. ``load(path, skip_invalid=...)`` reads one file."""
    records = load(config.data, skip_invalid=config.skip_invalid)
    if config.eval_data:
        return records, load(config.eval_data, skip_invalid=config.skip_invalid)
    return split_held_out(records, config.eval_split, config.seed)


def total_steps(config: TrainConfig, plan: BatchPlan) -> int:
    if config.max_steps > 0:
        return config.max_steps
    return max(1, math.ceil(config.epochs * plan.steps_per_epoch))

