"""Loading training data: prompts, demonstrations, preferences and rankings from common file formats.

Files may be JSON lines (``.jsonl``, ``.jsonl.gz``), JSON (``.json``, ``.json.gz``), Parquet, CSV or
a saved Hugging Face dataset folder (``DIR`` or ``DIR:split``). Every problem is a
:class:`DataError` whose message names the file, the line or row, the field, and what was expected.
"""

from rlhfkit.data.errors import DataError
from rlhfkit.data.hh import hh_pair_to_preference, is_hh_transcript, parse_hh_transcript
from rlhfkit.data.readers import (
    load_binary_feedback,
    load_demonstrations,
    load_preferences,
    load_prompts,
    load_rankings,
    read_rows,
)
from rlhfkit.data.records import (
    BinaryFeedback,
    Demonstration,
    Preference,
    PromptRecord,
    Ranking,
    parse_binary_feedback,
    parse_demonstration,
    parse_preference,
    parse_prompt,
    parse_ranking,
    ranking_to_pairs,
)
from rlhfkit.data.writers import to_jsonl, write_jsonl

__all__ = [
    "BinaryFeedback",
    "DataError",
    "Demonstration",
    "Preference",
    "PromptRecord",
    "Ranking",
    "hh_pair_to_preference",
    "is_hh_transcript",
    "load_binary_feedback",
    "load_demonstrations",
    "load_preferences",
    "load_prompts",
    "load_rankings",
    "parse_binary_feedback",
    "parse_demonstration",
    "parse_hh_transcript",
    "parse_preference",
    "parse_prompt",
    "parse_ranking",
    "ranking_to_pairs",
    "to_jsonl",
    "write_jsonl",
    "read_rows",
]
