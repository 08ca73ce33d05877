"""The loss and logged metrics of a DPO batch, the likelihood watch, and the held-out evaluation.

A sequence's log-prob is the sum of its answer tokens' log-probs, computed only at the positions that
predict answer tokens where transformers supports it (``rollout/logprobs.py``). Implicit rewards are
β·(log π − log π_ref); for the reference-free losses (SimPO, ORPO) β·(mean answer log-prob), as in SimPO.
The KTO reference point is estimated per micro-batch (not gathered over processes).
"""

from __future__ import annotations

import torch

from rlhfkit.config import DPOConfig
from rlhfkit.console import console
from rlhfkit.data.chat import (
    encode_prompt,
)
from rlhfkit.losses import DPO_LOSSES, UNPAIRED_LOSSES, PairLogps, kto_loss, kto_reference_point
from rlhfkit.losses import needs_reference as loss_needs_reference
from rlhfkit.rollout.generate import sample_responses
from rlhfkit.rollout.logprobs import answer_logprob_sums, sequence_logps
from rlhfkit.train.dpo_data import collate_examples, rows
from rlhfkit.train.dpo_reference import Reference, reference_logps
from rlhfkit.train.sharding import eval_share

PAIR_LOSSES = DPO_LOSSES
LOSS_NAMES = (*DPO_LOSSES, *UNPAIRED_LOSSES)


def needs_reference(config: DPOConfig) -> bool:
    return loss_needs_reference(config.loss)



def pair_outputs(model, batch, config: DPOConfig, reference: Reference | None, logit_mask: bool) -> dict:
    """Per-pair loss, implicit rewards, correctness and log-probs of a batch of preference pairs."""
    logps, counts = sequence_logps(model, batch, logit_mask=logit_mask)
    n = len(logps) // 2
    counts = counts.clamp(min=1)
    lp = PairLogps(logps[:n], logps[n:], counts[:n], counts[n:])
    if needs_reference(config):
        ref = reference_logps(batch, reference, logit_mask).to(logps.device)
        lp.reference_chosen, lp.reference_rejected = ref[:n], ref[n:]
        reward_chosen = config.beta * (lp.chosen - lp.reference_chosen).detach()
        reward_rejected = config.beta * (lp.rejected - lp.reference_rejected).detach()
        shift_chosen = ((lp.chosen - lp.reference_chosen) / lp.chosen_tokens).detach()
        shift_rejected = ((lp.rejected - lp.reference_rejected) / lp.rejected_tokens).detach()
    else:
        reward_chosen, reward_rejected = config.beta * lp.chosen_mean.detach(), config.beta * lp.rejected_mean.detach()
        shift_chosen = shift_rejected = None
    return {"loss": PAIR_LOSSES[config.loss](lp, config), "rewards_chosen": reward_chosen,
            "rewards_rejected": reward_rejected, "correct": (reward_chosen > reward_rejected).float(),
            "logps_chosen": lp.chosen.detach(), "logps_rejected": lp.rejected.detach(),
            "per_token_chosen": lp.chosen_mean.detach(), "per_token_rejected": lp.rejected_mean.detach(),
            "shift_chosen": shift_chosen, "shift_rejected": shift_rejected}


def kto_outputs(model, batch, config: DPOConfig, reference: Reference | None, logit_mask: bool) -> dict:
    """Per-answer KTO loss and rewards; the mismatched rows only estimate the reference point (no grad)."""
    n = len(batch["input_ids"]) // 2
    answers, mismatched = rows(batch, slice(0, n)), rows(batch, slice(n, 2 * n))
    logps, counts = sequence_logps(model, answers, logit_mask=logit_mask)
    with torch.no_grad():
        mismatched_logps, _ = sequence_logps(model, mismatched, logit_mask=logit_mask)
    ref = reference_logps(batch, reference, logit_mask).to(logps.device)  # both halves in one pass
    ref_answers, ref_mismatched = ref[:n], ref[n:]
    z0 = kto_reference_point(mismatched_logps, ref_mismatched)
    desirable = batch["desirable"].to(logps.device)
    loss = kto_loss(logps, ref_answers, desirable, z0, config.beta, config.kto_desirable_weight,
                    config.kto_undesirable_weight)
    reward = config.beta * (logps - ref_answers).detach()
    # "correct": the answer's reward is on its label's side of the reference point
    correct = torch.where(desirable, reward > config.beta * z0, reward < config.beta * z0).float()
    return {"loss": loss, "reward": reward, "desirable": desirable, "correct": correct, "kl": z0.expand(n),
            "logps": logps.detach()}


def batch_outputs(model, batch, config, reference, logit_mask) -> dict:
    compute = kto_outputs if config.loss == "kto" else pair_outputs
    return compute(model, batch, config, reference, logit_mask)


def summed_metrics(outputs: dict, loss_name: str) -> dict[str, torch.Tensor]:
    """Sums over the batch of the logged quantities (divided by the global normaliser by the caller)."""
    if loss_name == "kto":
        desirable = outputs["desirable"].float()
        return {"rewards_desirable_sum": (outputs["reward"] * desirable).sum(), "desirable": desirable.sum(),
                "rewards_undesirable_sum": (outputs["reward"] * (1 - desirable)).sum(),
                "accuracy": outputs["correct"].sum(), "kl": outputs["kl"].sum(), "logps": outputs["logps"].sum()}
    return {"rewards_chosen": outputs["rewards_chosen"].sum(), "rewards_rejected": outputs["rewards_rejected"].sum(),
            "reward_margin": (outputs["rewards_chosen"] - outputs["rewards_rejected"]).sum(),
            "accuracy": outputs["correct"].sum(), "logps_chosen": outputs["logps_chosen"].sum(),
            "logps_rejected": outputs["logps_rejected"].sum()}


class LikelihoodWatch:
    """Warns once when the policy's log-probs of chosen AND rejected answers have both fallen from where
    they started (the known DPO failure: probability mass moves to answers that are neither).

    "Where they started" is the reference (log-ratio per token) when there is one, else the first
    steps' per-token log-probs. Judged over windows of ``window`` steps, beyond ``tolerance`` nats/token.
    """

    def __init__(self, window: int = 10, tolerance: float = 0.05, enabled: bool = True):
        self.window, self.tolerance, self.enabled = window, tolerance, enabled
        self.pending: list[tuple[float, float, int]] = []  # this window's (chosen, rejected) sums and count
        self.baseline: tuple[float, float] | None = None
        self.warned = False

    def record(self, outputs: dict) -> None:
        if "per_token_chosen" not in outputs:
            return
        relative = outputs["shift_chosen"] is not None
        chosen = outputs["shift_chosen"] if relative else outputs["per_token_chosen"]
        rejected = outputs["shift_rejected"] if relative else outputs["per_token_rejected"]
        self.pending.append((chosen.sum().item(), rejected.sum().item(), len(chosen)))
        if relative:
            self.baseline = (0.0, 0.0)

    def on_step(self, step: int) -> None:
        if step % self.window or not self.pending:
            return
        count = sum(n for _, _, n in self.pending)
        chosen = sum(c for c, _, _ in self.pending) / count
        rejected = sum(r for _, r, _ in self.pending) / count
        self.pending = []
        if self.baseline is None:
            self.baseline = (chosen, rejected)
            return
        fell_chosen, fell_rejected = chosen - self.baseline[0], rejected - self.baseline[1]
        if fell_chosen < -self.tolerance and fell_rejected < -self.tolerance and not self.warned:
            self.warned = True
            if self.enabled:
                console.print(
                    f"[yellow]dpo: at step {step} the log-probs of both chosen ({fell_chosen:+.3f} nats/token) and "
                    f"rejected ({fell_rejected:+.3f}) answers are below where they started: the policy is moving "
                    "probability to answers that are neither (a known DPO failure). Consider a lower "
                    "--learning-rate, a larger --beta, or --loss orpo (which keeps an SFT term).[/]")


def training_loss(model, batch, normalizer, config, reference, logit_mask, watch: LikelihoodWatch):
    outputs = batch_outputs(model, batch, config, reference, logit_mask)
    watch.record(outputs)
    metrics = {name: value.detach() / normalizer for name, value in summed_metrics(outputs, config.loss).items()}
    return outputs["loss"].sum() / normalizer, metrics



def held_out_metrics(model, examples, config, reference, pad_token_id, logit_mask, accelerator,
                     share_prompt: bool = False) -> dict[str, float]:
    """Loss, preference accuracy and implicit-reward margins over held-out examples (summed, then divided)."""
    mine = eval_share(examples, accelerator)
    totals: dict[str, torch.Tensor] = {}
    for start in range(0, len(mine), config.batch_size):
        batch = collate_examples(mine[start : start + config.batch_size], pad_token_id, share_prompt)
        batch = {k: v.to(accelerator.device) for k, v in batch.items()}
        outputs = batch_outputs(model, batch, config, reference, logit_mask)
        sums = {"loss": outputs["loss"].sum().detach(), "examples": torch.tensor(float(len(outputs["loss"]))),
                **summed_metrics(outputs, config.loss)}
        for name, value in sums.items():
            totals[name] = totals.get(name, 0.0) + value.float().to(accelerator.device)
    names = sorted(totals)
    if not names:
        return {}
    stacked = torch.stack([totals[n] for n in names])
    if accelerator.num_processes > 1:
        stacked = accelerator.reduce(stacked, reduction="sum")
    summed = dict(zip(names, stacked.tolist(), strict=True))
    count = max(summed.pop("examples"), 1.0)
    return {f"eval_{name}": value / count for name, value in summed.items()}


def kl_to_reference(policy, reference: Reference, tokenizer, prompts: list, config: DPOConfig,
                    accelerator) -> dict[str, float]:
    """KL(policy ‖ reference) on ``prompts``: answers sampled from the policy, Σ_t log π - log π_ref over
    their tokens (log-probs at the sampling temperature), averaged over answers."""
    mine = eval_share(prompts, accelerator)
    total = torch.zeros(3, device=accelerator.device)  # [summed KL, answers, answer tokens]
    if mine:
        prompt_ids = [encode_prompt(tokenizer, prompt) for prompt in mine]
        samples = sample_responses(policy, tokenizer, mine, num_samples=1, max_new_tokens=config.max_new_tokens,
                                   temperature=config.temperature, top_p=config.top_p,
                                   batch_size=config.generation_batch_size, show_progress=False,
                                   prompt_ids=prompt_ids)
        answer_ids = [sample.token_ids for [sample] in samples]
        settings = dict(temperature=config.temperature, batch_size=config.batch_size)
        ours = answer_logprob_sums(policy, tokenizer, prompt_ids, answer_ids, **settings)
        with reference.model() as model:  # loaded once (or adapters disabled once) for all answers
            theirs = answer_logprob_sums(model, tokenizer, prompt_ids, answer_ids, **settings)
        total += torch.tensor([sum(ours) - sum(theirs), len(answer_ids), sum(map(len, answer_ids))],
                              device=accelerator.device)
    if accelerator.num_processes > 1:
        total = accelerator.reduce(total, reduction="sum")
    kl, answers, tokens = total.tolist()
    return {"eval_kl": kl / max(answers, 1.0), "eval_answer_tokens": tokens / max(answers, 1.0)}

