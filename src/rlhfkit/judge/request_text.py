"""The text put to a language-model judge: the comparison question, and conversations as plain text.

Shared by the local-model judge (:mod:`rlhfkit.judge.backends`), the HTTP judge
(:mod:`rlhfkit.judge.http`) and the Constitutional AI revisions (:mod:`rlhfkit.judge.revise`).
"""

from __future__ import annotations

from rlhfkit.judge.base import Comparison
from rlhfkit.judge.constitution import Principle


def conversation_text(prompt) -> str:
    """A prompt as plain text for the judge to read: a string as it is, messages as 'Role: content'."""
    if isinstance(prompt, str):
        return prompt
    return "\n".join(f"{m['role'].capitalize()}: {m['content']}" for m in prompt)


def judge_request(comparison: Comparison, principles: list[Principle]) -> str:
    """The question put to a language-model judge."""
    rules = "\n".join(f"- {p.text}" for p in principles)
    return (
        "You compare two answers to the same conversation.\n"
        f"Principles:\n{rules}\n\n"
        f"Conversation:\n{conversation_text(comparison.prompt)}\n\n"
        f"Answer A:\n{comparison.a}\n\n"
        f"Answer B:\n{comparison.b}\n\n"
        "Which answer follows the principles better? Reply with the single letter A or B."
    )
