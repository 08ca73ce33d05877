"""How much two texts share at their start: the common prefix of two strings or two message lists."""

from __future__ import annotations

from rlhfkit.data.kinds import Message


def common_prefix_length(first: str, second: str) -> int:
    """How many leading characters the two strings share.

    Found by halving the range and comparing slices, which is much faster on long texts than
    comparing one character at a time in Python (as os.path.commonprefix does).
    """
    low, high = 0, min(len(first), len(second))
    while low < high:
        middle = (low + high + 1) // 2
        if first[:middle] == second[:middle]:
            low = middle
        else:
            high = middle - 1
    return low


def common_message_prefix_length(first: list[Message], second: list[Message]) -> int:
    """How many leading messages the two lists share."""
    length = 0
    for message_a, message_b in zip(first, second, strict=False):
        if message_a != message_b:
            break
        length += 1
    return length
