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

Tokenization keeps generation and training consistent:

- a prompt is tokenized exactly as ``encode_prompt`` tokenizes it for sampling, generation prompt
  included; in a conversation, each trainable assistant turn follows the tokens that
  ``encode_prompt`` gives the messages before it (checked, and warned about where a tokenizer merges
  tokens across a turn's end);
- an assistant turn carries the loss on its text through the template's end-of-turn token (Llama 3's
  ``<|eot_id|>``, ChatML's ``<|im_end|>``, Gemma's ``<end_of_turn>``, Mistral's ``</s>``:
  :func:`end_of_turn_token`), and on nothing the template writes after it (ChatML's and Gemma's
  newline), so an answer ends where sampling stops; ``models.load_tokenizer`` makes that token the
  tokenizer's EOS (:func:`use_end_of_turn_as_eos`), the one sampling stops at first (the EOS it
  replaces stops it too: :mod:`rlhfkit.data.stop_tokens`);
- a template that renders earlier turns differently once later ones follow (Mistral v0.3 writes the
  system message into the last user turn only), so that no one sequence matches every turn's
  sampling prompt, trains each assistant turn as its own sequence: its sampling prompt, then the turn
  (:func:`encode_chat_examples`);
- a template that ends assistant turns with no special token, or that writes even the message a turn
  answers differently once the turn follows (so not even that turn alone can follow its sampling
  prompt), is refused with the reason.
"""

from __future__ import annotations

import functools
import logging
import weakref
from dataclasses import dataclass

import torch
from transformers import PreTrainedTokenizerBase

from rlhfkit.data.stop_tokens import add_stop_token_ids

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

log = logging.getLogger("rlhfkit.data")


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


def special_token_ids(tokenizer: PreTrainedTokenizerBase) -> set[int]:
    """Ids of the tokenizer's special tokens: BOS, EOS, padding, and every added token marked special."""
    ids = set(tokenizer.all_special_ids)
    ids.update(i for i, token in tokenizer.added_tokens_decoder.items() if token.special)
    return ids


_PROBE = "rlhfkit probe answer"
_END_OF_TURN: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # tokenizer -> (template, token)


def end_of_turn_token(tokenizer: PreTrainedTokenizerBase) -> str | None:
    """The special token the chat template writes after an assistant message's text (its first special
    token there), None when it writes none: Llama 3's ``<|eot_id|>``, ChatML's ``<|im_end|>`` (Qwen),
    Gemma's ``<end_of_turn>``, EOS for Mistral's and rlhfkit's default template. Cached per tokenizer
    and template."""
    ensure_chat_template(tokenizer)
    cached = _END_OF_TURN.get(tokenizer)
    if cached is not None and cached[0] == tokenizer.chat_template:
        return cached[1]
    probe = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": _PROBE}]
    text = render_messages(tokenizer, probe, add_generation_prompt=False)
    after = text[text.rfind(_PROBE) + len(_PROBE):] if _PROBE in text else ""
    specials = special_token_ids(tokenizer)
    first = next((i for i in tokenizer(after, add_special_tokens=False)["input_ids"] if i in specials), None)
    token = tokenizer.convert_ids_to_tokens(first) if first is not None else None
    _END_OF_TURN[tokenizer] = (tokenizer.chat_template, token)
    return token


def use_end_of_turn_as_eos(tokenizer: PreTrainedTokenizerBase) -> None:
    """Make the template's end-of-turn token the tokenizer's EOS (a chat model's answer ends there: it is
    the token training teaches and sampling stops at first), logging the change. The EOS it replaces
    stays a stop token (:func:`~rlhfkit.data.stop_tokens.stop_token_ids`): the model may still write it."""
    token = end_of_turn_token(tokenizer)
    if token is not None and token != tokenizer.eos_token:
        log.info("the chat template ends assistant turns with %s: it becomes the EOS (was %s) that answers are "
                 "trained to end with; sampling stops at either", token, tokenizer.eos_token)
        original = tokenizer.eos_token_id
        tokenizer.eos_token = token
        add_stop_token_ids(tokenizer, original)


def _generation_prompt(tokenizer: PreTrainedTokenizerBase, messages: list[dict]) -> str:
    if messages:
        return render_messages(tokenizer, messages, add_generation_prompt=True)
    try:  # an assistant message first: some templates cannot render an empty conversation
        return render_messages(tokenizer, [], add_generation_prompt=True)
    except Exception:
        return ""


def encode_chat_examples(tokenizer: PreTrainedTokenizerBase, messages: list[dict], trainable: list[bool], *,
                         keep_trailing: bool) -> list[TokenizedExample]:
    """Tokenize a conversation with labels on its trainable assistant turns, each through its
    end-of-turn token (:func:`end_of_turn_token`), and on nothing else: one sequence, or one per turn
    for a template that rewrites earlier turns.

    Each such turn comes after the tokens that :func:`encode_prompt` gives the messages before it (what
    sampling would continue). Where every such prompt starts the whole conversation's rendering, that
    rendering is the one sequence (:func:`_one_sequence`). A template that writes the conversation
    before a turn differently once later messages follow (Mistral v0.3 writes the system message into
    the last user turn only, so a prompt has it where the whole conversation has not) gives one
    sequence per trainable turn instead: its sampling prompt, then the turn (:func:`_turn_example`),
    exactly what sampling sees and what it must write."""
    end_text = end_of_turn_token(tokenizer)
    if end_text is None:
        raise ValueError("the chat template ends assistant turns with no special token, so a model trained with "
                         "it could never learn to stop: give it one (e.g. {{ eos_token }} after assistant messages)")
    turns = [i for i, message in enumerate(messages) if trainable[i] and message["role"] == "assistant"]
    prompts = {i: _generation_prompt(tokenizer, messages[:i]) for i in turns}
    full = render_messages(tokenizer, messages, add_generation_prompt=False)
    example = _one_sequence(tokenizer, full, prompts, end_text, keep_trailing)
    if example is not None:
        return [example]
    return [_turn_example(tokenizer, messages, i, prompts[i], end_text) for i in turns]


def _one_sequence(tokenizer: PreTrainedTokenizerBase, full: str, prompts: dict[int, str], end_text: str,
                  keep_trailing: bool) -> TokenizedExample | None:
    """The whole rendering ``full`` with labels on the turns after ``prompts`` (message index -> its
    sampling prompt), or None when a prompt does not start ``full`` past the turn before it. The turn's
    text is taken from ``full``. With ``keep_trailing`` the text the template writes after the last
    labelled turn (later messages, a newline) ends the sequence unlabelled; without it the sequence
    ends with the turn's end-of-turn token, as a sampled answer does."""
    ids: list[int] = []
    labels: list[int] = []
    done = 0  # characters of ``full`` already tokenized
    for i, before in prompts.items():
        if len(before) < done or not full.startswith(before):
            return None
        context = _encode_text(tokenizer, before, True, True)
        if context[: len(ids)] == ids:
            gap = context[len(ids):]
        else:
            _warn_merges()
            gap = _encode_text(tokenizer, before[done:], not ids, True)
        end = full.find(end_text, len(before))
        if end < 0:
            raise ValueError(f"assistant message {i} does not end with the template's end-of-turn token {end_text}")
        end += len(end_text)
        answer = _encode_text(tokenizer, full[len(before) : end], not ids and not gap, True)
        ids += gap + answer
        labels += [IGNORE_INDEX] * len(gap) + answer
        done = end
    rest = full[done:] if keep_trailing or done == 0 else ""
    if rest:
        trailing = _encode_text(tokenizer, rest, not ids, True)
        ids += trailing
        labels += [IGNORE_INDEX] * len(trailing)
    return TokenizedExample(ids, labels)


def _turn_example(tokenizer: PreTrainedTokenizerBase, messages: list[dict], i: int, prompt: str,
                  end_text: str) -> TokenizedExample:
    """Assistant message ``i`` as its own sequence: its sampling prompt ``prompt``, then the turn as the
    template writes it after the message it answers, labelled through its end-of-turn token."""
    through = render_messages(tokenizer, messages[: i + 1], add_generation_prompt=False)
    start = _answer_start(through, prompt, messages[:i], end_text)
    if start is None:
        raise ValueError(
            f"the chat template renders the conversation before message {i} differently once the later messages "
            "follow, and the message it answers too, so not even the turn alone can follow the prompt that "
            "sampling would use (rlhfkit trains a turn after its exact sampling prompt)")
    end = through.find(end_text, start)
    if end < 0:
        raise ValueError(f"assistant message {i} does not end with the template's end-of-turn token {end_text}")
    context = _encode_text(tokenizer, prompt, True, True)
    answer = _encode_text(tokenizer, through[start : end + len(end_text)], not context, True)
    return TokenizedExample(context + answer, [IGNORE_INDEX] * len(context) + answer)


def _answer_start(through: str, prompt: str, earlier: list[dict], end_text: str) -> int | None:
    """Where the answer starts in ``through`` (the rendering that ends with it), for it to follow
    ``prompt`` (the ``earlier`` messages with the generation prompt) as sampling sees it: right after
    ``prompt`` when ``through`` starts with it; otherwise right after the last place, before the
    answer's end-of-turn token, where ``through`` writes what ``prompt`` ends with from the text of the
    message the answer replies to on (that text, its turn's closing, the generation prompt: what the
    answer directly follows). None when ``through`` writes none of that as ``prompt`` does."""
    if through.startswith(prompt):
        return len(prompt)
    answered = next((m for m in reversed(earlier) if m["role"] != "assistant"), None)
    text = answered["content"].strip() if answered is not None and isinstance(answered.get("content"), str) else ""
    at = prompt.rfind(text) if text else -1
    if at < 0:
        return None
    tail = prompt[at:]
    found = through.rfind(tail, 0, max(through.rfind(end_text), 0))
    return None if found < 0 else found + len(tail)


@functools.cache
def _warn_merges() -> None:
    log.warning("the tokenizer merges tokens across the end of an assistant turn, so a later turn's context "
                    "in training differs slightly from the tokens sampling would see")


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
    """Tokenize a :class:`~rlhfkit.data.records.Demonstration` as one sequence with loss on the answer
    tokens only (a ValueError for a conversation that needs one per turn: see
    :func:`tokenize_demonstration_examples`)."""
    examples = tokenize_demonstration_examples(tokenizer, demo, max_length)
    if len(examples) > 1:
        raise ValueError("the chat template renders earlier turns differently once later ones follow, so this "
                         "conversation trains as one sequence per assistant turn: use tokenize_demonstration_examples")
    return examples[0]


def tokenize_demonstration_examples(tokenizer: PreTrainedTokenizerBase, demo, max_length: int) -> list[TokenizedExample]:
    """A :class:`~rlhfkit.data.records.Demonstration` as training sequences with loss on the answer
    tokens only, each cut to ``max_length``: one, or one per trainable assistant turn where the chat
    template rewrites earlier turns (:func:`encode_chat_examples`)."""
    if demo.is_chat:
        examples = encode_chat_examples(tokenizer, demo.messages, demo.trainable, keep_trailing=True)
    else:
        segments = [(demo.prompt, False), (demo.completion, True)]
        examples = [encode_segments(tokenizer, segments, from_template=False, append_eos=True)]
    return [truncate(example, max_length) for example in examples]


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
        examples = encode_chat_examples(tokenizer, messages, trainable, keep_trailing=False)
        if len(examples) > 1:
            raise ValueError("the chat template renders earlier turns differently once later ones follow, so a "
                             "response of several assistant turns cannot be one sequence after its prompt")
        [example] = examples
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
