"""Load any HF causal LM (hub id or local folder) with its tokenizer, ready for RLHF.

Guarantees made here, relied on by every stage:
- the tokenizer has a pad token distinct from EOS (otherwise masking the padding masks EOS too, and
  the model never learns to stop); one is added, and the embeddings resized, when needed;
- the tokenizer has a chat template: its own, or :data:`rlhfkit.data.chat.DEFAULT_CHAT_TEMPLATE`;
- its EOS is the token the template ends assistant turns with (``<|im_end|>``, ``<|eot_id|>``,
  ``<end_of_turn>``, ...), so answers are trained to end where a chat model's turn ends; sampling
  stops there, at the EOS the tokenizer came with and at the ids of the folder's generation config
  (:func:`rlhfkit.data.stop_tokens.stop_token_ids`), and the model's generation config lists them all;
- dropout is off (see ``disable_dropout``);
- the model's family gives a left-padded sequence the outputs it gives it alone (``check_family``),
  or it is refused at load with the reason.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from rlhfkit.config import ConfigError
from rlhfkit.data.chat import ensure_chat_template, use_end_of_turn_as_eos
from rlhfkit.data.stop_tokens import add_stop_token_ids, stop_token_ids

PAD_TOKEN = "<|pad|>"

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")
HUB = "https://huggingface.co"


def looks_like_path(name: str) -> bool:
    """Whether ``name`` is meant as a local path rather than a hub id (``org/name`` or ``name``)."""
    return name.startswith(("/", ".", "~")) or name.count("/") > 1 or "\\" in name or Path(name).exists()


def hub_reachable(timeout: float = 5.0) -> bool:
    import urllib.error
    import urllib.request

    try:
        urllib.request.urlopen(urllib.request.Request(HUB, method="HEAD"), timeout=timeout)
    except urllib.error.HTTPError:
        return True  # it answered
    except (OSError, ValueError):
        return False
    return True


def check_model_source(name_or_path: str, *, model: bool = True) -> None:
    """A :class:`ConfigError` in one line, before transformers tries (and fails with a traceback, or
    retries for a minute when offline), when ``name_or_path`` is a path that is not a Hugging Face model
    folder, or a hub id that is neither in the local cache nor downloadable now. ``model=False``: only a
    tokenizer is needed (a folder with tokenizer files and no config.json is fine)."""
    import os

    if looks_like_path(name_or_path):
        folder = Path(name_or_path).expanduser()
        expected = "expected a model folder written by save_pretrained (e.g. by rlhfkit tiny-model or a trainer)"
        if not folder.exists():
            raise ConfigError(f"model {name_or_path}: no such file or folder; {expected} or a hub id")
        has_config = folder.is_dir() and (folder / "config.json").is_file()
        has_tokenizer = folder.is_dir() and any((folder / name).is_file() for name in TOKENIZER_FILES)
        if not has_config and (model or not has_tokenizer):
            raise ConfigError(f"model {name_or_path}: not a Hugging Face model folder (no config.json); {expected}")
        if not model and not has_tokenizer:
            raise ConfigError(f"model {name_or_path}: the folder has no tokenizer ({', '.join(TOKENIZER_FILES)}); "
                              "save the tokenizer beside the model (tokenizer.save_pretrained)")
        return
    from huggingface_hub import try_to_load_from_cache

    cached = [try_to_load_from_cache(name_or_path, name) for name in ("config.json", *TOKENIZER_FILES)]
    if any(isinstance(path, str) for path in cached):
        return
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false") or not hub_reachable():
        raise ConfigError(f"model {name_or_path}: not a local folder, not in the Hugging Face cache, and {HUB} "
                          "cannot be reached (offline): download it first or give a local folder")


def position_limit(name_or_path: str) -> int | None:
    """The most positions the model at ``name_or_path`` reads (its config's maximum), None if it says none."""
    from transformers import AutoConfig

    check_model_source(name_or_path)
    try:
        config = AutoConfig.from_pretrained(name_or_path)
    except (OSError, ValueError) as error:
        raise ConfigError(f"model {name_or_path}: its config.json cannot be read: {str(error).splitlines()[0]}") from None
    config = getattr(config, "text_config", None) or config
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def fit_max_length(requested: int, name_or_path: str, flag: str = "--max-length") -> int:
    """``requested`` capped at the positions the model reads, said once when it is capped."""
    from rlhfkit.console import console

    limit = position_limit(name_or_path)
    if limit is None or requested <= limit:
        return requested
    console.print(f"[yellow]{flag} {requested} is more than {name_or_path} reads ({limit} positions): using {limit}[/]")
    return limit


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` picks cuda when available, else cpu; anything else is passed to torch."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def resolve_dtype(name: str = "auto", device: torch.device | None = None) -> torch.dtype:
    """``auto`` is bfloat16 on a GPU that supports it, float32 otherwise."""
    names = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
             "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}
    if name == "auto":
        on_gpu = device is not None and device.type == "cuda"
        return torch.bfloat16 if on_gpu and torch.cuda.is_bf16_supported() else torch.float32
    if name not in names:
        raise ValueError(f"unknown dtype '{name}': expected auto, {', '.join(names)}")
    return names[name]


def generation_stop_ids(name_or_path: str) -> int | list[int] | None:
    """``eos_token_id`` of the model's ``generation_config.json`` (an int or a list), None when it has
    none (a folder without the file, a tokenizer alone)."""
    from transformers import GenerationConfig

    try:
        return GenerationConfig.from_pretrained(name_or_path).eos_token_id
    except (OSError, ValueError):
        return None


def load_tokenizer(name_or_path: str) -> PreTrainedTokenizerBase:
    """Load a tokenizer and give it a chat template, the template's end-of-turn token as EOS (see
    :func:`rlhfkit.data.chat.use_end_of_turn_as_eos`) and a pad token distinct from EOS. Sampling
    stops at that EOS, at the EOS the tokenizer came with, and at the ids the model's generation
    config stops at (:func:`rlhfkit.data.stop_tokens.stop_token_ids`): a folder rlhfkit saved has the
    end-of-turn token as its tokenizer's EOS and the others in its generation config."""
    check_model_source(name_or_path, model=False)
    tokenizer = AutoTokenizer.from_pretrained(name_or_path)
    ensure_chat_template(tokenizer)
    use_end_of_turn_as_eos(tokenizer)
    add_stop_token_ids(tokenizer, generation_stop_ids(name_or_path))
    if tokenizer.eos_token_id is None:
        raise ValueError(f"tokenizer of {name_or_path} has no EOS token: answers could never end")
    if tokenizer.pad_token_id is None or tokenizer.pad_token_id == tokenizer.eos_token_id:
        tokenizer.add_special_tokens({"pad_token": PAD_TOKEN})
    return tokenizer


def disable_dropout(model: torch.nn.Module) -> None:
    """Set every dropout probability to 0 (RLHF needs deterministic log-probs; see ARCHITECTURE.md rule 7)."""
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0


@dataclass
class LoraSettings:
    r: int
    alpha: int = 16
    dropout: float = 0.0
    target_modules: list[str] = field(default_factory=lambda: ["all-linear"])


def enable_checkpointing(model: PreTrainedModel) -> None:
    """Recompute each layer's activations in the backward pass instead of keeping them (non-reentrant
    ``torch.utils.checkpoint``), under transformers' new name for it where it has one."""
    enable = getattr(model, "activation_checkpointing_enable", None)
    if enable is not None:
        enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:  # older transformers
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def lora_settings(config) -> LoraSettings | None:
    """The LoRA settings of a trainer config (``--lora-r`` etc.), or None when ``lora_r`` is 0."""
    if not config.lora_r:
        return None
    return LoraSettings(config.lora_r, config.lora_alpha, config.lora_dropout, config.lora_target_modules)


def apply_lora(model: PreTrainedModel, lora: LoraSettings, task_type: str, gradient_checkpointing: bool):
    """Wrap ``model`` with trainable LoRA adapters (peft); the base weights are frozen."""
    from peft import LoraConfig, get_peft_model

    targets = lora.target_modules
    config = LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, task_type=task_type,
                        target_modules=targets[0] if targets == ["all-linear"] else targets)
    if gradient_checkpointing:
        model.enable_input_require_grads()
    return get_peft_model(model, config)


def accepts_logits_to_keep(model: torch.nn.Module) -> bool:
    """Whether ``model``'s forward takes ``logits_to_keep`` (logits for chosen positions only), looking
    through a DDP wrapper and a peft model to the HF model underneath."""
    import inspect

    inner = getattr(model, "module", model)  # DDP
    inner = inner.get_base_model() if hasattr(inner, "get_base_model") else inner  # peft
    return "logits_to_keep" in inspect.signature(inner.forward).parameters


def padding_refusal(model: PreTrainedModel) -> str | None:
    """Why ``model`` gives a sequence different outputs left-padded (with its position ids counted over
    its real tokens) than alone, or None when it does not: rlhfkit pads prompts on the left to sample
    and scores answers right-padded (ARCHITECTURE.md rule 2), so such a family cannot be trained here.
    One forward of five tokens."""
    vocab = model.get_input_embeddings().num_embeddings
    tokens = torch.tensor([[3 % vocab, 4 % vocab, 5 % vocab]])
    pad = model.config.pad_token_id if model.config.pad_token_id is not None else 0
    padded = torch.cat([torch.full((1, 2), pad), tokens], 1)
    mask = torch.tensor([[0, 0, 1, 1, 1]])
    device = next(model.parameters()).device
    try:
        with torch.no_grad():
            alone = model(input_ids=tokens.to(device), output_hidden_states=True).hidden_states[-1]
            left = model(input_ids=padded.to(device), attention_mask=mask.to(device),
                         position_ids=torch.tensor([[0, 0, 0, 1, 2]], device=device),
                         output_hidden_states=True).hidden_states[-1][:, 2:]
    except TypeError as error:  # a forward without position ids or attention mask
        return f"its forward does not take a padded batch with position ids ({error})"
    error = float((left.float() - alone.float()).norm() / alone.float().norm().clamp(min=1e-6))
    if error > (1e-4 if next(model.parameters()).dtype == torch.float32 else 2e-2):
        return f"a left-padded sequence's hidden states differ from the sequence's alone (relative error {error:.2g})"
    return None


def check_family(model: PreTrainedModel, name_or_path: str) -> None:
    """Refuse, at load, a model whose family rlhfkit cannot train (see :func:`padding_refusal`)."""
    refusal = padding_refusal(model)
    if refusal is not None:
        raise ValueError(f"{name_or_path}: {type(model).__name__} ({model.config.model_type}) cannot be trained "
                         f"by rlhfkit: {refusal}")


def load_causal_lm(
    name_or_path: str,
    tokenizer: PreTrainedTokenizerBase,
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | None = None,
    gradient_checkpointing: bool = False,
    lora: LoraSettings | None = None,
) -> PreTrainedModel:
    """Load a causal LM matching ``tokenizer`` (embeddings grown for added tokens), dropout off.

    With ``lora`` the returned model is a peft model whose base weights are frozen.
    """
    check_model_source(name_or_path)
    model = AutoModelForCausalLM.from_pretrained(name_or_path, dtype=dtype)
    if len(tokenizer) > model.get_input_embeddings().num_embeddings:
        model.resize_token_embeddings(len(tokenizer))
    model.config.pad_token_id = tokenizer.pad_token_id
    if model.generation_config is not None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
        # plain HF generate on a saved folder stops where rlhfkit does (and a later load_tokenizer of it
        # finds every stop id there)
        own = model.generation_config.eos_token_id
        own = [] if own is None else [own] if isinstance(own, int) else list(own)
        stop = list(dict.fromkeys([*stop_token_ids(tokenizer), *own]))
        model.generation_config.eos_token_id = stop if len(stop) > 1 else stop[0]
    disable_dropout(model)
    if device is not None:
        model.to(device)
    check_family(model, name_or_path)
    if gradient_checkpointing:
        enable_checkpointing(model)
        model.config.use_cache = False
    if lora is not None and lora.r > 0:
        model = apply_lora(model, lora, "CAUSAL_LM", gradient_checkpointing)
    return model


def save_model(model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase, output: str | Path) -> None:
    """Save a plain HF model folder (LoRA adapters merged in; the adapter kept in ``adapter/``)."""
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    if hasattr(model, "merge_and_unload"):  # a peft model
        model.save_pretrained(output / "adapter")
        model = model.merge_and_unload()
    model.save_pretrained(output)
    tokenizer.save_pretrained(output)
