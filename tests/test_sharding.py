"""Sharded training (``--fsdp``, torch FSDP2 on gloo): 2 processes under torchrun against 1 process.

Every run is a real ``torchrun -m rlhfkit ...`` on tiny Llama models. SFT, RM and DPO compare the
2-process sharded run with a plain 1-process run at equal global batch (the data order and the
normaliser are global, so the curves match). PPO samples each process's prompts with that process's
seeds, so its 2-process sharded run is compared with the 2-process data-parallel run instead (the
same samples), which the existing data-parallel tests tie to one process for the offline stages.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time

import psutil
import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

pytestmark = pytest.mark.slow

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "RLHFKIT_NO_PROGRESS": "1"}
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "rlhfkit"]


def run(command: list[str], timeout: int = 300) -> subprocess.CompletedProcess:
    result = subprocess.run(command, env=ENV, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, (result.stdout[-3000:], result.stderr[-6000:])
    return result


def losses(output, key="loss") -> list[float]:
    rows = [json.loads(line) for line in (output / "metrics.jsonl").read_text().splitlines()]
    return [r[key] for r in rows if key in r]


def weights(folder) -> dict[str, torch.Tensor]:
    return load_file(folder / "model.safetensors")


def assert_same_weights(a: dict, b: dict, tolerance: float) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert a[name].dtype == b[name].dtype, name
        assert (a[name] - b[name]).abs().max().item() <= tolerance, name


def pairs(count: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for i in range(count):
        topic = rng.choice(["tea", "rain", "maps", "bread"])
        rows.append({"prompt": f"Tell me about {topic} {i}.", "chosen": f"Blue {topic} is calm and blue.",
                     "rejected": f"{topic} no."})
    return rows


@pytest.fixture(scope="module")
def pair_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("pairs") / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in pairs(48, seed=0)))
    return path


def offline_command(stage: str, model, data, output, batch: int, *extra: str) -> list[str]:
    return [stage, "--model", str(model), "--data", str(data), "--output", str(output), "--batch-size", str(batch),
            "--learning-rate", "3e-3", "--max-steps", "10", "--max-length", "96", "--eval-split", "0.1",
            "--log-every", "1", "--save-every", "0", "--device", "cpu", "--seed", "3", "--warmup-ratio", "0",
            *extra]


@pytest.mark.parametrize("stage", ["sft", "rm", "dpo", "dpo-lora"])
def test_two_sharded_processes_match_one_process(tmp_path, tiny_llama_dir, example_files, pair_file, stage):
    stage, _, lora = stage.partition("-")
    data = example_files["demonstrations"] if stage == "sft" else pair_file
    one, two = tmp_path / "one", tmp_path / "two"
    from rlhfkit.cli import main

    # LoRA: the adapters trained in the shards, the reference the policy with them disabled
    adapters = ("--lora-r", "8") if lora else ()
    main(offline_command(stage, tiny_llama_dir, data, one, 4, *adapters))  # in this process: no launch
    # sft also recomputes activations in the sharded run: the same curve
    extra = ("--gradient-checkpointing",) if stage == "sft" else ()
    result = run([*TORCHRUN, *offline_command(stage, tiny_llama_dir, data, two, 2, "--fsdp", *extra, *adapters)])
    assert "2 processes" in result.stdout + result.stderr
    one_curve, two_curve = losses(one), losses(two)
    assert len(one_curve) == len(two_curve) == 10
    assert two_curve == pytest.approx(one_curve, abs=1e-4)
    assert two_curve[-1] < two_curve[0]
    # the gathered HF folder: the 1-process weights, loadable by plain HF
    assert_same_weights(weights(one), weights(two), 1e-4)
    auto = AutoModelForSequenceClassification if stage == "rm" else AutoModelForCausalLM
    ids = torch.tensor([[5, 9, 11, 3, 7]])
    with torch.no_grad():
        a, b = auto.from_pretrained(one)(input_ids=ids).logits, auto.from_pretrained(two)(input_ids=ids).logits
    assert torch.allclose(a, b, atol=1e-4)
    if stage == "dpo":  # every process's share of the cached reference log-probs was gathered
        cached = json.loads((two / "reference_logps.json").read_text())
        assert all(values is not None for values in cached["train"] + cached["held_out"])
    if lora:  # the merged weights above, and the adapter as peft writes it
        from peft import PeftModel

        a, b = load_file(one / "adapter" / "adapter_model.safetensors"), load_file(two / "adapter" / "adapter_model.safetensors")
        assert a.keys() == b.keys() and len(a) > 0
        assert_same_weights(a, b, 1e-4)
        assert isinstance(PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_llama_dir),
                                                    two / "adapter"), PeftModel)
        return  # the frozen base is not halved by the shards' trained state
    # each process held about half the parameters and AdamW states (the tensors' bytes)
    held = json.loads(next((two / "checkpoints").glob("step-*/sharding.json")).read_text())["bytes_per_process"]
    whole = sum(t.numel() * t.element_size() for t in weights(one).values())
    for process in held:
        assert process["parameters"] <= 0.55 * whole, (process, whole)
        assert process["optimizer"] <= 0.55 * 2 * whole + 1024, (process, whole)  # two moments (+ step counts)


def ppo_command(model, rl_files, output, estimator: str, *extra: str) -> list[str]:
    return ["ppo", "--policy", str(model), "--reward", f"{rl_files / 'rewards.py'}:blue",
            "--prompts", str(rl_files / "prompts.jsonl"), "--output", str(output), "--device", "cpu",
            "--estimator", estimator, "--prompts-per-step", "8", "--samples-per-prompt", "4",
            "--max-new-tokens", "8", "--learning-rate", "1e-3", "--batch-size", "64", "--log-every", "1",
            "--eval-split", "0", "--save-every", "0", "--warmup-ratio", "0", "--beta", "0.2",
            "--sample-every", "0", "--max-steps", "5", *extra]


@pytest.mark.parametrize("estimator", ["grpo", "gae"])
def test_sharded_ppo_matches_data_parallel_ppo(tmp_path, tiny_llama_dir, rl_files, estimator):
    ddp, fsdp = tmp_path / "ddp", tmp_path / "fsdp"
    # grpo resamples groups whose answers all score the same (DAPO's dynamic sampling): under --fsdp the
    # processes sample the same number of rounds, and each keeps the groups it kept under DDP
    extra = ("--dynamic-sampling",) if estimator == "grpo" else ()
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "rlhfkit"]
    # at lr 1e-3: at 1e-2 the critic's 6 steps amplify float noise between the two runs to 1e-2 (chaos,
    # not a bug: the curves still agree to 1e-4); at 1e-3 the weights agree to 1e-6
    run([*launch, *ppo_command(tiny_llama_dir, rl_files, ddp, estimator, *extra)])
    run([*TORCHRUN, *ppo_command(tiny_llama_dir, rl_files, fsdp, estimator, "--fsdp", *extra)])
    for key in ("score", "policy_loss", "kl_k1", "approx_kl", "entropy"):
        expected, got = losses(ddp, key), losses(fsdp, key)
        assert len(got) == 5
        assert got == pytest.approx(expected, abs=1e-4), key
    if extra:
        assert max(losses(fsdp, "sampling_rounds")) > 1  # resampling happened
    assert_same_weights(weights(ddp), weights(fsdp), 1e-5)
    if estimator == "gae":
        assert_same_weights(weights(ddp / "critic"), weights(fsdp / "critic"), 1e-5)


def test_sharded_online_dpo_samples_and_trains_what_one_process_does(tmp_path, tiny_llama_dir, rl_files):
    """Every process samples every prompt with the round's seeds, process 0 writes the pairs, each round
    trains sharded: the rounds, the curves and the final weights of one process."""
    def command(output, batch: int, *extra: str) -> list[str]:
        return ["dpo", "--online", "--model", str(tiny_llama_dir), "--reward", f"{rl_files / 'rewards.py'}:blue",
                "--prompts", str(rl_files / "prompts.jsonl"), "--output", str(output), "--rounds", "2",
                "--samples-per-prompt", "4", "--max-new-tokens", "8", "--learning-rate", "1e-3", "--max-steps", "4",
                "--batch-size", str(batch), "--eval-split", "0", "--save-every", "0", "--warmup-ratio", "0",
                "--max-length", "96", "--device", "cpu", "--log-every", "1", *extra]

    from rlhfkit.cli import main

    one, two = tmp_path / "one", tmp_path / "two"
    main(command(one, 4))
    run([*TORCHRUN, *command(two, 2, "--fsdp")])
    rounds = [[json.loads(line) for line in (folder / "rounds.jsonl").read_text().splitlines()] for folder in (one, two)]
    assert [r["round"] for r in rounds[1]] == [1, 2, "final"] and rounds[1][0]["pairs"] > 0
    assert rounds[1] == rounds[0]  # the same answers, scores and pairs every round
    for number in (1, 2):
        assert losses(two / f"round-{number:03d}") == pytest.approx(losses(one / f"round-{number:03d}"), abs=1e-4)
    assert_same_weights(weights(one), weights(two), 1e-4)


def test_a_killed_rank_stops_the_run_and_resume_gives_the_uninterrupted_weights(tmp_path, tiny_llama_dir,
                                                                                example_files):
    data = example_files["demonstrations"]

    def command(output, *extra, launch=TORCHRUN, batch="2"):
        return [*launch, "sft", "--model", str(tiny_llama_dir), "--data", str(data), "--output", str(output),
                "--batch-size", batch, "--learning-rate", "1e-3", "--max-steps", "40", "--max-length", "96",
                "--eval-split", "0", "--log-every", "1", "--save-every", "5", "--device", "cpu", "--seed", "3",
                "--fsdp", *extra]

    straight, killed = tmp_path / "straight", tmp_path / "killed"
    run(command(straight))
    launcher = subprocess.Popen(command(killed), env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                text=True)
    deadline = time.monotonic() + 120
    while not (killed / "checkpoints" / "step-0000010").exists():
        assert launcher.poll() is None and time.monotonic() < deadline, "the run ended before step 10"
        time.sleep(0.05)
    ranks = psutil.Process(launcher.pid).children()
    assert len(ranks) == 2
    os.kill(ranks[-1].pid, signal.SIGKILL)
    started = time.monotonic()
    _, stderr = launcher.communicate(timeout=60)  # the other rank is stopped too: no hang
    assert launcher.returncode != 0
    assert time.monotonic() - started < 60
    assert "SIGKILL" in stderr or "Signal 9" in stderr, stderr[-3000:]
    assert not (killed / "model.safetensors").exists()
    alone = tmp_path / "alone"
    shutil.copytree(killed, alone)
    run(command(killed, "--resume"))
    assert_same_weights(weights(straight), weights(killed), 0.0)
    assert losses(killed)[-10:] == pytest.approx(losses(straight)[-10:], abs=0)
    # the same checkpoint resumed by one process at the same global batch: the shards re-split, the same run
    refused = subprocess.run(command(alone, "--resume", launch=[sys.executable, "-m", "rlhfkit"]), env=ENV,
                             capture_output=True, text=True, timeout=300)
    assert refused.returncode == 2 and "the global batch" in refused.stdout + refused.stderr
    run(command(alone, "--resume", launch=[sys.executable, "-m", "rlhfkit"], batch="4"))
    assert_same_weights(weights(straight), weights(alone), 1e-4)
    assert losses(alone)[-10:] == pytest.approx(losses(straight)[-10:], abs=1e-4)


NAN_SCRIPT = """
import sys, torch
from rlhfkit.config import SFTConfig
from rlhfkit.train.optimizer import TrainingError, make_accelerator, make_optimizer, optimizer_step

config = SFTConfig(model="unused", data="unused", output="unused", device="cpu", fsdp=sys.argv[1] == "fsdp")
accelerator = make_accelerator(config)
torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Linear(4, 4))
model._no_split_modules = ["Linear"]
optimizer = make_optimizer([{"params": list(model.parameters())}], lr=1e-2)
scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
model, optimizer = accelerator.prepare(model, optimizer)

def loss():
    value = model(torch.ones(2, 4)).sum()
    return (value * float("nan") if accelerator.process_index == 1 else value), {}

try:
    optimizer_step(accelerator, [model], optimizer, scheduler, [loss], 1.0, lambda l: f"non-finite loss {l.item()}")
except TrainingError as error:
    print(f"rank {accelerator.process_index} stopped: {error}", flush=True)
torch.distributed.destroy_process_group()  # else gloo's threads may abort the interpreter's exit
"""


@pytest.mark.parametrize("mode", ["ddp", "fsdp"])
def test_a_nan_on_one_rank_stops_every_rank(tmp_path, mode):
    script = tmp_path / "nan.py"
    script.write_text(NAN_SCRIPT)
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                             str(script), mode], env=ENV, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-4000:]
    assert "rank 0 stopped: non-finite loss nan" in result.stdout
    assert "rank 1 stopped: non-finite loss nan" in result.stdout


def test_sharded_ppo_syncs_the_gathered_weights_into_vllm(tmp_path, rl_files, example_files):
    """Each process's vLLM engine gets the full weights gathered from the shards, with the LoRA adapters
    (sharded too) merged into copies, checked by the probe. (Full fine-tuning's gathered sync is
    tests/test_ray.py's two sharded trainers.)"""
    if not os.environ.get("RLHFKIT_REQUIRE_VLLM"):  # CI requires it (tests/test_vllm.py)
        pytest.importorskip("vllm")
    from rlhfkit.models.tiny import write_tiny_model

    model = write_tiny_model(example_files["corpus"], tmp_path / "model", arch="llama", heads=2, vocab_size=512,
                             seed=1)  # head size 32: vLLM's CPU attention has no kernel for 16
    output = tmp_path / "out"
    run([*TORCHRUN, *ppo_command(model, rl_files, output, "grpo", "--fsdp", "--engine", "vllm", "--max-length", "128",
                                 "--lora-r", "8", "--learning-rate", "1e-2")], timeout=600)
    history = [r for r in map(json.loads, (output / "metrics.jsonl").read_text().splitlines()) if "score" in r]
    assert len(history) == 5
    assert all(r["sync_probe_logprob_diff"] < 1e-4 and r["sync_probe_agreement"] == 1.0 for r in history)
    assert all(r["engine_logprob_diff"] < 1e-4 for r in history)
    assert history[-1]["kl_k1"] > 1e-3  # the adapters moved the policy: the engine followed it


def test_the_gathered_folder_in_several_files_loads_with_plain_hf(tmp_path, tiny_llama_dir):
    """Past ``max_shard_bytes`` the gathered weights go into several safetensors files and an HF index."""
    from accelerate import Accelerator

    from rlhfkit.models import load_tokenizer
    from rlhfkit.train.sharding import save_gathered

    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    save_gathered(Accelerator(cpu=True), model, load_tokenizer(str(tiny_llama_dir)), tmp_path / "out",
                  max_shard_bytes=64 * 1024)
    files = sorted(p.name for p in (tmp_path / "out").glob("model-*.safetensors"))
    assert len(files) > 2 and files[0].endswith(f"-of-{len(files):05d}.safetensors")
    index = json.loads((tmp_path / "out" / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"].values()) == set(files)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    ids = torch.tensor([[5, 9, 11, 3, 7]])
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).logits, loaded(input_ids=ids).logits)


def test_a_collective_whose_peer_died_fails_with_a_clear_message(tmp_path):
    """A process whose peer died mid-run says so, naming itself and --resume (the CLI prints it instead of
    gloo's traceback); any other RuntimeError is left alone."""
    script = tmp_path / "peer.py"
    script.write_text(
        "import datetime, os\n"
        "import torch, torch.distributed as dist\n"
        "from rlhfkit.cli import collective_failure\n"
        "dist.init_process_group('gloo', timeout=datetime.timedelta(seconds=10))\n"
        "assert collective_failure(RuntimeError('a bug of our own')) is None\n"
        "if dist.get_rank() == 1:\n"
        "    os._exit(0)  # dies without a word\n"
        "try:\n"
        "    dist.all_reduce(torch.ones(1))\n"
        "    print('MESSAGE: none')\n"
        "except RuntimeError as error:\n"
        "    print('MESSAGE:', collective_failure(error))\n"
        "os._exit(0)\n")
    result = run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script)],
                 timeout=120)
    message = next(line for line in result.stdout.splitlines() if line.startswith("MESSAGE:"))
    assert message.startswith("MESSAGE: process 0 of 2: a collective with the other processes failed (")
    assert "Another process died, failed or is stuck" in message and "--resume" in message
    assert "pytorch/third_party" not in message
