"""Resumable checkpoints, written atomically: ``OUTPUT/checkpoints/step-NNNNNNN/``.

A checkpoint stores the accelerator's state (models, optimizer, RNG states), the scheduler and a
``trainer_state.json`` with the step and whatever the trainer adds (β, the epoch, and the run's settings
and input fingerprints, which ``--resume`` checks: ``run_record.py``). It is written into
``step-N.tmp`` and renamed when complete, so a kill while writing leaves the previous one usable; the
newest ``KEEP_CHECKPOINTS`` are kept.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from accelerate import Accelerator

from rlhfkit.console import console
from rlhfkit.train.run_record import check_same_run

CHECKPOINTS = "checkpoints"

KEEP_CHECKPOINTS = 2


def checkpoint_dir(output: str | Path, step: int) -> Path:
    return Path(output) / CHECKPOINTS / f"step-{step:07d}"


def latest_checkpoint(output: str | Path) -> Path | None:
    """The newest complete checkpoint (folders being written end in .tmp and are ignored)."""
    root = Path(output) / CHECKPOINTS
    if not root.is_dir():
        return None
    done = sorted(p for p in root.iterdir() if p.name.startswith("step-") and (p / "trainer_state.json").exists()
                  and not p.name.endswith(".tmp"))
    return done[-1] if done else None


def save_checkpoint(accelerator: Accelerator, output: str | Path, step: int, scheduler, extra: dict,
                    per_process: Callable[[Path], None] | None = None) -> Path:
    """Write a resumable checkpoint atomically: into ``step-N.tmp``, renamed when complete.
    ``per_process(folder)``, when given, writes what each process adds (all of them, before the rename)."""
    final = checkpoint_dir(output, step)
    tmp = final.with_name(final.name + ".tmp")
    if accelerator.is_main_process and tmp.exists():
        shutil.rmtree(tmp)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    if per_process is not None:
        per_process(tmp)
        accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
        (tmp / "trainer_state.json").write_text(json.dumps({"step": step, **extra}, indent=2))
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        older = sorted(p for p in final.parent.iterdir() if p.name.startswith("step-") and p != final)
        for old in older[: max(0, len(older) - (KEEP_CHECKPOINTS - 1))]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def load_checkpoint(accelerator: Accelerator, path: Path, scheduler) -> dict:
    accelerator.load_state(str(path))
    scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=False))
    return json.loads((path / "trainer_state.json").read_text())



def resume_from_latest(accelerator: Accelerator, output: str | Path, scheduler, record: dict | None = None
                       ) -> dict | None:
    """``--resume``: load the newest checkpoint and return its trainer state, or ``None`` (said) when
    there is none yet and the run starts fresh. With the run's ``record`` (:func:`run_record.run_record`),
    a checkpoint of a run with other settings or inputs is refused before anything is loaded."""
    found = latest_checkpoint(output)
    if found is None:
        console.print(f"[yellow]--resume: no checkpoint in {Path(output) / CHECKPOINTS}; starting fresh[/]")
        return None
    if record is not None:
        check_same_run(json.loads((found / "trainer_state.json").read_text()), record, found)
    state = load_checkpoint(accelerator, found, scheduler)
    console.print(f"resumed from {found} at step {state['step']}")
    return state


@contextlib.contextmanager
def interruption_note(output: str | Path, steps_done: Callable[[], int], total: int) -> Iterator[None]:
    """On Ctrl-C, note on the ``KeyboardInterrupt`` how far the run got and how to go on (the CLI prints
    the note and exits 130)."""
    try:
        yield
    except KeyboardInterrupt as error:
        found = latest_checkpoint(output)
        resume = (f"rerun with --resume to continue from {found}" if found is not None else
                  "no checkpoint was written yet (see --save-every): rerun to start again")
        error.add_note(f"interrupted at step {steps_done()} of {total}; {resume}")
        raise
