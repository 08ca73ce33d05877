"""KL(policy ‖ reference) per answer, from answers sampled from the policy.

For an answer y sampled from the policy π, ``Σ_t log π(y_t | x, y_<t) − log π_ref(y_t | x, y_<t)``
over its tokens is an unbiased Monte-Carlo estimate of the sequence-level KL(π ‖ π_ref) (the k1
estimator, summed over the answer; a single answer's estimate can be negative, the mean cannot be in
expectation). Log-probs are taken at the sampling temperature, as PPO takes them (GUIDE §4.6), and the
computation is PPO's own: the answers are laid out as a :class:`rlhfkit.train.ppo.Rollout`
(``[left-padded prompt | answer, padded after its EOS]``) and scored with
:func:`rlhfkit.train.ppo.response_logprobs`, so padding never leaks into the sum.

Greedy answers (temperature 0) are not samples from π; their log-probs are taken at temperature 1 and
the result is then only a rough indication of distance, not an estimate of the KL.
"""

from __future__ import annotations

import torch

from rlhfkit.data.chat import encode_prompt, pad_batch
from rlhfkit.train.ppo import Rollout, response_logprobs


def answer_rollout(prompt_ids: list[list[int]], answer_ids: list[list[int]], tokenizer,
                   device: torch.device) -> Rollout:
    """Encoded prompts and their answers' tokens (through the EOS when there is one) as a Rollout."""
    query, query_mask = pad_batch(prompt_ids, tokenizer.pad_token_id, side="left")
    if any(answer_ids):
        response, mask = pad_batch(answer_ids, tokenizer.pad_token_id, side="right")
    else:  # no answer has a token: a zero-width answer block
        response, mask = (torch.zeros((len(answer_ids), 0), dtype=torch.long) for _ in range(2))
    finished = torch.tensor([bool(a) and a[-1] == tokenizer.eos_token_id for a in answer_ids])
    return Rollout(query.to(device), query_mask.to(device), response.to(device), mask.float().to(device),
                   finished.to(device), [None] * len(answer_ids), [""] * len(answer_ids))


def _device_of(model) -> torch.device:
    return next(model.parameters()).device


@torch.inference_mode()
def answer_logprob_sums(model, tokenizer, prompt_ids: list[list[int]], responses_token_ids: list[list[int]],
                        temperature: float = 1.0, *, batch_size: int = 16) -> list[float]:
    """``Σ_t log model(y_t | x, y_<t)`` over each answer's tokens, at the sampling ``temperature`` (1 for
    greedy answers), for the encoded prompts ``prompt_ids[i]`` and their answers ``responses_token_ids[i]``.
    Batched by ``batch_size`` answers, longest first."""
    if len(prompt_ids) != len(responses_token_ids):
        raise ValueError(f"{len(prompt_ids)} prompts but {len(responses_token_ids)} answers")
    temperature = temperature if temperature > 0 else 1.0
    # longest first, so each batch holds sequences of similar length (little padding)
    order = sorted(range(len(prompt_ids)), key=lambda i: -(len(prompt_ids[i]) + len(responses_token_ids[i])))
    result = [0.0] * len(prompt_ids)
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            rollout = answer_rollout([prompt_ids[i] for i in chunk], [list(responses_token_ids[i]) for i in chunk],
                                     tokenizer, _device_of(model))
            sums = response_logprobs(model, rollout, temperature)[0].sum(1)  # 0 after EOS: masked
            for i, value in zip(chunk, sums.tolist(), strict=True):
                result[i] = value
    finally:
        model.train(was_training)
    return result


def sequence_kl(policy, reference, tokenizer, prompts: list, responses_token_ids: list[list[int]],
                temperature: float = 1.0, *, batch_size: int = 16,
                prompt_ids: list[list[int]] | None = None) -> list[float]:
    """KL(policy ‖ reference) estimate of each answer in nats (see the module docstring).

    ``prompts[i]`` (a string or messages, encoded as training encodes it unless ``prompt_ids`` are
    given) and ``responses_token_ids[i]`` (its answer's tokens, as sampled from ``policy``) make one
    answer. Both models must read ``tokenizer``'s tokens. Batched by ``batch_size`` answers.
    """
    if len(prompts) != len(responses_token_ids):
        raise ValueError(f"{len(prompts)} prompts but {len(responses_token_ids)} answers")
    encoded = prompt_ids if prompt_ids is not None else [encode_prompt(tokenizer, p) for p in prompts]
    ours, theirs = (answer_logprob_sums(model, tokenizer, encoded, responses_token_ids, temperature,
                                        batch_size=batch_size) for model in (policy, reference))
    return [a - b for a, b in zip(ours, theirs, strict=True)]
