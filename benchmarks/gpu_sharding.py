"""The sharding GPU check (issue 18): ``sft`` and ``ppo --estimator grpo`` with ``--fsdp`` in bf16 on one GPU.

    python benchmarks/gpu_sharding.py                    # 0.5B-shaped random Qwen2 (24 layers x 896), bf16
    python benchmarks/gpu_sharding.py --tiny --device cpu   # the same script on a tiny model (a smoke test)

One process (a process group of one: FSDP2 with fp32 master weights and bf16 compute), a few minutes
on one GPU. Prints steps/s, peak GPU memory, and the first and last losses (finite and falling). What
needs more than one GPU (the 2-GPU loss equality, NCCL) is not measured by it. Nothing is downloaded:
the tokenizer is trained on the built-in example and the model has random weights.
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
from pathlib import Path

import torch

from rlhfkit.config import PPOConfig, SFTConfig
from rlhfkit.demo.example import write_example
from rlhfkit.models.tiny import write_tiny_model
from rlhfkit.train.ppo import run_ppo
from rlhfkit.train.sft import run_sft

REWARD = "def longer(prompts, responses):\n    return [min(len(r.split()), 20) / 20 for r in responses]\n"


def rows(output: Path, key: str) -> list[float]:
    return [r[key] for r in map(json.loads, (output / "metrics.jsonl").read_text().splitlines()) if key in r]


def measure(name: str, run, output: Path, key: str, steps: int, device: str) -> None:
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    run()
    seconds = time.perf_counter() - started
    values = rows(output, key)
    peak = torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else float("nan")
    finite = all(math.isfinite(v) for v in values)
    trend = "falling" if key == "loss" else "rising"
    better = values[-1] < values[0] if key == "loss" else values[-1] > values[0]
    print(f"{name}: {steps / seconds:.2f} steps/s (whole run, start included), peak {peak:.1f} GiB, "
          f"{key} {values[0]:.4f} -> {values[-1]:.4f} (finite: {finite}, {trend}: {better})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tiny", action="store_true")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    dtype = "bfloat16" if args.device == "cuda" else "float32"
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        files = write_example(root / "example")
        shape = dict(layers=2, width=64, heads=2) if args.tiny else dict(layers=24, width=896, heads=14)
        model = write_tiny_model(files["corpus"], root / "qwen2", arch="qwen2", vocab_size=2048, **shape)
        (root / "reward.py").write_text(REWARD)
        sft_out = root / "sft"
        common = dict(device=args.device, dtype=dtype, fsdp=True, max_steps=args.steps, log_every=1, save_every=0,
                      eval_split=0.0, seed=0)
        measure("sft --fsdp", lambda: run_sft(SFTConfig(model=str(model), data=str(files["demonstrations"]),
                                                        output=str(sft_out), batch_size=8, max_length=256,
                                                        learning_rate=1e-4, gradient_checkpointing=True,
                                                        **common)),
                sft_out, "loss", args.steps, args.device)
        ppo_out = root / "ppo"
        measure("ppo grpo --fsdp", lambda: run_ppo(PPOConfig(
            policy=str(model), reward=f"{root / 'reward.py'}:longer", prompts=str(files["prompts"]),
            output=str(ppo_out), estimator="grpo", prompts_per_step=8, samples_per_prompt=4, max_new_tokens=32,
            max_length=256, batch_size=32, learning_rate=1e-5, engine="hf", sample_every=0, **common)),
            ppo_out, "score", args.steps, args.device)


if __name__ == "__main__":
    main()
