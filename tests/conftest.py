"""Shared fixtures: tiny models built on the fly (nothing can be downloaded)."""

from __future__ import annotations

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
