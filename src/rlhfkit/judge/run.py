"""``rlhfkit judge``: label {prompt, responses} records with an AI judge.

Every pair of a record's answers is judged (with ``--swap``, in both orders). A record of two answers
becomes a preference pair ``{prompt, chosen, rejected, confidence, source}``; a record of K > 2
answers becomes a ranking ``{prompt, responses, ranks}`` by pairwise wins (a tie counts half; equal
win counts share a rank). Both are what ``rlhfkit rm`` and ``rlhfkit dpo`` read. Records whose
judgements are all ties are left out and counted. Beside the output, ``OUTPUT.verdicts.jsonl`` keeps
every pairwise verdict (probability, winner, confidence, position consistency) and
``OUTPUT.report.json`` the summary, including the length bias: how often the longer answer wins.

The pieces are reusable (``rlhfkit label semi-ai`` uses them): :func:`load_configured_judge`,
:func:`read_answer_sets`, :func:`judge_answer_sets` -> :class:`JudgedAnswers` (verdicts, ranks, record).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
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


@dataclass
class JudgedAnswers:
    """One record's answers with the judge's verdict on every pair ``(i, j)``, ``i < j``."""

    prompt: object
    answers: list[str]
    location: str
    verdicts: list[tuple[int, int, Verdict]]

    @property
    def all_ties(self) -> bool:
        return all(v.winner == "tie" for _, _, v in self.verdicts)

    @property
    def mean_confidence(self) -> float:
        return sum(v.confidence for _, _, v in self.verdicts) / len(self.verdicts)

    def ranks(self) -> list[int]:
        """Ranks (1 = best) by pairwise wins, a tie counting half; equal wins share a rank."""
        wins = [0.0] * len(self.answers)
        for i, j, verdict in self.verdicts:
            if verdict.winner == "tie":
                wins[i] += 0.5
                wins[j] += 0.5
            else:
                wins[i if verdict.winner == "a" else j] += 1.0
        return ranks_from_wins(wins)

    def record(self) -> dict | None:
        """The training record: a pair (2 answers) or a ranking (K), or None when every verdict is a tie."""
        if self.all_ties:
            return None
        if len(self.answers) == 2:
            (_, _, verdict), = self.verdicts
            first, second = self.answers
            chosen, rejected = (first, second) if verdict.winner == "a" else (second, first)
            return {"prompt": self.prompt, "chosen": chosen, "rejected": rejected}
        return {"prompt": self.prompt, "responses": self.answers, "ranks": self.ranks()}


def load_configured_judge(config: JudgeConfig):
    """The judge ``config`` names, wrapped in :class:`PositionSwap` when ``config.swap``."""
    http_options = {"model": config.judge_model, "concurrency": config.concurrency, "timeout": config.timeout,
                    "retries": config.retries, "cache": config.cache or str(config.output) + ".cache.sqlite"}
    judge = load_judge(config.judge, constitution=config.constitution, principles=config.principles,
                       device=config.device, dtype=config.dtype, batch_size=config.batch_size,
                       max_length=config.max_length, seed=config.seed, http_options=http_options, engine=config)
    return PositionSwap(judge) if config.swap else judge


def judge_answer_sets(judge, records: list[tuple[object, list[str], str]]) -> list[JudgedAnswers]:
    """Every pair of every record's answers judged in one call to ``judge`` (records as
    :func:`read_answer_sets` returns them)."""
    jobs = [(r, i, j) for r, (_, answers, _) in enumerate(records)
            for i in range(len(answers)) for j in range(i + 1, len(answers))]
    comparisons = [Comparison(records[r][0], records[r][1][i], records[r][1][j]) for r, i, j in jobs]
    verdicts: list[Verdict] = judge.judge(comparisons)
    judged = [JudgedAnswers(prompt, answers, location, []) for prompt, answers, location in records]
    for (r, i, j), verdict in zip(jobs, verdicts, strict=True):
        judged[r].verdicts.append((i, j, verdict))
    return judged


def run_judge(config: JudgeConfig) -> Path:
    output = Path(config.output)
    judge = load_configured_judge(config)
    try:
        judged = judge_answer_sets(judge, read_answer_sets(config.data))
    finally:
        close = getattr(getattr(judge, "inner", judge), "close", None)  # an engine the judge started
        if close is not None:
            close()
    rows = [{"record": r, "a": i, "b": j, "prob_a": verdict.prob_a, "winner": verdict.winner,
             "confidence": verdict.confidence, "consistent": verdict.consistent,
             "length_a": len(item.answers[i]), "length_b": len(item.answers[j]), "rationale": verdict.rationale}
            for r, item in enumerate(judged) for i, j, verdict in item.verdicts]

    output.parent.mkdir(parents=True, exist_ok=True)
    written = all_ties = 0
    source = f"judge:{judge.name}"
    with output.open("w") as handle:
        for item in judged:
            record = item.record()
            if record is None:
                all_ties += 1
                continue
            handle.write(json.dumps({**record, "confidence": round(item.mean_confidence, 6), "source": source})
                         + "\n")
            written += 1
    with output.with_name(output.name + ".verdicts.jsonl").open("w") as handle:
        handle.writelines(json.dumps(row) + "\n" for row in rows)
    report = {
        "judge": judge.name, "records": len(judged), "written": written, "all_ties": all_ties,
        "comparisons": len(rows), "ties": sum(r["winner"] == "tie" for r in rows),
        "inconsistent_positions": sum(not r["consistent"] for r in rows),
        "mean_confidence": sum(r["confidence"] for r in rows) / max(len(rows), 1),
        "longer_answer_wins": length_bias(rows),
    }
    output.with_name(output.name + ".report.json").write_text(json.dumps(report, indent=2))
    bias = report["longer_answer_wins"]
    console.print(
        f"judge ({judge.name}): {len(rows)} comparisons over {len(judged)} records; {report['ties']} ties"
        + (f" ({report['inconsistent_positions']} from position disagreement)" if config.swap else "")
        + f"; the longer answer won {'n/a' if bias is None else f'{bias:.0%}'} of decisive verdicts; "
        f"{written} records written to {output} ({all_ties} left out: all ties)"
    )
    return output
