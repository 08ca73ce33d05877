"""Judge backends: a local language model, a reward model, a Python function.

- :class:`LocalModelJudge` shows a causal LM the principles, the conversation and both answers, and
  reads its preference from the next-token log-probs of the labels "A" and "B" (no sampling, so the
  verdict is deterministic and comes with a probability). :class:`VLLMJudge` reads the same two
  log-probs from a vLLM engine (``--engine vllm``).
- :class:`RewardModelJudge` scores both answers with a reward model: ``P(A) = σ(r_A - r_B)``
  (Bradley–Terry).
- :class:`FunctionJudge` does the same with a Python scoring function ``module:function`` taking
  ``(prompts, responses)`` (rules, verifiers); equal scores are a tie.
"""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import torch

from rlhfkit.data.chat import encode_prompt, pad_batch
from rlhfkit.judge.base import Comparison, Verdict
from rlhfkit.judge.constitution import DEFAULT_CONSTITUTION, Principle, load_constitution, principles_for
from rlhfkit.judge.request_text import judge_request
from rlhfkit.models.reward import position_ids_from_mask


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x)) if x >= 0 else math.exp(x) / (1.0 + math.exp(x))


class LocalModelJudge:
    """A local HF causal LM as judge; P(A) = softmax over the next-token logits of "A" and "B"."""

    def __init__(self, model, tokenizer, constitution: list[Principle] | None = None, principles: str = "all",
                 seed: int = 0, batch_size: int = 8, name: str = "local"):
        self.model = model.eval() if model is not None else None
        self.tokenizer = tokenizer
        self.constitution = constitution or load_constitution(DEFAULT_CONSTITUTION)
        self.principles, self.rng = principles, random.Random(seed)
        self.batch_size, self.name = batch_size, name
        self.choice_ids = [self._first_token(label) for label in ("A", "B")]

    def _first_token(self, label: str) -> int:
        ids = self.tokenizer(label, add_special_tokens=False)["input_ids"]
        if not ids:
            raise ValueError(f"the judge's tokenizer encodes {label!r} as no tokens")
        return ids[0]

    def encode(self, comparison: Comparison) -> list[int]:
        """The judge's prompt as token ids: the request as a user message, through the chat template."""
        chosen = principles_for(self.constitution, self.principles, self.rng)
        return encode_prompt(self.tokenizer, [{"role": "user", "content": judge_request(comparison, chosen)}])

    @torch.inference_mode()
    def judge(self, comparisons: list[Comparison]) -> list[Verdict]:
        encoded = [self.encode(c) for c in comparisons]
        order = sorted(range(len(encoded)), key=lambda i: -len(encoded[i]))
        device = next(self.model.parameters()).device
        probs = [0.5] * len(encoded)
        for start in range(0, len(order), self.batch_size):
            chunk = order[start : start + self.batch_size]
            ids, mask = pad_batch([encoded[i] for i in chunk], self.tokenizer.pad_token_id, side="left")
            ids, mask = ids.to(device), mask.to(device)
            logits = self.model(input_ids=ids, attention_mask=mask, position_ids=position_ids_from_mask(mask)).logits
            pair = logits[:, -1, self.choice_ids].float()
            for i, p in zip(chunk, torch.softmax(pair, dim=-1)[:, 0].tolist(), strict=True):
                probs[i] = p
        return [Verdict(p) for p in probs]


class VLLMJudge(LocalModelJudge):
    """:class:`LocalModelJudge`'s verdicts from a vLLM engine (``sampler``, a
    :class:`~rlhfkit.rollout.vllm_engine.VLLMSampler`): one token per prompt restricted to the two
    labels, and P(A) from the engine's log-probs of both, which is the same softmax over the two logits."""

    def __init__(self, sampler, tokenizer, constitution: list[Principle] | None = None, principles: str = "all",
                 seed: int = 0, batch_size: int = 8, name: str = "local"):
        super().__init__(None, tokenizer, constitution, principles, seed, batch_size, name)
        self.sampler = sampler

    def judge(self, comparisons: list[Comparison]) -> list[Verdict]:
        pairs = self.sampler.choice_logprobs([self.encode(c) for c in comparisons], self.choice_ids)
        return [Verdict(1.0 / (1.0 + math.exp(b - a))) for a, b in pairs]

    def close(self) -> None:
        self.sampler.close()


class ScoreJudge:
    """A judge from a scoring function ``score(prompts, responses) -> scores``: P(A) = σ(s_A - s_B)."""

    def __init__(self, score, name: str):
        self.score, self.name = score, name

    def judge(self, comparisons: list[Comparison]) -> list[Verdict]:
        # each distinct (prompt, answer) is scored once: K answers compared pairwise (and position-swapped)
        # cost K scores, not K(K-1)
        index: dict[tuple[str, str], int] = {}
        prompts, answers = [], []
        for comparison in comparisons:
            for answer in (comparison.a, comparison.b):
                key = (json.dumps(comparison.prompt, sort_keys=True), answer)
                if key not in index:
                    index[key] = len(answers)
                    prompts.append(comparison.prompt)
                    answers.append(answer)
        scores = self.score(prompts, answers)

        def score_of(comparison: Comparison, answer: str) -> float:
            return scores[index[(json.dumps(comparison.prompt, sort_keys=True), answer)]]

        return [Verdict(sigmoid(score_of(c, c.a) - score_of(c, c.b))) for c in comparisons]


def load_judge(spec: str, *, constitution: str | None = None, principles: str = "all", device: str = "auto",
               dtype: str = "auto", batch_size: int = 8, max_length: int = 1024, seed: int = 0,
               http_options: dict | None = None, engine=None):
    """A judge from a spec: an OpenAI-compatible URL (or ``openai``), a reward-model folder, a causal-LM
    folder (or hub id), or ``module:function``. ``http_options`` go to :class:`HTTPJudge`; ``engine`` (an
    :class:`~rlhfkit.config.EngineConfig`) chooses how a causal-LM judge runs (default: the HF model)."""
    from rlhfkit.models import load_causal_lm, load_tokenizer, resolve_device, resolve_dtype
    from rlhfkit.models.reward import is_reward_model_folder
    from rlhfkit.rewards import checked, load_callable, load_reward_function

    if spec.startswith(("http://", "https://")) or spec == "openai":
        from rlhfkit.judge.http import http_judge_from_spec

        return http_judge_from_spec(spec, load_constitution(constitution or DEFAULT_CONSTITUTION),
                                    principles=principles, seed=seed, **(http_options or {}))
    if Path(spec).is_dir() and is_reward_model_folder(spec):
        return ScoreJudge(load_reward_function(spec, device=device, dtype=dtype, batch_size=batch_size,
                                               max_length=max_length), name=f"rm:{spec}")
    if Path(spec).is_dir() or ":" not in spec:
        from rlhfkit.rollout.engines import resolve_engine, start_vllm

        torch_device = resolve_device(device)
        torch_dtype = resolve_dtype(dtype, torch_device)
        tokenizer = load_tokenizer(spec)
        chosen = load_constitution(constitution or DEFAULT_CONSTITUTION)
        if engine is not None and resolve_engine(engine.engine, torch_device) == "vllm":
            sampler = start_vllm(engine, spec, tokenizer, torch_dtype, seed, beside_trainer=False)
            return VLLMJudge(sampler, tokenizer, chosen, principles, seed, batch_size, name=f"local:{spec}")
        model = load_causal_lm(spec, tokenizer, dtype=torch_dtype, device=torch_device)
        return LocalModelJudge(model, tokenizer, chosen, principles, seed, batch_size, name=f"local:{spec}")
    return ScoreJudge(checked(load_callable(spec), spec), name=f"function:{spec}")
