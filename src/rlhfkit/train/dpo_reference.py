"""DPO's reference policy: log-probs cached once before training, or computed live.

With ``--precompute-ref`` (the default) the reference log-probs of every sequence are computed once
before training, cached in the examples and in ``OUTPUT/reference_logps.json`` (so ``--resume`` need not
recompute them); the reference is not kept in memory while training. Otherwise, with ``--lora-r > 0``
and no other ``--reference``, the reference is the policy with its adapters disabled (no second copy);
otherwise a frozen copy loaded from ``--reference`` (by default ``--model``).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path

import torch

from rlhfkit.config import ConfigError, DPOConfig
from rlhfkit.models import (
    load_causal_lm,
)
from rlhfkit.rollout.logprobs import sequence_logps
from rlhfkit.train.dpo_data import PreferenceExample, collate_examples
from rlhfkit.train.sharding import gather_objects


class Reference:
    """The frozen reference policy, for log-probs that are not (or cannot be) cached.

    ``lora_policy``: the policy's own base weights, its adapters disabled, serve as the reference. Else
    the reference is loaded from ``name_or_path``: kept in memory (``keep``), or loaded when first
    needed and released when the outermost :meth:`model` block ends (precomputed training, where only
    evaluation needs it again).
    """

    def __init__(self, name_or_path: str, tokenizer, dtype, device, *, lora_policy=None, keep: bool = False):
        self.name_or_path, self.tokenizer, self.dtype, self.device = name_or_path, tokenizer, dtype, device
        self.lora_policy = lora_policy
        self.keep = keep
        self._model = None
        self._depth = 0  # nested model() blocks share one loaded model / one disabled-adapter state

    @contextlib.contextmanager
    def model(self) -> Iterator[torch.nn.Module]:
        if self._depth:
            self._depth += 1
            try:
                yield self._model
            finally:
                self._depth -= 1
            return
        self._depth = 1
        try:
            if self.lora_policy is not None:
                with self.lora_policy.disable_adapter():
                    self._model = self.lora_policy
                    yield self.lora_policy
            else:
                if self._model is None:
                    self._model = load_causal_lm(self.name_or_path, self.tokenizer, dtype=self.dtype,
                                                 device=self.device).eval().requires_grad_(False)
                yield self._model
        finally:
            self._depth = 0
            if not self.keep or self.lora_policy is not None:
                self._model = None

    def logps(self, batch: dict[str, torch.Tensor], *, logit_mask: bool) -> torch.Tensor:
        with torch.no_grad(), self.model() as model:
            return sequence_logps(model, batch, logit_mask=logit_mask)[0]


def precompute_reference(examples: list[PreferenceExample], reference: Reference, pad_token_id: int,
                         batch_size: int, accelerator, logit_mask: bool, share_prompt: bool = False) -> None:
    """Cache both sequences' reference log-probs in every example (each process computes a share)."""
    mine = list(range(accelerator.process_index, len(examples), accelerator.num_processes))
    values = []
    with reference.model():  # loaded once for all batches
        for start in range(0, len(mine), batch_size):
            chunk = [examples[i] for i in mine[start : start + batch_size]]
            batch = {k: v.to(accelerator.device) for k, v in collate_examples(chunk, pad_token_id, share_prompt).items()}
            logps = reference.logps(batch, logit_mask=logit_mask).cpu().tolist()
            values.extend(zip(mine[start : start + batch_size], logps[: len(chunk)], logps[len(chunk) :],
                              strict=True))
    values = gather_objects(values, accelerator)
    for index, first, second in values:
        examples[index].reference = (first, second)



def reference_logps(batch, reference: Reference | None, logit_mask: bool) -> torch.Tensor:
    if "reference_logps" in batch:
        return batch["reference_logps"]
    return reference.logps(batch, logit_mask=logit_mask)



def cached_reference_path(config: DPOConfig) -> Path:
    return Path(config.output) / "reference_logps.json"


def save_cached_reference(path: Path, train_set, held_set) -> None:
    """Keep the cached reference log-probs beside the checkpoints, so --resume need not recompute them."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"train": [e.reference for e in train_set], "held_out": [e.reference for e in held_set]}))


def load_cached_reference(path: Path, train_set, held_set) -> None:
    cached = json.loads(path.read_text())
    if len(cached["train"]) != len(train_set) or len(cached["held_out"]) != len(held_set):
        raise ConfigError(f"{path}: cached reference log-probs do not match the data (was it changed?); "
                          "delete the file to recompute them")
    for example, values in zip(train_set + held_set, cached["train"] + cached["held_out"], strict=True):
        example.reference = tuple(values)

