"""``rlhfkit judge``: label {prompt, responses} records with an AI judge.

Every pair of a record's answers is judged (with ``--swap``, in both orders). A record of two answers
becomes a preference pair ``{prompt, chosen, rejected, confidence, source}``; a record of K > 2
answers becomes a ranking ``{prompt, responses, ranks}`` by pairwise wins (a tie counts half; equal
win counts share a rank). Both are what ``rlhfkit rm`` and ``rlhfkit dpo`` read. Records whose
judgements are all ties are left out and counted. Beside the output, ``OUTPUT.verdicts.jsonl`` keeps
every pairwise verdict (probability, winner, confidence, position consistency) and
``OUTPUT.report.json`` the summary, including the length bias: how often the longer answer wins.
"""

from __future__ import annotations

import json
from pathlib import Path

from rlhfkit.config import JudgeConfig
from rlhfkit.console import console
from rlhfkit.data import DataError
from rlhfkit.data.readers import read_rows
from rlhfkit.data.records import parse_text
from rlhfkit.judge.backends import load_judge
from rlhfkit.judge.base import Comparison, PositionSwap, Verdict


def read_answer_sets(path: str) -> list[tuple[object, list[str], str]]:
    """(prompt, answers, location) of each ``{prompt, responses: [...]}`` record (at least 2 answers)."""
    records = []
    for location, raw in read_rows(path):
        prompt = parse_text(raw.get("prompt"), location, "prompt")
        answers = raw.get("responses")
        if not isinstance(answers, list) or len(answers) < 2 or not all(isinstance(a, str) for a in answers):
            raise DataError(f"{location}: field 'responses': expected a list of at least 2 answer strings, "
                            f"got {answers!r}"[:300])
        records.append((prompt, answers, location))
    return records


def ranks_from_wins(wins: list[float]) -> list[int]:
    """Ranks (1 = best) from win counts; equal counts share a rank."""
    distinct = sorted(set(wins), reverse=True)
    return [distinct.index(w) + 1 for w in wins]


def length_bias(rows: list[dict]) -> float | None:
    """Among decisive verdicts between answers of different lengths, the share the longer answer won."""
    decisive = [r for r in rows if r["winner"] != "tie" and r["length_a"] != r["length_b"]]
    if not decisive:
        return None
    longer_won = sum((r["winner"] == "a") == (r["length_a"] > r["length_b"]) for r in decisive)
    return longer_won / len(decisive)


def run_judge(config: JudgeConfig) -> Path:
    output = Path(config.output)
    http_options = {"model": config.judge_model, "concurrency": config.concurrency, "timeout": config.timeout,
                    "retries": config.retries, "cache": config.cache or str(output) + ".cache.sqlite"}
    judge = load_judge(config.judge, constitution=config.constitution, principles=config.principles,
                       device=config.device, dtype=config.dtype, batch_size=config.batch_size,
                       max_length=config.max_length, seed=config.seed, http_options=http_options)
    if config.swap:
        judge = PositionSwap(judge)
    records = read_answer_sets(config.data)
    jobs = [(r, i, j) for r, (_, answers, _) in enumerate(records)
            for i in range(len(answers)) for j in range(i + 1, len(answers))]
    comparisons = [Comparison(records[r][0], records[r][1][i], records[r][1][j]) for r, i, j in jobs]
    verdicts: list[Verdict] = judge.judge(comparisons)

    per_record: dict[int, list[tuple[int, int, Verdict]]] = {}
    rows = []
    for (r, i, j), comparison, verdict in zip(jobs, comparisons, verdicts, strict=True):
        per_record.setdefault(r, []).append((i, j, verdict))
        rows.append({"record": r, "a": i, "b": j, "prob_a": verdict.prob_a, "winner": verdict.winner,
                     "confidence": verdict.confidence, "consistent": verdict.consistent,
                     "length_a": len(comparison.a), "length_b": len(comparison.b), "rationale": verdict.rationale})

    output.parent.mkdir(parents=True, exist_ok=True)
    written = all_ties = 0
    source = f"judge:{judge.name}"
    with output.open("w") as handle:
        for r, (prompt, answers, _) in enumerate(records):
            judged = per_record[r]
            if all(v.winner == "tie" for _, _, v in judged):
                all_ties += 1
                continue
            confidence = sum(v.confidence for _, _, v in judged) / len(judged)
            if len(answers) == 2:
                (_, _, verdict), = judged
                chosen, rejected = (answers[0], answers[1]) if verdict.winner == "a" else (answers[1], answers[0])
                record = {"prompt": prompt, "chosen": chosen, "rejected": rejected}
            else:
                wins = [0.0] * len(answers)
                for i, j, verdict in judged:
                    if verdict.winner == "tie":
                        wins[i] += 0.5
                        wins[j] += 0.5
                    else:
                        wins[i if verdict.winner == "a" else j] += 1.0
                record = {"prompt": prompt, "responses": answers, "ranks": ranks_from_wins(wins)}
            handle.write(json.dumps({**record, "confidence": round(confidence, 6), "source": source}) + "\n")
            written += 1
    with output.with_name(output.name + ".verdicts.jsonl").open("w") as handle:
        handle.writelines(json.dumps(row) + "\n" for row in rows)
    report = {
        "judge": judge.name, "records": len(records), "written": written, "all_ties": all_ties,
        "comparisons": len(rows), "ties": sum(r["winner"] == "tie" for r in rows),
        "inconsistent_positions": sum(not r["consistent"] for r in rows),
        "mean_confidence": sum(r["confidence"] for r in rows) / max(len(rows), 1),
        "longer_answer_wins": length_bias(rows),
    }
    output.with_name(output.name + ".report.json").write_text(json.dumps(report, indent=2))
    bias = report["longer_answer_wins"]
    console.print(
        f"judge ({judge.name}): {len(rows)} comparisons over {len(records)} records; {report['ties']} ties"
        + (f" ({report['inconsistent_positions']} from position disagreement)" if config.swap else "")
        + f"; the longer answer won {'n/a' if bias is None else f'{bias:.0%}'} of decisive verdicts; "
        f"{written} records written to {output} ({all_ties} left out: all ties)"
    )
    return output
