"""The kinds of training records: prompts, demonstrations, preferences, rankings and binary feedback.

A *message* is a dict ``{"role": str, "content": str}`` with a role in :data:`ROLES`. A *text* is
either a plain string or a non-empty list of messages. The checks that build these records from raw
data are in :mod:`rlhfkit.data.records`.
"""

from __future__ import annotations

from dataclasses import dataclass

ROLES = ("system", "user", "assistant", "tool")
"""The roles a message may have."""

Message = dict[str, str]
"""A chat message: ``{"role": ..., "content": ...}``."""

Text = str | list[Message]
"""A prompt or a response: a plain string, or a list of messages."""


@dataclass(frozen=True)
class PromptRecord:
    """A prompt to generate from (for RL rollouts or evaluation), as a string or a list of messages."""

    prompt: Text
    location: str = ""
    harmful: bool | None = None  # optional field: a harmful request (evaluation's refusal rates); None: unknown


@dataclass(frozen=True)
class Demonstration:
    """A supervised example, in one of two forms.

    Plain text: ``prompt`` and ``completion`` are strings; the loss is on the completion.
    Chat: ``messages`` is the whole conversation and ``trainable[i]`` says whether message ``i``
    is learned from (an assistant message in the part the model should produce).
    """

    prompt: str | None = None
    completion: str | None = None
    messages: list[Message] | None = None
    trainable: list[bool] | None = None
    location: str = ""

    @property
    def is_chat(self) -> bool:
        """Whether this demonstration is in chat form (``messages`` and ``trainable``)."""
        return self.messages is not None


@dataclass(frozen=True)
class Preference:
    """A pairwise comparison: for ``prompt``, the response ``chosen`` was preferred to ``rejected``.

    ``chosen`` and ``rejected`` hold only the responses (what follows the prompt). Either all three
    are strings, or all three are lists of messages. ``margin`` is an optional strength of the
    preference; ``source`` names where the comparison came from.
    """

    prompt: Text
    chosen: Text
    rejected: Text
    margin: float | None = None
    source: str | None = None
    location: str = ""


@dataclass(frozen=True)
class Ranking:
    """Several responses to one prompt with their ranks: 1 is best, equal ranks are ties.

    Either the prompt and every response are strings, or they are all lists of messages.
    """

    prompt: Text
    responses: list[Text]
    ranks: list[int]
    source: str | None = None
    location: str = ""


@dataclass(frozen=True)
class BinaryFeedback:
    """One answer judged on its own (KTO's unpaired data): ``desirable`` is True for a thumbs-up.

    Either ``prompt`` and ``completion`` are both strings, or both lists of messages.
    """

    prompt: Text
    completion: Text
    desirable: bool
    source: str | None = None
    location: str = ""
