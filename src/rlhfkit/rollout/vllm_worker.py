"""Code that runs inside vLLM's worker: how new policy weights get into a live engine.

vLLM instantiates :class:`WeightReceiver` as a *worker extension* (``LLM(worker_extension_cls=...)``),
so its methods run in the worker beside the model and are called by name through
``LLM.collective_rpc``. This module imports nothing from vLLM at import time: the worker imports it
by its qualified name.

Why not the model's own ``load_weights``: on CPU, vLLM repacks linear weights at load time, and a
plain ``load_weights`` after that leaves the packed copies stale. The worker's ``reload_weights``
runs vLLM's in-place reload, which repeats the loading steps (renaming, fusing q/k/v and gate/up,
repacking) for the new tensors. A tied output embedding has its own packed copy: the sender must
include ``lm_head.weight`` (see :func:`rlhfkit.rollout.weight_sync.policy_weights`).

Transports: in an in-process engine the tensors arrive as they are (no copy until vLLM's own); in a
multi-process engine (tensor parallel, or ``VLLM_ENABLE_V1_MULTIPROCESSING=1``) arguments are
serialised, so they come as one safetensors blob.
"""

from __future__ import annotations

import torch


class WeightReceiver:
    """A vLLM worker extension: ``collective_rpc("rlhfkit_load_weights", args=(weights,))``."""

    def rlhfkit_load_weights(self, weights) -> int:
        """Load ``weights`` (a list of ``(name, tensor)`` in the HF checkpoint's names, or the bytes of a
        safetensors file of them) into the live model, in place; returns how many tensors came."""
        if isinstance(weights, (bytes, bytearray)):
            from safetensors.torch import load

            weights = list(load(bytes(weights)).items())
        self.reload_weights(weights_iterator=iter(weights))
        return len(weights)

    def rlhfkit_parameter_count(self) -> int:
        """Elements in the live model's parameters (checks that a worker answers)."""
        model = self.model_runner.get_model()
        return sum(p.numel() for p in model.parameters() if isinstance(p, torch.Tensor))
