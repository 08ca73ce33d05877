"""Evaluation: reward-model accuracy now; win rates, KL and the report in later issues."""
