"""Test-time search: strategies that turn N samples into one answer (best-of-N, voting, beam)."""

from reasonloop.search.strategies import (
    STRATEGIES,
    SearchConfig,
    SearchResult,
    best_of_n,
    majority_vote,
    search,
    step_beam,
)

__all__ = ["STRATEGIES", "SearchConfig", "SearchResult", "best_of_n", "majority_vote", "search", "step_beam"]
