"""What code that runs a model needs to know when the model is sharded by FSDP2 (``--fsdp``).

Every forward of a sharded model gathers its parameters from all processes, so the processes must
run the same forwards (a decode loop stops only when every process is done), and those forwards must
not run under ``torch.inference_mode``: FSDP2 keeps its gathered-parameter buffers across calls, and
inference tensors cannot be updated outside inference mode.
"""

from __future__ import annotations

import functools

import torch
import torch.distributed as dist
from torch.distributed.fsdp import FSDPModule


def sharded(model) -> bool:
    """Whether ``model`` is sharded by FSDP2 over several processes."""
    return isinstance(model, FSDPModule) and dist.is_initialized() and dist.get_world_size() > 1


def on_every_process(flag: bool, device) -> bool:
    """Whether ``flag`` holds on every process of torch.distributed's group (this process's ``flag``
    when there is no group of several): one small all-reduce, for branches all processes must take."""
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return flag
    failing = torch.tensor([0.0 if flag else 1.0], device=device)
    dist.all_reduce(failing)
    return failing.item() == 0


def all_done(model, done: torch.Tensor) -> bool:
    """Whether every row of ``done`` is, on every process when ``model`` is sharded."""
    finished = bool(done.all())
    return on_every_process(finished, done.device) if sharded(model) else finished


def inference(function):
    """``torch.inference_mode`` around ``function(model, ...)``; ``no_grad`` for an FSDP2 model."""

    @functools.wraps(function)
    def wrapper(model, *args, **kwargs):
        with torch.no_grad() if isinstance(model, FSDPModule) else torch.inference_mode():
            return function(model, *args, **kwargs)

    return wrapper
