"""Data order for a peer trainer in the benchmarks.

rlhfkit groups batches by length by default (``--group-by-length``); the peers sample at random. To
check that both compute the same step-0 loss, the peer must see rlhfkit's first batch; after that it
should get a plain random order, as its own default would. ``peer_order`` gives exactly that.
"""

from __future__ import annotations

from rlhfkit.train.loop import BatchPlan, epoch_order


def peer_order(lengths: list[int], global_batch: int, seed: int) -> list[int]:
    """rlhfkit's first global batch (with length grouping), then the rest of the plain shuffled epoch."""
    plan = BatchPlan(len(lengths), global_batch, 1, 1, seed, tuple(lengths))
    first = plan.global_indices(0)
    taken = set(first)
    return first + [i for i in epoch_order(len(lengths), seed, 0) if i not in taken]
