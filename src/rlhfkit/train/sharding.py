"""Sharded training with torch FSDP2 (``--fsdp``): the part of accelerate's ``Accelerator`` the trainers
use, over ``fully_shard``.

Every trainer talks to an accelerator (``optimizer.make_accelerator``): ``prepare``, ``backward``,
``clip_grad_norm_``, ``reduce``, ``save_state``/``load_state`` and a few attributes. With ``--fsdp`` that
accelerator is a :class:`ShardedAccelerator`, so the training loops are the same code with or without
sharding, on CPU (gloo) and GPU (NCCL) alike:

- ``prepare`` shards each model per decoder layer, then at its root (ZeRO-3 class: each process holds
  1/N of the parameters, gradients and AdamW states); on a GPU in bf16 the master weights stay fp32
  and layers compute in bf16 with fp32 gradient reduction; ``--fsdp-offload`` keeps shards in CPU
  memory. Frozen models (PPO's reference) are sharded the same way, for inference.
- Gradients are reduce-scattered after every micro-batch's backward and accumulate in the shards, so
  accumulation needs no ``no_sync``; the mean over processes matches DDP's, and the trainers' loss
  scaling (``optimizer.py``) holds unchanged.
- Checkpoints are ``torch.distributed.checkpoint`` folders: every process writes its own shards of
  models and optimizer (plus its RNG state) into the checkpoint folder ``checkpoints.py`` renames when
  complete. Across nodes the output folder must be on a shared file system.
- :func:`full_weights` gathers the weights one tensor at a time (every process takes part; the full
  tensor exists only while it is used); :func:`save_gathered` writes them on rank 0 as a plain HF
  folder, in safetensors files of at most ``max_shard_bytes``, never a whole second copy on any rank.

Memory arithmetic (N processes, P parameters, fp32 AdamW): a trained model costs 16P/N bytes per
process (weights, gradients, two moments) plus one layer gathered at a time; a frozen one 4P/N (2P/N
in bf16). PPO with a critic on 8 GPUs of 80 GB: policy and critic 7B each, reference 7B in bf16 and
the reward model beside them fit (about 2 x 14 + 1.75 + 1.75 GB per GPU before activations).
"""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import random
import socket
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from accelerate.utils import gather_object
from torch.distributed.checkpoint.state_dict import (
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor import DTensor

from rlhfkit.config import ConfigError, TrainConfig
from rlhfkit.models.sharded import on_every_process


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_process_group(device: torch.device, timeout_s: int) -> None:
    """Join the process group torchrun describes (``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``...), or make a
    group of one when the run was not launched by torchrun. NCCL on GPUs, gloo on CPUs."""
    if dist.is_initialized():
        return
    if "RANK" not in os.environ:
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1",
                          MASTER_PORT=str(_free_port()))
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=timedelta(seconds=timeout_s))


def layer_classes(model: torch.nn.Module) -> set[str]:
    """The class names of ``model``'s decoder layers: what its HF classes never split across devices."""
    names: set[str] = set()
    for module in model.modules():
        names.update(getattr(module, "_no_split_modules", None) or ())
    return names


def shard_model(model: torch.nn.Module, mesh, *, mixed_precision: MixedPrecisionPolicy | None = None,
                offload: bool = False) -> torch.nn.Module:
    """``fully_shard`` every decoder layer of ``model``, then the rest at the root; in place."""
    options = {"mesh": mesh}
    if mixed_precision is not None:
        options["mp_policy"] = mixed_precision
    if offload:
        options["offload_policy"] = CPUOffloadPolicy()
    layers = layer_classes(model)
    blocks = [m for m in model.modules() if type(m).__name__ in layers]
    if not blocks:
        raise ConfigError(f"--fsdp: no decoder layers found in {type(model).__name__} (its HF class names "
                          f"none in _no_split_modules); shard a transformers model")
    for block in blocks:
        fully_shard(block, **options)
    fully_shard(model, **options)
    return model


class ShardedAccelerator:
    """What the trainers use of ``accelerate.Accelerator``, with every model sharded by FSDP2."""

    sharded = True

    def __init__(self, config: TrainConfig, device: torch.device):
        if config.fsdp_offload and device.type != "cuda":
            raise ConfigError("--fsdp-offload moves a GPU's parameters and optimizer states to CPU memory; "
                              f"this run is on {device.type}")
        start_process_group(device, config.dist_timeout)
        self.process_index = dist.get_rank()
        self.num_processes = dist.get_world_size()
        self.local_process_index = int(os.environ.get("LOCAL_RANK", 0))
        self.is_main_process = self.process_index == 0
        if device.type == "cuda":
            device = torch.device("cuda", self.local_process_index)
            torch.cuda.set_device(device)
        self.device = device
        self.mesh = torch.distributed.device_mesh.init_device_mesh(device.type, (self.num_processes,))
        self.offload = config.fsdp_offload
        self.models: list[torch.nn.Module] = []
        self.optimizers: list[torch.optim.Optimizer] = []

    # -- preparing models and optimizers -----------------------------------------------------------

    def prepare(self, *objects):
        """Shard the models, then point the optimizers at the sharded parameters (same order back)."""
        models = [o for o in objects if isinstance(o, torch.nn.Module)]
        names = {id(p): (i, n) for i, m in enumerate(models) for n, p in m.named_parameters()}
        for model in models:
            self.shard(model, trained=True)
        sharded = {(i, n): p for i, m in enumerate(models) for n, p in m.named_parameters()}
        for optimizer in (o for o in objects if isinstance(o, torch.optim.Optimizer)):
            if optimizer.state:
                raise RuntimeError("prepare the optimizer before its first step")
            for group in optimizer.param_groups:
                group["params"] = [sharded[names[id(p)]] for p in group["params"]]
            self.optimizers.append(optimizer)
        self.models.extend(models)
        return objects[0] if len(objects) == 1 else objects

    def shard(self, model: torch.nn.Module, trained: bool = False) -> torch.nn.Module:
        """Shard ``model`` in place; a trained model in bf16 on a GPU keeps fp32 master weights."""
        model.to(self.device)
        policy = None
        dtype = next(model.parameters()).dtype
        if trained and self.device.type == "cuda" and dtype in (torch.bfloat16, torch.float16):
            model.float()
            policy = MixedPrecisionPolicy(param_dtype=dtype, reduce_dtype=torch.float32)
        return shard_model(model, self.mesh, mixed_precision=policy, offload=self.offload)

    # -- the step -----------------------------------------------------------------------------------

    def backward(self, loss: torch.Tensor) -> None:
        loss.backward()

    def no_sync(self, model):
        return contextlib.nullcontext()  # gradients are reduce-scattered into the shards every micro-batch

    def clip_grad_norm_(self, parameters, max_norm: float) -> torch.Tensor:
        norm = torch.nn.utils.clip_grad_norm_(list(parameters), max_norm)
        return norm.full_tensor() if isinstance(norm, DTensor) else norm

    def reduce(self, tensor: torch.Tensor, reduction: str = "sum") -> torch.Tensor:
        out = tensor.detach().clone()
        dist.all_reduce(out)
        return out / self.num_processes if reduction == "mean" else out

    def wait_for_everyone(self) -> None:
        dist.barrier()

    def unwrap_model(self, model: torch.nn.Module) -> torch.nn.Module:
        return model  # FSDP2 shards the module in place: it is still the HF model

    # -- checkpoints ---------------------------------------------------------------------------------

    def local_bytes(self) -> dict[str, int]:
        """Bytes of the parameters and optimizer states this process holds (its shards)."""
        def size(t) -> int:
            local = t.to_local() if isinstance(t, DTensor) else t
            return local.numel() * local.element_size()

        parameters = sum(size(p) for m in self.models for p in m.parameters())
        states = sum(size(v) for o in self.optimizers for state in o.state.values() for v in state.values()
                     if isinstance(v, torch.Tensor))
        return {"parameters": parameters, "optimizer": states}

    def _state(self) -> dict:
        state = {f"model_{i}": get_model_state_dict(m) for i, m in enumerate(self.models)}
        container = torch.nn.ModuleList(self.models)  # the optimizers' parameters, named across the models
        for i, optimizer in enumerate(self.optimizers):
            state[f"optimizer_{i}"] = get_optimizer_state_dict(container, optimizer)
        return state

    def save_state(self, folder: str) -> None:
        """Every process writes its shards and its RNG state into ``folder``."""
        Path(folder).mkdir(parents=True, exist_ok=True)
        dcp.save(self._state(), checkpoint_id=os.path.join(folder, "sharded"))
        rng = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
               "cuda": torch.cuda.get_rng_state() if self.device.type == "cuda" else None}
        with open(os.path.join(folder, f"rng_state_{self.process_index}.pkl"), "wb") as handle:
            pickle.dump(rng, handle)
        held = [None] * self.num_processes
        dist.all_gather_object(held, self.local_bytes())
        if self.is_main_process:
            (Path(folder) / "sharding.json").write_text(json.dumps(
                {"processes": self.num_processes, "bytes_per_process": held}, indent=2))
        dist.barrier()  # the folder is renamed complete only after every process wrote its part

    def load_state(self, folder: str) -> None:
        if not (Path(folder) / "sharding.json").exists():
            raise ConfigError(f"--resume: {folder} is not a sharded (--fsdp) checkpoint")
        state = self._state()
        dcp.load(state, checkpoint_id=os.path.join(folder, "sharded"))  # any number of processes reads it
        for i, model in enumerate(self.models):
            set_model_state_dict(model, state[f"model_{i}"])
        container = torch.nn.ModuleList(self.models)
        for i, optimizer in enumerate(self.optimizers):
            set_optimizer_state_dict(container, optimizer, state[f"optimizer_{i}"])
        rng_file = Path(folder) / f"rng_state_{self.process_index}.pkl"
        if rng_file.exists():  # absent when resuming with more processes than saved
            rng = pickle.loads(rng_file.read_bytes())
            random.setstate(rng["python"])
            np.random.set_state(rng["numpy"])
            torch.set_rng_state(rng["torch"])
            if rng["cuda"] is not None and self.device.type == "cuda":
                torch.cuda.set_rng_state(rng["cuda"])


def is_sharded(accelerator) -> bool:
    return getattr(accelerator, "sharded", False)


@torch.no_grad()
def full_weights(model: torch.nn.Module, dtype: torch.dtype | None = None) -> Iterator[tuple[str, torch.Tensor]]:
    """``(name, full tensor)`` for every entry of ``model``'s state dict, gathered one at a time (every
    process must iterate to the end: each gather is a collective). A tied weight is listed once, under
    its first name, as HF checkpoints store it."""
    seen: set[int] = set()
    for name, tensor in model.state_dict(keep_vars=True).items():
        if id(tensor) in seen:
            continue
        seen.add(id(tensor))
        full = tensor.full_tensor() if isinstance(tensor, DTensor) else tensor
        full = full.detach()
        yield name, full.to(dtype) if dtype is not None and full.is_floating_point() else full


def save_gathered(accelerator, model: torch.nn.Module, tokenizer, output: str | Path,
                  max_shard_bytes: int = 2 * 2**30) -> None:
    """Write sharded ``model`` (an HF model, or a peft model around one) as a plain HF folder on rank 0,
    streamed: full tensors are gathered one at a time and written in safetensors files of at most
    ``max_shard_bytes``. LoRA is merged into copies of the weights, and the adapter is kept in
    ``adapter/``, as :func:`rlhfkit.models.save_model` writes an unsharded one."""
    from safetensors.torch import save_file

    from rlhfkit.rollout.weight_sync import policy_weights, unwrap_peft

    output = Path(output)
    main = accelerator.is_main_process
    if main:
        output.mkdir(parents=True, exist_ok=True)
        for old in output.glob("model*.safetensors*"):
            old.unlink()
    peft_model, (model, is_peft) = model, unwrap_peft(model)
    if is_peft:  # the adapter's tensors (small) gathered whole, written by peft itself
        adapter = {n: p.full_tensor() if isinstance(p, DTensor) else p.detach()
                   for n, p in peft_model.named_parameters() if ".lora_" in n}
        if main:
            peft_model.save_pretrained(output / "adapter", state_dict={n: t.cpu() for n, t in adapter.items()})
        del adapter
    dtype = getattr(model.config, "dtype", None) or getattr(model.config, "torch_dtype", None)
    dtype = dtype if isinstance(dtype, torch.dtype) else None
    weights = (((n, t.to(dtype) if dtype is not None and t.is_floating_point() else t)
                for n, t in policy_weights(peft_model, every_name=False)) if is_peft else full_weights(model, dtype))
    parts: list[list[str]] = []  # the tensor names of each file written

    def write(tensors: dict[str, torch.Tensor]) -> None:
        save_file(tensors, output / f"part-{len(parts):05d}.safetensors", metadata={"format": "pt"})
        parts.append(list(tensors))

    current: dict[str, torch.Tensor] = {}
    size = 0
    for name, tensor in weights:
        if not main:  # every process takes part in each gather; rank 0 keeps the tensors
            continue
        nbytes = tensor.numel() * tensor.element_size()
        if current and size + nbytes > max_shard_bytes:
            write(current)
            current, size = {}, 0
        current[name] = tensor.cpu().contiguous()
        size += nbytes
    if main:
        write(current)
        _name_files(output, parts)
        model.config.save_pretrained(output)
        if getattr(model, "generation_config", None) is not None and model.can_generate():
            model.generation_config.save_pretrained(output)
        tokenizer.save_pretrained(output)
    accelerator.wait_for_everyone()


def _name_files(output: Path, parts: list[list[str]]) -> None:
    """Rename the parts as HF names them, with an index when there is more than one."""
    if len(parts) == 1:
        (output / "part-00000.safetensors").rename(output / "model.safetensors")
        return
    weight_map = {}
    for k, names in enumerate(parts):
        final = f"model-{k + 1:05d}-of-{len(parts):05d}.safetensors"
        (output / f"part-{k:05d}.safetensors").rename(output / final)
        weight_map.update(dict.fromkeys(names, final))
    (output / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map},
                                                                    indent=2))


def save_final_model(accelerator, model: torch.nn.Module, tokenizer, output: str | Path) -> None:
    """The trained model as a plain HF folder: gathered from the shards under ``--fsdp`` (every process
    calls this), written by the main process otherwise."""
    from rlhfkit.models import save_model

    if is_sharded(accelerator):
        save_gathered(accelerator, model, tokenizer, output)
    elif accelerator.is_main_process:
        save_model(model, tokenizer, output)


def eval_share(items: list, accelerator) -> list:
    """This process's share of held-out items: every N-th; under ``--fsdp`` all of them, so every
    process runs the same forwards (each is a collective). Sums reduced over processes then count
    each item N times; the metrics are ratios of such sums, which that leaves unchanged."""
    if is_sharded(accelerator):
        return list(items)
    return items[accelerator.process_index :: accelerator.num_processes]


def gather_objects(values: list, accelerator) -> list:
    """Every process's ``values`` (picklable), concatenated in process order, on every process."""
    if accelerator.num_processes == 1:
        return values
    if not is_sharded(accelerator):
        return gather_object(values)
    parts: list = [None] * accelerator.num_processes
    dist.all_gather_object(parts, values)  # accelerate's gather_object knows only its own launch
    return [value for part in parts for value in part]


def all_processes(accelerator, flag: bool) -> bool:
    """Whether ``flag`` holds on every process, under ``--fsdp`` (where the processes must take the same
    branches around sharded forwards); this process's ``flag`` otherwise."""
    return on_every_process(flag, accelerator.device) if is_sharded(accelerator) else flag
