"""SFT learns what it is shown, resumes exactly, and runs data-parallel with the same curve."""

import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from rlhfkit.config import SFTConfig
from rlhfkit.data import load_demonstrations
from rlhfkit.models import load_causal_lm, load_tokenizer
from rlhfkit.rollout.generate import sample_responses
from rlhfkit.train.batches import BatchPlan
from rlhfkit.train.checkpoints import latest_checkpoint
from rlhfkit.train.optimizer import make_optimizer
from rlhfkit.train.sft import held_out_loss, pack_examples, run_sft, tokenize_demonstrations


def sft_config(model_dir, data, output, **overrides):
    settings = dict(model=str(model_dir), data=str(data), output=str(output), learning_rate=3e-3, batch_size=4,
                    max_length=96, eval_split=0.0, warmup_ratio=0.0, log_every=1, save_every=0, device="cpu")
    settings.update(overrides)
    return SFTConfig(**settings)


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def losses(output):
    return [r["loss"] for r in map(json.loads, (output / "metrics.jsonl").read_text().splitlines()) if "loss" in r]


class _Accelerator:  # single-process stand-in for held_out_loss
    process_index, num_processes, device = 0, 1, torch.device("cpu")


def test_sft_memorises_and_greedy_reproduces(tmp_path, tiny_model_dir, example_files):
    demos = [json.loads(line) for line in example_files["demonstrations"].read_text().splitlines()][:6]
    data = write_jsonl(tmp_path / "demos.jsonl", demos)
    tokenizer = load_tokenizer(str(tiny_model_dir))
    examples = tokenize_demonstrations(tokenizer, load_demonstrations(data), 96, "demos")
    before_model = load_causal_lm(str(tiny_model_dir), tokenizer)
    before = held_out_loss(before_model, examples, tokenizer.pad_token_id, 8, _Accelerator())["eval_loss"]

    output = tmp_path / "sft"
    run_sft(sft_config(tiny_model_dir, data, output, max_steps=80, batch_size=6))
    model = load_causal_lm(str(output), load_tokenizer(str(output)))
    after = held_out_loss(model, examples, tokenizer.pad_token_id, 8, _Accelerator())["eval_loss"]
    assert after < 0.1 * before, (before, after)

    prompt = demos[0]["messages"][:1]
    [[sample]] = sample_responses(model, tokenizer, [prompt], temperature=0, max_new_tokens=24, show_progress=False)
    assert sample.text == demos[0]["messages"][1]["content"]
    assert sample.finished  # it learnt to stop: EOS is not masked as padding


def test_resume_after_interruption_gives_identical_weights(tmp_path, tiny_model_dir, example_files):
    data = example_files["demonstrations"]
    straight = tmp_path / "straight"
    run_sft(sft_config(tiny_model_dir, data, straight, max_steps=12, save_every=4))

    interrupted = tmp_path / "interrupted"

    def crash(step):
        if step == 6:
            raise KeyboardInterrupt  # killed after step 6; the last checkpoint is step 4

    with pytest.raises(KeyboardInterrupt):
        run_sft(sft_config(tiny_model_dir, data, interrupted, max_steps=12, save_every=4), on_step=crash)
    assert latest_checkpoint(interrupted).name == "step-0000004"
    assert not (interrupted / "model.safetensors").exists()
    run_sft(sft_config(tiny_model_dir, data, interrupted, max_steps=12, save_every=4, resume=True))

    a, b = load_file(straight / "model.safetensors"), load_file(interrupted / "model.safetensors")
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    assert losses(interrupted)[-6:] == losses(straight)[-6:]


@pytest.mark.slow
def test_two_processes_match_one_at_equal_global_batch(tmp_path, tiny_model_dir, example_files):
    data = example_files["demonstrations"]
    common = ["--model", str(tiny_model_dir), "--data", str(data), "--learning-rate", "3e-3", "--max-steps", "6",
              "--max-length", "96", "--eval-split", "0", "--log-every", "1", "--save-every", "0", "--device", "cpu",
              "--seed", "3"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "RLHFKIT_NO_PROGRESS": "1"}
    one = tmp_path / "one"
    subprocess.run([sys.executable, "-m", "rlhfkit", "sft", *common, "--output", str(one), "--batch-size", "4"],
                   check=True, env=env, capture_output=True)
    two = tmp_path / "two"
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "rlhfkit"]
    result = subprocess.run([*launch, "sft", *common, "--output", str(two), "--batch-size", "2"],
                            env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[:6000]
    assert "2 processes" in result.stderr
    one_curve, two_curve = losses(one), losses(two)
    assert len(one_curve) == len(two_curve) == 6
    assert one_curve == pytest.approx(two_curve, abs=2e-4)
    assert two_curve[-1] < two_curve[0]


def test_grad_accumulation_matches_big_batch(tmp_path, tiny_model_dir, example_files):
    data = example_files["demonstrations"]
    big = tmp_path / "big"
    run_sft(sft_config(tiny_model_dir, data, big, max_steps=4, batch_size=4))
    small = tmp_path / "small"
    run_sft(sft_config(tiny_model_dir, data, small, max_steps=4, batch_size=2, grad_accum=2))
    assert losses(big) == pytest.approx(losses(small), abs=1e-5)


def test_batch_plan_covers_each_example_once_per_epoch():
    plan = BatchPlan(num_examples=10, batch_size=2, grad_accum=2, num_processes=2, seed=0)
    assert plan.steps_per_epoch == 2
    seen = []
    for step in range(plan.steps_per_epoch):
        for process in range(2):
            for micro in plan.micro_batches(step, process):
                assert micro  # every process runs the same number of non-empty micro-batches
                seen.extend(micro)
    # 10 examples, the short last step topped up from the epoch's start
    assert sorted(set(seen)) == list(range(10))
    assert plan.global_indices(2) != plan.global_indices(0)  # epoch 2 is reshuffled


def test_the_fused_optimizer_takes_the_same_steps_as_plain_adamw():
    torch.manual_seed(0)
    fused_model = torch.nn.Linear(8, 4)
    plain_model = torch.nn.Linear(8, 4)
    plain_model.load_state_dict(fused_model.state_dict())
    start = fused_model.weight.detach().clone()
    groups = [{"params": [fused_model.weight], "lr": 1e-2}, {"params": [fused_model.bias], "lr": 1e-3}]
    fused = make_optimizer(groups, weight_decay=0.1)
    assert fused.defaults["fused"] is True
    plain = torch.optim.AdamW([{"params": [plain_model.weight], "lr": 1e-2}, {"params": [plain_model.bias], "lr": 1e-3}],
                              weight_decay=0.1)
    for _ in range(3):
        x = torch.randn(5, 8)
        for model, optimizer in ((fused_model, fused), (plain_model, plain)):
            model(x).pow(2).mean().backward()
            optimizer.step()
            optimizer.zero_grad()
    assert torch.allclose(fused_model.weight, plain_model.weight, atol=1e-6)
    assert torch.allclose(fused_model.bias, plain_model.bias, atol=1e-6)
    assert (fused_model.weight - start).abs().mean() > 1e-2  # the steps were real: far above the tolerance


def test_length_grouping_keeps_the_epoch_and_cuts_padding():
    import random

    lengths = [random.Random(i).randint(5, 200) for i in range(103)]
    plain = BatchPlan(103, 4, 1, 1, seed=3)
    grouped = BatchPlan(103, 4, 1, 1, seed=3, lengths=tuple(lengths))

    def padded_tokens(plan, epoch):
        batches = [plan.global_indices(epoch * plan.steps_per_epoch + s) for s in range(plan.steps_per_epoch)]
        assert sorted(i for b in batches for i in b) == list(range(103))  # each example once per epoch
        assert len(batches[-1]) == 3  # the short batch stays last
        return sum(len(b) * max(lengths[i] for i in b) for b in batches)

    for epoch in range(2):
        assert padded_tokens(grouped, epoch) < 0.8 * padded_tokens(plain, epoch)
    assert grouped.epoch_order(0) != grouped.epoch_order(1)
    assert grouped.epoch_order(1) == BatchPlan(103, 4, 1, 1, seed=3, lengths=tuple(lengths)).epoch_order(1)


def test_packing_keeps_every_answer_token(tokenizer, example_files):
    examples = tokenize_demonstrations(tokenizer, load_demonstrations(example_files["demonstrations"]), 96, "x")
    packed = pack_examples(examples, 64)
    assert all(len(p.input_ids) <= 64 for p in packed)
    assert sum(p.num_target_tokens for p in packed) == sum(e.num_target_tokens for e in examples)


def test_packed_sft_runs_and_learns(tmp_path, tiny_model_dir, example_files):
    output = tmp_path / "packed"
    run_sft(sft_config(tiny_model_dir, example_files["demonstrations"], output, max_steps=20, packing=True,
                       max_length=128, eval_split=0.2, batch_size=2))
    curve = losses(output)
    assert curve[-1] < curve[0]
    evals = [r for r in map(json.loads, (output / "metrics.jsonl").read_text().splitlines()) if "eval_loss" in r]
    assert evals and evals[-1]["eval_perplexity"] == pytest.approx(2.718281828 ** evals[-1]["eval_loss"], rel=1e-4)


@pytest.mark.slow
def test_sigkill_then_resume_gives_identical_weights(tmp_path, tiny_model_dir, example_files):
    """A real kill (SIGKILL, mid-run, possibly mid-checkpoint) and ``--resume`` from the command line."""
    import signal
    import time

    args = ["--model", str(tiny_model_dir), "--data", str(example_files["demonstrations"]), "--learning-rate", "3e-3",
            "--max-steps", "150", "--batch-size", "4", "--max-length", "96", "--eval-split", "0", "--save-every", "3",
            "--log-every", "1", "--device", "cpu"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "RLHFKIT_NO_PROGRESS": "1"}
    straight = tmp_path / "straight"
    subprocess.run([sys.executable, "-m", "rlhfkit", "sft", *args, "--output", str(straight)], check=True, env=env,
                   capture_output=True)

    killed = tmp_path / "killed"
    process = subprocess.Popen([sys.executable, "-m", "rlhfkit", "sft", *args, "--output", str(killed)], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and process.poll() is None:
        found = latest_checkpoint(killed)
        if found is not None and found.name >= "step-0000009":
            break
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    assert not (killed / "model.safetensors").exists()
    resumed = subprocess.run([sys.executable, "-m", "rlhfkit", "sft", *args, "--output", str(killed), "--resume"],
                             env=env, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from" in resumed.stderr

    a, b = load_file(straight / "model.safetensors"), load_file(killed / "model.safetensors")
    for name in a:
        assert torch.equal(a[name], b[name]), name


def test_lora_sft_with_gradient_checkpointing_learns(tmp_path, tiny_llama_dir, example_files):
    output = tmp_path / "lora"
    run_sft(sft_config(tiny_llama_dir, example_files["demonstrations"], output, max_steps=25, lora_r=8,
                       lora_alpha=16, learning_rate=1e-2, gradient_checkpointing=True, batch_size=8))
    curve = losses(output)
    assert curve[-1] < curve[0] - 0.5  # adapters on a random tiny model learn, if slowly
    assert (output / "adapter" / "adapter_config.json").exists()
    from transformers import AutoModelForCausalLM

    merged = AutoModelForCausalLM.from_pretrained(output)  # a plain folder, adapters merged
    assert not any("lora" in name for name, _ in merged.named_parameters())
