"""The shared parts of test-time search: its config, the context a strategy runs in, what it returns,
the compute it spent, and the registry of strategies by name.

A strategy is `fn(ctx: SearchContext, examples) -> list[SearchResult]`, registered with
`@register_strategy("name")`; `search(...)` dispatches by `cfg.strategy`. Strategies drive a
`RolloutEngine` (and, for step-level search, a process reward model); they never touch the policy's
weights, so self-training (expert iteration), distillation (the teacher) and `reasonloop search` share them.

Compute is counted where it is spent, not estimated from N: `CountingEngine` counts the tokens the
policy sampled (`generated`) and the tokens it read without sampling (`prefilled`: prompts, and partial
solutions re-read when an engine cannot continue from cached keys/values); scorers count the tokens
they read (`tokens_read`; `reasonloop search` reports it as scored tokens). One token through a same-sized model costs about the same in either role, so
`generated + prefilled + scored` is the forward-pass cost of a strategy (docs/test_time_compute.md).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field

import torch

from reasonloop.config import require, require_choice
from reasonloop.data.records import Example, RolloutBatch
from reasonloop.rewards.process import AGGREGATES, DEFAULT_DELIMITERS, StepScorer
from reasonloop.rollout.engine import RolloutEngine, SamplingConfig

Scorer = Callable[[Example, list[str]], list[float]]  # outcome scores of one prompt's completions, higher = better
SCORERS = ("verifier", "orm", "prm", "likelihood")


@dataclass
class SearchConfig:
    strategy: str = "majority"
    """best_of_n | weighted_best_of_n | majority | beam | dvts | mcts | refine | adaptive (docs/test_time_compute.md)."""
    n: int = 8
    """The budget N: samples per prompt (best_of_n, weighted_best_of_n, majority; the cap of adaptive), beams
    (beam), total leaves (dvts), simulations (mcts), or drafts (refine: N/(rounds+1) chains, rounds revisions each)."""
    scorer: str = "verifier"
    """Outcome scorer of best_of_n / weighted_best_of_n / the final pick of tree search: verifier (the task's exact
    check: an oracle upper bound, not a deployable method), orm, prm (aggregated step scores) or likelihood (the
    policy's mean token log-prob)."""
    prm: str = ""
    """Directory of a process reward model (`reasonloop prm`): scorer=prm and step-level search read it. On the
    arithmetic task also `oracle` (exact step labels from the known answer; results labelled oracle) or `check`
    (each step's arithmetic checked without the answer: a deployable verifier-free step scorer)."""
    orm: str = ""
    """Directory of an outcome reward model (`reasonloop prm labels=outcome`): scorer=orm reads it."""
    aggregate: str = "last"
    """How a PRM's step scores make one solution score: last | min | prod | mean."""
    beam_width: int = 4
    """M: expansions of each kept beam (beam keeps N/M beams per step; dvts runs N/M subtrees of width M;
    mcts expands M children per new node)."""
    step_delimiters: list[str] = field(default_factory=lambda: list(DEFAULT_DELIMITERS))
    """Strings that end one reasoning step (step-level search and PRM scoring)."""
    max_steps: int = 8
    """Step expansions before live beams are finished in one go (beam, dvts, mcts depth)."""
    lookahead: int = 0
    """beam/dvts: score each candidate step after greedily rolling out this many more steps (0: score the step)."""
    c_puct: float = 1.5
    """mcts: exploration constant."""
    select: str = "puct"
    """mcts: puct (prior from the policy's step probability) or uct."""
    value: str = "prm"
    """mcts: leaf value from the prm (its aggregated step scores) or from one rollout scored by the outcome scorer."""
    final: str = "visits"
    """mcts: the answer is the most-visited path (visits), the best mean value (value), or a vote over the
    terminal nodes reached (vote)."""
    rounds: int = 1
    """refine: revisions per chain."""
    feedback: str = "verifier"
    """refine: where the 'is this right?' signal comes from: verifier, prm, or self (the model judges its own answer)."""
    agree: int = 3
    """adaptive: stop sampling a problem once this many samples give the same answer."""
    chunk: int = 2
    """adaptive: samples drawn per problem per round."""

    def __post_init__(self):
        from reasonloop.search import STRATEGIES  # the registry fills when the package is imported

        require_choice("search.strategy", self.strategy, sorted(STRATEGIES))
        require_choice("search.scorer", self.scorer, list(SCORERS))
        require_choice("search.aggregate", self.aggregate, sorted(AGGREGATES))
        require_choice("search.select", self.select, ["puct", "uct"])
        require_choice("search.value", self.value, ["prm", "rollout"])
        require_choice("search.final", self.final, ["visits", "value", "vote"])
        require_choice("search.feedback", self.feedback, ["verifier", "prm", "self"])
        require(self.n >= 1 and self.beam_width >= 1, "search.n and search.beam_width must be >= 1")
        require(self.max_steps >= 1 and self.lookahead >= 0 and self.rounds >= 0, "search.max_steps >= 1, lookahead >= 0, rounds >= 0")
        require(self.agree >= 1 and self.chunk >= 1, "search.agree and search.chunk must be >= 1")
        require(self.c_puct >= 0, "search.c_puct must be >= 0")
        require(bool(self.step_delimiters) and all(isinstance(d, str) and d for d in self.step_delimiters),
                "search.step_delimiters must be a non-empty list of non-empty strings")


class CountingEngine:
    """A `RolloutEngine` wrapper counting tokens: `generated` (completion tokens) and `prefilled` (each
    prompt once: its n samples share one prefill). An engine that counts itself (the prefix-reusing tree
    engine, whose `expand` calls bypass this wrapper) is read instead: its counts since it was wrapped."""

    def __init__(self, engine: RolloutEngine):
        self.engine = engine
        self._counts_itself = hasattr(engine, "generated") and hasattr(engine, "prefilled")
        self._start = (engine.generated, engine.prefilled) if self._counts_itself else (0, 0)
        self._generated = self._prefilled = 0

    @property
    def generated(self) -> int:
        return self.engine.generated - self._start[0] if self._counts_itself else self._generated

    @property
    def prefilled(self) -> int:
        return self.engine.prefilled - self._start[1] if self._counts_itself else self._prefilled

    def generate(self, prompts: list[str], n: int, sampling: SamplingConfig,
                 generator: torch.Generator | None = None) -> RolloutBatch:
        batch = self.engine.generate(prompts, n, sampling, generator)
        if not self._counts_itself:
            self._generated += int(batch.completion_mask.sum())
            self._prefilled += int(batch.prompt_mask[::n].sum())
        return batch

    def update_weights(self, model: torch.nn.Module) -> None:
        self.engine.update_weights(model)

    def __getattr__(self, name):  # anything else (e.g. the tree engine's expand) is the wrapped engine's
        return getattr(self.engine, name)


@dataclass
class SearchResult:
    """The strategy's pick for one prompt, with every finished candidate it looked at."""

    example: Example
    candidates: list[str]  # finished completions
    scores: list[float]  # [len(candidates)] the strategy's final score of each (vote share for majority)
    chosen: int | None  # index into candidates; None when the strategy abstains (no votes)
    confidence: float = 0.0  # winning vote share (majority) or chosen score

    @property
    def completion(self) -> str | None:
        return None if self.chosen is None else self.candidates[self.chosen]


@dataclass
class SearchContext:
    """What a strategy may use. `outcome` scores finished completions (the scorer `cfg.scorer` names, built
    by `make_outcome_scorer`); `prm` scores steps (None when no PRM is loaded); `verifier` is the task's
    exact check (refine's feedback=verifier)."""

    engine: RolloutEngine
    render: Callable[[str], str]
    sampling: SamplingConfig
    cfg: SearchConfig
    answer_key: Callable[[str], Hashable | None]
    outcome: Scorer | None = None
    prm: StepScorer | None = None
    verifier: Callable[[str, Example], bool] | None = None
    generator: torch.Generator | None = None

    def step_sampling(self) -> SamplingConfig:
        """The sampling config for one step: the same, stopping at the step delimiters."""
        return SamplingConfig(**{**self.sampling.__dict__, "stop": list(self.cfg.step_delimiters)})


Strategy = Callable[[SearchContext, list[Example]], list[SearchResult]]
STRATEGIES: dict[str, Strategy] = {}


def register_strategy(name: str) -> Callable[[Strategy], Strategy]:
    def add(fn: Strategy) -> Strategy:
        STRATEGIES[name] = fn
        return fn

    return add


def prm_solution_scores(prm: StepScorer, how: str, delimiters: Sequence[str], prompts: Sequence[str],
                        completions: Sequence[str]) -> list[float]:
    """One score per completion: its PRM step scores aggregated (`how`); batched when the PRM can."""
    from reasonloop.rewards.process import aggregate, step_spans

    steps = [[s.text for s in step_spans(c, delimiters)] for c in completions]
    if hasattr(prm, "score_many"):
        per_step = prm.score_many(list(prompts), steps)
    else:
        per_step = [prm.score_steps(p, s) if s else [] for p, s in zip(prompts, steps)]
    return [aggregate(s, how) if s else 0.0 for s in per_step]
