"""``rlhfkit demo``: the stages that exist today, end to end, on the built-in example.

tiny tokenizer + model -> SFT on the example's demonstrations -> sample answers before and after.
(The full loop on the embedded "assistant world", with annotators, reward model, PPO and DPO, is a
later issue; this runner grows with it.)
"""

from __future__ import annotations

from pathlib import Path

from rich.table import Table

from rlhfkit.config import SFTConfig
from rlhfkit.console import console, setup_logging
from rlhfkit.data import load_prompts
from rlhfkit.demo.example import write_example
from rlhfkit.models import load_causal_lm, load_tokenizer
from rlhfkit.models.tiny import write_tiny_model
from rlhfkit.rollout.generate import sample_responses
from rlhfkit.train.sft import run_sft


def greedy_answers(model_dir: Path, prompts: list) -> list[str]:
    tokenizer = load_tokenizer(str(model_dir))
    model = load_causal_lm(str(model_dir), tokenizer)
    samples = sample_responses(model, tokenizer, prompts, temperature=0, max_new_tokens=24, show_progress=False)
    return [s[0].text for s in samples]


def run_demo(output: str | Path = "demo-output", quick: bool = False) -> dict[str, Path]:
    """Run the demo into ``output``; returns the paths of what it wrote."""
    setup_logging()
    output = Path(output)
    console.rule("[bold]rlhfkit demo: the stages available so far, on a built-in example")
    files = write_example(output / "data")
    console.print(f"1/3 data: {files['demonstrations']} (chat demonstrations), {files['prompts']}")

    base = write_tiny_model(files["corpus"], output / "tiny-model", layers=2 if quick else 4,
                            width=64 if quick else 128, vocab_size=512)
    console.print(f"2/3 tiny model (random weights, tokenizer trained on the corpus): {base}")

    sft_dir = output / "sft"
    run_sft(SFTConfig(model=str(base), data=str(files["demonstrations"]), output=str(sft_dir),
                      learning_rate=3e-3, max_steps=30 if quick else 300, batch_size=8, max_length=128,
                      warmup_ratio=0.05, eval_split=0.1, save_every=0, log_every=10 if quick else 50,
                      device="cpu"))
    console.print(f"3/3 SFT model: {sft_dir}")

    prompts = [record.prompt for record in load_prompts(files["prompts"])]
    before, after = greedy_answers(base, prompts), greedy_answers(sft_dir, prompts)
    table = Table(title="Greedy answers before and after SFT")
    for column in ("prompt", "random model", "after SFT"):
        table.add_column(column)
    for prompt, old, new in zip(prompts, before, after, strict=True):
        table.add_row(prompt[-1]["content"], repr(old[:40]), new)
    console.print(table)
    console.print(f"demo finished: everything is in {output}")
    return {"sft": sft_dir, "base": base, **files}
