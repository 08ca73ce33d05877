"""The HTML report: every section, plots that exist, summary.json, escaping, missing and non-finite numbers."""

import json
import re

from rlhfkit.evaluate.report import write_report


def win(rate, low, high, n=100):
    wins = round(rate * n)
    return {"rate": rate, "low": low, "high": high, "n": n, "wins": wins, "losses": n - wins, "ties": 0}


def full_summary() -> dict:
    return {
        "title": "rlhfkit demo report",
        "created": "2025-03-03T09:00:00+00:00",
        "stage_seconds": {"pretrain": 31.5, "sft": 12.25, "ppo": 75.0},
        "reward_model": {"accuracy_vs_gold": 0.8125, "accuracy_vs_annotators": 0.7031, "pairs": 256,
                         "calibration": [{"confidence": 0.55, "accuracy": 0.58, "count": 80},
                                         {"confidence": 0.75, "accuracy": 0.74, "count": 100},
                                         {"confidence": 0.95, "accuracy": 0.93, "count": 76}]},
        "annotators": {"pairwise_agreement": 0.7312, "note": "These annotators are simulated.",
                       "agreement": {"measured": 0.7312, "expected": 0.7244, "pairs": 318, "target": 0.73},
                       "annotators": [{"name": "sim-1", "labels": 120, "gold_accuracy": 0.9, "simulated": True},
                                      {"name": "sim-careless", "labels": 118, "gold_accuracy": None,
                                       "simulated": True}]},
        "policies": {
            "sft": {"win_rate": None, "against": None, "kl": 0.0, "mean_length": 21.5, "gold_score": -0.12,
                    "rm_score": 0.0, "refusal_rate": 0.4, "over_refusal_rate": 0.1,
                    "attributes": {"helpful": 0.5, "warm": 0.3, "over_refusal": 0.1}},
            "ppo": {"win_rate": win(0.71, 0.6214, 0.7847), "against": "sft", "kl": 3.4217, "mean_length": 18.25,
                    "gold_score": 0.456, "rm_score": 1.234, "refusal_rate": 0.8, "over_refusal_rate": 0.05,
                    "attributes": {"helpful": 0.8, "warm": 0.7, "over_refusal": 0.05}, "eos_rate": 0.97},
            "dpo": {"win_rate": win(0.68, 0.5836, 0.7622), "against": "sft", "kl": 5.5, "mean_length": 20.0,
                    "gold_score": 0.31, "rm_score": 0.9, "refusal_rate": None, "over_refusal_rate": None,
                    "attributes": {"helpful": 0.75, "warm": 0.6, "over_refusal": 0.08}},
        },
        "over_optimisation": [{"run": run, "step": s, "kl": 0.5 * s, "rm_score": 0.2 * s,
                               "gold_score": 0.1 * s - 0.01 * s * s} for run in ("round 1", "round 2")
                              for s in range(0, 20, 4)],
        "kl_sweep": [{"beta": beta, "kl": 1 / beta, "rm_score": 0.5 / beta ** 0.5, "gold_score": 1 - (beta - 0.3) ** 2,
                      "win_rate": 0.7} for beta in (1.0, 0.3, 0.1)],
        "samples": [{"prompt": [{"role": "user", "content": "How do I make tea?"}],
                     "answers": {"sft": "Boil water.", "ppo": "Warm the pot, then <b>steep</b> for 3 minutes.",
                                 "dpo": "Use a kettle & a cup."}}],
        "rounds": [{"round": 1, "policies": {"ppo": {"win_rate": win(0.62, 0.52, 0.71), "kl": 2.0}},
                    "reward_model": {"accuracy_vs_gold": 0.78, "accuracy_vs_annotators": 0.69}},
                   {"round": 2, "policies": {"ppo": {"win_rate": win(0.71, 0.62, 0.78), "kl": 3.4}},
                    "reward_model": {"accuracy_vs_gold": 0.8125, "accuracy_vs_annotators": 0.7031}}],
        "notes": ["Gold is known here because the world is simulated."],
    }


def images_of(html: str) -> list[str]:
    return re.findall(r'<img src="([^"]+)"', html)


def test_a_full_summary_gives_every_section_plot_and_number(tmp_path):
    summary = full_summary()
    path = write_report(tmp_path / "report", summary)
    assert path == tmp_path / "report" / "report.html"
    html = path.read_text()
    for text in ["rlhfkit demo report", "71.0%", "[62.1%, 78.5%]", "3.42", "81.2%", "70.3%", "73.1%",
                 "These annotators are simulated.", "sim-careless", "simulated", "31.5 s", "1 min 58.8 s",
                 "How do I make tea?", "Gold is known here", "over refusal", "97.0%", "Rounds", "n/a",
                 "318 answer pairs", "72.4%", "KL-penalty sweep", "round 2", "0.300"]:
        assert text in html, text
    images = images_of(html)
    assert sorted(images) == sorted(f"plots/{name}.png" for name in
                                    ["win_rates", "attributes", "over_optimisation", "calibration", "rounds",
                                     "kl_sweep"])
    for image in images:
        assert (path.parent / image).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((path.parent / "summary.json").read_text()) == summary


def test_a_summary_with_only_a_title_works(tmp_path):
    path = write_report(tmp_path, {"title": "Nothing yet"})
    html = path.read_text()
    assert "<h1>Nothing yet</h1>" in html and not images_of(html)
    assert json.loads((tmp_path / "summary.json").read_text()) == {"title": "Nothing yet"}
    assert write_report(tmp_path / "empty", {}).is_file()


def test_text_is_escaped(tmp_path):
    summary = {"title": "<script>alert(1)</script>",
               "samples": [{"prompt": "Say <b>hi</b> & \"bye\"",
                            "answers": {"a<i>": "</td><script>x()</script>", "b": "1 < 2 > 0 'quoted'"}}],
               "notes": ["<img src=x onerror=alert(1)>"]}
    html = write_report(tmp_path, summary).read_text()
    assert "<script>" not in html and "<b>hi</b>" not in html and "<img src=x" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "Say &lt;b&gt;hi&lt;/b&gt; &amp; &#34;bye&#34;" in html
    assert "&lt;/td&gt;&lt;script&gt;x()&lt;/script&gt;" in html and "a&lt;i&gt;" in html
    assert "1 &lt; 2 &gt; 0 &#39;quoted&#39;" in html


def test_non_finite_and_missing_numbers_show_as_n_a(tmp_path):
    nan, inf = float("nan"), float("inf")
    summary = {
        "title": "odd numbers",
        "stage_seconds": {"sft": nan},
        "reward_model": {"accuracy_vs_gold": nan, "calibration": [{"confidence": inf, "accuracy": nan, "count": 3}]},
        "policies": {"ppo": {"win_rate": {"rate": nan, "low": nan, "high": inf, "n": 0, "wins": 0, "losses": 0,
                                          "ties": 0}, "kl": inf, "mean_length": nan, "attributes": {"warm": nan}},
                     "sft": {"win_rate": win(0.6, nan, 0.7), "kl": -inf}},
        "over_optimisation": [{"step": 1, "kl": nan, "rm_score": inf, "gold_score": None},
                              {"step": 2, "kl": 1.0, "rm_score": 0.5, "gold_score": nan}],
        "rounds": [{"round": 1, "policies": {"ppo": {"win_rate": None}}, "reward_model": {}}],
    }
    path = write_report(tmp_path, summary)
    html = path.read_text()
    assert "n/a" in html and "nan" not in html.lower().replace("nanny", "") and "inf" not in html
    for image in images_of(html):
        assert (path.parent / image).is_file()
    written = json.loads((tmp_path / "summary.json").read_text())  # strict JSON: NaN and infinity become null
    assert written["stage_seconds"] == {"sft": None} and written["policies"]["ppo"]["kl"] is None
