"""Typed stage configs: a YAML file plus command-line overrides of the same fields.

Every stage has a dataclass config whose fields carry their help text. The command line is generated
from the dataclass (``learning_rate`` becomes ``--learning-rate``), so a YAML key and its flag always
agree. Precedence: dataclass default < YAML file < command line. An unknown key or a value of the
wrong type is a :class:`ConfigError` naming the key and where it came from; so is a value outside a
field's declared ``choices``. Reading YAML files and flags into these classes is
:mod:`rlhfkit.config_parse`; ``--recipe`` presets are :mod:`rlhfkit.recipes`.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from rlhfkit.recipes import apply_recipe


class ConfigError(ValueError):
    """A config file or command line that does not fit the stage's config dataclass."""


def option(default: Any, help: str, *, required: bool = False, short: str | None = None,
           choices: tuple[str, ...] | None = None, minimum: float | None = None, greater_than: float | None = None,
           maximum: float | None = None, less_than: float | None = None) -> Any:
    """A dataclass field with its help text (shown by ``--help``). ``choices``: the values allowed;
    ``minimum`` / ``greater_than`` / ``maximum`` / ``less_than``: the range of a number. Each is declared
    once: ``--help`` shows it and any other value is a :class:`ConfigError` when the config is made."""
    bounds = {name: value for name, value in (("minimum", minimum), ("greater_than", greater_than),
                                               ("maximum", maximum), ("less_than", less_than)) if value is not None}
    metadata = {"help": help, "required": required, "short": short, "choices": choices, "bounds": bounds}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=metadata)
    if isinstance(default, dict):
        return field(default_factory=lambda: dict(default), metadata=metadata)
    return field(default=default, metadata=metadata)


def describe_bounds(bounds: dict[str, float]) -> str:
    """``{"minimum": 0, "less_than": 1}`` -> ``">= 0 and < 1"``."""
    signs = {"minimum": ">=", "greater_than": ">", "maximum": "<=", "less_than": "<"}
    return " and ".join(f"{signs[name]} {value:g}" for name, value in bounds.items())


def out_of_bounds(value: Any, bounds: dict[str, float]) -> bool:
    if isinstance(value, float) and not math.isfinite(value):
        return True
    fails = {"minimum": lambda b: value < b, "greater_than": lambda b: value <= b,
             "maximum": lambda b: value > b, "less_than": lambda b: value >= b}
    return any(fails[name](bound) for name, bound in bounds.items())


def check_choices(config: Any) -> None:
    """A :class:`ConfigError` for the first field whose value is not one of its declared ``choices`` or is
    outside its declared range (``None`` is allowed where the field allows it)."""
    for f in dataclasses.fields(config):
        flag = f"--{f.name.replace('_', '-')}"
        allowed = f.metadata.get("choices")
        value = getattr(config, f.name)
        if allowed and value not in allowed:
            raise ConfigError(f"{flag} {value!r}: expected one of {', '.join(allowed)}")
        bounds = f.metadata.get("bounds")
        if bounds and value is not None and not isinstance(value, bool) and out_of_bounds(value, bounds):
            kind = "an integer" if isinstance(value, int) else "a finite number"
            raise ConfigError(f"{flag} {value!r}: expected {kind} {describe_bounds(bounds)}")


@dataclass
class ModelConfig:
    """How to load a model: shared by every stage that loads one."""

    def __post_init__(self) -> None:
        check_choices(self)

    device: str = option("auto", "Device: auto (cuda if available, else cpu), cpu, cuda, cuda:N or mps.")
    dtype: str = option("auto", "Weights dtype: auto (bf16 on GPUs that support it, else fp32), float32, bfloat16, float16.")


@dataclass
class EngineConfig:
    """The sampling engine of a stage that samples answers (rlhfkit.rollout.engines)."""

    def __post_init__(self) -> None:
        check_choices(self)

    engine: str = option("auto", "Sampling engine: hf (rlhfkit's decode loop on the HF model), vllm (a vLLM "
                                 "engine in this process; install with `make install-vllm`), or auto: vllm on a "
                                 "GPU when vLLM is installed, hf otherwise.", choices=("auto", "hf", "vllm"))
    engine_dtype: str = option("auto", "vllm: the engine's weights dtype (auto: as --dtype).",
                               choices=("auto", "float32", "bfloat16", "float16"))
    gpu_memory_utilization: float | None = option(None, "vllm on a GPU: the share of its memory the engine may "
                                                        "take (null: 0.3 beside a trainer, 0.85 alone).",
                                                  greater_than=0, maximum=1)
    tensor_parallel_size: int = option(1, "vllm: GPUs (or CPU sockets) the engine shards the model over.", minimum=1)
    engine_max_model_len: int = option(0, "vllm: the longest prompt + answer the engine holds (0: the model's "
                                          "maximum, or --max-length for trainers).", minimum=0)


@dataclass
class WeightSyncConfig(EngineConfig):
    """How a trainer keeps a separate sampling engine (vllm) on the trained weights."""

    sync_every: int = option(1, "vllm: send the policy's weights to the engine after every N policy updates "
                                "(PPO steps, online DPO rounds); between syncs it samples from older weights.",
                             minimum=1)
    sync_check_every: int = option(1, "vllm: verify every N-th weight sync: the engine greedily answers a few "
                                      "fixed probe prompts, the trainer scores those tokens, and a mismatch "
                                      "stops the run.", minimum=1)
    sync_check_tolerance: float | None = option(None, "vllm: the largest mean |Δ log p| per probe token allowed "
                                                      "after a sync (null: 1e-3 in float32, 0.2 in 16-bit).",
                                                greater_than=0)


@dataclass
class PlacementConfig:
    """Where the roles of an RL run live (rlhfkit.train.placement): here, or as Ray actors on a cluster."""

    def __post_init__(self) -> None:
        check_choices(self)

    placement: str = option("local", "local: the trainer in this process (several under torchrun) with its "
                                      "engine beside it; ray: a trainer group and vLLM engine actors placed by "
                                      "Ray, on a cluster (--ray-address) or a local Ray started for the run.",
                            choices=("local", "ray"))
    ray_address: str | None = option(None, "ray: the cluster to join (the address `ray start --head` prints, or "
                                           "'auto'); null: start a local Ray for the run.")
    trainer_processes: int = option(1, "ray: trainer actors, one process group (gloo on CPUs, NCCL on GPUs; "
                                       "sharded with --fsdp).", minimum=1)
    trainer_packing: str = option("pack", "ray: how the trainer group's processes are placed, as one Ray "
                                          "placement group (a bundle of --trainer-cpus/--trainer-gpus each): pack "
                                          "(fill a node before the next, so NCCL stays within nodes where it can), "
                                          "strict_pack (all on one node, or refuse), spread (one per node where it "
                                          "can), strict_spread (one per node, or refuse).",
                                  choices=("pack", "strict_pack", "spread", "strict_spread"))
    engine_actors: int = option(1, "ray: vLLM engine actors; trainer process r samples with engine r mod N.",
                                minimum=1)
    trainer_cpus: float = option(1.0, "ray: CPUs each trainer actor reserves.", minimum=0)
    trainer_gpus: float = option(0.0, "ray: GPUs each trainer actor reserves (1 on a GPU cluster).", minimum=0)
    engine_cpus: float = option(1.0, "ray: CPUs each engine actor reserves.", minimum=0)
    engine_gpus: float = option(0.0, "ray: GPUs each engine actor reserves (its --tensor-parallel-size on a GPU "
                                     "cluster).", minimum=0)
    reward_actors: int = option(0, "ray, ppo: reward actors that score the answers (a reward-model folder or a "
                                   "Python function); trainer process r asks actor r mod N. 0: each trainer "
                                   "process scores its own answers.", minimum=0)
    reward_cpus: float = option(1.0, "ray: CPUs each reward actor reserves.", minimum=0)
    reward_gpus: float = option(0.0, "ray: GPUs each reward actor reserves.", minimum=0)
    async_steps: int = option(0, "ray: let the engines sample up to S policy versions ahead of the trainer, "
                                 "overlapping rollouts with updates (0: synchronous). The update weighs "
                                 "each token by the truncated importance ratio against the policy that "
                                 "sampled it (--tis-cap, 2 unless set).", minimum=0)


@dataclass
class TrainConfig(ModelConfig):
    """The vocabulary every trainer shares (SFT, RM, PPO, DPO). Defaults suit real models."""

    output: str = option("", "Output folder: checkpoints, metrics.jsonl and the final HF model.", required=True)
    learning_rate: float = option(2e-5, "Peak learning rate (AdamW), reached after warmup, then cosine decay.", greater_than=0)
    epochs: float = option(1.0, "Passes over the training data (fractions allowed); ignored when --max-steps > 0.", greater_than=0)
    max_steps: int = option(0, "Optimizer steps to run; 0 means derive from --epochs.", minimum=0)
    batch_size: int = option(8, "Examples per device per micro-batch. Global batch = batch_size x grad_accum x processes.", minimum=1)
    grad_accum: int = option(1, "Micro-batches accumulated per optimizer step.", minimum=1)
    max_length: int = option(1024, "Maximum tokens per sequence; longer sequences are truncated (and counted).", minimum=2)
    seed: int = option(42, "Random seed: data order, held-out split, initialisation of new weights.", minimum=0)
    save_every: int = option(500, "Save a resumable checkpoint every N optimizer steps (0: only at the end).", minimum=0)
    resume: bool = option(False, "Resume from the newest checkpoint in the output folder.")
    lora_r: int = option(0, "LoRA rank; 0 trains all weights.", minimum=0)
    lora_alpha: int = option(16, "LoRA scaling alpha.", minimum=1)
    lora_dropout: float = option(0.0, "LoRA dropout.", minimum=0, less_than=1)
    lora_target_modules: list[str] = option(["all-linear"], "Modules LoRA adapts (names, or all-linear).")
    warmup_ratio: float = option(0.03, "Fraction of steps spent warming the learning rate up from 0.", minimum=0, less_than=1)
    weight_decay: float = option(0.0, "AdamW weight decay.", minimum=0)
    max_grad_norm: float = option(1.0, "Clip the global gradient norm to this (0: no clipping).", minimum=0)
    gradient_checkpointing: bool = option(False, "Recompute activations in backward to save memory.")
    fsdp: bool = option(False, "Shard parameters, gradients and optimizer states over the processes with torch "
                               "FSDP2, per decoder layer (launch with torchrun; bf16 compute with fp32 master "
                               "weights on GPUs); checkpoints are sharded, the final model a plain HF folder.")
    fsdp_offload: bool = option(False, "--fsdp on a GPU: keep parameters and optimizer states in CPU memory "
                                       "between uses (slower; for models that do not fit otherwise).")
    dist_timeout: int = option(600, "Seconds a process waits for the others in a collective (or, with "
                                    "--placement ray, for an engine actor's answer) before the run fails (a "
                                    "dead or stuck process).", minimum=1)
    log_every: int = option(10, "Log metrics every N optimizer steps.", minimum=1)
    eval_every: int = option(0, "Evaluate on the held-out split every N steps (0: only at the end).", minimum=0)
    eval_split: float = option(0.05, "Fraction of the data held out for evaluation (0: none).", minimum=0, less_than=1)
    eval_data: str | None = option(None, "A separate evaluation file (replaces --eval-split).")
    skip_invalid: bool = option(False, "Skip malformed records (reported with their locations) instead of failing.")
    group_by_length: bool = option(True, "sft, rm, dpo: put examples of similar length in the same batch (less "
                                         "padding, faster); batches still come in a seeded random order.")


@dataclass
class SFTConfig(TrainConfig):
    """Supervised fine-tuning on demonstrations, loss on the answers only."""

    model: str = option("", "HF model id or local folder to fine-tune.", required=True)
    data: str = option("", "Demonstrations file: {prompt, completion} or {messages} records.", required=True)
    packing: bool = option(False, "Pack several examples into each max-length sequence.")


@dataclass
class RMConfig(TrainConfig):
    """Train a reward model (Bradley–Terry) on comparisons and rankings."""

    model: str = option("", "Backbone: an HF causal LM (usually the SFT model), or a reward model to train on.",
                        required=True)
    data: str = option("", "Comparisons: {prompt, chosen, rejected} pairs, {prompt, responses, ranks} rankings "
                           "or HH transcripts.", required=True)
    use_margin: bool = option(True, "Apply the records' optional 'margin' field in the loss.")
    label_smoothing: float = option(0.0, "Treat each label as wrong with this probability (noisy annotators).", minimum=0, less_than=0.5)
    normalize_with: str | None = option(None, "Reference answers ({prompt, response(s)}, e.g. SFT samples from "
                                               "'rlhfkit generate'): store an offset so their mean reward is 0.")


@dataclass
class DPOConfig(TrainConfig, WeightSyncConfig, PlacementConfig):
    """Direct preference optimisation (DPO, IPO, cDPO, robust DPO, SimPO, ORPO, KTO) against a frozen
    reference, without a reward model; or online DPO, which labels its own samples with a reward."""

    model: str = option("", "HF model id or local folder to train (usually the SFT model).", required=True)
    data: str = option("", "Preferences: {prompt, chosen, rejected} pairs, {prompt, responses, ranks} rankings "
                           "(expanded to pairs) or HH transcripts; for --loss kto also unpaired "
                           "{prompt, completion, label: true|false} records. Not used with --online.")
    learning_rate: float = option(5e-7, "Peak learning rate (AdamW); DPO on real models uses ~5e-7.", greater_than=0)
    loss: str = option("dpo", "The loss (rlhfkit.losses.DPO_LOSSES, and kto for unpaired feedback).",
                       choices=("dpo", "ipo", "cdpo", "robust", "rpo", "simpo", "orpo", "kto"))
    beta: float = option(0.1, "β: the KL strength of dpo/cdpo/robust/rpo/kto, τ of ipo, the reward scale of simpo "
                              "(its paper uses 2-2.5).", greater_than=0)
    label_smoothing: float = option(0.0, "ε, the assumed rate of flipped labels (cdpo, robust; robust needs < 0.5).", minimum=0, less_than=0.5)
    simpo_gamma: float = option(0.5, "SimPO's target reward margin γ.", minimum=0)
    orpo_lambda: float = option(0.1, "ORPO's weight λ of the odds-ratio term added to the SFT loss.", minimum=0)
    rpo_alpha: float = option(1.0, "RPO's weight α of the chosen answer's per-token negative log-likelihood added "
                                   "to the DPO loss.", minimum=0)
    kto_desirable_weight: float = option(1.0, "KTO's λ_D, the weight of desirable answers.", greater_than=0)
    kto_undesirable_weight: float = option(1.0, "KTO's λ_U, the weight of undesirable answers (raise it when "
                                                "they are rarer than desirable ones).", greater_than=0)
    reference: str | None = option(None, "Reference model (HF id or folder); null: the --model being trained, "
                                         "as it is before training.")
    precompute_ref: bool = option(True, "Compute the reference log-probs once before training and cache them "
                                        "(the reference is then not kept in memory during training).")
    eval_kl_prompts: int = option(32, "At evaluation, sample answers for this many held-out prompts and "
                                      "report KL(policy ‖ reference) on them (0: off).", minimum=0)
    online: bool = option(False, "Online (iterative) DPO: each round samples answers to --prompts from the current "
                                 "policy, labels best vs worst with --reward, and trains on those pairs.")
    reward: str | None = option(None, "Online: a reward-model folder or 'module:function' / 'file.py:function' "
                                      "taking (prompts, responses) -> scores.")
    prompts: str | None = option(None, "Online: prompts file ({prompt} records).")
    rounds: int = option(3, "Online: rounds of sample, label, train.", minimum=1)
    samples_per_prompt: int = option(4, "Online: answers sampled per prompt (K); the best and the worst make a pair.", minimum=2)
    max_new_tokens: int = option(256, "Length limit of sampled answers (online rounds and the KL evaluation).", minimum=1)
    temperature: float = option(1.0, "Sampling temperature (online rounds and the KL evaluation).", greater_than=0)
    top_p: float = option(1.0, "Nucleus sampling threshold for sampled answers (1: off).", greater_than=0, maximum=1)
    generation_batch_size: int = option(32, "Sequences generated together.", minimum=1)


@dataclass
class PPOConfig(TrainConfig, WeightSyncConfig, PlacementConfig):
    """RL against a reward: PPO (GAE critic) or a critic-free estimator (GRPO, RLOO, REINFORCE++), with a
    KL penalty to the initial policy. One step = one rollout batch, then --ppo-epochs passes over it."""

    policy: str = option("", "The policy to start from (usually the SFT model); also the frozen reference "
                             "unless --reference names another.", required=True)
    reference: str | None = option(None, "The frozen reference of the KL penalty (an HF folder or id reading the "
                                         "policy's tokens); null: --policy. Continue an earlier PPO policy while "
                                         "keeping the KL to SFT with --policy ppo-round-1 --reference sft.")
    reward: str = option("", "A reward-model folder (from 'rlhfkit rm') or a Python function "
                             "'module:function' or 'file.py:function' taking (prompts, responses) -> scores.",
                         required=True)
    prompts: str = option("", "Prompts file: {prompt} records (string or messages).", required=True)
    estimator: str = option("gae", "Advantage estimator (rlhfkit.losses.ADVANTAGE_ESTIMATORS): gae is PPO with a "
                                   "critic; the others are critic-free.", choices=("gae", "grpo", "rloo", "reinforce++"))
    prompts_per_step: int = option(16, "Prompts per rollout batch (over all processes).", minimum=1)
    samples_per_prompt: int = option(0, "Answers sampled per prompt; 0: 1 for gae/reinforce++, 4 for grpo/rloo.", minimum=0)
    ppo_epochs: int = option(4, "Passes of policy (and critic) updates over each rollout batch.", minimum=1)
    num_minibatches: int = option(1, "Optimizer steps per pass: the rollout batch is split into this many.", minimum=1)
    max_new_tokens: int = option(128, "Answer length limit; answers stop earlier at EOS.", minimum=1)
    temperature: float = option(1.0, "Sampling temperature (log-probs are computed at the same temperature).", greater_than=0)
    top_p: float = option(1.0, "Nucleus sampling threshold (1: off).", greater_than=0, maximum=1)
    generation_batch_size: int = option(64, "Sequences generated together.", minimum=1)
    missing_eos_score: float | None = option(None, "Score given instead of the reward to answers that reach "
                                                   "--max-new-tokens without EOS (null: score them normally).")
    beta: float = option(0.05, "KL penalty coefficient β (the initial value with --target-kl).", minimum=0)
    kl_estimator: str = option("k1", "Per-token KL estimator in the reward: k1 (log π - log π_ref) or k3 (never "
                                     "negative). Both are logged.", choices=("k1", "k3"))
    kl_penalty: str = option("reward", "Where β·KL goes: reward (-β·KL per token in the reward, InstructGPT) or loss "
                                       "(β·k3 added to the policy loss, as in GRPO; its gradient is 0 at the reference).",
                                choices=("reward", "loss"))
    target_kl: float | None = option(None, "Adapt β so that the KL per answer approaches this (nats); null: fixed β.", greater_than=0)
    kl_horizon: int = option(10000, "Adaptive KL controller horizon (answers).", minimum=1)
    reward_clip: float = option(10.0, "Clip scores to ±this before use (0: no clipping).", minimum=0)
    whiten_rewards: bool = option(False, "Normalise the scores of each rollout batch to mean 0, std 1.")
    whiten_advantages: bool = option(True, "Normalise advantages (gae and reinforce++) per rollout batch.")
    gamma: float = option(1.0, "Discount factor γ.", minimum=0, maximum=1)
    lam: float = option(0.95, "GAE λ.", minimum=0, maximum=1)
    clip_range: float = option(0.2, "PPO ratio clipping ε (the lower bound 1-ε; also the upper unless "
                                    "--clip-range-high is set).", greater_than=0)
    clip_range_high: float | None = option(None, "Upper clipping ε_high, the bound 1+ε_high (DAPO's clip-higher: "
                                                 "0.28); null: --clip-range.", greater_than=0)
    dual_clip: float | None = option(None, "Dual-clip c > 1 (Ye et al. 2020): the loss of a token with a negative "
                                           "advantage is at most -c·A (e.g. 3); null: off.", greater_than=1)
    policy_loss: str = option("ppo", "The policy objective (rlhfkit.rl_losses.POLICY_LOSSES): ppo (per-token "
                                     "clipped ratio), gspo (GSPO's clipped sequence-level ratio, Zheng et al. 2025) "
                                     "or cispo (REINFORCE weighted by the clipped, undifferentiated ratio; "
                                     "MiniMax-M1).", choices=("ppo", "gspo", "cispo"))
    loss_aggregation: str = option("token-mean", "How per-token losses add up: token-mean (every token weighs "
                                                 "the same: DAPO, TRL's default), sequence-mean (every answer "
                                                 "weighs the same: the original GRPO) or token-sum-norm (divided "
                                                 "by answers x --max-new-tokens: Dr. GRPO).",
                                   choices=("token-mean", "sequence-mean", "token-sum-norm"))
    advantage_scale: str = option("group", "grpo: divide advantages by the std of the group, of the batch, or "
                                           "none (Dr. GRPO).", choices=("group", "batch", "none"))
    dynamic_sampling: bool = option(False, "Group estimators: drop prompts whose answers all score the same (no "
                                           "gradient signal) and sample other prompts until the batch is full "
                                           "(DAPO).")
    max_sampling_rounds: int = option(3, "Dynamic sampling: extra sampling rounds at most per step; a batch still "
                                         "short then is filled with dropped groups.", minimum=0)
    overlong_buffer: float = option(0.0, "DAPO's soft overlong penalty: over the last fraction of --max-new-tokens "
                                         "(DAPO: 0.2), the score falls linearly to -overlong_penalty (0: off).", minimum=0, less_than=1)
    overlong_penalty: float = option(1.0, "The overlong penalty at --max-new-tokens.", minimum=0)
    recipe: str = option("none", "Set the knobs of a published recipe (see the README; flags and YAML keys given "
                                 "explicitly still win): dapo (Yu et al. 2025), dr_grpo (Liu et al. 2025), gspo "
                                 "(Zheng et al. 2025), cispo (MiniMax-M1, 2025).",
                         choices=("none", "dapo", "dr_grpo", "gspo", "cispo"))
    value_clip: float = option(0.2, "Value clipping around the rollout's values.", greater_than=0)
    value_coef: float = option(0.1, "Weight of the value loss (gae).", minimum=0)
    value_learning_rate: float | None = option(None, "Critic learning rate (null: --learning-rate).", greater_than=0)
    entropy_coef: float = option(0.0, "Entropy bonus weight.", minimum=0)
    sample_every: int = option(10, "Print and store (samples.jsonl) a few answers every N steps.", minimum=0)
    tis_cap: float | None = option(None, "vllm: truncated importance sampling (Yao et al. 2025): multiply each "
                                         "token's policy-gradient term by min(π_trainer / π_engine, C) of the "
                                         "sampled token, correcting for the engine's numerical mismatch; C "
                                         "(e.g. 2); null: off.", minimum=1)
    track_reward: str | None = option(None, "A second reward (folder or module:function) that only watches: its "
                                            "mean on each rollout is logged as track_score (e.g. a held-out or "
                                            "gold reward, to see reward over-optimisation). Never optimised.")

    def __post_init__(self) -> None:
        apply_recipe(self)  # rlhfkit.recipes
        super().__post_init__()


@dataclass
class JudgeConfig(ModelConfig, EngineConfig):
    """Label {prompt, responses} records with an AI judge: preference pairs (2 answers) or rankings (K)."""

    judge: str = option("", "The judge: a causal-LM folder or hub id (reads its next-token preference for A or "
                            "B), an OpenAI-compatible URL (http://host:port/v1, or 'openai' for $OPENAI_BASE_URL; "
                            "key from $OPENAI_API_KEY), a reward-model folder, or a Python function "
                            "'module:function' scoring (prompts, responses).", required=True)
    data: str = option("", "Records {prompt, responses: [...]} (e.g. from 'rlhfkit generate').", required=True)
    output: str = option("", "Output JSONL: preference pairs or rankings, with confidence and source.",
                         required=True)
    swap: bool = option(True, "Judge both orders of every pair; orders that disagree make a tie.")
    constitution: str | None = option(None, "Constitution YAML (principles: [{name, text, weight}]); null: the "
                                            "built-in one (helpful, honest, harmless, not over-refusing).")
    principles: str = option("all", "Language-model judges: ask about all principles, or 'sample' one per "
                                    "comparison by weight (Constitutional AI).", choices=("all", "sample"))
    batch_size: int = option(8, "Comparisons (or answers, for reward models) per forward pass.", minimum=1)
    max_length: int = option(1024, "Maximum tokens per scored sequence (reward-model judges).", minimum=2)
    seed: int = option(0, "Seed for sampling principles.", minimum=0)
    judge_model: str | None = option(None, "HTTP judges: the model name to ask for (default: the server's first).")
    concurrency: int = option(8, "HTTP judges: requests in flight at once.", minimum=1)
    timeout: float = option(60.0, "HTTP judges: seconds before a request is abandoned (and retried).", greater_than=0)
    retries: int = option(4, "HTTP judges: retries of a failed request, with exponential backoff.", minimum=0)
    cache: str | None = option(None, "HTTP judges: cache file (SQLite) of answers, so a rerun sends no request; "
                                     "default: OUTPUT.cache.sqlite.")


@dataclass
class ReviseConfig(ModelConfig, EngineConfig):
    """Constitutional AI's supervised stage: critique answers against a principle, revise them, and write
    the revisions as SFT demonstrations."""

    model: str = option("", "The model that critiques and revises (HF id or folder).", required=True)
    data: str = option("", "Records {prompt, response} or {prompt, responses: [...]} to revise.", required=True)
    output: str = option("", "Output JSONL of demonstrations {prompt, completion, critique, principle, original}.",
                         required=True)
    constitution: str | None = option(None, "Constitution YAML; null: the built-in one.")
    max_new_tokens: int = option(256, "Longest critique or revision.", minimum=1)
    temperature: float = option(0.0, "Sampling temperature (0: greedy).", minimum=0)
    batch_size: int = option(16, "Conversations generated together.", minimum=1)
    seed: int = option(0, "Seed for drawing principles and for sampling.", minimum=0)


@dataclass
class ServeConfig(ModelConfig, EngineConfig):
    """Serve a local model behind an OpenAI-compatible chat-completions API (batched)."""

    model: str = option("", "HF model id or local folder to serve.", required=True)
    host: str = option("127.0.0.1", "Address to listen on (0.0.0.0: every interface).")
    port: int = option(8001, "Port to listen on.", minimum=1, maximum=65535)
    max_batch: int = option(32, "Most answers generated together.", minimum=1)
    name: str | None = option(None, "Model name reported by /v1/models (default: --model).")


@dataclass
class ScoreConfig(ModelConfig):
    """Score responses with a reward model."""

    reward: str = option("", "Reward model folder (from 'rlhfkit rm').", required=True)
    data: str = option("", "Records {prompt, response} or {prompt, responses: [...]}.", required=True)
    output: str = option("", "Output JSONL: the records with 'score' or 'scores' added.", required=True)
    batch_size: int = option(16, "Sequences scored together.", minimum=1)
    max_length: int = option(1024, "Maximum tokens per prompt + response (longer ones are truncated).", minimum=2)


@dataclass
class GenerateConfig(ModelConfig, EngineConfig):
    """Sample K answers per prompt."""

    model: str = option("", "HF model id or local folder to sample from.", required=True)
    prompts: str = option("", "Prompts file: {prompt} records (string or messages).", required=True)
    output: str = option("", "Output JSONL: one {prompt, responses} record per prompt.", required=True)
    num_samples: int = option(4, "Answers per prompt (K).", minimum=1)
    max_new_tokens: int = option(256, "Maximum tokens per answer; answers stop earlier at EOS.", minimum=1)
    temperature: float = option(1.0, "Sampling temperature; 0 means greedy decoding.", minimum=0)
    top_p: float = option(1.0, "Nucleus sampling: keep the smallest token set with this much probability.", greater_than=0, maximum=1)
    batch_size: int = option(16, "Sequences generated together (prompts x samples).", minimum=1)
    seed: int = option(42, "Random seed for sampling.", minimum=0)
    skip_invalid: bool = option(False, "Skip malformed prompt records (reported) instead of failing.")


@dataclass
class EvalConfig(ModelConfig, EngineConfig):
    """Compare policy A with policy B on a prompt set: win rate with a 95% interval, KL to a reference,
    answer length, EOS rate, refusal and over-refusal rates."""

    policy: str = option("", "Policy A: HF model folder or hub id (e.g. the PPO or DPO policy).", required=True)
    baseline: str = option("", "Policy B, the one A is compared with (e.g. the SFT model).", required=True)
    prompts: str = option("", "Prompts file: {prompt} records; an optional boolean 'harmful' field enables "
                              "refusal (harmful) and over-refusal (benign) rates.", required=True)
    judge: str = option("", "Who compares the answers: a reward-model folder or 'module:function' scoring "
                            "(prompts, responses) (higher wins); a causal-LM judge folder or hub id, or an "
                            "OpenAI-compatible URL (asked in both orders); or 'people': the pairs go to the "
                            "feedback app (--db, --project), and a later run with the same --output reads "
                            "the labels.", required=True)
    output: str = option("", "Output folder: eval.json, samples.jsonl (and people.json for --judge people).",
                         required=True)
    reference: str | None = option(None, "The model KL is measured against (default: --baseline).")
    samples_per_prompt: int = option(1, "Answers sampled per prompt from each policy (each one compared).", minimum=1)
    max_new_tokens: int = option(64, "Maximum tokens per answer; answers stop earlier at EOS.", minimum=1)
    temperature: float = option(1.0, "Sampling temperature (0: greedy); KL log-probs use the same temperature.", minimum=0)
    top_p: float = option(1.0, "Nucleus sampling threshold (1: off).", greater_than=0, maximum=1)
    seed: int = option(0, "Seed for sampling (both policies are sampled from the same seed) and for the "
                          "A/B order shown to people.", minimum=0)
    batch_size: int = option(16, "Sequences generated, scored or judged together.", minimum=1)
    max_length: int = option(1024, "Maximum tokens per prompt + answer scored by a reward-model judge.", minimum=2)
    db: str | None = option(None, "--judge people: the feedback app's database URL (sqlite:///FILE or postgresql://...).")
    project: str | None = option(None, "--judge people: the name of the pairwise project to create.")
    overlap: int = option(1, "--judge people: annotators per pair.", minimum=1)
    skip_invalid: bool = option(False, "Skip malformed prompt records (reported) instead of failing.")


@dataclass
class LoopConfig(ModelConfig):
    """Iterated RLHF rounds: sample K answers per prompt from the current policy, collect labels (an AI
    judge, people in the feedback app, or semi-AI), retrain the reward model on all labels so far,
    optimise the policy (PPO against that reward model, or DPO on the labels), evaluate it against the
    initial policy; then the next round. Each round writes OUTPUT/round-NNN/; a rerun with the same
    config resumes where the last one stopped. device and dtype go to every stage."""

    policy: str = option("", "The initial policy (HF folder or hub id, usually the SFT model): round 1 starts "
                             "from it and every round is evaluated against it.", required=True)
    prompts: str = option("", "Training prompts ({prompt} records): each round samples answers to "
                              "prompts_per_round of them; PPO's rollouts use all of them.", required=True)
    eval_prompts: str = option("", "Held-out prompts for the evaluation after every round ({prompt} records; an "
                                   "optional boolean 'harmful' enables refusal and over-refusal rates).",
                               required=True)
    output: str = option("", "Output folder: loop.json, round-001/, round-002/, ..., report/.", required=True)
    rounds: int = option(3, "Rounds to run (raise it and rerun to add rounds to a finished loop).", minimum=1)
    samples_per_prompt: int = option(4, "Answers sampled per prompt each round (K): 2 give pairs, more give "
                                        "rankings.", minimum=2)
    prompts_per_round: int = option(0, "Prompts per round, taken in a seeded shuffled order so that rounds see "
                                       "different prompts (0: all prompts every round).", minimum=0)
    labels: str = option("judge", "Who labels the answers: judge (an AI judge, --judge), people (the feedback "
                                  "app; the loop waits until the quota is labelled) or semi-ai (the judge labels "
                                  "everything, people review a share).",
                         choices=("judge", "people", "semi-ai"))
    judge: str | None = option(None, "labels judge or semi-ai: the judge, as 'rlhfkit judge --judge' "
                                     "(module:function, reward-model folder, causal-LM folder, or an "
                                     "OpenAI-compatible URL).")
    db: str | None = option(None, "labels people or semi-ai: the feedback app's database URL (sqlite:///FILE "
                                  "or postgresql://...).")
    project: str | None = option(None, "labels people or semi-ai: the project name prefix; round r uses the "
                                       "project '{project}-round-{r}'.")
    task: str = option("rank", "labels people: the round projects' task: rank (all K answers at once) or "
                               "pairwise (disjoint pairs of answers).", choices=("rank", "pairwise"))
    overlap: int = option(1, "labels people or semi-ai: annotators per item.", minimum=1)
    quota: int = option(0, "labels people or semi-ai: items that must be labelled before the round goes on "
                           "(0: every item of the round).", minimum=0)
    guidelines: str | None = option(None, "labels people or semi-ai: a Markdown file shown beside every task.")
    human_share: float = option(0.2, "labels semi-ai: the share of the items sent to people.", minimum=0, maximum=1)
    random_fraction: float = option(0.25, "labels semi-ai: the part of that share drawn at random (the rest: the "
                                          "judge's least confident items).", minimum=0, maximum=1)
    poll_seconds: float = option(30.0, "labels people or semi-ai: seconds between looks at the database while "
                                       "waiting for labels.", greater_than=0)
    optimizer: str = option("ppo", "How each round optimises the policy: ppo (against the round's reward model) "
                                   "or dpo (on the labels).", choices=("ppo", "dpo"))
    dpo_data: str = option("round", "optimizer dpo: train on this round's labels (round) or on all labels so far "
                                    "(all).", choices=("round", "all"))
    dpo_reference: str = option("initial", "optimizer dpo: the KL reference: the initial policy (initial) or the "
                                           "round's starting policy, the previous round's (previous). PPO's "
                                           "reference is always its starting policy.",
                                choices=("initial", "previous"))
    eval_judge: str | None = option(None, "Who compares each round's policy with the initial one: a reward-model "
                                          "folder or module:function (the higher score wins), or a judge spec "
                                          "(causal-LM folder, URL) asked in both orders; null: --judge.")
    seed: int = option(0, "Seed of the prompt order, of sampling, training and evaluation.", minimum=0)
    engine: str = option("auto", "The sampling engine of every stage that samples (generate, ppo, dpo, eval), as "
                                 "their --engine; a section's own 'engine' wins.", choices=("auto", "hf", "vllm"))
    generate: dict[str, Any] = option({}, "Settings of 'rlhfkit generate' for the round's answers, e.g. "
                                          "{max_new_tokens: 64, temperature: 1.0}; model, prompts, output and "
                                          "num_samples are the loop's.")
    judge_options: dict[str, Any] = option({}, "Settings of 'rlhfkit judge' for the labelling judge, e.g. "
                                               "{swap: true, batch_size: 16}; judge, data and output are the "
                                               "loop's.")
    rm: dict[str, Any] = option({}, "Settings of 'rlhfkit rm', e.g. {max_steps: 200, eval_split: 0.1}; 'model' "
                                    "is the backbone (default: --policy); data, output and resume are the loop's.")
    ppo: dict[str, Any] = option({}, "Settings of 'rlhfkit ppo', e.g. {max_steps: 100, beta: 0.05}; 'prompts' "
                                     "defaults to --prompts; policy, reward, output and resume are the loop's.")
    dpo: dict[str, Any] = option({}, "Settings of 'rlhfkit dpo', e.g. {beta: 0.1, epochs: 2}; 'reference' "
                                     "replaces --dpo-reference; model, data, output and resume are the loop's.")
    eval: dict[str, Any] = option({}, "Settings of 'rlhfkit eval', e.g. {samples_per_prompt: 2, max_new_tokens: "
                                      "64}; policy, baseline, prompts, judge, reference and output are the "
                                      "loop's.")


TINY_ARCHITECTURES = ("gpt2", "llama", "qwen2", "qwen3", "mistral", "gemma2", "gemma3", "phi3", "olmo2", "gpt-neox")
"""The families ``rlhfkit tiny-model --arch`` offers: those ``models/tiny.py`` builds (its ``ARCHITECTURES``
is this tuple). Declared here, beside the option, because config sits below models in the layers."""


@dataclass
class TinyModelConfig:
    """Train a byte-level BPE tokenizer on a corpus and write a small randomly initialised model."""

    def __post_init__(self) -> None:
        check_choices(self)

    corpus: str = option("", "Plain-text corpus to train the tokenizer on (one document per line).", required=True)
    output: str = option("", "Output folder (a normal HF model folder).", required=True)
    arch: str = option("gpt2", "Architecture: a family's transformers config class with random weights.",
                       choices=TINY_ARCHITECTURES)
    layers: int = option(2, "Transformer layers.", minimum=1)
    width: int = option(64, "Hidden size.", minimum=1)
    heads: int = option(4, "Attention heads.", minimum=1)
    vocab_size: int = option(1024, "Tokenizer vocabulary size (including special tokens).", minimum=16)
    max_positions: int = option(512, "Maximum sequence length (position embeddings).", minimum=1)
    seed: int = option(0, "Random seed for the weights.", minimum=0)
