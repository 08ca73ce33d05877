"""Log-probs of answers under a model: the one home of the forward passes that score sampled answers.

Two layouts of the same data:

- A :class:`Rollout` (PPO, GRPO, RLOO, KL evaluation, ``serve``): ``[left-padded prompt | answer,
  padded after its EOS]``, so every answer starts at the same column and per-token tensors are
  ``[N, R]`` over the answer tokens with a 0/1 ``mask`` (1 through the EOS). :func:`answer_logits`
  runs it in the layout with the fewest token positions that the models allow: each prompt once with
  its key/value cache continued by its answers ("cache"), one tree row per prompt ("tree";
  ``models/prefix.py``), or every answer after its own copy of its prompt.
- Labelled sequences (DPO's pairs): right-padded ``input_ids`` with ``labels`` on the answer tokens
  only (or a tree row per pair), scored by :func:`sequence_logps`.

Every function here divides the logits by the sampling temperature when it is given (the log-probs of
sampled answers must be those of the distribution that sampled them; ARCHITECTURE.md, rule 6) and
masks everything after the EOS.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from rlhfkit.data.chat import IGNORE_INDEX, pad_batch
from rlhfkit.data.stop_tokens import stop_token_ids
from rlhfkit.losses import token_logprobs
from rlhfkit.models.loading import accepts_logits_to_keep
from rlhfkit.models.prefix import TreeBatch, continue_from_cache, prompt_cache, tree_forward
from rlhfkit.models.reward import position_ids_from_mask
from rlhfkit.models.sharded import inference
from rlhfkit.rl_losses import entropy_from_logprobs

# ---------------------------------------------------------------------------------------------------
# Rollouts: prompts and their sampled answers

@dataclass
class Rollout:
    """A batch of sampled answers, laid out as ``[left-padded prompt | right-padded answer]``."""

    query: torch.Tensor  # [N, P] prompt tokens, left-padded
    query_mask: torch.Tensor  # [N, P]
    response: torch.Tensor  # [N, R] answer tokens, padded after the first EOS
    mask: torch.Tensor  # [N, R] float: 1 through the first EOS, 0 after
    finished: torch.Tensor  # [N] bool: the answer ended with a stop token (EOS)
    prompts: list  # [N] the prompt of each answer (K consecutive answers share one)
    texts: list[str]  # [N] decoded answers
    # the ways the forward passes may run each prompt once for its K consecutive answers, those the models
    # support (models/prefix.py): "cache" (the prompts' key/value cache, continued by the answers) and
    # "tree" (one row per prompt); answer_logits takes the cheapest, or every answer with its own prompt
    share_prompts: tuple[str, ...] = ()
    # [N, R] the sampling engine's log-probs of the answer tokens at the sampling temperature (0 on
    # padding), when the engine reports them (vLLM); the trainer's own are computed from the weights
    engine_logprobs: torch.Tensor | None = None

    def __len__(self) -> int:
        return self.response.shape[0]

    def select(self, index: torch.Tensor | list[int]) -> Rollout:
        index = torch.as_tensor(index, dtype=torch.long)
        rows = index.tolist()
        return Rollout(self.query[index], self.query_mask[index], self.response[index], self.mask[index],
                       self.finished[index], [self.prompts[i] for i in rows], [self.texts[i] for i in rows],
                       self.share_prompts, None if self.engine_logprobs is None else self.engine_logprobs[index])

    def model_inputs(self) -> dict[str, torch.Tensor]:
        input_ids = torch.cat([self.query, self.response], dim=1)
        attention_mask = torch.cat([self.query_mask, self.mask.long()], dim=1)
        return {"input_ids": input_ids, "attention_mask": attention_mask,
                "position_ids": position_ids_from_mask(attention_mask)}


def rollout_from_samples(samples: list, prompts: list, prompt_ids: list[list[int]], pad_token_id: int,
                         device: torch.device, share_prompts: tuple[str, ...] = ()) -> Rollout:
    """The rollout of ``samples`` (:class:`~rlhfkit.rollout.generate.Sample` lists, one per prompt, in
    prompt order): answer ``i*K + k`` is the k-th answer to prompt ``i``."""
    flat = [s for per_prompt in samples for s in per_prompt]
    query, query_mask = pad_batch([prompt_ids[s.prompt_index] for s in flat], pad_token_id, side="left")
    response, mask = pad_batch([s.token_ids for s in flat], pad_token_id, side="right")
    engine_logprobs = None
    if flat and all(s.logprobs is not None for s in flat):
        engine_logprobs = torch.zeros(mask.shape, dtype=torch.float32)
        for row, s in enumerate(flat):
            engine_logprobs[row, : len(s.logprobs)] = torch.tensor(s.logprobs, dtype=torch.float32)
        engine_logprobs = engine_logprobs.to(device)
    return Rollout(query.to(device), query_mask.to(device), response.to(device), mask.float().to(device),
                   torch.tensor([s.finished for s in flat], device=device),
                   [prompts[s.prompt_index] for s in flat], [s.text for s in flat], share_prompts, engine_logprobs)


def join_rollouts(parts: list[Rollout], pad_token_id: int) -> Rollout:
    """The answers of ``parts``, in order, as one rollout: prompts re-padded on the left to the widest,
    answers on the right (positions come from the masks, so padding changes no log-prob)."""
    query_width = max(p.query.shape[1] for p in parts)
    answer_width = max(p.response.shape[1] for p in parts)

    def left(t: torch.Tensor, value) -> torch.Tensor:
        return F.pad(t, (query_width - t.shape[1], 0), value=value)

    def right(t: torch.Tensor, value) -> torch.Tensor:
        return F.pad(t, (0, answer_width - t.shape[1]), value=value)

    return Rollout(torch.cat([left(p.query, pad_token_id) for p in parts]),
                   torch.cat([left(p.query_mask, 0) for p in parts]),
                   torch.cat([right(p.response, pad_token_id) for p in parts]),
                   torch.cat([right(p.mask, 0.0) for p in parts]), torch.cat([p.finished for p in parts]),
                   [x for p in parts for x in p.prompts], [x for p in parts for x in p.texts], parts[0].share_prompts,
                   None if any(p.engine_logprobs is None for p in parts)
                   else torch.cat([right(p.engine_logprobs, 0.0) for p in parts]))


def answer_rollout(prompt_ids: list[list[int]], answer_ids: list[list[int]], tokenizer,
                   device: torch.device) -> Rollout:
    """Encoded prompts and their answers' tokens (through the stop token when there is one) as a Rollout;
    an answer is finished when it ends with one of the tokenizer's stop tokens (the EOS or another:
    :func:`~rlhfkit.data.stop_tokens.stop_token_ids`), as a sampler decides it."""
    query, query_mask = pad_batch(prompt_ids, tokenizer.pad_token_id, side="left")
    if any(answer_ids):
        response, mask = pad_batch(answer_ids, tokenizer.pad_token_id, side="right")
    else:  # no answer has a token: a zero-width answer block
        response, mask = (torch.zeros((len(answer_ids), 0), dtype=torch.long) for _ in range(2))
    stops = set(stop_token_ids(tokenizer))
    finished = torch.tensor([bool(a) and a[-1] in stops for a in answer_ids])
    return Rollout(query.to(device), query_mask.to(device), response.to(device), mask.float().to(device),
                   finished.to(device), [None] * len(answer_ids), [""] * len(answer_ids))


def in_chunks(function, rollout: Rollout, batch_size: int) -> list:
    """Apply ``function`` to micro-batches of ``rollout``; returns the results, one per chunk."""
    return [function(rollout.select(list(range(i, min(i + batch_size, len(rollout))))))
            for i in range(0, len(rollout), batch_size)]


# ---------------------------------------------------------------------------------------------------
# Answer logits and log-probs of a rollout


def answer_logits(model, rollout: Rollout) -> torch.Tensor:
    """The logits that predict each answer token, ``[N, R, vocab]`` (garbage after EOS). Computed for
    the answer positions only when the model supports it."""
    layout = cheapest_layout(rollout)
    if layout == "cache":
        return cached_prompt_answer_logits(model, rollout)
    if layout == "tree":
        return shared_prompt_answer_logits(model, rollout)
    width = rollout.response.shape[1]
    inputs = rollout.model_inputs()
    if accepts_logits_to_keep(model):
        return model(**inputs, logits_to_keep=width + 1).logits[:, :-1]
    return model(**inputs).logits[:, -width - 1 : -1]


def new_prompt_rows(rollout: Rollout) -> torch.Tensor:
    """``[N]`` bool: the rows whose prompt is not the previous row's."""
    query, query_mask = rollout.query, rollout.query_mask
    new = torch.ones(len(rollout), dtype=torch.bool, device=query.device)
    new[1:] = (query[1:] != query[:-1]).any(1) | (query_mask[1:] != query_mask[:-1]).any(1)
    return new


def cheapest_layout(rollout: Rollout) -> str | None:
    """The layout of :func:`answer_logits` with the fewest token positions, among those the rollout
    allows: every answer after its own copy of its prompt (None); one tree row per prompt, answers cut
    at EOS ("tree"); or each prompt once, then every answer padded to the longest ("cache"). Ties go
    to the cache, whose attention work is the smallest. Answers of equal length favour the cache;
    answers that end early favour the tree."""
    if not rollout.share_prompts:
        return None
    rows, prompt_width = rollout.query.shape
    answer_width = rollout.response.shape[1]
    new = new_prompt_rows(rollout)
    groups = int(new.sum())
    costs: dict[str | None, int] = {}
    if "cache" in rollout.share_prompts:
        costs["cache"] = groups * prompt_width + rows * (answer_width - 1)
    if "tree" in rollout.share_prompts:
        group = new.long().cumsum(0) - 1
        answers = torch.zeros(groups, device=group.device).index_add_(0, group, rollout.mask.sum(1).clamp(min=1))
        costs["tree"] = groups * int((rollout.query_mask[new].sum(1) + answers).max())
    costs[None] = rows * (prompt_width + answer_width)
    return min(costs, key=costs.__getitem__)  # the first of equals: the cache, then the tree, then none


def cached_prompt_answer_logits(model, rollout: Rollout) -> torch.Tensor:
    """:func:`answer_logits` with each run of consecutive answers to the same prompt reading that
    prompt once: the distinct prompts run first, and the answers continue from their key/value cache
    (:func:`~rlhfkit.models.prefix.prompt_cache`). The prompts' last logits predict the first answer
    tokens."""
    query, query_mask = rollout.query, rollout.query_mask
    new_prompt = new_prompt_rows(rollout)
    prompt_of_row = new_prompt.long().cumsum(0) - 1
    keep = {"logits_to_keep": 1} if accepts_logits_to_keep(model) else {}
    prompts, cache = prompt_cache(model, query[new_prompt], query_mask[new_prompt], prompt_of_row, **keep)
    first = prompts.logits[:, -1:][prompt_of_row]
    if rollout.response.shape[1] == 1:
        return first
    answers = continue_from_cache(model, cache, query_mask, rollout.response[:, :-1], rollout.mask[:, :-1])
    return torch.cat([first, answers.logits], dim=1)


def shared_prompt_answer_logits(model, rollout: Rollout) -> torch.Tensor:
    """:func:`answer_logits` with consecutive answers to the same prompt in one row (the prompt once,
    then each answer through its EOS; :class:`~rlhfkit.models.prefix.TreeBatch`)."""
    prompt_lengths = rollout.query_mask.sum(1)
    answer_lengths = rollout.mask.sum(1).long().clamp(min=1)
    prompts = [q[q_mask.bool()].tolist() for q, q_mask in zip(rollout.query, rollout.query_mask, strict=True)]
    answers = [r[:n].tolist() for r, n in zip(rollout.response, answer_lengths.tolist(), strict=True)]
    groups: list[list[list[int]]] = []
    for new, prompt, answer in zip(new_prompt_rows(rollout).tolist(), prompts, answers, strict=True):
        if new:
            groups.append([prompt + answer])
        else:
            groups[-1].append(prompt + answer)
    batch = TreeBatch.from_groups(groups, pad_token_id=0).to(rollout.query.device)  # padding is masked: any id
    width = batch.input_ids.shape[1]
    # answer token j of sequence n is predicted at the position of its token P_n + j - 1
    steps = torch.arange(rollout.response.shape[1], device=rollout.query.device)
    predecessors = prompt_lengths[:, None] + torch.minimum(steps[None, :], answer_lengths[:, None] - 1) - 1
    index = batch.token_index(predecessors)
    kept = width - int(prompt_lengths.min()) + 1  # no logits for the prompt positions before the first answer
    if accepts_logits_to_keep(model):
        logits = tree_forward(model, batch, logits_to_keep=kept).logits
    else:
        logits = tree_forward(model, batch).logits[:, -kept:]
    index = (index // width) * kept + index % width - (width - kept)
    return logits.reshape(-1, logits.shape[-1])[index]


def response_logprobs(model, rollout: Rollout, temperature: float, with_entropy: bool = False):
    """Log-probs of the answer tokens under ``model`` at the sampling temperature, ``[N, R]`` (0 after
    EOS), and the per-token entropy when asked."""
    logits = answer_logits(model, rollout)
    all_logprobs = torch.log_softmax(logits.float() / temperature, dim=-1)
    logprobs = all_logprobs.gather(-1, rollout.response.unsqueeze(-1)).squeeze(-1)
    entropy = entropy_from_logprobs(all_logprobs) * rollout.mask if with_entropy else None
    return logprobs * rollout.mask, entropy



def _device_of(model) -> torch.device:
    return next(model.parameters()).device


@inference
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


# ---------------------------------------------------------------------------------------------------
# Log-probs of labelled sequences (DPO)


def supports_logit_mask(model: torch.nn.Module) -> bool:
    """Whether ``model`` can compute logits at chosen positions only (its forward takes ``logits_to_keep``)."""
    return accepts_logits_to_keep(model)


def kept_logits(forward, keep: torch.Tensor) -> torch.Tensor:
    """The logits at the True positions of ``keep`` ``[B, T]``, in row-major order (``[kept, vocab]``), from
    ``forward(logits_to_keep=...)``. Transformers with ``slice_logits_to_keep`` (>= 5.2x) take the boolean
    mask itself; older ones take the columns that any row keeps (a 1-D index), the rest is cut here."""
    import transformers.modeling_utils as modeling_utils

    if hasattr(modeling_utils, "slice_logits_to_keep"):
        return forward(logits_to_keep=keep).logits
    columns = keep.any(0).nonzero().squeeze(-1)
    return forward(logits_to_keep=columns).logits[keep[:, columns]]


def sequence_logps(model: torch.nn.Module, batch: dict[str, torch.Tensor], *, logit_mask: bool,
                   temperature: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """(summed answer log-probs, answer token counts), one per row of ``batch``.

    Position t predicts token t+1, so logits are needed only where ``labels[t+1]`` is an answer token.
    With ``logit_mask`` the model projects just those positions onto the vocabulary; otherwise the full
    logits go through :func:`rlhfkit.losses.token_logprobs`. ``temperature`` divides the logits (log-probs
    of sampled answers, ARCHITECTURE.md, rule 6).
    """
    if "tree_last" in batch:
        return tree_sequence_logps(model, batch, logit_mask=logit_mask, temperature=temperature)
    if "cache_prefix_ids" in batch:
        return cache_sequence_logps(model, batch, logit_mask=logit_mask, temperature=temperature)
    input_ids, attention_mask, labels = batch["input_ids"], batch["attention_mask"], batch["labels"]
    predicts_answer = torch.zeros_like(labels, dtype=torch.bool)
    predicts_answer[:, :-1] = labels[:, 1:] != IGNORE_INDEX
    counts = predicts_answer.sum(-1)
    if logit_mask:
        logits = kept_logits(lambda **keep: model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False,
                                                  **keep), predicts_answer)
        if temperature != 1.0:
            logits = logits / temperature
        targets = labels[:, 1:][predicts_answer[:, :-1]]
        per_token = -F.cross_entropy(logits.float(), targets, reduction="none")
        row_of_token = predicts_answer.nonzero()[:, 0]
        sums = torch.zeros(len(labels), device=per_token.device, dtype=per_token.dtype)
        return sums.index_add(0, row_of_token, per_token), counts
    logits = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits
    return token_logprobs(logits, labels, temperature).sum(-1), counts


def cache_sequence_logps(model: torch.nn.Module, batch: dict[str, torch.Tensor], *, logit_mask: bool,
                         temperature: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`sequence_logps` of a prompt-cache batch (``train/dpo_data.cache_answers``): each prompt runs
    once, and the rest of each sequence continues from its key/value cache. A sequence's first answer
    token is predicted at its prompt's last position, the others inside its continuation (with
    ``logit_mask``, only the continuation positions that predict an answer token are projected)."""
    keep = {"logits_to_keep": 1} if accepts_logits_to_keep(model) else {}
    owner = batch["cache_owner"]
    out, cache = prompt_cache(model, batch["cache_prefix_ids"], batch["cache_prefix_mask"], owner, **keep)
    if cache is None:  # the trainers choose this layout only where prompt_cache_support holds
        raise ValueError(f"{type(model).__name__} keeps no DynamicCache: the prompt-cache layout cannot run it")
    suffix, answer = batch["cache_suffix_ids"], batch["cache_answer_mask"].bool()

    def continued(**kept):
        return continue_from_cache(model, cache, batch["cache_prefix_mask"][owner], suffix, batch["cache_suffix_mask"],
                                   **kept)

    # suffix token j is predicted at the prompt's last position (j = 0) or at continuation position j - 1
    predicts_answer = torch.zeros_like(answer)
    predicts_answer[:, :-1] = answer[:, 1:]
    # in row-major order: the answer tokens with j >= 1
    inside = kept_logits(continued, predicts_answer) if logit_mask else continued().logits[predicts_answer]
    at_prompt = answer[:, 0]
    logits = torch.cat([out.logits[:, -1][owner[at_prompt]], inside])
    # back to the row-major order of the answer tokens: a row's j = 0 token comes before its others
    first = answer.clone()
    first[:, 1:] = False
    order = torch.empty(len(logits), dtype=torch.long, device=logits.device)
    order[first[answer]] = torch.arange(int(at_prompt.sum()), device=logits.device)
    order[~first[answer]] = torch.arange(int(at_prompt.sum()), len(logits), device=logits.device)
    logits = logits[order]
    if temperature != 1.0:
        logits = logits / temperature
    per_token = -F.cross_entropy(logits.float(), suffix[answer], reduction="none")
    sums = torch.zeros(len(suffix), device=per_token.device, dtype=per_token.dtype)
    return sums.index_add(0, answer.nonzero()[:, 0], per_token), answer.sum(-1)


def tree_sequence_logps(model: torch.nn.Module, batch: dict[str, torch.Tensor], *, logit_mask: bool,
                        temperature: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`sequence_logps` of a shared-prompt batch (:func:`tree_answers`): answer token t of a
    sequence is predicted at the row position of its token t-1 (which two answers may share)."""
    tree = TreeBatch.from_dict(batch)
    real = batch["answer_mask"].bool()
    predictors = tree.token_index(batch["answer_positions"] - 1)[real]  # flat row positions
    if logit_mask:
        keep = torch.zeros(tree.input_ids.numel(), dtype=torch.bool, device=predictors.device)
        keep[predictors] = True
        logits = kept_logits(lambda **kept: tree_forward(model, tree, use_cache=False, **kept),
                             keep.view_as(tree.input_ids))
        logits = logits[(keep.cumsum(0) - 1)[predictors]]  # the kept rows come in row-major order
    else:
        logits = tree_forward(model, tree, use_cache=False).logits.flatten(0, 1)[predictors]
    if temperature != 1.0:
        logits = logits / temperature
    per_token = -F.cross_entropy(logits.float(), batch["answer_tokens"][real], reduction="none")
    sequence_of_token = real.nonzero()[:, 0]
    sums = torch.zeros(len(real), device=per_token.device, dtype=per_token.dtype)
    return sums.index_add(0, sequence_of_token, per_token), real.sum(-1)

