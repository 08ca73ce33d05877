"""vLLM engines (and rewards) as Ray actors (``--placement ray``), reached through the same sampling
interface as an engine in the trainer's process.

:class:`EngineWorker` is the body of one engine actor: a :class:`~rlhfkit.rollout.vllm_engine.VLLMSampler`
and one thread that runs the actor's jobs (start the engine, sample, greedy probe, load weights)
strictly in the order they were queued. The driver places the engine actors when the run starts
(:func:`place_engines`), so they import vLLM while the trainers load their models; trainer 0 starts
their engines from the policy's folder. Queueing a job returns at once with a ticket; its result is collected later. So a
trainer can ask for a later step's rollouts, update on the current one while the engine samples, and
collect them when it needs them (``--async-steps``). Every answer records the policy version (updates
done) of the weights that sampled it.

:class:`RemoteSampler` is the trainer side, one per trainer process: process ``r`` samples on engine
``r mod N``. The order of jobs is what makes a run reproducible, and it follows the trainer group's own
order: a process waits until its job is queued before it goes on, process 0 sends new weights to every
engine after the update's collectives (so after every process queued its requests for the old
weights), and every process passes a barrier once the weights are loaded (so no request for the new
weights queues before them).

Transport: the weights go through Ray's object store, put once and read by every engine (the CPU
transport: tensors serialised, which a GPU cluster would replace with NCCL; not built yet).

:class:`RewardWorker` and :class:`RemoteReward` do the same for the reward (``--reward-actors``): a
reward-model folder or a Python function scoring on actors of its own, process ``r`` asking actor
``r mod N``.

A dead actor, or one that does not answer within ``--dist-timeout`` seconds, is an :class:`ActorError`
naming it, never a hang.
"""

from __future__ import annotations

import contextlib
import os
import queue
import threading
from collections.abc import Iterable
from dataclasses import dataclass

import torch

from rlhfkit.rollout.generate import Sample
from rlhfkit.rollout.sampler import SamplingSettings

NAMESPACE = "rlhfkit"  # the Ray namespace of rlhfkit's named actors
RUN_VARIABLE = "RLHFKIT_RAY_RUN"  # set in trainer actors: the run's id (names its engine actors)
RAY_INSTALL_HINT = "install it with `pip install 'rlhfkit[ray]'` (or `make install`, which includes it)"


class ActorError(RuntimeError):
    """An engine or reward actor died, failed, or did not answer in time (the message names it)."""


def ray_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("ray") is not None


def placed_run() -> str | None:
    """The id of the Ray run this process is a trainer of, or None outside one."""
    return os.environ.get(RUN_VARIABLE)


def engine_name(run: str, index: int) -> str:
    return f"{run}-engine-{index}"


class EngineWorker:
    """One engine actor: its job thread, and the vLLM engine that its first job starts (see the module
    docstring). The thread imports vLLM as soon as the actor exists, while the trainers load their models."""

    def __init__(self):
        self.jobs: queue.Queue = queue.Queue()
        self.finished: dict[int, threading.Event] = {}
        self.outcomes: dict[int, tuple[bool, object]] = {}
        self.lock = threading.Lock()
        self.tickets = 0
        self.version = 0
        threading.Thread(target=self.work, daemon=True, name="rlhfkit-engine").start()

    def work(self) -> None:
        """The job thread: import vLLM, then run the queued jobs one by one."""
        with contextlib.suppress(ImportError):  # the start job reports it
            import vllm  # noqa: F401 - seconds of imports, done before the first job needs them
        while True:
            ticket, kind, args = self.jobs.get()
            try:
                outcome = (True, getattr(self, f"run_{kind}")(*args))
            except Exception as error:  # returned to the caller by result()
                outcome = (False, error)
            self.outcomes[ticket] = outcome
            self.finished[ticket].set()

    def run_start(self, folder: str, tokenizer, options: dict) -> bool:
        """Start the engine from the model folder ``folder`` (``options``: VLLMSampler's keyword arguments)."""
        from rlhfkit.rollout.vllm_engine import VLLMSampler

        self.sampler = VLLMSampler(folder, tokenizer, **options)
        return True

    def submit(self, kind: str, *args) -> int:
        """Queue a job (``start``, ``sample``, ``greedy`` or ``load``); returns its ticket."""
        with self.lock:
            self.tickets += 1
            ticket = self.tickets
            self.finished[ticket] = threading.Event()
        self.jobs.put((ticket, kind, args))
        return ticket

    def result(self, ticket: int):
        """The result of job ``ticket`` (waiting for it), or the error it raised."""
        self.finished[ticket].wait()
        ok, value = self.outcomes.pop(ticket)
        del self.finished[ticket]
        if not ok:
            raise value
        return value

    def run_sample(self, prompt_ids: list[list[int]], num_samples: int, settings: SamplingSettings):
        answers = self.sampler.sample([None] * len(prompt_ids), prompt_ids, num_samples, settings)
        for per_prompt in answers:
            for sample in per_prompt:
                sample.version = self.version
        return answers

    def run_greedy(self, prompt_ids: list[list[int]], max_new_tokens: int) -> list[Sample]:
        return self.sampler.greedy(prompt_ids, max_new_tokens)

    def run_load(self, weights: list[tuple[str, torch.Tensor]], version: int) -> int:
        self.sampler.load_weights(weights)
        self.version = version
        return len(weights)


@dataclass
class Pending:
    """A queued sampling job: which engine holds it, its ticket."""

    engine: int
    ticket: int


def process_group() -> tuple[int, int]:
    """``(rank, world size)`` of this trainer process (``(0, 1)`` without a process group)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def barrier() -> None:
    import torch.distributed as dist

    if process_group()[1] > 1:
        dist.barrier()


def first_line(error: BaseException) -> str:
    """The first line of ``error``'s message (Ray's carry a whole traceback), or its type's name."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def answer(ref, role: str, what: str, timeout: float):
    """``ray.get(ref)``: an actor's answer, its failures as :class:`ActorError` naming ``role``."""
    import ray
    from ray import exceptions

    try:
        return ray.get(ref, timeout=timeout)
    except exceptions.GetTimeoutError:
        raise ActorError(f"{role} did not answer {what} within {timeout:g} s (--dist-timeout)") from None
    except exceptions.RayActorError as error:
        raise ActorError(f"{role} died ({first_line(error)}); the run stops here: rerun it with --resume to "
                               "continue from its last checkpoint") from None
    except exceptions.RayTaskError as error:  # the job raised in the actor: that error, as it is
        raise error.cause from None


def start_actors(worker: type, role: str, names: list[str], args: tuple, resources: dict, timeout: float,
                 max_concurrency: int = 1) -> list:
    """The named actors ``names`` of class ``worker`` (each built with ``args``, reserving ``resources``;
    ``role`` names them in errors): started by process 0 and waited for, then found by name by the others."""
    import ray

    if process_group()[0] == 0:
        actor = ray.remote(max_concurrency=max_concurrency)(worker)
        handles = [actor.options(name=name, namespace=NAMESPACE, **resources).remote(*args) for name in names]
        for name, handle in zip(names, handles, strict=True):
            answer(handle.ready.remote(), f"{role} {name}", "after its start", timeout)
        barrier()
        return handles
    barrier()
    return [ray.get_actor(name, namespace=NAMESPACE) for name in names]


def stop_actors(handles: list) -> None:
    """Process 0 stops ``handles``, once every process is done with them."""
    import ray

    barrier()
    if process_group()[0] == 0:
        for handle in handles:
            ray.kill(handle)


def place_engines(run: str, count: int, resources: dict) -> list:
    """The driver places the run's ``count`` engine actors (each reserving ``resources``: num_cpus,
    num_gpus); their engines start when trainer 0 has the model folder (:meth:`RemoteSampler.start`)."""
    import ray

    actor = ray.remote(max_concurrency=4)(EngineWorker)  # threads: the job thread runs beside the calls
    return [actor.options(name=engine_name(run, i), namespace=NAMESPACE, **resources).remote() for i in range(count)]


class RemoteSampler:
    """A :class:`~rlhfkit.rollout.sampler.Sampler` over engine actors (see the module docstring)."""

    def __init__(self, engines: list, names: list[str], timeout: float):
        self.engines, self.names, self.timeout = engines, names, timeout
        self.rank = process_group()[0]
        self.mine = self.rank % len(engines)

    @classmethod
    def start(cls, run: str, count: int, folder: str, tokenizer, options: dict, timeout: float) -> RemoteSampler:
        """Start the vLLM engines of the run's ``count`` engine actors (which the driver placed, see
        :func:`place_engines`) from ``folder``; ``options``: VLLMSampler's keyword arguments."""
        import ray

        names = [engine_name(run, i) for i in range(count)]
        sampler = cls([ray.get_actor(name, namespace=NAMESPACE) for name in names], names, timeout)
        if sampler.rank == 0:
            for job in [sampler.queue(i, "start", folder, tokenizer, options) for i in range(count)]:
                sampler.collect(job)
        barrier()
        return sampler

    def wait(self, index: int, ref, what: str):
        return answer(ref, f"engine actor {index} ({self.names[index]})", what, self.timeout)

    def queue(self, index: int, kind: str, *args) -> Pending:
        return Pending(index, self.wait(index, self.engines[index].submit.remote(kind, *args), f"a {kind} job"))

    def collect(self, pending: Pending):
        return self.wait(pending.engine, self.engines[pending.engine].result.remote(pending.ticket), "with its result")

    # -- the Sampler interface ---------------------------------------------------------------------------

    def submit(self, prompt_ids: list[list[int]], num_samples: int, settings: SamplingSettings) -> Pending:
        """Queue the answers to ``prompt_ids`` on this process's engine; :meth:`collect` gets them."""
        return self.queue(self.mine, "sample", [list(ids) for ids in prompt_ids], num_samples, settings)

    def sample(self, prompts: list, prompt_ids: list[list[int]], num_samples: int,
               settings: SamplingSettings, show_progress: bool = False) -> list[list[Sample]]:
        return self.collect(self.submit(prompt_ids, num_samples, settings))

    def greedy(self, prompt_ids: list[list[int]], max_new_tokens: int) -> list[Sample]:
        return self.collect(self.queue(self.mine, "greedy", [list(ids) for ids in prompt_ids], max_new_tokens))

    @torch.no_grad()
    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]], version: int | None = None) -> None:
        """Every process iterates ``weights`` (under --fsdp each tensor is a gather); process 0 puts them in
        the object store once and loads them into every engine; then all pass a barrier."""
        import ray

        if self.rank != 0:
            for _ in weights:  # under --fsdp each tensor is a gather every process takes part in
                pass
        else:
            shared = ray.put([(name, tensor.detach().cpu()) for name, tensor in weights])
            jobs = [self.queue(index, "load", shared, version) for index in range(len(self.engines))]
            for job in jobs:
                self.collect(job)
        barrier()

    def sleep(self) -> None:
        """Nothing to do: engine actors hold devices of their own."""

    def wake_up(self) -> None:
        """See :meth:`sleep`."""

    def close(self) -> None:
        """Stop the engine actors."""
        stop_actors(self.engines)


class RewardWorker:
    """One reward actor: the reward ``spec`` (a reward-model folder or a Python function) loaded with
    ``options`` (load_reward_function's)."""

    def __init__(self, spec: str, options: dict):
        from rlhfkit.rewards import load_reward_function

        self.reward = load_reward_function(spec, **options)

    def ready(self) -> bool:
        return True

    def score(self, prompts: list, responses: list[str]) -> list[float]:
        return [float(x) for x in self.reward(prompts, responses)]


class RemoteReward:
    """A reward function that scores on reward actors (``--reward-actors``): process ``r`` asks actor
    ``r mod N``. Scores come back as the reward computes them; the caller checks and shapes them."""

    def __init__(self, actors: list, names: list[str], timeout: float):
        self.actors, self.names, self.timeout = actors, names, timeout
        self.mine = process_group()[0] % len(actors)

    @classmethod
    def start(cls, run: str, count: int, spec: str, options: dict, resources: dict, timeout: float) -> RemoteReward:
        names = [f"{run}-reward-{i}" for i in range(count)]
        return cls(start_actors(RewardWorker, "reward actor", names, (spec, options), resources, timeout), names, timeout)

    def __call__(self, prompts: list, responses: list[str]) -> list[float]:
        ref = self.actors[self.mine].score.remote(list(prompts), list(responses))
        return answer(ref, f"reward actor {self.mine} ({self.names[self.mine]})", "with its scores", self.timeout)

    def close(self) -> None:
        stop_actors(self.actors)
