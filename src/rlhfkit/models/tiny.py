"""Tiny models built locally: a byte-level BPE tokenizer trained on a corpus, and a small random model.

No weights can be downloaded on every machine, so tests, benchmarks and the demo build their own.
The result is a normal HF folder: ``AutoModelForCausalLM.from_pretrained(DIR)`` and
``AutoTokenizer.from_pretrained(DIR)`` load it. Dropout is 0, as in modern LLM configs.
The tokenizer has no chat template (like a base model): rlhfkit's default template applies.
:func:`tiny_config` builds the families people fine-tune (:data:`ARCHITECTURES`: GPT-2, Llama, Qwen 2
and 3, Mistral, Gemma 2 and 3, Phi-3, OLMo 2, GPT-NeoX) from their transformers config classes.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import GPT2Config, LlamaConfig, PretrainedConfig, PreTrainedModel, PreTrainedTokenizerFast

from rlhfkit.config import TINY_ARCHITECTURES
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


def _decoder(config_class, layers: int, width: int, heads: int, max_positions: int, **extra):
    """A decoder config in the Llama mould (attention heads, a 4x MLP, rotary positions), dropout 0."""
    return config_class(num_hidden_layers=layers, hidden_size=width, num_attention_heads=heads,
                        intermediate_size=width * 4, max_position_embeddings=max_positions, attention_dropout=0.0,
                        **extra)


def _grouped(heads: int) -> int:
    """Key/value heads of a grouped-query family: half the query heads where that divides."""
    return heads // 2 if heads % 2 == 0 else heads


def _window(sliding_window: int | None, default: int) -> int:
    return default if sliding_window is None else sliding_window


def _gemma_layers(layers: int) -> list[str]:
    # sliding and full layers alternating, ending on a full one: both kinds in even a 2-layer model
    return ["sliding_attention" if (layers - i) % 2 == 0 else "full_attention" for i in range(layers)]


def tiny_config(arch: str, *, vocab_size: int, bos_token_id: int | None, eos_token_id: int | None,
                pad_token_id: int | None, layers: int = 2, width: int = 64, heads: int = 4, max_positions: int = 512,
                sliding_window: int | None = None, tie_word_embeddings: bool = True) -> PretrainedConfig:
    """A small config of family ``arch`` (one of :data:`ARCHITECTURES`), dropout 0. Families with sliding-window
    attention (mistral, gemma2, gemma3, phi3) get a window of ``sliding_window`` tokens (by default their
    published 4096, or 2047 for phi3); gemma2 and gemma3 alternate sliding and full layers."""
    from transformers import (
        Gemma2Config,
        Gemma3TextConfig,
        GPTNeoXConfig,
        MistralConfig,
        Olmo2Config,
        Phi3Config,
        Qwen2Config,
        Qwen3Config,
    )

    ids = dict(vocab_size=vocab_size, bos_token_id=bos_token_id, eos_token_id=eos_token_id, pad_token_id=pad_token_id,
               tie_word_embeddings=tie_word_embeddings)
    size = (layers, width, heads, max_positions)
    head_dim = width // heads
    if arch == "gpt2":
        return GPT2Config(n_layer=layers, n_embd=width, n_head=heads, n_positions=max_positions, resid_pdrop=0.0,
                          embd_pdrop=0.0, attn_pdrop=0.0, **ids)
    if arch == "llama":
        return _decoder(LlamaConfig, *size, num_key_value_heads=heads, **ids)
    if arch == "qwen2":
        return _decoder(Qwen2Config, *size, num_key_value_heads=_grouped(heads), **ids)
    if arch == "qwen3":
        return _decoder(Qwen3Config, *size, num_key_value_heads=_grouped(heads), head_dim=head_dim, **ids)
    if arch == "mistral":
        return _decoder(MistralConfig, *size, num_key_value_heads=_grouped(heads),
                        sliding_window=_window(sliding_window, 4096), **ids)
    if arch == "gemma2":
        return _decoder(Gemma2Config, *size, num_key_value_heads=_grouped(heads), head_dim=head_dim,
                        query_pre_attn_scalar=head_dim, sliding_window=_window(sliding_window, 4096),
                        layer_types=_gemma_layers(layers), **ids)
    if arch == "gemma3":
        return _decoder(Gemma3TextConfig, *size, num_key_value_heads=_grouped(heads), head_dim=head_dim,
                        query_pre_attn_scalar=head_dim, sliding_window=_window(sliding_window, 4096),
                        layer_types=_gemma_layers(layers), **ids)
    if arch == "phi3":
        return _decoder(Phi3Config, *size, num_key_value_heads=_grouped(heads), resid_pdrop=0.0, embd_pdrop=0.0,
                        sliding_window=_window(sliding_window, 2047), **ids)
    if arch == "olmo2":
        return _decoder(Olmo2Config, *size, num_key_value_heads=heads, **ids)
    if arch == "gpt-neox":
        return _decoder(GPTNeoXConfig, *size, hidden_dropout=0.0, **ids)
    raise ValueError(f"unknown arch '{arch}': expected one of {', '.join(ARCHITECTURES)}")


ARCHITECTURES = TINY_ARCHITECTURES
"""The families :func:`tiny_config` builds: transformers config classes, nothing downloaded. One list,
kept in :mod:`rlhfkit.config`, where ``rlhfkit tiny-model --arch`` offers it (config sits below models)."""


def build_tiny_model(
    tokenizer: PreTrainedTokenizerFast,
    *,
    arch: str = "gpt2",
    layers: int = 2,
    width: int = 64,
    heads: int = 4,
    max_positions: int = 512,
    seed: int = 0,
    sliding_window: int | None = None,
) -> PreTrainedModel:
    """A small randomly initialised causal LM of family ``arch`` sized for ``tokenizer``, dropout 0."""
    from transformers import AutoModelForCausalLM

    config = tiny_config(arch, vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, layers=layers,
                         width=width, heads=heads, max_positions=max_positions, sliding_window=sliding_window)
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
