"""Advantage estimators by name: one typed input, one typed output, one registry.

Every online-RL recipe calls ``estimate(name, AdvantageInput(...)) -> AdvantageOutput``; which maths
runs is the name, not a branch in the recipe. A user adds an estimator without editing any recipe:

    from reasonloop.algos.estimators import register_advantage, sequence_estimator

    @register_advantage("median_baseline")
    @sequence_estimator
    def median_baseline(rewards, inp, levels, pass_rates, state):   # rewards [B, G]
        return rewards - rewards.median(dim=-1, keepdim=True).values, state

and then `reasonloop train advantage=median_baseline` (after importing the module that registers it), or
`advantage=my_module:median_baseline` to have reasonloop import it (docs/algorithms.md).

Two kinds of estimator:
- **sequence** estimators (`sequence_estimator`): a function of the ``[B, G]`` group rewards giving
  ``[B, G]`` advantages, broadcast over each completion's tokens. The wrapper does what all of them share:
  the KL penalty folded into the reward (`kl_in_reward`), the reward normalisation (`reward_norm`), and
  ragged groups (adaptive group sizes: each group is estimated on its own, in order).
- **token** estimators (REINFORCE++, GAE, PRIME): read the ``[N, T]`` masks, log-probs and values directly.

Process rewards (`process_rewards [N, T]` with `process_mask`, from an explicit PRM's step scores or PRIME's
implicit PRM; `algos/process.py`): every sequence estimator adds `process_coef` times DeepSeekMath's
process-supervision advantage (step rewards normalised per group, summed from each token to the end) to
its outcome advantage; `prime` folds them into its leave-one-out returns. `reinforce_pp` and `gae` do not
read them.

Per-turn rewards of multi-turn episodes (`turn_rewards [N, T]`, each on the last token of its turn): the
sequence reward `rewards` already includes their sum, which is all a sequence estimator sees; the
token-level ones (`reinforce_pp`, `gae`) take that sum off the last token and put each turn's reward on
its own token instead, so a turn's reward reaches the returns of the tokens before it and not after.

All are pure: tensors and explicit scalars in, tensors and the next state out; nothing here sees a
config, a model or a file. The raw formulas (and their references) are in `algos.advantages`.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from reasonloop.algos import advantages as adv
from reasonloop.algos.aggregation import check_shape, masked_whiten
from reasonloop.algos.kl import kl_estimate, kl_penalty_in_reward
from reasonloop.algos.process import prime_advantages, process_grpo_advantages


@dataclass(frozen=True)
class AdvantageInput:
    """Everything an estimator may read about one step. Rows are prompt-major (row b*G + g)."""

    rewards: torch.Tensor  # [N] sequence rewards after shaping
    group_sizes: tuple[int, ...]  # [B] samples per prompt; they sum to N
    mask: torch.Tensor  # [N, T] 1 on completion tokens
    logprobs: torch.Tensor | None = None  # [N, T] old (sampling-policy) log-probs, when computed
    ref_logprobs: torch.Tensor | None = None  # [N, T] reference log-probs, when a KL term is on
    values: torch.Tensor | None = None  # [N, T] critic values V(s_t), for GAE
    levels: torch.Tensor | None = None  # [B] difficulty label of each prompt (0 when unknown)
    pass_rates: torch.Tensor | None = None  # [B] running pass rate of each prompt's level
    kl_coef: float = 0.0  # beta of a KL term that enters the reward (0: none)
    kl_estimator: str = "k3"
    kl_in_reward: bool = False  # sequence estimators: subtract beta * sum_t KL_t from each reward first
    std_mode: str = "group"  # GRPO's std scaling: group | batch | none
    baseline: str = "batch_mean"  # REINFORCE's baseline: batch_mean | moving_average | none
    reward_norm: str = "none"  # sequence estimators: none | running | rank (before the estimator)
    reward_norm_state: adv.RewardNormState = field(default_factory=adv.RewardNormState)
    gamma: float = 1.0  # discount of token-level returns
    lam: float = 0.95  # GAE lambda
    whiten: bool = True  # GAE: whiten the advantages over the batch
    state: Any = None  # the estimator's own state from the previous step (e.g. a running baseline)
    process_rewards: torch.Tensor | None = None  # [N, T] token-level process rewards (0 where none sits)
    process_mask: torch.Tensor | None = None  # [N, T] 1 where a process reward sits (a step's last token)
    process_coef: float = 1.0  # weight of the process-reward advantage next to the outcome one
    pass_k: int = 4  # passk: the k of the max@k objective
    turn_rewards: torch.Tensor | None = None  # [N, T] multi-turn episodes: each turn's reward on the turn's last
    # token. `rewards` already holds their sum; gae and reinforce_pp move that share onto these tokens

    def __post_init__(self):
        check_shape("rewards", self.rewards, (None,))
        check_shape("mask", self.mask, (self.rewards.shape[0], None))
        if (self.process_rewards is None) != (self.process_mask is None):
            raise ValueError("process_rewards and process_mask come together")
        if self.process_rewards is not None:
            check_shape("process_rewards", self.process_rewards, tuple(self.mask.shape))
            check_shape("process_mask", self.process_mask, tuple(self.mask.shape))
        if self.turn_rewards is not None:
            check_shape("turn_rewards", self.turn_rewards, tuple(self.mask.shape))
        if sum(self.group_sizes) != self.rewards.shape[0]:
            raise ValueError(f"group sizes sum to {sum(self.group_sizes)} but there are {self.rewards.shape[0]} rewards")


@dataclass(frozen=True)
class AdvantageOutput:
    advantages: torch.Tensor  # [N, T], 0 at masked positions
    returns: torch.Tensor | None = None  # [N, T] value targets (GAE)
    state: Any = None  # the estimator's state for the next step
    reward_norm_state: adv.RewardNormState = field(default_factory=adv.RewardNormState)


Estimator = Callable[[AdvantageInput], AdvantageOutput]
ADVANTAGE_ESTIMATORS: dict[str, Estimator] = {}


def register_advantage(name: str) -> Callable[[Estimator], Estimator]:
    """Decorator: make `fn(AdvantageInput) -> AdvantageOutput` available as `advantage=name`."""

    def add(fn: Estimator) -> Estimator:
        if name in ADVANTAGE_ESTIMATORS and ADVANTAGE_ESTIMATORS[name] is not fn:
            raise ValueError(f"an advantage estimator named {name!r} is already registered")
        ADVANTAGE_ESTIMATORS[name] = fn
        return fn

    return add


def estimate(name: str, inp: AdvantageInput) -> AdvantageOutput:
    """Run the estimator registered as `name`."""
    if name not in ADVANTAGE_ESTIMATORS:
        raise ValueError(f"unknown advantage estimator {name!r}; registered: {sorted(ADVANTAGE_ESTIMATORS)}")
    return ADVANTAGE_ESTIMATORS[name](inp)


# A sequence estimator's core: (rewards [B, G], the input, levels [B], pass rates [B], state)
# -> (advantages [B, G], new state). `levels`/`pass_rates` are the slices for these B prompts.
GroupFn = Callable[[torch.Tensor, AdvantageInput, torch.Tensor, torch.Tensor, Any], tuple[torch.Tensor, Any]]


def sequence_estimator(fn: GroupFn) -> Estimator:
    """Lift a ``[B, G]`` group estimator to an `Estimator` (see the module docstring for what it adds)."""

    @functools.wraps(fn)
    def run(inp: AdvantageInput) -> AdvantageOutput:
        rewards = inp.rewards
        if inp.kl_in_reward and inp.kl_coef > 0:
            _, kl = kl_penalty_in_reward(torch.zeros_like(inp.logprobs), inp.logprobs, inp.ref_logprobs, inp.mask,
                                         inp.kl_coef, inp.kl_estimator)
            rewards = rewards - inp.kl_coef * kl.sum(-1)
        B = len(inp.group_sizes)
        levels = inp.levels if inp.levels is not None else torch.zeros(B)
        pass_rates = inp.pass_rates if inp.pass_rates is not None else torch.full((B,), 0.5)
        norm_state, state = inp.reward_norm_state, inp.state
        sizes = inp.group_sizes
        # equal groups are one [B, G] call; ragged ones (adaptive G) one call per group, in order
        chunks = [(0, B, sizes[0])] if len(set(sizes)) == 1 else [(b, b + 1, g) for b, g in enumerate(sizes)]
        out, row = [], 0
        for first, last, g in chunks:
            n = (last - first) * g
            grouped = rewards[row : row + n].view(last - first, g)
            grouped, norm_state = adv.normalize_rewards(grouped, inp.reward_norm, norm_state)
            a, state = fn(grouped, inp, levels[first:last], pass_rates[first:last], state)
            out.append(a.reshape(-1))
            row += n
        advantages = torch.cat(out).unsqueeze(-1) * inp.mask
        if inp.process_rewards is not None:
            advantages = advantages + inp.process_coef * process_grpo_advantages(
                inp.process_rewards, inp.process_mask, inp.mask, inp.group_sizes)
        return AdvantageOutput(advantages, state=state, reward_norm_state=norm_state)

    return run


@register_advantage("grpo")
@sequence_estimator
def grpo(rewards, inp, levels, pass_rates, state):
    """GRPO: (r - group mean) / std (std per `std_mode`; none = Dr.GRPO)."""
    return adv.grpo_advantages(rewards, inp.std_mode), state


@register_advantage("dr_grpo")
@sequence_estimator
def dr_grpo(rewards, inp, levels, pass_rates, state):
    """Dr.GRPO: r - group mean, no std scaling, whatever `std_mode` says."""
    return adv.dr_grpo_advantages(rewards), state


@register_advantage("grpo_difficulty")
@sequence_estimator
def grpo_difficulty(rewards, inp, levels, pass_rates, state):
    """Weighted GRPO: each sample weighs w = 1.5 - (its level's running pass rate) in the group statistics,
    and its advantage is scaled by w, so harder levels weigh more."""
    weights = (1.5 - pass_rates).unsqueeze(-1).expand_as(rewards)
    return adv.weighted_grpo_advantages(rewards, weights, inp.std_mode) * weights, state


@register_advantage("grpo_hierarchical")
@sequence_estimator
def grpo_hierarchical(rewards, inp, levels, pass_rates, state):
    """GRPO with the baseline per group and the std per difficulty level."""
    return adv.hierarchical_grpo_advantages(rewards, levels.long()), state


@register_advantage("rloo")
@sequence_estimator
def rloo(rewards, inp, levels, pass_rates, state):
    """RLOO: r - mean of the other samples of the group."""
    return adv.rloo_advantages(rewards), state


@register_advantage("passk")
@sequence_estimator
def passk(rewards, inp, levels, pass_rates, state):
    """Pass@k policy optimisation: leave-one-out advantages of the group's max@k reward (k = `pass_k`)."""
    return adv.pass_at_k_advantages(rewards, inp.pass_k), state


@register_advantage("reinforce")
@sequence_estimator
def reinforce(rewards, inp, levels, pass_rates, state):
    """REINFORCE with a batch-mean or moving-average baseline; the state is the running mean."""
    return adv.reinforce_advantages(rewards, inp.baseline, state)


@register_advantage("reinforce_pp")
def reinforce_pp(inp: AdvantageInput) -> AdvantageOutput:
    """REINFORCE++: token rewards -beta*KL_t (+ R on the last token), returns-to-go, global whitening."""
    ref = inp.ref_logprobs if inp.ref_logprobs is not None else inp.logprobs
    outcome, turns = _split_turn_rewards(inp)
    advantages = adv.reinforce_pp_advantages(outcome, inp.logprobs, ref, inp.mask, inp.kl_coef, inp.gamma,
                                             inp.kl_estimator, token_rewards=turns)
    return AdvantageOutput(advantages, state=inp.state, reward_norm_state=inp.reward_norm_state)


def _split_turn_rewards(inp: AdvantageInput) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(the sequence rewards without the per-turn rewards that sit on trained tokens, those per-turn rewards);
    (rewards, None) without turn rewards. A turn reward on a token outside `mask` stays in the sequence reward."""
    if inp.turn_rewards is None:
        return inp.rewards, None
    placed = inp.turn_rewards.to(inp.rewards.dtype) * inp.mask.to(inp.rewards.dtype)
    return inp.rewards - placed.sum(-1), placed


@register_advantage("gae")
def gae(inp: AdvantageInput) -> AdvantageOutput:
    """PPO's GAE: the reward on the last token, -beta*KL_t on every token, a critic's values."""
    if inp.values is None:
        raise ValueError("advantage=gae needs critic values")
    mask = inp.mask
    outcome, turns = _split_turn_rewards(inp)
    token_rewards = torch.zeros_like(inp.values) if turns is None else turns.to(inp.values.dtype) * mask
    last = (mask.cumsum(-1) == mask.sum(-1, keepdim=True)) & mask.bool()
    token_rewards[last] += outcome[last.any(-1)].to(token_rewards.dtype)
    if inp.kl_coef > 0:
        token_rewards = token_rewards - inp.kl_coef * kl_estimate(inp.logprobs, inp.ref_logprobs, inp.kl_estimator) * mask
    advantages, returns = adv.gae_advantages(token_rewards, inp.values, mask, inp.gamma, inp.lam)
    if inp.whiten:
        advantages = masked_whiten(advantages, mask)
    return AdvantageOutput(advantages * mask, returns, inp.state, inp.reward_norm_state)


@register_advantage("prime")
def prime(inp: AdvantageInput) -> AdvantageOutput:
    """PRIME (Cui et al. 2025): leave-one-out baselines for the outcome reward (on the last token) and the
    process rewards (on their tokens), returns-to-go, whitened over the batch when `whiten`."""
    rewards = inp.rewards
    if inp.kl_in_reward and inp.kl_coef > 0:
        _, kl = kl_penalty_in_reward(torch.zeros_like(inp.logprobs), inp.logprobs, inp.ref_logprobs, inp.mask,
                                     inp.kl_coef, inp.kl_estimator)
        rewards = rewards - inp.kl_coef * kl.sum(-1)
    advantages = prime_advantages(rewards, inp.process_rewards, inp.process_mask, inp.mask, inp.group_sizes,
                                  inp.process_coef, inp.whiten)
    return AdvantageOutput(advantages, state=inp.state, reward_norm_state=inp.reward_norm_state)


TOKEN_LEVEL = frozenset({"reinforce_pp", "gae"})  # estimators that read log-probs/values per token


def replace(inp: AdvantageInput, **changes: Any) -> AdvantageInput:
    """A copy of `inp` with some fields changed (the record is frozen)."""
    return dataclasses.replace(inp, **changes)
