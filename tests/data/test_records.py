"""Checking raw records and building PromptRecord, Demonstration, Preference and Ranking."""

import pytest

from rlhfkit.data import (
    DataError,
    Demonstration,
    Preference,
    PromptRecord,
    Ranking,
    parse_demonstration,
    parse_preference,
    parse_prompt,
    parse_ranking,
    ranking_to_pairs,
)

HERE = "prefs.jsonl:7"


def user(content: str) -> dict:
    return {"role": "user", "content": content}


def assistant(content: str) -> dict:
    return {"role": "assistant", "content": content}


def system(content: str) -> dict:
    return {"role": "system", "content": content}


# ---------------------------------------------------------------- prompts


def test_prompt_string_and_messages():
    assert parse_prompt({"prompt": "Hi", "id": 3}, HERE) == PromptRecord("Hi", location=HERE)
    messages = [system("Be brief."), user("Hi")]
    assert parse_prompt({"prompt": messages}, HERE).prompt == messages


def test_prompt_missing_field_lists_present_fields():
    with pytest.raises(DataError) as caught:
        parse_prompt({"promt": "Hi"}, HERE)
    message = str(caught.value)
    assert message.startswith("prefs.jsonl:7: field 'prompt': missing")
    assert "expected a string or a list of" in message
    assert "'promt'" in message


def test_record_that_is_not_an_object():
    with pytest.raises(DataError, match=r"prefs.jsonl:7: expected a record \(a JSON object\), got list"):
        parse_prompt(["Hi"], HERE)


# ---------------------------------------------------------------- message checks


def test_bad_role_names_nested_field():
    messages = [user("a"), assistant("b"), {"role": "human", "content": "c"}]
    with pytest.raises(DataError) as caught:
        parse_prompt({"prompt": messages}, HERE)
    assert str(caught.value) == (
        "prefs.jsonl:7: field 'prompt[2].role': expected one of 'system', 'user', 'assistant', 'tool', "
        "got str ('human')"
    )


def test_missing_content_and_wrong_content_type():
    with pytest.raises(DataError, match=r"field 'messages\[0\]\.content': missing"):
        parse_demonstration({"messages": [{"role": "user"}, assistant("x")]}, HERE)
    with pytest.raises(DataError, match=r"field 'messages\[1\]\.content': expected a string, got int \(5\)"):
        parse_demonstration({"messages": [user("x"), {"role": "assistant", "content": 5}]}, HERE)


def test_message_that_is_not_an_object():
    with pytest.raises(
        DataError, match=r"field 'messages\[0\]': expected a \{\"role\", \"content\"\} message"
    ):
        parse_demonstration({"messages": ["hello"]}, HERE)


def test_empty_messages():
    with pytest.raises(DataError) as caught:
        parse_demonstration({"messages": []}, HERE)
    assert "prefs.jsonl:7: field 'messages': expected a non-empty list of" in str(caught.value)
    assert "got an empty list" in str(caught.value)


def test_wrong_type_shows_type_and_value():
    with pytest.raises(DataError) as caught:
        parse_preference({"prompt": "Q", "chosen": 42, "rejected": "no"}, HERE)
    assert str(caught.value) == (
        'prefs.jsonl:7: field \'chosen\': expected a string or a list of {"role", "content"} messages, '
        "got int (42)"
    )


def test_long_found_values_are_shortened():
    with pytest.raises(DataError) as caught:
        parse_preference({"prompt": "Q", "chosen": {"text": "x" * 500}, "rejected": "no"}, HERE)
    assert "..." in str(caught.value)
    assert len(str(caught.value)) < 200


# ---------------------------------------------------------------- demonstrations


def test_plain_text_demonstration():
    demonstration = parse_demonstration({"prompt": "2+2=", "completion": "4"}, HERE)
    assert demonstration == Demonstration(prompt="2+2=", completion="4", location=HERE)
    assert not demonstration.is_chat


def test_chat_demonstration_trains_on_every_assistant_turn():
    messages = [system("s"), user("a"), assistant("b"), user("c"), assistant("d")]
    demonstration = parse_demonstration({"messages": messages}, HERE)
    assert demonstration.is_chat
    assert demonstration.messages == messages
    assert demonstration.trainable == [False, False, True, False, True]


def test_prompt_completion_messages_train_only_on_completion():
    raw = {"prompt": [user("a"), assistant("b"), user("c")], "completion": [assistant("d")]}
    demonstration = parse_demonstration(raw, HERE)
    assert demonstration.messages == [user("a"), assistant("b"), user("c"), assistant("d")]
    assert demonstration.trainable == [False, False, False, True]


def test_demonstration_mixed_string_and_messages():
    demonstration = parse_demonstration({"prompt": "hi", "completion": [assistant("hello")]}, HERE)
    assert demonstration.messages == [user("hi"), assistant("hello")]
    assert demonstration.trainable == [False, True]
    demonstration = parse_demonstration({"prompt": [user("hi")], "completion": "hello"}, HERE)
    assert demonstration.messages == [user("hi"), assistant("hello")]


def test_demonstration_without_assistant_turn_is_an_error():
    with pytest.raises(DataError) as caught:
        parse_demonstration({"messages": [system("s"), user("hi")]}, HERE)
    assert "prefs.jsonl:7: field 'messages': expected at least one assistant message" in str(caught.value)
    assert "nothing to learn from" in str(caught.value)
    with pytest.raises(DataError, match="field 'completion': expected at least one assistant message"):
        parse_demonstration({"prompt": "hi", "completion": [user("more")]}, HERE)


def test_demonstration_missing_completion():
    with pytest.raises(DataError, match=r"prefs.jsonl:7: field 'completion': missing"):
        parse_demonstration({"prompt": "hi"}, HERE)
    with pytest.raises(DataError, match=r"field 'messages': missing"):
        parse_demonstration({"text": "hi"}, HERE)


# ---------------------------------------------------------------- preferences


def test_preference_with_explicit_prompt_and_extras():
    raw = {"prompt": "Q?", "chosen": " yes", "rejected": " no", "margin": 2, "source": "web", "id": 9}
    assert parse_preference(raw, HERE) == Preference("Q?", " yes", " no", 2.0, "web", HERE)


def test_implicit_string_prompt_does_not_split_words():
    preference = parse_preference({"chosen": "The answer is yes.", "rejected": "The answer is yellow."}, HERE)
    assert preference.prompt == "The answer is "
    assert (preference.chosen, preference.rejected) == ("yes.", "yellow.")


def test_implicit_string_prompt_at_word_end():
    preference = parse_preference({"chosen": "Q: Capital? A: Paris", "rejected": "Q: Capital? A: Rome"}, HERE)
    assert preference.prompt == "Q: Capital? A: "
    assert (preference.chosen, preference.rejected) == ("Paris", "Rome")
    preference = parse_preference({"chosen": "Say hi. Hello!", "rejected": "Say hi. Hello."}, HERE)
    assert (preference.prompt, preference.chosen, preference.rejected) == ("Say hi. Hello", "!", ".")


def test_implicit_string_prompt_when_one_response_is_a_prefix():
    with pytest.raises(DataError) as caught:
        parse_preference({"chosen": "Hi there", "rejected": "Hi there, friend"}, HERE)
    message = str(caught.value)
    assert message.startswith("prefs.jsonl:7: field 'chosen':")
    assert "is a prefix of 'rejected'" in message
    assert "add a 'prompt' field" in message


def test_implicit_string_prompt_with_nothing_shared():
    with pytest.raises(DataError, match="share no leading words"):
        parse_preference({"chosen": "yes", "rejected": "yellow"}, HERE)


def test_implicit_message_prompt():
    chosen = [system("s"), user("q"), assistant("good")]
    rejected = [system("s"), user("q"), assistant("bad"), user("?"), assistant("worse")]
    preference = parse_preference({"chosen": chosen, "rejected": rejected}, HERE)
    assert preference.prompt == [system("s"), user("q")]
    assert preference.chosen == [assistant("good")]
    assert preference.rejected == [assistant("bad"), user("?"), assistant("worse")]


def test_implicit_message_prompt_must_leave_a_response():
    same = [user("q"), assistant("a")]
    with pytest.raises(DataError, match=r"field 'chosen': expected messages after the prompt"):
        parse_preference({"chosen": same, "rejected": [*same, user("more"), assistant("b")]}, HERE)
    with pytest.raises(DataError, match="share no leading messages"):
        parse_preference(
            {"chosen": [user("q1"), assistant("a")], "rejected": [user("q2"), assistant("b")]}, HERE
        )


def test_explicit_prompt_with_full_conversations_is_stripped():
    prompt = [user("q")]
    raw = {
        "prompt": prompt,
        "chosen": [user("q"), assistant("good")],
        "rejected": [user("q"), assistant("bad")],
    }
    preference = parse_preference(raw, HERE)
    assert preference.prompt == prompt
    assert (preference.chosen, preference.rejected) == ([assistant("good")], [assistant("bad")])


def test_explicit_prompt_with_response_messages_only():
    raw = {"prompt": [user("q")], "chosen": [assistant("good")], "rejected": [assistant("bad")]}
    preference = parse_preference(raw, HERE)
    assert (preference.chosen, preference.rejected) == ([assistant("good")], [assistant("bad")])


def test_preference_mixed_string_and_messages():
    preference = parse_preference({"prompt": "q", "chosen": [assistant("good")], "rejected": "bad"}, HERE)
    assert preference.prompt == [user("q")]
    assert preference.chosen == [assistant("good")]
    assert preference.rejected == [assistant("bad")]
    # A string prompt written out as the first message of full conversations is stripped too.
    preference = parse_preference(
        {"prompt": "q", "chosen": [user("q"), assistant("a")], "rejected": "b"}, HERE
    )
    assert preference.chosen == [assistant("a")]


def test_margin_must_be_a_number():
    for margin, shown in ((True, "bool (True)"), ("high", "str ('high')")):
        with pytest.raises(DataError) as caught:
            parse_preference({"prompt": "q", "chosen": "a", "rejected": "b", "margin": margin}, HERE)
        assert str(caught.value) == f"prefs.jsonl:7: field 'margin': expected a number, got {shown}"


def test_margin_must_be_finite():
    with pytest.raises(DataError, match=r"field 'margin': expected a finite number, got float \(nan\)"):
        parse_preference({"prompt": "q", "chosen": "a", "rejected": "b", "margin": float("nan")}, HERE)


def test_source_must_be_a_string():
    with pytest.raises(DataError, match=r"field 'source': expected a string, got int \(1\)"):
        parse_preference({"prompt": "q", "chosen": "a", "rejected": "b", "source": 1}, HERE)


def test_null_optional_fields_are_absent():
    raw = {"prompt": "q", "chosen": "a", "rejected": "b", "margin": None, "source": None}
    assert parse_preference(raw, HERE) == Preference("q", "a", "b", location=HERE)


def test_preference_missing_rejected():
    with pytest.raises(DataError, match=r"prefs.jsonl:7: field 'rejected': missing"):
        parse_preference({"prompt": "q", "chosen": "a"}, HERE)


# ---------------------------------------------------------------- rankings


def ranking_raw(**fields) -> dict:
    return {"prompt": "q", "responses": ["a", "b", "c"], "ranks": [2, 1, 3], **fields}


def test_ranking_parses():
    ranking = parse_ranking(ranking_raw(source="team"), HERE)
    assert ranking == Ranking("q", ["a", "b", "c"], [2, 1, 3], "team", HERE)


def test_ranking_mixed_forms_become_messages():
    ranking = parse_ranking(ranking_raw(responses=["a", [assistant("b")], "c"]), HERE)
    assert ranking.prompt == [user("q")]
    assert ranking.responses == [[assistant("a")], [assistant("b")], [assistant("c")]]


def test_ranks_and_responses_length_mismatch():
    with pytest.raises(DataError) as caught:
        parse_ranking(ranking_raw(ranks=[1, 2]), HERE)
    assert (
        str(caught.value) == "prefs.jsonl:7: field 'ranks': expected one rank per response (3), got 2 ranks"
    )


@pytest.mark.parametrize(
    ("rank", "shown"),
    [(0, "int (0)"), (-1, "int (-1)"), (1.5, "float (1.5)"), (True, "bool (True)"), ("1", "str ('1')")],
)
def test_bad_rank(rank, shown):
    with pytest.raises(DataError) as caught:
        parse_ranking(ranking_raw(ranks=[1, rank, 3]), HERE)
    assert str(caught.value) == (
        f"prefs.jsonl:7: field 'ranks[1]': expected a positive integer (1 = best), got {shown}"
    )


def test_single_response():
    with pytest.raises(DataError) as caught:
        parse_ranking(ranking_raw(responses=["a"], ranks=[1]), HERE)
    assert (
        str(caught.value) == "prefs.jsonl:7: field 'responses': expected at least 2 responses to rank, got 1"
    )


def test_responses_not_a_list():
    with pytest.raises(DataError, match=r"field 'responses': expected a list of at least 2 responses"):
        parse_ranking(ranking_raw(responses="a"), HERE)
    with pytest.raises(DataError, match=r"field 'responses\[1\]': expected a string or a list"):
        parse_ranking(ranking_raw(responses=["a", 7, "c"]), HERE)


# ---------------------------------------------------------------- ranking_to_pairs


def test_three_distinct_ranks_give_three_pairs():
    ranking = Ranking("q", ["a", "b", "c"], [2, 1, 3], source="s", location=HERE)
    pairs = ranking_to_pairs(ranking)
    assert [(p.chosen, p.rejected) for p in pairs] == [("b", "a"), ("a", "c"), ("b", "c")]
    assert all(p.prompt == "q" and p.source == "s" and p.location == HERE for p in pairs)


def test_four_responses_give_six_pairs():
    pairs = ranking_to_pairs(Ranking("q", ["a", "b", "c", "d"], [4, 3, 2, 1]))
    assert len(pairs) == 6
    assert [(p.chosen, p.rejected) for p in pairs] == [
        ("b", "a"), ("c", "a"), ("d", "a"), ("c", "b"), ("d", "b"), ("d", "c"),
    ]  # fmt: skip


def test_ties_are_skipped():
    pairs = ranking_to_pairs(Ranking("q", ["a", "b", "c"], [1, 1, 2]))
    assert [(p.chosen, p.rejected) for p in pairs] == [("a", "c"), ("b", "c")]


def test_ties_raise_when_not_skipped():
    ranking = Ranking("q", ["a", "b", "c"], [1, 1, 2], location=HERE)
    with pytest.raises(ValueError, match=r"prefs.jsonl:7: .*responses 0 and 1 are tied"):
        ranking_to_pairs(ranking, skip_ties=False)
    assert len(ranking_to_pairs(Ranking("q", ["a", "b"], [1, 2]), skip_ties=False)) == 1
