"""``rlhfkit score``: add reward-model scores to {prompt, response} or {prompt, responses} records."""

from __future__ import annotations

import json
from pathlib import Path

from rlhfkit.config import ScoreConfig
from rlhfkit.console import console
from rlhfkit.data import DataError
from rlhfkit.data.readers import read_rows
from rlhfkit.data.records import parse_text
from rlhfkit.models.reward import RewardModel


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


def run_score(config: ScoreConfig) -> Path:
    """Score every response; write each record back with ``score`` (or ``scores``) added."""
    records, prompts, responses = read_scoring_records(config.data)
    scorer = RewardModel.from_pretrained(config.reward, device=config.device, dtype=config.dtype,
                                         max_length=config.max_length)
    scores = scorer.score(prompts, responses, batch_size=config.batch_size)
    output = Path(config.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    position = 0
    with output.open("w") as handle:
        for raw, count in records:
            mine = scores[position : position + count]
            position += count
            key_value = {"scores": mine} if "responses" in raw else {"score": mine[0]}
            handle.write(json.dumps({**raw, **key_value}) + "\n")
    console.print(f"score: {len(scores)} responses scored, written to {output}")
    return output
