"""Where RL and online DPO get their scores: a reward-model folder or a Python function.

A *reward spec* is either

- a folder written by ``rlhfkit rm`` (any ``AutoModelForSequenceClassification`` with one label), or
- ``module:function`` (or ``path/to/file.py:function``) naming a Python callable
  ``function(prompts, responses) -> list[float]``: rule-based rewards, verifiers, unit tests.

Both become the same thing, a :data:`RewardFunction` that scores a batch of (prompt, response) pairs.
"""

from __future__ import annotations

import importlib
import importlib.util
import math
from collections.abc import Callable, Sequence
from pathlib import Path

RewardFunction = Callable[[Sequence, Sequence[str]], list[float]]


class RewardSpecError(ValueError):
    """A reward spec that names neither a reward-model folder nor a callable."""


def load_callable(spec: str) -> Callable:
    """Import ``module:function`` or ``path/to/file.py:function``."""
    if ":" not in spec:
        raise RewardSpecError(f"reward {spec!r}: expected a reward-model folder or 'module:function'")
    module_name, _, attribute = spec.rpartition(":")
    if module_name.endswith(".py"):
        path = Path(module_name)
        if not path.is_file():
            raise RewardSpecError(f"reward {spec!r}: file {path} does not exist")
        module_spec = importlib.util.spec_from_file_location(path.stem, path)
        module = importlib.util.module_from_spec(module_spec)
        module_spec.loader.exec_module(module)
    else:
        try:
            module = importlib.import_module(module_name)
        except ImportError as err:
            raise RewardSpecError(f"reward {spec!r}: cannot import module {module_name!r}: {err}") from err
    function = getattr(module, attribute, None)
    if not callable(function):
        raise RewardSpecError(f"reward {spec!r}: {module_name} has no callable {attribute!r}")
    return function


def checked(function: Callable, name: str) -> RewardFunction:
    """Wrap ``function`` so a wrong count or a non-finite score is a clear error, never a silent bug."""

    def score(prompts: Sequence, responses: Sequence[str]) -> list[float]:
        scores = [float(s) for s in function(list(prompts), list(responses))]
        if len(scores) != len(responses):
            raise RewardSpecError(f"reward {name}: returned {len(scores)} scores for {len(responses)} responses")
        bad = [i for i, s in enumerate(scores) if not math.isfinite(s)]
        if bad:
            raise RewardSpecError(f"reward {name}: non-finite score {scores[bad[0]]} for response {bad[0]}: "
                                  f"{str(responses[bad[0]])[:80]!r}")
        return scores

    return score


def load_reward_function(spec: str, *, device: str = "auto", dtype: str = "auto", batch_size: int = 16,
                         max_length: int = 1024) -> RewardFunction:
    """A :data:`RewardFunction` from a reward-model folder or a ``module:function`` spec."""
    from rlhfkit.models.reward import RewardModel, is_reward_model_folder

    if Path(spec).is_dir():
        if not is_reward_model_folder(spec):
            raise RewardSpecError(f"reward {spec!r}: the folder is not a reward model "
                                  "(expected a sequence-classification model with one label, from 'rlhfkit rm')")
        model = RewardModel.from_pretrained(spec, device=device, dtype=dtype, max_length=max_length)
        return checked(lambda prompts, responses: model.score(prompts, responses, batch_size=batch_size), spec)
    return checked(load_callable(spec), spec)
