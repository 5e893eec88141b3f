"""Online RL: sample G completions per prompt, verify them, and update the policy (DESIGN.md's loop).

One step reads top to bottom in `Trainer.step`:

1. prompts     B examples from the task's train split (a shuffled pass, or the curriculum's draw by level,
               data/curriculum.py; the sampler's state is checkpointed)
2. rollout     `engine.generate(prompts, G)`: token ids, masks, sampler log-probs, finish reasons
3. reward      the task's reward components, weighted and summed ([B, G]); DAPO overlong shaping;
               dynamic sampling refills the batch with prompts whose groups are not all equal (the
               curriculum's online filter: whose pass rate is not 0 or 1)
4. advantage   the estimator `advantage=` names, from the registry in `algos/estimators.py`: one typed
               input (rewards, group sizes, masks, log-probs, values, levels) -> [N, T] advantages
5. log-probs   old (no grad, trainer numerics) and reference (frozen initial model, or the LoRA
               model with adapters disabled) in micro-batches
6. update      `epochs` optimizer steps over the same batch: clipped surrogate (or KL-penalty PPO),
               + KL to the reference (in the loss or already in the reward) - entropy bonus
               (+ clipped value loss), each reduced with the named `agg_mode` over the whole step
7. observe     metrics, monitors, samples, checkpoints, held-out evaluation
8. sync        `engine.update_weights(model)` (a no-op for the in-process sampler)

Variants are presets of the same step (`reasonloop <preset>` = `reasonloop train` with the preset's
keys applied first; your own keys override them), named honestly in `recipes/presets.py` and docs/rl.md:

- grpo (default): group-normalised advantages (mean and std per group), token-level PPO clip 0.2,
  k3 KL to the reference in the loss (beta 0.04), per-sequence token mean then mean over sequences
  (DeepSeekMath, Shao et al. 2024). One update epoch, so the ratio is 1 and clipping is inert unless
  `epochs` > 1.
- dapo: clip-higher (0.2/0.28), token mean over the step, dynamic sampling, soft overlong penalty,
  truncated samples masked, no KL (Yu et al. 2025).
- dr_grpo: no std scaling, token sums normalised by a fixed max length (Liu et al. 2025).
- rloo: leave-one-out baseline (Ahmadian et al. 2024), KL folded into the reward.
- reinforce: batch-mean baseline. reinforce_pp: token-level KL-in-reward, global whitening (Hu 2025).
- ppo: a value head, GAE (gamma 1, lambda 0.95), whitened advantages, clipped value loss, k1 KL in
  the reward, two epochs (Schulman et al. 2017; Ouyang et al. 2022).
- gspo: sequence-level importance ratio with tight clipping (Zheng et al. 2025).

Process rewards (`process_reward=`, docs/rl.md "Process rewards") add token-level credit to any of them:
`prm=<dir>` (an explicit PRM scores every step; its score sits on the step's last token) or
`process_reward=prime` (PRIME's implicit PRM, a copy of the initial policy trained online on the verified
outcomes; every token gets beta * log(pi_phi/pi_ref)). The sequence estimators add DeepSeekMath's
process-supervision advantage to their outcome advantage; `advantage=prime` is PRIME's leave-one-out form.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from reasonloop.algos import advantages as adv_lib
from reasonloop.algos.advantages import dynamic_sampling_keep
from reasonloop.algos.aggregation import AGGREGATION_MODES, aggregate, masked_mean
from reasonloop.algos.covariance import (
    COV_CONTROLS, clip_cov_weights, kl_cov_penalty, kl_cov_select, token_covariance)
from reasonloop.algos.estimators import (
    ADVANTAGE_ESTIMATORS,
    TOKEN_LEVEL,
    AdvantageInput,
    AdvantageOutput,
    register_advantage,
)
from reasonloop.algos.kl import AdaptiveKLController, FixedKLController, kl_estimate
from reasonloop.algos.process import implicit_process_rewards, implicit_prm_loss
from reasonloop.algos.policy_loss import PPOPenaltyController, ppo_clip_loss, ppo_penalty_loss, tis_weights
from reasonloop.algos.value import clipped_value_loss
from reasonloop.config import ConfigError, require, require_choice
from reasonloop.data.records import Example, RolloutBatch, TokenBatch, pad_right
from reasonloop.data.curriculum import CurriculumConfig, CurriculumSampler, group_pass_rate, make_prompt_sampler
from reasonloop.distributed import DistributedConfig, MemoryConfig, make_placement
from reasonloop.tasks import make_task
from reasonloop.models.loading import ModelConfig, drop_long_prompts, is_shipped, load_policy, render_prompt
from reasonloop.models.value_head import Critic
from reasonloop.recipes.presets import preset_of
from reasonloop.rewards.core import RewardResult, RewardSpec, compute_rewards, load_function
from reasonloop.rewards.process import DEFAULT_DELIMITERS, step_spans
from reasonloop.rewards.step_tokens import ArithmeticStepOracle, place_step_scores
from reasonloop.rewards.reward_model import RewardModel
from reasonloop.rollout.engine import RolloutConfig, RolloutEngine, SamplingConfig, build_engine
from reasonloop.rollout.multiturn import AgentConfig, build_agent_engine
from reasonloop.rollout import ternary
from reasonloop.train.checkpoint import latest_checkpoint
from reasonloop.train.run import written_by
from reasonloop.train.evaluation import evaluate, flat_metrics, format_table
from reasonloop.models.forward import ForwardConfig, policy_forward
from reasonloop.train.monitors import CRITICAL, MonitorConfig, Monitors
from reasonloop.train.optim import OptimConfig, build_optimizer, clip_and_step
from reasonloop.train.paired import Difference, format_differences, paired_differences, per_problem, read_rows
from reasonloop.train.run import Run, progress, set_seed, set_threads
from reasonloop.train.runconfig import CheckpointedRunConfig
from reasonloop.train.selection import BestWeights, problem_values, selection_terms, validation_set

log = logging.getLogger(__name__)

HELD_OUT_BEFORE, HELD_OUT_AFTER = "held_out_before.jsonl", "held_out_after.jsonl"  # the tables' sample rows
HELD_OUT_LAST = "held_out_last.jsonl"  # the last step's rows, when keep_best kept another step's model
FROM_SFT = Path(__file__).resolve().parent.parent / "configs" / "rl_from_sft.yaml"  # setting=from_sft's keys
SETTINGS = ("auto", "defaults", "from_sft")


# estimators whose advantage is relative to the other samples of the same prompt: zero when they all agree
GROUP_RELATIVE = ("grpo", "dr_grpo", "rloo", "passk", "grpo_difficulty", "grpo_hierarchical", "prime")
PROCESS_REWARDS = ("none", "prm", "prime")


@dataclass
class Config(CheckpointedRunConfig):
    model: ModelConfig = field(default_factory=ModelConfig)
    """The policy (and, frozen, the reference)."""
    task: str = "arithmetic"
    """Task name; NAME:ARG passes an argument (arithmetic:2-3 trains on levels 2 and 3)."""
    setting: str = "auto"
    """`defaults`: the values listed here, tuned on the embedded task from its shipped model. `from_sft`:
    configs/rl_from_sft.yaml read before your files and keys (yours win): optim.lr 5e-5, prompts_per_step 32,
    eval_k 8, val_n 300, val_every 20, keep_best pass@1_greedy+pass@k — the one setting measured to lift greedy
    pass@1 without lowering pass@8 from a user's SFT model on five reasoning-gym tasks, where the defaults lose
    pass@8 (docs/r1.md, "Defaults that travel"). `auto`: from_sft when model.name is a model `reasonloop sft` wrote
    (a run's model directory) and the command is `train` or one of its presets (not the frameworks, which evaluate
    in their own way); defaults otherwise (the shipped models, hub ids, other commands' models). Applied when the
    config is read from the command line or files; r1's stages read `defaults` unless they set it; a config built
    in code keeps the values it is given."""
    data_dir: str = ""
    """Data location for file-backed tasks."""
    train_pool: int = 5000
    """Distinct training prompts drawn from the task's train split."""
    steps: int = 100
    """RL steps (each: one rollout batch, `epochs` optimizer steps)."""
    prompts_per_step: int = 16
    """B: prompts per step."""
    group_size: int = 8
    """G: samples per prompt."""
    sampling: SamplingConfig = field(default_factory=lambda: SamplingConfig(temperature=1.0, max_new_tokens=64))
    """Rollout sampling; the trainer scores tokens at the same temperature."""
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    """The engine that generates rollouts."""
    agent: AgentConfig = field(default_factory=AgentConfig)
    """Multi-turn episodes (agent.env=tools: the policy calls tools mid-rollout; observations are not trained on;
    docs/agents.md)."""
    forward: ForwardConfig = field(default_factory=ForwardConfig)
    """Switches of the training forward pass (speed only; same maths)."""
    # -- advantage ------------------------------------------------------------------------------
    advantage: str = "grpo"
    """Estimator, by its registered name (`algos/estimators.py`): grpo | dr_grpo | grpo_difficulty (harder levels
    weigh more) | grpo_hierarchical (std per level) | rloo | reinforce | reinforce_pp | gae (PPO with a critic);
    passk (the pass@k objective, docs/algorithms.md); or 'module:function' for your own."""
    positive_weight: float = 1.0
    """Scale of the positive advantages, after the estimator (negative ones are kept): 0.1 is W-REINFORCE, 0 trains
    on failures only (NSR; Zhu et al. 2025), to sharpen less and keep pass@k (docs/curriculum.md)."""
    pass_k: int = 4
    """advantage=passk: the k of the max@k (pass@k) objective, clamped to group_size - 1; 1 is RLOO."""
    std_mode: str = "group"
    """GRPO std scaling: group | batch | none (none = Dr.GRPO)."""
    reinforce_baseline: str = "batch_mean"
    """REINFORCE baseline: batch_mean | moving_average."""
    reward_norm: str = "none"
    """Reward normalisation before the advantage: none | running (mean/std) | rank (within group)."""
    adaptive_group: bool = False
    """Grow G with a prompt's difficulty (estimated from its level's running pass rate), between min and max."""
    group_size_min: int = 4
    """Smallest G with adaptive_group."""
    group_size_max: int = 16
    """Largest G with adaptive_group."""
    gamma: float = 1.0
    """Discount for token-level returns (gae, reinforce_pp)."""
    lam: float = 0.95
    """GAE lambda."""
    # -- policy loss -----------------------------------------------------------------------------
    loss: str = "clip"
    """Policy loss: clip (PPO clipped surrogate) | penalty (adaptive KL penalty to the old policy)."""
    clip_low: float = 0.2
    """Lower clip: the ratio is clipped at 1 - clip_low."""
    clip_high: float = 0.2
    """Upper clip: 1 + clip_high (DAPO's clip-higher uses 0.28)."""
    dual_clip: float = 0.0
    """Dual-clip constant c > 1 bounding the loss of negative-advantage tokens; 0 disables."""
    ratio_level: str = "token"
    """Importance ratio per token, or per sequence (GSPO)."""
    agg_mode: str = "seq_mean_token_mean"
    """Loss aggregation: token_mean | seq_mean_token_mean | seq_mean_token_sum_norm."""
    penalty_coef: float = 0.1
    """Initial KL-to-old coefficient for loss=penalty (adapted towards penalty_target)."""
    penalty_target: float = 0.01
    """Target KL to the old policy for loss=penalty."""
    epochs: int = 1
    """Optimizer steps per rollout batch (old log-probs are stored, so later epochs are off-policy)."""
    micro_batch_size: int = 32
    """Rows per forward/backward; the update does not depend on it."""
    tis_cap: float = 0.0
    """Truncated importance-sampling cap for sampler/trainer mismatch; 0 disables."""
    # -- KL and entropy --------------------------------------------------------------------------
    kl_coef: float = 0.04
    """KL-to-reference coefficient beta; 0 skips the reference model entirely."""
    kl_estimator: str = "k3"
    """k1 | k2 | k3 (Schulman's estimators)."""
    kl_in: str = "loss"
    """Where the KL goes: loss (a loss term) | reward (subtracted from rewards before the advantage)."""
    kl_target: float = 0.0
    """Adaptive KL: target per-token KL; 0 keeps beta fixed."""
    kl_horizon: float = 10000.0
    """Adaptive KL horizon in samples."""
    entropy_coef: float = 0.0
    """Entropy bonus coefficient."""
    cov_control: str = "none"
    """Entropy control on the tokens whose log-prob and advantage covary most (Cui et al. 2025; docs/algorithms.md):
    none | clip_cov (drop the gradient of a random few inside the cov_low..cov_high window) | kl_cov (a KL penalty
    kl_cov_coef * |log ratio| on the top few; acts from the second epoch, so it needs epochs >= 2)."""
    cov_ratio: float = 2e-4
    """Fraction of the step's loss tokens that cov_control restrains (at least one); the paper's 2e-4 is for
    responses of thousands of tokens."""
    cov_low: float = 1.0
    """clip_cov: lower end of the covariance window tokens are drawn from."""
    cov_high: float = 5.0
    """clip_cov: upper end of that window."""
    kl_cov_coef: float = 1.0
    """kl_cov: the penalty's coefficient."""
    # -- DAPO pieces -----------------------------------------------------------------------------
    dynamic_sampling: bool = False
    """Drop groups whose rewards are all equal and refill the batch with new prompts."""
    max_refills: int = 4
    """Extra generation rounds dynamic sampling may use per step."""
    overlong_buffer: int = 0
    """Soft overlong penalty over the last N tokens before max_new_tokens; 0 disables."""
    overlong_penalty: float = 1.0
    """Scale of the soft overlong penalty."""
    mask_truncated: bool = False
    """Exclude truncated completions from the loss."""
    curriculum: CurriculumConfig = field(default_factory=CurriculumConfig)
    """Curriculum prompt sampling by level and online filtering of solved/unsolvable prompts (docs/curriculum.md)."""
    # -- critic (PPO) ----------------------------------------------------------------------------
    critic: str = "none"
    """none | head (value head on the policy trunk) | separate (an independent critic copy)."""
    vf_coef: float = 0.5
    """Value loss coefficient."""
    value_clip: float = 0.2
    """Value clipping range around the old values."""
    whiten_advantages: bool = True
    """Whiten the advantages over the batch (gae and prime)."""
    # -- process rewards (docs/rl.md "Process rewards") -------------------------------------------------
    process_reward: str = "none"
    """Token-level process rewards next to the outcome reward: none | prm (an explicit PRM, `prm=`) | prime
    (PRIME's implicit PRM: a copy of the initial policy trained online on the verified outcomes). Setting
    `prm=` alone selects prm."""
    prm: str = ""
    """With process_reward=prm: a trained PRM directory (`reasonloop prm`; loaded by reasonloop.prm.load_prm),
    or 'oracle' for the exact step checker of the arithmetic task (an upper bound, not a learned PRM)."""
    prm_delimiters: list[str] = field(default_factory=list)
    """Strings that end a step (kept in the step; text after the last one is the last step); empty: the PRM's
    own (the `delimiters` its prm.json records), else ';' and '</think>'."""
    prm_coef: float = 1.0
    """Weight of the process-reward advantage added to the outcome advantage (prime: of the process returns)."""
    prime_beta: float = 0.05
    """PRIME: beta of the implicit reward beta * log(pi_phi/pi_ref), per token and summed per sequence."""
    prime_lr: float = 0.0
    """PRIME: learning rate of the implicit PRM's own AdamW (optim's schedule); 0 uses optim.lr."""
    # -- optimisation and bookkeeping ------------------------------------------------------------
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=2e-4, warmup_steps=5, min_lr_ratio=1.0))
    """Optimiser and schedule."""
    monitor: MonitorConfig = field(default_factory=MonitorConfig)
    """Anomaly monitor thresholds."""
    rollback: bool = False
    """On a critical alert (NaN, KL blow-up, exploding gradient) restore the last checkpoint and scale lr."""
    rollback_lr_factor: float = 0.5
    """Learning-rate multiplier applied at each rollback."""
    eval_every: int = 50
    """Held-out evaluation every N steps (and before the first and after the last); 0 only at the ends."""
    eval_n: int = 200
    """Held-out problems per evaluation."""
    eval_k: int = 4
    """Samples per held-out problem (pass@1 sampled, pass@k, maj@k); 0 for greedy only."""
    val_n: int = 0
    """Validation problems: distinct test-split problems beside the eval_n held-out ones (never trained on, and
    never the held-out problems); evaluated as the held-out set is (greedy, and eval_k samples) at step 0,
    every val_every steps and after the last, logged as val/...; 0: no validation."""
    val_every: int = 20
    """Steps between validations when val_n > 0."""
    keep_best: str = ""
    """With val_n > 0: a validation metric, or a '+'-sum of them (pass@1_greedy, pass@1, pass@<eval_k> or pass@k),
    whose best step (the earliest on a tie, step 0 included) becomes the run's final model (see keep_best_paired);
    the table after training then measures that model, and summary.json keeps the last step's too. Empty: the last
    step's model (docs/rl.md, "Validation and the best step")."""
    keep_best_paired: bool = True
    """keep_best replaces the last step's model only when the best step is better on the validation problems by
    a 95% paired-bootstrap interval above 0 (a difference the validation set resolves); false: the best step
    whatever the margin (transformers' load_best_model_at_end)."""
    samples_every: int = 10
    """Write completions with their rewards to samples.jsonl every N steps; 0 disables."""
    reward_funcs: list[str] = field(default_factory=list)
    """Extra reward functions as 'module:function' with TRL's signature (fn(prompts, completions, **columns)
    -> list of floats, columns = the example's answer and metadata); each is one more reward component."""
    reward_weights: list[float] = field(default_factory=list)
    """Weights of reward_funcs, in order; empty means 1.0 each."""
    reward_model: str = ""
    """A local sequence-classification checkpoint (AutoModelForSequenceClassification: a Bradley-Terry RM's
    logit, or a classifier's last-label probability) scored on (prompt, completion) as one more reward
    component; empty disables."""
    reward_model_weight: float = 1.0
    """Weight of the reward_model component."""
    distributed: DistributedConfig = field(default_factory=DistributedConfig)
    """Scale-out: torchrun ranks (DDP/FSDP2) or the Ray actor-learner; the same step (docs/scale.md)."""
    memory: MemoryConfig = field(default_factory=MemoryConfig)
    """Memory savers: activation checkpointing, bf16 autocast with fp32 master weights (docs/scale.md)."""
    task_rewards: bool = True
    """Keep the task's own reward components; false trains on reward_funcs / reward_model alone (the task's
    components are still computed and logged as reward/task/<name>, and held-out evaluation still uses its
    verifier, so `monitor.accuracy_drop` can flag a hacked reward)."""

    @classmethod
    def resolved_setting(cls, setting: str, model_name: str) -> str:
        """What `setting` stands for in a config of class `cls` starting from `model_name`."""
        if setting != "auto":
            return setting
        return "from_sft" if cls is Config and written_by(model_name) == "sft" else "defaults"

    @classmethod
    def files_under(cls, merged: Any) -> list[Path]:
        """load_config's hook: the files read before the user's (rl_from_sft.yaml for setting=from_sft)."""
        setting = cls.resolved_setting(merged.setting, merged.model.name)
        return [FROM_SFT] if setting == "from_sft" else []  # a subclass asking for it is refused in __post_init__

    RESUME_FREE: ClassVar[frozenset[str]] = CheckpointedRunConfig.RESUME_FREE | {
        "eval_every", "samples_every", "distributed.backend", "distributed.strategy", "distributed.cpu_offload"}

    def __post_init__(self):
        super().__post_init__()
        require_choice("setting", self.setting, list(SETTINGS))
        require(self.setting != "from_sft" or type(self) is Config,
                f"setting=from_sft is `train`'s (it validates with val_n and keep_best); {type(self).__module__} "
                "evaluates in its own way: set its keys instead")
        if ":" not in self.advantage:  # 'module:function' is resolved (and checked) when the trainer starts
            require_choice("advantage", self.advantage, sorted(ADVANTAGE_ESTIMATORS))
        require_choice("std_mode", self.std_mode, ["group", "batch", "none"])
        require_choice("reinforce_baseline", self.reinforce_baseline, ["batch_mean", "moving_average"])
        require_choice("reward_norm", self.reward_norm, ["none", "running", "rank"])
        require_choice("loss", self.loss, ["clip", "penalty"])
        require_choice("ratio_level", self.ratio_level, ["token", "sequence"])
        require_choice("agg_mode", self.agg_mode, list(AGGREGATION_MODES))
        require_choice("kl_estimator", self.kl_estimator, ["k1", "k2", "k3"])
        require_choice("kl_in", self.kl_in, ["loss", "reward"])
        require_choice("critic", self.critic, ["none", "head", "separate"])
        require_choice("cov_control", self.cov_control, list(COV_CONTROLS))
        require(0 < self.cov_ratio <= 1, f"cov_ratio must be in (0, 1], got {self.cov_ratio}")
        require(self.cov_low < self.cov_high, f"need cov_low < cov_high, got {self.cov_low} and {self.cov_high}")
        require(self.cov_control != "kl_cov" or self.epochs >= 2,
                "cov_control=kl_cov penalises |log pi - log pi_old|, which is 0 with a zero gradient at a batch's "
                "first optimizer step; use epochs >= 2 (or cov_control=clip_cov)")
        require(self.steps > 0 and self.prompts_per_step > 0, "steps and prompts_per_step must be > 0")
        require(self.pass_k >= 1, f"pass_k must be >= 1, got {self.pass_k}")
        require(0 <= self.positive_weight <= 1, f"positive_weight must be in [0, 1], got {self.positive_weight}")
        require(self.group_size >= 2 or self.advantage in ("reinforce", "gae", "reinforce_pp"),
                f"group_size must be >= 2 for advantage={self.advantage}")
        require(self.epochs >= 1 and self.micro_batch_size >= 1, "epochs and micro_batch_size must be >= 1")
        require(self.dual_clip == 0 or self.dual_clip > 1, "dual_clip must be 0 (off) or > 1")
        require((self.advantage == "gae") == (self.critic != "none"),
                "advantage=gae needs a critic (critic=head|separate), and a critic is only used by gae")
        require(not self.reward_weights or len(self.reward_weights) == len(self.reward_funcs),
                f"reward_weights has {len(self.reward_weights)} entries for {len(self.reward_funcs)} reward_funcs")
        require(self.task_rewards or self.reward_funcs or self.reward_model,
                "task_rewards=false needs reward_funcs or a reward_model to train on")
        require(not self.adaptive_group or (self.advantage in ("grpo", "dr_grpo", "rloo") and self.std_mode != "batch"),
                "adaptive_group works with advantage=grpo|dr_grpo|rloo and per-group std")
        require(self.group_size_min >= 2 and self.group_size_max >= self.group_size_min,
                "need 2 <= group_size_min <= group_size_max")
        require(0 <= self.overlong_buffer <= self.sampling.max_new_tokens, "overlong_buffer must be in [0, max_new_tokens]")
        require(self.rollback_lr_factor > 0, "rollback_lr_factor must be > 0")
        require(self.train_pool > 0, "train_pool must be > 0")
        require(not (self.agent.env and self.rollout.decode_precision == "bf16"),
                "rollout.decode_precision=bf16 is the single-turn sampler's; the multi-turn engine (agent.env) "
                "decodes at float32")
        require(self.eval_n > 0, "eval_n must be > 0 (held-out problems per evaluation)")
        for key in ("eval_k", "eval_every", "samples_every", "save_every", "max_refills", "val_n"):
            require(getattr(self, key) >= 0, f"{key} must be >= 0")
        require(self.val_every > 0, f"val_every must be > 0, got {self.val_every}")
        require(not self.keep_best or self.val_n > 0, "keep_best chooses a step by validation: set val_n > 0 too")
        if self.keep_best:
            try:
                selection_terms(self.keep_best, self.eval_k)
            except ConfigError as exc:
                if type(self).resolved_setting(self.setting, self.model.name) != "from_sft":
                    raise
                raise ConfigError(f"{exc}. setting={self.setting} read keep_best from configs/rl_from_sft.yaml: set "
                                  "keep_best=pass@1_greedy too, or setting=defaults") from None
        require(0 <= self.clip_low < 1, "clip_low must be in [0, 1): the ratio is clipped at 1 - clip_low")
        for key in ("clip_high", "kl_coef", "kl_target", "entropy_coef", "vf_coef", "penalty_coef", "tis_cap",
                    "overlong_penalty", "kl_cov_coef"):
            require(getattr(self, key) >= 0, f"{key} must be >= 0 (a negative value would reverse the term)")
        require(self.value_clip > 0 and self.penalty_target > 0 and self.kl_horizon > 0,
                "value_clip, penalty_target and kl_horizon must be > 0")
        require(0 <= self.gamma <= 1 and 0 <= self.lam <= 1, "gamma and lam must be in [0, 1]")
        if self.prm and self.process_reward == "none":
            self.process_reward = "prm"  # `train prm=<dir>` says it all
        require_choice("process_reward", self.process_reward, list(PROCESS_REWARDS))
        require((self.process_reward == "prm") == bool(self.prm),
                f"process_reward={self.process_reward} with prm={self.prm!r}: prm=<dir|oracle> goes with "
                "process_reward=prm (the explicit PRM), and only with it")
        require(self.process_reward == "none" or self.advantage not in TOKEN_LEVEL,
                f"process_reward={self.process_reward} needs an estimator that reads process rewards: a sequence "
                f"estimator (grpo, dr_grpo, rloo, ...) or prime, not advantage={self.advantage}")
        require(self.process_reward != "prime" or self.model.lora.r == 0,
                "process_reward=prime trains a full copy of the policy as its implicit PRM; it does not run with LoRA")
        require(all(self.prm_delimiters), "prm_delimiters must be non-empty strings")
        require(self.prm_coef >= 0 and self.prime_beta > 0 and self.prime_lr >= 0,
                "prm_coef and prime_lr must be >= 0, prime_beta > 0")
        require(self.sampling.temperature > 0 or self.advantage not in GROUP_RELATIVE,
                f"sampling.temperature=0 (greedy) makes the {self.group_size} samples of a prompt identical, so "
                f"advantage={self.advantage}'s group-relative advantages are all 0 and nothing is learned; "
                "use a temperature > 0 (1.0 is the default)")


# ---------------------------------------------------------------------------------------------------


@dataclass
class ScoredGroup:
    """One prompt's G samples with their rewards, as rollout leaves them."""

    example: Example
    batch: RolloutBatch  # G rows
    rewards: torch.Tensor  # [G] total reward after shaping
    components: dict[str, torch.Tensor]  # name -> [G]

    @property
    def informative(self) -> bool:
        """Not all rewards equal: the group gives a group-relative estimator something to learn from."""
        return bool(dynamic_sampling_keep(self.rewards.view(1, -1))[0])


@dataclass
class StepData:
    """Everything the update needs about one batch, in rollout order (rows prompt-major)."""

    tokens: TokenBatch
    examples: list[Example]  # [N]
    batch: RolloutBatch
    rewards: torch.Tensor  # [N] total reward after shaping
    components: dict[str, torch.Tensor]  # name -> [N]
    group_sizes: list[int]  # per prompt


@dataclass
class TokenScores:
    """No-grad per-token scores of a batch, [N, T] each; None where the step does not need them."""

    old: torch.Tensor | None = None  # log-probs of the policy before the update (trainer numerics)
    ref: torch.Tensor | None = None  # log-probs of the reference policy
    values: torch.Tensor | None = None  # the critic's values before the update


@dataclass
class ProcessRewards:
    """Token-level process rewards of a batch: an explicit PRM's step scores on each step's last token, or
    PRIME's implicit reward on every token."""

    rewards: torch.Tensor  # [N, T] 0 where no reward sits
    mask: torch.Tensor  # [N, T] 1 where a reward sits


@dataclass
class UpdateBatch:
    """What the optimizer steps of one RL step read, computed once per step."""

    data: StepData
    scores: TokenScores
    advantages: torch.Tensor  # [N, T]
    returns: torch.Tensor | None  # [N, T] value targets (GAE)
    loss_mask: torch.Tensor  # [N, T] completion tokens that are trained on
    token_weights: torch.Tensor | None  # [N, T] loss multipliers: truncated importance weights, Clip-Cov's zeros
    normalizer: float  # the whole step's aggregation denominator (micro-batch invariance)
    kl_cov_selected: torch.Tensor | None = None  # [N, T] bool: the tokens KL-Cov penalises


@dataclass
class TrainerState:
    """Everything of a run that is not a tensor and must survive a checkpoint."""

    step: int = 0
    prompts: dict = field(default_factory=dict)  # the prompt sampler's state (pass and position), at checkpoints
    reward_norm: adv_lib.RewardNormState = field(default_factory=adv_lib.RewardNormState)
    baseline: Any = None  # the advantage estimator's carried state (REINFORCE's running mean)
    level_pass: dict[str, float] = field(default_factory=dict)  # running training pass rate per level
    lr_scale: float = 1.0  # shrunk by each rollback
    bad_steps: int = 0  # updates skipped for a non-finite loss or gradient
    rollbacks: int = 0
    alerts: dict[str, int] = field(default_factory=dict)  # monitor alerts and reward errors, counted
    kl_ctl: dict | None = None  # controller states, refreshed at each checkpoint
    penalty_ctl: dict | None = None
    monitors: dict | None = None

    def count(self, alert: str, n: int = 1) -> None:
        self.alerts[alert] = self.alerts.get(alert, 0) + n

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainerState:
        return cls(**{**d, "reward_norm": adv_lib.RewardNormState(**d["reward_norm"])})


def repetition_rate(text: str, n: int = 4) -> float:
    """1 - distinct n-grams / n-grams: 0 for text without repeats, towards 1 for loops."""
    grams = [text[i : i + n] for i in range(max(0, len(text) - n + 1))]
    return 1.0 - len(set(grams)) / len(grams) if grams else 0.0


def resolve_estimator(name: str) -> str:
    """The registry name for `advantage=`: a registered name as is, or 'module:function' imported and
    registered under that string (the function takes an AdvantageInput and returns an AdvantageOutput)."""
    if name in ADVANTAGE_ESTIMATORS:
        return name
    try:
        fn = load_function(name)
    except ValueError as exc:
        raise ConfigError(f"advantage={name!r}: not a registered estimator ({sorted(ADVANTAGE_ESTIMATORS)}) "
                          f"and {exc}") from exc
    register_advantage(name)(fn)
    return name


class Trainer:
    """One online-RL run: owns the policy, reference, critic, engine, optimizer and run directory.

    `step()` is one pass of the loop in the module docstring; `train()` adds evaluation, monitors,
    samples, checkpoints and rollback around it.
    """

    COMMAND = "train"  # the command its run directory records (recipes built on the trainer name their own)

    def __init__(self, cfg: Config, engine: RolloutEngine | None = None, placement=None):
        """`engine`: generate rollouts with this engine instead of the one `cfg.rollout` names; `placement`:
        where the step runs (distributed/placement.py; default: the one `cfg.distributed` names)."""
        self.cfg = cfg
        self.dist = placement or make_placement(cfg.distributed, cfg)
        self.estimator = resolve_estimator(cfg.advantage)
        set_threads(cfg.threads)
        set_seed(cfg.seed)
        self.run = Run(cfg, self.COMMAND)  # checks output_dir and picks the checkpoint; writes nothing yet
        self.task = make_task(cfg.task, cfg.data_dir or None)
        self.tokenizer, self.model = self.load_policy()
        self.task_specs = list(self.task.rewards())  # trained on, or (task_rewards=false) only logged
        self.reward_specs = self._reward_specs()
        self.use_lora = cfg.model.lora.r > 0
        prime = cfg.process_reward == "prime"  # PRIME: pi_phi starts as the policy; pi_ref is the frozen initial one
        if prime and "accuracy" not in [s.name for s in self.task_specs]:
            raise ConfigError(f"process_reward=prime trains on verified outcomes, but task {cfg.task!r} has no "
                              "'accuracy' reward component")
        # the copies are taken before the placement wraps (DDP) or shards (FSDP2) the policy
        self.ref = None
        if (cfg.kl_coef > 0 or prime) and not self.use_lora:  # with LoRA the reference is the adapter-free model
            self.ref = copy.deepcopy(self.model).eval().requires_grad_(False)
        critic = (Critic(self.model, shared=cfg.critic == "head", share_prompts=cfg.forward.share_prompts,
                         bucket_lengths=cfg.forward.bucket_lengths) if cfg.critic != "none" else None)
        self.implicit_prm = copy.deepcopy(self.model).train() if prime else None
        self.model = self.dist.prepare(self.model)  # DDP / FSDP2 on torchrun ranks; as is in one process
        self.critic = self.dist.prepare_trained(critic, critic.backbone) if critic is not None else None
        self.step_scorer = self._step_scorer() if cfg.process_reward == "prm" else None
        self.step_delimiters = list(cfg.prm_delimiters or getattr(self.step_scorer, "delimiters", DEFAULT_DELIMITERS))
        if prime:
            self.implicit_prm = self.dist.prepare_trained(self.implicit_prm, self.implicit_prm)
            self.prm_optimizer, self.prm_scheduler = build_optimizer(
                list(self.implicit_prm.parameters()),
                dataclasses.replace(cfg.optim, lr=cfg.prime_lr or cfg.optim.lr), cfg.steps)
        params = list(self.model.parameters()) + (list(self.critic.parameters()) if self.critic else [])
        total_updates = cfg.steps * cfg.epochs
        self.optimizer, self.scheduler = build_optimizer(params, cfg.optim, total_updates)
        self.engine = engine or build_engine(cfg.rollout, self.dist.rollout_model(self.model), self.tokenizer)
        self._policy_sampler: RolloutEngine | None = None  # eval_engine()'s: a served model, or bf16 decoding
        if cfg.agent.env:  # multi-turn episodes with tools or another environment (rollout/multiturn.py)
            self.engine = build_agent_engine(cfg.agent, self.dist.rollout_model(self.model), self.tokenizer,
                                             chat_template=cfg.model.use_chat_template)
        self.generator = torch.Generator().manual_seed(self.dist.sampler_seed(cfg.seed))
        fits = lambda exs, split: drop_long_prompts(exs, self.tokenizer, self.render, self.model,  # noqa: E731
                                                     cfg.sampling.max_new_tokens, f"{cfg.task}/{split}")
        self.pool = fits(self.task.examples("train", cfg.train_pool, seed=cfg.seed), "train")
        self.held_out = fits(self.task.examples("test", cfg.eval_n, seed=cfg.seed), "test")
        self.validation: list[Example] = []
        # a subclass with its own evaluate() (frameworks/) keeps it: no rows, no validation
        self.plain_evaluation = type(self).evaluate is Trainer.evaluate
        if cfg.val_n:
            if not self.plain_evaluation:
                raise ConfigError(f"val_n: {type(self).__name__} evaluates in its own way, and validation (val_n, "
                                  "keep_best) is the plain rl trainer's; set val_n=0")
            more = fits(self.task.examples("test", len(self.held_out) + cfg.val_n, seed=cfg.seed + 1), "validation")
            self.validation = validation_set(self.held_out, more, cfg.val_n)
        self.best = BestWeights() if cfg.keep_best else None
        self.monitors = Monitors(cfg.monitor)
        self.kl_ctl: Any = (AdaptiveKLController(cfg.kl_coef, cfg.kl_target, cfg.kl_horizon) if cfg.kl_target > 0
                            else FixedKLController(cfg.kl_coef))
        self.penalty_ctl = PPOPenaltyController(cfg.penalty_coef, cfg.penalty_target)
        self.state = TrainerState()
        self.prompts = make_prompt_sampler(self.pool, cfg.curriculum, cfg.seed)  # uniform passes unless curriculum
        if (ckpt := self.run.resume_from) is not None:
            self._restore(ckpt)
            print(f"train: resumed from {ckpt} at step {self.state.step}")
        # only once the task, model and data have loaded: bad input writes nothing (torchrun: rank 0 writes)
        self.run, self.out_dir = self.dist.start_run(self.run)

    def load_policy(self) -> tuple[Any, torch.nn.Module]:
        """(tokenizer, policy model); a subclass may build another policy (frameworks/rctl.py mixes adapters)."""
        return load_policy(self.cfg.model, self.task)

    def _step_scorer(self):
        """The explicit PRM of process_reward=prm: the exact arithmetic checker for prm=oracle, else the
        directory through reasonloop.prm.load_prm (anything with score_steps(prompt, steps))."""
        if self.cfg.prm == "oracle":
            if getattr(self.task, "name", "") != "arithmetic":
                raise ConfigError(f"prm=oracle is the exact step checker of the arithmetic task, not of {self.cfg.task!r}")
            return ArithmeticStepOracle()
        try:
            from reasonloop.prm import load_prm
        except ImportError as exc:
            raise ConfigError(f"prm={self.cfg.prm!r}: this install has no reasonloop.prm to load it ({exc})") from exc
        try:
            return load_prm(self.cfg.prm, device=str(next(self.model.parameters()).device))
        except (OSError, ValueError) as exc:
            raise ConfigError(f"prm={self.cfg.prm!r} does not load as a process reward model: {exc}") from exc

    def _reward_specs(self) -> list[RewardSpec]:
        """The task's reward components (unless task_rewards=false) plus the configured functions and
        reward model; a name that does not resolve is a config error, reported before any step runs."""
        cfg = self.cfg
        specs = list(self.task_specs) if cfg.task_rewards else []
        weights = cfg.reward_weights or [1.0] * len(cfg.reward_funcs)
        for spec, weight in zip(cfg.reward_funcs, weights):
            try:
                fn = load_function(spec)
            except ValueError as exc:
                raise ConfigError(f"reward_funcs: {exc}") from exc
            specs.append(RewardSpec(spec.partition(":")[2], fn, weight))
        if cfg.reward_model:
            try:
                rm = RewardModel.from_pretrained(cfg.reward_model, device=str(next(self.model.parameters()).device))
            except (OSError, ValueError) as exc:
                raise ConfigError(f"reward_model={cfg.reward_model!r} does not load as a sequence classifier: {exc}") from exc
            specs.append(RewardSpec("reward_model", rm.as_reward_fn(), cfg.reward_model_weight))
        names = [s.name for s in specs]
        if len(set(names)) != len(names):
            raise ConfigError(f"reward component names must differ, got {names}")
        return specs

    # -- data --------------------------------------------------------------------------------------
    def next_prompts(self, n: int) -> list[Example]:
        """The next `n` train prompts of a reshuffled pass over the pool (torchrun: this rank's contiguous share)."""
        return [self.pool[i] for i in self.dist.shard(self.prompts.next(n))]  # this rank's share

    def render(self, prompt: str) -> str:  # with a chat tool format, the prompt declares the tools
        return render_prompt(self.tokenizer, prompt, self.cfg.model.use_chat_template,
                             tools=getattr(self.engine, "tool_specs", None))

    # -- rollout + reward ----------------------------------------------------------------------------
    def group_size_for(self, ex: Example) -> int:
        cfg = self.cfg
        if not cfg.adaptive_group:
            return cfg.group_size
        rate = self.state.level_pass.get(str(ex.meta.get("level", "all")), 0.5)
        return int(adv_lib.adaptive_group_size(torch.tensor([rate]), cfg.group_size_min, cfg.group_size_max)[0])

    def rollout(self, prompts: list[Example], timing: dict[str, float]) -> list[ScoredGroup]:
        """Generate and score, one `ScoredGroup` per prompt. Adds the seconds spent generating and rewarding
        to `timing["time/generation"]` and `timing["time/reward"]`."""
        by_size: dict[int, list[Example]] = {}
        for ex in prompts:
            by_size.setdefault(self.group_size_for(ex), []).append(ex)
        groups = []
        for g, exs in by_size.items():
            t0 = time.time()
            if self.cfg.agent.env:  # each environment gets its example; observations are masked out of the loss
                batch = self.engine.episodes(exs, g, self.cfg.sampling, self.generator, render=self.render)
            else:
                batch = self.engine.generate([self.render(e.prompt) for e in exs], g, self.cfg.sampling, self.generator)
            t1 = time.time()
            rows_exs = [e for e in exs for _ in range(g)]
            scored = compute_rewards(self.reward_specs, batch.completions, rows_exs)
            if not self.cfg.task_rewards:  # the task's verdicts, logged but not trained on: a hacking check
                shadow = compute_rewards(self.task_specs, batch.completions, rows_exs)
                scored.components.update({f"task/{k}": v for k, v in shadow.components.items()})
            timing["time/generation"] = timing.get("time/generation", 0.0) + t1 - t0
            timing["time/reward"] = timing.get("time/reward", 0.0) + time.time() - t1
            for name, count in scored.errors.items():
                self.state.count(f"reward_error/{name}", count)
            total = self.total_reward(scored, batch.completions, rows_exs, g) + self._overlong(batch)
            if self.cfg.agent.env:  # the environment's per-turn and final rewards, summed per episode
                total = total + batch.episodes.returns
            for i, ex in enumerate(exs):
                rows = slice(i * g, (i + 1) * g)
                groups.append(ScoredGroup(ex, batch.rows(rows), total[rows],
                                          {k: v[rows] for k, v in scored.components.items()}))
        return groups

    def total_reward(self, scored: RewardResult, completions: list[str], examples: list[Example],
                     group_size: int) -> torch.Tensor:
        """[N] the reward trained on, for rows of `group_size` samples per prompt: the components' weighted sum.
        A framework (reasonloop/frameworks) overrides it to reweight or add components (it may add entries
        to `scored.components`, which are logged as reward/<name>)."""
        return scored.total

    def _overlong(self, batch: RolloutBatch) -> torch.Tensor:
        if not self.cfg.overlong_buffer:
            return torch.zeros(batch.num_rows)
        lengths = batch.completion_mask.sum(-1)
        return adv_lib.overlong_penalty(lengths, self.cfg.sampling.max_new_tokens, self.cfg.overlong_buffer,
                                        self.cfg.overlong_penalty)

    def collect(self) -> tuple[StepData, dict[str, float]]:
        cfg = self.cfg
        timing: dict[str, float] = {}
        groups = self.rollout(self.next_prompts(cfg.prompts_per_step), timing)
        uninformative, n_groups = self.dist.sum_over_ranks([sum(not grp.informative for grp in groups), len(groups)])
        stats = {"zero_variance_frac": uninformative / n_groups}  # of the global batch
        self._update_level_pass(groups)
        self._observe(groups)
        if cfg.dynamic_sampling or self._filtering():
            # torchrun: each rank keeps from its shard; the counts, hence the refills, are the global batch's
            kept = [grp for grp in groups if self._keep(grp)]
            n_kept, refills = int(self.dist.sum_over_ranks([len(kept)])[0]), 0
            while n_kept < cfg.prompts_per_step and refills < cfg.max_refills:
                refills += 1
                extra = self.rollout(self.next_prompts(cfg.prompts_per_step - n_kept), timing)
                self._observe(extra)
                new = [grp for grp in extra if self._keep(grp)]
                kept += new
                n_kept += int(self.dist.sum_over_ranks([len(new)])[0])
            stats["dynamic_sampling/refills"] = refills
            stats["dynamic_sampling/kept_groups"] = min(n_kept, cfg.prompts_per_step)
            # the first prompts_per_step kept groups (torchrun: redealt, an equal share per rank)
            groups = self.dist.first_groups(kept, min(n_kept, cfg.prompts_per_step)) or groups  # none: the originals
        if isinstance(self.prompts, CurriculumSampler):
            stats.update(self.prompts.metrics())
        return self._assemble(groups), {**stats, **timing}

    # -- curriculum hooks (data/curriculum.py) ---------------------------------------------------------
    def _filtering(self) -> bool:
        return isinstance(self.prompts, CurriculumSampler) and self.cfg.curriculum.filter

    def _keep(self, grp: ScoredGroup) -> bool:
        """Dynamic sampling's test: rewards not all equal; with the curriculum's online filter, a pass rate
        strictly between 0 and 1 (tasks without a verdict component keep the reward test)."""
        rate = group_pass_rate(grp.components) if self._filtering() else None
        return grp.informative if rate is None else 0.0 < rate < 1.0

    def _observe(self, groups: list[ScoredGroup]) -> None:
        """Feed the curriculum its training pass rates (a no-op for uniform sampling). torchrun: every rank's
        groups in rank order (within a level, the single-process order), as pool positions, so every rank's
        windows, locks and skip list stay the single process's and the ranks keep drawing the same prompts."""
        if isinstance(self.prompts, CurriculumSampler):
            position = {id(ex): i for i, ex in enumerate(self.pool)}
            rates = [(position.get(id(grp.example), grp.example), rate) for grp in groups  # not a pool object: as is
                     if (rate := group_pass_rate(grp.components)) is not None]
            observed = [pair for part in self.dist.gather(rates) for pair in part]
            self.prompts.observe([self.pool[k] if isinstance(k, int) else k for k, _ in observed],
                                 [rate for _, rate in observed])

    def _update_level_pass(self, groups: list[ScoredGroup]) -> None:
        """The running pass rate per level. torchrun: every rank's groups in rank order, which within a level
        is the single-process order (a level's prompts share one group size, so one rollout bucket)."""
        if "accuracy" not in groups[0].components:
            return
        observed = [(str(grp.example.meta.get("level", "all")), float(grp.components["accuracy"].mean()))
                    for grp in groups]
        for key, rate in (pair for part in self.dist.gather(observed) for pair in part):
            old = self.state.level_pass.get(key, 0.5)
            self.state.level_pass[key] = 0.9 * old + 0.1 * rate

    def _assemble(self, groups: list[ScoredGroup]) -> StepData:
        batch = RolloutBatch.concat([grp.batch for grp in groups], self.tokenizer.pad_token_id)
        return StepData(batch.tokens, [grp.example for grp in groups for _ in range(grp.batch.num_rows)], batch,
                        torch.cat([grp.rewards for grp in groups]),
                        {k: torch.cat([grp.components[k] for grp in groups]) for k in groups[0].components},
                        [grp.batch.num_rows for grp in groups])

    # -- no-grad passes ------------------------------------------------------------------------------
    @torch.no_grad()
    def score_tokens(self, data: StepData) -> TokenScores:
        """Old log-probs (+ old values) from the policy and reference log-probs, micro-batched."""
        cfg, temp = self.cfg, self.cfg.sampling.temperature or 1.0
        T = data.tokens.completion_ids.shape[1]
        out: dict[str, list] = {"old": [], "ref": [], "values": []}
        self.model.eval()
        for rows, real in self._passes(len(data.tokens)):
            mb = data.tokens.select(rows)
            part: dict[str, torch.Tensor] = {}
            if not self._old_is_current():
                fwd = self._forward(self.model, mb, temp, with_hidden=self.critic is not None)
                part["old"] = pad_right(fwd.logprobs, T, 0.0)
            if self.critic is not None:
                part["values"] = pad_right(self.critic(mb, fwd.hidden), T, 0.0)
            if cfg.kl_coef > 0:
                part["ref"] = pad_right(self._ref_logprobs(mb, temp), T, 0.0)
            if real:  # a padding pass (FSDP2) makes the same calls; its outputs are dropped
                for k, v in part.items():
                    out[k].append(v)
        return TokenScores(**{k: torch.cat(v) for k, v in out.items() if v})

    def _old_is_current(self) -> bool:
        """True when the old log-probs equal the update's own: one epoch, and nothing reads them before
        the update (no critic, no TIS, no KL-in-reward, no token-level estimator). The update then uses
        its forward's log-probs, detached, instead of a second pass (the ratio is exactly 1 either way)."""
        cfg = self.cfg
        return (cfg.epochs == 1 and self.critic is None and cfg.tis_cap == 0
                and self.estimator not in TOKEN_LEVEL and not (cfg.kl_coef > 0 and cfg.kl_in == "reward"))

    def _ref_logprobs(self, mb: TokenBatch, temp: float) -> torch.Tensor:
        if self.use_lora:
            with self.model.disable_adapter():
                return self._forward(self.model, mb, temp).logprobs
        # a BitNet reference runs on the ternary kernel (packed once: its weights never change); the same
        # integers as BitLinear's quantising forward, log-probs within float rounding (tests/rollout/test_ternary.py)
        with ternary.attached(self.ref):
            return self._forward(self.ref, mb, temp).logprobs

    def _forward(self, model, mb: TokenBatch, temp: float, **outputs):
        return policy_forward(model, mb, temp, **self.cfg.forward.options(), **outputs)

    def _micro_batches(self, n: int) -> list[slice]:
        step = self.cfg.micro_batch_size
        return [slice(i, min(i + step, n)) for i in range(0, n, step)]

    def _passes(self, n: int) -> list[tuple[slice, bool]]:
        """The micro-batches of one pass over the step's n rows, each with True; under FSDP2, a rank whose rows
        make fewer micro-batches than another rank's (adaptive group sizes) adds 1-row padding passes (False)
        whose outputs and gradients are dropped, so every rank makes the same forward and backward calls,
        each of which all-gathers the shards (placement.micro_batch_padding)."""
        batches = self._micro_batches(n)
        padding = self.dist.micro_batch_padding(len(batches))
        return [(rows, True) for rows in batches] + [(slice(0, 1), False)] * padding

    # -- process rewards ------------------------------------------------------------------------------
    def process_rewards(self, data: StepData, scores: TokenScores) -> tuple[ProcessRewards | None, dict[str, float]]:
        """Token-level process rewards of the batch (None with process_reward=none) and their metrics. PRIME
        also takes its implicit PRM's optimizer step here, after scoring (PRIME's Algorithm 1 order)."""
        if self.cfg.process_reward == "prm":
            return self._explicit_process_rewards(data)
        if self.cfg.process_reward == "prime":
            return self._implicit_process_rewards(data, scores)
        return None, {}

    def _explicit_process_rewards(self, data: StepData) -> tuple[ProcessRewards, dict[str, float]]:
        """The PRM's score of each step (a probability the step is right) on the step's last token."""
        steps = [step_spans(c, self.step_delimiters) for c in data.batch.completions]
        prompts = [ex.prompt for ex in data.examples]
        texts = [[s.text for s in row] for row in steps]
        scorer = self.step_scorer
        if hasattr(scorer, "score_many"):
            scores = scorer.score_many(prompts, texts)
        else:
            scores = [scorer.score_steps(p, t) if t else [] for p, t in zip(prompts, texts)]
        for row, (t, sc) in enumerate(zip(texts, scores)):
            if len(sc) != len(t):
                raise ValueError(f"the PRM returned {len(sc)} scores for the {len(t)} steps of completion {row}")
        eos = self.tokenizer.eos_token_id
        rewards, marks = place_step_scores(data.tokens.completion_ids, data.tokens.completion_mask, steps, scores,
                                           lambda ids: self.tokenizer.decode(ids, skip_special_tokens=True),
                                           frozenset({eos}) if eos is not None else frozenset())
        flat = [x for row in scores for x in row]
        return ProcessRewards(rewards, marks), {
            "process/step_score": sum(flat) / max(len(flat), 1),
            "process/steps": len(flat) / len(scores),
        }

    def _implicit_process_rewards(self, data: StepData, scores: TokenScores) -> tuple[ProcessRewards, dict[str, float]]:
        """PRIME: beta * log(pi_phi/pi_ref) on every completion token, then one cross-entropy step of pi_phi
        on the verified outcome labels (micro-batched, each share divided by the batch's row count)."""
        cfg, temp = self.cfg, self.cfg.sampling.temperature or 1.0
        tokens, mask = data.tokens, data.tokens.completion_mask.float()
        T, N = tokens.completion_ids.shape[1], len(tokens)
        labels = data.components.get("accuracy", data.components.get("task/accuracy"))
        prm_lp, ref_lp = [], []
        self.implicit_prm.eval()
        with torch.no_grad():
            for rows, real in self._passes(N):
                mb = tokens.select(rows)
                prm = pad_right(self._forward(self.implicit_prm, mb, temp).logprobs, T, 0.0)
                ref_part = pad_right(self._ref_logprobs(mb, temp), T, 0.0) if scores.ref is None else None
                if real:  # a padding pass (FSDP2) only makes the calls
                    prm_lp.append(prm)
                    ref_lp += [ref_part] if ref_part is not None else []
        ref = scores.ref if scores.ref is not None else torch.cat(ref_lp)
        rewards = implicit_process_rewards(torch.cat(prm_lp), ref, mask, cfg.prime_beta)
        self.implicit_prm.train()
        n_all = self.dist.sum_over_ranks([float(N)])[0]  # torchrun: every rank's rows (the global batch)
        sums = {"loss": 0.0, "accuracy": 0.0}
        passes = self._passes(N)
        for i, (rows, real) in enumerate(passes):
            mb = tokens.select(rows)
            width = mb.completion_ids.shape[1]
            self.dist.before_micro_batch(self.implicit_prm, last=i == len(passes) - 1)
            fwd = self._forward(self.implicit_prm, mb, temp)
            loss, m = implicit_prm_loss(fwd.logprobs, ref[rows, :width], mask[rows, :width], labels[rows],
                                        cfg.prime_beta, normalizer=n_all)
            if not real:  # FSDP2 padding: the same forward and backward calls, no gradient
                (loss * 0.0).backward()
                continue
            loss.backward()
            sums["loss"] += float(loss.detach())
            sums["accuracy"] += float(m["accuracy"]) * (rows.stop - rows.start) / n_all
        self.dist.reduce_gradients(self.implicit_prm)  # ddp: summed over ranks
        grad_norm, _ = clip_and_step(self.implicit_prm, self.prm_optimizer, self.prm_scheduler, cfg.optim.max_grad_norm)
        seq = rewards.sum(-1).double()
        right = labels > 0.5
        loss, accuracy, sum_right, n_right, sum_wrong, n_wrong = self.dist.sum_over_ranks([
            sums["loss"], sums["accuracy"], float(seq[right].sum()), float(right.sum()), float(seq[~right].sum()),
            float((~right).sum())])
        return ProcessRewards(rewards, mask), {
            "prime/loss": loss, "prime/accuracy": accuracy, "prime/grad_norm": grad_norm,
            "prime/reward_correct": sum_right / n_right if n_right else 0.0,
            "prime/reward_wrong": sum_wrong / n_wrong if n_wrong else 0.0,
        }

    # -- advantages -----------------------------------------------------------------------------------
    def advantages(self, data: StepData, scores: TokenScores, mask: torch.Tensor,
                   process: ProcessRewards | None = None) -> AdvantageOutput:
        """[N, T] token advantages (sequence estimators broadcast over tokens) and GAE returns, by the
        estimator `advantage=` names, with the step's process rewards when there are any; the estimator's
        state and the reward-normalisation state carry over."""
        cfg = self.cfg
        starts = [sum(data.group_sizes[:b]) for b in range(len(data.group_sizes))]
        levels = torch.tensor([float(data.examples[s].meta.get("level", 0)) for s in starts])
        out = self.dist.estimate(self.estimator, AdvantageInput(  # torchrun: on the global batch
            rewards=data.rewards, group_sizes=tuple(data.group_sizes), mask=mask, logprobs=scores.old,
            ref_logprobs=scores.ref, values=scores.values, levels=levels,
            pass_rates=torch.tensor([self.state.level_pass.get(str(int(lv)), 0.5) for lv in levels]),
            kl_coef=self.kl_ctl.value if cfg.kl_coef > 0 else 0.0, kl_estimator=cfg.kl_estimator,
            kl_in_reward=cfg.kl_in == "reward", std_mode=cfg.std_mode, baseline=cfg.reinforce_baseline,
            reward_norm=cfg.reward_norm, reward_norm_state=self.state.reward_norm, gamma=cfg.gamma, lam=cfg.lam,
            whiten=cfg.whiten_advantages, state=self.state.baseline,
            process_rewards=process.rewards if process else None, process_mask=process.mask if process else None,
            process_coef=cfg.prm_coef, turn_rewards=data.batch.turn_rewards, pass_k=cfg.pass_k))
        self.state.baseline, self.state.reward_norm = out.state, out.reward_norm_state
        return out

    def covariance_control(self, data: StepData, scores: TokenScores, advantages: torch.Tensor,
                           loss_mask: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """`cov_control`'s tokens, chosen once per step from the log-probs that sampled the batch (the trainer's
        old ones when computed): Clip-Cov's [N, T] loss weights, or KL-Cov's [N, T] selection; (None, None) when
        off. Clip-Cov's draw is seeded by the run's seed and the step, so a resumed run draws the same tokens."""
        cfg = self.cfg
        if cfg.cov_control == "none":
            return None, None
        logprobs = scores.old if scores.old is not None else data.batch.logprobs
        cov = token_covariance(logprobs, advantages, loss_mask)
        if cfg.cov_control == "kl_cov":
            return None, kl_cov_select(cov, loss_mask, ratio=cfg.cov_ratio)
        draw = torch.Generator().manual_seed(self.dist.sampler_seed(cfg.seed) * 1_000_003 + self.state.step)
        return clip_cov_weights(cov, loss_mask, ratio=cfg.cov_ratio, low=cfg.cov_low, high=cfg.cov_high,
                                generator=draw), None

    # -- the step ---------------------------------------------------------------------------------------
    def step(self) -> tuple[dict[str, float], StepData]:
        cfg = self.cfg
        t0 = time.time()
        data, stats = self.collect()
        t_rollout = time.time() - t0
        t1 = time.time()
        scores = self.score_tokens(data)
        mask = data.batch.loss_mask.float()  # multi-turn: observation tokens are context, not policy actions
        loss_mask = adv_lib.mask_truncated(mask, data.batch.truncated) if cfg.mask_truncated else mask
        process, process_metrics = self.process_rewards(data, scores)
        estimated = self.advantages(data, scores, mask, process)
        advantages = (estimated.advantages if cfg.positive_weight == 1
                      else adv_lib.weight_positive(estimated.advantages, cfg.positive_weight))
        weights = tis_weights(scores.old, data.batch.logprobs, mask, cfg.tis_cap) if cfg.tis_cap > 0 else None
        cov_weights, kl_cov_selected = self.covariance_control(data, scores, advantages, loss_mask)
        if cov_weights is not None:
            weights = cov_weights if weights is None else weights * cov_weights
        update = UpdateBatch(
            data, scores, advantages, estimated.returns, loss_mask, weights,
            self.dist.normalizer(loss_mask, cfg.agg_mode, max_len=cfg.sampling.max_new_tokens),  # global batch
            kl_cov_selected)
        t_score = time.time() - t1
        t2 = time.time()
        update_metrics: dict[str, float] = {}
        for _ in range(cfg.epochs):
            update_metrics = self._update(update)
        t_train = time.time() - t2
        self.dist.sync_engine(self.engine, self.model)
        kl = update_metrics.get("kl", 0.0)
        self.kl_ctl = self.kl_ctl.update(kl, int(self.dist.sum_over_ranks([len(data.tokens)])[0]))  # global rows
        n_tokens = float(mask.sum())
        elapsed = time.time() - t0
        lengths = mask.sum(-1)
        metrics = {
            "reward/mean": float(data.rewards.mean()), "reward/std": float(data.rewards.std()),
            "reward/max": float(data.rewards.max()),
            **{f"reward/{k}": float(v.mean()) for k, v in data.components.items()},
            **stats, **update_metrics, **process_metrics, "kl_coef": self.kl_ctl.value,
            "lr": self.scheduler.get_last_lr()[0],
            "length/mean": float(lengths.mean()), "length/max": float(lengths.max()),
            "truncation_rate": float(data.batch.truncated.float().mean()),
            "repetition_rate": sum(map(repetition_rate, data.batch.completions)) / len(data.batch.completions),
            "tokens_per_s": n_tokens / elapsed, "time/rollout": t_rollout, "time/logprobs": t_score,
            "time/train": t_train, "time/step": elapsed,
        }
        agent = self.engine.metrics(self.dist.gather) if cfg.agent.env else {}  # counters summed over ranks
        metrics.update(agent)
        if cfg.cov_control != "none":  # how many tokens it restrained this step
            metrics["cov/tokens"] = float((cov_weights == 0).sum() if cov_weights is not None else kl_cov_selected.sum())
        accuracy = data.components.get("accuracy", data.components.get("task/accuracy"))
        if accuracy is not None:  # the verifier's verdict on the training samples, trained on or not
            metrics["accuracy"] = float(accuracy.mean())
        already_global = {*update_metrics, *agent,  # and the PRM's sums, the curriculum's state (the same on every rank)
                          *(k for k in {**process_metrics, **stats} if k.startswith(("prime/", "curriculum/")))}
        return self.dist.reduce_step(metrics, exclude=already_global, rows=len(data.tokens)), data

    def _update(self, update: UpdateBatch) -> dict[str, float]:
        """One optimizer step over the whole batch; a non-finite loss or gradient skips it (counted)."""
        out = self.dist.reduce_update(self.accumulate_gradients(update), float(update.loss_mask.sum()))
        if self.critic is not None:
            self.dist.reduce_gradients(self.critic)  # ddp: the critic's gradients summed over ranks
        if not math.isfinite(out["loss"]):
            self.optimizer.zero_grad(set_to_none=True)
            self.state.bad_steps += 1
            out["bad_steps"] = self.state.bad_steps
            return out
        grad_norm, stepped = clip_and_step(self.model, self.optimizer, self.scheduler, self.cfg.optim.max_grad_norm)
        if not stepped:
            self.state.bad_steps += 1
        if self.cfg.loss == "penalty":
            self.penalty_ctl = self.penalty_ctl.update(out.get("policy/kl", 0.0))
        out.update({"grad_norm": grad_norm, "bad_steps": self.state.bad_steps})
        return out

    def accumulate_gradients(self, update: UpdateBatch) -> dict[str, float]:
        """Backward every micro-batch's share of the step loss; returns token-weighted metrics.

        Each micro-batch loss is already divided by the whole step's `normalizer`, so the summed
        gradient does not depend on `micro_batch_size`. Stops at the first non-finite loss.
        """
        cfg = self.cfg
        temp = cfg.sampling.temperature or 1.0
        mode, norm, max_len = cfg.agg_mode, update.normalizer, cfg.sampling.max_new_tokens
        agg = {"agg_mode": mode, "normalizer": norm, "max_len": max_len}  # the losses' aggregation keywords
        scores, tokens = update.scores, update.data.tokens
        self.model.train()
        sums: dict[str, float] = {}
        total_loss = 0.0
        passes = self._passes(len(tokens))
        for i, (rows, real) in enumerate(passes):
            mb = tokens.select(rows)
            T = mb.completion_ids.shape[1]
            m = update.loss_mask[rows, :T]
            adv = update.advantages[rows, :T]
            last = i == len(passes) - 1  # gradients sync once per step, on every rank's last pass
            self.dist.before_micro_batch(self.model, last=last)
            if self.critic is not None:
                self.dist.before_micro_batch(self.critic, last=last)
            fwd = self._forward(self.dist.training_module(self.model), mb, temp, with_entropy=True,
                                with_hidden=self.critic is not None)
            old = scores.old[rows, :T] if scores.old is not None else fwd.logprobs.detach()
            w = update.token_weights[rows, :T] if update.token_weights is not None else None
            if cfg.loss == "clip":
                loss, pm = ppo_clip_loss(fwd.logprobs, old, adv, m, clip_low=cfg.clip_low, clip_high=cfg.clip_high,
                                         dual_clip=cfg.dual_clip or None, ratio_level=cfg.ratio_level, weights=w, **agg)
            else:
                loss, pm = ppo_penalty_loss(fwd.logprobs, old, adv, m, kl_coef=self.penalty_ctl.value,
                                            kl_estimator="k3", weights=w, **agg)
            metrics = {f"policy/{k}": float(v) for k, v in pm.items()}
            if update.kl_cov_selected is not None:
                loss = loss + aggregate(kl_cov_penalty(fwd.logprobs, old, update.kl_cov_selected[rows, :T],
                                                       cfg.kl_cov_coef), m, mode, norm, max_len)
            if cfg.kl_coef > 0:
                kl_tok = kl_estimate(fwd.logprobs, scores.ref[rows, :T], cfg.kl_estimator)
                metrics["kl"] = float(masked_mean(kl_tok.detach(), m))
                if cfg.kl_in == "loss":
                    loss = loss + self.kl_ctl.value * aggregate(kl_tok, m, mode, norm, max_len)
            metrics["entropy"] = float(masked_mean(fwd.entropy.detach(), m))
            if cfg.entropy_coef:
                loss = loss - cfg.entropy_coef * aggregate(fwd.entropy, m, mode, norm, max_len)
            if self.critic is not None:
                values = self.critic(mb, fwd.hidden)
                vloss, vm = clipped_value_loss(values, scores.values[rows, :T], update.returns[rows, :T], m,
                                               clip_range=cfg.value_clip, **agg)
                loss = loss + cfg.vf_coef * vloss
                metrics.update({f"value/{k}": float(v) for k, v in vm.items()})
            if not real:  # FSDP2 padding: the same forward and backward calls as the other ranks', no gradient
                (loss * 0.0).backward()
                continue
            if not torch.isfinite(loss):
                total_loss = math.nan
                break
            loss.backward()
            total_loss += float(loss.detach())
            weight = float(m.sum())
            for k, v in metrics.items():  # token-weighted means across micro-batches
                sums[k] = sums.get(k, 0.0) + v * weight
        total_tokens = max(float(update.loss_mask.sum()), 1.0)
        return {"loss": total_loss, **{k: v / total_tokens for k, v in sums.items()}}

    # -- checkpoints ----------------------------------------------------------------------------------
    def _checkpoint(self) -> None:
        self.state.kl_ctl = self.kl_ctl.state_dict()
        self.state.penalty_ctl = self.penalty_ctl.state_dict()
        self.state.monitors = self.monitors.state_dict()
        self.state.prompts = self.prompts.state_dict()
        extra = self._extra_modules()
        state = {k: v for k, v in self.state.to_dict().items() if k != "step"}
        self.dist.save_checkpoint(self.out_dir, self.state.step, self.model, self.optimizer, self.scheduler, state,
                        generators={"sampler": self.generator}, modules=extra)

    def _restore(self, ckpt) -> None:
        modules = self._extra_modules()
        self.state = TrainerState.from_dict(self.dist.load_checkpoint(ckpt, self.model, self.optimizer, self.scheduler,
                                                            generators={"sampler": self.generator}, modules=modules))
        self.prompts.load_state_dict(self.state.prompts)
        self.kl_ctl = self.kl_ctl.load_state_dict(self.state.kl_ctl)
        self.penalty_ctl = self.penalty_ctl.load_state_dict(self.state.penalty_ctl)
        self.monitors.load_state_dict(self.state.monitors)
        self._apply_lr_scale()

    def _extra_modules(self) -> dict[str, Any]:
        """Checkpointed beside the policy's optimizer: the critic, and PRIME's implicit PRM with its optimizer
        and schedule (anything with state_dict/load_state_dict)."""
        extra: dict[str, Any] = {"critic": self.critic} if self.critic is not None else {}
        if self.best is not None:
            extra["best"] = self.best
        if self.implicit_prm is not None:
            extra.update({"implicit_prm": self.implicit_prm, "implicit_prm_optimizer": self.prm_optimizer,
                          "implicit_prm_scheduler": self.prm_scheduler})
        return extra

    def _apply_lr_scale(self) -> None:
        """The scheduler multiplies base_lrs; rollbacks shrink them by `lr_scale`."""
        self.scheduler.base_lrs = [self.cfg.optim.lr * self.state.lr_scale for _ in self.scheduler.base_lrs]

    def _rollback(self, alerts: list[str]) -> bool:
        ckpt = latest_checkpoint(self.out_dir)
        if ckpt is None:
            log.warning("rollback wanted after %s but there is no checkpoint yet", alerts)
            return False
        # the run's history of trouble survives the rollback; everything else is the checkpoint's
        kept = {k: getattr(self.state, k) for k in ("bad_steps", "alerts", "rollbacks")}
        kept["rollbacks"] += 1
        lr_scale = self.state.lr_scale * self.cfg.rollback_lr_factor
        self._restore(ckpt)
        self.state = dataclasses.replace(self.state, **kept, lr_scale=lr_scale)
        self._apply_lr_scale()
        log.warning("rollback %d after %s: restored %s, lr scaled to %.3g", self.state.rollbacks, alerts, ckpt,
                    lr_scale)
        return True

    # -- evaluation ------------------------------------------------------------------------------------
    def eval_engine(self) -> RolloutEngine:
        """The rollout engine, or, where it does not follow the trained weights (a served model) or decodes in
        bf16 (rollout.decode_precision=bf16), an in-process float32 sampler over the policy: the held-out tables
        always measure the model being trained, as its float32 forward defines it, whatever samples its rollouts."""
        if getattr(self.engine, "follows_policy", True) and self.cfg.rollout.decode_precision == "fp32":
            return self.engine
        if self._policy_sampler is None:
            self._policy_sampler = build_engine(
                dataclasses.replace(self.cfg.rollout, engine="torch", decode_precision="fp32"),
                self.dist.rollout_model(self.model), self.tokenizer)
        return self._policy_sampler

    def evaluate(self, examples: list[Example] | None = None, prefix: str = "eval/", rows_to: str = "") -> dict:
        """The held-out table (or that of `examples`), logged under `prefix` at the current step; its sample rows
        (problem, mode, completion, verdict) go to the run directory's `rows_to` when named."""
        return self._evaluate_rows(examples, prefix, rows_to)[0]

    def _evaluate_rows(self, examples: list[Example] | None = None, prefix: str = "eval/",
                       rows_to: str = "") -> tuple[dict, list[dict]]:
        if not self.dist.is_main:  # rank 0 evaluates (on the rollout engine) and logs; the others: an empty table
            return {"overall": {"n": 0}}, []
        sampling = SamplingConfig(temperature=1.0, max_new_tokens=self.cfg.sampling.max_new_tokens)
        summary, rows = evaluate(self.eval_engine(), self.task, self.held_out if examples is None else examples,
                                 self.render, sampling, k=self.cfg.eval_k, seed=self.cfg.seed)
        if rows_to:
            self.run.write_jsonl(rows_to, rows)
        agent = {f"{prefix}{k}": v for k, v in self.engine.metrics().items()} if self.cfg.agent.env else {}
        self.run.log(self.state.step, {**flat_metrics(summary, prefix), **agent})
        return summary, rows

    def validate(self) -> np.ndarray | None:
        """Evaluate the validation set (val/...) and, with keep_best, offer the step to the best-so-far; returns
        the step's per-problem keep_best values (None without keep_best)."""
        _, rows = self._evaluate_rows(self.validation, prefix="val/")
        if self.best is None or not self.dist.is_main:
            return None
        values = problem_values(rows, selection_terms(self.cfg.keep_best, self.cfg.eval_k), self.cfg.eval_k)
        if self.best.offer(self.state.step, values, self.dist.rollout_model(self.model)):
            log.debug("keep_best: step %d is the best so far (%s = %.4f)", self.state.step, self.cfg.keep_best,
                      self.best.value)
        return values

    def _keep_best(self, last: dict, last_values: np.ndarray | None) -> tuple[dict, dict | None]:
        """(the table after training, the last step's table if another step's weights replaced it)."""
        best, metric = self.best, self.cfg.keep_best
        if best is None or last_values is None or best.step in (-1, self.state.step) or not self.dist.is_main:
            return last, None
        found = (f"keep_best: step {best.step} scored {metric} = {best.value:.4f} on {len(self.validation)} "
                 f"validation problems, the last step {last_values.mean():.4f}")
        if self.cfg.keep_best_paired:
            better, (lo, hi) = best.beats(last_values, seed=self.cfg.seed)
            found += f" (95% paired interval of the difference [{lo:+.4f}, {hi:+.4f}])"
            if not better:
                print(f"{found}: within the validation set's noise, so the last step's model stays")
                return last, None
        best.restore(self.dist.rollout_model(self.model))
        print(f"{found}: step {best.step}'s model replaces the last one; its held-out table is logged as best/...")
        if (rows := self.run.dir / HELD_OUT_AFTER).is_file():
            rows.replace(self.run.dir / HELD_OUT_LAST)
        return self.evaluate(prefix="best/", rows_to=HELD_OUT_AFTER), last

    def _held_out(self, rows_to: str) -> dict:
        return self.evaluate(rows_to=rows_to) if self.plain_evaluation else self.evaluate()

    def _vs_before(self, rows: str = HELD_OUT_AFTER) -> list[Difference]:
        """The table after training (or the one of `rows`) against the one before, problem by problem on the
        held-out set (train/paired.py); empty where the run has no rows from before (a run resumed from an older
        version)."""
        before, after = self.run.dir / HELD_OUT_BEFORE, self.run.dir / rows
        if not (self.dist.is_main and before.is_file() and after.is_file()):
            return []
        return paired_differences(per_problem(read_rows(before)), per_problem(read_rows(after)), seed=self.cfg.seed)

    def _say_setting(self) -> None:
        """What setting=auto chose, when the model is the user's own (docs/rl.md, "RL from your own SFT model")."""
        cfg = self.cfg
        if cfg.setting != "auto" or type(cfg) is not Config or is_shipped(cfg.model.name):
            return
        if Config.resolved_setting(cfg.setting, cfg.model.name) == "from_sft":
            print(f"setting=auto: {cfg.model.name} is an SFT run's model, so train read configs/rl_from_sft.yaml "
                  f"under your keys (lr {cfg.optim.lr:g}, {cfg.prompts_per_step} prompts a step, val_n {cfg.val_n}, "
                  f"keep_best {cfg.keep_best or 'off'}); setting=defaults keeps the listed defaults")
        else:
            print(f"setting=auto: {cfg.model.name} is not a model `reasonloop sft` wrote, so train keeps its defaults "
                  "(tuned on the embedded task from its shipped model); for a model you fine-tuned yourself, "
                  "setting=from_sft reads configs/rl_from_sft.yaml (docs/rl.md)")

    def train(self) -> dict:
        cfg = self.cfg
        before = self.run.before_training(lambda: self._held_out(HELD_OUT_BEFORE), fresh=self.state.step == 0)
        if self.state.step == 0:
            self._say_setting()
            print(f"before training (held-out, {len(self.held_out)} problems):\n{format_table(before)}")
            if self.validation:
                self.validate()
        with progress(f"train ({cfg.advantage})", cfg.steps) as bar:
            bar.advance(self.state.step)
            while self.state.step < cfg.steps:
                self.state.step += 1
                step = self.state.step
                metrics, data = self.step()
                alerts = self.monitors.check(metrics)
                for a in alerts:
                    self.state.count(a)
                    log.warning("step %d: monitor alert %s", step, a)
                metrics.update({f"alerts/{k}": v for k, v in self.state.alerts.items()})
                self.run.log(step, metrics)
                if cfg.rollback and CRITICAL.intersection(alerts) and self._rollback(alerts):
                    continue
                if cfg.samples_every and step % cfg.samples_every == 0:
                    self.run.write_jsonl("samples.jsonl", [
                        {"step": step, "level": ex.meta.get("level"), "prompt": ex.prompt, "completion": c, "reward": float(r),
                         **{k: float(v[i]) for k, v in data.components.items()}}
                        for i, (ex, c, r) in enumerate(zip(data.examples, data.batch.completions, data.rewards))
                    ], append=True)
                bar.advance()
                bar.set(f"reward {metrics['reward/mean']:.3f}")
                if cfg.eval_every and step % cfg.eval_every == 0 and step != cfg.steps:
                    self.evaluate()
                if self.validation and step % cfg.val_every == 0 and step != cfg.steps:
                    self.validate()
                if cfg.save_every and step % cfg.save_every == 0:
                    self._checkpoint()
        last_values = self.validate() if self.validation else None  # the last step's, also after a resume there
        after, last = self._keep_best(self._held_out(HELD_OUT_AFTER), last_values)
        self.dist.restore_kept(self.model, kept=last is not None)
        self.dist.save_model(self.model, self.tokenizer, self.run.dir / "model")
        if before is not None:
            print(f"before training:\n{format_table(before)}")
        if last is not None:
            print(f"after {cfg.steps} steps, the last step's model:\n{format_table(last)}")
        chosen = f", the model of step {self.best.step}" if last is not None else ""
        print(f"after {cfg.steps} steps ({preset_of(cfg)}{chosen}):\n{format_table(after)}")
        last_diffs = self._vs_before(HELD_OUT_LAST) if last is not None else []
        if last_diffs:
            print(f"the last step's model against before, problem by problem ({last_diffs[0].n} held-out problems):\n"
                  f"{format_differences(last_diffs, ('before', 'last'))}")
        if diffs := self._vs_before():
            print(f"after against before, problem by problem ({diffs[0].n} held-out problems):\n"
                  f"{format_differences(diffs, ('before', 'after'))}")
        result = {"preset": preset_of(cfg), "before": before, "after": after, "alerts": self.state.alerts,
                  "bad_steps": self.state.bad_steps, "rollbacks": self.state.rollbacks,
                  "model_dir": str(self.run.dir / "model")}
        if diffs:
            result["vs_before"] = [asdict(d) for d in diffs]
        if last_diffs:
            result["last_vs_before"] = [asdict(d) for d in last_diffs]
        if self.best is not None:
            result.update(best={"step": self.best.step, "metric": cfg.keep_best, "value": self.best.value},
                          kept_step=self.best.step if last is not None else self.state.step, last=last or after)
        self.run.write_json("summary.json", result)
        self.run.close()
        self.dist.close()
        return result


def run(cfg: Config) -> dict:
    if cfg.distributed.backend == "ray":  # the same Trainer on a Ray learner actor (distributed/ray_learner.py)
        from reasonloop.distributed.ray_learner import run_actor_learner

        return run_actor_learner(cfg, Trainer)
    return Trainer(cfg).train()
