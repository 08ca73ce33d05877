"""Anthropic HH-RLHF transcripts: ``"\\n\\nHuman: ...\\n\\nAssistant: ...\\n\\nHuman: ..."``.

An HH record is ``{"chosen": TRANSCRIPT, "rejected": TRANSCRIPT}``: two whole dialogues that share
every turn but the last assistant reply. Some replies in the real data contain the literal text
``"Human:"`` (even ``"\\n\\nHuman:"``: the model made up a human turn), so the two transcripts are
not split into turns and compared; the prompt is found from their common text instead (see
:func:`hh_pair_to_preference`).
"""

from __future__ import annotations

import re
from typing import Any

from rlhfkit.data.common_prefix import common_prefix_length
from rlhfkit.data.errors import DataError
from rlhfkit.data.kinds import Message, Preference

HUMAN_MARKER = "\n\nHuman:"
"""The text that starts a human turn in an HH transcript."""

ASSISTANT_MARKER = "\n\nAssistant:"
"""The text that starts an assistant turn in an HH transcript."""

TURN_MARKER = re.compile(r"\n\n(Human|Assistant):")
"""Matches either turn marker, capturing the speaker."""

ROLE_OF_SPEAKER = {"Human": "user", "Assistant": "assistant"}


def is_hh_transcript(text: Any) -> bool:
    """Whether ``text`` is a string in the HH transcript format (it starts with ``"\\n\\nHuman:"``)."""
    return isinstance(text, str) and text.startswith(HUMAN_MARKER)


def parse_hh_transcript(text: str) -> list[Message]:
    """The messages of an HH transcript, split on every turn marker; contents are stripped."""
    pieces = TURN_MARKER.split(text)
    # pieces: [text before the first marker, speaker, content, speaker, content, ...]
    if pieces[0].strip():
        raise DataError(f"not an HH transcript: text before the first {HUMAN_MARKER!r} marker")
    speakers, contents = pieces[1::2], pieces[2::2]
    return [
        {"role": ROLE_OF_SPEAKER[speaker], "content": content.strip()}
        for speaker, content in zip(speakers, contents, strict=True)
    ]


def render_hh_transcript(messages: list[Message]) -> str:
    """The HH transcript text of user/assistant messages (the inverse of parse_hh_transcript)."""
    speaker_of_role = {role: speaker for speaker, role in ROLE_OF_SPEAKER.items()}
    return "".join(f"\n\n{speaker_of_role[m['role']]}: {m['content']}" for m in messages)


def hh_pair_to_preference(chosen: str, rejected: str, location: str = "") -> Preference:
    """A Preference in messages form from two HH transcripts of the same dialogue.

    The prompt is the longest common text of the two transcripts, cut back to just before the last
    ``"\\n\\nAssistant:"`` marker in it; it must end with a user message. Each response is the rest of
    its transcript after that marker, as one assistant message (stripped; any "Human:" text in it is
    kept as written; an empty reply is kept as empty content).
    """
    common = chosen[: common_prefix_length(chosen, rejected)]
    cut = common.rfind(ASSISTANT_MARKER)
    if cut < 0:
        raise DataError(
            f"{location}: field 'chosen': expected HH transcripts that share a prompt up to an "
            f"{ASSISTANT_MARKER!r} marker, but their common text has none"
        )
    prompt = parse_hh_transcript(common[:cut])
    if not prompt or prompt[-1]["role"] != "user":
        raise DataError(
            f"{location}: field 'chosen': expected the HH prompt shared by 'chosen' and 'rejected' to end "
            f"with a human turn, got one ending with an assistant turn"
        )
    response_start = cut + len(ASSISTANT_MARKER)
    return Preference(
        prompt=prompt,
        chosen=[{"role": "assistant", "content": chosen[response_start:].strip()}],
        rejected=[{"role": "assistant", "content": rejected[response_start:].strip()}],
        location=location,
    )
