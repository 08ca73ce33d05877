"""The supervised stage of Constitutional AI (Bai et al. 2022): critique an answer against a principle,
then revise it; the revisions become SFT demonstrations.

For each ``{prompt, response}`` (or each answer of ``{prompt, responses}``) a principle is drawn from
the constitution by weight; the model is asked, in a chat, to critique the answer against it, and
then, with its critique in the conversation, to rewrite the answer. Output records
``{prompt, completion, critique, principle, original}`` are demonstrations ``rlhfkit sft`` reads
(it ignores the extra fields).
"""

from __future__ import annotations

import random
from pathlib import Path

from rlhfkit.config import ReviseConfig
from rlhfkit.console import console
from rlhfkit.data import write_jsonl
from rlhfkit.data.answers import read_scoring_records
from rlhfkit.judge.constitution import DEFAULT_CONSTITUTION, Principle, load_constitution, principles_for
from rlhfkit.judge.request_text import conversation_text


def critique_request(prompt, response: str, principle: Principle) -> str:
    return (f"Conversation:\n{conversation_text(prompt)}\n\nAnswer:\n{response}\n\n"
            f"Principle: {principle.text}\n"
            "Point out, briefly and specifically, where the answer falls short of this principle.")


REVISION_REQUEST = "Now rewrite the answer so that it follows the principle. Reply with the new answer only."


def revise(generate, items: list[tuple[object, str]], constitution: list[Principle], rng: random.Random
           ) -> list[dict]:
    """Critique and revise each (prompt, response). ``generate(conversations) -> replies`` answers a
    batch of chats (lists of messages) with one reply each."""
    principles = [principles_for(constitution, "sample", rng)[0] for _ in items]
    critique_chats = [[{"role": "user", "content": critique_request(p, r, principle)}]
                      for (p, r), principle in zip(items, principles, strict=True)]
    critiques = generate(critique_chats)
    revision_chats = [chat + [{"role": "assistant", "content": critique}, {"role": "user", "content": REVISION_REQUEST}]
                      for chat, critique in zip(critique_chats, critiques, strict=True)]
    revisions = generate(revision_chats)
    return [{"prompt": prompt, "completion": revision, "critique": critique, "principle": principle.name,
             "original": response}
            for (prompt, response), principle, critique, revision in zip(items, principles, critiques, revisions,
                                                                        strict=True)]


def run_revise(config: ReviseConfig) -> Path:
    from transformers import set_seed

    from rlhfkit.data.chat import encode_prompt
    from rlhfkit.models import load_causal_lm, load_tokenizer, resolve_device, resolve_dtype
    from rlhfkit.rollout.engines import model_sampler
    from rlhfkit.rollout.sampler import SamplingSettings

    set_seed(config.seed)
    device = resolve_device(config.device)
    dtype = resolve_dtype(config.dtype, device)
    tokenizer = load_tokenizer(config.model)
    sampler = model_sampler(config, config.model, tokenizer, dtype, device, config.seed,
                            lambda: load_causal_lm(config.model, tokenizer, dtype=dtype, device=device))
    settings = SamplingSettings(config.max_new_tokens, config.temperature, 1.0, config.batch_size, config.seed)

    def generate(chats: list[list[dict]]) -> list[str]:
        samples = sampler.sample(chats, [encode_prompt(tokenizer, chat) for chat in chats], 1, settings,
                                 show_progress=True)
        return [answer[0].text.strip() for answer in samples]

    _, prompts, responses = read_scoring_records(config.data)
    constitution = load_constitution(config.constitution or DEFAULT_CONSTITUTION)
    try:
        records = revise(generate, list(zip(prompts, responses, strict=True)), constitution,
                         random.Random(config.seed))
    finally:
        sampler.close()
    kept = [r for r in records if r["completion"]]
    output = Path(config.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    write_jsonl(output, kept)
    console.print(f"revise: {len(kept)} revised answers written to {output} as demonstrations "
                  f"({len(records) - len(kept)} empty revisions left out)")
    return output
