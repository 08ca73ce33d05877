"""Shared fixtures: tiny models built on the fly (nothing can be downloaded)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("RLHFKIT_NO_PROGRESS", "1")
torch.set_num_threads(2)

REPO = Path(__file__).resolve().parents[1]
HH_DIR = REPO.parent / "shared" / "data" / "hh-rlhf"


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module (``pytestmark = pytest.mark.usefixtures("one_thread")``): the tiny
    models gain nothing from two, and lose a lot when the other core is busy."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def example_files(tmp_path_factory) -> dict[str, Path]:
    """The built-in example's corpus, demonstrations and prompts."""
    from rlhfkit.demo.example import write_example

    return write_example(tmp_path_factory.mktemp("example"))


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, example_files) -> Path:
    """A 2-layer GPT-2 (width 64) with a 512-token BPE tokenizer trained on the example corpus."""
    from rlhfkit.models.tiny import write_tiny_model

    return write_tiny_model(example_files["corpus"], tmp_path_factory.mktemp("tiny-gpt2"), vocab_size=512)


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory, example_files) -> Path:
    from rlhfkit.models.tiny import write_tiny_model

    return write_tiny_model(example_files["corpus"], tmp_path_factory.mktemp("tiny-llama"), arch="llama",
                            vocab_size=512)


@pytest.fixture(scope="session")
def tokenizer(tiny_model_dir):
    from rlhfkit.models import load_tokenizer

    return load_tokenizer(str(tiny_model_dir))


REWARDS = '''
def blue(prompts, responses):
    """One point per occurrence of the word 'blue': the optimum says 'blue' on every token."""
    return [float(r.count("blue")) for r in responses]

def broken(prompts, responses):
    return [float("nan")] * len(responses)

def too_few(prompts, responses):
    return [0.0]
'''


@pytest.fixture(scope="session")
def vllm_families(tmp_path_factory, example_files) -> dict[str, Path]:
    """Tiny Llama and Qwen2 models with head size 32 (vLLM's CPU attention has no kernel for 16)."""
    from rlhfkit.models.tiny import write_tiny_model

    return {arch: write_tiny_model(example_files["corpus"], tmp_path_factory.mktemp(f"vllm-{arch}"), arch=arch,
                                   heads=2, vocab_size=512, seed=1)
            for arch in ("llama", "qwen2")}


@pytest.fixture(scope="session")
def rl_files(tmp_path_factory):
    """64 chat prompts and reward functions for the RL tests: blue (one point per 'blue'), broken (NaN),
    too_few (one score for many answers)."""
    folder = tmp_path_factory.mktemp("rl")
    (folder / "rewards.py").write_text(REWARDS)
    with (folder / "prompts.jsonl").open("w") as handle:
        for i in range(64):
            handle.write(json.dumps({"prompt": [{"role": "user", "content": f"Tell me about number {i}."}]}) + "\n")
    return folder
