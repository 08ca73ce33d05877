"""Tokenization with loss masks: the answers, and only the answers, carry labels."""

from rlhfkit.data import Demonstration
from rlhfkit.data.chat import (
    DEFAULT_CHAT_TEMPLATE,
    IGNORE_INDEX,
    encode_prompt,
    render_messages,
    tokenize_demonstration,
    tokenize_prompt_response,
)

CHAT = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "What is the capital of France?"},
    {"role": "assistant", "content": "The capital of France is Paris."},
    {"role": "user", "content": "And of Japan?"},
    {"role": "assistant", "content": "Tokyo."},
]


def labelled_text(tokenizer, example):
    return tokenizer.decode([t for t in example.labels if t != IGNORE_INDEX])


def test_default_template_renders_documented_format(tokenizer):
    assert tokenizer.chat_template == DEFAULT_CHAT_TEMPLATE  # the tiny tokenizer has none of its own
    text = render_messages(tokenizer, CHAT[1:3], add_generation_prompt=False)
    assert text == "<|user|>\nWhat is the capital of France?\n<|assistant|>\nThe capital of France is Paris.<|endoftext|>"
    prompt = render_messages(tokenizer, CHAT[1:2], add_generation_prompt=True)
    assert prompt == "<|user|>\nWhat is the capital of France?\n<|assistant|>\n"


def test_multi_turn_labels_cover_exactly_the_assistant_turns(tokenizer):
    demo = Demonstration(messages=CHAT, trainable=[False, False, True, False, True])
    example = tokenize_demonstration(tokenizer, demo, max_length=512)
    # labels are either ignored or equal to the input token at that position
    assert all(label in (IGNORE_INDEX, token) for label, token in zip(example.labels, example.input_ids, strict=True))
    spans = []  # contiguous labelled spans, decoded
    current = []
    for token, label in zip(example.input_ids, example.labels, strict=True):
        if label != IGNORE_INDEX:
            current.append(token)
        elif current:
            spans.append(tokenizer.decode(current))
            current = []
    if current:
        spans.append(tokenizer.decode(current))
    assert spans == ["The capital of France is Paris.<|endoftext|>", "Tokyo.<|endoftext|>"]
    # the whole sequence is the rendered conversation
    assert tokenizer.decode(example.input_ids) == render_messages(tokenizer, CHAT, add_generation_prompt=False)


def test_only_final_turn_trainable(tokenizer):
    demo = Demonstration(messages=CHAT, trainable=[False, False, False, False, True])
    example = tokenize_demonstration(tokenizer, demo, max_length=512)
    assert labelled_text(tokenizer, example) == "Tokyo.<|endoftext|>"


def test_plain_text_demonstration_gets_eos_and_masked_prompt(tokenizer):
    demo = Demonstration(prompt="Question: 2+2?\nAnswer:", completion=" 4")
    example = tokenize_demonstration(tokenizer, demo, max_length=512)
    assert example.input_ids[-1] == tokenizer.eos_token_id
    assert labelled_text(tokenizer, example) == " 4<|endoftext|>"
    prompt_ids = encode_prompt(tokenizer, demo.prompt)
    assert example.input_ids[: len(prompt_ids)] == prompt_ids
    assert all(label == IGNORE_INDEX for label in example.labels[: len(prompt_ids)])


def test_training_sequence_starts_with_the_sampling_prompt(tokenizer):
    """Generation and training must see the same prompt tokens."""
    example = tokenize_prompt_response(tokenizer, CHAT[:2], "Paris.", max_length=512)
    prompt_ids = encode_prompt(tokenizer, CHAT[:2])
    assert example.input_ids[: len(prompt_ids)] == prompt_ids
    assert labelled_text(tokenizer, example) == "Paris.<|endoftext|>"


def test_truncation_is_marked(tokenizer):
    demo = Demonstration(prompt="a " * 50, completion="b " * 50)
    example = tokenize_demonstration(tokenizer, demo, max_length=16)
    assert len(example.input_ids) == 16 and example.truncated


def test_prompt_response_truncation_keeps_the_answer(tokenizer):
    long_prompt = [{"role": "user", "content": "tell me " * 40 + "the capital of Peru?"}]
    example = tokenize_prompt_response(tokenizer, long_prompt, "Lima.", max_length=24)
    assert len(example.input_ids) == 24 and example.truncated
    assert labelled_text(tokenizer, example) == "Lima.<|endoftext|>"  # the whole answer survives
    assert tokenizer.decode(example.input_ids).endswith("Peru?\n<|assistant|>\nLima.<|endoftext|>")
    # an answer longer than max_length keeps its start
    example = tokenize_prompt_response(tokenizer, "Q:", " a" * 40, max_length=10)
    assert len(example.input_ids) == 10 and all(label != -100 for label in example.labels)
