"""What the loop keeps on disk: the round folders, the files written whole or not at all, and the
``loop.json`` check that a rerun continues the same loop."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from pathlib import Path

from rlhfkit.config import ConfigError, LoopConfig
from rlhfkit.config_parse import config_to_dict
from rlhfkit.train.run_record import fingerprint

STEPS = ("generate", "labels", "rm", "policy", "eval")
"""The steps of a round, in order."""

MAY_CHANGE = ("rounds", "poll_seconds", "quota", "device")
"""Config fields a rerun may change: they do not change what earlier rounds computed."""

LOOP_FILE, ROUND_FILE = "loop.json", "round.json"


class LoopContext:
    """What every round reads: the config, the output folder, the prompts."""

    def __init__(self, config: LoopConfig, output: Path, prompts: list, eval_prompts: list):
        self.config, self.output, self.prompts, self.eval_prompts = config, output, prompts, eval_prompts


class RoundPaths:
    """Where round ``number`` keeps its files."""

    def __init__(self, output: Path, number: int):
        self.number = number
        self.folder = output / f"round-{number:03d}"
        self.prompts = self.folder / "prompts.jsonl"
        self.samples = self.folder / "samples.jsonl"
        self.labels_dir = self.folder / "labels"
        self.labels = self.labels_dir / "labels.jsonl"
        self.all_labels = self.labels_dir / "all.jsonl"
        self.rm = self.folder / "rm"
        self.policy = self.folder / "policy"
        self.eval_dir = self.folder / "eval"
        self.eval = self.eval_dir / "eval.json"
        self.record = self.folder / ROUND_FILE

    def artifact(self, step: str) -> Path:
        """The file whose existence shows that ``step`` is done."""
        return {"generate": self.samples, "labels": self.labels, "rm": self.rm / "config.json",
                "policy": self.policy / "config.json", "eval": self.eval}[step]


def read_round(paths: RoundPaths) -> dict | None:
    """The round's ``round.json`` record, or None before its first step."""
    return json.loads(paths.record.read_text()) if paths.record.is_file() else None


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file, so the file is complete or absent."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(text, encoding="utf-8")
    os.replace(temporary, path)


def write_json(path: Path, value) -> None:
    write_atomic(path, json.dumps(value, indent=2, ensure_ascii=False) + "\n")


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def loop_state(config: LoopConfig) -> dict:
    """What ``loop.json`` stores: the config and the fingerprints of the prompt files."""
    return {"config": config_to_dict(config),
            "inputs": {"prompts": fingerprint(config.prompts), "eval_prompts": fingerprint(config.eval_prompts)}}


def check_resumable(config: LoopConfig, output: Path) -> None:
    """Refuse to continue rounds that were computed with another config; then store this one."""
    path = output / LOOP_FILE
    current = loop_state(config)
    started = any(output.glob("round-*/" + ROUND_FILE))
    if path.is_file() and started:
        stored = json.loads(path.read_text())
        changed = [f"{key}: {stored['config'].get(key)!r} before, {value!r} now"
                   for key, value in current["config"].items()
                   if key not in MAY_CHANGE and stored["config"].get(key) != value]
        changed += [f"the content of --{name.replace('_', '-')} ({config_to_dict(config)[name]})"
                    for name, digest in current["inputs"].items() if stored.get("inputs", {}).get(name) != digest]
        if changed:
            raise ConfigError(f"{output} holds rounds of a loop with other settings, which this run would mix with "
                              f"its own: {'; '.join(changed)}. Restore them, or use another --output (only "
                              f"{', '.join(MAY_CHANGE)} may change between runs).")
    write_json(path, {**current, "updated": datetime.now(UTC).isoformat(timespec="seconds")})
