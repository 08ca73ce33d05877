"""The accelerator, the optimizer, and one optimizer step accumulated over micro-batches.

:func:`optimizer_step` is the step every trainer takes (the offline loop for SFT, RM and DPO, and the
PPO update): micro-batch losses are back-propagated in turn, gradients synchronised between processes
only on the last one, a non-finite loss stops the run, the gradient norm is clipped, and the optimizer
and scheduler step once.

Each micro-batch's loss must already be its share of the *global* mean (e.g. its summed token losses
divided by the token count of the whole global batch). Data parallelism averages gradients over
processes, so the loss is scaled back up by the number of processes to make that average a sum: the
gradient is then that of one big batch, whatever the split into processes and micro-batches.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed

from rlhfkit.config import TrainConfig
from rlhfkit.models.sharded import on_every_process


class TrainingError(RuntimeError):
    """Training cannot go on (e.g. a non-finite loss); the last good checkpoint is kept."""


def make_accelerator(config: TrainConfig):
    """accelerate's ``Accelerator`` (one process, or data parallelism under ``accelerate launch`` /
    ``torchrun``), or with ``--fsdp`` the FSDP2 one of ``sharding.py``, which offers the same calls."""
    from rlhfkit.models import resolve_device

    device = resolve_device(config.device)
    if config.fsdp:
        from rlhfkit.train.sharding import ShardedAccelerator

        accelerator = ShardedAccelerator(config, device)
    else:
        accelerator = Accelerator(cpu=device.type == "cpu")
    set_seed(config.seed)
    return accelerator


# devices where torch has a fused AdamW kernel that HF's Trainer also uses by default
FUSED_ADAMW_DEVICES = ("cpu", "cuda")



def make_optimizer(param_groups: list, **options) -> torch.optim.AdamW:
    """AdamW over ``param_groups`` (dicts with "params", as ``torch.optim`` takes them), fused into one
    kernel per step where torch has one for every parameter: the default of HF's ``Trainer`` too. The
    update is the same; a 4-layer width-256 model's optimizer step took 4 ms instead of 22 ms on a CPU."""
    params = [p for group in param_groups for p in group["params"]]
    fused = all(p.is_floating_point() and p.device.type in FUSED_ADAMW_DEVICES for p in params)
    return torch.optim.AdamW(param_groups, fused=fused or None, **options)


def finite_everywhere(accelerator, loss: torch.Tensor) -> bool:
    """Whether ``loss`` is finite on every process. All processes stop together on one's NaN: a process
    that stopped alone would leave the others waiting in the backward pass's collectives."""
    return on_every_process(bool(torch.isfinite(loss)), accelerator.device)


MicroBatchLoss = Callable[[], tuple[torch.Tensor, dict[str, torch.Tensor]]]
"""One micro-batch's forward pass: ``() -> (loss, {metric: value})``, the loss a share of the global mean."""


def optimizer_step(accelerator: Accelerator, models: Sequence[torch.nn.Module], optimizer, scheduler,
                   micro_batches: Sequence[MicroBatchLoss], max_grad_norm: float,
                   non_finite: Callable[[torch.Tensor], str]) -> tuple[dict[str, torch.Tensor], list[torch.Tensor]]:
    """Accumulate the gradients of ``micro_batches`` (run in order) into ``models`` and take one step.

    Returns the metrics summed over the micro-batches (tensors, this process only) and the gradient norm
    of each model before clipping (empty without ``max_grad_norm``). A non-finite loss on any process
    raises :class:`TrainingError` on all of them, with the message ``non_finite(loss)``, before the
    backward pass.
    """
    totals: dict[str, torch.Tensor] = {}
    for k, micro_batch in enumerate(micro_batches):
        with contextlib.ExitStack() as stack:
            if k < len(micro_batches) - 1 and accelerator.num_processes > 1:  # synchronise on the last only
                for model in models:
                    stack.enter_context(accelerator.no_sync(model))
            loss, metrics = micro_batch()
            if not finite_everywhere(accelerator, loss):  # said with this process's loss, or NaN for another's
                raise TrainingError(non_finite(loss if not torch.isfinite(loss) else torch.tensor(float("nan"))))
            accelerator.backward(loss * accelerator.num_processes)
        for name, value in metrics.items():
            value = torch.as_tensor(value).detach().float()
            totals[name] = totals[name] + value if name in totals else value
    norms = [accelerator.clip_grad_norm_(model.parameters(), max_grad_norm) for model in models] \
        if max_grad_norm > 0 else []
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return totals, norms
