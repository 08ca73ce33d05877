"""The vLLM engine: the same answers and log-probs as the HF engine, live weight sync checked by the probe,
and the RL trainers learning with it (CPU, float32, tiny Llama and Qwen2 models).

vLLM must be installed (`make install-vllm`; CI installs it). One engine lives in this process at a time:
each test closes the engine it starts.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from rlhfkit.models import LoraSettings, load_causal_lm, load_tokenizer
from rlhfkit.rollout.logprobs import response_logprobs, rollout_from_samples
from rlhfkit.rollout.sampler import HFSampler, SamplingSettings
from rlhfkit.rollout.vllm_engine import VLLMSampler, vllm_available
from rlhfkit.rollout.weight_sync import SyncError, WeightSync, policy_weights

pytestmark = [
    pytest.mark.skipif(not vllm_available() and not os.environ.get("RLHFKIT_REQUIRE_VLLM"),
                       reason="vLLM is not installed (make install-vllm)"),
    pytest.mark.slow,
]

REPO = Path(__file__).resolve().parents[1]
PROMPTS = ["Tell me about number 3.", "What is the capital of Peru?", "Hi", "Name a colour.", "Why is the sky blue?"]


@pytest.fixture
def engine():
    """Start engines with ``engine(folder, tokenizer)``; each is closed after the test."""
    started = []

    def start(folder, tokenizer, **options):
        started.append(VLLMSampler(folder, tokenizer, max_model_len=256, **options))
        return started[-1]

    yield start
    for sampler in started:
        sampler.close()


def encoded(tokenizer) -> list[list[int]]:
    from rlhfkit.data.chat import encode_prompt

    return [encode_prompt(tokenizer, [{"role": "user", "content": p}]) for p in PROMPTS]


def trainer_logprobs(model, tokenizer, prompt_ids, samples, temperature):
    rollout = rollout_from_samples(samples, [None] * len(prompt_ids), prompt_ids, tokenizer.pad_token_id,
                                   torch.device("cpu"))
    with torch.no_grad():
        return response_logprobs(model, rollout, temperature)[0], rollout


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_greedy_tokens_equal_the_hf_engine_and_logprobs_equal_the_trainer(arch, vllm_families, engine):
    folder = vllm_families[arch]
    tokenizer = load_tokenizer(str(folder))
    model = load_causal_lm(str(folder), tokenizer).eval()
    ids = encoded(tokenizer)
    sampler = engine(folder, tokenizer)
    greedy = SamplingSettings(max_new_tokens=12, temperature=0.0)
    hf = HFSampler(model, tokenizer).sample([None] * len(ids), ids, 1, greedy)
    ours = sampler.sample([None] * len(ids), ids, 1, greedy)
    assert [a[0].token_ids for a in ours] == [a[0].token_ids for a in hf]
    assert [a[0].text for a in ours] == [a[0].text for a in hf]
    for temperature in (1.0, 0.7):
        samples = sampler.sample([None] * len(ids), ids, 3, SamplingSettings(max_new_tokens=12, temperature=temperature,
                                                                            seed=5))
        trainer, rollout = trainer_logprobs(model, tokenizer, ids, samples, temperature)
        assert rollout.engine_logprobs is not None
        assert (trainer - rollout.engine_logprobs).abs().max().item() < 1e-4
        # seeded per request: the same call draws the same answers
        again = sampler.sample([None] * len(ids), ids, 3, SamplingSettings(max_new_tokens=12, temperature=temperature,
                                                                          seed=5))
        assert [[s.token_ids for s in a] for a in again] == [[s.token_ids for s in a] for a in samples]


def greedy_tokens(model, tokenizer, ids) -> list[list[int]]:
    answers = HFSampler(model, tokenizer).sample([None] * len(ids), ids, 1, SamplingSettings(16, temperature=0.0))
    return [a[0].token_ids for a in answers]


def engine_greedy(sampler, ids) -> list[list[int]]:
    return [s.token_ids for s in sampler.greedy(ids, 16)]


def optimizer_step(model, tokenizer, ids) -> None:
    """Adam steps on a language-model loss that teaches answering ' blue': the greedy answers change."""
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    blue = tokenizer.encode(" blue")
    batch = torch.tensor([ids[0] + blue * 6])
    model.train()
    for _ in range(3):
        optimizer.zero_grad()
        model(input_ids=batch, labels=batch).loss.backward()
        optimizer.step()
    model.eval()


def test_after_an_optimizer_step_and_a_sync_the_engine_answers_as_the_trained_model(vllm_families, engine):
    folder = vllm_families["llama"]
    tokenizer = load_tokenizer(str(folder))
    model = load_causal_lm(str(folder), tokenizer)
    ids = encoded(tokenizer)
    sampler = engine(folder, tokenizer)
    before = engine_greedy(sampler, ids)
    assert before == greedy_tokens(model, tokenizer, ids)
    optimizer_step(model, tokenizer, ids)
    trained = greedy_tokens(model, tokenizer, ids)
    assert trained != before
    sync = WeightSync(sampler, ids[:3], tokenizer.pad_token_id, tolerance=1e-3)
    metrics = sync.push(model, step=1)
    assert engine_greedy(sampler, ids) == trained
    assert metrics["sync_probe_logprob_diff"] < 1e-4 and metrics["sync_probe_agreement"] == 1.0


def test_lora_is_merged_into_the_sent_weights_and_never_into_the_trained_ones(vllm_families, engine):
    folder = vllm_families["qwen2"]
    tokenizer = load_tokenizer(str(folder))
    policy = load_causal_lm(str(folder), tokenizer, lora=LoraSettings(r=4, alpha=16))
    with torch.no_grad():
        for name, parameter in policy.named_parameters():
            if "lora_B" in name:
                parameter.add_(0.3 * torch.randn_like(parameter))
    base_before = {n: p.clone() for n, p in policy.named_parameters() if "lora_" not in n}
    ids = encoded(tokenizer)
    sampler = engine(folder, tokenizer)
    base_answers = engine_greedy(sampler, ids)
    WeightSync(sampler, ids[:3], tokenizer.pad_token_id).push(policy, step=1)
    assert engine_greedy(sampler, ids) == greedy_tokens(policy, tokenizer, ids) != base_answers
    # the trained base weights are as they were: the adapters were added into copies
    assert all(torch.equal(p, base_before[n]) for n, p in policy.named_parameters() if "lora_" not in n)
    names = [name for name, _ in policy_weights(policy)]
    assert not any("lora_" in n or "base_layer" in n for n in names) and "lm_head.weight" in names


@pytest.mark.parametrize("failure", ["skipped tensor", "tied head left out"])
def test_a_sync_that_silently_fails_is_caught_by_the_probe(failure, vllm_families, engine):
    folder = vllm_families["llama"]
    tokenizer = load_tokenizer(str(folder))
    model = load_causal_lm(str(folder), tokenizer)
    ids = encoded(tokenizer)
    sampler = engine(folder, tokenizer)
    optimizer_step(model, tokenizer, ids)
    left_out = "model.layers.1.mlp.down_proj.weight" if failure == "skipped tensor" else "lm_head.weight"
    sampler.load_weights((n, t) for n, t in policy_weights(model) if n != left_out)  # vLLM raises nothing
    sync = WeightSync(sampler, ids[:3], tokenizer.pad_token_id, tolerance=1e-3)
    with pytest.raises(SyncError, match="at step 7: .*not sampling from the trained weights"):
        sync.verify(model, step=7)
    sync.push(model, step=8)  # the full weights pass the same check


# -- the trainers with --engine vllm --------------------------------------------------------------------

def ppo_settings(folder, rl_files, output, **overrides) -> dict:
    settings = dict(policy=str(folder), reward=f"{rl_files / 'rewards.py'}:blue", prompts=str(rl_files / "prompts.jsonl"),
                    output=str(output), device="cpu", prompts_per_step=16, samples_per_prompt=4, max_new_tokens=8,
                    learning_rate=1e-2, batch_size=64, log_every=1, eval_split=0.0, save_every=0, warmup_ratio=0.0,
                    beta=0.2, sample_every=0, max_steps=16, max_length=128)
    settings.update(overrides)
    return settings


def scores(output: Path) -> list[dict]:
    return [r for r in map(json.loads, (output / "metrics.jsonl").read_text().splitlines()) if "score" in r]


@pytest.mark.parametrize("estimator", ["grpo", "gae"])
def test_ppo_and_grpo_with_vllm_raise_the_reward_as_the_hf_engine_does(estimator, tmp_path, vllm_families, rl_files):
    from rlhfkit.config import PPOConfig
    from rlhfkit.train.ppo import run_ppo

    final = {}
    for name in ("hf", "vllm"):
        output = tmp_path / name
        run_ppo(PPOConfig(**ppo_settings(vllm_families["llama"], rl_files, output, estimator=estimator, engine=name)))
        history = scores(output)
        final[name] = sum(r["score"] for r in history[-4:]) / 4
        assert history[-1]["kl_k1"] < 35
        if name == "vllm":  # every step synced, checked, and measured the engine's mismatch
            assert all(r["sync_probe_logprob_diff"] < 1e-4 and r["engine_logprob_diff"] < 1e-4 for r in history)
            assert all(r["engine_kl"] < 1e-6 for r in history)
            assert not (output / "engine-start").exists()
    assert final["vllm"] > max(0.5, 10 * scores(tmp_path / "vllm")[0]["score"]), final
    assert final["vllm"] > 0.5 * final["hf"], final  # same seeds, within noise


def test_truncated_importance_sampling_runs_and_learns(tmp_path, vllm_families, rl_files):
    from rlhfkit.config import PPOConfig
    from rlhfkit.train.ppo import run_ppo

    output = tmp_path / "tis"
    run_ppo(PPOConfig(**ppo_settings(vllm_families["llama"], rl_files, output, estimator="grpo", engine="vllm",
                                     tis_cap=2.0, sync_every=2, sync_check_every=2)))
    history = scores(output)
    assert sum(r["score"] for r in history[-4:]) / 4 > max(0.5, 10 * history[0]["score"])
    # synced after every second update, checked at every second sync
    assert [("sync_seconds" in r, "sync_probe_agreement" in r) for r in history[:4]] == [
        (False, False), (True, False), (False, False), (True, True)]
    # between syncs the engine samples from older weights, and the mismatch metric shows it
    assert history[1]["engine_logprob_diff"] > 1e-3 > history[2]["engine_logprob_diff"]


def test_online_dpo_with_vllm_runs_its_rounds(tmp_path, vllm_families, rl_files):
    from rlhfkit.config import DPOConfig
    from rlhfkit.train.dpo import run_dpo

    output = tmp_path / "online"
    run_dpo(DPOConfig(model=str(vllm_families["qwen2"]), online=True, reward=f"{rl_files / 'rewards.py'}:blue",
                      prompts=str(rl_files / "prompts.jsonl"), output=str(output), device="cpu", rounds=2,
                      samples_per_prompt=4, max_new_tokens=8, learning_rate=1e-3, batch_size=8, max_steps=4,
                      eval_split=0.0, save_every=0, warmup_ratio=0.0, max_length=128, engine="vllm"))
    assert (output / "round-002" / "model.safetensors").exists() or (output / "model.safetensors").exists()
    rounds = [json.loads(line) for line in (output / "rounds.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rounds] == [1, 2, "final"]
    # each round sampled from its own policy, checked: the engine got round 1's model before round 2
    assert all(r["sync_probe_logprob_diff"] < 1e-4 for r in rounds[:2]) and rounds[0]["pairs"] > 0
    assert not (output / "engine-start").exists()


def test_a_killed_vllm_run_resumes_and_finishes(tmp_path, vllm_families, rl_files):
    """kill -9 after the step-4 checkpoint; --resume continues from it. With per-request seeds, the same
    weights and vLLM's CPU kernels, the resumed run samples what the uninterrupted one did: equal weights."""
    settings = ppo_settings(vllm_families["llama"], rl_files, tmp_path / "killed", estimator="grpo", engine="vllm",
                            max_steps=8, save_every=4)
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in settings.items()]
    command = [sys.executable, "-m", "rlhfkit", "ppo", *flags]
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    checkpoint = tmp_path / "killed" / "checkpoints" / "step-0000004" / "trainer_state.json"
    deadline = time.monotonic() + 300
    while not checkpoint.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert checkpoint.exists(), "the run never reached its step-4 checkpoint"
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert not (tmp_path / "killed" / "model.safetensors").exists()
    resumed = subprocess.run([*command, "--resume"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-2000:]
    from rlhfkit.config import PPOConfig
    from rlhfkit.train.ppo import run_ppo

    straight = tmp_path / "straight"
    run_ppo(PPOConfig(**{**settings, "output": str(straight)}))
    a, b = load_file(straight / "model.safetensors"), load_file(tmp_path / "killed" / "model.safetensors")
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    assert [r["step"] for r in scores(tmp_path / "killed")][-4:] == [5, 6, 7, 8]


def test_engine_choice_errors_are_clear(monkeypatch, tmp_path, vllm_families, rl_files, capfd):
    from rlhfkit.cli import main
    from rlhfkit.config import ConfigError
    from rlhfkit.rollout import engines

    monkeypatch.setattr(engines, "vllm_available", lambda: False)
    with pytest.raises(ConfigError, match="--engine vllm: vLLM is not installed; install it with"):
        engines.resolve_engine("vllm", torch.device("cpu"))
    assert engines.resolve_engine("auto", torch.device("cpu")) == "hf"
    monkeypatch.undo()
    # a model whose head size vLLM's CPU attention lacks: refused before the engine starts sampling
    from rlhfkit.models.tiny import write_tiny_model

    narrow = write_tiny_model(REPO / "README.md", tmp_path / "narrow", arch="llama", heads=4, vocab_size=300)
    with pytest.raises(SystemExit):
        main(["generate", "--model", str(narrow), "--prompts", str(rl_files / "prompts.jsonl"), "--output",
              str(tmp_path / "out.jsonl"), "--engine", "vllm", "--device", "cpu"])
    captured = capfd.readouterr()
    assert "vLLM's CPU attention supports head sizes" in captured.out + captured.err


# -- the other stages that sample ------------------------------------------------------------------------

def test_generate_and_revise_with_vllm_write_what_the_hf_engine_writes_when_greedy(tmp_path, vllm_families,
                                                                                  rl_files):
    from rlhfkit.cli import main

    folder = vllm_families["qwen2"]
    outputs = {}
    for name in ("hf", "vllm"):
        out = tmp_path / f"{name}.jsonl"
        main(["generate", "--model", str(folder), "--prompts", str(rl_files / "prompts.jsonl"), "--output", str(out),
              "--engine", name, "--device", "cpu", "--temperature", "0", "--num-samples", "2", "--max-new-tokens", "8"])
        outputs[name] = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(outputs["vllm"]) == 64 and outputs["vllm"] == outputs["hf"]
    # sampled: seeded per request, so the same command writes the same answers again
    sampled = []
    for run in range(2):
        out = tmp_path / f"sampled-{run}.jsonl"
        main(["generate", "--model", str(folder), "--prompts", str(rl_files / "prompts.jsonl"), "--output", str(out),
              "--engine", "vllm", "--device", "cpu", "--num-samples", "2", "--max-new-tokens", "8", "--seed", "3"])
        sampled.append(out.read_text())
    assert sampled[0] == sampled[1]

    records = tmp_path / "answers.jsonl"
    records.write_text("".join(json.dumps({"prompt": r["prompt"], "response": r["responses"][0]}) + "\n"
                               for r in outputs["hf"][:4]))
    revised = {}
    for name in ("hf", "vllm"):
        out = tmp_path / f"revised-{name}.jsonl"
        main(["revise", "--model", str(folder), "--data", str(records), "--output", str(out), "--engine", name,
              "--device", "cpu", "--max-new-tokens", "8"])
        revised[name] = out.read_text()
    assert revised["vllm"] == revised["hf"]


def test_eval_with_vllm_compares_a_policy_with_itself_at_exactly_one_half(tmp_path, vllm_families, rl_files):
    from rlhfkit.cli import main

    folder = str(vllm_families["llama"])
    output = tmp_path / "eval"
    main(["eval", "--policy", folder, "--baseline", folder, "--prompts", str(rl_files / "prompts.jsonl"),
          "--judge", f"{rl_files / 'rewards.py'}:blue", "--output", str(output), "--engine", "vllm", "--device", "cpu",
          "--max-new-tokens", "8", "--samples-per-prompt", "2"])
    result = json.loads((output / "eval.json").read_text())
    assert result["win_rate"]["rate"] == 0.5 and result["win_rate"]["ties"] == 128
    rows = [json.loads(line) for line in (output / "samples.jsonl").read_text().splitlines()]
    assert all(r["policy_answer"] == r["baseline_answer"] for r in rows)
    assert result["policies"]["policy"]["kl"] == 0.0


def test_serve_with_vllm_answers_as_the_hf_engine_does(vllm_families):
    from fastapi.testclient import TestClient

    from rlhfkit.config import ServeConfig
    from rlhfkit.serve import create_app, load_engine

    folder = str(vllm_families["llama"])
    body = {"messages": [{"role": "user", "content": "Why is the sky blue?"}], "max_tokens": 10, "temperature": 0,
            "logprobs": True, "top_logprobs": 2}
    answers = {}
    for name in ("hf", "vllm"):
        engine = load_engine(folder, device="cpu", name="tiny", engine=ServeConfig(model=folder, engine=name))
        with TestClient(create_app(engine)) as client:
            response = client.post("/v1/chat/completions", json=body)
            too_long = client.post("/v1/chat/completions", json={**body, "max_tokens": 10_000})
        assert response.status_code == 200 and too_long.status_code == 400
        answers[name] = response.json()["choices"]
        engine.sampler.close()
    assert answers["vllm"][0]["message"] == answers["hf"][0]["message"]
    vllm_logprobs = [t["logprob"] for t in answers["vllm"][0]["logprobs"]["content"]]
    hf_logprobs = [t["logprob"] for t in answers["hf"][0]["logprobs"]["content"]]
    assert vllm_logprobs == pytest.approx(hf_logprobs, abs=1e-5)


def test_a_local_model_judge_through_vllm_gives_the_hf_judges_probabilities(tmp_path, vllm_families):
    from rlhfkit.config import JudgeConfig
    from rlhfkit.judge.backends import load_judge
    from rlhfkit.judge.base import Comparison

    folder = str(vllm_families["qwen2"])
    comparisons = [Comparison("Why is the sky blue?", "Rayleigh scattering.", "Because."),
                   Comparison([{"role": "user", "content": "Hi"}], "Hello! How can I help?", "No.")]
    hf = load_judge(folder, device="cpu").judge(comparisons)
    judge = load_judge(folder, device="cpu", engine=JudgeConfig(judge=folder, data="x", output="y", engine="vllm"))
    try:
        ours = judge.judge(comparisons)
    finally:
        judge.close()
    assert [v.prob_a for v in ours] == pytest.approx([v.prob_a for v in hf], abs=1e-5)
    assert all(0 < v.prob_a < 1 for v in ours)
