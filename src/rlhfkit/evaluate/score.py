"""``rlhfkit score``: add reward-model scores to {prompt, response} or {prompt, responses} records."""

from __future__ import annotations

import json
from pathlib import Path

from rlhfkit.config import ScoreConfig
from rlhfkit.console import console
from rlhfkit.data.answers import read_scoring_records
from rlhfkit.models.reward import RewardModel


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
