"""Compare two policies on a prompt set, with models already in memory: :func:`evaluate_policies`.

For each prompt, both policies sample ``samples_per_prompt`` answers (seeded the same way, so a policy
compared with itself gives identical answers and a win rate of exactly 0.5). The k-th answer of the
policy is compared with the k-th answer of the baseline by the judge, which is either

- a *score function* ``score(prompts, responses) -> list[float]`` (a reward model, a rule, the demo's
  gold preference): both answers are scored, the higher score wins, equal scores tie; or
- a *judge* with ``judge(comparisons) -> verdicts`` (:mod:`rlhfkit.judge`): the verdict's winner
  ("a" is the policy) decides; wrap language-model judges in :class:`~rlhfkit.judge.base.PositionSwap`;
- None: no judging (the answers go to people, see :mod:`rlhfkit.evaluate.people`).

Besides the win rate (:func:`~rlhfkit.evaluate.win_rate.win_rate`) it measures, per policy, the KL to
a reference (:func:`~rlhfkit.evaluate.kl.sequence_kl`), the mean answer length in tokens (through the
EOS, as PPO counts it), the share of answers that end with EOS, and refusal / over-refusal rates on
prompts flagged harmful / benign (:func:`~rlhfkit.evaluate.refusal.refusal_rates`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from contextlib import contextmanager

from transformers import set_seed

from rlhfkit.data.chat import encode_prompt
from rlhfkit.evaluate.kl import sequence_kl
from rlhfkit.evaluate.refusal import refusal_rates
from rlhfkit.evaluate.win_rate import outcome_of_scores, outcome_of_winner, win_rate
from rlhfkit.judge.base import Comparison
from rlhfkit.rollout.generate import Sample, sample_responses


def sample_answers(model, tokenizer, prompts: list, *, samples_per_prompt: int = 1, max_new_tokens: int = 64,
                   temperature: float = 1.0, top_p: float = 1.0, batch_size: int = 16, seed: int = 0,
                   show_progress: bool = False) -> list[Sample]:
    """``samples_per_prompt`` answers per prompt, flattened: answer ``i*K + k`` is the k-th to prompt i.
    The random state is reset to ``seed`` first, so the same model and seed give the same answers."""
    set_seed(seed)
    per_prompt = sample_responses(model, tokenizer, prompts, num_samples=samples_per_prompt,
                                  max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                                  batch_size=batch_size, show_progress=show_progress)
    return [sample for answers in per_prompt for sample in answers]


def is_verdict_judge(judge) -> bool:
    """Whether ``judge`` gives verdicts (has ``.judge``) rather than scores."""
    return hasattr(judge, "judge") and callable(judge.judge)


def judge_pairs(judge, prompts: list, answers_a: list[str], answers_b: list[str]) -> tuple[list[float], list[dict]]:
    """Outcomes (1: A wins, 0: B wins, 0.5: tie) of each (prompt, A, B), and per-pair details
    (``score_a``/``score_b`` for score functions, ``prob_a`` for verdict judges)."""
    if not prompts:
        return [], []
    if is_verdict_judge(judge):
        verdicts = judge.judge([Comparison(p, a, b) for p, a, b in zip(prompts, answers_a, answers_b, strict=True)])
        return ([outcome_of_winner(v.winner) for v in verdicts],
                [{"prob_a": v.prob_a} for v in verdicts])
    scores = [float(s) for s in judge(list(prompts) + list(prompts), list(answers_a) + list(answers_b))]
    n = len(prompts)
    if len(scores) != 2 * n:
        raise ValueError(f"the judge returned {len(scores)} scores for {2 * n} answers")
    pairs = list(zip(scores[:n], scores[n:], strict=True))
    return [outcome_of_scores(a, b) for a, b in pairs], [{"score_a": a, "score_b": b} for a, b in pairs]


def judge_name_of(judge) -> str | None:
    if judge is None:
        return None
    return getattr(judge, "name", None) or getattr(judge, "__name__", None) or type(judge).__name__


def answer_stats(samples: list[Sample], harmful: Sequence[bool | None]) -> dict:
    """Mean length in tokens (through the EOS), EOS rate, refusal and over-refusal rates."""
    count = max(len(samples), 1)
    refusals = refusal_rates([s.text for s in samples], harmful)
    return {"mean_length": sum(len(s.token_ids) for s in samples) / count,
            "eos_rate": sum(s.finished for s in samples) / count,
            "refusal_rate": refusals["refusal_rate"], "over_refusal_rate": refusals["over_refusal_rate"]}


def mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


@contextmanager
def timed(seconds: dict[str, float], stage: str):
    """Record the wall time of the block in ``seconds[stage]`` (not when it raises)."""
    started = time.perf_counter()
    yield
    seconds[stage] = time.perf_counter() - started


def per_answer(values: list, samples_per_prompt: int, count: int) -> list:
    """``values`` (one per prompt) repeated for each of the prompt's answers: ``count`` entries."""
    return [values[i // samples_per_prompt] for i in range(count)]


def harmful_flags(harmful: Sequence[bool | None] | None, prompts: list) -> list[bool | None]:
    """One harmful flag per prompt (None: unknown, for all of them when ``harmful`` is None)."""
    flags = list(harmful) if harmful is not None else [None] * len(prompts)
    if len(flags) != len(prompts):
        raise ValueError(f"{len(prompts)} prompts but {len(flags)} harmful flags")
    return flags


def sample_policy_and_baseline(policy, baseline, tokenizer, baseline_tokenizer, prompts: list, options: dict,
                               baseline_samples: list[Sample] | None, policy_samples: list[Sample] | None = None
                               ) -> tuple[list[Sample], list[Sample]]:
    """The policy's answers and the baseline's (sampled unless the caller gave them), as many of each."""
    answers_a = policy_samples if policy_samples is not None else sample_answers(policy, tokenizer, prompts, **options)
    answers_b = baseline_samples if baseline_samples is not None else sample_answers(
        baseline, baseline_tokenizer or tokenizer, prompts, **options)
    if len(answers_b) != len(answers_a):
        raise ValueError(f"{len(answers_b)} baseline answers for {len(answers_a)} policy answers")
    return answers_a, answers_b


def mean_kl(model, reference, tokenizer, prompts: list, answers: list[Sample], options: dict) -> float | None:
    """The mean per-answer KL of ``model`` to ``reference`` on ``answers``."""
    return mean(sequence_kl(model, reference, tokenizer, prompts, [s.token_ids for s in answers], **options))


def kl_to_reference(policy, baseline, reference, tokenizer, baseline_tokenizer, prompts: list,
                    flat_prompts: list, answers_a: list[Sample], answers_b: list[Sample], *,
                    samples_per_prompt: int, temperature: float,
                    batch_size: int) -> tuple[float | None, float | None]:
    """The policy's and the baseline's mean KL to ``reference`` (0 for the reference itself; None
    without a reference, and for a baseline with its own tokenizer)."""
    if reference is None:
        return None, None
    encoded = [encode_prompt(tokenizer, prompt) for prompt in prompts]  # each prompt once, not K times
    options = dict(temperature=temperature, batch_size=batch_size,
                   prompt_ids=per_answer(encoded, samples_per_prompt, len(answers_a)))
    kl_a = 0.0 if reference is policy else mean_kl(policy, reference, tokenizer, flat_prompts, answers_a, options)
    kl_b = None
    if reference is baseline:
        kl_b = 0.0
    elif baseline_tokenizer is None:
        kl_b = mean_kl(baseline, reference, tokenizer, flat_prompts, answers_b, options)
    return kl_a, kl_b


def judge_outcomes(judge, prompts: list, texts_a: list[str], texts_b: list[str]) -> tuple[list, list[dict]]:
    """:func:`judge_pairs`, or without a judge no outcomes (None each) and no details."""
    if judge is None:
        return [None] * len(texts_a), [{} for _ in texts_a]
    return judge_pairs(judge, prompts, texts_a, texts_b)


def mean_scores_by_scorer(scorers: dict[str, Callable], prompts: list, texts_a: list[str],
                          texts_b: list[str]) -> tuple[dict, dict]:
    """The mean score of A's and of B's answers under each scorer, by the scorer's name."""
    means_a, means_b = {}, {}
    count = len(texts_a)
    for score_name, score in scorers.items():
        values = [float(v) for v in score(prompts + prompts, texts_a + texts_b)]
        if len(values) != 2 * count:
            raise ValueError(f"scorer {score_name!r} returned {len(values)} scores for {2 * count} answers")
        means_a[score_name], means_b[score_name] = mean(values[:count]), mean(values[count:])
    return means_a, means_b


def judge_scores(details: list[dict], key: str) -> list[float]:
    """One side's scores (``key``: "score_a" or "score_b") from a score-function judge; none from others."""
    return [d[key] for d in details if key in d]


def policy_entry(*, rate: dict | None, against: str | None, kl: float | None, answers: list[Sample],
                 harmful: list[bool | None], judge_scores: list[float], scorer_means: dict) -> dict:
    """One policy's entry of the result's ``policies`` (the shape the report reads)."""
    return {"win_rate": rate, "against": against, "kl": kl, **answer_stats(answers, harmful),
            "mean_score": mean(judge_scores), **scorer_means}


def comparison_rows(flat_prompts: list, flat_harmful: list, answers_a: list[Sample], answers_b: list[Sample],
                    outcomes: list, details: list[dict], samples_per_prompt: int) -> list[dict]:
    """One row per comparison: prompt, flag, sample index, both answers, outcome and judge details."""
    return [{"prompt": flat_prompts[i], "harmful": flat_harmful[i], "sample": i % samples_per_prompt,
             "policy_answer": a.text, "baseline_answer": b.text, "outcome": outcomes[i], **details[i]}
            for i, (a, b) in enumerate(zip(answers_a, answers_b, strict=True))]


def comparison_counts(prompts: list, samples_per_prompt: int, comparisons: int, harmful: list) -> dict:
    return {"prompts": len(prompts), "samples_per_prompt": samples_per_prompt, "comparisons": comparisons,
            "harmful_prompts": sum(h is True for h in harmful),
            "benign_prompts": sum(h is False for h in harmful)}


def evaluate_policies(
    policy, baseline, tokenizer, prompts: list, judge: Callable | object | None, *, reference=None,
    harmful: Sequence[bool | None] | None = None, baseline_tokenizer=None, samples_per_prompt: int = 1,
    max_new_tokens: int = 64, temperature: float = 1.0, top_p: float = 1.0, seed: int = 0, batch_size: int = 16,
    names: tuple[str, str] = ("policy", "baseline"), judge_name: str | None = None,
    scorers: dict[str, Callable] | None = None, show_progress: bool = False,
    baseline_samples: list[Sample] | None = None, policy_samples: list[Sample] | None = None,
) -> dict:
    """Compare ``policy`` (A) with ``baseline`` (B) on ``prompts``; models already loaded.

    ``judge``: a score function, a verdict judge or None (see the module docstring). ``reference``: the
    model the KL is measured against (None: no KL); it must read ``tokenizer``'s tokens. The baseline
    uses ``baseline_tokenizer`` when it has another vocabulary (its KL is then not measured).
    ``harmful[i]`` flags prompt i as harmful (True), benign (False) or unknown (None). ``scorers`` are
    further score functions by name (e.g. ``{"rm_score": rm, "gold_score": gold}``): each policy gets
    the mean score of its answers under each, as an entry of that name.
    ``baseline_samples``: the baseline's answers when the caller already has them (from
    :func:`sample_answers` with the same prompts and options), so comparing several policies with one
    baseline samples it once; ``policy_samples`` likewise (e.g. sampled by another engine).

    Returns ``{"judge", "win_rate", "policies", "counts", "seconds", "samples"}``: ``win_rate`` is A's
    (a dict, see :class:`~rlhfkit.evaluate.win_rate.WinRate`; None without a judge); ``policies`` maps
    ``names`` to ``{"win_rate", "against", "kl", "mean_length", "eos_rate", "refusal_rate",
    "over_refusal_rate", "mean_score"}`` (the shape the report reads); ``samples`` holds one row per
    comparison: ``{"prompt", "harmful", "sample", "policy_answer", "baseline_answer", "outcome", ...}``
    with outcome 1 when the policy wins, 0 when the baseline does, 0.5 for a tie.
    """
    harmful = harmful_flags(harmful, prompts)
    k = samples_per_prompt
    options = dict(samples_per_prompt=k, max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                   batch_size=batch_size, seed=seed, show_progress=show_progress)
    seconds = {}
    with timed(seconds, "sample"):
        answers_a, answers_b = sample_policy_and_baseline(policy, baseline, tokenizer, baseline_tokenizer, prompts,
                                                          options, baseline_samples, policy_samples)
    flat_prompts = per_answer(prompts, k, len(answers_a))
    flat_harmful = per_answer(harmful, k, len(answers_a))
    with timed(seconds, "kl"):
        kl_a, kl_b = kl_to_reference(policy, baseline, reference, tokenizer, baseline_tokenizer, prompts,
                                     flat_prompts, answers_a, answers_b, samples_per_prompt=k,
                                     temperature=temperature, batch_size=batch_size)
    with timed(seconds, "judge"):
        texts_a, texts_b = [s.text for s in answers_a], [s.text for s in answers_b]
        outcomes, details = judge_outcomes(judge, flat_prompts, texts_a, texts_b)
    scorer_means_a, scorer_means_b = mean_scores_by_scorer(scorers or {}, flat_prompts, texts_a, texts_b)

    result_rate = win_rate(outcomes).as_dict() if judge is not None else None
    policies = {
        names[0]: policy_entry(rate=result_rate, against=names[1], kl=kl_a, answers=answers_a,
                               harmful=flat_harmful, judge_scores=judge_scores(details, "score_a"),
                               scorer_means=scorer_means_a),
        names[1]: policy_entry(rate=None, against=None, kl=kl_b, answers=answers_b,
                               harmful=flat_harmful, judge_scores=judge_scores(details, "score_b"),
                               scorer_means=scorer_means_b),
    }
    rows = comparison_rows(flat_prompts, flat_harmful, answers_a, answers_b, outcomes, details, k)
    return {
        "judge": judge_name or judge_name_of(judge),
        "win_rate": result_rate,
        "policies": policies,
        "counts": comparison_counts(prompts, k, len(rows), harmful),
        "seconds": seconds,
        "samples": rows,
    }


def report_summary(result: dict, *, title: str | None = None, max_samples: int = 20) -> dict:
    """The parts of an :func:`evaluate_policies` result that :func:`rlhfkit.evaluate.report.write_report`
    draws: policies, sample answers side by side (the first ``max_samples``), wall times, notes."""
    names = list(result["policies"])
    counts = result["counts"]
    notes = [f"Judge: {result['judge']}. {counts['comparisons']} comparisons ({counts['prompts']} prompts x "
             f"{counts['samples_per_prompt']} answers per policy); ties count as half a win; the interval is "
             "Wilson's 95% score interval.",
             "Refusal rates use a marker-phrase detector (rlhfkit.evaluate.refusal): compare policies with it, "
             "do not read it as an absolute measure."]
    if result.get("people"):
        people = result["people"]
        notes.append(f"Judged by people in the feedback project {people.get('project')!r}: "
                     f"{people.get('labelled', 0)} of {people.get('items', 0)} pairs labelled.")
    return {
        "title": title or f"{names[0]} vs {names[1]}",
        **({"created": result["created"]} if "created" in result else {}),
        "stage_seconds": {f"eval: {stage}": seconds for stage, seconds in result.get("seconds", {}).items()
                          if stage != "total"},
        "policies": result["policies"],
        "samples": [{"prompt": row["prompt"], "answers": {names[0]: row["policy_answer"],
                                                          names[1]: row["baseline_answer"]}}
                    for row in result["samples"][:max_samples]],
        "notes": notes,
    }
