"""The report: one static HTML page with PNG plots, and ``summary.json`` with every measured number.

:func:`write_report` writes into a folder:

- ``report.html``: self-contained apart from the PNGs (inline CSS, no scripts, nothing fetched); every
  piece of text is HTML-escaped (jinja2 autoescape), so answers may contain anything;
- ``plots/*.png``: drawn with matplotlib's Agg canvas (object API, no pyplot, no global backend);
- ``summary.json``: the summary itself (non-finite numbers written as null, so it is strict JSON).

The summary schema. Every key is optional: a section is rendered when its key is present, and a
missing or non-finite number (None, NaN, inf) is shown as "n/a", never a crash::

    {"title": str, "created": str,
     "stage_seconds": {stage_name: seconds},
     "reward_model": {"accuracy_vs_gold": float, "accuracy_vs_annotators": float, "pairs": int,
                      "calibration": [{"confidence": float, "accuracy": float, "count": int}]},
     "annotators": {"pairwise_agreement": float, "note": str,
                    "agreement": {"measured": float, "expected": float, "pairs": int, "target": float},
                    "annotators": [{"name": str, "labels": int, "gold_accuracy": float | None,
                                    "simulated": bool}]},
     "policies": {name: {"win_rate": {"rate", "low", "high", "n", "wins", "losses", "ties"} | None,
                         "against": str, "kl": float | None, "mean_length": float,
                         "gold_score": float | None, "rm_score": float | None,
                         "refusal_rate": float | None, "over_refusal_rate": float | None,
                         "attributes": {attribute_name: rate}}},
     "over_optimisation": [{"run": str, "step": int, "kl": float, "rm_score": float,
                            "gold_score": float | None}],
     "samples": [{"prompt": str | messages, "answers": {policy_name: str}}],
     "rounds": [{"round": int, "policies": {...as above...}, "reward_model": {...as above...}}],
     "kl_sweep": [{"beta": float, "kl": float, "rm_score": float, "gold_score": float, "win_rate": float}],
     "notes": [str]}

Rates (win rates, accuracies, refusal rates, attribute rates) are fractions in [0, 1], shown as
percentages. A policy's other scalar entries (e.g. ``eos_rate``, ``mean_score`` from
:func:`rlhfkit.evaluate.compare.evaluate_policies`) get columns of their own.

Plots: win rates with their 95% intervals (a line at 50%); the over-optimisation curve (reward-model
and gold score against the PPO step above, KL below, one colour per ``run``: the picture of reward
hacking); attribute rates per policy (grouped bars); the reward model's calibration; win rates and
reward-model accuracy across rounds; a KL-penalty sweep's reward-model and gold scores against KL (Gao et al. 2022's picture).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from jinja2 import Environment
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

PALETTE = ("#e45756", "#4c78a8", "#54a24b", "#f58518", "#b279a2")
KNOWN_POLICY_KEYS = ("win_rate", "against", "kl", "mean_length", "gold_score", "rm_score", "refusal_rate",
                     "over_refusal_rate", "attributes")
RATE_KEYS = {"eos_rate", "refusal_rate", "over_refusal_rate", "accuracy", "accuracy_vs_gold",
             "accuracy_vs_annotators", "pairwise_agreement", "gold_accuracy"}


# ---------------------------------------------------------------------------------------------------
# Numbers


def finite(value) -> float | None:
    """``value`` as a float when it is a finite number, else None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def percent(value) -> str:
    number = finite(value)
    return "n/a" if number is None else f"{100 * number:.1f}%"


def number(value, digits: int = 2) -> str:
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    result = finite(value)
    return "n/a" if result is None else f"{result:.{digits}f}"


def scalar(key: str, value) -> str:
    """A number of unknown kind: a percentage for rates, else a plain number; text as it is."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "yes" if value else "no"
    return percent(value) if key in RATE_KEYS or key.endswith("_rate") else number(value, 3)


def seconds_text(value) -> str:
    result = finite(value)
    if result is None:
        return "n/a"
    return f"{result:.1f} s" if result < 60 else f"{int(result // 60)} min {result % 60:04.1f} s"


def strict_json(value):
    """``value`` with non-finite floats replaced by None (JSON has no NaN or infinity)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): strict_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict_json(v) for v in value]
    return value


def prompt_text(prompt) -> str:
    """A prompt as text: a string as it is, messages as 'role: content' lines."""
    if isinstance(prompt, list):
        return "\n".join(f"{m.get('role', '?')}: {m.get('content', '')}" if isinstance(m, dict) else str(m)
                         for m in prompt)
    return "" if prompt is None else str(prompt)


def win_rate_text(rate: dict | None) -> tuple[str, str]:
    """("71.0%", "[60.2%, 80.1%], n = 100") of a win-rate dict."""
    if not isinstance(rate, dict) or finite(rate.get("rate")) is None:
        return "n/a", ""
    counts = f"n = {rate.get('n', '?')}"
    if all(k in rate for k in ("wins", "losses", "ties")):
        counts += f" ({rate['wins']} W / {rate['losses']} L / {rate['ties']} T)"
    return percent(rate["rate"]), f"[{percent(rate.get('low'))}, {percent(rate.get('high'))}], {counts}"


# ---------------------------------------------------------------------------------------------------
# Plots (each returns None when there is nothing to draw)


def new_figure(width: float = 6.4, height: float = 3.6) -> Figure:
    figure = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def plot_win_rates(policies: dict) -> Figure | None:
    rows = [(name, p["win_rate"], p.get("against")) for name, p in policies.items()
            if isinstance(p, dict) and isinstance(p.get("win_rate"), dict) and finite(p["win_rate"].get("rate")) is not None]
    if not rows:
        return None
    figure = new_figure(max(4.0, 1.4 * len(rows) + 2), 3.6)
    axes = figure.add_subplot()
    rates = [finite(r["rate"]) for _, r, _ in rows]
    below = [max(0.0, rate - (finite(r.get("low")) if finite(r.get("low")) is not None else rate))
             for rate, (_, r, _) in zip(rates, rows, strict=True)]
    above = [max(0.0, (finite(r.get("high")) if finite(r.get("high")) is not None else rate) - rate)
             for rate, (_, r, _) in zip(rates, rows, strict=True)]
    labels = [f"{name}\nvs {against}" if against else name for name, _, against in rows]
    axes.bar(range(len(rows)), rates, yerr=[below, above], capsize=6, color="#4c78a8", width=0.6)
    axes.axhline(0.5, color="#444", linestyle="--", linewidth=1)
    axes.set_xticks(range(len(rows)), labels)
    axes.set_ylim(0, 1)
    axes.set_ylabel("win rate (ties count half)")
    axes.set_title("Win rate with 95% interval")
    return figure


def plot_over_optimisation(points: list) -> Figure | None:
    points = sorted((p for p in points if isinstance(p, dict) and finite(p.get("step")) is not None),
                    key=lambda p: p["step"])
    if not points:
        return None
    runs = list(dict.fromkeys(str(p.get("run") or "") for p in points))
    figure = new_figure(7.0, 5.0)
    top, bottom = figure.subplots(2, 1, sharex=True)
    drawn = False
    for index, run in enumerate(runs):
        color = PALETTE[index % len(PALETTE)]
        mine = [p for p in points if str(p.get("run") or "") == run]
        prefix = f"{run}: " if run else ""
        for key, label, style in (("rm_score", "reward-model score", "-"), ("gold_score", "gold score", "--")):
            xy = [(p["step"], finite(p.get(key))) for p in mine if finite(p.get(key)) is not None]
            if xy:
                top.plot(*zip(*xy, strict=True), linestyle=style, marker="o", markersize=3, color=color,
                         label=prefix + label)
        xy = [(p["step"], finite(p.get("kl"))) for p in mine if finite(p.get("kl")) is not None]
        if xy:
            bottom.plot(*zip(*xy, strict=True), marker="o", markersize=3, color=color, label=run or None)
            drawn = True
    if not drawn and not top.get_legend_handles_labels()[0]:
        return None
    top.set_ylabel("score")
    top.set_title("Over-optimisation: reward-model score (solid) vs gold score (dashed)")
    if top.get_legend_handles_labels()[0]:
        top.legend(fontsize="small")
    bottom.set_ylabel("KL to reference (nats)")
    bottom.set_xlabel("PPO step")
    return figure


def plot_attributes(policies: dict) -> Figure | None:
    named = [(name, p["attributes"]) for name, p in policies.items()
             if isinstance(p, dict) and isinstance(p.get("attributes"), dict) and p["attributes"]]
    attributes = list(dict.fromkeys(a for _, values in named for a in values))
    if not attributes:
        return None
    figure = new_figure(max(5.0, 1.1 * len(attributes) + 2), 3.8)
    axes = figure.add_subplot()
    width = 0.8 / len(named)
    for i, (name, values) in enumerate(named):
        xy = [(j + (i - (len(named) - 1) / 2) * width, finite(values.get(a))) for j, a in enumerate(attributes)
              if finite(values.get(a)) is not None]
        if xy:
            axes.bar(*zip(*xy, strict=True), width=width, label=name)
    if not axes.get_legend_handles_labels()[0]:
        return None
    axes.set_xticks(range(len(attributes)), [a.replace("_", " ") for a in attributes], rotation=20, ha="right")
    axes.set_ylim(0, 1)
    axes.set_ylabel("share of answers")
    axes.set_title("Behaviour per policy")
    axes.legend()
    return figure


def plot_calibration(buckets: list) -> Figure | None:
    points = [(finite(b.get("confidence")), finite(b.get("accuracy")), finite(b.get("count")) or 1.0)
              for b in buckets if isinstance(b, dict)]
    points = [p for p in points if p[0] is not None and p[1] is not None]
    if not points:
        return None
    figure = new_figure(4.6, 4.2)
    axes = figure.add_subplot()
    axes.plot([0.5, 1.0], [0.5, 1.0], color="#888", linestyle="--", linewidth=1, label="perfect calibration")
    confidence, accuracy, counts = zip(*sorted(points), strict=True)
    largest = max(counts)
    axes.plot(confidence, accuracy, color="#4c78a8")
    axes.scatter(confidence, accuracy, s=[20 + 200 * c / largest for c in counts], color="#4c78a8",
                 label="reward model (size: pairs)")
    axes.set_xlim(0.45, 1.02)
    axes.set_ylim(0, 1.02)
    axes.set_xlabel("confidence σ(|Δr|)")
    axes.set_ylabel("accuracy")
    axes.set_title("Reward-model calibration")
    axes.legend(loc="lower right")
    return figure


def plot_rounds(rounds: list) -> Figure | None:
    rounds = sorted((r for r in rounds if isinstance(r, dict)), key=lambda r: finite(r.get("round")) or 0)
    if not rounds:
        return None
    figure = new_figure(7.0, 5.0)
    top, bottom = figure.subplots(2, 1, sharex=True)
    names = list(dict.fromkeys(n for r in rounds for n in (r.get("policies") or {})))
    for name in names:
        xs, ys, below, above = [], [], [], []
        for r in rounds:
            rate = ((r.get("policies") or {}).get(name) or {}).get("win_rate")
            value = finite(rate.get("rate")) if isinstance(rate, dict) else None
            if value is None or finite(r.get("round")) is None:
                continue
            low, high = finite(rate.get("low")), finite(rate.get("high"))
            xs.append(r["round"])
            ys.append(value)
            below.append(max(0.0, value - (low if low is not None else value)))
            above.append(max(0.0, (high if high is not None else value) - value))
        if xs:
            top.errorbar(xs, ys, yerr=[below, above], marker="o", capsize=4, label=name)
    top.axhline(0.5, color="#444", linestyle="--", linewidth=1)
    top.set_ylim(0, 1)
    top.set_ylabel("win rate")
    top.set_title("Across rounds")
    if top.get_legend_handles_labels()[0]:
        top.legend()
    for key, label in (("accuracy_vs_gold", "RM accuracy vs gold"), ("accuracy_vs_annotators", "RM accuracy vs annotators")):
        xy = [(r["round"], finite((r.get("reward_model") or {}).get(key))) for r in rounds
              if finite(r.get("round")) is not None and finite((r.get("reward_model") or {}).get(key)) is not None]
        if xy:
            bottom.plot(*zip(*xy, strict=True), marker="o", label=label)
    bottom.set_ylim(0, 1)
    bottom.set_ylabel("accuracy")
    bottom.set_xlabel("round")
    bottom.xaxis.set_major_locator(MaxNLocator(integer=True))
    if bottom.get_legend_handles_labels()[0]:
        bottom.legend()
    return figure


def plot_kl_sweep(points: list) -> Figure | None:
    points = sorted((p for p in points if isinstance(p, dict) and finite(p.get("kl")) is not None),
                    key=lambda p: p["kl"])
    if not points:
        return None
    figure = new_figure(6.4, 4.2)
    axes = figure.add_subplot()
    for key, label, style, color in (("rm_score", "reward-model score", "-", "#4c78a8"),
                                     ("gold_score", "gold score", "--", "#e45756")):
        xy = [(p["kl"], finite(p.get(key))) for p in points if finite(p.get(key)) is not None]
        if xy:
            axes.plot(*zip(*xy, strict=True), marker="o", linestyle=style, color=color, label=label)
    for p in points:
        if finite(p.get("beta")) is not None and finite(p.get("gold_score")) is not None:
            axes.annotate(f"β={p['beta']:g}", (p["kl"], p["gold_score"]), textcoords="offset points",
                          xytext=(4, -12), fontsize="small")
    if not axes.get_legend_handles_labels()[0]:
        return None
    axes.set_xlabel("KL to the reference (nats per answer)")
    axes.set_ylabel("mean score on held-out prompts")
    axes.set_title("Over-optimisation across KL penalties")
    axes.legend()
    return figure


def save_plot(figure: Figure | None, folder: Path, name: str) -> str | None:
    """Save ``figure`` as ``folder/plots/NAME.png``; returns its path relative to the report."""
    if figure is None:
        return None
    path = folder / "plots" / f"{name}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    return f"plots/{name}.png"


# ---------------------------------------------------------------------------------------------------
# Sections: titles, paragraphs, images and tables of already formatted text


def table(columns: list[str], rows: list[list[str]], caption: str = "", wide: bool = False) -> dict:
    return {"columns": columns, "rows": rows, "caption": caption, "wide": wide}


def policies_section(policies: dict, folder: Path) -> dict:
    extras = list(dict.fromkeys(k for p in policies.values() if isinstance(p, dict) for k, v in p.items()
                                if k not in KNOWN_POLICY_KEYS and (finite(v) is not None or v is None
                                                                   or isinstance(v, str))))
    columns = ["policy", "win rate", "95% interval", "against", "KL to reference (nats)", "mean length (tokens)",
               "gold score", "RM score", "refusal (harmful)", "over-refusal (benign)",
               *[e.replace("_", " ") for e in extras]]
    rows = []
    for name, p in policies.items():
        p = p if isinstance(p, dict) else {}
        rate, interval = win_rate_text(p.get("win_rate"))
        rows.append([str(name), rate, interval, str(p.get("against") or ""), number(p.get("kl")),
                     number(p.get("mean_length"), 1), number(p.get("gold_score"), 3), number(p.get("rm_score"), 3),
                     percent(p.get("refusal_rate")), percent(p.get("over_refusal_rate")),
                     *[scalar(e, p.get(e)) for e in extras]])
    section = {"id": "policies", "title": "Policies", "tables": [table(columns, rows, wide=True)],
               "images": [save_plot(plot_win_rates(policies), folder, "win_rates")]}
    named = [(n, p["attributes"]) for n, p in policies.items() if isinstance(p, dict) and isinstance(p.get("attributes"), dict)]
    attributes = list(dict.fromkeys(a for _, values in named for a in values))
    if attributes:
        section["tables"].append(table(["attribute", *[n for n, _ in named]],
                                       [[a.replace("_", " "), *[percent(values.get(a)) for _, values in named]]
                                        for a in attributes], caption="Behaviour: share of answers with each attribute"))
        section["images"].append(save_plot(plot_attributes(policies), folder, "attributes"))
    return section


def reward_model_section(rm: dict, folder: Path) -> dict:
    labels = {"accuracy_vs_gold": "accuracy against gold", "accuracy_vs_annotators": "accuracy against annotators",
              "pairs": "held-out pairs"}
    rows = [[labels.get(k, k.replace("_", " ")), scalar(k, v)] for k, v in rm.items()
            if k != "calibration" and not isinstance(v, (dict, list))]
    section = {"id": "reward-model", "title": "Reward model", "tables": [table(["measure", "value"], rows)],
               "images": []}
    buckets = [b for b in rm.get("calibration") or [] if isinstance(b, dict)]
    if buckets:
        section["tables"].append(table(["confidence", "accuracy", "pairs"],
                                       [[percent(b.get("confidence")), percent(b.get("accuracy")),
                                         number(b.get("count"))] for b in buckets], caption="Calibration"))
        section["images"].append(save_plot(plot_calibration(buckets), folder, "calibration"))
    return section


def annotators_section(annotators: dict) -> dict:
    section = {"id": "annotators", "title": "Annotators", "tables": [], "images": [], "paragraphs": []}
    agreement = annotators.get("agreement") if isinstance(annotators.get("agreement"), dict) else {}
    if agreement:
        section["paragraphs"].append(
            f"Two careful annotators ordered {percent(agreement.get('measured'))} of "
            f"{number(agreement.get('pairs'), 0)} answer pairs the same way; their noise predicts "
            f"{percent(agreement.get('expected'))} on those pairs (target over all round-1 pairs: "
            f"{percent(agreement.get('target'))}).")
    elif "pairwise_agreement" in annotators:
        section["paragraphs"].append(f"Pairwise agreement between annotators: "
                                     f"{percent(annotators['pairwise_agreement'])}.")
    if annotators.get("note"):
        section["paragraphs"].append(str(annotators["note"]))
    people = [a for a in annotators.get("annotators") or [] if isinstance(a, dict)]
    if people:
        section["tables"].append(table(["annotator", "labels", "gold accuracy", "kind"], [
            [str(a.get("name", "")), number(a.get("labels")), percent(a.get("gold_accuracy")),
             "simulated" if a.get("simulated") else "person"] for a in people]))
    return section


def stages_section(stages: dict) -> dict:
    rows = [[str(name), seconds_text(value)] for name, value in stages.items()]
    total = sum(finite(v) or 0.0 for v in stages.values())
    rows.append(["total", seconds_text(total)])
    return {"id": "stages", "title": "Wall time per stage", "tables": [table(["stage", "wall time"], rows)],
            "images": []}


def over_optimisation_section(points: list, folder: Path) -> dict:
    points = [p for p in points if isinstance(p, dict)]
    rows = [[str(p.get("run") or ""), number(p.get("step")), number(p.get("kl")), number(p.get("rm_score"), 3),
             number(p.get("gold_score"), 3)] for p in points]
    return {"id": "over-optimisation", "title": "Over-optimisation",
            "paragraphs": ["The reward model is a proxy: a policy optimised against it can raise its score while "
                           "the gold score (the preference it stands in for) stalls or falls as the KL to the "
                           "reference grows. That gap is reward hacking."],
            "images": [save_plot(plot_over_optimisation(points), folder, "over_optimisation")],
            "details": table(["run", "PPO step", "KL (nats)", "RM score", "gold score"], rows, caption="The points")}


def kl_sweep_section(points: list, folder: Path) -> dict:
    points = [p for p in points if isinstance(p, dict)]
    rows = [[number(p.get("beta"), 3), number(p.get("kl")), number(p.get("rm_score"), 3),
             number(p.get("gold_score"), 3), percent(p.get("win_rate"))] for p in points]
    return {"id": "kl-sweep", "title": "KL-penalty sweep",
            "paragraphs": ["One policy-optimisation run per KL penalty β, from the same start against the same "
                           "reward model. Weaker penalties buy more reward-model score with more KL; past some KL "
                           "the gold score stops following it (Gao et al. 2022)."],
            "images": [save_plot(plot_kl_sweep(points), folder, "kl_sweep")],
            "tables": [table(["β", "KL (nats)", "RM score", "gold score", "win rate"], rows)]}


def samples_section(samples: list, policy_order: list[str]) -> dict:
    samples = [s for s in samples if isinstance(s, dict)]
    names = list(dict.fromkeys([n for n in policy_order if any(n in (s.get("answers") or {}) for s in samples)]
                               + [n for s in samples for n in (s.get("answers") or {})]))
    rows = [[prompt_text(s.get("prompt")), *[str((s.get("answers") or {}).get(n, "")) for n in names]]
            for s in samples]
    return {"id": "samples", "title": "Sample answers", "tables": [table(["prompt", *names], rows, wide=True)],
            "images": [], "texts": True}


def rounds_section(rounds: list, folder: Path) -> dict:
    rounds = [r for r in rounds if isinstance(r, dict)]
    names = list(dict.fromkeys(n for r in rounds for n in (r.get("policies") or {})))
    rows = []
    for r in rounds:
        policies = r.get("policies") or {}
        rm = r.get("reward_model") or {}
        cells = [number(r.get("round"))]
        for name in names:
            rate, interval = win_rate_text((policies.get(name) or {}).get("win_rate"))
            cells.append(rate if not interval else f"{rate} {interval.split(', n')[0]}")
            cells.append(number((policies.get(name) or {}).get("kl")))
        cells += [percent(rm.get("accuracy_vs_gold")), percent(rm.get("accuracy_vs_annotators"))]
        rows.append(cells)
    columns = ["round", *[c for n in names for c in (f"{n} win rate", f"{n} KL")], "RM accuracy vs gold",
               "RM accuracy vs annotators"]
    return {"id": "rounds", "title": "Rounds", "tables": [table(columns, rows, wide=True)],
            "images": [save_plot(plot_rounds(rounds), folder, "rounds")]}


TEMPLATE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{{ title }}</title>
<style>
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2rem auto; max-width: 72rem;
       padding: 0 1rem; color: #222; line-height: 1.45; }
h1 { margin-bottom: 0.2rem; } .created { color: #666; margin-top: 0; }
nav a { margin-right: 1rem; } section { margin-top: 2.5rem; }
table { border-collapse: collapse; margin: 0.8rem 0; font-size: 0.92rem; }
table.wide { width: 100%; }
th, td { border: 1px solid #ddd; padding: 0.35rem 0.6rem; text-align: left; vertical-align: top; }
th { background: #f3f4f6; } caption { text-align: left; font-weight: 600; padding: 0.3rem 0; }
td.text { white-space: pre-wrap; word-break: break-word; max-width: 30rem; }
.plots { display: flex; flex-wrap: wrap; gap: 1rem; align-items: flex-start; margin: 1rem 0; }
img { max-width: 100%; height: auto; border: 1px solid #eee; }
ul.notes li { margin: 0.3rem 0; }
</style>
</head>
<body>
<h1>{{ title }}</h1>
{% if created %}<p class="created">{{ created }}</p>{% endif %}
{% if sections %}<nav>{% for s in sections %}<a href="#{{ s.id }}">{{ s.title }}</a>{% endfor %}</nav>{% endif %}
{% for s in sections %}
<section id="{{ s.id }}">
<h2>{{ s.title }}</h2>
{% for p in s.paragraphs or [] %}<p>{{ p }}</p>
{% endfor %}
{% for image in s.images if image %}{% if loop.first %}<div class="plots">{% endif %}<img src="{{ image }}" alt="{{ s.title }} plot">{% if loop.last %}</div>{% endif %}
{% endfor %}
{% for t in s.tables or [] %}
<table{% if t.wide %} class="wide"{% endif %}>
{% if t.caption %}<caption>{{ t.caption }}</caption>{% endif %}
<thead><tr>{% for c in t.columns %}<th>{{ c }}</th>{% endfor %}</tr></thead>
<tbody>
{% for row in t.rows %}<tr>{% for cell in row %}<td{% if s.texts %} class="text"{% endif %}>{{ cell }}</td>{% endfor %}</tr>
{% endfor %}
</tbody>
</table>
{% endfor %}
{% if s.details %}
<details><summary>{{ s.details.caption }}</summary>
<table><thead><tr>{% for c in s.details.columns %}<th>{{ c }}</th>{% endfor %}</tr></thead>
<tbody>{% for row in s.details.rows %}<tr>{% for cell in row %}<td>{{ cell }}</td>{% endfor %}</tr>
{% endfor %}</tbody></table>
</details>
{% endif %}
{% for item in s.list or [] %}{% if loop.first %}<ul class="notes">{% endif %}<li>{{ item }}</li>{% if loop.last %}</ul>{% endif %}
{% endfor %}
</section>
{% endfor %}
</body>
</html>
"""


def build_sections(summary: dict, folder: Path) -> list[dict]:
    sections = []
    policies = summary.get("policies")
    if isinstance(policies, dict) and policies:
        sections.append(policies_section(policies, folder))
    if isinstance(summary.get("over_optimisation"), list) and summary["over_optimisation"]:
        sections.append(over_optimisation_section(summary["over_optimisation"], folder))
    if isinstance(summary.get("kl_sweep"), list) and summary["kl_sweep"]:
        sections.append(kl_sweep_section(summary["kl_sweep"], folder))
    if isinstance(summary.get("reward_model"), dict):
        sections.append(reward_model_section(summary["reward_model"], folder))
    if isinstance(summary.get("annotators"), dict):
        sections.append(annotators_section(summary["annotators"]))
    if isinstance(summary.get("rounds"), list) and summary["rounds"]:
        sections.append(rounds_section(summary["rounds"], folder))
    if isinstance(summary.get("samples"), list) and summary["samples"]:
        sections.append(samples_section(summary["samples"], list(policies or {})))
    if isinstance(summary.get("stage_seconds"), dict) and summary["stage_seconds"]:
        sections.append(stages_section(summary["stage_seconds"]))
    if isinstance(summary.get("notes"), list) and summary["notes"]:
        sections.append({"id": "notes", "title": "Notes", "list": [str(n) for n in summary["notes"]]})
    return sections


def write_report(folder: str | Path, summary: dict) -> Path:
    """Write ``report.html``, ``plots/*.png`` and ``summary.json`` into ``folder``; returns the report's
    path. See the module docstring for the summary's schema."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "summary.json").write_text(json.dumps(strict_json(summary), indent=2, ensure_ascii=False) + "\n",
                                         encoding="utf-8")
    sections = build_sections(summary, folder)
    html = Environment(autoescape=True).from_string(TEMPLATE).render(
        title=str(summary.get("title") or "rlhfkit report"), created=str(summary.get("created") or ""),
        sections=sections)
    path = folder / "report.html"
    path.write_text(html, encoding="utf-8")
    return path
