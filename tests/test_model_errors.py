"""Bad models and lengths past the model's positions: one line, a non-zero exit, no traceback; lengths are
capped at what the model reads (issue 24's model-loading and length cases)."""

from __future__ import annotations

import json

import pytest

from rlhfkit.cli import main

COMMANDS = {  # each command's flags besides the model, with files that exist
    "sft": lambda m, f: ["sft", "--model", m, "--data", f["demos"], "--output", f["out"]],
    "rm": lambda m, f: ["rm", "--model", m, "--data", f["pairs"], "--output", f["out"]],
    "dpo": lambda m, f: ["dpo", "--model", m, "--data", f["pairs"], "--output", f["out"]],
    "ppo": lambda m, f: ["ppo", "--policy", m, "--reward", f["reward"], "--prompts", f["prompts"], "--output", f["out"]],
    "generate": lambda m, f: ["generate", "--model", m, "--prompts", f["prompts"], "--output", f["out"] + ".jsonl"],
    "score": lambda m, f: ["score", "--reward", m, "--data", f["answers"], "--output", f["out"] + ".jsonl"],
    "serve": lambda m, f: ["serve", "--model", m],
}


def said(capfd) -> str:
    """What the command printed, with rich's line wrapping undone."""
    return " ".join("".join(capfd.readouterr()).split())


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bad-models")
    long_text = " ".join(f"word{i}" for i in range(700))  # far past a 512-position model

    def jsonl(name, rows):
        (folder / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
        return str(folder / name)

    (folder / "rewards.py").write_text("def length(prompts, responses):\n    return [float(len(r)) for r in responses]\n")
    (folder / "not-a-model").mkdir()
    (folder / "not-a-model" / "notes.txt").write_text("hello")
    return {
        "demos": jsonl("demos.jsonl", [{"prompt": long_text, "completion": " yes"}] * 4
                       + [{"prompt": "Hi", "completion": " Hello."}] * 4),
        "pairs": jsonl("pairs.jsonl", [{"prompt": "Hi", "chosen": " Hello.", "rejected": " No."}] * 4),
        "prompts": jsonl("prompts.jsonl", [{"prompt": long_text}, {"prompt": "Hi"}]),
        "answers": jsonl("answers.jsonl", [{"prompt": long_text, "response": "ok"}]),
        "reward": f"{folder / 'rewards.py'}:length", "out": str(folder / "out"), "folder": folder,
    }


@pytest.mark.parametrize("command", sorted(COMMANDS))
@pytest.mark.parametrize("model", ["a folder that is not a model", "a missing path", "an unreachable hub id"])
def test_a_bad_model_is_one_line_and_a_non_zero_exit(command, model, files, capfd, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # as on a machine without the hub: fail at once, not after retries
    spec = {"a folder that is not a model": str(files["folder"] / "not-a-model"),
            "a missing path": str(files["folder"] / "nowhere"),
            "an unreachable hub id": "someone/not-downloaded-model"}[model]
    with pytest.raises(SystemExit) as stop:
        main(COMMANDS[command](spec, files))
    assert stop.value.code == 2
    captured = capfd.readouterr()
    text = captured.out + captured.err
    assert "Traceback" not in text
    line = next(line for line in text.splitlines() if line.startswith("error:"))
    expected = {"a folder that is not a model": "not a Hugging Face model folder (no config.json)",
                "a missing path": "no such file or folder",
                "an unreachable hub id": "not in the Hugging Face cache"}[model]
    assert spec in line and expected in line


def test_lengths_past_the_models_positions_are_capped_and_counted(tmp_path, tiny_model_dir, files, capfd):
    """The tiny GPT-2 reads 512 positions; --max-length defaults to 1024 and records are ~1,400 tokens."""
    main(["sft", "--model", str(tiny_model_dir), "--data", files["demos"], "--output", str(tmp_path / "sft"),
          "--max-steps", "1", "--batch-size", "8", "--eval-split", "0", "--device", "cpu"])
    text = said(capfd)
    assert "--max-length 1024 is more than" in text and "(512 positions): using 512" in text
    assert json.loads((tmp_path / "sft" / "metrics.jsonl").read_text().splitlines()[0])["loss"] > 0

    out = tmp_path / "generate.jsonl"
    main(["generate", "--model", str(tiny_model_dir), "--prompts", files["prompts"], "--output", str(out),
          "--max-new-tokens", "8", "--num-samples", "1", "--device", "cpu"])
    assert "1 of 2 prompts keep only their last 504 tokens" in said(capfd)
    assert len(out.read_text().splitlines()) == 2

    # a reward model (score, ppo's reward, reward-model judges) reads at most its positions too
    from rlhfkit.models import load_tokenizer
    from rlhfkit.models.reward import load_reward_backbone

    tokenizer = load_tokenizer(str(tiny_model_dir))
    backbone = load_reward_backbone(str(tiny_model_dir), tokenizer, seed=0)
    backbone.save_pretrained(tmp_path / "rm")
    tokenizer.save_pretrained(tmp_path / "rm")
    main(["score", "--reward", str(tmp_path / "rm"), "--data", files["answers"], "--output", str(tmp_path / "s.jsonl"),
          "--device", "cpu"])
    assert "(512 positions): using 512" in said(capfd)
    assert "score" in json.loads((tmp_path / "s.jsonl").read_text())

    with pytest.raises(SystemExit):
        main(["generate", "--model", str(tiny_model_dir), "--prompts", files["prompts"], "--output", str(out),
              "--max-new-tokens", "600", "--device", "cpu"])
    assert "--max-new-tokens 600: " in said(capfd)
