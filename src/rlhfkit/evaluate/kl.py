"""KL(policy ‖ reference) per answer, from answers sampled from the policy.

For an answer y sampled from the policy π, ``Σ_t log π(y_t | x, y_<t) − log π_ref(y_t | x, y_<t)``
over its tokens is an unbiased Monte-Carlo estimate of the sequence-level KL(π ‖ π_ref) (the k1
estimator, summed over the answer; a single answer's estimate can be negative, the mean cannot be in
expectation). Log-probs are taken at the sampling temperature, as PPO takes them (ARCHITECTURE.md rule 6), and the
computation is PPO's own: the answers are laid out as a :class:`rlhfkit.rollout.logprobs.Rollout`
(``[left-padded prompt | answer, padded after its EOS]``) and scored with
:func:`rlhfkit.rollout.logprobs.response_logprobs`, so padding never leaks into the sum.

Greedy answers (temperature 0) are not samples from π; their log-probs are taken at temperature 1 and
the result is then only a rough indication of distance, not an estimate of the KL.
"""

from __future__ import annotations

from rlhfkit.data.chat import encode_prompt
from rlhfkit.rollout.logprobs import answer_logprob_sums


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
