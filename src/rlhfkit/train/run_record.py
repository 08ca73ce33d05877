"""What a checkpoint remembers of its run, so that ``--resume`` refuses to continue a different one.

Every checkpoint stores the run's settings and a fingerprint of each input it reads (the model, the
data or prompts, the reward, the reference). On ``--resume`` the current settings and inputs are
compared with the checkpoint's: a change that makes the continued run a different run (another
learning rate, data file, seed, loss, ``--model``, ...) is a :class:`ConfigError` naming every changed
field; the changes that do not (:data:`CHANGES_ALLOWED_ON_RESUME`: how often to log, save or evaluate,
``--max-steps`` to extend a run, the device) are allowed. ``rlhfkit loop`` keeps the same rule for
whole rounds (``iterate/state.py``).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

from rlhfkit.config import ConfigError
from rlhfkit.config_parse import config_to_dict

CHANGES_ALLOWED_ON_RESUME = frozenset({
    "resume", "output", "max_steps", "save_every", "log_every", "eval_every", "sample_every", "device",
    "gradient_checkpointing", "generation_batch_size", "track_reward", "eval_kl_prompts", "skip_invalid",
})
"""Settings that may differ on ``--resume``: they change what is logged, saved, evaluated or where it
runs, or extend the run, not what is trained."""

INPUT_FIELDS = ("model", "policy", "reward", "reference", "data", "prompts", "eval_data")
"""Settings that name files or folders the run reads: their contents are fingerprinted too."""

SMALL_FILE = 1 << 20  # files of a folder up to this size are hashed by content, larger ones by size


def fingerprint(path: str) -> str | None:
    """A digest of the file or folder at ``path``: a file's bytes; a folder's file names and sizes, and the
    bytes of its small files (configs, tokenizers), so another model is told apart without reading its
    weights. ``None`` when there is nothing there (a hub id, a ``module:function`` reward)."""
    target = Path(path)
    digest = hashlib.sha256()
    if target.is_file():
        update_with_file(digest, target)
    elif target.is_dir():
        for file in sorted(p for p in target.rglob("*") if p.is_file() and "checkpoints" not in p.parts):
            size = file.stat().st_size
            digest.update(f"{file.relative_to(target)}\0{size}\0".encode())
            if size <= SMALL_FILE:
                update_with_file(digest, file)
    else:
        return None
    return digest.hexdigest()


def update_with_file(digest, file: Path) -> None:
    with file.open("rb") as handle:
        for block in iter(lambda: handle.read(SMALL_FILE), b""):
            digest.update(block)


def run_record(config: Any) -> dict[str, Any]:
    """The settings and input fingerprints a checkpoint of this run stores (computed once per run)."""
    settings = config_to_dict(config)
    inputs = {name: fingerprint(str(settings[name])) for name in INPUT_FIELDS if settings.get(name)}
    return {"settings": settings, "inputs": inputs, "processes": int(os.environ.get("WORLD_SIZE", "1"))}


BATCH_FIELDS = ("batch_size", "grad_accum")
"""Per-process batch settings: on resume they may change with the number of processes as long as the
global batch (batch size x accumulation x processes) stays the same, which keeps the run's data order
and its updates (the sharded checkpoint is re-split over the new processes)."""


def global_batch(record: dict[str, Any]) -> int | None:
    """Examples per optimizer step over all processes, or None for a record that does not say."""
    settings = record["settings"]
    if "processes" not in record or any(settings.get(name) is None for name in BATCH_FIELDS):
        return None
    return settings["batch_size"] * settings["grad_accum"] * record["processes"]


def check_same_run(saved: dict[str, Any], current: dict[str, Any], checkpoint: Path) -> None:
    """Refuse to resume from ``checkpoint`` (its stored record ``saved``) with changed settings or inputs."""
    if "settings" not in saved:
        return  # a checkpoint written before runs were recorded
    before, now = global_batch(saved), global_batch(current)
    allowed = CHANGES_ALLOWED_ON_RESUME | (set(BATCH_FIELDS) if before is not None and before == now else set())
    changes = [f"--{name.replace('_', '-')} {saved['settings'].get(name)!r} -> {value!r}"
               for name, value in current["settings"].items()
               if name not in allowed and saved["settings"].get(name) != value]
    if before is not None and now is not None and before != now and not changes:
        changes.append(f"the global batch (--batch-size x --grad-accum x {saved['processes']} processes) {before} -> "
                       f"{now} ({current['processes']} processes)")
    changes += [f"the contents of --{name.replace('_', '-')} {current['settings'][name]}"
                for name, digest in current["inputs"].items()
                if name not in CHANGES_ALLOWED_ON_RESUME and saved.get("inputs", {}).get(name) != digest
                and saved["settings"].get(name) == current["settings"][name]]
    if changes:
        raise ConfigError(
            f"--resume: {checkpoint} belongs to a run with other settings or inputs; changed: {'; '.join(changes)}. "
            "Undo the change, or train into a new --output. Changes allowed on resume: "
            + ", ".join("--" + name.replace("_", "-") for name in sorted(CHANGES_ALLOWED_ON_RESUME))
            + "; and another number of processes with --batch-size / --grad-accum that keep the global batch.")
