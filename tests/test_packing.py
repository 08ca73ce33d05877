"""SFT packing without cross-talk: whole examples share rows, each kept apart by a block-diagonal
mask (sdpa, eager) or by position ids alone (the varlen form flash-attention takes; on the CPU,
transformers finds the sequences from the restarting position ids the same way). Checked against
the reference, each example alone: the same per-example loss, and the same training loss and
gradients as the unpacked batch."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM

from rlhfkit.data import Demonstration
from rlhfkit.data.chat import IGNORE_INDEX, TokenizedExample, tokenize_demonstration
from rlhfkit.models.prefix import TreeBatch, flat_forward, packing_layout, tree_forward, varlen_refusal
from rlhfkit.models.tiny import tiny_config
from rlhfkit.train.sft import (
    PackedRow,
    collate_packed,
    collate_right_padded,
    pack_examples,
    packed_batch_loss,
    sft_batch_loss,
)

pytestmark = pytest.mark.usefixtures("one_thread")

QUESTIONS = ["What is the capital of Peru?", "Hi", "Name a river in Africa.", "What is two plus two?",
             "Which ocean is the largest?", "Say something kind."]
ANSWERS = ["Lima.", "Hello! How can I help you today?", "The Nile, the longest river in Africa.", "Four.",
           "The Pacific Ocean.", "You are doing well."]


def _examples(tokenizer) -> list[TokenizedExample]:
    chats = [Demonstration(messages=[{"role": "user", "content": q}, {"role": "assistant", "content": a}],
                           trainable=[False, True]) for q, a in zip(QUESTIONS, ANSWERS, strict=True)]
    plain = [Demonstration(prompt="", completion=" Plain text, labelled from its first token."),
             Demonstration(prompt="Q: 2+2?\nA:", completion=" 4")]
    return [tokenize_demonstration(tokenizer, demo, 64) for demo in chats + plain]


def test_rows_hold_whole_examples_best_fit_longest_first():
    def example(n: int) -> TokenizedExample:
        return TokenizedExample(list(range(n)), [IGNORE_INDEX] + list(range(1, n)))

    examples = [example(n) for n in (3, 7, 5, 2, 4, 6, 1)]  # 28 tokens
    rows = pack_examples(examples, max_length=10)
    assert [[len(e.input_ids) for e in row.examples] for row in rows] == [[7, 3], [6, 4], [5, 2, 1]]
    assert sorted(id(e) for row in rows for e in row.examples) == sorted(id(e) for e in examples)
    # each example's first label is ignored: nothing in its own sequence comes before it
    row = PackedRow([TokenizedExample([5, 6], [5, 6]), TokenizedExample([7, 8, 9], [IGNORE_INDEX, 8, 9])])
    assert row.input_ids == [5, 6, 7, 8, 9] and row.labels == [IGNORE_INDEX, 6, IGNORE_INDEX, 8, 9]
    assert row.num_target_tokens == 3


def test_packed_rows_restart_positions_and_attend_within_each_example():
    batch = TreeBatch.from_groups([[[5, 6, 7], [5, 6]], [[1, 2]]], pad_token_id=0, share_prefix=False)
    assert batch.input_ids.tolist() == [[5, 6, 7, 5, 6], [1, 2, 0, 0, 0]]  # the common 5, 6 is not shared
    assert batch.position_ids.tolist() == [[0, 1, 2, 0, 1], [0, 1, 0, 0, 0]]
    assert batch.attention_mask()[0, 0].int().tolist() == [[1, 0, 0, 0, 0],
                                                           [1, 1, 0, 0, 0],
                                                           [1, 1, 1, 0, 0],
                                                           [0, 0, 0, 1, 0],
                                                           [0, 0, 0, 1, 1]]


def _model(family: str, tokenizer, implementation: str = "sdpa"):
    config = tiny_config(family, vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, width=32,
                         sliding_window=6)
    config._attn_implementation = implementation
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config)


def _summed_nll(logits: torch.Tensor, example: TokenizedExample) -> torch.Tensor:
    """``[tokens, vocab]`` logits of one example's positions: its summed loss (first label ignored)."""
    targets = torch.tensor(example.labels[1:])
    return F.cross_entropy(logits[:-1].float(), targets, ignore_index=IGNORE_INDEX, reduction="sum")


CASES = [("llama", "sdpa"), ("gpt2", "sdpa"), ("mistral", "sdpa"), ("gemma2", "eager"), ("qwen3", "eager")]


@pytest.mark.parametrize(("family", "implementation"), CASES)
@pytest.mark.parametrize("layout", ["mask", "varlen"])
def test_packed_examples_have_the_loss_and_gradients_they_have_alone(family, implementation, layout, tokenizer):
    model = _model(family, tokenizer, implementation)
    assert varlen_refusal(model) is None
    examples = _examples(tokenizer)
    rows = pack_examples(examples, max_length=96)
    assert len(rows) < len(examples) and max(len(r.examples) for r in rows) >= 3
    batch = collate_packed(rows, tokenizer.pad_token_id)
    tree = TreeBatch.from_dict(batch)
    with torch.no_grad():
        if layout == "varlen":
            flat = flat_forward(model, tree).logits[0]
        else:
            flat = tree_forward(model, tree).logits[tree.segment >= 0]  # row-major: the examples in row order
        offsets, packed = 0, []
        for example in (e for row in rows for e in row.examples):
            packed.append(_summed_nll(flat[offsets : offsets + len(example.input_ids)], example))
            offsets += len(example.input_ids)
        alone = [_summed_nll(model(torch.tensor([e.input_ids])).logits[0], e)
                 for row in rows for e in row.examples]
    assert torch.allclose(torch.stack(packed), torch.stack(alone), atol=1e-4)

    # one training step's loss and gradients: packed rows against the plain right-padded batch
    normalizer = float(sum(row.num_target_tokens for row in rows))
    grads = []
    for loss_of in (lambda: packed_batch_loss(model, batch, normalizer, layout)[0],
                    lambda: sft_batch_loss(model, collate_right_padded(examples, tokenizer.pad_token_id),
                                           normalizer)[0]):
        model.zero_grad()
        loss = loss_of()
        loss.backward()
        grads.append((loss.detach(), [p.grad.clone() for p in model.parameters() if p.grad is not None]))
    assert torch.allclose(grads[0][0], grads[1][0], atol=1e-5)
    for a, b in zip(grads[0][1], grads[1][1], strict=True):
        assert torch.allclose(a, b, atol=1e-5 * max(1.0, float(b.abs().max())))


def test_the_layout_follows_the_attention_and_a_model_that_cannot_pack_is_refused(tokenizer):
    assert packing_layout(_model("llama", tokenizer, "sdpa")) == "mask"
    assert packing_layout(_model("gemma2", tokenizer, "eager")) == "mask"
    blind = _model("llama", tokenizer, "sdpa")
    forward = blind.forward

    def plain_causal(*args, position_ids=None, attention_mask=None, **kwargs):
        # as a model whose attention takes neither a custom mask nor sequences from position ids would be
        return forward(*args, **kwargs)

    blind.forward = plain_causal
    with pytest.raises(ValueError, match="keeps packed examples apart neither with a block mask"):
        packing_layout(blind)


def test_packed_sft_keeps_examples_apart_end_to_end(tmp_path, tiny_llama_dir, example_files):
    """run_sft with --packing on the example demonstrations: its first logged loss (before any update)
    is the unpacked token-mean loss of the examples of its first step."""
    from rlhfkit.config import SFTConfig
    from rlhfkit.data import load_demonstrations
    from rlhfkit.models import load_causal_lm, load_tokenizer
    from rlhfkit.train.batches import BatchPlan
    from rlhfkit.train.sft import run_sft, tokenize_demonstrations

    output = tmp_path / "packed"
    config = SFTConfig(model=str(tiny_llama_dir), data=str(example_files["demonstrations"]), output=str(output),
                       packing=True, max_length=128, batch_size=2, max_steps=3, eval_split=0.0, warmup_ratio=0.0,
                       log_every=1, save_every=0, device="cpu", learning_rate=3e-3)
    run_sft(config)
    first = json.loads((output / "metrics.jsonl").read_text().splitlines()[0])
    tokenizer = load_tokenizer(str(tiny_llama_dir))
    examples = tokenize_demonstrations(tokenizer, load_demonstrations(config.data), 128, "x")
    rows = pack_examples(examples, 128)
    plan = BatchPlan(len(rows), 2, 1, 1, config.seed, tuple(len(r.input_ids) for r in rows))
    chosen = [e for i in plan.global_indices(0) for e in rows[i].examples]
    model = load_causal_lm(str(tiny_llama_dir), tokenizer)
    with torch.no_grad():
        expected = sft_batch_loss(model, collate_right_padded(chosen, tokenizer.pad_token_id),
                                  float(sum(e.num_target_tokens - (e.labels[0] != IGNORE_INDEX) for e in chosen)))[0]
    assert first["loss"] == pytest.approx(float(expected), abs=1e-4)
