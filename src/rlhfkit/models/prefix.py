"""Shared-prompt forward passes: the tokens that a group of sequences has in common run once.

A reward model compares K answers to one prompt; GRPO and RLOO sample K answers per prompt. Run as
K separate padded sequences, the prompt is computed K times and every sequence is padded to the
longest. Here each group becomes one row: its common token prefix once, then each sequence's
remaining tokens (its *suffix*) one after another,

    [prompt tokens | answer 1 | answer 2 | ... | padding]

with a custom attention mask (a tree: a suffix token sees the prefix and the earlier tokens of its own
suffix, never another suffix) and position ids that restart every suffix where the prefix ended. Every
token then has exactly the context and position it has in its own sequence, so the outputs are the
same (to float rounding), and the work is the prefix once plus the suffixes, with padding only at the
end of rows that are sorted by length.

The split is found on the token lists themselves (their longest common prefix), so any tokenization
or chat template works; at least one token of every sequence stays in its suffix. Padding queries
attend to themselves only, so no row of the mask is empty.

This needs an attention implementation that takes a custom 4D mask (``sdpa`` and ``eager``; not
``flash_attention_2``) and a model that takes position ids. Sliding-window layers (Mistral, Phi-3,
Gemma 2 and 3) get the window in their mask, counted in positions of the token's own sequence
(:func:`tree_masks`). :func:`tree_support` checks a model once against the plain forward and tells the
trainers whether to use it, logging the reason when not (:func:`tree_refusal`).

Where every group is one prompt and its answers (sampling and RL), there is a second way, with less
attention work than a tree row (whose mask makes every suffix token look at every other suffix's
positions, only to mask them): run the distinct prompts once, keep their key/value cache, and run
the answers as a batch that continues from it, each row from its own prompt's cache
(:func:`prompt_cache`; two forwards, and gradients flow into the prompts' pass through the cache).
It needs HF's ``DynamicCache`` of full-attention layers (not the sliding-window layers, which keep
only their window) and a cache that is kept in training, so not gradient checkpointing;
:func:`prompt_cache_support` checks it like :func:`tree_support`.

SFT packing uses the same rows with nothing shared (``TreeBatch.from_groups(..., share_prefix=False)``:
whole examples one after another, position ids restarting, a block-diagonal mask), or, for attention
without custom masks (flash-attention), their position-id ("varlen") form, every row's tokens in one
row (:func:`flat_forward`); :func:`packing_layout` picks the one the model computes exactly.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from rlhfkit.data.chat import pad_batch

MASK_IMPLEMENTATIONS = ("sdpa", "eager")

log = logging.getLogger("rlhfkit.models")


def common_prefix_length(sequences: list[list[int]]) -> int:
    """Length of the longest common prefix of ``sequences``, leaving every sequence at least one token."""
    limit = min(len(s) for s in sequences) - 1
    first = sequences[0]
    length = 0
    while length < limit and all(s[length] == first[length] for s in sequences[1:]):
        length += 1
    return length


@dataclass
class TreeBatch:
    """Groups of sequences, one row per group: ``[prefix | suffix 1 | ... | suffix K | padding]``.

    ``input_ids``, ``position_ids``, ``segment`` are ``[groups, width]``; ``segment`` is 0 on the
    prefix, ``i + 1`` on the i-th suffix of the row, -1 on padding. Per sequence, in order: ``last``,
    the flat index (``row * width + column``) of its last token; ``start``, that of its suffix's first
    token; ``shared``, its group's prefix length; ``owner``, its row.
    """

    input_ids: torch.Tensor
    position_ids: torch.Tensor
    segment: torch.Tensor
    last: torch.Tensor
    start: torch.Tensor
    shared: torch.Tensor
    owner: torch.Tensor

    @classmethod
    def from_groups(cls, groups: list[list[list[int]]], pad_token_id: int, share_prefix: bool = True) -> TreeBatch:
        """One row per group; without ``share_prefix`` nothing is shared: each sequence whole, one after
        another (packing: a block-diagonal mask, position ids restarting at every sequence)."""
        rows, positions, segments, ends, starts, shares, owner = [], [], [], [], [], [], []
        prefixes = [common_prefix_length(g) if share_prefix else 0 for g in groups]
        width = max(p + sum(len(s) - p for s in g) for p, g in zip(prefixes, groups, strict=True))
        for index, (sequences, shared) in enumerate(zip(groups, prefixes, strict=True)):
            row, position, segment = list(sequences[0][:shared]), list(range(shared)), [0] * shared
            for k, sequence in enumerate(sequences):
                suffix = sequence[shared:]
                starts.append(index * width + len(row))
                shares.append(shared)
                row.extend(suffix)
                position.extend(range(shared, len(sequence)))
                segment.extend([k + 1] * len(suffix))
                ends.append(index * width + len(row) - 1)
                owner.append(index)
            rows.append(row)
            positions.append(position)
            segments.append(segment)
        input_ids, mask = pad_batch(rows, pad_token_id)
        position_ids = pad_batch(positions, 0)[0]
        segment = pad_batch(segments, 0)[0].masked_fill(mask == 0, -1)
        return cls(input_ids, position_ids, segment, torch.tensor(ends), torch.tensor(starts), torch.tensor(shares),
                   torch.tensor(owner))

    def token_index(self, tokens: torch.Tensor) -> torch.Tensor:
        """Flat indices (``row * width + column``) of token positions ``tokens`` (``[sequences, T]``,
        positions within each sequence) in the rows: in the prefix, or in the sequence's suffix."""
        width = self.input_ids.shape[1]
        shared = self.shared[:, None]
        return torch.where(tokens < shared, self.owner[:, None] * width + tokens, self.start[:, None] + tokens - shared)

    def attention_mask(self, dtype: torch.dtype | None = None, window: int | None = None) -> torch.Tensor:
        """``[groups, 1, width, width]``: True (or 0.0 with a float ``dtype``, for eager attention)
        where a query may attend to a key. With ``window`` (sliding-window attention), a query also sees
        only the keys less than ``window`` positions before it in its own sequence, as HF's sliding mask
        lets a token of a plain sequence see (its distance counted in position ids, not row columns)."""
        width = self.segment.shape[1]
        index = torch.arange(width, device=self.segment.device)
        query, key = self.segment[:, :, None], self.segment[:, None, :]
        causal = index[:, None] >= index[None, :]
        allowed = causal & (query >= 0) & (key >= 0) & ((key == 0) | (key == query))
        if window is not None:
            allowed &= self.position_ids[:, :, None] - self.position_ids[:, None, :] < window
        allowed = (allowed | torch.eye(width, dtype=torch.bool, device=allowed.device)).unsqueeze(1)
        if dtype is None or dtype == torch.bool:
            return allowed
        return torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill(
            ~allowed, torch.finfo(dtype).min)

    def to(self, device) -> TreeBatch:
        return TreeBatch(*(value.to(device) for value in vars(self).values()))

    def as_dict(self) -> dict[str, torch.Tensor]:
        return {f"tree_{name}": value for name, value in vars(self).items()}

    @classmethod
    def from_dict(cls, batch: dict[str, torch.Tensor]) -> TreeBatch:
        return cls(**{name: batch[f"tree_{name}"] for name in cls.__dataclass_fields__})


def unwrap_hf_model(model: torch.nn.Module) -> torch.nn.Module:
    """The transformers model inside DDP and PEFT wrappers (PEFT's adapters live inside it)."""
    model = getattr(model, "module", model)
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def sliding_window(config) -> int | None:
    """The window of a model's sliding-window attention layers (Mistral, Phi-3, Gemma 2 and 3, Qwen 2
    with ``use_sliding_window``), None when it has none."""
    window = getattr(config, "sliding_window", None)
    if not window or getattr(config, "use_sliding_window", True) is False:
        return None
    layer_types = getattr(config, "layer_types", None)
    if layer_types is not None and "sliding_attention" not in layer_types:
        return None
    return int(window)


LAYER_TYPES = ("full_attention", "sliding_attention")
"""The layer types whose attention a tree row's mask can stand for."""


def tree_masks(model: torch.nn.Module, batch: TreeBatch) -> torch.Tensor | dict[str, torch.Tensor]:
    """The attention mask of ``batch``'s rows in the form the model takes: boolean for sdpa, additive
    floats for eager; with sliding-window layers, the windowed mask for them, as one tensor when every
    layer slides, else HF's ``{layer type: mask}`` mapping (the models with ``config.layer_types``)."""
    config = unwrap_hf_model(model).config
    dtype = None if getattr(config, "_attn_implementation", "eager") == "sdpa" else next(model.parameters()).dtype
    full = batch.attention_mask(dtype)
    window = sliding_window(config)
    if window is None:
        return full
    sliding = batch.attention_mask(dtype, window=window)
    if getattr(config, "layer_types", None) is None:
        return sliding
    return {"full_attention": full, "sliding_attention": sliding}


def tree_forward(model: torch.nn.Module, batch: TreeBatch, **kwargs):
    """The model's forward over the rows of ``batch`` (through ``model`` itself, so DDP and PEFT
    wrappers do their part)."""
    return model(input_ids=batch.input_ids, attention_mask=tree_masks(model, batch),
                 position_ids=batch.position_ids, **kwargs)


def flat_forward(model: torch.nn.Module, batch: TreeBatch, **kwargs):
    """The position-id ("varlen") form of rows whose sequences share nothing (``share_prefix=False``):
    every real token of every row in one row, position ids restarting at each sequence, no attention
    mask. Flash-attention's variable-length kernels take it (HF reads the sequences from the restarts
    of the position ids, in one row only), as do HF's sdpa and eager masks where transformers finds
    packed sequences the same way; :func:`varlen_refusal` checks. The outputs are ``[1, tokens, ...]``,
    the tokens in row-major order of ``batch.segment >= 0``."""
    keep = batch.segment >= 0
    kwargs.setdefault("use_cache", False)  # HF looks for packed sequences only without a cache
    return model(input_ids=batch.input_ids[keep][None], position_ids=batch.position_ids[keep][None], **kwargs)


def varlen_refusal(model: torch.nn.Module) -> str | None:
    """Why ``model`` would let packed sequences see each other in :func:`flat_forward`, or None when each
    gets exactly its plain forward's hidden states (two sequences packed, compared with each alone)."""
    vocab = unwrap_hf_model(model).get_input_embeddings().num_embeddings
    first, second = [(1 + t) % vocab for t in range(6)], [(9 + t) % vocab for t in range(5)]
    device = next(model.parameters()).device
    batch = TreeBatch.from_groups([[first, second]], pad_token_id=0, share_prefix=False).to(device)
    ids, mask = pad_batch([first, second], 0)
    try:
        with torch.no_grad():
            packed = flat_forward(model, batch, output_hidden_states=True).hidden_states[-1][0]
            plain = model(input_ids=ids.to(device), attention_mask=mask.to(device),
                          output_hidden_states=True).hidden_states[-1]
    except Exception as error:  # a model that refuses position ids without a mask
        return f"the probe forward failed ({type(error).__name__}: {error})"
    reason = disagreement(model, packed, torch.cat([plain[0], plain[1, : len(second)]]))
    return reason and f"position ids alone do not keep packed sequences apart: {reason}"


def packing_layout(model: torch.nn.Module) -> str:
    """How examples packed into one row are kept apart: "mask" (a block-diagonal 4D mask per row, the
    tree rows' mechanism; sdpa and eager attention) or "varlen" (:func:`flat_forward`, for
    flash-attention); a clear error when the model can do neither."""
    refusal = None
    if getattr(unwrap_hf_model(model).config, "_attn_implementation", None) in MASK_IMPLEMENTATIONS:
        refusal = tree_refusal(model)
        if refusal is None:
            return "mask"
    varlen = varlen_refusal(model)
    if varlen is None:
        return "varlen"
    raise ValueError(f"--packing: {type(unwrap_hf_model(model)).__name__} keeps packed examples apart neither with "
                     f"a block mask ({refusal or 'its attention takes no custom 4D mask'}) nor with position ids "
                     f"({varlen}); train without --packing")


def row_width(sequences: list[list[int]]) -> int:
    """The length of a group's row: its common prefix once plus every suffix."""
    shared = common_prefix_length(sequences)
    return shared + sum(len(s) - shared for s in sequences)


def group_cost(sequences: list[list[int]], share_prefix: bool) -> int:
    """The tokens a group of sequences takes in a batch: its row width when its prefix is shared, else
    every sequence padded to the longest. Trainers group batches by it."""
    return row_width(sequences) if share_prefix else len(sequences) * max(map(len, sequences))


def tree_support(model: torch.nn.Module) -> bool:
    """Whether ``model`` computes tree rows as it computes the plain sequences (:func:`tree_refusal`);
    a refusal is logged with its reason."""
    return _supported(model, "tree rows", tree_refusal(model))


def tree_refusal(model: torch.nn.Module) -> str | None:
    """Why ``model`` cannot run tree rows, or None when it can: its attention must take a custom 4D mask,
    its layers be full or sliding-window attention, and on two sequences sharing a prefix (longer than a
    small sliding window, so that the window is checked too) its last hidden states must agree with the
    plain forward's."""
    hf = unwrap_hf_model(model)
    config = hf.config
    implementation = getattr(config, "_attn_implementation", None)
    if implementation not in MASK_IMPLEMENTATIONS:
        return f"attention '{implementation}' takes no custom 4D mask (sdpa and eager do)"
    others = sorted(set(getattr(config, "layer_types", None) or ()) - set(LAYER_TYPES))
    if others:
        return f"layers of type {', '.join(others)} have no tree mask"
    window = sliding_window(config)
    length = window + 3 if window is not None and window < 30 else 5
    vocab = hf.get_input_embeddings().num_embeddings
    first = [(1 + t) % vocab for t in range(length)]
    second = first[:3] + [(length + 1 + t) % vocab for t in range(length - 2)]
    device = next(model.parameters()).device
    tree = TreeBatch.from_groups([[first, second]], pad_token_id=0).to(device)
    ids, mask = pad_batch([first, second], 0)
    try:
        with torch.no_grad():
            packed = tree_forward(model, tree, output_hidden_states=True).hidden_states[-1][0]
            plain = model(input_ids=ids.to(device), attention_mask=mask.to(device),
                          output_hidden_states=True).hidden_states[-1]
    except Exception as error:  # a model that refuses the mask or the position ids
        return f"the probe forward failed ({type(error).__name__}: {error})"
    return disagreement(model, packed, torch.cat([plain[0, :length], plain[1, 3 : len(second)]]))


def _supported(model: torch.nn.Module, layout: str, refusal: str | None) -> bool:
    if refusal is not None:
        log.info("%s off for %s: %s", layout, type(unwrap_hf_model(model)).__name__, refusal)
    return refusal is None


def disagreement(model: torch.nn.Module, got: torch.Tensor, expected: torch.Tensor) -> str | None:
    """None when hidden states from a shared-prompt forward of ``model`` match the plain forward's, to the
    rounding of the model's dtype; else the reason."""
    error = float((got.float() - expected.float()).norm() / expected.float().norm().clamp(min=1e-6))
    tolerance = 1e-4 if next(model.parameters()).dtype == torch.float32 else 2e-2
    if error < tolerance:
        return None
    return f"the probe's hidden states differ from the padded forward's (relative error {error:.2g})"


def prompt_cache(model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor, rows: torch.Tensor,
                 **kwargs):
    """Run the left-padded prompts ``input_ids`` once. Returns the model's output and its key/value
    cache repeated so that row ``i`` holds prompt ``rows[i]``'s, ready for a batch of continuations;
    the cache is None when the model keeps another kind than HF's ``DynamicCache``."""
    positions = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
    out = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=positions, use_cache=True, **kwargs)
    cache = out.past_key_values
    if type(cache) is not DynamicCache or any(type(layer) is not DynamicLayer for layer in cache.layers):
        return out, None
    for layer in cache.layers:
        layer.keys, layer.values = layer.keys[rows], layer.values[rows]
    return out, cache


def cache_layout(groups: list[list[list[int]]], pad_token_id: int,
                 max_shared: list[int] | None = None) -> dict[str, torch.Tensor] | None:
    """The prompt-cache layout of ``groups`` of sequences (prompt sharing for attention that takes no
    custom mask: flash-attention computes the continuations with its variable-length kernel): each
    group's common prefix once, left-padded (``cache_prefix_*`` ``[groups, P]``), at most
    ``max_shared[k]`` tokens for group k, and every sequence's rest in group order, right-padded
    (``cache_suffix_*`` ``[sequences, S]``), with its group (``cache_owner``). None when a group has no
    common prefix (nothing to share: run it padded)."""
    shared = [common_prefix_length(g) if len(g) > 1 else len(g[0]) - 1 for g in groups]
    if max_shared is not None:
        shared = [min(n, cap) for n, cap in zip(shared, max_shared, strict=True)]
    if min(shared) < 1:
        return None
    prefix_ids, prefix_mask = pad_batch([g[0][:n] for g, n in zip(groups, shared, strict=True)], pad_token_id,
                                        side="left")
    suffix_ids, suffix_mask = pad_batch([s[n:] for g, n in zip(groups, shared, strict=True) for s in g], pad_token_id)
    return {"cache_prefix_ids": prefix_ids, "cache_prefix_mask": prefix_mask, "cache_suffix_ids": suffix_ids,
            "cache_suffix_mask": suffix_mask, "cache_owner": torch.tensor([k for k, g in enumerate(groups) for _ in g])}


def continue_from_cache(model: torch.nn.Module, cache: DynamicCache, prompt_mask: torch.Tensor,
                        input_ids: torch.Tensor, attention_mask: torch.Tensor, **kwargs):
    """The forward of right-padded continuations ``input_ids`` after the prompts in ``cache`` (one per
    row, left-padded as ``prompt_mask``)."""
    steps = torch.arange(input_ids.shape[1], device=input_ids.device)
    positions = prompt_mask.long().sum(1, keepdim=True) + steps
    return model(input_ids=input_ids, attention_mask=torch.cat([prompt_mask, attention_mask.to(prompt_mask.dtype)], 1),
                 position_ids=positions, past_key_values=cache, **kwargs)


def shared_prefix_layout(model: torch.nn.Module) -> str | None:
    """How groups of sequences that start alike (a prompt and its answers) share their start on ``model``:
    ``"tree"`` rows where its attention takes the mask, else the prompt ``"cache"`` (attention without
    custom masks, such as flash-attention), else None (every sequence padded in full); each checked by
    its probe, the refusals logged."""
    if tree_support(model):
        return "tree"
    return "cache" if prompt_cache_support(model) else None


def prompt_cache_support(model: torch.nn.Module) -> bool:
    """Whether :func:`prompt_cache` and :func:`continue_from_cache` give ``model``'s plain forward
    (:func:`prompt_cache_refusal`); a refusal is logged with its reason."""
    return _supported(model, "the prompt cache", prompt_cache_refusal(model))


def prompt_cache_refusal(model: torch.nn.Module) -> str | None:
    """Why the prompt cache cannot run ``model``, or None when it can: the model must keep a
    ``DynamicCache`` of full-attention layers, also in training (no gradient checkpointing), and on one
    prompt with two continuations its last hidden states must agree with the plain forward's."""
    hf = unwrap_hf_model(model)
    if any(getattr(module, "gradient_checkpointing", False) for module in hf.modules()):
        return "gradient checkpointing drops the key/value cache in training"
    vocab = hf.get_input_embeddings().num_embeddings
    prompt, answers = [1, 2, 3], [[4, 5], [6]]
    prompt, answers = [t % vocab for t in prompt], [[t % vocab for t in a] for a in answers]
    device = next(model.parameters()).device
    ids, mask = pad_batch([prompt + a for a in answers], 0)
    continuations, continuation_mask = pad_batch(answers, 0)
    try:
        with torch.no_grad():
            out, cache = prompt_cache(model, torch.tensor([prompt], device=device),
                                      torch.ones(1, 3, device=device, dtype=torch.long),
                                      torch.zeros(2, dtype=torch.long, device=device))
            if cache is None:
                kept = out.past_key_values
                layers = sorted({type(layer).__name__ for layer in getattr(kept, "layers", ())})
                return (f"its key/value cache is a {type(kept).__name__}{' of ' + ', '.join(layers) if layers else ''}"
                        ", not a DynamicCache of full-attention DynamicLayers")
            continued = continue_from_cache(model, cache, torch.ones(2, 3, dtype=torch.long, device=device),
                                            continuations.to(device), continuation_mask.to(device),
                                            output_hidden_states=True).hidden_states[-1]
            plain = model(input_ids=ids.to(device), attention_mask=mask.to(device),
                          output_hidden_states=True).hidden_states[-1]
    except Exception as error:  # a model that refuses the cache or the position ids
        return f"the probe forward failed ({type(error).__name__}: {error})"
    return disagreement(model, torch.cat([continued[0], continued[1, :1]]), torch.cat([plain[0, 3:5], plain[1, 3:4]]))
