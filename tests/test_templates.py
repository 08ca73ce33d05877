"""Real chat templates: test tokenizers carrying the Jinja templates that Llama 3, Qwen 2.5, Qwen 3,
Gemma 2, Gemma 3 and Mistral publish (the strings below, as in their tokenizer_config.json), with
their special tokens. With each: the template's end-of-turn token becomes the EOS; a multi-turn
conversation's labels cover exactly its assistant turns, each through that token; every assistant
turn follows the very tokens that sampling's prompt (generation prompt included) has; the DPO/RM
prompt/answer split is the sampling prompt plus the answer; and a model trained on one
conversation samples the answer and stops at that token."""

from __future__ import annotations

import functools

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

from rlhfkit.data import Demonstration
from rlhfkit.data.chat import (
    IGNORE_INDEX,
    encode_prompt,
    end_of_turn_token,
    render_messages,
    tokenize_demonstration,
    tokenize_demonstration_examples,
    tokenize_prompt_response,
)
from rlhfkit.data.stop_tokens import stop_token_ids
from rlhfkit.losses import sft_loss
from rlhfkit.models import load_tokenizer
from rlhfkit.models.tiny import tiny_config
from rlhfkit.rollout.generate import sample_responses

pytestmark = pytest.mark.usefixtures("one_thread")

# meta-llama/Meta-Llama-3-8B-Instruct
LLAMA3 = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>' + "
    "message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}"
    "{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)

# Qwen/Qwen2.5-*-Instruct (ChatML, Hermes-style tool calls)
QWEN25 = """{%- if tools %}
    {{- '<|im_start|>system\\n' }}
    {%- if messages[0]['role'] == 'system' %}
        {{- messages[0]['content'] }}
    {%- else %}
        {{- 'You are Qwen, created by Alibaba Cloud. You are a helpful assistant.' }}
    {%- endif %}
    {{- "\\n\\n# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\nYou are provided with function signatures within <tools></tools> XML tags:\\n<tools>" }}
    {%- for tool in tools %}
        {{- "\\n" }}
        {{- tool | tojson }}
    {%- endfor %}
    {{- "\\n</tools>\\n\\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\\n<tool_call>\\n{\\"name\\": <function-name>, \\"arguments\\": <args-json-object>}\\n</tool_call><|im_end|>\\n" }}
{%- else %}
    {%- if messages[0]['role'] == 'system' %}
        {{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}
    {%- else %}
        {{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\\n' }}
    {%- endif %}
{%- endif %}
{%- for message in messages %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) or (message.role == "assistant" and not message.tool_calls) %}
        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}
    {%- elif message.role == "assistant" %}
        {{- '<|im_start|>' + message.role }}
        {%- if message.content %}
            {{- '\\n' + message.content }}
        {%- endif %}
        {%- for tool_call in message.tool_calls %}
            {%- if tool_call.function is defined %}
                {%- set tool_call = tool_call.function %}
            {%- endif %}
            {{- '\\n<tool_call>\\n{"name": "' }}
            {{- tool_call.name }}
            {{- '", "arguments": ' }}
            {{- tool_call.arguments | tojson }}
            {{- '}\\n</tool_call>' }}
        {%- endfor %}
        {{- '<|im_end|>\\n' }}
    {%- elif message.role == "tool" %}
        {%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != "tool") %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\\n<tool_response>\\n' }}
        {{- message.content }}
        {{- '\\n</tool_response>' }}
        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}
            {{- '<|im_end|>\\n' }}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\\n' }}
{%- endif %}
"""

# Qwen/Qwen3-* (ChatML with reasoning: the turn after the last user query opens with a <think> block)
QWEN3 = """{%- if tools %}
    {{- '<|im_start|>system\\n' }}
    {%- if messages[0].role == 'system' %}
        {{- messages[0].content + '\\n\\n' }}
    {%- endif %}
    {{- "# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\nYou are provided with function signatures within <tools></tools> XML tags:\\n<tools>" }}
    {%- for tool in tools %}
        {{- "\\n" }}
        {{- tool | tojson }}
    {%- endfor %}
    {{- "\\n</tools>\\n\\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\\n<tool_call>\\n{\\"name\\": <function-name>, \\"arguments\\": <args-json-object>}\\n</tool_call><|im_end|>\\n" }}
{%- else %}
    {%- if messages[0].role == 'system' %}
        {{- '<|im_start|>system\\n' + messages[0].content + '<|im_end|>\\n' }}
    {%- endif %}
{%- endif %}
{%- set ns = namespace(multi_step_tool=true, last_query_index=messages|length - 1) %}
{%- for message in messages[::-1] %}
    {%- set index = (messages|length - 1) - loop.index0 %}
    {%- if ns.multi_step_tool and message.role == "user" and message.content is string and not(message.content.startswith('<tool_response>') and message.content.endswith('</tool_response>')) %}
        {%- set ns.multi_step_tool = false %}
        {%- set ns.last_query_index = index %}
    {%- endif %}
{%- endfor %}
{%- for message in messages %}
    {%- if message.content is string %}
        {%- set content = message.content %}
    {%- else %}
        {%- set content = '' %}
    {%- endif %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) %}
        {{- '<|im_start|>' + message.role + '\\n' + content + '<|im_end|>' + '\\n' }}
    {%- elif message.role == "assistant" %}
        {%- set reasoning_content = '' %}
        {%- if message.reasoning_content is string %}
            {%- set reasoning_content = message.reasoning_content %}
        {%- else %}
            {%- if '</think>' in content %}
                {%- set reasoning_content = content.split('</think>')[0].rstrip('\\n').split('<think>')[-1].lstrip('\\n') %}
                {%- set content = content.split('</think>')[-1].lstrip('\\n') %}
            {%- endif %}
        {%- endif %}
        {%- if loop.index0 > ns.last_query_index %}
            {%- if loop.last or (not loop.last and reasoning_content) %}
                {{- '<|im_start|>' + message.role + '\\n<think>\\n' + reasoning_content.strip('\\n') + '\\n</think>\\n\\n' + content.lstrip('\\n') }}
            {%- else %}
                {{- '<|im_start|>' + message.role + '\\n' + content }}
            {%- endif %}
        {%- else %}
            {{- '<|im_start|>' + message.role + '\\n' + content }}
        {%- endif %}
        {%- if message.tool_calls %}
            {%- for tool_call in message.tool_calls %}
                {%- if (loop.first and content) or (not loop.first) %}
                    {{- '\\n' }}
                {%- endif %}
                {%- if tool_call.function %}
                    {%- set tool_call = tool_call.function %}
                {%- endif %}
                {{- '<tool_call>\\n{"name": "' }}
                {{- tool_call.name }}
                {{- '", "arguments": ' }}
                {%- if tool_call.arguments is string %}
                    {{- tool_call.arguments }}
                {%- else %}
                    {{- tool_call.arguments | tojson }}
                {%- endif %}
                {{- '}\\n</tool_call>' }}
            {%- endfor %}
        {%- endif %}
        {{- '<|im_end|>\\n' }}
    {%- elif message.role == "tool" %}
        {%- if loop.first or (messages[loop.index0 - 1].role != "tool") %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\\n<tool_response>\\n' }}
        {{- content }}
        {{- '\\n</tool_response>' }}
        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}
            {{- '<|im_end|>\\n' }}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\\n' }}
    {%- if enable_thinking is defined and enable_thinking is false %}
        {{- '<think>\\n\\n</think>\\n\\n' }}
    {%- endif %}
{%- endif %}"""

# google/gemma-2-*-it
GEMMA2 = (
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}"
    "{% endif %}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if (message['role'] == 'assistant') %}{% set role = 'model' %}{% else %}{% set role = message['role'] %}"
    "{% endif %}{{ '<start_of_turn>' + role + '\n' + message['content'] | trim + '<end_of_turn>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{'<start_of_turn>model\n'}}{% endif %}"
)

# google/gemma-3-*-it (the system message opens the first user turn)
GEMMA3 = """{{ bos_token }}
{%- if messages[0]['role'] == 'system' -%}
    {%- if messages[0]['content'] is string -%}
        {%- set first_user_prefix = messages[0]['content'] + '\\n\\n' -%}
    {%- else -%}
        {%- set first_user_prefix = messages[0]['content'][0]['text'] + '\\n\\n' -%}
    {%- endif -%}
    {%- set loop_messages = messages[1:] -%}
{%- else -%}
    {%- set first_user_prefix = "" -%}
    {%- set loop_messages = messages -%}
{%- endif -%}
{%- for message in loop_messages -%}
    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}
        {{ raise_exception("Conversation roles must alternate user/assistant/user/assistant/...") }}
    {%- endif -%}
    {%- if (message['role'] == 'assistant') -%}
        {%- set role = "model" -%}
    {%- else -%}
        {%- set role = message['role'] -%}
    {%- endif -%}
    {{ '<start_of_turn>' + role + '\\n' + (first_user_prefix if loop.first else "") }}
    {%- if message['content'] is string -%}
        {{ message['content'] | trim }}
    {%- elif message['content'] is iterable -%}
        {%- for item in message['content'] -%}
            {%- if item['type'] == 'image' -%}
                {{ '<start_of_image>' }}
            {%- elif item['type'] == 'text' -%}
                {{ item['text'] | trim }}
            {%- endif -%}
        {%- endfor -%}
    {%- else -%}
        {{ raise_exception("Invalid content type") }}
    {%- endif -%}
    {{ '<end_of_turn>\\n' }}
{%- endfor -%}
{%- if add_generation_prompt -%}
    {{'<start_of_turn>model\\n'}}
{%- endif -%}
"""

# mistralai/Mistral-7B-Instruct-v0.1 (no generation prompt: the prompt ends with [/INST])
MISTRAL = (
    "{{ bos_token }}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token}}"
    "{% else %}{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}{% endfor %}"
)


# mistralai/Mistral-7B-Instruct-v0.3 (the system message opens the last user turn, and only when that turn is
# the last message: a conversation ending with an answer has none; no generation prompt)
MISTRAL_V03 = """{%- if messages[0]["role"] == "system" %}
    {%- set system_message = messages[0]["content"] %}
    {%- set loop_messages = messages[1:] %}
{%- else %}
    {%- set loop_messages = messages %}
{%- endif %}
{%- if not tools is defined %}
    {%- set tools = none %}
{%- endif %}
{%- set user_messages = loop_messages | selectattr("role", "equalto", "user") | list %}

{#- This block checks for alternating user/assistant messages, skipping tool calling messages #}
{%- set ns = namespace() %}
{%- set ns.index = 0 %}
{%- for message in loop_messages %}
    {%- if not (message.role == "tool" or message.role == "tool_results" or (message.tool_calls is defined and message.tool_calls is not none)) %}
        {%- if (message["role"] == "user") != (ns.index % 2 == 0) %}
            {{- raise_exception("After the optional system message, conversation roles must alternate user/assistant/user/assistant/...") }}
        {%- endif %}
        {%- set ns.index = ns.index + 1 %}
    {%- endif %}
{%- endfor %}

{{- bos_token }}
{%- for message in loop_messages %}
    {%- if message["role"] == "user" %}
        {%- if tools is not none and (message == user_messages[-1]) %}
            {{- "[AVAILABLE_TOOLS] [" }}
            {%- for tool in tools %}
                {%- set tool = tool.function %}
                {{- '{"type": "function", "function": {' }}
                {%- for key, val in tool.items() if key != "return" %}
                    {%- if val is string %}
                        {{- '"' + key + '": "' + val + '"' }}
                    {%- else %}
                        {{- '"' + key + '": ' + val|tojson }}
                    {%- endif %}
                    {%- if not loop.last %}
                        {{- ", " }}
                    {%- endif %}
                {%- endfor %}
                {{- "}}" }}
                {%- if not loop.last %}
                    {{- ", " }}
                {%- else %}
                    {{- "]" }}
                {%- endif %}
            {%- endfor %}
            {{- "[/AVAILABLE_TOOLS]" }}
            {%- endif %}
        {%- if loop.last and system_message is defined %}
            {{- "[INST] " + system_message + "\\n\\n" + message["content"] + "[/INST]" }}
        {%- else %}
            {{- "[INST] " + message["content"] + "[/INST]" }}
        {%- endif %}
    {%- elif message.tool_calls is defined and message.tool_calls is not none %}
        {{- "[TOOL_CALLS] [" }}
        {%- for tool_call in message.tool_calls %}
            {%- set out = tool_call.function|tojson %}
            {{- out[:-1] }}
            {%- if not tool_call.id is defined or tool_call.id|length != 9 %}
                {{- raise_exception("Tool call IDs should be alphanumeric strings with length 9!") }}
            {%- endif %}
            {{- ', "id": "' + tool_call.id + '"}' }}
            {%- if not loop.last %}
                {{- ", " }}
            {%- else %}
                {{- "]" + eos_token }}
            {%- endif %}
        {%- endfor %}
    {%- elif message["role"] == "assistant" %}
        {{- " " + message["content"]|trim + eos_token}}
    {%- elif message["role"] == "tool_results" or message["role"] == "tool" %}
        {%- if message.content is defined and message.content.content is defined %}
            {%- set content = message.content.content %}
        {%- else %}
            {%- set content = message.content %}
        {%- endif %}
        {{- '[TOOL_RESULTS] {"content": ' + content|string + ", " }}
        {%- if not message.tool_call_id is defined or message.tool_call_id|length != 9 %}
            {{- raise_exception("Tool call IDs should be alphanumeric strings with length 9!") }}
        {%- endif %}
        {{- '"call_id": "' + message.tool_call_id + '"}[/TOOL_RESULTS]' }}
    {%- else %}
        {{- raise_exception("Only user and assistant roles are supported, with the exception of an initial optional system message!") }}
    {%- endif %}
{%- endfor %}
"""

@functools.cache
def _family(name: str):
    """(template, special tokens, bos, eos, pad, end-of-turn token, system messages supported); the EOS is
    the base model's where it differs from the end of a turn (Llama 3, Gemma), so load_tokenizer must
    switch it."""
    llama = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
    qwen = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    gemma = ["<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>"]
    return {
        "llama3": (LLAMA3, llama, "<|begin_of_text|>", "<|end_of_text|>", None, "<|eot_id|>", True),
        "qwen2.5": (QWEN25, qwen, None, "<|im_end|>", "<|endoftext|>", "<|im_end|>", True),
        "qwen3": (QWEN3, qwen, None, "<|im_end|>", "<|endoftext|>", "<|im_end|>", True),
        "gemma2": (GEMMA2, gemma, "<bos>", "<eos>", "<pad>", "<end_of_turn>", False),
        "gemma3": (GEMMA3, gemma, "<bos>", "<eos>", "<pad>", "<end_of_turn>", True),
        "mistral": (MISTRAL, ["<unk>", "<s>", "</s>"], "<s>", "</s>", None, "</s>", False),
        "mistral-v0.3": (MISTRAL_V03, ["<unk>", "<s>", "</s>", "[INST]", "[/INST]", "[TOOL_CALLS]", "[AVAILABLE_TOOLS]",
                                       "[/AVAILABLE_TOOLS]", "[TOOL_RESULTS]", "[/TOOL_RESULTS]"],
                         "<s>", "</s>", None, "</s>", True),
    }[name]


FAMILIES = ("llama3", "qwen2.5", "qwen3", "gemma2", "gemma3", "mistral", "mistral-v0.3")
PER_TURN = {"mistral-v0.3"}  # the system message moves to the last user turn: each answer is its own sequence
ANSWER_PREFIX = {"qwen3": "<think>\n\n</think>\n\n", "mistral-v0.3": " "}  # written before an answer's text

CHAT = [
    {"role": "user", "content": "What is the capital of France?"},
    {"role": "assistant", "content": "The capital of France is Paris."},
    {"role": "user", "content": "And of Japan?"},
    {"role": "assistant", "content": "Tokyo."},
]
SYSTEM = {"role": "system", "content": "Be brief."}


@pytest.fixture(scope="session")
def family_tokenizer(example_files, tmp_path_factory):
    """A family's tokenizer, as ``rlhfkit`` loads it from a saved folder (byte-level BPE trained on the
    example corpus, the family's special tokens and chat template)."""
    corpus = example_files["corpus"].read_text().splitlines()
    root = tmp_path_factory.mktemp("templates")

    @functools.cache
    def build(name: str):
        template, specials, bos, eos, pad, _, _ = _family(name)
        bpe = Tokenizer(models.BPE())
        bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        bpe.decoder = decoders.ByteLevel()
        bpe.train_from_iterator(corpus + [m["content"] for m in CHAT], trainers.BpeTrainer(
            vocab_size=400, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False))
        named = {bos, eos, pad}
        tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token=bos, eos_token=eos, pad_token=pad,
                                            additional_special_tokens=[t for t in specials if t not in named],
                                            clean_up_tokenization_spaces=False)
        if name == "qwen3":
            tokenizer.add_tokens(["<think>", "</think>"])  # added, not special, as in Qwen 3
        tokenizer.chat_template = template
        tokenizer.save_pretrained(root / name)
        return load_tokenizer(str(root / name))

    return build


def _conversation(name: str) -> list[dict]:
    return ([SYSTEM] if _family(name)[6] else []) + CHAT


def _spans(tokenizer, example) -> list[tuple[int, str]]:
    """(start, decoded text) of each run of labelled tokens."""
    spans, start = [], None
    for i, label in enumerate([*example.labels, IGNORE_INDEX]):
        if label != IGNORE_INDEX and start is None:
            start = i
        elif label == IGNORE_INDEX and start is not None:
            spans.append((start, tokenizer.decode(example.input_ids[start:i])))
            start = None
    return spans


@pytest.mark.parametrize("name", FAMILIES)
def test_the_end_of_turn_token_is_the_eos(name, family_tokenizer):
    tokenizer = family_tokenizer(name)
    end = _family(name)[5]
    assert end_of_turn_token(tokenizer) == end
    assert tokenizer.eos_token == end
    # sampling stops at the end of turn first, then at the EOS the tokenizer came with (Llama 3, Gemma)
    assert stop_token_ids(tokenizer) == list(dict.fromkeys(tokenizer.convert_tokens_to_ids([end, _family(name)[3]])))
    assert tokenizer.pad_token_id is not None and tokenizer.pad_token_id != tokenizer.eos_token_id


@pytest.mark.parametrize("name", FAMILIES)
def test_multi_turn_labels_are_the_assistant_turns_after_the_sampling_prompts(name, family_tokenizer):
    """One sequence, or one per assistant turn where the template writes a turn's context differently once
    an answer follows (Mistral v0.3's system message): either way each turn follows its sampling prompt."""
    tokenizer = family_tokenizer(name)
    messages = _conversation(name)
    first, second = (i for i, m in enumerate(messages) if m["role"] == "assistant")
    end = _family(name)[5]
    lead = {"mistral-v0.3": " "}.get(name, "")  # written before every answer's text
    last = ANSWER_PREFIX.get(name, "")  # Qwen 3 opens the final turn with an empty reasoning block
    demo = Demonstration(messages=messages, trainable=[True] * len(messages))
    examples = tokenize_demonstration_examples(tokenizer, demo, max_length=512)
    assert len(examples) == (2 if name in PER_TURN else 1)
    spans = [(example, start, text) for example in examples for start, text in _spans(tokenizer, example)]
    assert [text for *_, text in spans] == [f"{lead}The capital of France is Paris.{end}", f"{last}Tokyo.{end}"]
    for example in examples:
        assert all(label in (IGNORE_INDEX, token) for label, token in zip(example.labels, example.input_ids,
                                                                          strict=True))
    for (example, start, _), turn in zip(spans, (first, second), strict=True):
        # each assistant turn comes right after the tokens sampling would be prompted with
        assert example.input_ids[:start] == encode_prompt(tokenizer, messages[:turn])
    if name in PER_TURN:  # each sequence ends with its answer's end of turn, as a sampled answer does
        assert all(example.labels[-1] == tokenizer.eos_token_id for example in examples)
    else:
        assert tokenizer.decode(examples[0].input_ids) == render_messages(tokenizer, messages,
                                                                          add_generation_prompt=False)

    last_only = tokenize_demonstration_examples(
        tokenizer, Demonstration(messages=messages, trainable=[False] * second + [True]), max_length=512)
    assert [e.input_ids for e in last_only] == [examples[-1].input_ids]
    assert [text for _, text in _spans(tokenizer, last_only[0])] == [f"{last}Tokyo.{end}"]


@pytest.mark.parametrize("name", FAMILIES)
def test_prompt_and_answer_split_is_the_sampling_prompt_then_the_answer(name, family_tokenizer):
    """DPO's and the reward model's sequences: the prompt's tokens are those sampling starts from, the
    answer carries every label and ends with the end-of-turn token, where a sampled answer ends."""
    tokenizer = family_tokenizer(name)
    prompt = _conversation(name)[:-1]
    example = tokenize_prompt_response(tokenizer, prompt, "Tokyo, I believe.", max_length=512)
    prompt_ids = encode_prompt(tokenizer, prompt)
    assert example.input_ids[: len(prompt_ids)] == prompt_ids
    assert example.labels == [IGNORE_INDEX] * len(prompt_ids) + example.input_ids[len(prompt_ids):]
    assert example.input_ids[-1] == tokenizer.eos_token_id
    answer = tokenizer.decode(example.input_ids[len(prompt_ids):], skip_special_tokens=True)
    assert answer == ANSWER_PREFIX.get(name, "") + "Tokyo, I believe."
    # the generation prompt is part of the prompt, not of the answer
    generation_prompt = {"llama3": "<|start_header_id|>assistant<|end_header_id|>\n\n", "qwen2.5": "<|im_start|>assistant\n",
                         "qwen3": "<|im_start|>assistant\n", "gemma2": "<start_of_turn>model\n",
                         "gemma3": "<start_of_turn>model\n", "mistral": " [/INST]",
                         "mistral-v0.3": "Be brief.\n\nAnd of Japan?[/INST]"}[name]  # the system text moved here
    assert tokenizer.decode(prompt_ids).endswith(generation_prompt)


@pytest.mark.parametrize("name", FAMILIES)
def test_a_model_trained_with_the_template_samples_the_answer_and_stops_at_its_end_of_turn(name, family_tokenizer):
    tokenizer = family_tokenizer(name)
    prompt = _conversation(name)[:-3]
    example = tokenize_prompt_response(tokenizer, prompt, "Paris.", max_length=512)
    config = tiny_config("llama", vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, layers=1, width=32)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-2)
    ids, labels = torch.tensor([example.input_ids]), torch.tensor([example.labels])
    for _ in range(150):
        optimizer.zero_grad()
        sft_loss(model(ids).logits, labels).backward()
        optimizer.step()
    [[sample]] = sample_responses(model, tokenizer, [prompt], temperature=0, max_new_tokens=12, show_progress=False)
    assert sample.finished and sample.token_ids[-1] == tokenizer.convert_tokens_to_ids(_family(name)[5])
    assert sample.token_ids == example.input_ids[len(encode_prompt(tokenizer, prompt)):]


def test_a_template_without_an_end_of_turn_token_is_refused(tokenizer):
    from copy import deepcopy

    plain = deepcopy(tokenizer)
    plain.chat_template = "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}"
    assert end_of_turn_token(plain) is None
    with pytest.raises(ValueError, match="ends assistant turns with no special token"):
        tokenize_prompt_response(plain, [{"role": "user", "content": "Hi"}], "Hello", max_length=64)


def _rewriting(tokenizer, user_turn: str):
    """``tokenizer`` with a template that writes the system message into the last user turn only, when
    that turn is the last message (as Mistral v0.3 does), the user turn written by ``user_turn``."""
    from copy import deepcopy

    moving = deepcopy(tokenizer)
    moving.chat_template = (
        "{% set system = messages[0]['content'] if messages[0]['role'] == 'system' else '' %}"
        "{% for m in messages if m['role'] != 'system' %}{% if m['role'] == 'user' %}" + user_turn +
        "{% else %}{{ m['content'] + eos_token }}{% endif %}{% endfor %}")
    return moving


def test_a_template_that_rewrites_earlier_turns_trains_each_turn_after_its_sampling_prompt(tokenizer):
    """The system message opens the last user turn: no one sequence has every turn's sampling prompt
    (the first prompt has the system text, the whole conversation has it nowhere), so each assistant turn
    is its own sequence, its prompt the very tokens sampling starts from."""
    moving = _rewriting(tokenizer, "{{ '<|user|>' }}{% if loop.last %}{{ system }}{% endif %}{{ m['content'] }}")
    messages = [SYSTEM, *CHAT]
    examples = tokenize_demonstration_examples(moving, Demonstration(messages=messages, trainable=[True] * 5), 128)
    for example, turn in zip(examples, (2, 4), strict=True):
        prompt = encode_prompt(moving, messages[:turn])
        assert moving.decode(prompt).startswith("<|user|>Be brief.") == (turn == 2)
        assert example.input_ids[: len(prompt)] == prompt and set(example.labels[: len(prompt)]) == {IGNORE_INDEX}
        answer = example.input_ids[len(prompt):]
        assert example.labels[len(prompt):] == answer
        assert moving.decode(answer) == messages[turn]["content"] + moving.eos_token
    with pytest.raises(ValueError, match="one sequence per assistant turn: use tokenize_demonstration_examples"):
        tokenize_demonstration(moving, Demonstration(messages=messages, trainable=[True] * 5), 128)


def test_a_template_that_rewrites_the_answered_turn_too_is_refused(tokenizer):
    """The system message after the last user message's text: the turn the answer follows in the whole
    conversation is not the one sampling's prompt ends with, so not even a sequence per turn can match it."""
    moving = _rewriting(tokenizer, "{{ '<|user|>' + m['content'] }}{% if loop.last %}{{ ' ' + system }}{% endif %}")
    messages = [SYSTEM, *CHAT[:2]]
    with pytest.raises(ValueError, match="renders the conversation before message 2 differently.*the message it "
                                         "answers too"):
        tokenize_demonstration_examples(moving, Demonstration(messages=messages, trainable=[False, False, True]), 64)


def test_the_saved_policy_stops_plain_hf_generate_at_the_end_of_turn_too(family_tokenizer, tmp_path):
    from rlhfkit.models import load_causal_lm, save_model

    tokenizer = family_tokenizer("gemma2")  # its EOS was <eos>; turns end with <end_of_turn>
    config = tiny_config("llama", vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.convert_tokens_to_ids("<eos>"), pad_token_id=tokenizer.pad_token_id,
                         layers=1, width=32)
    save_model(AutoModelForCausalLM.from_config(config), tokenizer, tmp_path)
    stops = load_causal_lm(str(tmp_path), tokenizer).generation_config.eos_token_id
    assert stops == [tokenizer.convert_tokens_to_ids("<end_of_turn>"), tokenizer.convert_tokens_to_ids("<eos>")]


def test_the_generation_configs_stop_ids_are_stop_ids_too(family_tokenizer, tmp_path):
    """Qwen 2.5's folders stop at ``<|im_end|>`` (the tokenizer's EOS) and, by their generation config,
    at ``<|endoftext|>`` too, which is also their pad token; a folder rlhfkit saves keeps both."""
    import json

    from rlhfkit.models import load_causal_lm, save_model

    tokenizer = family_tokenizer("qwen2.5")
    im_end, endoftext = tokenizer.convert_tokens_to_ids(["<|im_end|>", "<|endoftext|>"])
    config = tiny_config("llama", vocab_size=len(tokenizer), bos_token_id=None, eos_token_id=im_end,
                         pad_token_id=tokenizer.pad_token_id, layers=1, width=32)
    model = AutoModelForCausalLM.from_config(config)
    model.generation_config.eos_token_id = [im_end, endoftext]
    save_model(model, tokenizer, tmp_path / "qwen")
    loaded = load_tokenizer(str(tmp_path / "qwen"))
    assert stop_token_ids(loaded) == [im_end, endoftext] and loaded.pad_token_id == endoftext
    save_model(load_causal_lm(str(tmp_path / "qwen"), loaded), loaded, tmp_path / "saved")
    assert json.loads((tmp_path / "saved" / "generation_config.json").read_text())["eos_token_id"] == [im_end, endoftext]
