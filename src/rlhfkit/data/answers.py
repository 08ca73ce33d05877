"""Reading answers to a prompt: ``{prompt, response}`` or ``{prompt, responses}`` records.

These are the inputs of ``rlhfkit score`` (reward-model scores) and ``rlhfkit revise``
(Constitutional AI revisions).
"""

from __future__ import annotations

from rlhfkit.data.errors import DataError
from rlhfkit.data.readers import read_rows
from rlhfkit.data.records import parse_text


def read_scoring_records(path: str) -> tuple[list[tuple[dict, int]], list, list]:
    """Flatten {prompt, response} / {prompt, responses} records: ([(record, answer count)], prompts, responses)."""
    records, prompts, responses = [], [], []
    for location, raw in read_rows(path):
        prompt = parse_text(raw.get("prompt"), location, "prompt")
        if "responses" in raw:
            answers = raw["responses"]
            if not isinstance(answers, list) or not answers:
                raise DataError(f"{location}: field 'responses': expected a non-empty list of answers, got {answers!r}")
            fields = [f"responses[{i}]" for i in range(len(answers))]
        elif "response" in raw:
            answers, fields = [raw["response"]], ["response"]
        else:
            raise DataError(f"{location}: field 'response': missing (expected 'response' or 'responses')")
        for answer, field in zip(answers, fields, strict=True):
            prompts.append(prompt)
            responses.append(parse_text(answer, location, field))
        records.append((raw, len(answers)))
    return records, prompts, responses
