"""A small built-in example: an assistant that answers short factual and everyday requests.

It stands in for the demo's "assistant world" (a later issue) so that ``make demo`` can run the stages
that exist today. Everything is generated from tables below; nothing is downloaded.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

CAPITALS = {
    "France": "Paris", "Japan": "Tokyo", "Italy": "Rome", "Spain": "Madrid", "Germany": "Berlin",
    "Egypt": "Cairo", "Kenya": "Nairobi", "Peru": "Lima", "Canada": "Ottawa", "Norway": "Oslo",
    "Greece": "Athens", "Chile": "Santiago", "Poland": "Warsaw", "India": "New Delhi", "Cuba": "Havana",
    "Ireland": "Dublin",
}
COLOURS = {"grass": "green", "the sky": "blue", "snow": "white", "coal": "black", "a banana": "yellow",
           "a tomato": "red", "an orange": "orange", "a plum": "purple"}
GREETINGS = ["Hello!", "Hi there!", "Good morning!", "Hey!"]


def demonstrations() -> list[dict]:
    """Chat demonstrations: {"messages": [...]} with one or two assistant turns."""
    demos = []
    for country, city in CAPITALS.items():
        demos.append({"messages": [
            {"role": "user", "content": f"What is the capital of {country}?"},
            {"role": "assistant", "content": f"The capital of {country} is {city}."},
        ]})
    for thing, colour in COLOURS.items():
        demos.append({"messages": [
            {"role": "user", "content": f"What colour is {thing}?"},
            {"role": "assistant", "content": f"{thing[0].upper() + thing[1:]} is {colour}."},
        ]})
    for greeting in GREETINGS:
        country = random.Random(greeting).choice(sorted(CAPITALS))
        demos.append({"messages": [
            {"role": "user", "content": greeting},
            {"role": "assistant", "content": "Hello! How can I help you today?"},
            {"role": "user", "content": f"What is the capital of {country}?"},
            {"role": "assistant", "content": f"The capital of {country} is {CAPITALS[country]}."},
        ]})
    return demos


def corpus_lines() -> list[str]:
    """Text to train the tokenizer on: every message, plus the chat template's role tags."""
    lines = ["<|user|>", "<|assistant|>", "<|system|>"]
    for demo in demonstrations():
        lines.extend(m["content"] for m in demo["messages"])
    return lines


def write_example(folder: str | Path) -> dict[str, Path]:
    """Write corpus.txt, demonstrations.jsonl and prompts.jsonl into ``folder``; return their paths."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = {"corpus": folder / "corpus.txt", "demonstrations": folder / "demonstrations.jsonl",
             "prompts": folder / "prompts.jsonl"}
    paths["corpus"].write_text("\n".join(corpus_lines()) + "\n")
    with paths["demonstrations"].open("w") as handle:
        for demo in demonstrations():
            handle.write(json.dumps(demo) + "\n")
    with paths["prompts"].open("w") as handle:
        for country in ["France", "Kenya", "Norway"]:
            handle.write(json.dumps({"prompt": [{"role": "user", "content": f"What is the capital of {country}?"}]}) + "\n")
        handle.write(json.dumps({"prompt": [{"role": "user", "content": "What colour is snow?"}]}) + "\n")
    return paths
