"""``--placement ray``: the roles of an RL run (``ppo``, ``dpo --online``) as Ray actors, on a cluster or a
local Ray started for it.

The process that runs ``rlhfkit ppo`` becomes the driver (:func:`run_placed`). It joins the cluster
(``--ray-address``) or starts a local Ray, checks that the roles' resources exist, and starts the
trainer group: ``--trainer-processes`` actors that form one torch process group (gloo on CPUs, NCCL on
GPUs; the rendezvous address is trainer 0's node) and each run the stage's own training code, exactly as
under torchrun (``--fsdp`` shards over them). Trainer 0 starts ``--engine-actors`` vLLM engine actors
from the policy (``rollout/ray_engine.py``); every trainer samples through them, and the weights go
to every engine after each update, checked by the probe as with an engine in the trainer's process.
The reference lives with the trainers; the reward (a reward-model folder or a Python function) too, or
on ``--reward-actors`` actors of its own.

The driver waits for the trainers. When one fails or dies (or an engine does, which its trainers
report), the driver stops every actor and raises the first error, naming the role: no process is left
waiting in a collective. ``--resume`` then continues from the last checkpoint with a new set of actors.
Across nodes, ``--output`` must be a folder every node sees (checkpoints, the engine's start folder).
"""

from __future__ import annotations

import os
import socket
import uuid
from pathlib import Path

from rlhfkit.config import ConfigError, PPOConfig
from rlhfkit.console import console
from rlhfkit.rollout.ray_engine import (
    NAMESPACE,
    RAY_INSTALL_HINT,
    RUN_VARIABLE,
    ActorError,
    first_line,
    place_engines,
    ray_available,
)
from rlhfkit.rollout.vllm_engine import INSTALL_HINT, EngineError, vllm_available
from rlhfkit.rollout.weight_sync import SyncError
from rlhfkit.train.optimizer import TrainingError

ASYNC_TIS_CAP = 2.0  # the truncated-IS cap of --async-steps when --tis-cap is not set (Yao et al. 2025's C)


def check_placement(config) -> None:
    """Refuse settings that cannot be placed; fill in what ``--placement ray`` implies."""
    if config.placement != "ray":
        if config.async_steps:
            raise ConfigError("--async-steps overlaps sampling on engine actors with the trainer's update: it "
                              "needs --placement ray (an engine in the trainer's process has nothing to overlap)")
        return
    if not ray_available():
        raise ConfigError(f"--placement ray: Ray is not installed; {RAY_INSTALL_HINT}")
    if config.engine == "hf":
        raise ConfigError("--placement ray places vLLM engine actors: use --engine vllm (or auto), not hf")
    if not vllm_available():
        raise ConfigError(f"--placement ray: the engine actors run vLLM, which is not installed; {INSTALL_HINT}")
    config.engine = "vllm"
    if config.async_steps and getattr(config, "tis_cap", 0) is None:
        config.tis_cap = ASYNC_TIS_CAP
        console.print(f"ppo: --async-steps {config.async_steps}: tokens weighed by the truncated importance ratio "
                      f"against the policy that sampled them, cap {ASYNC_TIS_CAP:g} (--tis-cap)")


class TrainerWorker:
    """One trainer actor: a process of the trainer group."""

    def address(self) -> tuple[str, int]:
        """This node's address and a free port on it (trainer 0's is the group's rendezvous)."""
        import ray

        with socket.socket() as s:
            s.bind(("", 0))
            port = s.getsockname()[1]
        return ray.util.get_node_ip_address(), port

    def node(self) -> str:
        """The Ray node this actor runs on."""
        import ray

        return ray.get_runtime_context().get_node_id()

    def run(self, train, config, rank: int, world: int, master: tuple[str, int], run: str) -> str:
        """Join the process group as ``rank`` of ``world`` (as torchrun's processes do; a group of one runs as
        a plain process, exactly like ``rlhfkit ppo`` without Ray) and run ``train(config)``, the stage's
        entry point (sent by reference: its module is imported here)."""
        os.environ[RUN_VARIABLE] = run
        if world > 1:
            os.environ.update({"RANK": str(rank), "WORLD_SIZE": str(world), "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "1",
                               "MASTER_ADDR": master[0], "MASTER_PORT": str(master[1])})
        return str(train(config))


def connect(config: PPOConfig) -> bool:
    """Join ``--ray-address`` or start a local Ray; returns whether this call started the connection."""
    import ray

    if ray.is_initialized():
        return False
    if config.ray_address:
        ray.init(address=config.ray_address, namespace=NAMESPACE, log_to_driver=True)
    else:  # a local Ray with room for every role, even on a machine with fewer cores (they share them)
        ray.init(num_cpus=max(os.cpu_count() or 1, int(reserved(config, "cpus") + 0.999)), namespace=NAMESPACE,
                 include_dashboard=False)
    return True


def check_resources(config: PPOConfig) -> None:
    """A clear error when the cluster lacks the CPUs or GPUs the roles reserve (Ray would wait forever)."""
    import ray

    have = ray.cluster_resources()
    for kind in ("CPU", "GPU"):
        wanted = reserved(config, f"{kind.lower()}s")
        if wanted > have.get(kind, 0) + 1e-9:
            raise ConfigError(
                f"--placement ray: the roles reserve {wanted:g} {kind}s ({config.trainer_processes} trainer(s), "
                f"{config.engine_actors} engine(s), {config.reward_actors} reward actor(s): --*-{kind.lower()}s) "
                f"but the Ray cluster has {have.get(kind, 0):g}: reserve less or add nodes")


def reserved(config: PPOConfig, kind: str) -> float:
    """The ``cpus`` or ``gpus`` every role together reserves."""
    return (config.trainer_processes * getattr(config, f"trainer_{kind}")
            + config.engine_actors * getattr(config, f"engine_{kind}")
            + config.reward_actors * getattr(config, f"reward_{kind}"))


def run_placed(stage: str, train, config: PPOConfig) -> Path:
    """Run ``train(config)`` (the entry point of ``stage``, e.g. ``run_ppo``) with its roles placed by Ray
    (see the module docstring)."""
    import ray

    started = connect(config)
    run = f"rlhfkit-{uuid.uuid4().hex[:8]}"
    trainers, engines, group = [], [], None
    try:
        check_resources(config)
        engines = place_engines(run, config.engine_actors, {"num_cpus": config.engine_cpus,
                                                             "num_gpus": config.engine_gpus})
        world = config.trainer_processes
        trainers, group = place_trainers(run, config)
        try:
            master = ray.get(trainers[0].address.remote(), timeout=config.dist_timeout)
        except ray.exceptions.GetTimeoutError:
            raise TrainingError(f"--placement ray: the trainer actors were not placed within {config.dist_timeout} s "
                                "(--dist-timeout): the cluster has no node with the resources one asks for") from None
        console.print(f"{stage}: {world} trainer process(es) and {config.engine_actors} vLLM engine actor(s) placed by "
                      f"Ray ({run})")
        runs = {trainer.run.remote(train, config, rank, world, master, run): rank
                for rank, trainer in enumerate(trainers)}
        wait_for_trainers(runs)
    finally:
        for actor in trainers + engines:  # (trainer 0's reward actors end with it)
            ray.kill(actor)
        if group is not None:
            ray.util.remove_placement_group(group)
        if started:
            ray.shutdown()
    return Path(config.output)


def place_trainers(run: str, config: PPOConfig) -> tuple[list, object]:
    """The trainer actors of run ``run``, rank by rank in the bundles of one placement group placed with
    ``--trainer-packing`` (none when a trainer reserves nothing: Ray's bundles cannot be empty); returns them
    and the group, which the caller removes. A group that cannot be placed fails after ``--dist-timeout`` s."""
    import ray
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    world = config.trainer_processes
    bundle = {k: v for k, v in (("CPU", config.trainer_cpus), ("GPU", config.trainer_gpus)) if v > 0}
    group = ray.util.placement_group([bundle] * world, strategy=config.trainer_packing.upper(),
                                     name=f"{run}-trainers") if bundle else None
    if group is not None and not group.wait(timeout_seconds=config.dist_timeout):
        ray.util.remove_placement_group(group)
        raise TrainingError(f"--placement ray: the trainer group ({world} x {bundle}, --trainer-packing "
                            f"{config.trainer_packing}) was not placed within {config.dist_timeout} s (--dist-timeout): "
                            "the cluster's nodes do not hold it that way; choose another --trainer-packing or add nodes")
    actor = ray.remote(TrainerWorker)
    trainers = []
    for rank in range(world):
        strategy = PlacementGroupSchedulingStrategy(group, placement_group_bundle_index=rank) if group else None
        trainers.append(actor.options(name=f"{run}-trainer-{rank}", namespace=NAMESPACE, num_cpus=config.trainer_cpus,
                                      num_gpus=config.trainer_gpus, scheduling_strategy=strategy).remote())
    return trainers, group


def wait_for_trainers(runs: dict) -> None:
    """Wait until every trainer is done; the first failure, naming its role, as soon as it happens."""
    import ray
    from ray import exceptions

    pending = list(runs)
    while pending:
        done, pending = ray.wait(pending, num_returns=1)
        rank = runs[done[0]]
        try:
            ray.get(done[0])
        except exceptions.RayActorError as error:
            raise TrainingError(f"--placement ray: trainer process {rank} died ({first_line(error)}); the run stops here: "
                                "rerun it with --resume to continue from its last checkpoint") from None
        except exceptions.RayTaskError as error:
            cause = error.cause
            if isinstance(cause, (ConfigError, TrainingError, ActorError, SyncError, EngineError)):
                raise cause from None
            raise TrainingError(f"--placement ray: trainer process {rank} failed: {type(cause).__name__}: "
                                f"{cause}") from None
