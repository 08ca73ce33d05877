"""Sharded training against data parallelism: step time and per-process memory, 1 vs 2 processes.

Run by hand (never part of the test suite)::

    python benchmarks/bench_sharding.py [--steps 30 --layers 4 --width 256 --batch-size 4]

Four ``rlhfkit sft`` runs on the same data, model and global batch, each a real launch:
1 process plain; 2 processes data-parallel (``accelerate launch``, DDP); 1 and 2 processes with
``--fsdp`` (``torchrun``, FSDP2 on gloo). Step time is read from each run's ``metrics.jsonl`` clock
after the first ``--warmup`` steps. Memory is the bytes of parameters + AdamW states one process holds
(the tensors, not RSS): ``sharding.json`` of the sharded checkpoints; a data-parallel process holds
the whole model (weights and two moments, fp32).

Measured here (2 cores, torch 2.13 CPU, tiny Llama 4 layers x 256, vocabulary 1024, 30 steps): see
the closing note of issue 18; on a CPU the 2-process runs share the same two cores, so their step
time says what the collectives cost, not what a second device gains.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from safetensors.torch import load_file

from rlhfkit.demo.example import write_example
from rlhfkit.models.tiny import write_tiny_model


def launch(kind: str) -> list[str]:
    if kind == "one":
        return [sys.executable, "-m", "rlhfkit"]
    if kind == "ddp":
        return [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "rlhfkit"]
    processes = "1" if kind == "fsdp1" else "2"
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", processes,
            "-m", "rlhfkit"]


def step_seconds(output: Path, warmup: int) -> float:
    rows = [json.loads(line) for line in (output / "metrics.jsonl").read_text().splitlines()]
    clock = [r["seconds"] for r in rows if "loss" in r]
    return (clock[-1] - clock[warmup - 1]) / (len(clock) - warmup)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=4, help="per process in the 2-process runs")
    args = parser.parse_args()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "RLHFKIT_NO_PROGRESS": "1"}
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        files = write_example(root / "example")
        model = write_tiny_model(files["corpus"], root / "model", arch="llama", layers=args.layers,
                                 width=args.width, vocab_size=1024)
        params = sum(t.numel() for t in load_file(model / "model.safetensors").values())
        whole = {"parameters": 4 * params, "optimizer": 8 * params}
        results = {}
        for kind in ("one", "ddp", "fsdp1", "fsdp2"):
            output = root / kind
            processes = 1 if kind in ("one", "fsdp1") else 2
            batch = args.batch_size * (2 // processes)
            command = [*launch(kind), "sft", "--model", str(model), "--data", str(files["demonstrations"]),
                       "--output", str(output), "--batch-size", str(batch), "--max-steps", str(args.steps),
                       "--max-length", "128", "--eval-split", "0", "--log-every", "1", "--save-every", "0",
                       "--device", "cpu", "--learning-rate", "1e-3"]
            if kind.startswith("fsdp"):
                command.append("--fsdp")
            subprocess.run(command, env=env, check=True, capture_output=True)
            if kind.startswith("fsdp"):
                sharding = json.loads(next((output / "checkpoints").glob("step-*/sharding.json")).read_text())
                held = max(sharding["bytes_per_process"], key=lambda b: b["parameters"] + b["optimizer"])
            else:
                held = whole
            results[kind] = (step_seconds(output, args.warmup), held["parameters"] + held["optimizer"])
        print(f"tiny Llama {args.layers} x {args.width}: {params / 1e6:.2f}M parameters, global batch "
              f"{2 * args.batch_size}, {args.steps} steps")
        base_time, base_bytes = results["one"]
        for kind, (seconds, held) in results.items():
            print(f"  {kind:6s} {seconds * 1000:8.1f} ms/step ({seconds / base_time:4.2f}x)   "
                  f"{held / 2**20:7.2f} MiB per process ({held / base_bytes:4.2f}x)")


if __name__ == "__main__":
    main()
