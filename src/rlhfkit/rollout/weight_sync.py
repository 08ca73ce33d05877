"""Getting the trained weights into the sampling engine, and checking that they got there.

:func:`policy_weights` lists the policy's weights the way a fresh HF checkpoint would name them: with
LoRA, each adapted weight is sent as ``W + ΔW`` (peft's own ``get_delta_weight``), computed into a new
tensor, so the trained base weights and adapters are never merged or touched; a tied output embedding
is listed under its own name too (vLLM on CPU keeps a separate packed copy of it, which a sync without
it leaves stale).

:class:`WeightSync` sends them after every ``every``-th policy update, and every ``check_every``-th
sync verifies it (:func:`probe_sync`): the engine decodes a few fixed probe prompts greedily, the
trainer scores the same tokens, and a mean |Δ log p| above ``tolerance`` stops the run with a
:class:`SyncError` naming the step. A name mismatch, a skipped tensor, a stale packed copy all show
up there, instead of a run that trains one model while sampling from another.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import torch
from torch.distributed.tensor import DTensor

from rlhfkit.rollout.logprobs import answer_logits, rollout_from_samples


class SyncError(RuntimeError):
    """The sampling engine does not hold the trained weights."""


def unwrap_peft(model: torch.nn.Module):
    """``(the HF model underneath, whether ``model`` is a peft model)``."""
    if hasattr(model, "get_base_model") and hasattr(model, "peft_config"):
        return model.get_base_model(), True
    return model, False


def lora_layers(model: torch.nn.Module) -> dict[str, torch.nn.Module]:
    """The LoRA-adapted modules of ``model`` (an HF model inside peft) with an active, unmerged adapter, by
    module name."""
    from peft.tuners.lora import LoraLayer

    return {name: module for name, module in model.named_modules()
            if isinstance(module, LoraLayer) and not module.disable_adapters and not module.merged
            and any(a in module.lora_A or a in module.lora_embedding_A for a in module.active_adapters)}


def lora_delta(module: torch.nn.Module) -> torch.Tensor:
    """``ΔW`` of a LoRA-adapted ``module``: the sum over its active adapters of peft's own
    ``get_delta_weight``, in the weight's layout; gathered whole under ``--fsdp`` (a collective)."""
    active = [a for a in module.active_adapters if a in module.lora_A or a in module.lora_embedding_A]
    delta = sum(module.get_delta_weight(adapter) for adapter in active)
    return delta.full_tensor() if isinstance(delta, DTensor) else delta


@torch.no_grad()
def policy_weights(model: torch.nn.Module, every_name: bool = True) -> Iterator[tuple[str, torch.Tensor]]:
    """The weights of ``model`` (an HF causal LM, or a peft model around one) in HF checkpoint names,
    LoRA merged into copies, tied weights under each of their names (under the first only, as HF
    checkpoints store them, without ``every_name``); under ``--fsdp`` each gathered whole in turn (every
    process iterates, each gather being a collective)."""
    base, is_peft = unwrap_peft(model)
    adapted = lora_layers(base) if is_peft else {}
    seen: set[int] = set()
    for name, parameter in base.named_parameters(remove_duplicate=False):
        if ".lora_" in name or ".original_module." in name or (not every_name and id(parameter) in seen):
            continue
        seen.add(id(parameter))
        if isinstance(parameter, DTensor):  # --fsdp: gathered from every process's shard (a collective)
            parameter = parameter.full_tensor()
        clean = name.replace(".base_layer.", ".").replace(".modules_to_save.default.", ".")
        module_name, _, leaf = clean.rpartition(".")
        module = adapted.get(module_name) if leaf == "weight" else None
        yield clean, (parameter + lora_delta(module).to(parameter.dtype)) if module is not None else parameter.detach()


@torch.no_grad()
def probe_sync(sampler, model: torch.nn.Module, probe_ids: list[list[int]], max_new_tokens: int,
               pad_token_id: int) -> dict[str, float]:
    """The engine's greedy answers to ``probe_ids``, scored by the trainer's ``model``: the mean |Δ log p|
    of their tokens between the two (at temperature 1), and the share of positions where the trainer's
    most likely token is the engine's greedy one."""
    samples = sampler.greedy(probe_ids, max_new_tokens)
    device = next(model.parameters()).device
    rollout = rollout_from_samples([[s] for s in samples], [None] * len(samples), probe_ids, pad_token_id, device)
    was_training = model.training
    model.eval()
    logits = answer_logits(model, rollout).float()
    model.train(was_training)
    trainer = torch.log_softmax(logits, -1).gather(-1, rollout.response[..., None]).squeeze(-1)
    mask = rollout.mask
    tokens = mask.sum().clamp(min=1)
    diff = ((trainer - rollout.engine_logprobs).abs() * mask).sum() / tokens
    agree = ((logits.argmax(-1) == rollout.response).float() * mask).sum() / tokens
    return {"sync_probe_logprob_diff": diff.item(), "sync_probe_agreement": agree.item()}


class WeightSync:
    """Keeps a sampling engine on the trained weights (see the module docstring)."""

    def __init__(self, sampler, probe_ids: list[list[int]], pad_token_id: int, *, every: int = 1,
                 check_every: int = 1, tolerance: float = 1e-3, probe_tokens: int = 16):
        self.sampler, self.probe_ids, self.pad_token_id = sampler, probe_ids, pad_token_id
        self.every, self.check_every, self.tolerance, self.probe_tokens = every, check_every, tolerance, probe_tokens
        self.syncs = 0

    def push(self, model: torch.nn.Module, step: int, check: bool = True) -> dict[str, float]:
        """Send ``model``'s weights now and, with ``check``, verify them; returns the sync's metrics."""
        started = time.perf_counter()
        self.sampler.load_weights(policy_weights(model), version=step)
        metrics = {"sync_seconds": time.perf_counter() - started}
        if check and self.probe_ids:
            metrics.update(self.verify(model, step))
        return metrics

    def verify(self, model: torch.nn.Module, step: int) -> dict[str, float]:
        probe = probe_sync(self.sampler, model, self.probe_ids, self.probe_tokens, self.pad_token_id)
        if not probe["sync_probe_logprob_diff"] <= self.tolerance:
            raise SyncError(
                f"at step {step}: after the weight sync the sampling engine's log-probs of its greedy probe "
                f"answers differ from the trainer's by {probe['sync_probe_logprob_diff']:.3g} nats per token "
                f"(tolerance {self.tolerance:g}; greedy agreement {probe['sync_probe_agreement']:.0%}): the "
                f"engine is not sampling from the trained weights. If the engine runs in lower precision, "
                f"raise --sync-check-tolerance.")
        return probe

    def after_update(self, model: torch.nn.Module, step: int) -> dict[str, float]:
        """Sync after update number ``step`` (from 1) when it is due; verify every ``check_every``-th sync."""
        if step % self.every:
            return {}
        self.syncs += 1
        return self.push(model, step, check=self.syncs % self.check_every == 0)
