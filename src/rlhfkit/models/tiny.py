"""Tiny models built locally: a byte-level BPE tokenizer trained on a corpus, and a small random model.

No weights can be downloaded on every machine, so tests, benchmarks and the demo build their own.
The result is a normal HF folder: ``AutoModelForCausalLM.from_pretrained(DIR)`` and
``AutoTokenizer.from_pretrained(DIR)`` load it. Dropout is 0, as in modern LLM configs.
The tokenizer has no chat template (like a base model): rlhfkit's default template applies.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import GPT2Config, LlamaConfig, PreTrainedModel, PreTrainedTokenizerFast

from rlhfkit.models.loading import PAD_TOKEN

EOS_TOKEN = "<|endoftext|>"


def train_tokenizer(texts: Iterable[str], vocab_size: int = 1024) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer (every byte representable: no unknown tokens)."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS_TOKEN, PAD_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token=EOS_TOKEN, eos_token=EOS_TOKEN, pad_token=PAD_TOKEN
    )


def build_tiny_model(
    tokenizer: PreTrainedTokenizerFast,
    *,
    arch: str = "gpt2",
    layers: int = 2,
    width: int = 64,
    heads: int = 4,
    max_positions: int = 512,
    seed: int = 0,
) -> PreTrainedModel:
    """A small randomly initialised causal LM sized for ``tokenizer``, dropout 0."""
    from transformers import AutoModelForCausalLM

    common = dict(
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    if arch == "gpt2":
        config = GPT2Config(
            n_layer=layers, n_embd=width, n_head=heads, n_positions=max_positions,
            resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, **common,
        )
    elif arch == "llama":
        config = LlamaConfig(
            num_hidden_layers=layers, hidden_size=width, num_attention_heads=heads,
            num_key_value_heads=heads, intermediate_size=width * 4,
            max_position_embeddings=max_positions, attention_dropout=0.0, tie_word_embeddings=True,
            **common,
        )
    else:
        raise ValueError(f"unknown arch '{arch}': expected gpt2 or llama")
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(config)


def write_tiny_model(
    corpus: str | Path,
    output: str | Path,
    *,
    arch: str = "gpt2",
    layers: int = 2,
    width: int = 64,
    heads: int = 4,
    vocab_size: int = 1024,
    max_positions: int = 512,
    seed: int = 0,
) -> Path:
    """Train the tokenizer on the lines of ``corpus`` and save tokenizer + random model to ``output``."""
    corpus = Path(corpus)
    if not corpus.is_file():
        raise FileNotFoundError(f"corpus file {corpus} does not exist")
    lines = [line for line in corpus.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not lines:
        raise ValueError(f"corpus file {corpus} has no text")
    tokenizer = train_tokenizer(lines, vocab_size=vocab_size)
    model = build_tiny_model(
        tokenizer, arch=arch, layers=layers, width=width, heads=heads, max_positions=max_positions, seed=seed
    )
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(output)
    tokenizer.save_pretrained(output)
    return output
