"""``--placement ray``: trainer and vLLM engine actors on a local two-node cluster (Ray's own
``ray.cluster_utils.Cluster``), checked against the single-process run; asynchronous rollouts; a killed
engine actor and ``--resume``.

Ray and vLLM must be installed (CI installs both). The cluster is started once for the module; each run
starts its own actors.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from rlhfkit.rollout.ray_engine import NAMESPACE, ray_available
from rlhfkit.rollout.vllm_engine import vllm_available

pytestmark = [
    pytest.mark.skipif((not vllm_available() or not ray_available()) and not os.environ.get("RLHFKIT_REQUIRE_VLLM"),
                       reason="Ray and vLLM are not installed (make install-vllm)"),
    pytest.mark.slow,
    pytest.mark.usefixtures("one_thread"),  # as in the trainer actors (1 CPU each): the same float rounding
]

STEPS = 16


@pytest.fixture(scope="module")
def cluster():
    """Two simulated nodes (1 + 2 CPUs): a trainer group of two and an engine need both."""
    import ray
    from ray.cluster_utils import Cluster

    nodes = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    nodes.add_node(num_cpus=2)
    ray.init(address=nodes.address, namespace=NAMESPACE, log_to_driver=False)  # the actors print their progress
    yield nodes
    ray.shutdown()
    nodes.shutdown()


def settings(folder: Path, rl_files: Path, output: Path, **overrides):
    from rlhfkit.config import PPOConfig

    values = dict(policy=str(folder), reward=f"{rl_files / 'rewards.py'}:blue", prompts=str(rl_files / "prompts.jsonl"),
                  output=str(output), device="cpu", estimator="grpo", prompts_per_step=8, samples_per_prompt=4,
                  max_new_tokens=8, learning_rate=1e-2, batch_size=64, log_every=1, eval_split=0.0, save_every=0,
                  warmup_ratio=0.0, beta=0.2, sample_every=0, max_steps=STEPS, max_length=128, engine="vllm")
    values.update(overrides)
    return PPOConfig(**values)


def history(output: Path) -> list[dict]:
    return [r for r in map(json.loads, (output / "metrics.jsonl").read_text().splitlines()) if "score" in r]


def mean_late_score(output: Path) -> float:
    return sum(r["score"] for r in history(output)[-3:]) / 3


@pytest.fixture(scope="module")
def single_process(tmp_path_factory, vllm_families, rl_files) -> Path:
    """The reference: the same run in this process, its vLLM engine in a process of its own, as the engine
    actors are (vLLM's worker changes the float rounding of the process it runs in: in the trainer's, the
    KL drifts by ~1e-4 within 6 steps)."""
    from rlhfkit.train.ppo import run_ppo

    saved = os.environ.get("VLLM_ENABLE_V1_MULTIPROCESSING")
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "1"
    try:
        return run_ppo(settings(vllm_families["llama"], rl_files, tmp_path_factory.mktemp("ray") / "single"))
    finally:
        if saved is None:
            os.environ.pop("VLLM_ENABLE_V1_MULTIPROCESSING")
        else:
            os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = saved


def kill_engine_after(output: Path, step: int, driver: threading.Thread, deadline_s: float = 300) -> bool:
    """Once the run's step-``step`` checkpoint exists, kill its engine actor; whether it got there."""
    import ray

    checkpoint = output / "checkpoints" / f"step-{step:07d}" / "trainer_state.json"
    deadline = time.monotonic() + deadline_s
    while not checkpoint.exists() and driver.is_alive() and time.monotonic() < deadline:
        time.sleep(0.2)
    engines = [a["name"] for a in ray.util.list_named_actors(all_namespaces=True) if a["name"].endswith("-engine-0")]
    if not checkpoint.exists() or not engines:
        return False
    ray.kill(ray.get_actor(engines[0], namespace=NAMESPACE))
    return True


def test_a_trainer_and_an_engine_actor_equal_one_process_through_a_killed_engine_and_resume(
        cluster, single_process, tmp_path, vllm_families, rl_files):
    """Synchronous: every step's metrics and the final weights equal the single-process run's, with the
    engine actor killed after the step-6 checkpoint (the run stops naming it) and the run resumed."""
    from rlhfkit.rollout.ray_engine import ActorError
    from rlhfkit.train.ppo import run_ppo

    config = settings(vllm_families["llama"], rl_files, tmp_path / "placed", placement="ray", save_every=6)
    failure: list[BaseException] = []

    def run() -> None:
        try:
            run_ppo(config)
        except BaseException as error:  # noqa: BLE001 - the test reads it
            failure.append(error)

    driver = threading.Thread(target=run)
    driver.start()
    assert kill_engine_after(tmp_path / "placed", 6, driver), f"the run never reached its step-6 checkpoint: {failure}"
    driver.join(timeout=120)
    assert not driver.is_alive(), "the run did not stop after its engine died"
    assert failure and isinstance(failure[0], ActorError), failure
    assert "engine actor 0" in str(failure[0]) and "died" in str(failure[0])
    assert not (tmp_path / "placed" / "model.safetensors").exists()

    output = run_ppo(settings(vllm_families["llama"], rl_files, tmp_path / "placed", placement="ray", save_every=6,
                              resume=True))
    placed = {r["step"]: r for r in history(output)}  # the resumed run's rows replace the killed run's last ones
    alone = history(single_process)
    assert sorted(placed) == [r["step"] for r in alone] == list(range(1, STEPS + 1))
    for b in alone:
        a = placed[b["step"]]
        for name in ("score", "kl_k1", "policy_loss", "engine_logprob_diff"):
            assert a[name] == pytest.approx(b[name], abs=1e-4), (a["step"], name)
        assert a["sync_probe_logprob_diff"] < 1e-4 and a["policy_lag"] == 0
    weights, reference = load_file(output / "model.safetensors"), load_file(single_process / "model.safetensors")
    assert all(torch.allclose(weights[k], reference[k], atol=1e-4) for k in reference)


def test_two_sharded_trainers_a_reward_actor_and_async_rollouts_raise_the_reward(cluster, single_process, tmp_path,
                                                                                 vllm_families, rl_files):
    """Two trainer actors sharded with FSDP2 across the two nodes (the weights gathered for every sync), the
    reward on an actor of its own, and the engine sampling one policy version ahead."""
    from transformers import AutoModelForCausalLM

    from rlhfkit.train.ppo import run_ppo

    two = dict(placement="ray", trainer_processes=2, fsdp=True, reward_actors=1, reward_cpus=0, async_steps=1,
               save_every=12)
    output = run_ppo(settings(vllm_families["llama"], rl_files, tmp_path / "two", **two))
    rows = history(output)
    assert all(r["sync_probe_logprob_diff"] < 1e-4 for r in rows)  # the probe passed every step
    # each step's answers came from the policy one update older, except the first step's
    assert [r["policy_lag"] for r in rows] == [0] + [1] * (STEPS - 1)
    assert all(r["policy_lag_max"] <= 1 for r in rows)
    # the behaviour policy's log-probs come from the engine, one version old: the gap the TIS weights correct
    assert rows[0]["engine_logprob_diff"] < 1e-4 and all(r["engine_logprob_diff"] > 1e-3 for r in rows[1:])
    assert mean_late_score(output) > max(0.5, 10 * rows[0]["score"])
    # near the single process (1.68 vs 2.71 here: other per-rank draws, one version behind)
    assert mean_late_score(output) > 0.4 * mean_late_score(single_process)
    assert rows[-1]["kl_k1"] < 35
    assert AutoModelForCausalLM.from_pretrained(output) is not None

    # resumed from the step-12 checkpoint with new actors: step 13 trains on the answers the checkpoint kept
    # (sampled one version behind, as in the run itself), so the last steps are the uninterrupted run's
    shutil.rmtree(output / "checkpoints" / f"step-{STEPS:07d}")
    rerun = run_ppo(settings(vllm_families["llama"], rl_files, tmp_path / "two", resume=True, **two))
    resumed = history(rerun)[STEPS:]  # the resumed run's rows, after the whole run's
    assert [r["step"] for r in resumed] == list(range(13, STEPS + 1))
    for a, b in zip(resumed, rows[12:], strict=True):
        assert a["policy_lag"] == 1
        for name in ("score", "kl_k1", "policy_loss", "engine_logprob_diff"):
            assert a[name] == pytest.approx(b[name], abs=1e-4), (a["step"], name)


def test_online_dpo_samples_its_rounds_on_an_engine_actor(cluster, tmp_path, vllm_families, rl_files):
    from rlhfkit.config import DPOConfig
    from rlhfkit.train.dpo import run_dpo

    output = run_dpo(DPOConfig(model=str(vllm_families["qwen2"]), online=True, reward=f"{rl_files / 'rewards.py'}:blue",
                               prompts=str(rl_files / "prompts.jsonl"), output=str(tmp_path / "online"), device="cpu",
                               rounds=2, samples_per_prompt=4, max_new_tokens=8, learning_rate=1e-3, batch_size=8,
                               max_steps=4, eval_split=0.0, save_every=0, warmup_ratio=0.0, max_length=128,
                               engine="vllm", placement="ray"))
    rounds = [json.loads(line) for line in (output / "rounds.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rounds] == [1, 2, "final"] and rounds[0]["pairs"] > 0
    # each round sampled from its own policy on the engine actor, checked by the probe
    assert all(r["sync_probe_logprob_diff"] < 1e-4 for r in rounds[:2])
    assert (output / "model.safetensors").exists() and not (output / "engine-start").exists()


def test_a_dead_trainer_stops_the_run_naming_it_and_missing_resources_are_refused(cluster, tmp_path, vllm_families,
                                                                                    rl_files):
    import ray

    from rlhfkit.config import ConfigError
    from rlhfkit.train.optimizer import TrainingError
    from rlhfkit.train.placement import wait_for_trainers
    from rlhfkit.train.ppo import run_ppo

    @ray.remote(num_cpus=0)
    class Trainer:
        def run(self, seconds: float, die: bool) -> str:
            time.sleep(seconds)
            if die:
                os._exit(1)
            return "done"

    alive, doomed = Trainer.remote(), Trainer.remote()
    started = time.monotonic()
    with pytest.raises(TrainingError, match="trainer process 1 died .* rerun it with --resume"):
        wait_for_trainers({alive.run.remote(600, False): 0, doomed.run.remote(0.5, True): 1})
    assert time.monotonic() - started < 60  # the first death ends the wait; trainer 0 is not waited for
    ray.kill(alive)
    with pytest.raises(ConfigError, match="the roles reserve 5 CPUs .* the Ray cluster has 3"):
        run_ppo(settings(vllm_families["llama"], rl_files, tmp_path / "big", placement="ray", trainer_processes=4))


def test_the_trainer_group_is_placed_as_trainer_packing_asks(cluster, tmp_path, vllm_families, rl_files):
    """One placement group for the trainer group: strict_pack puts both processes on the node with room for
    both, spread on two nodes; a packing the nodes cannot hold fails within --dist-timeout, named."""
    import ray

    from rlhfkit.train.optimizer import TrainingError
    from rlhfkit.train.placement import place_trainers

    def nodes(packing: str, processes: int = 2, timeout: int = 60) -> list[str]:
        config = settings(vllm_families["llama"], rl_files, tmp_path / packing, placement="ray",
                          trainer_processes=processes, trainer_packing=packing, dist_timeout=timeout)
        trainers, group = place_trainers(f"test-{packing}", config)
        try:
            return ray.get([t.node.remote() for t in trainers], timeout=60)
        finally:
            for trainer in trainers:
                ray.kill(trainer)
            ray.util.remove_placement_group(group)

    two_cpus = next(n["NodeID"] for n in ray.nodes() if n["Alive"] and n["Resources"].get("CPU") == 2)
    assert nodes("strict_pack") == [two_cpus, two_cpus]
    assert len(set(nodes("spread"))) == 2
    started = time.monotonic()
    with pytest.raises(TrainingError, match=r"trainer group \(3 x \{'CPU': 1.0\}, --trainer-packing strict_spread\) "
                                            "was not placed within 5 s"):
        nodes("strict_spread", processes=3, timeout=5)  # 3 CPUs in all, on 2 nodes
    assert time.monotonic() - started < 30


def test_a_loop_round_runs_its_ppo_step_on_placed_actors(cluster, tmp_path, vllm_families, capfd):
    """`rlhfkit loop` with `placement: ray` in its ppo section: the round's PPO trains in a trainer actor and
    samples on an engine actor (checked by the probe), and the round finishes with its policy evaluated."""
    from rlhfkit.config import LoopConfig
    from rlhfkit.iterate import run_loop

    files = tmp_path / "files"
    files.mkdir()
    (files / "judges.py").write_text("def more_e(prompts, responses):\n"
                                     "    return [r.count('e') + len(r) / 1000 for r in responses]\n")
    prompts = [{"prompt": [{"role": "user", "content": f"Tell me about thing {i}."}]} for i in range(8)]
    (files / "prompts.jsonl").write_text("".join(json.dumps(p) + "\n" for p in prompts))
    output = tmp_path / "loop"
    run_loop(LoopConfig(
        policy=str(vllm_families["llama"]), prompts=str(files / "prompts.jsonl"), eval_prompts=str(files / "prompts.jsonl"),
        output=str(output), rounds=1, samples_per_prompt=2, prompts_per_round=8, labels="judge",
        judge=f"{files / 'judges.py'}:more_e", device="cpu", seed=0, generate={"max_new_tokens": 8, "batch_size": 16},
        rm={"max_steps": 2, "batch_size": 4, "max_length": 64, "eval_split": 0.0, "learning_rate": 1e-3,
            "warmup_ratio": 0.0, "save_every": 0, "log_every": 1},
        ppo={"max_steps": 2, "prompts_per_step": 4, "max_new_tokens": 8, "batch_size": 16, "ppo_epochs": 1,
             "max_length": 64, "learning_rate": 1e-3, "warmup_ratio": 0.0, "eval_split": 0.0, "save_every": 0,
             "sample_every": 0, "log_every": 1, "placement": "ray", "engine": "vllm"},
        eval={"max_new_tokens": 8, "batch_size": 16, "max_length": 64}))
    state = json.loads((output / "round-001" / "round.json").read_text())
    assert state["complete"] and list(state["steps"]) == ["generate", "labels", "rm", "policy", "eval"]
    rows = history(output / "round-001" / "policy")
    assert len(rows) == 2 and all(r["sync_probe_logprob_diff"] < 1e-4 for r in rows)
    assert (output / "round-001" / "eval" / "eval.json").is_file()
    said = " ".join(capfd.readouterr().err.split())  # the console's lines, unwrapped
    assert "1 trainer process(es) and 1 vLLM engine actor(s) placed by Ray" in said
