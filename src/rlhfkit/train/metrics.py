"""Training metrics: JSON lines in ``OUTPUT/metrics.jsonl``, echoed to the console, and TensorBoard."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rlhfkit.console import console


class MetricsLog:
    """Metrics as JSON lines in ``output/metrics.jsonl`` (main process only), echoed to the console."""

    def __init__(self, output: str | Path, enabled: bool, resume: bool):
        self.path = Path(output) / "metrics.jsonl"
        self.enabled = enabled
        if enabled and not resume and self.path.exists():
            self.path.unlink()

    def write(self, record: dict[str, Any], echo: bool = True) -> None:
        if not self.enabled:
            return
        with self.path.open("a") as handle:
            handle.write(json.dumps(record) + "\n")
        if echo:
            shown = "  ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in record.items())
            console.print(shown)


def tensorboard_writer(output: Path):
    """A TensorBoard writer into ``output/tensorboard`` when tensorboard is installed, else None."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(str(output / "tensorboard"))

