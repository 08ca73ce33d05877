"""The token ids at which sampling stops: one list per tokenizer, the one source every sampler reads.

Training ends every answer with one token, the tokenizer's EOS (for a chat model the template's
end-of-turn token: :func:`rlhfkit.data.chat.use_end_of_turn_as_eos`). A model may still end an
answer with another one: the EOS its tokenizer came with (Gemma's ``<eos>`` beside
``<end_of_turn>``, Llama 3's ``<|end_of_text|>`` beside ``<|eot_id|>``) or an id its folder's
``generation_config.json`` lists (Qwen's ``<|endoftext|>`` beside ``<|im_end|>``). A sampler that
stopped at the first only would run such an answer on to the token limit and call it unfinished.

:func:`stop_token_ids` is the training EOS first, then those other ids, which the loaders record on
the tokenizer (:func:`add_stop_token_ids`), so that they travel with it into an engine's process
or Ray actor (they are plain ints, pickled with the tokenizer). Every sampler stops at any of them,
keeps the stop token as the answer's last token (as it keeps the EOS) and calls the answer finished;
training appends and trains the EOS only.
"""

from __future__ import annotations

from collections.abc import Iterable

from transformers import PreTrainedTokenizerBase

_RECORDED = "rlhfkit_stop_token_ids"  # the tokenizer attribute holding the ids after the EOS


def stop_token_ids(tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """The ids sampling stops at, as plain ints without repeats: the EOS that training ends answers
    with first, then the other ends of an answer recorded for ``tokenizer`` (none for a tokenizer
    that no loader has seen)."""
    ids = [tokenizer.eos_token_id, *getattr(tokenizer, _RECORDED, ())]
    return list(dict.fromkeys(int(i) for i in ids if i is not None))


def add_stop_token_ids(tokenizer: PreTrainedTokenizerBase, ids: Iterable[int] | int | None) -> None:
    """Record ``ids`` (an int, a list as ``generation_config.eos_token_id`` has it, or None) as more
    ends of an answer for ``tokenizer``, after those recorded before. Ids outside the vocabulary are
    left out: no sampler could draw them."""
    if ids is None:
        return
    ids = [ids] if isinstance(ids, int) else list(ids)
    known = [*getattr(tokenizer, _RECORDED, ()), *(int(i) for i in ids if 0 <= int(i) < len(tokenizer))]
    setattr(tokenizer, _RECORDED, tuple(dict.fromkeys(known)))

