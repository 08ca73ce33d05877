"""The family checks on a GPU, and an SFT step packed against padded: run by hand on one CUDA device.

    python benchmarks/gpu_families.py                # 0.5B-shaped random Qwen2, bf16, sdpa (+ flash-attention 2
                                                     # where installed); a few minutes on one GPU
    python benchmarks/gpu_families.py --tiny --device cpu   # the same script on a tiny model (a smoke test)

For each attention implementation: the probes' verdicts (tree rows, prompt cache, position-id packing),
then, against the padded forward of the same sequences, the largest gap of the shared-prompt layouts'
answer log-probs, of tree-row rewards and of left-padded rewards, and the relative error of every
packed example's logits against the example alone; then the seconds of one SFT optimizer step (forward and backward) on
HH-like lengths, padded (batches grouped by length) and packed (rows of --max-length, the same tokens).
Nothing is downloaded: the model is built from ``Qwen2Config`` with random weights.
"""

from __future__ import annotations

import argparse
import random
import time

import torch


def qwen2_config(tiny: bool):
    from transformers import Qwen2Config

    if tiny:
        return Qwen2Config(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2, pad_token_id=0, num_labels=1,
                           initializer_range=0.1)
    return Qwen2Config(vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                       num_attention_heads=14, num_key_value_heads=2, max_position_embeddings=32768,
                       tie_word_embeddings=True, pad_token_id=0, num_labels=1,
                       initializer_range=0.1)  # wider than the default 0.02: outputs that depend on the context


def gaps(causal, reward, device) -> dict[str, float]:
    """Largest absolute differences against the padded forward (log-probs, rewards, packed losses)."""
    from rlhfkit.data.chat import pad_batch
    from rlhfkit.models.prefix import (
        TreeBatch,
        cache_layout,
        packing_layout,
        prompt_cache_support,
        tree_support,
    )
    from rlhfkit.models.reward import cache_rewards, sequence_rewards, tree_rewards
    from rlhfkit.rollout.logprobs import Rollout, response_logprobs

    rng = random.Random(0)
    vocab = causal.config.vocab_size
    prompts = [[rng.randrange(1, vocab) for _ in range(n)] for n in (40, 25)]
    answers = [[rng.randrange(1, vocab) for _ in range(rng.randint(5, 30))] for _ in range(8)]
    owner = [i // 4 for i in range(8)]
    query, query_mask = pad_batch([prompts[o] for o in owner], 0, side="left")
    response, mask = pad_batch(answers, 0)
    out: dict[str, float] = {}
    layouts = [name for name, ok in (("cache", prompt_cache_support(causal)), ("tree", tree_support(causal))) if ok]
    with torch.no_grad():
        def logprobs(share):
            rollout = Rollout(query.to(device), query_mask.to(device), response.to(device), mask.float().to(device),
                              torch.ones(8, dtype=torch.bool, device=device), ["p"] * 8, ["a"] * 8, share_prompts=share)
            return response_logprobs(causal, rollout, temperature=1.0)[0].float()

        padded = logprobs(())
        for layout in layouts:
            out[f"logprobs {layout}"] = float((logprobs((layout,)) - padded).abs().max())
        sequences = [prompts[o] + a for o, a in zip(owner, answers, strict=True)]
        right = sequence_rewards(reward, *(t.to(device) for t in pad_batch(sequences, 0)))
        left = sequence_rewards(reward, *(t.to(device) for t in pad_batch(sequences, 0, side="left")))
        out["rewards left vs right"] = float((left - right).abs().max())
        groups = [sequences[:4], sequences[4:]]
        if tree_support(reward):
            out["rewards tree"] = float((tree_rewards(reward, TreeBatch.from_groups(groups, 0).to(device)) - right)
                                        .abs().max())
        if prompt_cache_support(reward):  # the layout RM training and scoring use where tree rows are refused
            layout = {k: v.to(device) for k, v in cache_layout(groups, 0).items()}
            out["rewards cache"] = float((cache_rewards(reward, layout) - right).abs().max())
        layout = packing_layout(causal)
        out[f"packing layout {layout}"] = 0.0
        out["packed logits (relative)"] = packed_gap(causal, sequences, layout, device)
    return out


def packed_gap(model, sequences: list[list[int]], layout: str, device) -> float:
    from rlhfkit.models.prefix import TreeBatch, flat_forward, tree_forward

    tree = TreeBatch.from_groups([sequences[:4], sequences[4:]], 0, share_prefix=False).to(device)
    flat = flat_forward(model, tree).logits[0] if layout == "varlen" else tree_forward(model, tree).logits[
        tree.segment >= 0]
    worst, offset = 0.0, 0
    for sequence in sequences:
        alone = model(input_ids=torch.tensor([sequence], device=device)).logits[0].float()
        packed = flat[offset : offset + len(sequence)].float()
        offset += len(sequence)
        worst = max(worst, float((packed - alone).norm() / alone.norm()))
    return worst


def step_seconds(model, device, *, packed: bool, max_length: int, rows: int, tiny: bool) -> float:
    """One SFT forward and backward on HH-like lengths (mean ~280 tokens), padded or packed."""
    from rlhfkit.data.chat import IGNORE_INDEX, TokenizedExample
    from rlhfkit.models.prefix import packing_layout
    from rlhfkit.train.sft import (
        collate_packed,
        collate_right_padded,
        pack_examples,
        packed_batch_loss,
        sft_batch_loss,
    )

    rng = random.Random(1)
    vocab = model.config.vocab_size
    lengths = sorted((min(max_length, int(rng.lognormvariate(5.4, 0.5))) for _ in range(rows * 4)), reverse=True)
    examples = [TokenizedExample([rng.randrange(1, vocab) for _ in range(n)],
                                 [IGNORE_INDEX] * (n // 2) + [rng.randrange(1, vocab) for _ in range(n - n // 2)])
                for n in lengths]
    packed_rows = pack_examples(examples, max_length)[:rows]
    chosen = [e for row in packed_rows for e in row.examples]
    layout = packing_layout(model) if packed else None
    batches = [collate_packed(packed_rows, 0)] if packed else [
        collate_right_padded(chosen[i : i + 8], 0) for i in range(0, len(chosen), 8)]  # length-grouped batches
    timings = []
    for _ in range(3 if tiny else 4):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        for batch in batches:
            batch = {k: v.to(device) for k, v in batch.items()}
            loss = (packed_batch_loss(model, batch, 1000.0, layout) if packed else sft_batch_loss(model, batch,
                                                                                                  1000.0))[0]
            loss.backward()
        if device.type == "cuda":
            torch.cuda.synchronize()
        timings.append(time.perf_counter() - start)
        model.zero_grad(set_to_none=True)
    return min(timings[1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--max-length", type=int, default=1024)
    parser.add_argument("--rows", type=int, default=8, help="packed rows per step (the padded step gets their examples)")
    args = parser.parse_args()
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification
    from transformers.utils import is_flash_attn_2_available

    device = torch.device(args.device)
    dtype = torch.float32 if device.type == "cpu" else torch.bfloat16
    implementations = ["sdpa"] + (["flash_attention_2"] if device.type == "cuda" and is_flash_attn_2_available() else [])
    for implementation in implementations:
        config = qwen2_config(args.tiny)
        config._attn_implementation = implementation
        torch.manual_seed(0)
        causal = AutoModelForCausalLM.from_config(config, dtype=dtype).to(device).eval()
        reward = AutoModelForSequenceClassification.from_config(config, dtype=dtype).to(device).eval()
        print(f"== {implementation}, {dtype}, {sum(p.numel() for p in causal.parameters()) / 1e6:.0f}M parameters")
        for name, value in gaps(causal, reward, device).items():
            print(f"  {name:28s} {value:.3g}")
        causal.train()
        padded = step_seconds(causal, device, packed=False, max_length=args.max_length, rows=args.rows, tiny=args.tiny)
        packed = step_seconds(causal, device, packed=True, max_length=args.max_length, rows=args.rows, tiny=args.tiny)
        print(f"  SFT step: padded {padded:.3f}s, packed {packed:.3f}s, packed speed-up {padded / packed:.2f}x")
        del causal, reward


if __name__ == "__main__":
    main()
