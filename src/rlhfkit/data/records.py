"""The functions that check raw records and build training records from them.

The record kinds (and messages and texts) are defined in :mod:`rlhfkit.data.kinds` and imported
here, so ``rlhfkit.data.records`` still offers them. Raw records are dicts (one JSON object, one
table row); unknown extra fields in them are allowed and ignored. Every check failure is a
:class:`~rlhfkit.data.errors.DataError` naming the record's location, the field, what was expected
and what was found.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

from rlhfkit.data.common_prefix import common_message_prefix_length, common_prefix_length
from rlhfkit.data.errors import DataError, missing_field, wrong_value
from rlhfkit.data.hh import hh_pair_to_preference, is_hh_transcript
from rlhfkit.data.kinds import (
    ROLES,
    BinaryFeedback,
    Demonstration,
    Message,
    Preference,
    PromptRecord,
    Ranking,
    Text,
)

TEXT_EXPECTED = 'a string or a list of {"role", "content"} messages'
MESSAGES_EXPECTED = 'a non-empty list of {"role", "content"} messages'
MESSAGE_EXPECTED = 'a {"role", "content"} message (an object)'
ROLE_EXPECTED = "one of " + ", ".join(repr(role) for role in ROLES)
RANK_EXPECTED = "a positive integer (1 = best)"


# ---------------------------------------------------------------- field checks


def check_object(raw: Any, location: str) -> dict:
    """``raw`` itself, after checking that it is a record (a dict)."""
    if not isinstance(raw, dict):
        raise DataError(f"{location}: expected a record (a JSON object), got {type(raw).__name__}")
    return raw


def has_field(raw: dict, field: str) -> bool:
    """Whether ``raw`` has ``field`` with a value (null counts as absent)."""
    return raw.get(field) is not None


def required(raw: dict, field: str, location: str, expected: str) -> Any:
    """The value of a required field, or a DataError saying it is missing."""
    if not has_field(raw, field):
        raise missing_field(location, field, expected, raw)
    return raw[field]


def parse_message(value: Any, location: str, field: str) -> Message:
    """A checked message ``{"role", "content"}`` (other keys of the message are dropped)."""
    if not isinstance(value, dict):
        raise wrong_value(location, field, MESSAGE_EXPECTED, value)
    if "role" not in value:
        raise missing_field(location, f"{field}.role", ROLE_EXPECTED, value)
    role = value["role"]
    if not isinstance(role, str) or role not in ROLES:
        raise wrong_value(location, f"{field}.role", ROLE_EXPECTED, role)
    if "content" not in value:
        raise missing_field(location, f"{field}.content", "a string", value)
    content = value["content"]
    if not isinstance(content, str):
        raise wrong_value(location, f"{field}.content", "a string", content)
    return {"role": role, "content": content}


def parse_messages(value: Any, location: str, field: str) -> list[Message]:
    """A checked, non-empty list of messages."""
    if not isinstance(value, list) or not value:
        raise wrong_value(location, field, MESSAGES_EXPECTED, value)
    return [parse_message(item, location, f"{field}[{index}]") for index, item in enumerate(value)]


def parse_text(value: Any, location: str, field: str) -> Text:
    """A checked text: a string, or a non-empty list of messages."""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        return parse_messages(value, location, field)
    raise wrong_value(location, field, TEXT_EXPECTED, value)


def optional_margin(raw: dict, location: str) -> float | None:
    """The record's ``margin`` as a float, or None when absent; booleans are not numbers."""
    if not has_field(raw, "margin"):
        return None
    margin = raw["margin"]
    if isinstance(margin, bool) or not isinstance(margin, int | float):
        raise wrong_value(location, "margin", "a number", margin)
    if not math.isfinite(margin):
        raise wrong_value(location, "margin", "a finite number", margin)
    return float(margin)


def optional_source(raw: dict, location: str) -> str | None:
    """The record's ``source`` string, or None when absent."""
    if not has_field(raw, "source"):
        return None
    source = raw["source"]
    if not isinstance(source, str):
        raise wrong_value(location, "source", "a string", source)
    return source


# ---------------------------------------------------------------- strings and messages


def as_messages(text: Text, role: str) -> list[Message]:
    """``text`` as a list of messages: a string becomes one message with ``role``."""
    if isinstance(text, str):
        return [{"role": role, "content": text}]
    return text


def is_messages(text: Text) -> bool:
    """Whether ``text`` is a list of messages rather than a string."""
    return isinstance(text, list)


def strip_prompt_prefix(
    prompt: list[Message], response: list[Message], location: str, field: str
) -> list[Message]:
    """``response`` without a leading copy of ``prompt`` (a full conversation given as response)."""
    if response[: len(prompt)] != prompt:
        return response
    if len(response) == len(prompt):
        raise DataError(
            f"{location}: field '{field}': expected a response after the prompt, got the same messages as 'prompt'"
        )
    return response[len(prompt) :]


def unify_forms(
    prompt: Text, responses: list[Text], location: str, fields: list[str]
) -> tuple[Text, list[Text]]:
    """Prompt and responses in one form: all strings, or (if any is messages) all messages.

    A string prompt becomes a user message and a string response an assistant message. A message
    response that repeats the prompt messages first (a full conversation) has that prefix removed.
    """
    if not is_messages(prompt) and not any(is_messages(response) for response in responses):
        return prompt, responses
    prompt_messages = as_messages(prompt, "user")
    response_messages = [
        strip_prompt_prefix(prompt_messages, as_messages(response, "assistant"), location, field)
        for response, field in zip(responses, fields, strict=True)
    ]
    return prompt_messages, response_messages


# ---------------------------------------------------------------- implicit prompts


def split_implicit_message_prompt(
    chosen: list[Message], rejected: list[Message], location: str
) -> tuple[list[Message], list[Message], list[Message]]:
    """(prompt, chosen response, rejected response) from two conversations sharing their start."""
    length = common_message_prefix_length(chosen, rejected)
    if length == 0:
        raise DataError(
            f"{location}: field 'prompt': missing, and 'chosen' and 'rejected' share no leading messages "
            "to take as the prompt; add a 'prompt' field"
        )
    for field, messages in (("chosen", chosen), ("rejected", rejected)):
        if length == len(messages):
            raise DataError(
                f"{location}: field '{field}': expected messages after the prompt shared with the other "
                f"response, but all its {len(messages)} messages are shared, leaving no response; "
                "add a 'prompt' field or fix the record"
            )
    return chosen[:length], chosen[length:], rejected[length:]


def is_word_character(character: str) -> bool:
    """Whether ``character`` belongs to a word (not whitespace or punctuation)."""
    return character.isalnum() or character == "_"


def word_boundary_before(text: str, end: int) -> int:
    """The largest cut position ``<= end`` in ``text`` that comes right after a non-word character."""
    while end > 0 and is_word_character(text[end - 1]):
        end -= 1
    return end


def split_implicit_string_prompt(chosen: str, rejected: str, location: str) -> tuple[str, str, str]:
    """(prompt, chosen response, rejected response) from two strings sharing their start.

    The prompt is the longest common prefix, cut back to a word boundary so no word is split.
    """
    length = common_prefix_length(chosen, rejected)
    for field, other, text in (("chosen", "rejected", chosen), ("rejected", "chosen", rejected)):
        if length == len(text):
            raise DataError(
                f"{location}: field '{field}': expected a response that differs from '{other}' after a "
                f"shared prompt, but it is a prefix of '{other}' (or equal to it), so no prompt can be "
                "split off; add a 'prompt' field"
            )
    next_characters_end_words = not is_word_character(chosen[length]) and not is_word_character(
        rejected[length]
    )
    cut = length if next_characters_end_words else word_boundary_before(chosen, length)
    if cut == 0:
        raise DataError(
            f"{location}: field 'prompt': missing, and 'chosen' and 'rejected' share no leading words "
            "to take as the prompt; add a 'prompt' field"
        )
    return chosen[:cut], chosen[cut:], rejected[cut:]


def split_implicit_prompt(chosen: Text, rejected: Text, location: str) -> tuple[Text, Text, Text]:
    """(prompt, chosen response, rejected response) for a pair given without a prompt."""
    if is_messages(chosen) or is_messages(rejected):
        return split_implicit_message_prompt(
            as_messages(chosen, "assistant"), as_messages(rejected, "assistant"), location
        )
    return split_implicit_string_prompt(chosen, rejected, location)


# ---------------------------------------------------------------- record parsers


def parse_prompt(raw: dict, location: str) -> PromptRecord:
    """A PromptRecord from ``{"prompt": text, "harmful"?: bool}``."""
    check_object(raw, location)
    prompt = parse_text(required(raw, "prompt", location, TEXT_EXPECTED), location, "prompt")
    harmful = raw.get("harmful")
    if isinstance(harmful, str) and harmful.strip().lower() in ("true", "false", ""):  # a CSV cell
        harmful = {"true": True, "false": False, "": None}[harmful.strip().lower()]
    if harmful is not None and not isinstance(harmful, bool):
        raise wrong_value(location, "harmful", "true or false (or absent)", harmful)
    return PromptRecord(prompt=prompt, location=location, harmful=harmful)


def parse_chat_demonstration(raw: dict, location: str) -> Demonstration:
    """A chat Demonstration from ``{"messages": [...]}``: every assistant message is trainable."""
    for field in ("prompt", "completion"):
        if has_field(raw, field):
            raise DataError(
                f"{location}: field '{field}': expected no '{field}' next to 'messages' "
                "(use either 'messages' or 'prompt' and 'completion')"
            )
    messages = parse_messages(raw["messages"], location, "messages")
    trainable = [message["role"] == "assistant" for message in messages]
    return Demonstration(messages=messages, trainable=trainable, location=location)


def parse_prompt_completion_demonstration(raw: dict, location: str) -> Demonstration:
    """A Demonstration from ``{"prompt", "completion"}``: plain text, or chat if either is messages."""
    if not has_field(raw, "prompt") and not has_field(raw, "completion"):
        raise missing_field(location, "messages", "a list of messages, or 'prompt' and 'completion'", raw)
    prompt = parse_text(required(raw, "prompt", location, TEXT_EXPECTED), location, "prompt")
    completion = parse_text(required(raw, "completion", location, TEXT_EXPECTED), location, "completion")
    if isinstance(prompt, str) and isinstance(completion, str):
        return Demonstration(prompt=prompt, completion=completion, location=location)
    prompt_messages = as_messages(prompt, "user")
    completion_messages = as_messages(completion, "assistant")
    trainable = [False] * len(prompt_messages) + [m["role"] == "assistant" for m in completion_messages]
    return Demonstration(
        messages=prompt_messages + completion_messages, trainable=trainable, location=location
    )


def parse_demonstration(raw: dict, location: str) -> Demonstration:
    """A Demonstration from ``{"messages"}`` or ``{"prompt", "completion"}`` (see Demonstration)."""
    check_object(raw, location)
    if has_field(raw, "messages"):
        demonstration = parse_chat_demonstration(raw, location)
    else:
        demonstration = parse_prompt_completion_demonstration(raw, location)
    if demonstration.is_chat and not any(demonstration.trainable):
        field = "messages" if has_field(raw, "messages") else "completion"
        raise DataError(
            f"{location}: field '{field}': expected at least one assistant message to learn from, "
            "got none (nothing to learn from)"
        )
    return demonstration


def parse_preference(raw: dict, location: str) -> Preference:
    """A Preference from ``{"prompt"?, "chosen", "rejected", "margin"?, "source"?}``.

    Without a prompt, the prompt is the shared start of chosen and rejected; a pair of Anthropic
    HH transcripts is read as such (see :mod:`rlhfkit.data.hh`).
    """
    check_object(raw, location)
    chosen = parse_text(required(raw, "chosen", location, TEXT_EXPECTED), location, "chosen")
    rejected = parse_text(required(raw, "rejected", location, TEXT_EXPECTED), location, "rejected")
    margin = optional_margin(raw, location)
    source = optional_source(raw, location)
    if has_field(raw, "prompt"):
        given_prompt = parse_text(raw["prompt"], location, "prompt")
        prompt, (chosen, rejected) = unify_forms(
            given_prompt, [chosen, rejected], location, ["chosen", "rejected"]
        )
    elif is_hh_transcript(chosen) and is_hh_transcript(rejected):
        preference = hh_pair_to_preference(chosen, rejected, location)
        return replace(preference, margin=margin, source=source)
    else:
        prompt, chosen, rejected = split_implicit_prompt(chosen, rejected, location)
    return Preference(prompt, chosen, rejected, margin=margin, source=source, location=location)


def parse_ranks(value: Any, response_count: int, location: str) -> list[int]:
    """Checked ranks: one positive integer per response (booleans are not integers)."""
    if not isinstance(value, list):
        raise wrong_value(
            location, "ranks", f"a list of {response_count} positive integers (1 = best)", value
        )
    for index, rank in enumerate(value):
        if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
            raise wrong_value(location, f"ranks[{index}]", RANK_EXPECTED, rank)
    if len(value) != response_count:
        raise DataError(
            f"{location}: field 'ranks': expected one rank per response ({response_count}), "
            f"got {len(value)} ranks"
        )
    return list(value)


def parse_ranking(raw: dict, location: str) -> Ranking:
    """A Ranking from ``{"prompt", "responses", "ranks", "source"?}``."""
    check_object(raw, location)
    prompt = parse_text(required(raw, "prompt", location, TEXT_EXPECTED), location, "prompt")
    responses_expected = "a list of at least 2 responses (strings or message lists)"
    responses = required(raw, "responses", location, responses_expected)
    if not isinstance(responses, list):
        raise wrong_value(location, "responses", responses_expected, responses)
    if len(responses) < 2:
        raise DataError(
            f"{location}: field 'responses': expected at least 2 responses to rank, got {len(responses)}"
        )
    fields = [f"responses[{index}]" for index in range(len(responses))]
    responses = [
        parse_text(response, location, field) for response, field in zip(responses, fields, strict=True)
    ]
    ranks = parse_ranks(
        required(raw, "ranks", location, "a list of positive integers"), len(responses), location
    )
    source = optional_source(raw, location)
    prompt, responses = unify_forms(prompt, responses, location, fields)
    return Ranking(prompt, responses, ranks, source=source, location=location)


def parse_binary_feedback(raw: dict, location: str) -> BinaryFeedback:
    """A BinaryFeedback from ``{"prompt", "completion", "label": true|false, "source"?}``."""
    check_object(raw, location)
    prompt = parse_text(required(raw, "prompt", location, TEXT_EXPECTED), location, "prompt")
    completion = parse_text(required(raw, "completion", location, TEXT_EXPECTED), location, "completion")
    label_expected = "true (a desirable answer) or false (an undesirable one)"
    if "label" not in raw:
        raise missing_field(location, "label", label_expected, raw)
    label = raw["label"]
    if not isinstance(label, bool):
        raise wrong_value(location, "label", label_expected, label)
    prompt, (completion,) = unify_forms(prompt, [completion], location, ["completion"])
    return BinaryFeedback(prompt, completion, label, source=optional_source(raw, location), location=location)


def is_binary_feedback_record(raw: Any) -> bool:
    """Whether a raw record is unpaired feedback (has ``label``) rather than a pair or a ranking."""
    return isinstance(raw, dict) and "label" in raw


def is_ranking_record(raw: Any) -> bool:
    """Whether a raw record is a ranking (has ``responses``) rather than a chosen/rejected pair."""
    return isinstance(raw, dict) and has_field(raw, "responses")


# ---------------------------------------------------------------- rankings to pairs


def ranked_index_pairs(ranks: list[int]) -> list[tuple[int, int]]:
    """(better, worse) index pairs of every untied pair of a ranking (1 = best), in index order
    (i, then j > i): K distinct ranks give K*(K-1)/2 pairs."""
    pairs = []
    for i in range(len(ranks)):
        for j in range(i + 1, len(ranks)):
            if ranks[i] != ranks[j]:
                pairs.append((i, j) if ranks[i] < ranks[j] else (j, i))
    return pairs


def ranking_to_pairs(ranking: Ranking, *, skip_ties: bool = True) -> list[Preference]:
    """Every pair of the ranking's responses as a Preference, the better-ranked one chosen.

    Pairs come in index order (see :func:`ranked_index_pairs`). Tied pairs (equal ranks) cannot be
    written as chosen/rejected, so they are skipped, the InstructGPT convention; with
    ``skip_ties=False`` a tie raises (a DataError, which is a ValueError) instead. Tie-aware losses may
    come later. Pairs carry the ranking's source and location.
    """
    if not skip_ties:
        for i, rank in enumerate(ranking.ranks):
            if rank in ranking.ranks[i + 1 :]:
                j = ranking.ranks.index(rank, i + 1)
                raise DataError(
                    f"{ranking.location}: field 'ranks': responses {i} and {j} are tied (rank {rank}); "
                    "a tie cannot be a chosen/rejected pair (skip ties to drop such pairs)"
                )
    return [
        Preference(ranking.prompt, ranking.responses[better], ranking.responses[worse], source=ranking.source,
                   location=ranking.location)
        for better, worse in ranked_index_pairs(ranking.ranks)
    ]
