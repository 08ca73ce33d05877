"""Choosing and starting the sampling engine of a stage (``--engine auto|hf|vllm``).

* :func:`resolve_engine`: ``auto`` is vLLM on a GPU where vLLM is installed and the HF engine
  everywhere else (on CPU vLLM samples about as fast as the HF loop: see benchmarks/bench_rollout.py).
* :func:`model_sampler`: the engine of a stage that samples from a model folder it does not train
  (generate, eval, serve, revise).
* :func:`policy_engine`: the engine of a trainer (PPO and its estimators, online DPO), with the
  :class:`~rlhfkit.rollout.weight_sync.WeightSync` that keeps a vLLM engine on the trained weights:
  in the trainer's process, or with ``--placement ray`` vLLM engine actors (``ray_engine.py``).
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import torch
from safetensors.torch import save_file

from rlhfkit.config import ConfigError, EngineConfig, WeightSyncConfig
from rlhfkit.rollout.sampler import HFSampler
from rlhfkit.rollout.vllm_engine import INSTALL_HINT, VLLMSampler, vllm_available
from rlhfkit.rollout.weight_sync import WeightSync, policy_weights, unwrap_peft

PROBE_PROMPTS = 4  # fixed prompts the engine answers greedily after a sync, to check it
BESIDE_TRAINER_MEMORY, ALONE_MEMORY = 0.3, 0.85  # default GPU memory shares of a vLLM engine


def resolve_engine(name: str, device: torch.device) -> str:
    """``hf`` or ``vllm`` for ``--engine name`` on ``device``."""
    if name == "vllm" and not vllm_available():
        raise ConfigError(f"--engine vllm: vLLM is not installed; {INSTALL_HINT}")
    if name == "auto":
        return "vllm" if device.type == "cuda" and vllm_available() else "hf"
    return name


def engine_dtype(config: EngineConfig, dtype: torch.dtype) -> str:
    """The engine's dtype name: ``--engine-dtype``, or the trainer's (``dtype``) for ``auto``."""
    return str(dtype).removeprefix("torch.") if config.engine_dtype == "auto" else config.engine_dtype


def vllm_options(config: EngineConfig, dtype: torch.dtype, seed: int, *, beside_trainer: bool,
                 max_model_len: int | None = None) -> dict:
    """:class:`VLLMSampler`'s keyword arguments for an engine ``beside_trainer`` (sharing its devices) or alone."""
    memory = config.gpu_memory_utilization or (BESIDE_TRAINER_MEMORY if beside_trainer else ALONE_MEMORY)
    return dict(dtype=engine_dtype(config, dtype), max_model_len=config.engine_max_model_len or max_model_len,
                gpu_memory_utilization=memory, tensor_parallel_size=config.tensor_parallel_size, seed=seed,
                sleep=beside_trainer)


def start_vllm(config: EngineConfig, model_dir: str | Path, tokenizer, dtype: torch.dtype, seed: int, *,
               beside_trainer: bool, max_model_len: int | None = None) -> VLLMSampler:
    return VLLMSampler(model_dir, tokenizer, **vllm_options(config, dtype, seed, beside_trainer=beside_trainer,
                                                            max_model_len=max_model_len))


def start_engine_actors(config, folder: Path, tokenizer, dtype: torch.dtype, seed: int, max_model_len: int):
    """The engine actors of a trainer placed by Ray (``--placement ray``): vLLM on their own devices."""
    from rlhfkit.rollout.ray_engine import RemoteSampler, placed_run

    options = vllm_options(config, dtype, seed, beside_trainer=False, max_model_len=max_model_len)
    return RemoteSampler.start(placed_run(), config.engine_actors, str(folder), tokenizer, options,
                               config.dist_timeout)


def model_sampler(config: EngineConfig, model_dir: str, tokenizer, dtype: torch.dtype, device: torch.device,
                  seed: int, load_model):
    """The sampler of a stage that samples from ``model_dir`` without training it; ``load_model()`` loads
    the HF model for the HF engine (vLLM loads its own)."""
    if resolve_engine(config.engine, device) == "vllm":
        return start_vllm(config, model_dir, tokenizer, dtype, seed, beside_trainer=False)
    return HFSampler(load_model(), tokenizer)


def default_tolerance(dtype: str) -> float:
    """The mean |Δ log p| per probe token a sync may leave: float32 engines match the trainer to ~1e-5."""
    return 1e-3 if dtype == "float32" else 0.2


def engine_start_folder(model: torch.nn.Module, tokenizer, source: str, workdir: Path) -> Path:
    """A model folder the engine can start from: ``source`` when it is a local full model of the trained
    model's shape, otherwise the trained model (LoRA merged) written to ``workdir``."""
    base, is_peft = unwrap_peft(model)
    folder = Path(source)
    config_file = folder / "config.json"
    if not is_peft and config_file.is_file() and not (folder / "adapter_config.json").exists():
        vocab = json.loads(config_file.read_text(encoding="utf-8")).get("vocab_size")
        if vocab == base.get_input_embeddings().num_embeddings:
            return folder
    workdir.mkdir(parents=True, exist_ok=True)
    target = Path(tempfile.mkdtemp(prefix="engine-start-", dir=workdir))
    # written by every process for its own engine (HF's save_pretrained writes on rank 0 only); under
    # --fsdp every process gathers each weight in turn
    weights = {name: tensor.detach().cpu().contiguous() for name, tensor in policy_weights(model, every_name=False)}
    save_file(weights, target / "model.safetensors", metadata={"format": "pt"})
    base.config.save_pretrained(target)
    tokenizer.save_pretrained(target)
    return target


def policy_engine(config: WeightSyncConfig, model: torch.nn.Module, tokenizer, source: str, dtype: torch.dtype,
                  device: torch.device, seed: int, probe_ids: list[list[int]], workdir: Path, max_model_len: int):
    """``(sampler, weight sync or None)`` for a trainer of ``model`` (started from ``source``): the HF engine
    on ``model`` itself, a vLLM engine in this process, or, with ``--placement ray``, engine actors."""
    if resolve_engine(config.engine, device) == "hf":
        return HFSampler(model, tokenizer), None
    folder = engine_start_folder(model, tokenizer, source, workdir)
    if getattr(config, "placement", "local") == "ray":
        sampler = start_engine_actors(config, folder, tokenizer, dtype, seed, max_model_len)
    else:
        sampler = start_vllm(config, folder, tokenizer, dtype, seed, beside_trainer=True, max_model_len=max_model_len)
    tolerance = config.sync_check_tolerance or default_tolerance(engine_dtype(config, dtype))
    sync = WeightSync(sampler, probe_ids[:PROBE_PROMPTS], tokenizer.pad_token_id, every=config.sync_every,
                      check_every=config.sync_check_every, tolerance=tolerance)
    return sampler, sync
