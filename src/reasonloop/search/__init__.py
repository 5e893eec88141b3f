"""Test-time search: strategies that spend inference compute to pick one answer per prompt.

`search(engine, examples, render, sampling, cfg, answer_key, ...)` runs the strategy `cfg.strategy`
names from the registry `STRATEGIES` (base.py); the strategies live in strategies.py (whole-solution
sampling: best_of_n, weighted_best_of_n, majority, refine, adaptive) and tree.py (step-level: beam,
dvts, mcts). allocate.py chooses a strategy and budget per difficulty bucket (compute-optimal allocation).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable

import torch

from reasonloop.data.records import Example
from reasonloop.rollout.engine import RolloutEngine, SamplingConfig
from reasonloop.search.base import (
    STRATEGIES, CountingEngine, Scorer, SearchConfig, SearchContext, SearchResult, register_strategy,
)
from reasonloop.search.strategies import best_of_n, majority_vote, prm_outcome_scorer
from reasonloop.search import tree  # noqa: F401  (registers beam, dvts, mcts)


def search(
    engine: RolloutEngine,
    examples: list[Example],
    render: Callable[[str], str],
    sampling: SamplingConfig,
    cfg: SearchConfig,
    answer_key: Callable[[str], Hashable | None],
    scorer: Scorer | None = None,
    generator: torch.Generator | None = None,
    prm=None,
    verifier: Callable[[str, Example], bool] | None = None,
) -> list[SearchResult]:
    """Run `cfg.strategy` on every example. `scorer` is the outcome scorer (the task verifier, an ORM, a
    trained verifier; with scorer=prm and a `prm`, the PRM's aggregated step scores stand in when None)."""
    if scorer is None and prm is not None and cfg.scorer == "prm":
        scorer = prm_outcome_scorer(prm, cfg.aggregate, cfg.step_delimiters)
    ctx = SearchContext(engine, render, sampling, cfg, answer_key, outcome=scorer, prm=prm, verifier=verifier,
                        generator=generator)
    return STRATEGIES[cfg.strategy](ctx, examples)


__all__ = ["STRATEGIES", "CountingEngine", "Scorer", "SearchConfig", "SearchContext", "SearchResult",
           "best_of_n", "majority_vote", "prm_outcome_scorer", "register_strategy", "search"]
