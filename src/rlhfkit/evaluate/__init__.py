"""Evaluation: reward-model accuracy (preferences), win rates with intervals (win_rate), refusal rates
(refusal), KL to a reference (kl), policy against policy (compare, run: ``rlhfkit eval``; people: the
feedback app as judge), and the HTML report (report)."""
