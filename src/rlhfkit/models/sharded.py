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


def all_done(model, done: torch.Tensor) -> bool:
    """Whether every row of ``done`` is, on every process when ``model`` is sharded."""
    finished = bool(done.all())
    if not sharded(model):
        return finished
    flag = torch.tensor([0.0 if finished else 1.0], device=done.device)
    dist.all_reduce(flag)
    return flag.item() == 0


def inference(function):
    """``torch.inference_mode`` around ``function(model, ...)``; ``no_grad`` for an FSDP2 model."""

    @functools.wraps(function)
    def wrapper(model, *args, **kwargs):
        with torch.no_grad() if isinstance(model, FSDPModule) else torch.inference_mode():
            return function(model, *args, **kwargs)

    return wrapper
