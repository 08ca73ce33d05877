"""Writing records as JSON lines, the format every rlhfkit stage reads and writes."""

from __future__ import annotations

import json
from pathlib import Path


def to_jsonl(records: list[dict]) -> str:
    """One JSON object per line (UTF-8 text kept as it is)."""
    return "".join(json.dumps(record, ensure_ascii=False) + "\n" for record in records)


def write_jsonl(path: str | Path, records: list[dict]) -> Path:
    """Write ``records`` to ``path`` as JSON lines; returns the path."""
    path = Path(path)
    path.write_text(to_jsonl(records), encoding="utf-8")
    return path
