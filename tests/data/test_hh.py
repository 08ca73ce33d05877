"""Anthropic HH transcripts: parsing, pairing into preferences, and the four real test splits.

The real files hold red-team text (harmless-base): these tests check structure and never print
record contents.
"""

import gzip
import logging
from pathlib import Path

import pytest

from rlhfkit.data import (
    DataError,
    hh_pair_to_preference,
    is_hh_transcript,
    load_preferences,
    parse_hh_transcript,
    parse_preference,
)

HH_DIR = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "hh-rlhf"
HH_FILES = {
    "harmless-base-test.jsonl.gz": 2312,
    "helpful-base-test.jsonl.gz": 2354,
    "helpful-online-test.jsonl.gz": 1137,
    "helpful-rejection-sampled-test.jsonl.gz": 2749,
}
SPEAKER = {"user": "Human", "assistant": "Assistant"}


def user(content: str) -> dict:
    return {"role": "user", "content": content}


def assistant(content: str) -> dict:
    return {"role": "assistant", "content": content}


def render(messages: list[dict]) -> str:
    """HH transcript text of messages."""
    return "".join(f"\n\n{SPEAKER[m['role']]}: {m['content']}" for m in messages)


def squeeze(text: str) -> str:
    """``text`` with every whitespace run made one space (contents are stripped when parsed)."""
    return " ".join(text.split())


# ---------------------------------------------------------------- hand-written examples


def test_is_hh_transcript():
    assert is_hh_transcript("\n\nHuman: hi\n\nAssistant: hello")
    assert not is_hh_transcript("Human: hi\n\nAssistant: hello")
    assert not is_hh_transcript(" \n\nHuman: hi")
    assert not is_hh_transcript(["\n\nHuman: hi"])


def test_parse_hh_transcript():
    text = "\n\nHuman: What is 2+2?\n\nAssistant:  It is 4. \n\nHuman: Thanks\n\nAssistant:"
    assert parse_hh_transcript(text) == [
        user("What is 2+2?"),
        assistant("It is 4."),
        user("Thanks"),
        assistant(""),
    ]


def test_parse_hh_transcript_rejects_text_before_first_turn():
    with pytest.raises(DataError, match="not an HH transcript"):
        parse_hh_transcript("Hello\n\nHuman: hi")


def test_made_up_human_turn_inside_a_reply():
    shared = "\n\nHuman: Tell me a joke\n\nAssistant: Why did the chicken cross the road?\n\nHuman: Why?"
    chosen = (
        shared + "\n\nAssistant: To get to the other side.\n\nHuman: Ha!\n\nAssistant: Glad you liked it."
    )
    rejected = shared + "\n\nAssistant: I don't know. Human: tell me"
    preference = hh_pair_to_preference(chosen, rejected, "hh.jsonl:3")
    assert preference.prompt == [
        user("Tell me a joke"),
        assistant("Why did the chicken cross the road?"),
        user("Why?"),
    ]
    assert preference.chosen == [
        assistant("To get to the other side.\n\nHuman: Ha!\n\nAssistant: Glad you liked it.")
    ]
    assert preference.rejected == [assistant("I don't know. Human: tell me")]
    assert preference.location == "hh.jsonl:3"


def test_replies_sharing_their_first_words():
    chosen = "\n\nHuman: Hi\n\nAssistant: Sure, here it is."
    rejected = "\n\nHuman: Hi\n\nAssistant: Sure, no."
    preference = hh_pair_to_preference(chosen, rejected)
    assert preference.prompt == [user("Hi")]
    assert (preference.chosen, preference.rejected) == (
        [assistant("Sure, here it is.")],
        [assistant("Sure, no.")],
    )


def test_empty_reply_is_kept():
    preference = hh_pair_to_preference("\n\nHuman: Hi\n\nAssistant: Hello", "\n\nHuman: Hi\n\nAssistant:")
    assert preference.rejected == [assistant("")]
    assert preference.chosen == [assistant("Hello")]


def test_pair_without_a_shared_assistant_marker():
    with pytest.raises(DataError) as caught:
        hh_pair_to_preference("\n\nHuman: a\n\nAssistant: x", "\n\nHuman: b\n\nAssistant: y", "hh.jsonl:9")
    assert str(caught.value).startswith(
        "hh.jsonl:9: field 'chosen': expected HH transcripts that share a prompt"
    )


def test_prompt_must_end_with_a_human_turn():
    chosen = "\n\nHuman: q\n\nAssistant: a\n\nAssistant: x"
    rejected = "\n\nHuman: q\n\nAssistant: a\n\nAssistant: y"
    with pytest.raises(
        DataError, match="hh.jsonl:2: .*expected the HH prompt .* to end\\s+with a human turn"
    ):
        hh_pair_to_preference(chosen, rejected, "hh.jsonl:2")


def test_parse_preference_detects_hh_and_keeps_margin():
    raw = {
        "chosen": "\n\nHuman: q\n\nAssistant: yes",
        "rejected": "\n\nHuman: q\n\nAssistant: no",
        "margin": 1,
    }
    preference = parse_preference(raw, "x.jsonl:1")
    assert (preference.prompt, preference.margin) == ([user("q")], 1.0)
    # With an explicit prompt, HH-looking strings are plain text, not transcripts.
    explicit = parse_preference({"prompt": "p", **raw}, "x.jsonl:2")
    assert explicit.chosen == raw["chosen"]


# ---------------------------------------------------------------- the real test splits


def count_lines(path: Path) -> int:
    with gzip.open(path, "rt", encoding="utf-8") as file:
        return sum(1 for line in file if line.strip())


def read_originals(path: Path) -> list[tuple[str, str]]:
    import json

    with gzip.open(path, "rt", encoding="utf-8") as file:
        records = [json.loads(line) for line in file if line.strip()]
    return [(record["chosen"], record["rejected"]) for record in records]


@pytest.mark.parametrize("name", sorted(HH_FILES))
def test_real_hh_file(name, caplog):
    path = HH_DIR / name
    if not path.exists():
        pytest.skip(f"HH-RLHF data not found at {HH_DIR}")
    with caplog.at_level(logging.WARNING, logger="rlhfkit.data"):
        preferences = load_preferences(path)
    assert caplog.records == []  # nothing skipped
    assert len(preferences) == count_lines(path) == HH_FILES[name]
    assert [p.location for p in preferences] == [f"{path}:{n}" for n in range(1, len(preferences) + 1)]
    originals = read_originals(path)
    for preference, (chosen, rejected) in zip(preferences, originals, strict=True):
        where = preference.location
        assert preference.prompt[-1]["role"] == "user", where
        assert [m["role"] for m in preference.chosen] == ["assistant"], where
        assert [m["role"] for m in preference.rejected] == ["assistant"], where
        # Same prompt for both: it renders (up to whitespace, which parsing strips) to a prefix of each.
        prompt_text = render(preference.prompt)
        squeezed_prompt = squeeze(prompt_text + "\n\nAssistant:")
        for response, original in ((preference.chosen, chosen), (preference.rejected, rejected)):
            squeezed_original = squeeze(original)
            assert squeezed_original.startswith(squeezed_prompt), where
            # Nothing lost: prompt and response render back to the whole transcript.
            assert squeeze(prompt_text + render(response)) == squeezed_original, where
