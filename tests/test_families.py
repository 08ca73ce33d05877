"""The model families people fine-tune, as tiny random models built from their transformers configs:
Llama, Qwen2, Qwen3, Mistral, Gemma 2, Gemma 3 (text), Phi-3, OLMo 2 and GPT-NeoX, on one shared
tokenizer. On each, the shared-prompt layouts (models/prefix.py: tree rows, the prompt cache) give the
padded forward's log-probs, rewards and gradients, or are refused by their probe with a logged reason;
left and right padding give the same rewards; the folders rlhfkit saves reload with plain HF.

The sliding-window families get a window of 6 tokens, shorter than the sequences here, so the tree
rows' windowed masks are checked against HF's own sliding-window forward."""

from __future__ import annotations

import dataclasses
import functools
import logging

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

from rlhfkit.data.chat import encode_prompt, pad_batch, tokenize_prompt_response
from rlhfkit.models import load_causal_lm, save_model
from rlhfkit.models.prefix import TreeBatch, prompt_cache_refusal, prompt_cache_support, tree_refusal
from rlhfkit.models.reward import RewardModel, load_reward_backbone, sequence_rewards, tree_rewards
from rlhfkit.models.tiny import tiny_config

pytestmark = pytest.mark.usefixtures("one_thread")

FAMILIES = ("llama", "qwen2", "qwen3", "mistral", "gemma2", "gemma3", "phi3", "olmo2", "gpt-neox")
SLIDING = {"mistral", "gemma2", "gemma3", "phi3"}
WINDOW = 6

# the one refusal among the nine: HF keeps sliding-window layers' keys in a DynamicSlidingWindowLayer, which
# the prompt cache does not repeat per answer (their tree rows take the window in the mask instead)
REFUSED = {(family, "cache"): "DynamicSlidingWindowLayer" for family in SLIDING}

PROMPTS = [[{"role": "user", "content": "What is the capital of Peru?"}], [{"role": "user", "content": "Hi"}]]
ANSWERS = [["Lima.", "It is Lima, on the coast.", "Cusco, I think, or Lima."], ["Hello!", "Hey there.", "Hi."]]


@functools.cache
def _folder(family: str, tokenizer, root) -> str:
    """A saved random causal LM of ``family`` (2 layers, width 32) for ``tokenizer``."""
    config = tiny_config(family, vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, width=32,
                         sliding_window=WINDOW)
    torch.manual_seed(0)
    folder = root / family
    save_model(AutoModelForCausalLM.from_config(config), tokenizer, folder)
    return str(folder)


@pytest.fixture(scope="session")
def family_folder(tokenizer, tmp_path_factory):
    root = tmp_path_factory.mktemp("families")
    return lambda family: _folder(family, tokenizer, root)


def _groups(tokenizer) -> list[list[list[int]]]:
    """Per prompt, its answers' training sequences (prompt, answer and end-of-turn token)."""
    return [[tokenize_prompt_response(tokenizer, p, a, 64).input_ids for a in answers]
            for p, answers in zip(PROMPTS, ANSWERS, strict=True)]


def _rollout(tokenizer, share: tuple[str, ...]):
    """2 prompts x 3 answers (one unfinished) as PPO lays them out."""
    from rlhfkit.rollout.logprobs import answer_rollout

    prompt_ids = [encode_prompt(tokenizer, p) for p in PROMPTS for _ in range(3)]
    answers = [tokenizer(a, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
               for per_prompt in ANSWERS for a in per_prompt]
    answers[4] = answers[4][:-1]  # ran out of tokens
    return dataclasses.replace(answer_rollout(prompt_ids, answers, tokenizer, torch.device("cpu")),
                               share_prompts=share)


def _with_grads(model, compute):
    model.zero_grad()
    values = compute()
    weights = torch.arange(1.0, values.numel() + 1).view_as(values)
    (values * weights).sum().backward()
    return values.detach(), [p.grad.clone() for p in model.parameters() if p.grad is not None]


def _assert_close(got, expected):
    """Values within 1e-5, gradients within 1e-5 of their largest entry (float32 rounding of sums in
    another order)."""
    assert torch.allclose(got[0], expected[0], atol=1e-5), (got[0] - expected[0]).abs().max()
    assert len(got[1]) == len(expected[1])
    for a, b in zip(got[1], expected[1], strict=True):
        assert torch.allclose(a, b, atol=1e-5 * max(1.0, float(b.abs().max()))), (a - b).abs().max()


@pytest.mark.parametrize("family", FAMILIES)
def test_shared_prompt_logprobs_equal_the_padded_forward_or_are_refused(family, family_folder, tokenizer, caplog):
    from rlhfkit.rollout.logprobs import cheapest_layout, response_logprobs

    model = load_causal_lm(family_folder(family), tokenizer)
    padded = _with_grads(model, lambda: response_logprobs(model, _rollout(tokenizer, ()), temperature=0.7)[0])
    assert (padded[0][_rollout(tokenizer, ()).mask == 0] == 0).all()
    for layout, refusal in (("tree", tree_refusal), ("cache", prompt_cache_refusal)):
        reason = refusal(model)
        if (family, layout) in REFUSED:
            assert reason is not None and REFUSED[family, layout] in reason
            continue
        assert reason is None, f"{family} refuses the {layout}: {reason}"
        rollout = _rollout(tokenizer, (layout,))
        assert cheapest_layout(rollout) == layout
        shared = _with_grads(model, lambda rollout=rollout: response_logprobs(model, rollout, temperature=0.7)[0])
        _assert_close(shared, padded)
    if (family, "cache") in REFUSED:  # the refusal is logged with its reason
        with caplog.at_level(logging.INFO, logger="rlhfkit.models"):
            assert not prompt_cache_support(model)
        assert REFUSED[family, "cache"] in caplog.text and "the prompt cache off" in caplog.text


@pytest.mark.parametrize("family", FAMILIES)
def test_rewards_agree_in_tree_rows_and_with_either_padding_side(family, family_folder, tokenizer):
    model = load_reward_backbone(family_folder(family), tokenizer, seed=1).eval()
    assert tree_refusal(model) is None
    groups = _groups(tokenizer)
    flat = [s for group in groups for s in group]
    assert max(map(len, flat)) > WINDOW + 4  # the sliding windows matter
    pad = tokenizer.pad_token_id
    right = _with_grads(model, lambda: sequence_rewards(model, *pad_batch(flat, pad, side="right")))
    left = _with_grads(model, lambda: sequence_rewards(model, *pad_batch(flat, pad, side="left")))
    tree = _with_grads(model, lambda: tree_rewards(model, TreeBatch.from_groups(groups, pad)))
    _assert_close(left, right)
    _assert_close(tree, right)
    alone = torch.stack([sequence_rewards(model, *pad_batch([s], pad)).detach()[0] for s in flat])
    assert torch.allclose(right[0], alone, atol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_dpo_sequence_logps_in_tree_rows_equal_the_padded_batch(family, family_folder, tokenizer):
    from rlhfkit.rollout.logprobs import sequence_logps
    from rlhfkit.train.dpo_data import PreferenceExample, collate_examples

    model = load_causal_lm(family_folder(family), tokenizer)
    examples = [PreferenceExample(tokenize_prompt_response(tokenizer, p, a[0], 64),
                                  tokenize_prompt_response(tokenizer, p, a[1], 64))
                for p, a in zip(PROMPTS, ANSWERS, strict=True)]
    results = [_with_grads(model, lambda share=share: sequence_logps(
        model, collate_examples(examples, tokenizer.pad_token_id, share), logit_mask=True, temperature=0.8)[0])
        for share in (False, True)]
    _assert_close(results[1], results[0])


@pytest.mark.parametrize("family", FAMILIES)
def test_saved_folders_reload_with_plain_hf(family, family_folder, tokenizer, tmp_path):
    policy = load_causal_lm(family_folder(family), tokenizer)
    save_model(policy, tokenizer, tmp_path / "policy")
    ids = torch.tensor([_groups(tokenizer)[0][1]])
    plain = AutoModelForCausalLM.from_pretrained(tmp_path / "policy")
    assert type(plain) is type(policy)
    assert torch.allclose(plain(ids).logits, policy(ids).logits, atol=1e-5)
    reloaded_tokenizer = AutoTokenizer.from_pretrained(tmp_path / "policy")
    assert reloaded_tokenizer.chat_template == tokenizer.chat_template
    assert encode_prompt(reloaded_tokenizer, PROMPTS[0]) == encode_prompt(tokenizer, PROMPTS[0])

    reward = load_reward_backbone(str(tmp_path / "policy"), tokenizer, seed=2).eval()
    save_model(reward, tokenizer, tmp_path / "rm")
    hf_reward = AutoModelForSequenceClassification.from_pretrained(tmp_path / "rm")
    assert hf_reward.config.num_labels == 1
    flat = [s for group in _groups(tokenizer) for s in group]
    ids, mask = pad_batch(flat, tokenizer.pad_token_id)
    with torch.no_grad():
        expected = sequence_rewards(reward, ids, mask)
        assert torch.allclose(hf_reward(input_ids=ids, attention_mask=mask).logits.squeeze(-1), expected, atol=1e-5)
    scorer = RewardModel.from_pretrained(tmp_path / "rm", device="cpu")
    prompts = [p for p, answers in zip(PROMPTS, ANSWERS, strict=True) for _ in answers]
    scores = scorer.score(prompts, [a for answers in ANSWERS for a in answers])
    assert scorer._shares_prompts  # the answers to a prompt were scored in one tree row
    assert scores == pytest.approx(expected.tolist(), abs=1e-5)


def test_a_family_without_a_sequence_classifier_is_refused_at_load(tmp_path, tokenizer):
    from transformers import CohereConfig

    config = CohereConfig(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                          num_attention_heads=2, pad_token_id=tokenizer.pad_token_id,
                          bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    save_model(AutoModelForCausalLM.from_config(config), tokenizer, tmp_path)
    load_causal_lm(str(tmp_path), tokenizer)  # a policy it can be
    with pytest.raises(ValueError, match="no sequence-classification model for the 'cohere' family"):
        load_reward_backbone(str(tmp_path), tokenizer)


def test_a_model_that_numbers_positions_from_the_first_column_is_refused_at_load(tmp_path, tokenizer):
    """ARCHITECTURE.md rule 2 as a load-time check: a forward that ignores the position ids it is given
    would score a left-padded prompt differently from the same prompt alone."""
    from rlhfkit.models.loading import padding_refusal

    model = AutoModelForCausalLM.from_pretrained(_folder("gpt2", tokenizer, tmp_path))  # absolute positions
    assert padding_refusal(model) is None
    forward = model.forward
    model.forward = lambda *args, position_ids=None, **kwargs: forward(*args, **kwargs)
    assert "left-padded sequence's hidden states differ" in padding_refusal(model)
