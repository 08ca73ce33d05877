"""``rlhfkit loop``: iterated RLHF rounds, composed from the stages that exist on their own.

One round, top to bottom (:func:`run_round`), each step one existing function:

1. **generate** (:func:`~rlhfkit.rollout.generate.run_generate`): K answers to each of the round's
   prompts from the current policy (round 1: ``--policy``; round r: round r-1's policy).
2. **labels**, from one of three sources:

   * ``judge``: :func:`~rlhfkit.judge.run.run_judge` (pairs for K = 2, rankings for K > 2);
   * ``people``: the answer sets go into the feedback project ``{project}-round-{r}`` (the importing
     services, lexicon flagging included, as ``rlhfkit label import`` does); the loop then waits,
     polling the database every ``--poll-seconds`` with a progress bar, until ``--quota`` items (by
     default all) have all their labels, and exports them (:func:`~rlhfkit.feedback.export.write_exports`);
   * ``semi-ai``: :mod:`rlhfkit.feedback.semi_ai`: the judge labels everything, a share goes to people,
     the loop waits for them as above and merges (human labels win).

3. **rm** (:func:`~rlhfkit.train.rm.run_rm`): a reward model trained from the backbone (``--policy``
   unless ``rm: {model: ...}``) on *all* labels so far (``labels/all.jsonl``, every round's
   ``labels/labels.jsonl`` concatenated). Its held-out accuracy is the "RM accuracy" of the report
   (against the labels, i.e. the annotators or the judge: there is no gold here).
4. **policy**: :func:`~rlhfkit.train.ppo.run_ppo` against the round's reward model, or
   :func:`~rlhfkit.train.dpo.run_dpo` on the round's labels (``--dpo-data all``: all labels so far).
   Round r starts from round r-1's policy.
5. **eval** (:func:`~rlhfkit.evaluate.compare.evaluate_policies`): the round's policy against the
   initial policy on ``--eval-prompts``, judged by ``--eval-judge``, with the KL to the initial policy,
   refusal rates where prompts carry ``harmful``, and the mean score under the round's reward model.

After every round, ``OUTPUT/report/`` (:func:`~rlhfkit.evaluate.report.write_report`) shows all rounds
so far (win rate and RM accuracy across rounds) and the latest round's policies and answers.

**The KL anchor.** ``PPOConfig`` has no reference of its own: PPO's frozen reference is the policy it
starts from, so each PPO round's KL penalty anchors to the *previous round's* policy (the drift from
the initial policy can grow by up to one round's budget per round; the evaluation reports the KL to
the initial policy, so it stays visible). ``DPOConfig.reference`` is separate from the start policy,
so DPO rounds anchor to the *initial* policy by default (``--dpo-reference previous`` for the
previous round's; ``dpo: {reference: ...}`` for any other model).

**Layout and resumption.** ::

    OUTPUT/loop.json                      the config (and input fingerprints) of the run
    OUTPUT/round-001/prompts.jsonl        the round's prompts
                     samples.jsonl        {prompt, responses}: K answers per prompt
                     labels/labels.jsonl  the round's labels (pairs or rankings); labels/all.jsonl: all so far
                     rm/  policy/         the trainers' output folders (HF models, checkpoints, metrics)
                     eval/eval.json       the evaluation (eval/samples.jsonl: the answers compared)
                     round.json           the steps done, with their numbers and seconds
    OUTPUT/report/                        report.html, plots/, summary.json

``round.json`` is the marker: a step counts as done when it is recorded there *and* its artifact
exists (files are written to a temporary name and renamed, so an artifact is never half-written). A
rerun with the same config skips done steps and complete rounds; the interrupted trainer (rm or
policy) is rerun with its own ``resume=True`` when its folder holds a checkpoint (save them with
``rm: {save_every: N}`` / ``ppo: {save_every: N}``). A step that has to run again (its artifact was
deleted) makes the later steps of its round run again too, from scratch. A people round waiting for
labels resumes waiting on the same project. ``loop.json`` refuses a rerun whose config changed in a
way that would make earlier rounds inconsistent (anything but ``rounds``, ``poll_seconds``, ``quota``
and ``device``; the prompt files are compared by content), so raise ``--rounds`` to extend a finished
loop.

Simplified on purpose: one process (the trainers themselves may use accelerate), the stages run one
after another in this process, and the round's prompts are a seeded walk through the prompt file.

The package, one job a module: :mod:`.settings` (checking the config, stage configs from its sections),
:mod:`.state` (the round folders, resumption, atomic writes), :mod:`.steps` (generate, rm, policy,
eval), :mod:`.labels` (judge, people and semi-AI labels), :mod:`.summary` (the report and the table of
rounds) and :mod:`.run` (a round, and the loop).
"""

from rlhfkit.iterate.labels import FeedbackDatabase, project_options, push_round_items, wait_for_quota
from rlhfkit.iterate.run import run_loop, run_round
from rlhfkit.iterate.settings import check_config, section_values, stage_config
from rlhfkit.iterate.state import LoopContext, RoundPaths

__all__ = ["FeedbackDatabase", "LoopContext", "RoundPaths", "check_config", "project_options",
           "push_round_items", "run_loop", "run_round", "section_values", "stage_config", "wait_for_quota"]
