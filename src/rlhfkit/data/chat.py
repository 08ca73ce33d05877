"""Chat templates and tokenization with a loss mask.

Two forms of text, as in the records:
- plain strings: the prompt and the answer are concatenated as they are (the user owns the format),
  and EOS is appended to the answer so the model learns to stop;
- chat messages: rendered with the tokenizer's chat template; a tokenizer without one gets
  :data:`DEFAULT_CHAT_TEMPLATE`, which is saved with every model rlhfkit writes, so training,
  sampling and scoring always agree on the format.

The default template renders ``[{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]``
as ``"<|user|>\\nHi\\n<|assistant|>\\nHello<EOS>"``: a role tag line per message, then its text;
assistant messages end with the EOS token.

Tokenization keeps generation and training consistent: a sequence is cut into segments (prompt text,
answer text, ...), each segment is tokenized on its own and the ids are concatenated. The prompt
segment is therefore tokenized exactly as ``encode_prompt`` tokenizes it for sampling, and the loss
mask falls on token boundaries by construction.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
from transformers import PreTrainedTokenizerBase

DEFAULT_CHAT_TEMPLATE = (
    # HF renders templates with trim_blocks, which eats a newline right after a tag: newlines are
    # therefore written as expressions.
    "{% for message in messages %}"
    "{% if not loop.first %}{{ '\\n' }}{% endif %}"
    "{{ '<|' + message['role'] + '|>\\n' + message['content'] }}"
    "{% if message['role'] == 'assistant' %}{{ eos_token }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{% if messages %}{{ '\\n' }}{% endif %}{{ '<|assistant|>\\n' }}{% endif %}"
)

IGNORE_INDEX = -100  # label value of tokens that carry no loss


def ensure_chat_template(tokenizer: PreTrainedTokenizerBase) -> None:
    """Give ``tokenizer`` the default chat template when it has none of its own."""
    if not getattr(tokenizer, "chat_template", None):
        tokenizer.chat_template = DEFAULT_CHAT_TEMPLATE


def render_messages(tokenizer: PreTrainedTokenizerBase, messages: list[dict], *, add_generation_prompt: bool) -> str:
    """The chat template's text for ``messages``."""
    ensure_chat_template(tokenizer)
    return tokenizer.apply_chat_template(
        list(messages), tokenize=False, add_generation_prompt=add_generation_prompt
    )


def render_prompt(tokenizer: PreTrainedTokenizerBase, prompt: str | list[dict]) -> str:
    """The text a model continues: a string as it is, messages through the template plus the
    assistant's generation prompt."""
    if isinstance(prompt, str):
        return prompt
    return render_messages(tokenizer, prompt, add_generation_prompt=True)


def _encode_text(tokenizer: PreTrainedTokenizerBase, text: str, first: bool, from_template: bool) -> list[int]:
    # Templates write their special tokens (BOS, role markers) into the text themselves; a plain string
    # prompt gets the tokenizer's usual special tokens (e.g. Llama's BOS) at the start of the sequence.
    add_special = first and not from_template
    return tokenizer(text, add_special_tokens=add_special)["input_ids"] if text else []


def encode_prompt(tokenizer: PreTrainedTokenizerBase, prompt: str | list[dict]) -> list[int]:
    """Token ids of a prompt, exactly as they start a training sequence with that prompt."""
    return _encode_text(tokenizer, render_prompt(tokenizer, prompt), True, not isinstance(prompt, str))


@dataclass
class TokenizedExample:
    input_ids: list[int]
    labels: list[int]  # IGNORE_INDEX where no loss; the token id where the model must predict it
    truncated: bool = False

    @functools.cached_property
    def num_target_tokens(self) -> int:
        """Tokens that carry a label (counted once: the training loop asks at every step)."""
        return len(self.labels) - self.labels.count(IGNORE_INDEX)


def chat_segments(
    tokenizer: PreTrainedTokenizerBase, messages: list[dict], trainable: list[bool]
) -> list[tuple[str, bool]]:
    """Cut the rendered conversation into (text, carries_loss) segments.

    A trainable assistant message's segment is what the template adds when that message is appended
    to the conversation after the generation prompt: its content and end-of-turn marker.
    """
    segments: list[tuple[str, bool]] = []
    done = ""  # text already assigned to segments
    for i, message in enumerate(messages):
        if not (trainable[i] and message["role"] == "assistant"):
            continue
        before = render_messages(tokenizer, messages[:i], add_generation_prompt=True) if i else render_prompt(
            tokenizer, []
        )
        through = render_messages(tokenizer, messages[: i + 1], add_generation_prompt=False)
        if not before.startswith(done) or not through.startswith(before):
            raise ValueError(
                "the chat template does not render conversations incrementally (an earlier turn changes "
                "when a later one is added), so the assistant turns cannot be located for the loss mask"
            )
        segments.append((before[len(done):], False))
        segments.append((through[len(before):], True))
        done = through
    full = render_messages(tokenizer, messages, add_generation_prompt=False)
    if not full.startswith(done):
        raise ValueError("the chat template renders the whole conversation differently from its prefixes")
    if full[len(done):]:
        segments.append((full[len(done):], False))
    return [(text, loss) for text, loss in segments if text]


def encode_segments(
    tokenizer: PreTrainedTokenizerBase, segments: list[tuple[str, bool]], *, from_template: bool, append_eos: bool
) -> TokenizedExample:
    """Tokenize each segment on its own and concatenate; labels are set on the loss segments."""
    input_ids: list[int] = []
    labels: list[int] = []
    for index, (text, carries_loss) in enumerate(segments):
        ids = _encode_text(tokenizer, text, index == 0, from_template)
        input_ids.extend(ids)
        labels.extend(ids if carries_loss else [IGNORE_INDEX] * len(ids))
    if append_eos:
        input_ids.append(tokenizer.eos_token_id)
        labels.append(tokenizer.eos_token_id)
    return TokenizedExample(input_ids, labels)


def truncate(example: TokenizedExample, max_length: int) -> TokenizedExample:
    """Keep the first ``max_length`` tokens (marking the example as truncated when cut)."""
    if len(example.input_ids) <= max_length:
        return example
    return TokenizedExample(example.input_ids[:max_length], example.labels[:max_length], truncated=True)


def tokenize_demonstration(tokenizer: PreTrainedTokenizerBase, demo, max_length: int) -> TokenizedExample:
    """Tokenize a :class:`~rlhfkit.data.records.Demonstration` with loss on the answer tokens only."""
    if demo.is_chat:
        segments = chat_segments(tokenizer, demo.messages, demo.trainable)
        example = encode_segments(tokenizer, segments, from_template=True, append_eos=False)
    else:
        segments = [(demo.prompt, False), (demo.completion, True)]
        example = encode_segments(tokenizer, segments, from_template=False, append_eos=True)
    return truncate(example, max_length)


def _prompt_length(example: TokenizedExample) -> int:
    """Tokens before the first one that carries a label."""
    return next((i for i, label in enumerate(example.labels) if label != IGNORE_INDEX), 0)


def truncate_prompt_first(example: TokenizedExample, max_length: int) -> TokenizedExample:
    """Fit ``max_length`` by dropping the prompt's first tokens (its end, next to the answer, stays),
    then, if the answer alone is too long, the answer's last tokens. Used for responses that are
    compared or scored: cutting the answers instead would make two answers to a long prompt identical."""
    excess = len(example.input_ids) - max_length
    if excess <= 0:
        return example
    drop = min(excess, _prompt_length(example))
    cut = TokenizedExample(example.input_ids[drop:], example.labels[drop:], truncated=True)
    return truncate(cut, max_length)


def tokenize_prompt_response(
    tokenizer: PreTrainedTokenizerBase, prompt: str | list[dict], response: str | list[dict], max_length: int
) -> TokenizedExample:
    """Tokenize prompt + one response (preference pairs, scoring) with labels on the response only.

    Too long a sequence loses the start of its prompt first (see :func:`truncate_prompt_first`)."""
    if isinstance(prompt, str) and isinstance(response, str):
        segments = [(prompt, False), (response, True)]
        example = encode_segments(tokenizer, segments, from_template=False, append_eos=True)
    else:
        prompt_messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
        response_messages = (
            [{"role": "assistant", "content": response}] if isinstance(response, str) else list(response)
        )
        messages = prompt_messages + response_messages
        trainable = [False] * len(prompt_messages) + [True] * len(response_messages)
        example = encode_segments(tokenizer, chat_segments(tokenizer, messages, trainable), from_template=True,
                                  append_eos=False)
    return truncate_prompt_first(example, max_length)


def truncate_prompt_first_together(examples: list[TokenizedExample], max_length: int) -> list[TokenizedExample]:
    """:func:`truncate_prompt_first` for several answers to one prompt: every answer loses the same
    prompt tokens (as many as the longest needs), so the answers are still compared in one context,
    and their common prompt tokens can be computed once (:mod:`rlhfkit.models.prefix`)."""
    excess = max(len(e.input_ids) for e in examples) - max_length
    if excess <= 0:
        return examples
    drop = min(excess, *(_prompt_length(e) for e in examples))
    return [truncate(TokenizedExample(e.input_ids[drop:], e.labels[drop:], truncated=drop > 0 or e.truncated),
                     max_length) for e in examples]


def pad_batch(sequences: list[list[int]], pad_token_id: int, side: str = "right") -> tuple[torch.Tensor, torch.Tensor]:
    """Pad token lists into (input_ids, attention_mask) on the given side."""
    width = max(len(s) for s in sequences)
    input_ids = torch.full((len(sequences), width), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        span = slice(0, len(seq)) if side == "right" else slice(width - len(seq), width)
        input_ids[row, span] = torch.tensor(seq, dtype=torch.long)
        attention_mask[row, span] = 1
    return input_ids, attention_mask
