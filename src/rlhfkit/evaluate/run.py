"""``rlhfkit eval``: policy A against policy B on a prompt set.

Loads the two policies (and the reference, by default the baseline; a folder named twice is loaded
once), samples answers from both, has the judge compare them (:func:`evaluate_policies`), and writes

- ``OUTPUT/eval.json``: the win rate of A with its 95% interval, and per policy the KL to the
  reference, mean answer length in tokens, EOS rate, refusal and over-refusal rates and mean judge
  score (when the judge scores answers); the judge's name, counts, wall times;
- ``OUTPUT/samples.jsonl``: one ``{prompt, policy_answer, baseline_answer, outcome, ...}`` per
  comparison (outcome 1: A wins, 0: B wins, 0.5: tie, null: not judged yet);
- ``OUTPUT/report/report.html``: the same numbers as a page with a win-rate plot and sample answers
  (:mod:`rlhfkit.evaluate.report`).

With ``--judge people`` the first run pushes the pairs into a pairwise project of the feedback app
(``--db``, ``--project``) and keeps which side each policy is shown on in ``OUTPUT/people.json``; a
later run with the same ``--output`` loads no model: it reads the labels so far and completes
``eval.json`` and ``samples.jsonl`` (reporting how many pairs are still unlabelled).
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from pathlib import Path

from rich.table import Table

from rlhfkit.config import ConfigError, EvalConfig
from rlhfkit.console import console
from rlhfkit.data import write_jsonl
from rlhfkit.evaluate.compare import evaluate_policies, report_summary
from rlhfkit.evaluate.win_rate import win_rate

PEOPLE = "people"


def load_models(config: EvalConfig) -> dict[str, tuple]:
    """(model, tokenizer) for "policy", "baseline" and "reference"; a path named twice is loaded once."""
    from rlhfkit.models import load_causal_lm, load_tokenizer, resolve_device, resolve_dtype

    device = resolve_device(config.device)
    dtype = resolve_dtype(config.dtype, device)
    loaded: dict[str, tuple] = {}
    paths = {"policy": config.policy, "baseline": config.baseline, "reference": config.reference or config.baseline}
    for path in paths.values():
        if path not in loaded:
            tokenizer = load_tokenizer(path)
            loaded[path] = (load_causal_lm(path, tokenizer, dtype=dtype, device=device).eval(), tokenizer)
    return {role: loaded[path] for role, path in paths.items()}


def load_eval_judge(config: EvalConfig, output: Path) -> tuple[object, str]:
    """The judge of ``config.judge`` and its name: a score function for reward models and Python
    functions, a position-swapped verdict judge for language models (local or HTTP)."""
    from rlhfkit.judge.backends import load_judge
    from rlhfkit.judge.base import PositionSwap
    from rlhfkit.models.reward import is_reward_model_folder
    from rlhfkit.rewards import load_reward_function

    spec = config.judge
    is_url = spec.startswith(("http://", "https://")) or spec == "openai"
    is_folder = Path(spec).is_dir()
    if not is_url and (is_folder and is_reward_model_folder(spec) or not is_folder and ":" in spec):
        score = load_reward_function(spec, device=config.device, dtype=config.dtype, batch_size=config.batch_size,
                                     max_length=config.max_length)
        return score, f"{'rm' if is_folder else 'function'}:{spec}"
    judge = load_judge(spec, device=config.device, dtype=config.dtype, batch_size=config.batch_size,
                       max_length=config.max_length, seed=config.seed,
                       http_options={"cache": str(output / "judge.cache.sqlite")})
    swapped = PositionSwap(judge)
    return swapped, swapped.name


def write_results(output: Path, result: dict) -> None:
    """``eval.json`` (everything but the samples), ``samples.jsonl`` and the HTML report."""
    from rlhfkit.evaluate.report import write_report

    summary = {key: value for key, value in result.items() if key != "samples"}
    (output / "eval.json").write_text(json.dumps(summary, indent=2, ensure_ascii=False) + "\n")
    write_jsonl(output / "samples.jsonl", result["samples"])
    write_report(output / "report", report_summary(result, title=f"eval: {result.get('policy_path', 'policy')} vs "
                                                                  f"{result.get('baseline_path', 'baseline')}"))


def read_results(output: Path) -> dict:
    summary = json.loads((output / "eval.json").read_text())
    with (output / "samples.jsonl").open() as handle:
        summary["samples"] = [json.loads(line) for line in handle if line.strip()]
    return summary


def check_config(config: EvalConfig) -> None:
    """Cross-field rules (each number's range is checked when the config is made)."""
    if config.judge == PEOPLE and not (config.db and config.project):
        raise ConfigError("--judge people needs --db (the feedback app's database) and --project (a new "
                          "pairwise project's name)")


def run_eval(config: EvalConfig) -> Path:
    """Compare ``config.policy`` with ``config.baseline``; returns the output folder (see the module
    docstring)."""
    check_config(config)
    output = Path(config.output)
    if config.judge == PEOPLE and (output / "people.json").is_file():
        return collect_people_labels(config, output)
    from rlhfkit.data import load_prompts

    started = time.perf_counter()
    records = load_prompts(config.prompts, skip_invalid=config.skip_invalid)
    if not records:
        raise ConfigError(f"--prompts {config.prompts}: no prompts")
    output.mkdir(parents=True, exist_ok=True)
    models = load_models(config)
    (policy, tokenizer), (baseline, baseline_tokenizer) = models["policy"], models["baseline"]
    reference, reference_tokenizer = models["reference"]
    same_vocab = baseline_tokenizer.get_vocab() == tokenizer.get_vocab()
    if reference_tokenizer.get_vocab() != tokenizer.get_vocab():
        console.print("[yellow]eval: the reference reads other tokens than the policy; no KL is measured[/]")
        reference = None
    judge, judge_name = (None, PEOPLE) if config.judge == PEOPLE else load_eval_judge(config, output)
    engine_answers = vllm_answers(config, [r.prompt for r in records], tokenizer, baseline_tokenizer)
    result = evaluate_policies(
        policy, baseline, tokenizer, [r.prompt for r in records], judge, reference=reference,
        harmful=[r.harmful for r in records], baseline_tokenizer=None if same_vocab else baseline_tokenizer,
        samples_per_prompt=config.samples_per_prompt, max_new_tokens=config.max_new_tokens,
        temperature=config.temperature, top_p=config.top_p, seed=config.seed, batch_size=config.batch_size,
        judge_name=judge_name, show_progress=True, **engine_answers,
    )
    result = {"created": datetime.now(UTC).isoformat(timespec="seconds"), "policy_path": config.policy,
              "baseline_path": config.baseline, "reference_path": config.reference or config.baseline, **result}
    if config.judge == PEOPLE:
        push_to_people(config, output, result)
    result["seconds"]["total"] = time.perf_counter() - started
    write_results(output, result)
    print_summary(result, output)
    return output


def vllm_answers(config: EvalConfig, prompts: list, tokenizer, baseline_tokenizer) -> dict:
    """With ``--engine vllm``: both policies' answers sampled by vLLM, one engine after the other, seeded
    alike (the HF models still measure the KL); otherwise nothing (``evaluate_policies`` samples)."""
    from rlhfkit.data.chat import encode_prompt
    from rlhfkit.models import resolve_device, resolve_dtype
    from rlhfkit.rollout.engines import resolve_engine, start_vllm
    from rlhfkit.rollout.sampler import SamplingSettings

    device = resolve_device(config.device)
    if resolve_engine(config.engine, device) != "vllm":
        return {}
    settings = SamplingSettings(config.max_new_tokens, config.temperature, config.top_p, config.batch_size,
                                config.seed)
    answers = {}
    for key, path, reader in (("policy_samples", config.policy, tokenizer),
                              ("baseline_samples", config.baseline, baseline_tokenizer)):
        sampler = start_vllm(config, path, reader, resolve_dtype(config.dtype, device), config.seed,
                             beside_trainer=False)
        try:
            per_prompt = sampler.sample(prompts, [encode_prompt(reader, p) for p in prompts],
                                        config.samples_per_prompt, settings, show_progress=True)
        finally:
            sampler.close()
        answers[key] = [s for samples in per_prompt for s in samples]
    return answers


def push_to_people(config: EvalConfig, output: Path, result: dict) -> None:
    from rlhfkit.evaluate.people import open_session, push_pairs

    session, engine = open_session(config.db)
    try:
        mapping = push_pairs(session, config.project, result["samples"], seed=config.seed, overlap=config.overlap)
    except ValueError as err:
        raise ConfigError(f"--project {config.project!r}: {err}") from err
    finally:
        session.close()
        engine.dispose()
    mapping = {"db": config.db, **mapping}
    (output / "people.json").write_text(json.dumps(mapping, indent=2) + "\n")
    result["people"] = {"db": config.db, "project": mapping["project"], "items": len(mapping["items"]),
                        "labelled": 0, "unlabelled": len(mapping["items"])}
    console.print(f"eval: {len(mapping['items'])} pairs are in the feedback project {mapping['project']!r} "
                  f"({config.db}); once people have labelled them, run this command again with the same "
                  f"--output to compute the win rate")


def collect_people_labels(config: EvalConfig, output: Path) -> Path:
    """The second ``--judge people`` run: outcomes from the labels given so far."""
    from rlhfkit.evaluate.people import open_session, people_outcomes

    mapping = json.loads((output / "people.json").read_text())
    if not (output / "eval.json").is_file() or not (output / "samples.jsonl").is_file():
        raise ConfigError(f"{output}: people.json is there but eval.json or samples.jsonl is missing; "
                          "start again in a new --output folder")
    db = config.db or mapping["db"]
    session, engine = open_session(db)
    try:
        outcomes, counts = people_outcomes(session, mapping)
    except ValueError as err:
        raise ConfigError(str(err)) from err
    finally:
        session.close()
        engine.dispose()
    result = read_results(output)
    for row, outcome in zip(result["samples"], outcomes, strict=True):
        row["outcome"] = outcome
    rate = win_rate(o for o in outcomes if o is not None).as_dict()
    result["win_rate"] = rate
    policy_name = next(iter(result["policies"]))
    result["policies"][policy_name]["win_rate"] = rate
    result["people"] = {"db": db, "project": mapping["project"], **counts}
    write_results(output, result)
    print_summary(result, output)
    if counts["unlabelled"]:
        console.print(f"eval: {counts['unlabelled']} of {counts['items']} pairs are still unlabelled; the win rate "
                      f"is over the {counts['labelled']} labelled so far")
    return output


def _percent(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1%}"


def _number(value: float | None, digits: int = 2) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def print_summary(result: dict, output: Path) -> None:
    """The numbers of ``eval.json`` as a table."""
    names = list(result["policies"])
    policies = [result["policies"][name] for name in names]
    table = Table(title=f"eval: {names[0]} vs {names[1]}, judged by {result['judge']}")
    table.add_column("")
    for name in names:
        table.add_column(name, justify="right")
    rate = result["win_rate"]
    if rate is not None and rate["n"]:
        table.add_row("win rate (95% CI)", f"{rate['rate']:.1%} [{rate['low']:.1%}, {rate['high']:.1%}]", "")
        table.add_row("wins / losses / ties", f"{rate['wins']} / {rate['losses']} / {rate['ties']}", "")
    table.add_row("KL to reference (nats)", *(_number(p["kl"]) for p in policies))
    table.add_row("mean length (tokens)", *(_number(p["mean_length"], 1) for p in policies))
    table.add_row("EOS rate", *(_percent(p["eos_rate"]) for p in policies))
    table.add_row("refusal rate (harmful)", *(_percent(p["refusal_rate"]) for p in policies))
    table.add_row("over-refusal rate (benign)", *(_percent(p["over_refusal_rate"]) for p in policies))
    if any(p.get("mean_score") is not None for p in policies):
        table.add_row("mean judge score", *(_number(p.get("mean_score"), 3) for p in policies))
    console.print(table)
    counts = result["counts"]
    console.print(f"eval: {counts['comparisons']} comparisons ({counts['prompts']} prompts x "
                  f"{counts['samples_per_prompt']}); results in {output / 'eval.json'}, "
                  f"{output / 'samples.jsonl'} and {output / 'report' / 'report.html'}")
