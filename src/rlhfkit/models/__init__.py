"""Loading Hugging Face causal LMs and tokenizers, LoRA, and the tiny-model factory."""

from rlhfkit.models.loading import (
    LoraSettings,
    accepts_logits_to_keep,
    disable_dropout,
    fit_max_length,
    load_causal_lm,
    load_tokenizer,
    lora_settings,
    resolve_device,
    resolve_dtype,
    save_model,
)
from rlhfkit.models.tiny import build_tiny_model, train_tokenizer, write_tiny_model

__all__ = [
    "LoraSettings",
    "accepts_logits_to_keep",
    "build_tiny_model",
    "disable_dropout",
    "fit_max_length",
    "load_causal_lm",
    "load_tokenizer",
    "lora_settings",
    "resolve_device",
    "resolve_dtype",
    "save_model",
    "train_tokenizer",
    "write_tiny_model",
]
