"""Shared-prompt rows (models/prefix.py): the layout by hand, and the same rewards and gradients as
the plain padded forward on real HF models (Llama and GPT-2, sdpa and eager attention)."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForSequenceClassification, GPT2Config, LlamaConfig

from rlhfkit.data.chat import IGNORE_INDEX, TokenizedExample, pad_batch, truncate_prompt_first_together
from rlhfkit.models import load_tokenizer
from rlhfkit.models.loading import enable_checkpointing
from rlhfkit.models.prefix import (
    TreeBatch,
    common_prefix_length,
    prompt_cache_support,
    row_width,
    tree_support,
)
from rlhfkit.models.reward import load_reward_backbone, sequence_rewards, tree_rewards
from rlhfkit.train.rm import TokenizedGroup, collate_groups, rm_batch_loss

GROUPS = [
    [[5, 6, 7, 8, 9], [5, 6, 7, 10], [5, 6, 7, 11, 12, 13, 14]],  # K=3, prompt of 3
    [[3, 4, 9, 9, 9, 9, 9], [3, 4, 8]],
    [[1, 2, 3], [2, 3, 4]],  # nothing in common
    [[7, 7], [7, 7, 7]],  # one is a prefix of the other: the shorter keeps its last token as its suffix
]


def test_common_prefix_leaves_one_token_per_sequence():
    assert common_prefix_length([[1, 2, 3], [1, 2, 4, 5]]) == 2
    assert common_prefix_length([[1, 2], [1, 2, 3]]) == 1
    assert common_prefix_length([[1, 2, 3], [1, 2, 3]]) == 2
    assert common_prefix_length([[1, 2], [3, 4]]) == 0
    assert common_prefix_length([[4, 5, 6]]) == 2
    assert row_width([[5, 6, 7], [5, 6, 8, 9]]) == 2 + 1 + 2


def test_tree_layout_and_mask_by_hand():
    batch = TreeBatch.from_groups([[[5, 6, 7], [5, 6, 8, 9]], [[1, 2]]], pad_token_id=0)
    assert batch.input_ids.tolist() == [[5, 6, 7, 8, 9], [1, 2, 0, 0, 0]]
    assert batch.position_ids.tolist() == [[0, 1, 2, 2, 3], [0, 1, 0, 0, 0]]
    assert batch.segment.tolist() == [[0, 0, 1, 2, 2], [0, 1, -1, -1, -1]]
    assert batch.last.tolist() == [2, 4, 6] and batch.owner.tolist() == [0, 0, 1]
    assert batch.start.tolist() == [2, 3, 6] and batch.shared.tolist() == [2, 2, 1]
    tokens = torch.tensor([[0, 1, 2, 2], [0, 1, 2, 3], [0, 1, 1, 1]])  # positions within each sequence
    assert batch.token_index(tokens).tolist() == [[0, 1, 2, 2], [0, 1, 3, 4], [5, 6, 6, 6]]
    mask = batch.attention_mask()[:, 0].int().tolist()
    assert mask[0] == [[1, 0, 0, 0, 0],
                       [1, 1, 0, 0, 0],
                       [1, 1, 1, 0, 0],   # answer 1 sees the prompt and itself
                       [1, 1, 0, 1, 0],   # answer 2 never sees answer 1
                       [1, 1, 0, 1, 1]]
    assert mask[1] == [[1, 0, 0, 0, 0],
                       [1, 1, 0, 0, 0],
                       [0, 0, 1, 0, 0],   # padding sees itself only: no empty row
                       [0, 0, 0, 1, 0],
                       [0, 0, 0, 0, 1]]
    additive = batch.attention_mask(torch.float32)
    assert additive[0, 0, 3, 2] == torch.finfo(torch.float32).min and additive[0, 0, 3, 1] == 0.0


def _model(arch: str, implementation: str) -> torch.nn.Module:
    torch.manual_seed(0)
    if arch == "llama":
        config = LlamaConfig(vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                             num_attention_heads=4, num_key_value_heads=2, pad_token_id=0, num_labels=1)
    else:
        config = GPT2Config(vocab_size=50, n_embd=32, n_layer=2, n_head=4, pad_token_id=0, bos_token_id=1,
                            eos_token_id=1, num_labels=1, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    config._attn_implementation = implementation
    return AutoModelForSequenceClassification.from_config(config).eval()


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
@pytest.mark.parametrize("implementation", ["sdpa", "eager"])
def test_tree_rewards_and_gradients_equal_the_plain_forward(arch, implementation):
    model = _model(arch, implementation)
    assert tree_support(model)
    flat = [s for group in GROUPS for s in group]
    weights = torch.arange(1.0, len(flat) + 1)  # a different weight per sequence: the gradients must match

    shared = tree_rewards(model, TreeBatch.from_groups(GROUPS, pad_token_id=0))
    (shared * weights).sum().backward()
    shared_grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    plain = sequence_rewards(model, *pad_batch(flat, 0))
    (plain * weights).sum().backward()

    assert torch.allclose(shared, plain, atol=1e-5)
    for shared_grad, parameter in zip(shared_grads, model.parameters(), strict=True):
        assert torch.allclose(shared_grad, parameter.grad, atol=1e-5)


def test_no_tree_for_attention_without_custom_masks():
    model = _model("llama", "sdpa")
    model.config._attn_implementation = "flash_attention_2"
    assert not tree_support(model)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_prompt_cache_is_refused_where_training_would_drop_the_cache(arch):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_config(_model(arch, "sdpa").config)
    assert prompt_cache_support(model)
    enable_checkpointing(model)  # HF turns the cache off in training with checkpointing
    assert not prompt_cache_support(model)


def test_answers_to_one_prompt_lose_the_same_prompt_tokens():
    def example(prompt: int, answer: int) -> TokenizedExample:
        return TokenizedExample(list(range(prompt)) + [100] * answer, [IGNORE_INDEX] * prompt + [100] * answer)

    short, long = truncate_prompt_first_together([example(6, 2), example(6, 4)], max_length=8)
    assert short.input_ids == [2, 3, 4, 5, 100, 100] and long.input_ids == [2, 3, 4, 5] + [100] * 4
    assert short.truncated and long.truncated
    fits = [example(3, 2), example(3, 3)]
    assert truncate_prompt_first_together(fits, max_length=8) == fits
    # an answer longer than max_length alone: the whole prompt goes, then the answer's end
    (cut,) = truncate_prompt_first_together([example(2, 10)], max_length=8)
    assert cut.input_ids == [100] * 8


def test_rm_loss_with_shared_prompts_equals_the_plain_loss(tiny_llama_dir):
    tokenizer = load_tokenizer(str(tiny_llama_dir))
    model = load_reward_backbone(str(tiny_llama_dir), tokenizer, seed=0)
    groups = [TokenizedGroup(group, [(0, 1, 0.0)] + ([(2, 1, 0.5)] if len(group) == 3 else [])) for group in GROUPS]
    pad = tokenizer.pad_token_id
    losses = {}
    for share in (False, True):
        loss, metrics = rm_batch_loss(model, collate_groups(groups, pad, share), normalizer=len(groups))
        losses[share] = (loss.item(), metrics["accuracy"].item(), metrics["reward_margin"].item())
    assert losses[True] == pytest.approx(losses[False], abs=1e-6)


def _ppo_rollout(share: str | None, rows: slice = slice(None)):
    """2 prompts x 3 answers: answers sharing their first tokens, cut at EOS (id 1), one unfinished, and
    garbage after one EOS (which must not matter)."""
    from rlhfkit.rollout.logprobs import Rollout

    prompts = [[11, 12, 13], [21, 22]]
    answers = [[30, 31, 1], [30, 32, 33, 1], [34, 1], [40, 41, 42, 43, 44], [40, 1], [45, 46, 1]]
    query, query_mask = pad_batch([prompts[i // 3] for i in range(6)], 0, side="left")
    response, mask = pad_batch(answers, 0)
    response[1, 4:] = 7
    return Rollout(query[rows], query_mask[rows], response[rows], mask[rows].float(),
                   torch.ones(6, dtype=torch.bool)[rows], ["p"] * 6, ["a"] * 6,
                   share_prompts=(share,) if share else ())


@pytest.mark.parametrize("share", ["tree", "cache"])
@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_ppo_answer_logprobs_with_shared_prompts_equal_the_padded_forward(arch, share):
    """Both ways of reading each prompt once (a tree row; the prompt's key/value cache continued by its
    answers) give the padded batch's log-probs, entropies and gradients."""
    from transformers import AutoModelForCausalLM

    from rlhfkit.rollout.logprobs import cheapest_layout, response_logprobs

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(_model(arch, "sdpa").config).eval()
    assert cheapest_layout(_ppo_rollout(share)) == share

    def logprobs(share: str | None):
        model.zero_grad()
        values, entropy = response_logprobs(model, _ppo_rollout(share), temperature=0.7, with_entropy=True)
        (values * torch.arange(1.0, 7.0)[:, None]).sum().backward()
        return values.detach(), entropy.detach(), [p.grad.clone() for p in model.parameters()]

    plain, shared = logprobs(None), logprobs(share)
    assert torch.allclose(shared[0], plain[0], atol=1e-5) and torch.allclose(shared[1], plain[1], atol=1e-5)
    assert (shared[0][_ppo_rollout(None).mask == 0] == 0).all()
    for a, b in zip(shared[2], plain[2], strict=True):
        assert torch.allclose(a, b, atol=1e-5)


def test_the_cheapest_layout_is_the_cache_for_equal_answers_and_the_tree_for_ragged_ones():
    from rlhfkit.rollout.logprobs import Rollout, cheapest_layout

    query, query_mask = pad_batch([[11, 12, 13]] * 4 + [[21, 22]] * 4, 0, side="left")

    def rollout(lengths: list[int], share=("cache", "tree")):
        mask = (torch.arange(10)[None, :] < torch.tensor(lengths)[:, None]).float()
        return Rollout(query, query_mask, torch.full((8, 10), 5), mask, torch.ones(8, dtype=torch.bool),
                       ["p"] * 8, ["a"] * 8, share_prompts=share)

    # 8 answers of 10: cache 2*3 + 8*9 = 78 positions, tree 2*(3+40) = 86, padded 8*13 = 104
    assert cheapest_layout(rollout([10] * 8)) == "cache"
    # one answer of 10, the rest of 2: cache still 78, tree 2*(3+16) = 38
    assert cheapest_layout(rollout([10] + [2] * 7)) == "tree"
    assert cheapest_layout(rollout([10] + [2] * 7, share=("cache",))) == "cache"
    assert cheapest_layout(rollout([10] * 8, share=())) is None


@pytest.mark.parametrize("logit_mask", [True, False])
def test_dpo_sequence_logps_with_shared_prompts_equal_the_padded_batch(tiny_llama_dir, logit_mask):
    from transformers import AutoModelForCausalLM

    from rlhfkit.rollout.logprobs import sequence_logps
    from rlhfkit.train.dpo import PreferenceExample, collate_examples

    tokenizer = load_tokenizer(str(tiny_llama_dir))
    model = AutoModelForCausalLM.from_pretrained(str(tiny_llama_dir)).eval()

    def sequence(prompt: list[int], answer: list[int]) -> TokenizedExample:
        return TokenizedExample(prompt + answer, [IGNORE_INDEX] * len(prompt) + answer)

    examples = [PreferenceExample(sequence([5, 6, 7], [8, 9, 1]), sequence([5, 6, 7], [8, 10, 11, 12, 1])),
                PreferenceExample(sequence([3, 4, 5, 6, 7, 8], [9, 1]), sequence([3, 4, 5, 6, 7, 8], [20, 21, 1])),
                # partners with other prompts (KTO's mismatched pairs): the prompts' rest is in the suffix
                PreferenceExample(sequence([5, 6, 2, 3], [4, 1]), sequence([5, 6, 9], [8, 13, 1]))]
    results = []
    for share in (False, "tree", "cache"):  # padded; one tree row per pair; the prompt's key/value cache
        model.zero_grad()
        batch = collate_examples(examples, tokenizer.pad_token_id, share)
        assert ("tree_last" in batch, "cache_prefix_ids" in batch) == (share == "tree", share == "cache")
        logps, counts = sequence_logps(model, batch, logit_mask=logit_mask, temperature=0.8)
        (logps * torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0, 6.0])).sum().backward()
        results.append((logps.detach(), counts, [p.grad.clone() for p in model.parameters()]))
    (plain, plain_counts, plain_grads), *shared_layouts = results
    assert plain_counts.tolist() == [3, 2, 2, 5, 3, 3]
    for shared, shared_counts, shared_grads in shared_layouts:
        assert torch.allclose(shared, plain, atol=1e-5) and shared_counts.tolist() == plain_counts.tolist()
        for a, b in zip(shared_grads, plain_grads, strict=True):
            assert torch.allclose(a, b, atol=1e-5)


def test_reward_model_scores_answers_to_one_prompt_together_and_alone_the_same(tmp_path, tiny_llama_dir):
    from rlhfkit.models.reward import RewardModel

    tokenizer = load_tokenizer(str(tiny_llama_dir))
    load_reward_backbone(str(tiny_llama_dir), tokenizer, seed=1).save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    prompts = ["What is the capital of Peru?"] * 3 + ["Hi"] + ["What is the capital of Peru?"] + [
        [{"role": "user", "content": "Hi"}]] * 2
    responses = ["Lima.", "It is Lima, a city on the coast.", "Cusco.", "Hello!", "Lima", "Hello!", "Hey."]
    shared = RewardModel.from_pretrained(tmp_path, device="cpu", max_length=12)  # some answers truncated
    alone = RewardModel.from_pretrained(tmp_path, device="cpu", max_length=12)
    alone._shares_prompts = False
    scores = shared.score(prompts, responses, batch_size=3)
    assert shared._shares_prompts
    assert scores == pytest.approx(alone.score(prompts, responses, batch_size=3), abs=1e-5)
    # an answer scored with its group or on its own gets the same score
    assert shared.score(prompts[1:2], responses[1:2]) == pytest.approx(scores[1:2], abs=1e-5)


def test_without_tree_rows_the_reward_model_shares_prompts_through_the_cache(tmp_path, tiny_llama_dir, monkeypatch):
    """Attention that takes no custom mask (flash-attention) refuses tree rows: the answers to a prompt then
    continue from the prompt's key/value cache, with the scores each answer gets alone."""
    from rlhfkit.models import reward

    tokenizer = load_tokenizer(str(tiny_llama_dir))
    load_reward_backbone(str(tiny_llama_dir), tokenizer, seed=1).save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    prompts = ["What is the capital of Peru?"] * 3 + ["Hi"] + [[{"role": "user", "content": "Hi"}]] * 2
    responses = ["Lima.", "It is Lima, a city on the coast.", "Cusco.", "Hello!", "Hello!", "Hey."]
    alone = reward.RewardModel.from_pretrained(tmp_path, device="cpu", max_length=12)  # some answers truncated
    alone._shares_prompts, alone._caches_prompts = False, False
    expected = alone.score(prompts, responses, batch_size=4)
    monkeypatch.setattr(reward, "tree_support", lambda model: False)
    used = []
    real = reward.cache_layout
    monkeypatch.setattr(reward, "cache_layout", lambda *args: used.append(real(*args)) or used[-1])
    cached = reward.RewardModel.from_pretrained(tmp_path, device="cpu", max_length=12)
    scores = cached.score(prompts, responses, batch_size=4)
    # (a batch whose answers' truncated prompts share no first token runs padded: None)
    assert cached._caches_prompts and any(r is not None for r in used)
    assert scores == pytest.approx(expected, abs=1e-5)


def _ddp_prompt_cache_worker(rank: int, init_file: str, output: str) -> None:
    """One of two DDP processes: its half of the rollout through the prompt cache (two forwards of the
    DDP model), one backward; process 0 saves the synchronised gradients."""
    import torch.distributed as dist
    from transformers import AutoModelForCausalLM

    from rlhfkit.rollout.logprobs import response_logprobs

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    model = AutoModelForCausalLM.from_config(_model("llama", "sdpa").config)  # seeded: the same on both
    ddp = torch.nn.parallel.DistributedDataParallel(model)
    rows = slice(3 * rank, 3 * rank + 3)
    logprobs, _ = response_logprobs(ddp, _ppo_rollout("cache", rows), temperature=1.0)
    (logprobs * torch.arange(1.0, 7.0)[rows, None]).sum().mul(2).backward()  # DDP averages over 2
    if rank == 0:
        torch.save([p.grad for p in model.parameters()], output)
    dist.barrier()
    dist.destroy_process_group()


@pytest.mark.slow
def test_prompt_cache_gradients_under_ddp_equal_one_process(tmp_path):
    """The prompt cache runs the DDP-wrapped model twice before one backward; the gradients two
    processes agree on are those of one process over the whole batch."""
    import torch.multiprocessing as mp
    from transformers import AutoModelForCausalLM

    from rlhfkit.rollout.logprobs import response_logprobs

    output = tmp_path / "grads.pt"
    mp.spawn(_ddp_prompt_cache_worker, args=(str(tmp_path / "init"), str(output)), nprocs=2, join=True)
    model = AutoModelForCausalLM.from_config(_model("llama", "sdpa").config)
    logprobs, _ = response_logprobs(model, _ppo_rollout(None), temperature=1.0)
    (logprobs * torch.arange(1.0, 7.0)[:, None]).sum().backward()
    for synced, alone in zip(torch.load(output), model.parameters(), strict=True):
        assert torch.allclose(synced, alone.grad, atol=1e-5)
