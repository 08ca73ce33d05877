"""Asynchronous rollouts: PPO (grpo) step time with ``--placement ray``, synchronous vs ``--async-steps 1``.

Run by hand (never part of the test suite); needs Ray and vLLM (``make install-vllm``)::

    python benchmarks/bench_async.py [--steps 20 --layers 4 --width 256 --max-new-tokens 96 --ppo-epochs 1]

Three ``rlhfkit ppo`` runs on the same model, prompts and seeds, each a real launch: ``--engine vllm``
in one process (the peer: engine and trainer take turns), and ``--placement ray`` with one trainer
actor and one vLLM engine actor (1 CPU each, a local Ray started for the run), with ``--async-steps``
0 and 1. Step time is read from each run's ``metrics.jsonl`` clock after ``--warmup`` steps; the
waiting share is the step's ``rollout_wait_seconds`` over its time: how long the trainer sat idle
waiting for answers. Ray's start and the actors' start-up are outside the clock.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from rlhfkit.demo.example import write_example
from rlhfkit.models.tiny import write_tiny_model

REWARD = "def blue(prompts, responses):\n    return [float(r.count('blue')) for r in responses]\n"


def timings(output: Path, warmup: int) -> tuple[float, float]:
    """(seconds per step, share of the step spent waiting for rollouts) after ``warmup`` steps."""
    rows = [json.loads(line) for line in (output / "metrics.jsonl").read_text().splitlines()]
    rows = [r for r in rows if "score" in r]
    step = (rows[-1]["seconds"] - rows[warmup - 1]["seconds"]) / (len(rows) - warmup)
    waiting = sum(r["rollout_wait_seconds"] for r in rows[warmup:]) / (len(rows) - warmup)
    return step, waiting / step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=4)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--max-new-tokens", type=int, default=96)
    parser.add_argument("--prompts-per-step", type=int, default=16)
    parser.add_argument("--ppo-epochs", type=int, default=1, help="GRPO's usual single update per rollout")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-async-"))
    files = write_example(work / "example")
    model = write_tiny_model(files["corpus"], work / "model", arch="llama", layers=args.layers, width=args.width,
                             heads=args.width // 32, vocab_size=1024, seed=0)
    (work / "rewards.py").write_text(REWARD)
    with (work / "prompts.jsonl").open("w") as handle:
        for i in range(256):
            handle.write(json.dumps({"prompt": [{"role": "user", "content": f"Tell me about number {i}."}]}) + "\n")
    common = ["--policy", str(model), "--reward", f"{work / 'rewards.py'}:blue", "--prompts", str(work / "prompts.jsonl"),
              "--device", "cpu", "--estimator", "grpo", "--prompts-per-step", str(args.prompts_per_step),
              "--samples-per-prompt", "4", "--max-new-tokens", str(args.max_new_tokens),
              "--ppo-epochs", str(args.ppo_epochs), "--learning-rate", "1e-4",
              "--batch-size", "16", "--log-every", "1", "--eval-split", "0", "--save-every", "0",
              "--sample-every", "0", "--max-steps", str(args.steps), "--max-length", "256", "--engine", "vllm"]
    runs = {"one process, --engine vllm": [],
            "ray, synchronous": ["--placement", "ray"],
            "ray, --async-steps 1": ["--placement", "ray", "--async-steps", "1"]}
    env = {**os.environ, "OMP_NUM_THREADS": "1", "RLHFKIT_NO_PROGRESS": "1"}
    results = {}
    for name, flags in runs.items():
        output = work / name.replace(" ", "_").replace(",", "").replace("-", "")
        subprocess.run([sys.executable, "-m", "rlhfkit", "ppo", *common, *flags, "--output", str(output)], env=env,
                       check=True, stdout=subprocess.DEVNULL)
        results[name] = timings(output, args.warmup)
    peer = results["ray, synchronous"][0]
    print(f"ppo grpo, llama {args.layers}x{args.width}, {args.prompts_per_step} prompts x 4 answers x "
          f"{args.max_new_tokens} tokens, {args.ppo_epochs} update(s) per rollout, {args.steps} steps")
    for name, (step, waiting) in results.items():
        print(f"  {name:28s} {step:6.2f} s/step ({peer / step:4.2f}x ray synchronous), "
              f"waiting for rollouts {waiting:4.0%} of the step")


if __name__ == "__main__":
    main()
